"""Tests of cnn_sentinel.scene (reading, predictors, writers): the talk's window geometry
exactly, streaming, nodata, band handling, GeoTIFF outputs, legacy models and Sentinel-2 products.

Models here are tiny Keras networks built in the test (a position-sensitive
pooling + dense stack), scenes are a few dozen pixels, so every test is fast.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ORIGIN,
    expected_at_stride,
    generated_jp2_bands,
    prepare,
    raw_config,
    read_raster,
    run_classification,
    safe_layout,
    save_model,
    smooth_scene,
    tiny_model,
    valid_model,
    write_scene,
)
from osgeo import gdal
from talk_reference import talk_classify

from cnn_sentinel import precision
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.scene import blocks, clouds, geometry, quicklooks, runner, writers
from cnn_sentinel.scene import reading as scenes
from cnn_sentinel.scene.products import sentinel2_band_files
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES, talk_constants

gdal.UseExceptions()
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rgb_case(tmp_path_factory):
    """A 40x50 uint8 RGB scene, a model with its own normalisation, the talk's answer."""
    folder = tmp_path_factory.mktemp("rgb_case")
    image = smooth_scene(40, 50, 3, np.uint8, 30.0)
    scene_path = write_scene(folder / "scene.tif", image)
    mean, std = talk_constants(3)
    model = tiny_model(3, mean, std)
    reference = talk_classify(image, model)
    return folder, scene_path, image, model, reference


# ---------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 3, 7, 40])
def test_symmetric_indices_mirror_like_numpy_pad(length):
    values = np.arange(length)
    padded = np.pad(values, 70, mode="symmetric")
    assert np.array_equal(values[scenes.symmetric_indices(-70, length + 70, length)], padded)


def test_window_centres_sit_in_the_middle_of_each_block():
    assert scenes.window_centres(5, 1).tolist() == [0, 1, 2, 3, 4]
    assert scenes.window_centres(130, 64).tolist() == [32, 96, 129]
    assert scenes.window_centres(10, 4).tolist() == [2, 6, 9]


def test_window_view_is_the_talk_window():
    block = np.arange(70 * 80 * 2).reshape(70, 80, 2)
    windows = scenes.window_view(block, 64)
    assert windows.shape == (7, 17, 64, 64, 2)
    assert np.array_equal(windows[3, 5], block[3:67, 5:69])


# ---------------------------------------------------------------------------
# Exactness against the talk's algorithm
# ---------------------------------------------------------------------------


def test_stride_1_equals_the_talk_algorithm(rgb_case, tmp_path):
    _, scene_path, _, model, (talk_labels, talk_probabilities) = rgb_case
    assert len(np.unique(talk_labels)) > 1, "the test scene should not be one class"
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=1, batch_size=37
    )
    assert np.array_equal(labels, talk_labels)
    np.testing.assert_allclose(probabilities, talk_probabilities, atol=1e-5)


@pytest.mark.parametrize("stride", [4, 7, 16])
def test_stride_fills_each_block_with_its_centre_window(rgb_case, tmp_path, stride):
    _, scene_path, _, model, (talk_labels, talk_probabilities) = rgb_case
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=stride, block_rows=8
    )
    assert np.array_equal(labels, expected_at_stride(talk_labels, stride))
    np.testing.assert_allclose(
        probabilities, expected_at_stride(talk_probabilities, stride), atol=1e-5
    )


@pytest.mark.parametrize(("stride", "block_rows"), [(1, 1), (1, 13), (1, 1000), (3, 5), (3, 64)])
def test_block_boundaries_are_invisible(rgb_case, tmp_path, stride, block_rows):
    _, scene_path, _, model, (talk_labels, _) = rgb_case
    labels, _ = run_classification(
        tmp_path,
        scene_path,
        model,
        raw_config(RGB_BAND_NAMES),
        stride=stride,
        block_rows=block_rows,
        batch_size=64,
    )
    assert np.array_equal(labels, expected_at_stride(talk_labels, stride))


def test_scene_smaller_than_half_a_window_mirrors_like_numpy(tmp_path):
    image = smooth_scene(9, 6, 3, np.uint8, 30.0, seed=3)
    scene_path = write_scene(tmp_path / "small.tif", image)
    mean, std = talk_constants(3)
    model = tiny_model(3, mean, std, seed=1)
    talk_labels, talk_probabilities = talk_classify(image, model)
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=1
    )
    assert np.array_equal(labels, talk_labels)
    np.testing.assert_allclose(probabilities, talk_probabilities, atol=1e-5)


# ---------------------------------------------------------------------------
# Models: model.json, legacy .h5, mixed precision
# ---------------------------------------------------------------------------


def test_legacy_h5_model_gets_the_talk_constants(tmp_path):
    image = smooth_scene(20, 24, 13, np.uint16, 600.0, seed=2)
    scene_path = write_scene(tmp_path / "ms.tif", image)
    model = tiny_model(13)  # normalisation outside the model, as the talk trained it
    model_path = tmp_path / "talk_model.h5"
    model.save(model_path)
    loaded, config = scenes.load_scene_model(model_path)
    mean, std = talk_constants(13)
    assert tuple(config.class_names) == CLASS_NAMES
    assert tuple(config.band_names) == MS_BAND_NAMES
    assert config.normalise_in_front
    np.testing.assert_array_equal(config.mean, mean)
    talk_labels, talk_probabilities = talk_classify(image, loaded, mean, std)
    labels, probabilities = run_classification(tmp_path, scene_path, loaded, config, stride=1)
    assert np.array_equal(labels, talk_labels)
    np.testing.assert_allclose(probabilities, talk_probabilities, atol=1e-5)


