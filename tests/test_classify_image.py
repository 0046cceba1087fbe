"""Tests of 06_classify_image.py as users run it: flags, outputs, every bad input.

main(argv) is called in-process (TensorFlow starts once for the module); one
test runs the script in a subprocess to check the exit status and the one-line
error. Scenes are tiny; models are built in the tests.
"""

from __future__ import annotations

import errno
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ORIGIN,
    expected_at_stride,
    generated_jp2_bands,
    read_raster,
    safe_layout,
    save_model,
    smooth_scene,
    tiny_model,
    valid_model,
    write_scene,
)
from osgeo import gdal
from script_modules import load_script
from talk_reference import talk_classify

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import quicklooks, writers
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES, talk_constants

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "06_classify_image.py"


classify_image = load_script(SCRIPT.name, "classify_image")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """An RGB scene, an MS scene, a self-contained RGB model and an MS model."""
    folder = tmp_path_factory.mktemp("classify")
    rgb = smooth_scene(30, 36, 3, np.uint8, 30.0)
    rgb_path = write_scene(folder / "rgb_scene.tif", rgb)
    ms = smooth_scene(20, 22, 13, np.uint16, 600.0)
    ms_path = write_scene(folder / "ms_scene.tif", ms, descriptions=MS_BAND_NAMES)
    mean, std = talk_constants(3)
    rgb_model = tiny_model(3, mean, std)
    rgb_model_path = save_model(rgb_model, folder / "rgb_run", RGB_BAND_NAMES)
    ms_mean, ms_std = talk_constants(13)
    ms_model_path = save_model(tiny_model(13, ms_mean, ms_std), folder / "ms_run", MS_BAND_NAMES)
    return {
        "folder": folder,
        "rgb": rgb,
        "rgb_path": rgb_path,
        "ms_path": ms_path,
        "rgb_model": rgb_model,
        "rgb_model_path": rgb_model_path,
        "ms_model_path": ms_model_path,
        "talk": talk_classify(rgb, rgb_model),
    }


def run(*argv: object) -> dict:
    return classify_image.main([str(value) for value in argv] + ["--no-progress"])


def test_help_is_instant_and_lists_the_constants():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--image", "--model", "--stride", "--block-rows", "--bands", "--bbox"):
        assert flag in result.stdout


def test_classifies_and_writes_label_probability_and_quicklook(case, tmp_path):
    summary = run(
        "--image", case["rgb_path"], "--model", case["rgb_model_path"],
        "--output-dir", tmp_path, "--stride", 1, "--block-rows", 7, "--antialias", 1,
    )  # fmt: skip
    labels = read_raster(tmp_path / "rgb_scene_label.tif")
    probabilities = read_raster(tmp_path / "rgb_scene_prob.tif")
    talk_labels, talk_probabilities = case["talk"]
    assert np.array_equal(labels, talk_labels)
    np.testing.assert_allclose(probabilities, talk_probabilities, atol=1e-5)
    assert gdal.Open(str(tmp_path / "rgb_scene_label.tif")).GetMetadata()["ANTIALIAS"] == "1"
    png = (tmp_path / "rgb_scene_quicklook.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert summary["classified"] == summary["windows"] == 30 * 36
    assert sum(summary["pixels"].values()) == 30 * 36
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "rgb_scene_label.tif",
        "rgb_scene_label.tif.aux.xml",  # the class names
        "rgb_scene_prob.tif",
        "rgb_scene_quicklook.png",
    ]


def test_stride_and_probabilities_all(case, tmp_path):
    run(
        "--image", case["rgb_path"], "--model", case["rgb_model_path"], "--output-dir", tmp_path,
        "--stride", 4, "--probabilities", "all", "--no-quicklook",
    )  # fmt: skip
    labels = read_raster(tmp_path / "rgb_scene_label.tif")
    assert np.array_equal(labels, expected_at_stride(case["talk"][0], 4))
    assert read_raster(tmp_path / "rgb_scene_prob.tif").shape == (10, 30, 36)
    assert not (tmp_path / "rgb_scene_quicklook.png").exists()


def test_existing_outputs_need_overwrite(case, tmp_path):
    arguments = ["--image", case["rgb_path"], "--model", case["rgb_model_path"]]
    arguments += ["--output-dir", tmp_path, "--stride", 8]
    (tmp_path / "rgb_scene_label.tif").write_text("keep me")
    with pytest.raises(InputError, match="rgb_scene_label.tif already exists; pass --overwrite"):
        run(*arguments)
    assert (tmp_path / "rgb_scene_label.tif").read_text() == "keep me"
    assert not (tmp_path / "rgb_scene_prob.tif").exists()
    run(*arguments, "--overwrite")
    assert read_raster(tmp_path / "rgb_scene_label.tif").shape == (30, 36)


def test_failure_leaves_nothing_half_written(case, tmp_path, monkeypatch):
    def broken_quicklook(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(quicklooks.SideBySideQuicklookWriter, "finish", broken_quicklook)
    with pytest.raises(RuntimeError, match="disk full"):
        run("--image", case["rgb_path"], "--model", case["rgb_model_path"],
            "--output-dir", tmp_path, "--stride", 8)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["GeoTiffWriter", "SideBySideQuicklookWriter"])
