"""The lock of an output folder under real concurrency: two processes that make the same
new folder at the same moment (two Dask tasks of one run writing into a new --output-dir)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRIALS = 40
# Each process takes the lock of its own outputs in folder new<i> at the same instant as
# the other (both spin until a shared start time), then prints what went wrong, if anything.
RACING_LOCKS = """
import sys, time
from pathlib import Path
from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import folder_lock

root, name, start, trials = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
for trial in range(trials):
    while time.time() < start + 0.02 * trial:
        pass
    try:
        with folder_lock(root / f"new{trial}", name, "outputs", "wait"):
            (root / f"new{trial}" / name).write_text("done")
    except (InputError, OSError) as error:
        print(f"trial {trial}: {error}")
"""


def test_two_processes_making_one_new_output_folder_both_get_their_lock(tmp_path):
    start = time.time() + 2.0
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_LOCKS, str(tmp_path), name, str(start), str(TRIALS)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for name in ("first", "second")
    ]
    failures = [process.communicate(timeout=120)[0] for process in processes]
    assert failures == ["", ""]
    for trial in range(TRIALS):
        assert sorted(path.name for path in (tmp_path / f"new{trial}").iterdir()) == [
            "first",
            "second",
        ]