def test_model_json_gives_classes_bands_and_no_outside_normalisation(tmp_path):
    mean, std = talk_constants(3)
    names = [f"Class{index}" for index in range(4)]
    path = save_model(
        tiny_model(3, mean, std, classes=4),
        tmp_path / "run",
        ["B4", "B3", "B2"],
        json_facts={"class_names": names, "extra": {"ignored": True}},
    )
    _, config = scenes.load_scene_model(path)
    assert config.class_names == names
    assert tuple(config.band_names) == RGB_BAND_NAMES
    assert not config.normalise_in_front and config.input_size == 64


def test_keras_model_without_json_but_with_normalisation_gets_raw_pixels(tmp_path):
    mean, std = talk_constants(3)
    path = tmp_path / "alone.keras"
    tiny_model(3, mean, std).save(path)
    _, config = scenes.load_scene_model(path)
    assert not config.normalise_in_front and tuple(config.class_names) == CLASS_NAMES


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"class_names": ["a", "b"]}, "10 outputs but"),
        ({"band_names": list(MS_BAND_NAMES)}, "takes 3 bands but"),
        ({"input_size": 32}, "64x64 windows but"),
    ],
)
def test_model_json_that_contradicts_the_model_is_refused(tmp_path, facts, message):
    mean, std = talk_constants(3)
    path = save_model(tiny_model(3, mean, std), tmp_path, RGB_BAND_NAMES, json_facts=facts)
    with pytest.raises(InputError, match=message):
        scenes.load_scene_model(path)


def test_a_keras_model_without_model_json_says_loudly_which_classes_it_assumes(tmp_path, capsys):
    tiny_model(3, mean=[0.0] * 3, std=[1.0] * 3, classes=4).save(tmp_path / "epoch-002.keras")
    _model, info = scenes.load_scene_model(tmp_path / "epoch-002.keras")
    assert info.class_names == ["class0", "class1", "class2", "class3"]
    assert (
        f"note: no model.json found for {tmp_path / 'epoch-002.keras'} (beside it, or in its "
        "run folder for a checkpoint), so its 4 classes are ASSUMED to be class0, class1, "
        "class2, class3" in capsys.readouterr().err
    )


def test_files_that_are_not_models_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        scenes.load_scene_model(tmp_path / "missing.keras")
    text = tmp_path / "model.txt"
    text.write_text("x")
    with pytest.raises(InputError, match="not a Keras model file"):
        scenes.load_scene_model(text)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="is damaged or not a Keras model"):
        scenes.load_scene_model(broken)


def test_bfloat16_copy_keeps_weights_and_mostly_the_labels(rgb_case, tmp_path):
    _, scene_path, _, model, (talk_labels, _) = rgb_case
    mixed = runner.with_precision(model, "mixed_bfloat16")
    assert mixed.layers[1].dtype_policy.name == "float32"  # Normalization stays float32
    assert mixed.layers[-1].dtype_policy.name == "mixed_bfloat16"
    labels, _ = run_classification(
        tmp_path,
        scene_path,
        mixed,
        raw_config(RGB_BAND_NAMES),
        stride=2,
        precision="mixed_bfloat16",
    )
    assert np.mean(labels == expected_at_stride(talk_labels, 2)) > 0.9


# ---------------------------------------------------------------------------
# Bands and nodata
# ---------------------------------------------------------------------------


def test_band_names_are_normalised():
    assert scenes.normalise_band_name("B1") == "B01"
    assert scenes.normalise_band_name("b8a") == "B8A"
    assert scenes.normalise_band_name("B12") == "B12"
    assert scenes.normalise_band_name("QA60") == "QA60"


def test_bands_chosen_by_description_number_or_order():
    ravaen = [
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
        "B09", "B10", "B11", "B12", "QA60", "probability",
    ]  # fmt: skip
    indices = scenes.choose_scene_bands(ravaen, MS_BAND_NAMES, None, "s")
    assert [ravaen[index] for index in indices] == list(MS_BAND_NAMES)
    assert scenes.choose_scene_bands(MS_BAND_NAMES, RGB_BAND_NAMES, None, "s") == [3, 2, 1]
    assert scenes.choose_scene_bands(["band1", "band2", "band3"], RGB_BAND_NAMES, None, "s") == [
        0,
        1,
        2,
    ]
    assert scenes.choose_scene_bands(MS_BAND_NAMES, RGB_BAND_NAMES, "4,3,2", "s") == [3, 2, 1]
    assert scenes.choose_scene_bands(ravaen, RGB_BAND_NAMES, "B4,B3,B2", "s") == [3, 2, 1]


def test_band_mismatch_lists_the_expected_band_names():
    with pytest.raises(InputError, match="expects 13 bands: B01, B02, .*B12, B8A"):
        scenes.choose_scene_bands(RGB_BAND_NAMES, MS_BAND_NAMES, None, "rgb.tif")
    with pytest.raises(InputError, match="expects 3 bands: B04, B03, B02"):
        scenes.choose_scene_bands(MS_BAND_NAMES, RGB_BAND_NAMES, "1,2", "s")
    with pytest.raises(InputError, match="no band B13"):
        scenes.choose_scene_bands(MS_BAND_NAMES, RGB_BAND_NAMES, "B13,B03,B02", "s")
    with pytest.raises(InputError, match="not all among the 13 bands"):
        scenes.choose_scene_bands(MS_BAND_NAMES, RGB_BAND_NAMES, "14,3,2", "s")


