"""`make demo` before and after: the old and the new demo.py, timed side by side.

The old demo is the project at git revision OLD_REVISION (exported with `git archive`
into a temporary folder, so no checkout is touched); the new one is this working tree.
Each round runs both, one after the other (alternating which goes first), each as
`make demo` runs it on a fresh clone: `python demo.py --demo-dir <fresh folder>`, data
generation included, with this Python. Per step (the "(N s)" lines demo.py prints) and
in all, it prints the seconds of each and the ratio new / old, and the validation and
scene accuracies each demo reports. CPU and load average are printed before and after.
Record results in benchmarks/README.md (## demo) with the command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402

OLD_REVISION = "1126d7e"  # git revision of the old demo (main before the tiny-valid demo)
ROUNDS = 1  # rounds; each runs the old and the new demo once
DEMO_ARGUMENTS = ""  # extra flags for both demos, e.g. "--images-per-class 100"
KEEP = ""  # folder that keeps the demo folders and logs; empty: a temporary folder

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
STEP_LINE: Final = re.compile(r"^== (.+?)(?:: skipped.*)?$")
SECONDS_LINE: Final = re.compile(r"^\s+\((\d+) s\)$")
ACCURACY_LINE: Final = re.compile(r"^(validation accuracy|scene accuracy)[^:]*: ([0-9.]+)")


def step_times(stdout: str) -> dict[str, float]:
    """Seconds per step of a demo.py output, keyed by the step's first word ("training",
    "06", ...), from its "== title" and "(N s)" lines."""
    times, title = {}, None
    for line in stdout.splitlines():
        if match := STEP_LINE.match(line):
            title = match.group(1).split()[0].rstrip(":")
        elif (match := SECONDS_LINE.match(line)) and title:
            times[title] = float(match.group(1))
    return times


def accuracies(stdout: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2)) for m in map(ACCURACY_LINE.match, stdout.splitlines()) if m
    }


def export_revision(revision: str, target: Path) -> Path:
    """The tracked files of `revision` of this repository, written into `target`."""
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", revision], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def run_demo(code: Path, demo_dir: Path, extra: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of `python demo.py --demo-dir demo_dir` in `code`."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(code / "demo.py"), "--demo-dir", str(demo_dir), *extra],
        cwd=code,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    (demo_dir.parent / f"{demo_dir.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"error: the demo in {code} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    from cnn_sentinel.precision import cpu_model

    settings = parse_settings(__file__, argv)
    extra = settings.demo_arguments.split()
    with tempfile.TemporaryDirectory(prefix="demo_bench_") as temporary:
        work = Path(settings.keep or temporary).resolve()
        work.mkdir(parents=True, exist_ok=True)
        codes = {"old": export_revision(settings.old_revision, work / "old_code"), "new": REPO_ROOT}
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {load_average()}")
        print(f"old: demo.py of {settings.old_revision}; new: {REPO_ROOT}; {sys.executable}")
        for round_number in range(1, settings.rounds + 1):
            order = ("old", "new") if round_number % 2 else ("new", "old")
            results = {}
            for name in order:
                seconds, stdout = run_demo(codes[name], work / f"{name}_{round_number}", extra)
                results[name] = (seconds, step_times(stdout), accuracies(stdout))
                print(
                    f"round {round_number} {name}: {seconds:.0f} s, load average {load_average()}",
                    flush=True,
                )
            (old_s, old_steps, old_acc), (new_s, new_steps, new_acc) = (
                results["old"],
                results["new"],
            )
            print(f"\n{'step':<12} {'old s':>7} {'new s':>7} {'new/old':>8}")
            for step in old_steps:
                old, new = old_steps[step], new_steps.get(step, float("nan"))
                print(f"{step:<12} {old:7.0f} {new:7.0f} {new / max(old, 1):8.2f}")
            print(f"{'whole demo':<12} {old_s:7.0f} {new_s:7.0f} {new_s / old_s:8.2f}")
            for key in old_acc:
                print(f"{key}: old {old_acc[key]:.3f}, new {new_acc.get(key, float('nan')):.3f}")
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    run_script(main)
