"""Shared test fixtures: real EuroSAT samples when present, generated data otherwise.

Real data is looked up in `$EUROSAT_SAMPLES` (the folder holding `eurosat/` and
`scenes/`) or in `../shared/data` beside the checkout. It is never copied into
the project: the sample fixtures link a few real files per class into a
temporary folder. Without real data, the same fixtures fall back to the
EuroSAT-like data that demo_data.py generates, so a fresh clone passes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from image_functions import CLASS_NAMES, list_images  # noqa: E402

SAMPLES_PER_CLASS = 6


def shared_data_folder() -> Path | None:
    """The real-data folder (holding eurosat/ and scenes/), or None when absent."""
    candidates = []
    if os.environ.get("EUROSAT_SAMPLES"):
        given = Path(os.environ["EUROSAT_SAMPLES"])
        candidates += [given, given.parent]
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "eurosat").is_dir() or (candidate / "scenes").is_dir():
            return candidate
    return None


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

    return demo_data.write_demo_dataset(target, kind=kind, images_per_class=SAMPLES_PER_CLASS)


@pytest.fixture(scope="session")
def sample_rgb_dataset(tmp_path_factory) -> Path:
    """EuroSAT-layout RGB folder, SAMPLES_PER_CLASS images per class (real or generated)."""
    return _sample_dataset(tmp_path_factory.mktemp("rgb"), "rgb")


@pytest.fixture(scope="session")
def sample_ms_dataset(tmp_path_factory) -> Path:
    """EuroSAT-layout 13-band folder, SAMPLES_PER_CLASS images per class (real or generated)."""
    return _sample_dataset(tmp_path_factory.mktemp("ms"), "ms")
