"""statistics.py: exact and talk band statistics, JSON output, and import safety."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from script_modules import load_script

from cnn_sentinel.errors import InputError
from image_functions import CLASS_NAMES, MS_BAND_NAMES, list_class_images

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "statistics.py"
STDLIB_STATISTICS = str(Path(sysconfig.get_path("stdlib")) / "statistics.py")


statistics_script = load_script(SCRIPT.name, "statistics_script")


def write_generated_ms(folder: Path, per_class: int = 2, seed: int = 0) -> Path:
    """13-band uint16 GeoTIFFs laid out like EuroSAT, with large values and
    very different per-image offsets (between-image variance the talk method misses)."""
    rng = np.random.default_rng(seed)
    driver = gdal.GetDriverByName("GTiff")
    for name in CLASS_NAMES[:4]:
        (folder / name).mkdir(parents=True)
        for number in range(1, per_class + 1):
            offset = rng.integers(1000, 50000, size=(13, 1, 1))
            pixels = offset + rng.normal(0, 300, size=(13, 64, 64))
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
            dataset = driver.Create(
                str(folder / name / f"{name}_{number}.tif"), 64, 64, 13, gdal.GDT_UInt16
            )
            for band in range(13):
                dataset.GetRasterBand(band + 1).WriteArray(pixels[band])
            dataset = None
    return folder


def numpy_reference(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent reading (tifffile/PIL, not GDAL): (global mean, global std, mean image std)."""
    import tifffile
    from PIL import Image

    images = []
    for path, _label in list_class_images(folder):
        if path.suffix.lower() in (".tif", ".tiff"):
            images.append(tifffile.imread(path))
        else:
            images.append(np.asarray(Image.open(path)))
    stack = np.stack(images).astype(np.float64)
    band_count = stack.shape[-1]
    flat = stack.reshape(-1, band_count)
    per_image_std = stack.reshape(len(images), -1, band_count).std(axis=1).mean(axis=0)
    return flat.mean(axis=0), flat.std(axis=0), per_image_std


def run(folder: Path, *flags: str) -> dict:
    return statistics_script.main([str(folder), "--no-progress", *flags])