def test_nodata_mask_nan_value_and_all_zero():
    block = np.ones((2, 3, 2), np.float32)
    block[0, 0] = 0
    block[0, 1, 1] = np.nan
    block[1, 2, 0] = -9
    mask = scenes.nodata_mask(block, [-9.0, None])
    assert mask.tolist() == [[True, True, False], [False, False, True]]


def talk_with_filled_holes(image, holes, model):
    """The talk's answer on the scene mirrored by half a window (the block 06 reads) whose
    holes hold the nearest valid pixel of their row: windows that touch no data see the
    scene continued, not zeros."""
    padded = np.pad(image, ((32, 32), (32, 32), (0, 0)), "symmetric")
    scenes.fill_nodata(padded, np.pad(holes, 32, "symmetric"))
    labels, probabilities = talk_classify(padded, model)
    return labels[32:-32, 32:-32], probabilities[32:-32, 32:-32]


def test_nodata_windows_are_skipped_and_marked(rgb_case, tmp_path):
    _, _, image, model, _ = rgb_case
    floats = image.astype(np.float32)
    floats[5:9, 10:30] = np.nan  # NaN nodata, as in the RaVAEn scene
    floats[20, :] = 7  # this scene's nodata value
    floats[30:32, 40:45] = 0  # all-zero pixels
    scene_path = write_scene(tmp_path / "holes.tif", floats, nodata=7.0)
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=1
    )
    holes = np.isnan(floats[..., 0]) | (floats[..., 0] == 7) | (floats[..., 0] == 0)
    assert np.all(labels[holes] == blocks.LABEL_NODATA)
    assert np.all(np.isnan(probabilities[holes]))
    # Elsewhere: the talk's answer with the holes filled as 06 fills them (row 20 has no
    # valid pixel and stays as it is).
    talk_labels, talk_probabilities = talk_with_filled_holes(np.nan_to_num(floats), holes, model)
    assert np.array_equal(labels[~holes], talk_labels[~holes])
    np.testing.assert_allclose(probabilities[~holes], talk_probabilities[~holes], atol=1e-5)


def test_nan_edge_columns_do_not_paint_stripes(rgb_case, tmp_path):
    """A scene of one constant colour with NaN columns at its edges (as the RaVAEn
    scene's): every pixel with data sees the same window, so all get the same class
    and probability; read as zeros, the edge columns' windows would differ."""
    _, _, _, model, _ = rgb_case
    scene = np.empty((30, 40, 3), np.float32)
    scene[:] = [90.0, 110.0, 130.0]
    scene[:, :3] = np.nan
    scene[:, -2:] = np.nan
    scene_path = write_scene(tmp_path / "edges.tif", scene)
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=1
    )
    assert np.all(labels[:, :3] == blocks.LABEL_NODATA)
    assert np.all(labels[:, -2:] == blocks.LABEL_NODATA)
    inside = labels[:, 3:-2]
    assert np.all(inside == inside[0, 0])
    np.testing.assert_allclose(probabilities[:, 3:-2], probabilities[0, 3], rtol=1e-6)
    constant = np.full((1, 64, 64, 3), [90.0, 110.0, 130.0], np.float32)
    expected = model.predict(constant, verbose=0)[0]
    assert inside[0, 0] == np.argmax(expected)


def test_stride_block_with_nodata_centre_is_nodata(rgb_case, tmp_path):
    _, _, image, model, _ = rgb_case
    holes = image.copy()
    holes[2, 2] = 0  # centre of the first 4x4 block
    scene_path = write_scene(tmp_path / "centre.tif", holes)
    labels, _ = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=4
    )
    assert np.all(labels[:4, :4] == blocks.LABEL_NODATA)
    assert np.all(labels[4:, 4:] != blocks.LABEL_NODATA)


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


def test_outputs_carry_georeferencing_colours_names_and_nodata(rgb_case, tmp_path):
    _, scene_path, _, model, _ = rgb_case
    run_classification(
        tmp_path,
        scene_path,
        model,
        raw_config(RGB_BAND_NAMES),
        stride=8,
        probabilities="all",
        name="geo",
    )
    writers.write_category_names(tmp_path / "geo_label.tif", CLASS_NAMES)
    source = gdal.Open(str(scene_path))
    label = gdal.Open(str(tmp_path / "geo_label.tif"))
    probability = gdal.Open(str(tmp_path / "geo_prob.tif"))
    for output in (label, probability):
        assert output.GetGeoTransform() == source.GetGeoTransform()
        assert output.GetSpatialRef().IsSame(source.GetSpatialRef())
        image_structure = output.GetMetadata("IMAGE_STRUCTURE")
        assert image_structure["COMPRESSION"] == "DEFLATE"
        assert output.GetRasterBand(1).GetBlockSize() == [256, 256]  # tiled
    band = label.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte
    assert band.GetNoDataValue() == blocks.LABEL_NODATA
    assert band.GetCategoryNames() == list(CLASS_NAMES)
    colours = band.GetRasterColorTable()
    assert colours.GetColorEntry(1)[:3] == blocks.CLASS_COLOURS["Forest"]
    assert colours.GetColorEntry(blocks.LABEL_NODATA)[3] == 0
    assert probability.RasterCount == len(CLASS_NAMES)
    descriptions = [probability.GetRasterBand(number).GetDescription() for number in range(1, 11)]
    assert descriptions == list(CLASS_NAMES)
    assert math.isnan(probability.GetRasterBand(1).GetNoDataValue())
    sums = probability.ReadAsArray().sum(axis=0)
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_not_georeferenced_scene_warns_and_classifies(rgb_case, tmp_path):
    _, _, image, model, _ = rgb_case
    scene_path = write_scene(tmp_path / "plain.tif", image, georeferenced=False)
    dataset = scenes.open_scene(scene_path)
    with pytest.warns(UserWarning, match="not georeferenced"):
        scenes.warn_if_not_georeferenced(dataset, str(scene_path))
    with pytest.warns(UserWarning, match="not georeferenced"):  # the entry point says so too
        labels, _ = run_classification(
            tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=8
        )
    assert labels.shape == image.shape[:2] and np.all(labels < 10)
    assert gdal.Open(str(tmp_path / "out_label.tif")).GetProjection() == ""


