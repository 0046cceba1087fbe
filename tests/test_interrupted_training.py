"""An interrupted training run never loses the trained model: a real training
subprocess is killed with SIGKILL in each phase, then the same command finishes the
run with the model of the best epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST, SCRIPTS, read_history

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
EPOCHS = 3
# Runs 03 with one hook that kills its own process with SIGKILL (like kill -9 from
# outside, no clean-up runs) at the moment named by KILL_AT.
KILLING_RUN = """
import os, runpy, signal, sys, time
from cnn_sentinel import training

def die():
    os.kill(os.getpid(), signal.SIGKILL)

moment = os.environ["KILL_AT"]
original_callback = training.progress_callback
original_history = training.write_history_csv
original_evaluate = training.evaluate_model

def progress_callback(run_folder, state, stage):
    callback = original_callback(run_folder, state, stage)
    def on_train_batch_end(batch, logs=None):
        if moment == "epoch-1" and state["epoch"] == 0 and batch == 1:
            die()
        if moment == "pause" and state["epoch"] == 0 and batch == 1:
            open(os.environ["PAUSED_FILE"], "w").close()
            time.sleep(300)  # until the test kills this process
    callback.on_train_batch_end = on_train_batch_end
    return callback

def write_history_csv(path, rows):
    if moment == "after-checkpoint" and len(rows) == 2:
        die()  # epoch 2's checkpoint is written, state.json still says epoch 1
    original_history(path, rows)
    if moment == "between-epochs" and len(rows) == 2:
        original_write = training.write_atomic
        def write_then_die(path, content, overwrite=False):
            original_write(path, content, overwrite)
            die()  # epoch 2's checkpoint, history and state are written
        training.write_atomic = write_then_die

def evaluate_model(*args, **kwargs):
    if moment == "report":
        die()  # model.keras is saved, the report and model.json are not
    return original_evaluate(*args, **kwargs)

training.progress_callback = progress_callback
training.write_history_csv = write_history_csv
training.evaluate_model = evaluate_model
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def script_command(arguments: list[str], kill_at: str | None) -> list[str]:
    command = [sys.executable, str(REPO_ROOT / SCRIPTS["03"]), *arguments]
    return [sys.executable, "-c", KILLING_RUN, *command[1:]] if kill_at else command


def run_script(arguments: list[str], kill_at: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        script_command(arguments, kill_at),
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENVIRONMENT, "KILL_AT": kill_at or ""},
    )


def training_arguments(rgb_split: Path, output: Path) -> list[str]:
    return [
        "--data", str(rgb_split), "--output", str(output), "--epochs", str(EPOCHS),
        "--learning-rate", "0.05", "--warmup-epochs", "0", *FAST,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kill_at", "says"),
    [
        pytest.param(
            "epoch-1", "training stage 1 of 1 (train): up to 3 epochs", marks=pytest.mark.slow
        ),
        pytest.param(
            "after-checkpoint",
            "resuming stage 1 of 1 (train) at epoch 2 of 3",
            marks=pytest.mark.slow,
        ),
        ("between-epochs", "resuming stage 1 of 1 (train) at epoch 3 of 3"),
        ("report", "run finished earlier: writing its report"),
    ],
)
def test_killed_run_resumes_and_ends_with_the_best_epoch(rgb_split, tmp_path, kill_at, says):
    arguments = training_arguments(rgb_split, tmp_path)
    killed = run_script(arguments, kill_at)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = tmp_path / "rgb-scratch-tiny"
    assert not (run / "model.json").exists()
    rerun = run_script(arguments, None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert says in rerun.stdout
    history = read_history(run)
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))
    best = max(float(row["val_categorical_accuracy"]) for row in history)
    info = json.loads((run / "model.json").read_text())
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert metrics["validation"]["overall_accuracy"] == pytest.approx(best, abs=1e-6)
    assert info["metrics"]["validation"]["overall_accuracy"] == pytest.approx(best, abs=1e-6)
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] and state["epoch"] == EPOCHS
    assert {path.name for path in (run / "checkpoints").iterdir()} == {
        state["last_checkpoint"],
        state["best_checkpoint"],
        "model.json",
    }
    assert not [path for path in run.rglob("*") if ".partial-" in path.name]
    again = run_script(arguments, None)
    assert again.returncode == 2 and "already complete" in again.stderr


def test_a_resume_with_other_training_settings_is_refused_naming_both_values(rgb_split, tmp_path):
    arguments = training_arguments(rgb_split, tmp_path)
    assert run_script(arguments, "between-epochs").returncode == -9
    changed = [*arguments, "--learning-rate", "0.5", "--optimizer", "adam", "--batch-size", "16"]
    refused = run_script(changed, None)
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert "--learning-rate 0.05, not 0.5" in message
    assert "--optimizer sgd-nesterov, not adam" in message
    assert "--batch-size 4, not 16" in message
    run = tmp_path / "rgb-scratch-tiny"
    assert json.loads((run / "state.json").read_text())["epoch"] == 2  # untouched
    # Settings that do not change what is trained stay free.
    resumed = run_script([*arguments, "--no-progress", "--verbose"], None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming stage 1 of 1 (train) at epoch 3 of 3" in resumed.stdout
    settings = json.loads((run / "model.json").read_text())["settings"]
    assert (settings["optimizer"], settings["learning_rate"]) == ("sgd-nesterov", 0.05)


def test_a_second_run_of_the_same_name_is_refused_and_a_killed_one_leaves_no_lock(
    rgb_split, tmp_path
):
    arguments = training_arguments(rgb_split, tmp_path)
    paused = tmp_path / "paused"
    first = subprocess.Popen(
        script_command(arguments, "pause"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**ENVIRONMENT, "KILL_AT": "pause", "PAUSED_FILE": str(paused)},
    )
    try:
        for _ in range(600):
            if paused.exists() or first.poll() is not None:
                break
            time.sleep(0.2)
        assert paused.exists(), first.stderr.read().decode()[-3000:] if first.stderr else ""
        second = run_script(arguments, None)
        assert second.returncode == 2, second.stderr[-3000:]
        message = second.stderr.strip().splitlines()[-1]
        assert message == (
            f"error: run folder {tmp_path / 'rgb-scratch-tiny'} is in use by running process "
            f"{first.pid}; wait for that run to end or choose another --run-name."
        )
    finally:
        first.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        first.wait()
    again = run_script(arguments, None)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(tmp_path.glob(".*.lock"))
