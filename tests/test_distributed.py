"""Distributed training: MirroredStrategy over two logical CPUs and MultiWorkerMirroredStrategy
with two local worker processes (TF_CONFIG on 127.0.0.1). Each runs in fresh processes,
because TensorFlow's devices and collectives are configured once per process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SCRIPTS, make_split, read_history

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["--arch", "tiny", "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "2",
            "--mixed-precision", "off"]  # fmt: skip
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}

MIRRORED = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cnn_sentinel import training
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
training.choose_strategy = lambda: strategy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# A plain Keras fit under MultiWorkerMirroredStrategy, with the project's workaround
# for keras-team/keras#20585 when argv[1] is "worked-around".
PLAIN_MULTI_WORKER_FIT = """
import sys
import numpy as np
import tensorflow as tf
import keras
if sys.argv[1] == "worked-around":
    from cnn_sentinel.keras_workaround import work_around_keras_20585
    work_around_keras_20585()
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=["categorical_accuracy"])
rng = np.random.default_rng(0)
images = rng.uniform(size=(16, 4)).astype("float32")
labels = np.eye(2, dtype="float32")[rng.integers(0, 2, 16)]
model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), epochs=1, verbose=0)
print("fit finished")
"""


def run_local_workers(command: list[str], cwd: Path, timeout: int = 300) -> list:
    """Run `command` as two local workers of one TF_CONFIG cluster; (returncode, output) each."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=cwd,
                env={**ENVIRONMENT, "TF_CONFIG": json.dumps(config)},
            )
        )
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [
        (process.returncode, output) for process, output in zip(processes, outputs, strict=True)
    ]


@pytest.fixture(scope="module")
def ms_split(sample_ms_dataset, tmp_path_factory) -> Path:
    return make_split(sample_ms_dataset, tmp_path_factory.mktemp("ms_split"))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def assert_run_trained_on(run: Path, replicas: int) -> None:
    info = json.loads((run / "model.json").read_text())
    assert info["replicas"] == replicas
    assert len(read_history(run)) == 1
    assert (run / "model.keras").is_file()
    assert json.loads((run / "report" / "metrics.json").read_text())["validation"]["images"] == 20


def test_mirrored_strategy_over_two_logical_cpus(ms_split, tmp_path):
    script = str(REPO_ROOT / SCRIPTS["05"])
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED, script, "--data", str(ms_split),
         "--output", str(tmp_path), *TINY_RUN],
        capture_output=True, text=True, env=ENVIRONMENT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_run_trained_on(tmp_path / "ms-scratch-tiny", replicas=2)


@pytest.mark.slow
def test_multi_worker_mirrored_strategy_two_local_workers(ms_split, tmp_path):
    script = str(REPO_ROOT / SCRIPTS["05"])
    command = [sys.executable, script, "--data", str(ms_split), "--output", str(tmp_path / "runs"),
               *TINY_RUN]  # fmt: skip
    for returncode, output in run_local_workers(command, tmp_path):
        assert returncode == 0, output[-3000:]
    # Worker 0 is the chief and writes the run; worker 1 wrote only into a scratch folder.
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["ms-scratch-tiny"]
    assert_run_trained_on(tmp_path / "runs" / "ms-scratch-tiny", replicas=2)


@pytest.mark.slow
def test_keras_still_needs_the_multi_worker_workaround(tmp_path):
    """When this fails, a Keras release fixed keras-team/keras#20585: delete
    the module cnn_sentinel.keras_workaround and its call in cnn_sentinel.strategy."""
    import keras

    results = run_local_workers([sys.executable, "-c", PLAIN_MULTI_WORKER_FIT, "plain"], tmp_path)
    assert any(returncode != 0 for returncode, _ in results), (
        f"Keras {keras.__version__} trains under MultiWorkerMirroredStrategy without the "
        "workaround for keras-team/keras#20585; delete it."
    )
    assert any("PerReplica" in output for _, output in results)