def test_quicklook_decimates_like_gdal_and_is_a_png(rgb_case, tmp_path):
    _, scene_path, _, model, _ = rgb_case
    dataset = scenes.open_scene(scene_path)
    classification = prepare(dataset, model, raw_config(RGB_BAND_NAMES), stride=3, block_rows=7)
    label_path, png = tmp_path / "out_label.tif", tmp_path / "look.png"
    quicklook = quicklooks.SideBySideQuicklookWriter(dataset, png, CLASS_NAMES, "test", max_side=17)
    label = writers.LabelWriter(dataset, label_path, CLASS_NAMES)
    classification.run([label, quicklook], progress=False)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decimated = gdal.Open(str(label_path)).ReadAsArray(
        buf_xsize=17, buf_ysize=14, resample_alg=gdal.GRIORA_NearestNeighbour
    )
    assert quicklook.labels.shape == (14, 17)
    assert np.array_equal(quicklook.labels, decimated)
    assert len(np.unique(quicklook.labels)) > 1


# ---------------------------------------------------------------------------
# Opening scenes: errors, windows, bounding boxes, Sentinel-2 products
# ---------------------------------------------------------------------------


def test_open_scene_refuses_missing_files_and_non_rasters(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        scenes.open_scene(tmp_path / "missing.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(InputError, match="not a raster"):
        scenes.open_scene(text)
    with pytest.raises(InputError, match="not a Sentinel-2 .SAFE"):
        scenes.open_scene(tmp_path)


def test_window_and_bbox_crop_virtually(rgb_case):
    _, scene_path, image, _, _ = rgb_case
    cropped = scenes.open_scene(scene_path, window=(5, 10, 20, 15))
    assert np.array_equal(np.moveaxis(cropped.ReadAsArray(), 0, -1), image[10:25, 5:25])
    assert cropped.GetGeoTransform()[0] == ORIGIN[0] + 5 * 10
    x0, y0 = ORIGIN[0], ORIGIN[3]
    boxed = scenes.open_scene(scene_path, bbox=(x0 + 50, y0 - 250, x0 + 250, y0 - 100))
    assert np.array_equal(np.moveaxis(boxed.ReadAsArray(), 0, -1), image[10:25, 5:25])
    with pytest.raises(InputError, match="not inside scene"):
        scenes.open_scene(scene_path, window=(40, 0, 20, 10))
    with pytest.raises(InputError, match="not minx miny maxx maxy"):
        scenes.open_scene(scene_path, bbox=(x0 + 250, y0 - 250, x0 + 50, y0 - 100))


def test_a_bbox_outside_the_scene_names_the_box_and_the_extent_and_one_across_it_is_clipped(
    rgb_case, capsys
):
    _, scene_path, image, _, _ = rgb_case
    x0, y0 = ORIGIN[0], ORIGIN[3]
    rows, cols = image.shape[:2]
    extent = f"{x0:.10g} {y0 - 10 * rows:.10g} {x0 + 10 * cols:.10g} {y0:.10g} (EPSG:32633)"
    with pytest.raises(InputError) as refused:
        scenes.open_scene(scene_path, bbox=(-23000, 571204, -22000, 572204))
    assert str(refused.value) == (
        f"bounding box -23000 571204 -22000 572204 does not overlap scene {scene_path}, whose "
        f"extent is {extent}; give minx miny maxx maxy in the scene's CRS."
    )
    # Partly inside: clipped to the scene, and said so.
    boxed = scenes.open_scene(scene_path, bbox=(x0 - 500, y0 - 100, x0 + 100, y0 + 300))
    assert np.array_equal(np.moveaxis(boxed.ReadAsArray(), 0, -1), image[0:10, 0:10])
    assert capsys.readouterr().err == (
        f"note: bounding box {x0 - 500:.10g} {y0 - 100:.10g} {x0 + 100:.10g} {y0 + 300:.10g} "
        f"reaches beyond scene {scene_path} (extent {extent}); classifying its part inside "
        f"the scene, {x0:.10g} {y0 - 100:.10g} {x0 + 100:.10g} {y0:.10g}.\n"
    )


def georeferenced_scene(epsg: int, transform: tuple) -> gdal.Dataset:
    """A 3-band 64 x 64 in-memory scene in `epsg` with `transform`."""
    from osgeo import osr

    dataset = gdal.GetDriverByName("MEM").Create("", 64, 64, 3, gdal.GDT_Byte)
    dataset.SetGeoTransform(transform)
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(epsg)
    dataset.SetProjection(reference.ExportToWkt())
    return dataset


def test_pixels_far_from_the_models_10_m_or_degrees_are_warned_about_with_the_fix():
    geographic = georeferenced_scene(4326, (15.0, 0.0001, 0, 52.0, 0, -0.0001))
    assert geometry.pixel_size_problem(geographic, 10.0, "wgs84.tif") == (
        "scene wgs84.tif is in geographic coordinates (EPSG:4326, degrees), but the model was "
        "trained on 10 m pixels, so its windows would cover other ground; reproject it first: "
        "gdalwarp -t_srs EPSG:32633 -tr 10 10 -r bilinear wgs84.tif scene_utm.tif"
    )
    landsat = georeferenced_scene(32633, (330000.0, 300.0, 0, 5822040.0, 0, -300.0))
    assert geometry.pixel_size_problem(landsat, 10.0, "landsat.tif") == (
        "scene landsat.tif has 300 m pixels, 30 times the 10 m pixels the model was trained "
        "on, so its windows see other things than in training and the map is likely wrong; "
        "resample it first: gdalwarp -tr 10 10 -r bilinear landsat.tif scene_10m.tif"
    )
    for size in (10.0, 12.0, 7.0):
        scene = georeferenced_scene(32633, (330000.0, size, 0, 5822040.0, 0, -size))
        assert geometry.pixel_size_problem(scene, 10.0, "fine.tif") == ""
    southern = georeferenced_scene(4326, (-70.0, 0.0001, 0, -33.0, 0, -0.0001))
    assert geometry.utm_code(southern) == "EPSG:32719"
    # 06's entry point warns (run_script prints it as one "warning: ..." line).
    model = tiny_model(3, [100.0] * 3, [30.0] * 3)
    with pytest.warns(UserWarning, match="scene landsat.tif has 300 m pixels"):
        prepare(landsat, model, raw_config(RGB_BAND_NAMES), "landsat.tif")


def mixed_scene(types: list[int], names: list[str]) -> gdal.Dataset:
    """An in-memory 64 x 64 scene whose bands have the given GDAL types and descriptions."""
    dataset = gdal.GetDriverByName("MEM").Create("", 64, 64, 0)
    for number, (data_type, name) in enumerate(zip(types, names, strict=True), start=1):
        dataset.AddBand(data_type)
        dataset.GetRasterBand(number).SetDescription(name)
        dataset.GetRasterBand(number).Fill(100 * number)
    dataset.SetGeoTransform(ORIGIN)
    return dataset


def test_scene_decisions_look_at_the_bands_read_and_name_their_fallbacks():
    byte, uint16 = gdal.GDT_Byte, gdal.GDT_UInt16
    # RGB scaling: decided by the bands the model reads, not by the scene's first band.
    names = ["B01", "B04", "B03", "B02"]
    assert scenes.rgb_scaling_needed(
        "auto", RGB_BAND_NAMES, mixed_scene([byte] + [uint16] * 3, names), [1, 2, 3]
    )
    assert not scenes.rgb_scaling_needed(
        "auto", RGB_BAND_NAMES, mixed_scene([uint16] + [byte] * 3, names), [1, 2, 3]
    )
    # Bands taken in file order because their names are not the model's: said in the banner.
    model = tiny_model(3, [100.0] * 3, [30.0] * 3)
    colours = mixed_scene([byte] * 3, ["Red", "Green", "Blue"])
    classification = prepare(colours, model, raw_config(RGB_BAND_NAMES), "colours.tif")
    assert classification.describe().startswith(
        "64x64 px, bands Red, Green, Blue (taken in file order as the model's B04, B03, B02) ->"
    )
    named = mixed_scene([byte] * 3, list(RGB_BAND_NAMES))
    by_name = prepare(named, model, raw_config(RGB_BAND_NAMES))
    assert "taken" not in by_name.describe() and "named by" not in by_name.describe()
    # The cloud mask reads its bands by name: assumed names are said too.
    pytest.importorskip("s2cloudless")
    masking, words = clouds.cloud_mask_choice(
        "auto", MS_BAND_NAMES, 0.65, "x.tif", names_assumed=True
    )
    assert masking and words.endswith(
        "the scene's bands are unnamed, so the mask takes them in EuroSAT's order"
    )


def test_model_json_records_the_pixel_size_and_older_files_mean_10_m():
    old = ModelInfo.from_json({"class_names": ["a"], "band_names": ["B04"]})
    assert old.pixel_size == 10.0 and old.to_json()["pixel_size"] == 10.0
    assert ModelInfo.from_json({"class_names": ["a"], "pixel_size": 20}).pixel_size == 20.0


def test_scene_stem_strips_product_suffixes():
    assert scenes.scene_stem("a/S2A_MSIL1C_X.SAFE.zip") == "S2A_MSIL1C_X"
    assert scenes.scene_stem("a/S2A_MSIL1C_X.SAFE/") == "S2A_MSIL1C_X"
    assert scenes.scene_stem("b/scene.tif") == "scene"


def nearest_stack(files: dict[str, Path]) -> np.ndarray:
    """The 13 bands repeated onto the 10 m grid by numpy: (13, rows, cols)."""
    arrays = [read_raster(files[band]) for band in MS_BAND_NAMES]
    rows = max(array.shape[0] for array in arrays)
    factors = [rows // array.shape[0] for array in arrays]
    return np.stack(
        [np.repeat(np.repeat(array, f, 0), f, 1) for array, f in zip(arrays, factors, strict=True)]
    )


def test_gdal_has_a_jpeg2000_driver():
    assert gdal.GetDriverByName("JP2OpenJPEG") is not None


def test_generated_safe_folder_and_zip_stack_in_eurosat_order(tmp_path):
    files = generated_jp2_bands(tmp_path)
    safe = safe_layout(tmp_path, files)
    expected = nearest_stack(files)
    stack = scenes.open_scene(safe)
    assert scenes.scene_band_names(stack) == MS_BAND_NAMES
    assert stack.GetGeoTransform() == ORIGIN
    assert np.array_equal(stack.ReadAsArray(), expected)
    archive = tmp_path / f"{safe.name}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(safe.rglob("*")):
            if path.is_file():
                bundle.write(path, path.relative_to(tmp_path))
    zipped = scenes.open_scene(archive, window=(8, 16, 32, 48))
    assert np.array_equal(zipped.ReadAsArray(), expected[:, 16:64, 8:40])
    assert scenes.scene_band_names(zipped) == MS_BAND_NAMES


def test_product_without_band_images_or_with_two_granules_is_refused(tmp_path):
    empty = tmp_path / "empty" / "S2A_MSIL1C_X.SAFE"
    (empty / "GRANULE").mkdir(parents=True)
    with pytest.raises(InputError, match="has no band images"):
        scenes.open_scene(empty)
    files = generated_jp2_bands(tmp_path, rows=12, cols=12)
    safe = safe_layout(tmp_path / "two", files)
    second = safe / "GRANULE" / "L1C_T33UUV_B" / "IMG_DATA"
    second.mkdir(parents=True)
    (second / "T33UUV_20170216T102101_B02.jp2").symlink_to(files["B02"])
    with pytest.raises(InputError, match="2 granules"):
        scenes.open_scene(safe)
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_text("no zip")
    with pytest.raises(InputError, match="not a readable .zip"):
        scenes.open_scene(bad_zip)


def test_l2a_product_takes_the_finest_resolution(tmp_path):
    files = generated_jp2_bands(tmp_path, rows=12, cols=12)
    safe = tmp_path / "S2A_MSIL2A_X.SAFE"
    for folder, suffix in (("R10m", "_10m"), ("R20m", "_20m")):
        target = safe / "GRANULE" / "L2A_T33UUU" / "IMG_DATA" / folder
        target.mkdir(parents=True)
        for band in ("B02", "B03", "B04"):
            (target / f"T33UUU_20170216T102101_{band}{suffix}.jp2").symlink_to(
                files[band] if suffix == "_10m" else files["B05"]
            )
    found = sentinel2_band_files(safe)
    assert sorted(found) == ["B02", "B03", "B04"]
    assert all(path.endswith("_10m.jp2") for path in found.values())


# ---------------------------------------------------------------------------
# The real scenes (shared data); skipped with a reason when absent
# ---------------------------------------------------------------------------


def test_real_safe_stack_equals_the_13_band_geotiff(scenes_dir, tmp_path):
    bands_folder = scenes_dir / "sentinel2_l1c_T33UUU_20170216_jp2"
    stacked = scenes_dir / "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
    if not bands_folder.is_dir() or not stacked.is_file():
        pytest.skip("the T33UUU jp2 bands or their 13-band GeoTIFF are not in the shared data")
    files = {band: next(bands_folder.glob(f"*_{band}.jp2")) for band in MS_BAND_NAMES}
    stack = scenes.open_scene(safe_layout(tmp_path, files))
    reference = gdal.Open(str(stacked))
    assert stack.GetGeoTransform() == reference.GetGeoTransform()
    assert np.array_equal(stack.ReadAsArray(), reference.ReadAsArray())


def test_real_ravaen_scene_selects_bands_by_description_and_honours_nan(scenes_dir, tmp_path):
    path = scenes_dir / "sentinel2_ravaen_lahinch_2017-09-26_15band.tif"
    if not path.is_file():
        pytest.skip("the RaVAEn 15-band scene is not in the shared data")
    dataset = scenes.open_scene(path)
    indices = scenes.choose_scene_bands(
        scenes.scene_band_names(dataset), MS_BAND_NAMES, None, str(path)
    )
    assert indices == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 8]
    mean, std = talk_constants(13)
    model = tiny_model(13, mean, std)
    labels, probabilities = run_classification(
        tmp_path, path, model, raw_config(MS_BAND_NAMES), stride=8
    )
    pixels = np.moveaxis(dataset.ReadAsArray(), 0, -1)[..., indices]
    missing = np.isnan(pixels).any(axis=-1)
    assert missing.any()
    assert np.all(labels[missing] == blocks.LABEL_NODATA)
    assert np.all(np.isnan(probabilities[missing]))
    assert np.mean(labels[~missing] != blocks.LABEL_NODATA) > 0.9


def test_real_landsat_scene_with_nodata_0(scenes_dir, tmp_path):
    path = scenes_dir / "landsat7_rasterio_RGB.byte.tif"
    if not path.is_file():
        pytest.skip("the Landsat RGB scene is not in the shared data")
    mean, std = talk_constants(3)
    model = tiny_model(3, mean, std)
    labels, _ = run_classification(
        tmp_path, path, model, raw_config(RGB_BAND_NAMES), stride=32, block_rows=128
    )
    pixels = np.moveaxis(read_raster(path), 0, -1)
    assert np.all(labels[(pixels == 0).any(axis=-1)] == blocks.LABEL_NODATA)
    assert np.mean(labels[(pixels != 0).all(axis=-1)] < 10) > 0.8
    output = gdal.Open(str(tmp_path / "out_label.tif"))
    assert output.GetGeoTransform() == gdal.Open(str(path)).GetGeoTransform()


def test_rgb_model_on_l1c_values_sees_them_scaled_like_eurosat_jpegs(rgb_case, tmp_path):
    _, _, _, model, _ = rgb_case
    digital_numbers = smooth_scene(20, 24, 3, np.uint16, 500.0, seed=4)
    scene_path = write_scene(tmp_path / "l1c.tif", digital_numbers)
    dataset = scenes.open_scene(scene_path)
    assert scenes.rgb_scaling_needed("auto", RGB_BAND_NAMES, dataset)
    assert not scenes.rgb_scaling_needed("auto", MS_BAND_NAMES, dataset)
    assert not scenes.rgb_scaling_needed("none", RGB_BAND_NAMES, dataset)
    byte_scene = scenes.open_scene(rgb_case[1])
    assert not scenes.rgb_scaling_needed("auto", RGB_BAND_NAMES, byte_scene)
    labels, _ = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), stride=3, rgb_scaling="eurosat"
    )
    scaled = np.clip(digital_numbers.astype(np.float64), 0, 2750) * 254 / 2750 + 1
    talk_labels, _ = talk_classify(np.round(scaled).astype(np.uint8), model)
    assert np.array_equal(labels, expected_at_stride(talk_labels, 3))


