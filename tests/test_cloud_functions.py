"""Tests of cnn_sentinel.scene.clouds (the s2cloudless mask, block by block) and quicklooks.

Generated scenes are the demo scene with a soft diagonal cloud band blended in,
a few dozen pixels, so the s2cloudless model runs in a fraction of a second.
The real-scene tests skip when ../shared/data is absent.
"""

from __future__ import annotations

import re

import helpers
import numpy as np
import pytest
from osgeo import gdal
from script_modules import load_script

import demo_data
from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import blocks, clouds, radiometry
from cnn_sentinel.scene import quicklooks as quicklook
from cnn_sentinel.scene import reading as scenes
from image_functions import (
    CLASS_NAMES,
    MS_BAND_NAMES,
    RGB_BAND_NAMES,
    eurosat_rgb_from_l1c,
    talk_constants,
)

gdal.UseExceptions()

# Crops of the real T33UUU scene (xoff, yoff, xsize, ysize), picked by looking at it
# (docs/cloud_mask_T33UUU_field.png and docs/cloud_mask_T33UUU_streak.png).
T33UUU = "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
FIELD_CROP = (1344, 576, 128, 128)  # winter fields and hedges, no cloud
STREAK_CROP = (720, 160, 64, 64)  # the thin streak west of the large cloud band
RAVAEN = "sentinel2_ravaen_lahinch_2017-09-26_15band.tif"
# s2cloudless band order of a 13-band stack (B8A after B08), for its all_bands=True model.
S2CLOUDLESS_13_ORDER = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip


def write_scene(path, pixels: np.ndarray, band_names) -> gdal.Dataset:
    """Write (rows, cols, bands) pixels as a GeoTIFF with band descriptions; open it."""
    helpers.write_scene(path, pixels, descriptions=band_names)
    return gdal.Open(str(path))


def test_cloud_bands_in_s2cloudless_order():
    assert clouds.cloud_bands_available(MS_BAND_NAMES)
    assert not clouds.cloud_bands_available(RGB_BAND_NAMES)
    # EuroSAT keeps B8A last; s2cloudless takes it after B08.
    assert clouds.cloud_band_indices(MS_BAND_NAMES) == [0, 1, 3, 4, 7, 12, 8, 9, 10, 11]
    with pytest.raises(InputError, match="no band B01, B05, B08, B8A, B09, B10, B11, B12"):
        clouds.cloud_band_indices(("B02", "B04", "B03"), "scene x.tif")


def test_cell_means_average_every_cell_and_the_cut_ones():
    values = np.random.default_rng(0).integers(0, 10000, (7, 10, 2), dtype=np.uint16)
    means = clouds.cell_means(values, 3)
    assert means.shape == (3, 4, 2)
    for cell_row in range(3):
        for cell_col in range(4):
            cell = values[3 * cell_row : 3 * cell_row + 3, 3 * cell_col : 3 * cell_col + 3]
            np.testing.assert_allclose(means[cell_row, cell_col], cell.mean(axis=(0, 1)))


def test_mask_of_single_pixel_cells_is_s2cloudless_own_mask():
    """Against s2cloudless' 13-band detector fed in its own band order: proves the band
    selection, the EuroSAT -> s2cloudless reordering and the reflectance scaling."""
    from s2cloudless import S2PixelCloudDetector

    pixels = helpers.cloudy_scene()
    reordered = pixels[..., [MS_BAND_NAMES.index(name) for name in S2CLOUDLESS_13_ORDER]]
    detector = S2PixelCloudDetector(
        threshold=clouds.CLOUD_THRESHOLD,
        all_bands=True,
        average_over=clouds.CLOUD_AVERAGE_OVER,
        dilation_size=clouds.CLOUD_DILATION,
    )
    expected = detector.get_cloud_masks(reordered[None] / 10000.0)[0].astype(bool)
    mask = clouds.cloud_mask_block(pixels, MS_BAND_NAMES, clouds.CloudSettings(cell=1))
    assert 0.1 < expected.mean() < 0.9
    np.testing.assert_array_equal(mask, expected)


def test_a_scene_of_another_reflectance_scale_gets_the_same_mask():
    """06's --reflectance-scale reaches the cloud mask: reflectance x 1000 masked with
    scale 1000 is the x 10000 mask; read as x 10000 it would be ten times too dark."""
    pixels = helpers.cloudy_scene().astype(np.float64)
    expected = clouds.cloud_mask_block(pixels, MS_BAND_NAMES, clouds.CloudSettings(cell=1))
    x1000 = clouds.CloudSettings(cell=1, reflectance_scale=1000)
    np.testing.assert_array_equal(
        clouds.cloud_mask_block(pixels / 10, MS_BAND_NAMES, x1000), expected
    )
    assert not clouds.cloud_mask_block(
        pixels / 10, MS_BAND_NAMES, clouds.CloudSettings(cell=1)
    ).any()


