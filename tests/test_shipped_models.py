"""The models the project ships (models/): plain Keras files with the documented classes
and bands, trained by the project's own scripts, that map a real scene plausibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from script_modules import load_script

from cnn_sentinel.scene import plan
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "eurosat-rgb-resnet-valid-narrow": RGB_BAND_NAMES,
    "eurosat-ms-resnet-valid-narrow": MS_BAND_NAMES,
}
# Classes of farmland, grassland and forest: what a rural Central European scene in
# winter is mostly made of (the T33UUU subset of ../shared/data/scenes).
RURAL = {"AnnualCrop", "Forest", "HerbaceousVegetation", "Pasture", "PermanentCrop"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_files_are_complete_and_documented(name):
    folder = REPO_ROOT / "models" / name
    for part in ("model.keras", "model.json", "history.csv", "README.md", "report/metrics.json"):
        assert (folder / part).is_file(), f"{folder / part} is missing"
    assert (folder / "model.keras").stat().st_size < 25 * 2**20
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["band_names"] == list(SHIPPED[name])
    assert name.split("-", 2)[2] == info["arch"] == "resnet-valid-narrow"
    metrics = json.loads((folder / "report" / "metrics.json").read_text(encoding="utf-8"))
    accuracy = metrics["validation"]["overall_accuracy"]
    assert accuracy == pytest.approx(info["metrics"]["validation"]["overall_accuracy"])
    assert accuracy >= 0.9
    matrix = np.array(metrics["validation"]["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(accuracy)
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"{accuracy:.4f}" in readme or f"{100 * accuracy:.1f}" in readme
    assert "python 0" in readme  # the exact commands that made it


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_opens_with_plain_keras(name, tmp_path):
    """No project module: a fresh interpreter in isolated mode, outside the repository."""
    model_path = REPO_ROOT / "models" / name / "model.keras"
    bands = len(SHIPPED[name])
    code = (
        "import sys, numpy as np, keras\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        f"pixels = np.full((2, 64, 64, {bands}), 1000.0 if {bands} == 13 else 100.0, 'float32')\n"
        "probabilities = model.predict(pixels, verbose=0)\n"
        "assert probabilities.shape == (2, 10), probabilities.shape\n"
        "assert abs(float(probabilities.sum()) - 2.0) < 1e-4\n"
        "assert 'cnn_sentinel' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(model_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_maps_a_real_scene_crop_plausibly(name, scenes_dir, tmp_path):
    """06 with the shipped model on a 512 x 384 crop of the real T33UUU scene (farmland,
    forest and a village in February 2017): mostly rural classes, several of them."""
    scene = scenes_dir / "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
    classify = load_script("06_classify_image.py", f"classify_{name.replace('-', '_')}")
    summary = classify.main(
        [
            "--image", str(scene),
            "--model", str(REPO_ROOT / "models" / name / "model.keras"),
            "--window", "512", "192", "512", "384",
            "--stride", "8",
            "--output-dir", str(tmp_path),
            "--cloud-mask", "off",
            "--no-progress",
        ]
    )  # fmt: skip
    pixels = {label: count for label, count in summary["pixels"].items() if count}
    total = sum(pixels.values())
    assert total == 512 * 384
    shares = {label: count / total for label, count in pixels.items()}
    assert len(shares) >= 3, shares
    assert sum(shares.get(label, 0.0) for label in RURAL) > 0.6, shares
    assert shares.get("Industrial", 0.0) + shares.get("Residential", 0.0) < 0.15, shares
    assert max(shares.values()) < 0.9, shares


def test_default_model_fits_the_scene_bands():
    ms, words = plan.shipped_model_for(list(MS_BAND_NAMES), None)
    assert ms.endswith("eurosat-ms-resnet-valid-narrow/model.keras") and "13 bands" in words
    assert Path(ms).is_file()
    unnamed = [f"band {index}" for index in range(1, 14)]  # a 13-band stack without names
    assert plan.shipped_model_for(unnamed, None)[0] == ms
    for names, bands in [(list(RGB_BAND_NAMES), None), (list(MS_BAND_NAMES), "B04,B03,B02")]:
        rgb, words = plan.shipped_model_for(names, bands)
        assert rgb.endswith("eurosat-rgb-resnet-valid-narrow/model.keras") and "RGB" in words
        assert Path(rgb).is_file()
