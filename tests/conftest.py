"""Shared test fixtures: real EuroSAT samples when present, generated data otherwise.

Real data is looked up in `$EUROSAT_SAMPLES` (the folder holding `eurosat/` and
`scenes/`) or, when that variable is not set, in `../shared/data` beside the
checkout. It is never copied into the project: the sample fixtures link a few
real files per class into a temporary folder. Without real data, the same
fixtures fall back to the EuroSAT-like data that demo_data.py generates, so a
fresh clone passes.

`EUROSAT_SAMPLES=none make test` runs the suite as a user's fresh clone does:
real data hidden (`../shared` ignored), generated data in the sample fixtures,
and the tests that need real data skipped. Tests that take a real-data or
sample fixture as their own argument carry the marker `real_data` (added here),
so `pytest -m real_data` reruns just them on real data; `.ci/run` runs both.

Plain helpers that several test modules use (tiny models, generated scenes, splits,
the docs' code blocks) live in helpers.py; test modules never import each other.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from image_functions import CLASS_NAMES, list_images  # noqa: E402

# Plain helpers shared by the test modules live in helpers.py; its asserts read like ours.
pytest.register_assert_rewrite("helpers")
from helpers import TUTORIAL, make_split, runnable_blocks  # noqa: E402

SAMPLES_PER_CLASS = 6
SAMPLES_VARIABLE = "EUROSAT_SAMPLES"
NO_REAL_DATA = "none"  # EUROSAT_SAMPLES=none: behave as a clone without real data
# Fixtures whose data is real when present: tests taking one of them as an argument
# (not through another fixture, such as a training split made of samples) are marked
# `real_data`, so CI reruns the tests about the data, not every training run, on it.
DATA_FIXTURES = {
    "real_rgb_dir",
    "real_ms_dir",
    "scenes_dir",
    "sample_rgb_dataset",
    "sample_ms_dataset",
}


def shared_data_folder() -> Path | None:
    """The real-data folder (holding eurosat/ and scenes/), or None when absent."""
    given = os.environ.get(SAMPLES_VARIABLE)
    if given is None:
        candidates = [REPO_ROOT.parent / "shared" / "data"]
    elif given.strip().lower() in ("", NO_REAL_DATA):
        return None
    else:  # set: the only place looked at, so a wrong path is never silently replaced
        candidates = [Path(given).resolve(), Path(given).resolve().parent]
    for candidate in candidates:
        if (candidate / "eurosat").is_dir() or (candidate / "scenes").is_dir():
            return candidate
    return None


def pytest_configure(config) -> None:
    given = os.environ.get(SAMPLES_VARIABLE, NO_REAL_DATA)
    if given.strip().lower() not in ("", NO_REAL_DATA) and shared_data_folder() is None:
        raise pytest.UsageError(
            f"{SAMPLES_VARIABLE}={given} holds no eurosat/ or scenes/ folder (nor does its "
            f"parent); name the folder holding them, or set {SAMPLES_VARIABLE}={NO_REAL_DATA} "
            "to test without real data."
        )
    config.addinivalue_line(
        "markers",
        "real_data: uses real EuroSAT samples or scenes when present (generated data or a skip "
        "otherwise); `pytest -m real_data` reruns these on real data",
    )


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        function = getattr(item, "function", None)
        arguments = set(inspect.signature(function).parameters) if function else set()
        if DATA_FIXTURES & arguments:
            item.add_marker(pytest.mark.real_data)


def _real_folder(*parts: str) -> Path:
    base = shared_data_folder()
    folder = base.joinpath(*parts) if base else None
    if folder is None or not folder.exists():
        pytest.skip(
            f"real data {'/'.join(parts)} not found (set EUROSAT_SAMPLES or put shared/data "
            "beside the checkout)"
        )
    return folder


@pytest.fixture(scope="session")
def real_rgb_dir() -> Path:
    """Real EuroSAT RGB JPEGs (class folders); skips with a reason when absent."""
    return _real_folder("eurosat", "rgb")


@pytest.fixture(scope="session")
def real_ms_dir() -> Path:
    """Real EuroSAT 13-band GeoTIFFs (class folders); skips with a reason when absent."""
    return _real_folder("eurosat", "ms")


@pytest.fixture(scope="session")
def scenes_dir() -> Path:
    """Real Sentinel-2 / Landsat scene subsets; skips with a reason when absent."""
    return _real_folder("scenes")


def _sample_dataset(target: Path, kind: str) -> Path:
    """A few images per class: links to real files when present, else generated."""
    base = shared_data_folder()
    source = base / "eurosat" / kind if base else None
    if source is not None and source.is_dir():
        for class_name in CLASS_NAMES:
            (target / class_name).mkdir(parents=True)
            for path in list_images(source / class_name)[:SAMPLES_PER_CLASS]:
                (target / class_name / path.name).symlink_to(path)
        return target
    import demo_data

    # `target` exists already (tmp_path_factory made it); the data goes into a new folder.
    return demo_data.write_demo_dataset(
        target / f"eurosat_{kind}", kind=kind, images_per_class=SAMPLES_PER_CLASS
    )


@pytest.fixture(scope="session")
def sample_rgb_dataset(tmp_path_factory) -> Path:
    """EuroSAT-layout RGB folder, SAMPLES_PER_CLASS images per class (real or generated)."""
    return _sample_dataset(tmp_path_factory.mktemp("rgb"), "rgb")


@pytest.fixture(scope="session")
def sample_ms_dataset(tmp_path_factory) -> Path:
    """EuroSAT-layout 13-band folder, SAMPLES_PER_CLASS images per class (real or generated)."""
    return _sample_dataset(tmp_path_factory.mktemp("ms"), "ms")


@pytest.fixture(scope="module")
def rgb_split(sample_rgb_dataset, tmp_path_factory) -> Path:
    """A tiny RGB split of the samples (helpers.make_split), made once per test module."""
    return make_split(sample_rgb_dataset, tmp_path_factory.mktemp("rgb_split"))


# ---------------------------------------------------------------------------
# The tutorial's runnable blocks (docs/tutorial.md): the one end-to-end chain of the suite
# (demo data -> 01 -> statistics.py -> 05 and 03 -> 06), run once per session.
# test_readme checks every block; test_demo reuses the chain's data and model.
# ---------------------------------------------------------------------------

BLOCK_TIMEOUT_S = 300


class ReadmeChain:
    """The tutorial's runnable blocks, run in order in one folder, each at most once.

    The folder holds links to the repository's scripts; `python` on PATH is the
    interpreter running the tests. `run_through(index)` runs the blocks up to
    `index` that have not run yet and returns that block's result.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.blocks = runnable_blocks(TUTORIAL.read_text(encoding="utf-8"))
        self.results: list[subprocess.CompletedProcess] = []
        for script in REPO_ROOT.glob("*.py"):
            (folder / script.name).symlink_to(script)
        self.environment = {
            **os.environ,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        }
        self.environment.pop("TF_CONFIG", None)

    def run_through(self, index: int) -> subprocess.CompletedProcess:
        while len(self.results) <= index:
            if self.results and self.results[-1].returncode != 0:
                pytest.fail(
                    f"tutorial block {len(self.results) - 1} failed, so block {index} cannot run"
                )
            body = self.blocks[len(self.results)].replace(".venv/bin/python", sys.executable)
            self.results.append(
                subprocess.run(
                    ["bash", "-e", "-o", "pipefail", "-c", body],
                    cwd=self.folder,
                    env=self.environment,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                )
            )
        return self.results[index]

    def index_of(self, text: str) -> int:
        """Index of the first runnable block containing `text`."""
        return next(index for index, body in enumerate(self.blocks) if text in body)


@pytest.fixture(scope="session")
def readme_chain(tmp_path_factory) -> ReadmeChain:
    """The tutorial's runnable blocks (see ReadmeChain), shared by the whole session."""
    return ReadmeChain(tmp_path_factory.mktemp("readme"))