@pytest.mark.parametrize(("cell", "block_rows"), [(1, 5), (3, 16), (4, 37), (4, 64)])
def test_blocks_with_their_halo_give_the_whole_scene_mask(tmp_path, cell, block_rows):
    pixels = helpers.cloudy_scene(rows=61, cols=66)
    dataset = write_scene(tmp_path / "scene.tif", pixels, MS_BAND_NAMES)
    indices = clouds.cloud_band_indices(MS_BAND_NAMES)
    probability = clouds.cell_probability(
        clouds.cell_means(pixels[..., indices], cell) / radiometry.EUROSAT_REFLECTANCE_SCALE
    )
    # A threshold that gives a mask with edges everywhere.
    settings = clouds.CloudSettings(threshold=float(np.quantile(probability, 0.6)), cell=cell)
    whole = clouds.cloud_mask_block(pixels, MS_BAND_NAMES, settings)
    blocks = [
        clouds.scene_cloud_mask(dataset, indices, top, min(top + block_rows, 61), settings)
        for top in range(0, 61, block_rows)
    ]
    assert 0.2 < whole.mean() < 0.8
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_step_gives_any_row_blocks_from_its_chunks(tmp_path):
    """06's step computes the mask in its own chunks ahead of the blocks; the rows it
    hands out equal the whole-scene mask whatever the block and chunk sizes."""
    pixels = helpers.cloudy_scene(rows=61, cols=66)
    dataset = write_scene(tmp_path / "scene.tif", pixels, MS_BAND_NAMES)
    whole = clouds.cloud_mask_block(pixels, MS_BAND_NAMES)
    indices = clouds.cloud_band_indices(MS_BAND_NAMES)
    for chunk_rows, block_rows in ((7, 16), (64, 5), (20, 20)):
        step = clouds.CloudMaskStep(dataset, indices, chunk_rows=chunk_rows)
        rows = [step.rows(top, min(top + block_rows, 61)) for top in range(0, 61, block_rows)]
        np.testing.assert_array_equal(np.concatenate(rows), whole)
        assert sum(len(mask) for _, mask in step.ready) <= chunk_rows + block_rows


def test_missing_values_are_not_cloud():
    pixels = helpers.cloudy_scene()
    mask = clouds.cloud_mask_block(pixels, MS_BAND_NAMES)
    assert 0.1 < mask.mean() < 0.9
    reflectance = np.full((2, 3, len(clouds.CLOUD_BANDS)), 0.45, np.float32)
    reflectance[0, 1, 4] = np.nan
    probability = clouds.cell_probability(reflectance)
    assert probability[0, 1] == 0.0 and (probability[np.arange(2) != 0] > 0.5).all()


def real_crop_mask(scenes_dir, crop) -> np.ndarray:
    scene = scenes.open_scene(scenes_dir / T33UUU, window=list(crop))
    indices = clouds.cloud_band_indices(scenes.scene_band_names(scene))
    return clouds.scene_cloud_mask(scene, indices, 0, scene.RasterYSize)


def test_real_scene_fields_are_clear_and_the_streak_is_cloud(scenes_dir):
    assert real_crop_mask(scenes_dir, FIELD_CROP).mean() < 0.02
    assert real_crop_mask(scenes_dir, STREAK_CROP).mean() > 0.5


def test_probability_matches_earth_engines_s2cloudless_band(scenes_dir):
    """The RaVAEn scene carries Earth Engine's s2cloudless probability (0..100, computed
    on its own resampling of the bands): ours, per pixel, must follow it closely."""
    dataset = gdal.Open(str(scenes_dir / RAVAEN))
    names = scenes.scene_band_names(dataset)
    stack = np.moveaxis(dataset.ReadAsArray(), 0, -1)
    reference = stack[..., names.index("probability")]
    digital_numbers = stack[..., clouds.cloud_band_indices(names)]
    reflectance = digital_numbers / radiometry.EUROSAT_REFLECTANCE_SCALE
    ours = 100 * clouds.cell_probability(reflectance)
    valid = np.isfinite(reference) & np.isfinite(reflectance).all(axis=-1)
    assert valid.mean() > 0.9
    assert np.abs(ours[valid] - reference[valid]).mean() < 3.0
    assert np.corrcoef(ours[valid], reference[valid])[0, 1] > 0.85


# ---------------------------------------------------------------------------
# Quicklook
# ---------------------------------------------------------------------------


