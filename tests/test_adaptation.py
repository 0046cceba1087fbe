"""Scene adaptation and reflectance scale of 06 (cnn_sentinel/scene/adaptation.py,
reading.reflectance_factor): exact statistics, the model file untouched, the record."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
from helpers import (
    prepare,
    raw_config,
    read_raster,
    run_classification,
    save_model,
    smooth_scene,
    valid_model,
    write_scene,
)
from osgeo import gdal
from script_modules import load_script

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import adaptation, blocks, radiometry
from cnn_sentinel.scene import reading as scenes
from image_functions import RGB_BAND_NAMES


@pytest.fixture(scope="module")
def scene_case(tmp_path_factory):
    """A 100x90 uint16 RGB scene, a tiny resnet-valid with batch normalisation."""
    folder = tmp_path_factory.mktemp("adapt")
    image = smooth_scene(100, 90, 3, np.uint16, 300.0)
    return folder, write_scene(folder / "scene.tif", image), image


def windows_of(path, count=64, seed=0):
    dataset = scenes.open_scene(path)
    return adaptation.sample_windows(dataset, [0, 1, 2], 64, False, 1.0, count, seed=seed)


def test_windows_are_the_scene_read_as_06_reads_it(scene_case):
    _, path, image = scene_case
    windows = windows_of(path, count=40)
    assert windows.shape == (40, 64, 64, 3)
    padded = np.pad(image, ((32, 32), (32, 32), (0, 0)), "symmetric")
    # every sampled window is one of the scene's windows (centre r, c -> padded r:r+64)
    for window in windows[:10]:
        hits = [
            (r, c)
            for r in range(image.shape[0])
            for c in range(image.shape[1])
            if np.array_equal(padded[r : r + 64, c : c + 64], window)
        ]
        assert len(hits) >= 1
    assert np.array_equal(windows, windows_of(path, count=40))  # same seed, same sample
    assert not np.array_equal(windows, windows_of(path, count=40, seed=1))


def test_no_data_centres_are_never_sampled(tmp_path):
    image = smooth_scene(80, 70, 3, np.float32, 300.0)
    image[:, 20:] = np.nan  # only columns 0..19 hold data
    dataset = scenes.open_scene(write_scene(tmp_path / "holes.tif", image))
    windows = adaptation.sample_windows(dataset, [0, 1, 2], 64, False, 1.0, 500)
    # centre pixel (32, 32) of each window is one of the valid pixels
    valid = {tuple(pixel) for pixel in image[:, :20].reshape(-1, 3)}
    assert all(tuple(window[32, 32]) in valid for window in windows)
    empty = write_scene(tmp_path / "empty.tif", np.full((70, 70, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="no window with data"):
        adaptation.sample_windows(scenes.open_scene(empty), [0, 1, 2], 64, False, 1.0, 10)


def test_blend_one_gives_each_layer_the_scene_statistics_of_its_input(scene_case):
    import keras

    _, path, _ = scene_case
    windows = windows_of(path, count=48).astype(np.float32)
    model = valid_model()
    result = adaptation.estimate(model, windows, blend=1.0)
    layers = adaptation.batch_normalization_layers(model)
    assert len(layers) == len(result.statistics) > 4
    # Layer by layer: the input each one sees through the adapted layers before it.
    backbone = model.get_layer("resnet-valid")
    normalisation = next(layer for layer in model.layers if layer.name.startswith("normalization"))
    normalised = np.asarray(normalisation(windows))
    for _, layer in layers:
        inputs = np.asarray(keras.Model(backbone.input, layer.input)(normalised))
        mean = inputs.astype(np.float64).mean(axis=(0, 1, 2))
        np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            layer.moving_variance, inputs.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-4
        )


def test_blend_zero_changes_nothing_and_apply_repeats_an_estimate(scene_case):
    _, path, _ = scene_case
    windows = windows_of(path, count=32).astype(np.float32)
    model, same = valid_model(), valid_model()
    before = model.predict(windows, verbose=0)
    adaptation.estimate(model, windows, blend=0.0)
    np.testing.assert_allclose(model.predict(windows, verbose=0), before, rtol=1e-6, atol=1e-7)
    half = adaptation.estimate(model, windows, blend=0.5)
    adaptation.apply(same, half)
    adapted = model.predict(windows, verbose=0)
    np.testing.assert_array_equal(adapted, same.predict(windows, verbose=0))


def test_06_adapts_in_memory_records_it_and_leaves_the_model_file(scene_case, tmp_path):
    _, path, _ = scene_case
    model_path = save_model(valid_model(), tmp_path / "run", RGB_BAND_NAMES)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    script = load_script("06_classify_image.py", "classify_image")
    common = ["--image", str(path), "--model", str(model_path), "--stride", "4"]
    common += ["--rgb-scaling", "none", "--no-progress", "--no-quicklook"]
    script.main([*common, "--output-dir", str(tmp_path / "on"), "--adapt-windows", "256"])
    script.main([*common, "--output-dir", str(tmp_path / "off"), "--adapt", "off"])
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == digest
    label = gdal.Open(str(tmp_path / "on" / "scene_label.tif"))
    metadata = label.GetMetadata()
    assert metadata["ADAPTATION"] == "batchnorm"
    assert metadata["ADAPTATION_WINDOWS"] == "256"
    assert metadata["ADAPTATION_BLEND"] == "0.5"
    assert label.GetRasterBand(1).GetCategoryNames()[0] == "AnnualCrop"  # names kept
    label = None
    off = gdal.Open(str(tmp_path / "off" / "scene_label.tif"))
    assert off.GetMetadata()["ADAPTATION"] == "off"
    off = None
    # the tiny model's random statistics are far from this scene's: adapting changes labels
    on_labels = read_raster(tmp_path / "on" / "scene_label.tif")
    assert not np.array_equal(on_labels, read_raster(tmp_path / "off" / "scene_label.tif"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--adapt", "maybe"], "invalid choice"),
        (["--adapt-blend", "1.5"], "adapt blend must be between 0 and 1"),
        (["--adapt-windows", "3"], "adapt windows must be at least 16"),
        (["--reflectance-scale", "abc"], "reflectance scale must be auto or a number"),
        (["--reflectance-scale", "-5"], "reflectance scale must be positive"),
    ],
)
def test_bad_adapt_and_scale_flags_are_one_sentence(scene_case, tmp_path, flags, message):
    _, path, _ = scene_case
    model_path = save_model(valid_model(), tmp_path / "run", RGB_BAND_NAMES)
    script = load_script("06_classify_image.py", "classify_image")
    argv = ["--image", str(path), "--model", str(model_path), "--output-dir", str(tmp_path)]
    with pytest.raises((InputError, SystemExit)) as raised:
        script.main([*argv, "--no-progress", *flags])
    if raised.type is InputError:
        assert message in str(raised.value)
    assert not list(tmp_path.glob("scene_*"))  # nothing written


def test_reflectance_x1000_scaled_gives_the_x10000_map(scene_case, tmp_path):
    _, _, image = scene_case
    x10000 = (image // 10 * 10).astype(np.uint16)  # values a x1000 scene can hold exactly
    x1000 = (x10000 // 10).astype(np.uint16)
    high = write_scene(tmp_path / "x10000.tif", x10000)
    low = write_scene(tmp_path / "x1000.tif", x1000)
    model = valid_model()
    config = raw_config(RGB_BAND_NAMES)
    expected = run_classification(tmp_path, high, model, config, name="a", stride=3)
    scaled = run_classification(
        tmp_path, low, model, config, name="b", stride=3, reflectance_scale=1000
    )
    np.testing.assert_array_equal(scaled[0], expected[0])
    np.testing.assert_allclose(scaled[1], expected[1], rtol=1e-6)
    assert not np.array_equal(
        run_classification(tmp_path, low, model, config, name="c", stride=3)[0], expected[0]
    )


def test_auto_scale_warns_on_values_of_another_scale(tmp_path):
    dark = write_scene(tmp_path / "x1000.tif", np.full((40, 40, 3), 60, np.uint16))
    dataset = scenes.open_scene(dark)
    with pytest.warns(UserWarning, match="--reflectance-scale 1000"):
        assert radiometry.reflectance_factor("auto", dataset, [0, 1, 2], "x1000.tif") == (1.0, "")
    floats = write_scene(tmp_path / "unit.tif", np.full((40, 40, 3), 0.06, np.float32))
    with pytest.warns(UserWarning, match=r"--reflectance-scale 1\."):
        radiometry.reflectance_factor("auto", scenes.open_scene(floats), [0], "unit.tif")
    bright = write_scene(tmp_path / "x10000.tif", np.full((40, 40, 3), 900, np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        radiometry.reflectance_factor("auto", scenes.open_scene(bright), [0], "x10000.tif")
        byte = write_scene(tmp_path / "rgb.tif", np.full((40, 40, 3), 60, np.uint8))
        radiometry.reflectance_factor("auto", scenes.open_scene(byte), [0], "rgb.tif")
    factor, words = radiometry.reflectance_factor("1000", dataset, [0], "x1000.tif")
    assert factor == 10.0 and "reflectance x 1000" in words
    assert blocks.LABEL_NODATA == 255


def test_auto_share_follows_the_scene_shift():
    assert adaptation.blend_for_shift(0.09, 0.5) == 0.0  # EuroSAT's own patches: none
    assert adaptation.blend_for_shift(adaptation.SHIFT_FULL, 0.5) == 0.5
    assert adaptation.blend_for_shift(3.0, 0.5) == 0.5
    middle = (adaptation.SHIFT_NONE + adaptation.SHIFT_FULL) / 2
    assert adaptation.blend_for_shift(middle, 0.5) == pytest.approx(0.25)


def test_auto_leaves_a_close_scene_alone_and_measures_the_shift(scene_case, monkeypatch):
    _, path, _ = scene_case
    windows = windows_of(path, count=32)
    model = valid_model()
    before = [weight.copy() for weight in model.get_weights()]
    shift = adaptation.scene_shift(model, windows)
    assert shift > adaptation.SHIFT_FULL  # random statistics are far from any scene
    full = adaptation.adapt(valid_model(), windows, "auto", 0.5)
    assert full.shift == pytest.approx(shift) and full.blend == 0.5 and full.statistics
    monkeypatch.setattr(adaptation, "scene_shift", lambda model, windows: 0.1)
    close = adaptation.adapt(model, windows, "auto", 0.5)
    assert close.statistics == {} and close.blend == 0.0
    assert close.record()["ADAPTATION"] == "none needed"
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    forced = adaptation.adapt(model, windows, "on", 0.3)
    assert forced.shift is None and forced.blend == 0.3 and forced.statistics


def test_a_model_object_given_to_06_keeps_its_statistics(scene_case):
    """A worker's cached model serves scene after scene: adapting works on a copy."""
    _, path, _ = scene_case
    model = valid_model()
    before = [weight.copy() for weight in model.get_weights()]
    classification = prepare(
        scenes.open_scene(path), model, raw_config(RGB_BAND_NAMES), rgb_scaling="none",
        adapt="on", adapt_windows=64,
    )  # fmt: skip
    assert classification.adaptation.statistics and classification.model is not model
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