def test_models_with_our_custom_layers_load_and_convert(tmp_path):
    import keras

    from cnn_sentinel.networks import fused_batch_normalization_class

    mean, std = talk_constants(3)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Normalization(mean=list(mean), variance=list(np.square(std)))(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = fused_batch_normalization_class()()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    path = save_model(keras.Model(inputs, outputs), tmp_path, RGB_BAND_NAMES)
    model, config = scenes.load_scene_model(path)
    assert tuple(config.band_names) == RGB_BAND_NAMES
    assert runner.with_precision(model, "mixed_bfloat16").layers[-1].dtype_policy.name == (
        "mixed_bfloat16"
    )


def test_float32_classification_of_a_model_trained_in_bfloat16(tmp_path):
    """A model saved under mixed_bfloat16 keeps that policy; --mixed-precision off must
    still compute in float32 (the exact talk answer), and bf16 must differ only slightly."""
    from cnn_sentinel import networks as nf

    with precision.dtype_policy("mixed_bfloat16"):
        model = nf.build_network("tiny", RGB_BAND_NAMES, 10, [100.0] * 3, [30.0] * 3)
    model.save(tmp_path / "model.keras")
    loaded = nf.load_model(tmp_path / "model.keras")
    assert runner._has_mixed_layers(loaded)
    exact = runner.with_precision(loaded, "float32")
    assert not runner._has_mixed_layers(exact)
    pixels = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3)).astype(np.float32)
    float32_output = np.asarray(exact(pixels, training=False))
    bfloat16_output = np.asarray(loaded(pixels, training=False))
    np.testing.assert_allclose(float32_output, bfloat16_output, atol=0.05)
    assert not np.array_equal(float32_output, bfloat16_output)


