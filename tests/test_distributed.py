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
from test_training_scripts import SCRIPTS, make_split, read_history

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["--arch", "tiny", "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "2",
            "--mixed-precision", "off"]  # fmt: skip
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}

MIRRORED = """
import runpy, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import network_functions
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
network_functions.choose_strategy = lambda: strategy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


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


def test_multi_worker_mirrored_strategy_two_local_workers(ms_split, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    script = str(REPO_ROOT / SCRIPTS["05"])
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    script,
                    "--data",
                    str(ms_split),
                    "--output",
                    str(tmp_path / "runs"),
                    *TINY_RUN,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=tmp_path,
                env={**ENVIRONMENT, "TF_CONFIG": json.dumps(config)},
            )  # fmt: skip
        )
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    # Worker 0 is the chief and writes the run; worker 1 wrote only into a scratch folder.
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["ms-scratch-tiny"]
    assert_run_trained_on(tmp_path / "runs" / "ms-scratch-tiny", replicas=2)