def test_a_full_disk_names_the_folder_and_the_space_the_outputs_need(
    case, tmp_path, monkeypatch, where
):
    """ENOSPC from a writer (GDAL's words for it from the GeoTIFFs): one sentence for the
    whole set, whichever output was being written, and nothing left behind."""

    def disk_full(*args, **kwargs):
        if where == "GeoTiffWriter":
            raise RuntimeError("rgb_scene_prob.tif: Free disk space available is 0 bytes. "
                               "No space left on device")  # fmt: skip
        raise OSError(errno.ENOSPC, "No space left on device")

    owner = quicklooks if where.startswith("SideBySide") else writers
    monkeypatch.setattr(getattr(owner, where), "write", disk_full)
    output = tmp_path / "maps"
    with pytest.raises(InputError) as raised:
        run("--image", case["rgb_path"], "--model", case["rgb_model_path"],
            "--output-dir", output, "--stride", 8)  # fmt: skip
    needed = (30 * 36 * 5 + writers.QUICKLOOK_BYTES) / 2**20
    assert re.fullmatch(
        rf"no space left in {re.escape(str(output))} for the outputs of rgb_scene "
        rf"\([\d.]+ [MG]B free, at most {needed:.1f} MB needed\); free some space there or "
        r"choose another output folder, then run the same command again\.",
        str(raised.value),
    ), str(raised.value)
    assert not output.exists()


def test_legacy_h5_model_through_the_script(case, tmp_path):
    model = tiny_model(3)  # the talk normalised outside the model
    model_path = tmp_path / "model" / "talk.hdf5"
    model_path.parent.mkdir()
    model.save(model_path.with_suffix(".h5"))
    model_path.with_suffix(".h5").rename(model_path)
    run("--image", case["rgb_path"], "--model", model_path, "--output-dir", tmp_path / "out",
        "--stride", 3)  # fmt: skip
    mean, std = talk_constants(3)
    talk_labels, _ = talk_classify(case["rgb"], model, mean, std)
    labels = read_raster(tmp_path / "out" / "rgb_scene_label.tif")
    assert np.array_equal(labels, expected_at_stride(talk_labels, 3))


def test_bands_flag_selects_and_reorders(case, tmp_path):
    rgb_from_ms = ["--image", case["ms_path"], "--model", case["rgb_model_path"]]
    run(*rgb_from_ms, "--output-dir", tmp_path / "a", "--stride", 4, "--rgb-scaling", "none")
    run(*rgb_from_ms, "--output-dir", tmp_path / "b", "--stride", 4, "--rgb-scaling", "none",
        "--bands", "4,3,2")  # fmt: skip
    assert np.array_equal(
        read_raster(tmp_path / "a" / "ms_scene_label.tif"),
        read_raster(tmp_path / "b" / "ms_scene_label.tif"),
    )


def test_not_georeferenced_scene_warns_but_classifies(case, tmp_path):
    plain = write_scene(tmp_path / "plain.tif", case["rgb"], georeferenced=False)
    with pytest.warns(UserWarning, match="not georeferenced"):
        run("--image", plain, "--model", case["rgb_model_path"], "--stride", 8)
    assert read_raster(tmp_path / "plain_label.tif").shape == (30, 36)


