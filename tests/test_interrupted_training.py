"""An interrupted training run never loses the trained model: a real training
subprocess is killed with SIGKILL in each phase, then the same command finishes the
run with the model of the best epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST, SCRIPTS, read_history

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT)}
EPOCHS = 3
# Runs 03 with one hook that kills its own process with SIGKILL (like kill -9 from
# outside, no clean-up runs) at the moment named by KILL_AT.
KILLING_RUN = """
import os, runpy, signal, sys
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


def run_script(arguments: list[str], kill_at: str | None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO_ROOT / SCRIPTS["03"]), *arguments]
    if kill_at:
        command = [sys.executable, "-c", KILLING_RUN, *command[1:]]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENVIRONMENT, "KILL_AT": kill_at or ""},
    )


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
    arguments = [
        "--data", str(rgb_split), "--output", str(tmp_path), "--epochs", str(EPOCHS),
        "--learning-rate", "0.05", "--warmup-epochs", "0", *FAST,
    ]  # fmt: skip
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
    }
    assert not [path for path in run.rglob("*") if ".partial-" in path.name]
    again = run_script(arguments, None)
    assert again.returncode == 2 and "already complete" in again.stderr