def test_true_colour_bands_and_scaling(tmp_path):
    assert quicklook.true_colour_bands(MS_BAND_NAMES) == [3, 2, 1]
    assert quicklook.true_colour_bands(RGB_BAND_NAMES) == [0, 1, 2]
    assert quicklook.true_colour_bands(("band1", "band2", "band3")) is None
    pixels = helpers.cloudy_scene(rows=20, cols=24)
    dataset = write_scene(tmp_path / "ms.tif", pixels, MS_BAND_NAMES)
    picture = quicklook.true_colour(dataset, [3, 2, 1], (20, 24))
    np.testing.assert_array_equal(picture, eurosat_rgb_from_l1c(pixels[..., [3, 2, 1]]))
    rgb = pixels[..., :3].astype(np.uint8)
    dataset = write_scene(tmp_path / "rgb.tif", rgb, RGB_BAND_NAMES)
    np.testing.assert_array_equal(quicklook.true_colour(dataset, [0, 1, 2], (20, 24)), rgb)


def test_quicklook_legend_gives_the_share_of_every_label(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 5, 9, blocks.CLOUD_LABEL, blocks.LABEL_NODATA], size=(30, 40))
    labels = labels.astype(np.uint8)
    labels[:, :3] = 2  # a class present in only 90 pixels
    write_scene(tmp_path / "label.tif", labels[..., None], ("label",))
    scene = write_scene(
        tmp_path / "scene.tif", helpers.cloudy_scene(rows=30, cols=40), MS_BAND_NAMES
    )
    output = tmp_path / "quicklook.png"
    texts = quicklook.write_side_by_side_quicklook(
        tmp_path / "label.tif", output, CLASS_NAMES, "test", scene, [3, 2, 1]
    )
    values, counts = np.unique(labels, return_counts=True)
    names = {
        **dict(enumerate(CLASS_NAMES)),
        blocks.CLOUD_LABEL: "Cloud",
        blocks.LABEL_NODATA: "No data",
    }
    expected = [
        f"{names[v]} {100 * c / labels.size:.1f} %" for v, c in zip(values, counts, strict=True)
    ]
    assert texts == expected
    assert texts[2] == "HerbaceousVegetation 7.5 %"
    assert sum(float(re.search(r"([\d.]+) %$", text).group(1)) for text in texts) == (
        pytest.approx(100, abs=0.3)
    )
    png = gdal.Open(str(output))
    assert png.RasterXSize > 2 * png.RasterYSize  # two panels side by side, legend


def test_quicklook_labels_are_gdals_nearest_decimation_and_the_picture_its_average(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, (45, 130), dtype=np.uint8)
    label_dataset = write_scene(tmp_path / "label.tif", labels[..., None], ("label",))
    writer = quicklook.SideBySideQuicklookWriter(
        label_dataset, tmp_path / "q.png", CLASS_NAMES, "t", max_side=40
    )
    for top in range(0, 45, 7):  # row blocks as 06 feeds them
        writer.add_rows(top, labels[top : top + 7])
    shape = writer.labels.shape
    assert shape == (14, 40)
    nearest = label_dataset.GetRasterBand(1).ReadAsArray(
        buf_xsize=40, buf_ysize=14, resample_alg=gdal.GRIORA_NearestNeighbour
    )
    np.testing.assert_array_equal(writer.labels, nearest)
    np.testing.assert_array_equal(writer.counts[:10], np.bincount(labels.ravel(), minlength=10))
    # The picture averages the pixels of each cell (3 x 3 here).
    pixels = rng.integers(0, 4000, (48, 132, 3), dtype=np.uint16)
    scene = write_scene(tmp_path / "scene3.tif", pixels, RGB_BAND_NAMES)
    picture = quicklook.true_colour(scene, [0, 1, 2], (16, 44))
    means = pixels.reshape(16, 3, 44, 3, 3).mean(axis=(1, 3))
    assert np.abs(picture.astype(int) - eurosat_rgb_from_l1c(means)).max() <= 1


def test_label_colours_reserve_cloud_and_nodata():
    colours = quicklook.label_colours(CLASS_NAMES)
    assert tuple(colours[blocks.CLOUD_LABEL]) == blocks.CLOUD_COLOUR
    assert tuple(colours[blocks.LABEL_NODATA]) == quicklook.NODATA_COLOUR
    assert tuple(colours[1]) == blocks.CLASS_COLOURS["Forest"]
    assert len(CLASS_NAMES) < blocks.CLOUD_LABEL < blocks.LABEL_NODATA


# ---------------------------------------------------------------------------
# 06 with the cloud mask
# ---------------------------------------------------------------------------