# ---------------------------------------------------------------------------
# The whole-block (dense) pass: exact for models without zero padding
# ---------------------------------------------------------------------------


def assert_same_up_to_ties(dense, windows, dense_labels, window_labels):
    """Probabilities within 1e-4; labels equal except where the top two tie within 1e-4."""
    np.testing.assert_allclose(dense, windows, atol=1e-4)
    assert np.array_equal(np.isnan(dense), np.isnan(windows))
    top_two = np.sort(np.nan_to_num(windows), axis=0)[-2:]
    ties = top_two[1] - top_two[0] < 1e-4
    assert np.array_equal(dense_labels[~ties], window_labels[~ties])


@pytest.fixture(scope="module")
def valid_case(tmp_path_factory):
    """A 45 x 50 RGB scene with nodata holes (one at the edge), a tiny resnet-valid model."""
    folder = tmp_path_factory.mktemp("valid_case")
    image = smooth_scene(45, 50, 3, np.uint8, 30.0, seed=7)
    image[10:13, 20:26] = 0  # an all-zero hole inside
    image[0:3, 45:50] = 0  # and one in the corner, where windows are mirrored
    scene_path = write_scene(folder / "scene.tif", image)
    return folder, scene_path, image, valid_model()


@pytest.mark.parametrize(("stride", "block_rows"), [(1, 16), (3, 12), (4, 8), (4, 1000)])
def test_dense_pass_equals_one_pass_per_window(valid_case, tmp_path, stride, block_rows):
    _, scene_path, image, model = valid_case
    config = raw_config(RGB_BAND_NAMES)
    results = {}
    for method in ("windows", "dense"):
        results[method] = run_classification(
            tmp_path, scene_path, model, config, name=method, method=method,
            probabilities="all", stride=stride, block_rows=block_rows,
        )  # fmt: skip
    (dense_labels, dense), (window_labels, windows) = results["dense"], results["windows"]
    assert len(np.unique(window_labels[window_labels != blocks.LABEL_NODATA])) > 1
    assert_same_up_to_ties(dense, windows, dense_labels, window_labels)
    holes = np.all(image == 0, axis=-1)
    assert np.all(dense_labels[holes] == blocks.LABEL_NODATA)