def test_safe_product_with_bbox_into_an_rgb_model(case, tmp_path):
    safe = safe_layout(tmp_path, generated_jp2_bands(tmp_path))
    x0, y0 = ORIGIN[0], ORIGIN[3]
    run("--image", safe, "--model", case["rgb_model_path"], "--output-dir", tmp_path / "out",
        "--bbox", x0 + 100, y0 - 500, x0 + 400, y0 - 200, "--stride", 5)  # fmt: skip
    stem = safe.name.removesuffix(".SAFE")
    output = gdal.Open(str(tmp_path / "out" / f"{stem}_label.tif"))
    assert (output.RasterXSize, output.RasterYSize) == (30, 30)
    assert output.GetGeoTransform()[0] == x0 + 100
    assert output.GetGeoTransform()[3] == y0 - 200


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give the scene with --image"),
        (["--image", "{folder}/missing.tif", "--model", "{rgb_model}"], "missing.tif does not"),
        (["--image", "{folder}/rgb_scene.tif", "--model", "{folder}/no.keras"], "no.keras does"),
        (["--image", "{folder}/notes.dat", "--model", "{rgb_model}"], "is not a raster"),
        (["--image", "{folder}/rgb_scene.tif", "--model", "{ms_model}"],
         "expects 13 bands: B01, B02, B03, B04, B05, B06, B07, B08, B09, B10, B11, B12, B8A"),
        (["--image", "{folder}/ms_scene.tif", "--model", "{rgb_model}", "--bands", "B02,B03"],
         "select 2 bands .* expects 3 bands: B04, B03, B02"),
        (["--image", "{folder}/rgb_scene.tif", "--model", "{rgb_model}", "--bbox", "1", "2"],
         "bounding box \\[1.0, 2.0\\] is not minx"),
        (["--image", "{folder}/rgb_scene.tif", "--model", "{rgb_model}", "--stride", "0"],
         "stride must be at least 1"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_sentence(case, tmp_path, arguments, message):
    (case["folder"] / "notes.dat").write_text("not a raster")
    values = {
        "folder": case["folder"],
        "rgb_model": case["rgb_model_path"],
        "ms_model": case["ms_model_path"],
    }
    arguments = [argument.format(**values) for argument in arguments]
    with pytest.raises(InputError, match=message):
        run(*arguments, "--output-dir", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_exits_with_status_2_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--image", str(tmp_path / "missing.tif"), "--model", "m"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: scene {tmp_path / 'missing.tif'} does not exist."


def test_class_names_in_the_label_raster(case, tmp_path):
    run("--image", case["rgb_path"], "--model", case["rgb_model_path"], "--output-dir", tmp_path,
        "--stride", 8, "--no-quicklook")  # fmt: skip
    dataset = gdal.Open(str(tmp_path / "rgb_scene_label.tif"))  # keep: bands need it alive
    # GDAL 3.6's GeoTIFF driver loads the .aux.xml lazily, on the first georeferencing
    # query; GetCategoryNames alone does not trigger it (QGIS and gdalinfo do).
    assert dataset.GetGeoTransform() == ORIGIN
    assert dataset.GetRasterBand(1).GetCategoryNames() == list(CLASS_NAMES)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--stride", 0, "stride must be at least 1, not 0"),
        ("--batch-size", 0, "batch size must be at least 1, not 0"),
        ("--block-rows", -3, "block rows must be at least 1, not -3"),
        ("--window", "0 0 0 5", "window 0 0 0 5 \\(pixels\\) is not inside"),
    ],
)
def test_numeric_flags_are_checked_before_the_model_loads(case, tmp_path, flag, value, message):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a model")  # loading it would be the other error
    window = str(value).split() if flag == "--window" else [value]
    with pytest.raises(InputError, match=message):
        run("--image", case["rgb_path"], "--model", broken, "--output-dir", tmp_path / "out",
            flag, *window)  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_bad_stride_exits_before_tensorflow_starts(case, tmp_path):
    code = (
        "import sys, runpy; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n    print('tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(SCRIPT), "--image", str(case["rgb_path"]),
         "--model", str(case["rgb_model_path"]), "--stride", "0"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "error: stride must be at least 1, not 0."
    assert result.stdout.strip() == "False"


def test_output_dir_that_is_a_file_is_one_sentence(case, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(InputError, match=f"output folder {taken} is a file, not a folder"):
        run("--image", case["rgb_path"], "--model", case["rgb_model_path"], "--output-dir", taken)


def test_method_dense_is_exact_and_refused_for_windows_only_models(case, tmp_path, capsys):
    valid_path = save_model(valid_model(), tmp_path / "valid_run", RGB_BAND_NAMES)
    arguments = ["--image", case["rgb_path"], "--stride", 3, "--no-quicklook"]
    run(*arguments, "--model", valid_path, "--output-dir", tmp_path / "auto")
    assert "whole-block pass" in capsys.readouterr().out
    run(*arguments, "--model", valid_path, "--output-dir", tmp_path / "w", "--method", "windows")
    assert "one pass per window" in capsys.readouterr().out
    dense = read_raster(tmp_path / "auto" / "rgb_scene_prob.tif")
    windows = read_raster(tmp_path / "w" / "rgb_scene_prob.tif")
    np.testing.assert_allclose(dense, windows, atol=1e-4)
    with pytest.raises(InputError, match="cannot be classified exactly with --method dense: its"):
        run(*arguments, "--model", case["rgb_model_path"], "--output-dir", tmp_path / "d",
            "--method", "dense")  # fmt: skip
    assert not (tmp_path / "d").exists()


def test_tta_flag_averages_over_the_8_symmetries(case, tmp_path, capsys):
    """--tta reaches the classifier: the banner says so, and the probabilities are
    those of the windows turned 8 ways (whole-block pass) and differ from plain ones."""
    valid_path = save_model(valid_model(), tmp_path / "valid_run", RGB_BAND_NAMES)
    arguments = ["--image", case["rgb_path"], "--model", valid_path, "--stride", 3]
    run(*arguments, "--no-quicklook", "--output-dir", tmp_path / "plain")
    run(*arguments, "--no-quicklook", "--output-dir", tmp_path / "tta", "--tta")
    assert "averaged over the 8 flips and rotations" in capsys.readouterr().out
    plain = read_raster(tmp_path / "plain" / "rgb_scene_prob.tif")
    averaged = read_raster(tmp_path / "tta" / "rgb_scene_prob.tif")
    assert np.abs(averaged - plain).max() > 1e-3
    windows = tmp_path / "tta_windows"
    run(*arguments, "--no-quicklook", "--output-dir", windows, "--tta", "--method", "windows")
    np.testing.assert_allclose(read_raster(windows / "rgb_scene_prob.tif"), averaged, atol=1e-4)
