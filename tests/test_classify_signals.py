"""06 as batch systems and Dask treat it: stopped by SIGTERM or SIGINT mid-write, and run
twice into one output folder at once. Real subprocesses; a hook pauses 06 right after its
first block is written (its hidden .partial outputs exist then) until the test goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import save_model, smooth_scene, tiny_model, write_scene

from image_functions import RGB_BAND_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
# Runs 06 with its GeoTIFF writers paused after their first block: PAUSED_FILE is made,
# then the process waits until RELEASE_FILE exists (or the test signals it).
PAUSING_RUN = """
import os, runpy, sys, time
from cnn_sentinel.scene import writers

original_write = writers.GeoTiffWriter.write

def write(self, block):
    original_write(self, block)
    if not os.path.exists(os.environ["PAUSED_FILE"]):
        open(os.environ["PAUSED_FILE"], "w").close()
        for _ in range(1200):
            if os.path.exists(os.environ["RELEASE_FILE"]):
                break
            time.sleep(0.1)

writers.GeoTiffWriter.write = write
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
OUTPUT_NAMES = [
    "scene_label.tif",
    "scene_label.tif.aux.xml",
    "scene_prob.tif",
    "scene_quicklook.png",
]


@pytest.fixture(scope="module")
def scene_and_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    scene = write_scene(folder / "scene.tif", smooth_scene(96, 80, 3, np.uint8, 30.0))
    model = save_model(tiny_model(3, [100.0] * 3, [30.0] * 3), folder / "run", RGB_BAND_NAMES)
    return scene, model


def classify_command(scene: Path, model: Path, output: Path, paused: bool) -> list[str]:
    arguments = [
        str(REPO_ROOT / "06_classify_image.py"), "--image", str(scene), "--model", str(model),
        "--output-dir", str(output), "--stride", "8", "--block-rows", "16", "--no-progress",
    ]  # fmt: skip
    return [sys.executable, *(["-c", PAUSING_RUN] if paused else []), *arguments]


def start_paused(command: list[str], folder: Path) -> subprocess.Popen:
    """Start `command` (a paused 06) and wait until it has written its first block."""
    environment = {
        **ENVIRONMENT,
        "PAUSED_FILE": str(folder / "paused"),
        "RELEASE_FILE": str(folder / "release"),
    }
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        # A suite started in the background (nohup, `&`) hands its children SIGINT ignored,
        # and Python then installs no Ctrl-C handler: give 06 the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for _ in range(1200):
        if (folder / "paused").exists() or process.poll() is not None:
            break
        time.sleep(0.1)
    if not (folder / "paused").exists():
        process.kill()
        pytest.fail(f"06 never reached its first block: {process.communicate()[1][-3000:]}")
    return process


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_write_ends_06_cleanly_like_ctrl_c(scene_and_model, tmp_path, stop, status):
    scene, model = scene_and_model
    output = tmp_path / "maps"
    process = start_paused(classify_command(scene, model, output, paused=True), tmp_path)
    assert [path.name for path in output.iterdir() if ".partial-" in path.name]  # mid-write
    process.send_signal(stop)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "interrupted: outputs already completed are kept, nothing half-written."
    )
    assert "Traceback" not in err
    assert not output.exists()  # made by this run, and left empty: removed again


def test_two_runs_into_one_folder_one_refuses_and_the_folder_holds_one_complete_set(
    scene_and_model, tmp_path
):
    scene, model = scene_and_model
    output = tmp_path / "maps"
    first = start_paused(classify_command(scene, model, output, paused=True), tmp_path)
    try:
        second = subprocess.run(
            classify_command(scene, model, output, paused=False),
            capture_output=True, text=True, timeout=300, env=ENVIRONMENT,
        )  # fmt: skip
    finally:
        (tmp_path / "release").touch()
        first_out, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.strip().splitlines() == [
        f"error: output folder {output} (outputs scene_*) is in use by running process "
        f"{first.pid}; wait for that run to end or give another --output-dir."
    ]
    assert "wrote" not in second.stdout
    assert first.returncode == 0, first_err[-3000:]
    assert sorted(path.name for path in output.iterdir()) == OUTPUT_NAMES
    # A later run without --overwrite is refused as before; the set stays the first run's.
    again = subprocess.run(
        classify_command(scene, model, output, paused=False),
        capture_output=True, text=True, timeout=300, env=ENVIRONMENT,
    )  # fmt: skip
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    assert sorted(path.name for path in output.iterdir()) == OUTPUT_NAMES