def test_dense_pass_at_stride_1_is_the_talk_answer(valid_case, tmp_path):
    _, scene_path, image, model = valid_case
    labels, probabilities = run_classification(
        tmp_path, scene_path, model, raw_config(RGB_BAND_NAMES), method="dense", stride=1
    )
    holes = np.all(image == 0, axis=-1)
    talk_labels, talk_probabilities = talk_with_filled_holes(image, holes, model)
    np.testing.assert_allclose(probabilities[~holes], talk_probabilities[~holes], atol=1e-4)
    assert np.mean(labels[~holes] == talk_labels[~holes]) > 0.999


def test_dense_tiles_and_phase_methods_agree(valid_case):
    """Column tiles of the block and dilated kernels give the fragments' numbers."""
    from cnn_sentinel.scene.dense import DenseNetwork

    _, _, image, model = valid_case
    config = raw_config(RGB_BAND_NAMES)
    padded = np.pad(image, ((32, 31), (32, 31), (0, 0)), "symmetric")
    windows = scenes.window_view(padded, 64)[::2, ::3].reshape(-1, 64, 64, 3)
    expected = np.asarray(model(windows.astype(np.float32))).reshape(23, 17, 10)
    rows, cols = np.arange(0, 45, 2), np.arange(0, 50, 3)
    fragments = DenseNetwork(model, config).tile(padded, rows, cols)
    np.testing.assert_allclose(fragments, expected, atol=1e-5)
    dilated = DenseNetwork(model, config, "dilation").tile(padded, np.arange(45), np.arange(50))
    np.testing.assert_allclose(dilated[::2, ::3], expected, atol=1e-5)