classify_image = load_script("06_classify_image.py", "classify_image_clouds")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Self-contained tiny 13-band and RGB models saved with model.json."""
    folder = tmp_path_factory.mktemp("cloud_models")
    paths = {}
    for kind, names in (("ms", MS_BAND_NAMES), ("rgb", RGB_BAND_NAMES)):
        mean, std = talk_constants(len(names))
        model = helpers.tiny_model(len(names), mean, std)
        paths[kind] = helpers.save_model(model, folder / kind, names)
    return paths


def run_06(scene, model, output, *flags) -> dict:
    arguments = ["--image", scene, "--model", model, "--output-dir", output, "--stride", 4]
    return classify_image.main([str(value) for value in [*arguments, *flags, "--no-progress"]])


def test_06_labels_clouds_of_a_13_band_scene(models, tmp_path, capsys):
    """The demo scene with a cloud band: cloudy pixels get CLOUD_LABEL and NaN, the rest
    the labels of a run without the mask; the label raster names and colours Cloud."""
    pixels = helpers.cloudy_scene(rows=64, cols=72)
    helpers.write_scene(tmp_path / "cloudy.tif", pixels, descriptions=MS_BAND_NAMES)
    summary = run_06(tmp_path / "cloudy.tif", models["ms"], tmp_path / "on")
    assert "cloud mask on (auto: s2cloudless, threshold 0.65)" in capsys.readouterr().out
    run_06(tmp_path / "cloudy.tif", models["ms"], tmp_path / "off", "--cloud-mask", "off")
    expected = clouds.cloud_mask_block(pixels, MS_BAND_NAMES)
    assert 0.1 < expected.mean() < 0.9
    labels = helpers.read_raster(tmp_path / "on" / "cloudy_label.tif")
    probability = helpers.read_raster(tmp_path / "on" / "cloudy_prob.tif")
    plain = helpers.read_raster(tmp_path / "off" / "cloudy_label.tif")
    np.testing.assert_array_equal(labels == blocks.CLOUD_LABEL, expected)
    assert np.isnan(probability[expected]).all() and not np.isnan(probability[~expected]).any()
    np.testing.assert_array_equal(labels[~expected], plain[~expected])
    assert summary["cloud"] == expected.sum()
    assert summary["cloud"] + sum(summary["pixels"].values()) == labels.size
    label_dataset = gdal.Open(str(tmp_path / "on" / "cloudy_label.tif"))
    label_dataset.GetGeoTransform()  # GDAL 3.6 reads the .aux.xml on this first query
    band = label_dataset.GetRasterBand(1)
    assert band.GetCategoryNames()[blocks.CLOUD_LABEL] == "Cloud"
    assert band.GetColorTable().GetColorEntry(blocks.CLOUD_LABEL)[:3] == blocks.CLOUD_COLOUR
    assert (tmp_path / "on" / "cloudy_quicklook.png").read_bytes()[:4] == b"\x89PNG"


def test_06_rgb_model_on_an_l1c_stack_masks_clouds_too(models, tmp_path):
    scene, _ = demo_data.write_demo_scene(tmp_path / "demo_ms.tif", "ms", 64, 64)
    summary = run_06(scene, models["rgb"], tmp_path, "--cloud-mask", "on")
    assert summary["cloud"] >= 0 and summary["nodata"] == 0
    labels = helpers.read_raster(tmp_path / "demo_ms_label.tif")
    assert labels.shape == (64, 64) and np.all((labels < 10) | (labels == blocks.CLOUD_LABEL))


def test_06_scenes_without_the_bands_work_as_before(models, tmp_path, capsys):
    scene, _ = demo_data.write_demo_scene(tmp_path / "demo_rgb.tif", "rgb", 64, 64)
    summary = run_06(scene, models["rgb"], tmp_path / "auto")
    assert "cloud mask off (auto: the scene lacks" in capsys.readouterr().out
    run_06(scene, models["rgb"], tmp_path / "off", "--cloud-mask", "off")
    auto = helpers.read_raster(tmp_path / "auto" / "demo_rgb_label.tif")
    np.testing.assert_array_equal(
        auto, helpers.read_raster(tmp_path / "off" / "demo_rgb_label.tif")
    )
    assert summary["cloud"] == 0 and np.all(auto < 10)
    label_dataset = gdal.Open(str(tmp_path / "auto" / "demo_rgb_label.tif"))
    label_dataset.GetGeoTransform()
    assert label_dataset.GetRasterBand(1).GetCategoryNames() == list(CLASS_NAMES)
    with pytest.raises(InputError, match="has no band B01, B05, B08, B8A"):
        run_06(scene, models["rgb"], tmp_path / "on", "--cloud-mask", "on")
    with pytest.raises(InputError, match="cloud threshold must be between 0 and 1, not 1.5"):
        run_06(scene, models["rgb"], tmp_path / "on", "--cloud-threshold", 1.5)


def test_06_default_threshold_is_the_modules():
    assert classify_image.CLOUD_THRESHOLD == clouds.CLOUD_THRESHOLD
