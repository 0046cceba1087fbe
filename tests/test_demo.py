"""End-to-end runs of demo.py: `make demo` on generated data, `make reproduce` on a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_demo(*arguments: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "demo.py"), *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=900,
    )


@pytest.mark.slow
def test_demo_runs_the_chain_and_is_idempotent(tmp_path, readme_chain):
    """demo.py on the README chain's demo data and 05 model (the suite trains 05 once):
    it runs 01, statistics.py and 06 itself, skips what exists, and a second run skips all."""
    trained = readme_chain.run_through(readme_chain.index_of("05_train_ms_from_scratch.py"))
    assert trained.returncode == 0, trained.stderr[-3000:]
    demo_dir = tmp_path / "demo"
    (demo_dir / "runs").mkdir(parents=True)
    # The README made data/demo with these very settings (seed 0), so demo.py would
    # write the same bytes; and its 05 run (tiny) stands in for the demo's training,
    # under the run name of the demo's own network (tiny-valid).
    (demo_dir / "data").symlink_to(readme_chain.folder / "data" / "demo")
    (demo_dir / "runs" / "demo-ms-scratch-tiny-valid").symlink_to(
        readme_chain.folder / "runs" / "ms-scratch-tiny"
    )
    settings = ["--demo-dir", str(demo_dir), "--images-per-class", "10", "--scene-size", "160"]
    first = run_demo(*settings, "--epochs", "2", "--stride", "16")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "== generate demo data: skipped" in first.stdout
    assert "== training (05_train_ms_from_scratch.py): skipped" in first.stdout
    assert "/runs/demo-ms-scratch-tiny-valid/model.keras exists" in first.stdout
    for step in ("01_split", "statistics.py", "06_classify"):
        assert f"$ python {step}" in first.stdout
    label = demo_dir / "classified" / "scene_ms_label.tif"
    assert label.is_file() and (demo_dir / "split" / "band_stats.json").is_file()
    accuracy_line = [line for line in first.stdout.splitlines() if "scene accuracy" in line]
    assert accuracy_line, first.stdout[-2000:]
    accuracy = float(accuracy_line[0].split(":")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0
    modified = label.stat().st_mtime_ns
    second = run_demo(*settings, "--epochs", "2", "--stride", "16")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped") == 5
    assert label.stat().st_mtime_ns == modified
    assert f"{accuracy:.3f}" in second.stdout


@pytest.mark.slow
def test_reproduce_on_a_eurosat_folder(tmp_path, sample_rgb_dataset):
    demo_dir = tmp_path / "reproduce"
    result = run_demo(
        "--demo-dir",
        str(demo_dir),
        "--eurosat-dir",
        str(sample_rgb_dataset),
        "--arch",
        "tiny",
        "--epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "03_train_rgb_from_scratch.py" in result.stdout  # JPEGs: the RGB recipe
    run = demo_dir / "runs" / "eurosat-rgb-scratch-tiny"
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    accuracy = metrics["validation"]["overall_accuracy"]
    table = (demo_dir / "results.md").read_text()
    assert f"{accuracy:.4f}" in table and "0.985" in table
    split_csv = (demo_dir / "split_rgb" / "split.csv").read_text().splitlines()
    assert len(split_csv) == 1 + sum(1 for _ in sample_rgb_dataset.glob("*/*"))


def test_demo_refuses_a_missing_eurosat_folder(tmp_path):
    result = run_demo("--demo-dir", str(tmp_path / "d"), "--eurosat-dir", str(tmp_path / "none"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: folder")
    assert not (tmp_path / "d").exists()