def test_auto_picks_dense_only_where_it_is_exact(valid_case, rgb_case):
    dataset = scenes.open_scene(valid_case[1])
    config = raw_config(RGB_BAND_NAMES)
    valid = prepare(dataset, valid_case[3], config)
    assert valid.method == "dense" and valid.dense_reason is None
    assert "whole-block pass" in valid.describe()
    flatten = prepare(dataset, rgb_case[3], config)
    assert flatten.method == "windows"
    assert "Flatten" in flatten.dense_reason


def test_dense_refused_with_one_sentence_for_zero_padding(valid_case):
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="block1_conv1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    dataset = scenes.open_scene(valid_case[1])
    with pytest.raises(InputError, match="block1_conv1 \\(Conv2D\\) pads with zeros") as error:
        prepare(dataset, model, raw_config(RGB_BAND_NAMES), method="dense")
    assert str(error.value).count(". ") == 0 and str(error.value).endswith(".")


def test_block_steps_and_extra_writers_plug_in(valid_case, tmp_path):
    """A per-block step (a mask) runs before the writers; a writer sees block pixels."""
    dataset = scenes.open_scene(valid_case[1])
    classification = prepare(
        dataset, valid_case[3], raw_config(RGB_BAND_NAMES), stride=2, block_rows=10
    )

    def mask_left_half(block):
        block.probabilities[:, : block.probabilities.shape[1] // 2] = np.nan
        return block

    class PixelSums:
        def __init__(self):
            self.rows = 0

        def write(self, block):
            self.rows += block.source.last_row - block.first_row
            assert block.source.pixels.shape[1] == 50 + 64  # with the halo

        def finish(self):
            pass

        def close(self):
            pass

    sums = PixelSums()
    label = writers.LabelWriter(dataset, tmp_path / "masked.tif", CLASS_NAMES)
    summary = classification.run([label, sums], steps=[mask_left_half])
    labels = read_raster(tmp_path / "masked.tif")
    assert np.all(labels[:, :24] == blocks.LABEL_NODATA)
    assert np.all(labels[3:9, 30:] != blocks.LABEL_NODATA)
    assert sums.rows == 45 and summary["nodata"] >= 45 * 24


def test_a_failing_writer_stops_the_run_without_hanging(valid_case, tmp_path):
    """The reading thread, done early and blocked on a full queue, must not hang the
    run when a writer fails (it once did: the end marker was put without a timeout)."""
    dataset = scenes.open_scene(valid_case[1])
    classification = prepare(
        dataset, valid_case[3], raw_config(RGB_BAND_NAMES), stride=8, block_rows=24
    )

    class Failing:
        def write(self, block):
            raise OSError("disk full")

        def finish(self):
            pass

        def close(self):
            self.closed = True

    failing = Failing()
    with pytest.raises(OSError, match="disk full"):
        classification.run([failing], progress=False, prefetch_depth=1)
    assert failing.closed


# Classifies a 256 x 256 scene at stride 100000 under a 4 GiB data limit (a guard: the
# repeat this replaced asked for tens of GiB) and prints the peak of numpy's allocations.
HUGE_STRIDE_RUN = """
import resource, sys, tracemalloc
from pathlib import Path
resource.setrlimit(resource.RLIMIT_DATA, (4 * 2**30, 4 * 2**30))
import numpy as np
from helpers import raw_config, run_classification, smooth_scene, tiny_model, write_scene
from image_functions import RGB_BAND_NAMES
folder = Path(sys.argv[1])
scene = write_scene(folder / "scene.tif", smooth_scene(256, 256, 3, np.uint8, 30.0))
model = tiny_model(3, [100.0] * 3, [30.0] * 3)
tracemalloc.start()
labels, _ = run_classification(folder, scene, model, raw_config(RGB_BAND_NAMES), stride=100000)
print("peak", tracemalloc.get_traced_memory()[1], "labels", len(np.unique(labels)))
"""


def test_a_stride_larger_than_the_scene_is_clamped_and_memory_stays_small(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", HUGE_STRIDE_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "note: stride 100000 is larger than the scene (256 x 256 pixels); using 256, so one "
        "window classifies the whole scene." in result.stderr
    )
    _, peak, _, label_count = result.stdout.split()
    assert int(label_count) == 1  # one window, one class over the whole scene
    assert int(peak) < 200 * 2**20, f"peak of traced allocations {int(peak) / 2**20:.0f} MB"


def test_per_window_batches_of_a_large_network_stay_under_the_activation_budget(capsys):
    """VGG16's first layers hold 2 MB a window: 256 windows would take 0.5 GiB at once."""
    from cnn_sentinel import networks

    mean, std = talk_constants(13)
    vgg16 = networks.build_network("vgg16", MS_BAND_NAMES, 10, mean, std, augment=False)
    assert runner.activation_bytes(vgg16) == 2 * 4 * 64 * 64 * 64
    assert runner.batch_within_budget(vgg16, 256) == 64
    assert "note: batches of 64 windows, not 256" in capsys.readouterr().err
    assert runner.batch_within_budget(vgg16, 32) == 32
    assert runner.batch_within_budget(vgg16, 256, symmetries=8) == 8
    small = tiny_model(3, [100.0] * 3, [30.0] * 3)
    assert runner.batch_within_budget(small, 256) == 256