def test_exact_and_talk_agree_with_numpy_on_generated_data(tmp_path):
    train = write_generated_ms(tmp_path / "split" / "train")
    mean, std, per_image_std = numpy_reference(train)
    exact = run(train)
    np.testing.assert_allclose(exact["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(exact["std"], std, rtol=1e-6)
    talk = run(train, "--method", "talk", "--output", str(tmp_path / "talk.json"))
    np.testing.assert_allclose(talk["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(talk["std"], per_image_std, rtol=1e-6)
    assert all(t < e for t, e in zip(talk["std"], exact["std"], strict=True))


def test_exact_and_talk_agree_with_numpy_on_all_real_ms_samples(real_ms_dir, tmp_path):
    mean, std, _per_image_std = numpy_reference(real_ms_dir)
    exact = run(real_ms_dir, "--output", str(tmp_path / "exact.json"))
    assert exact["images"] == len(list_class_images(real_ms_dir))
    assert exact["pixels"] == exact["images"] * 64 * 64
    assert exact["bands"] == list(MS_BAND_NAMES)
    np.testing.assert_allclose(exact["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(exact["std"], std, rtol=1e-6)


def test_talk_method_on_real_ms_samples(real_ms_dir, tmp_path):
    mean, _std, per_image_std = numpy_reference(real_ms_dir)
    talk = run(real_ms_dir, "--method", "talk", "--output", str(tmp_path / "talk.json"))
    np.testing.assert_allclose(talk["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(talk["std"], per_image_std, rtol=1e-6)


def test_real_rgb_samples(sample_rgb_dataset, tmp_path):
    mean, std, _ = numpy_reference(sample_rgb_dataset)
    stats = run(sample_rgb_dataset, "--output", str(tmp_path / "rgb.json"))
    assert stats["bands"] == ["B04", "B03", "B02"]
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-6)


def test_json_written_beside_the_folder_and_not_overwritten(tmp_path, capsys):
    train = write_generated_ms(tmp_path / "split" / "train", per_class=1)
    stats = run(train)
    output = tmp_path / "split" / "band_stats.json"
    written = json.loads(output.read_text())
    assert set(written) == {"bands", "mean", "std", "images", "pixels", "method"}
    assert written == stats and written["method"] == "exact" and written["images"] == 4
    table = capsys.readouterr().out
    assert "B8A" in table and f"{stats['mean'][0]:.3f}" in table
    with pytest.raises(InputError, match="already exists"):
        run(train, "--method", "talk")
    assert json.loads(output.read_text())["method"] == "exact"
    run(train, "--method", "talk", "--overwrite")
    assert json.loads(output.read_text())["method"] == "talk"
    assert sorted(p.name for p in output.parent.iterdir()) == ["band_stats.json", "train"]


def test_bad_input(tmp_path):
    device = tmp_path / "fifo"
    os.mkfifo(device)
    with pytest.raises(InputError, match="not a regular file"):
        run(tmp_path, "--output", str(device), "--overwrite")
    assert stat.S_ISFIFO(device.stat().st_mode)
    with pytest.raises(InputError, match="does not exist"):
        run(tmp_path / "nowhere")
    (tmp_path / "empty" / "Forest").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no"):
        run(tmp_path / "empty")
    assert not (tmp_path / "band_stats.json").exists()


def test_command_line(tmp_path):
    train = write_generated_ms(tmp_path / "split" / "train", per_class=1)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(train), "--method", "talk", "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "split" / "band_stats.json").read_text())["method"] == "talk"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: folder")


IMPORT_CHECK = f"""
import sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import statistics
assert statistics.__file__ == {STDLIB_STATISTICS!r}, statistics.__file__
assert statistics.mean([1, 2, 3]) == 2
assert statistics.NormalDist(0, 1).cdf(0) == 0.5
from statistics import median, stdev
assert median([3, 1, 2]) == 2 and stdev([1, 1, 1]) == 0
import numpy, scipy.stats, sklearn.metrics
from tensorflow import keras
import keras as keras3
assert sys.modules["statistics"].__file__ == {STDLIB_STATISTICS!r}
print("ok")
"""


def test_import_statistics_gives_the_standard_library(tmp_path):
    """With the repo root first on sys.path, `import statistics` and third-party
    libraries that use it (numpy, scipy, scikit-learn, TensorFlow/Keras) work."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_import_from_the_repository_folder():
    """`python -c` in the repo root puts it first on sys.path as ''."""
    code = (
        "import statistics, sys; assert sys.path[0] == ''; "
        f"assert statistics.__file__ == {STDLIB_STATISTICS!r}; "
        "print(statistics.fmean([1.0, 2.0]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.5"


def test_class_folders_outside_eurosat_are_fine(tmp_path):
    folder = tmp_path / "own"
    write_generated_ms(tmp_path / "generated", per_class=1)
    for own, eurosat in zip(("Glacier", "Vineyard"), CLASS_NAMES[:2], strict=True):
        (folder / own).mkdir(parents=True)
        for path in (tmp_path / "generated" / eurosat).iterdir():
            (folder / own / path.name).symlink_to(path)
    stats = run(folder, "--output", str(tmp_path / "own.json"))
    assert stats["images"] == 2 and stats["bands"] == list(MS_BAND_NAMES)


def test_a_constant_band_is_refused_before_anything_is_written(tmp_path):
    """A std of zero would divide by zero in every model trained with these statistics."""
    folder = tmp_path / "flat"
    (folder / "Forest").mkdir(parents=True)
    for number in (1, 2):
        dataset = gdal.GetDriverByName("GTiff").Create(
            str(folder / "Forest" / f"Forest_{number}.tif"), 64, 64, 2, gdal.GDT_UInt16
        )
        dataset.GetRasterBand(1).WriteArray(np.arange(64 * 64).reshape(64, 64) * number)
        dataset.GetRasterBand(2).Fill(7)
        dataset = None
    output = tmp_path / "band_stats.json"
    with pytest.raises(InputError, match=r"give band band2 the std 0\.0; it must be above zero"):
        run(folder, "--output", str(output))
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["flat"]
