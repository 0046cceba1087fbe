"""Tests of demo_data: layout, GeoTIFF facts, determinism, EuroSAT RGB scaling, learnability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr

import demo_data
from cnn_sentinel.errors import InputError
from image_functions import (
    CLASS_NAMES,
    MS_BAND_NAMES,
    RGB_BAND_NAMES,
    eurosat_rgb_from_l1c,
    list_class_images,
    list_images,
    read_image,
)

gdal.UseExceptions()


def _patch_means(seed: int, numbers: range) -> np.ndarray:
    """Per-band means of demo patches: float64 (classes, len(numbers), 13)."""
    return np.stack(
        [
            [demo_data.demo_patch(k, n, seed).mean(axis=(1, 2)) for n in numbers]
            for k in range(len(CLASS_NAMES))
        ]
    )


def _nearest(means: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (classes, 13) for each row of means (n, 13)."""
    return np.argmin(((means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)


def _epsg(dataset: gdal.Dataset) -> str | None:
    reference = osr.SpatialReference(wkt=dataset.GetProjection())
    return reference.GetAuthorityCode(None)


def test_ms_dataset_layout_and_geotiff_facts(tmp_path: Path) -> None:
    target = demo_data.write_demo_dataset(tmp_path / "ms", kind="ms", images_per_class=2)
    assert sorted(p.name for p in target.iterdir()) == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert sorted(p.name for p in (target / name).iterdir()) == [
            f"{name}_1.tif",
            f"{name}_2.tif",
        ]
    dataset = gdal.Open(str(target / "Forest" / "Forest_1.tif"))
    assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (64, 64, 13)
    assert dataset.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert [dataset.GetRasterBand(i + 1).GetDescription() for i in range(13)] == list(MS_BAND_NAMES)
    assert _epsg(dataset) == "32633"
    transform = dataset.GetGeoTransform()
    assert (transform[1], transform[5]) == (10.0, -10.0)
    image = read_image(target / "Forest" / "Forest_1.tif", expected_bands=13)
    assert image.dtype == np.uint16
    b10 = image[..., MS_BAND_NAMES.index("B10")]
    assert 5 <= b10.mean() <= 25, "B10 (cirrus) is about 10-20 in real L1C data"


def test_rgb_jpegs_are_eurosat_scaled_ms_twins(tmp_path: Path) -> None:
    folders = demo_data.write_demo_datasets(
        {"rgb": tmp_path / "rgb", "ms": tmp_path / "ms"}, images_per_class=1, seed=3
    )
    rgb_indices = [MS_BAND_NAMES.index(name) for name in RGB_BAND_NAMES]
    errors = []
    for name in CLASS_NAMES:
        jpeg = read_image(folders["rgb"] / name / f"{name}_1.jpg", expected_bands=3)
        ms = read_image(folders["ms"] / name / f"{name}_1.tif", expected_bands=13)
        expected = eurosat_rgb_from_l1c(ms[..., rgb_indices]).astype(float)
        assert jpeg.dtype == np.uint8 and jpeg.shape == (64, 64, 3)
        errors.append(np.abs(jpeg.astype(float) - expected).mean())
    # Real EuroSAT JPEGs differ from their MS twins by about 1.5 levels on average.
    assert np.mean(errors) < 2.0 and max(errors) < 3.5, np.round(errors, 2)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    first = demo_data.write_demo_datasets(
        {"rgb": tmp_path / "a_rgb", "ms": tmp_path / "a_ms"}, images_per_class=1, seed=5
    )
    again = demo_data.write_demo_datasets(
        {"rgb": tmp_path / "b_rgb", "ms": tmp_path / "b_ms"}, images_per_class=1, seed=5
    )
    for kind in ("rgb", "ms"):
        files = [path for path, _ in list_class_images(first[kind])]
        assert len(files) == len(CLASS_NAMES)
        for path in files:
            assert path.read_bytes() == (again[kind] / path.relative_to(first[kind])).read_bytes()
    assert not np.array_equal(demo_data.demo_patch(0, 1, seed=5), demo_data.demo_patch(0, 1, 6))
    assert not np.array_equal(demo_data.demo_patch(0, 1, seed=5), demo_data.demo_patch(0, 2, 5))
    scene_a, truth_a = demo_data.write_demo_scene(tmp_path / "a.tif", "ms", 96, 128, seed=5)
    scene_b, truth_b = demo_data.write_demo_scene(tmp_path / "b.tif", "ms", 96, 128, seed=5)
    assert scene_a.read_bytes() == scene_b.read_bytes()
    assert truth_a.read_bytes() == truth_b.read_bytes()
    other, _ = demo_data.demo_scene(96, 128, seed=6)
    assert not np.array_equal(other, demo_data.demo_scene(96, 128, seed=5)[0])


def test_existing_outputs_are_refused_unless_overwrite(tmp_path: Path) -> None:
    target = demo_data.write_demo_dataset(tmp_path / "rgb", images_per_class=1)
    with pytest.raises(InputError, match="already exists"):
        demo_data.write_demo_dataset(target, images_per_class=1)
    demo_data.write_demo_dataset(target, images_per_class=2, overwrite=True)
    assert len(list_class_images(target)) == 2 * len(CLASS_NAMES)
    scene, _ = demo_data.write_demo_scene(tmp_path / "scene.tif", "rgb", 64, 64)
    with pytest.raises(InputError, match="already exists"):
        demo_data.write_demo_scene(scene, "rgb", 64, 64)
    with pytest.raises(InputError, match="kind"):
        demo_data.write_demo_dataset(tmp_path / "x", kind="sar")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("class_index", range(len(CLASS_NAMES)))
def test_class_field_has_any_size(class_index: int) -> None:
    field = demo_data.class_field(class_index, np.random.default_rng(0), 37, 101)
    assert field.shape == (13, 37, 101) and field.dtype == np.float32
    assert np.isfinite(field).all() and field.min() > 0


def test_scene_is_georeferenced_tiled_and_has_every_class(tmp_path: Path) -> None:
    scene_path, truth_path = demo_data.write_demo_scene(tmp_path / "scene_ms.tif", "ms")
    rgb_path, _ = demo_data.write_demo_scene(tmp_path / "scene_rgb.tif", "rgb")
    assert truth_path == tmp_path / "scene_ms_truth.tif"
    scene, truth, rgb = (gdal.Open(str(p)) for p in (scene_path, truth_path, rgb_path))
    for dataset, bands, data_type in ((scene, 13, gdal.GDT_UInt16), (rgb, 3, gdal.GDT_Byte)):
        assert (dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount) == (384, 384, bands)
        assert dataset.GetRasterBand(1).DataType == data_type
        assert dataset.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert dataset.GetRasterBand(1).GetBlockSize() == [256, 256]
        assert _epsg(dataset) == "32633"
        assert dataset.GetGeoTransform() == truth.GetGeoTransform()
    assert [rgb.GetRasterBand(i + 1).GetDescription() for i in range(3)] == list(RGB_BAND_NAMES)
    assert [scene.GetRasterBand(i + 1).GetDescription() for i in range(13)] == list(MS_BAND_NAMES)
    assert scene.GetGeoTransform()[1] == 10.0
    labels = truth.ReadAsArray()
    assert truth.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert set(np.unique(labels)) == set(range(len(CLASS_NAMES)))
    assert truth.GetRasterBand(1).GetColorTable() is not None
    side_file = truth_path.with_name(truth_path.name + ".aux.xml").read_text()
    assert all(f"<Category>{name}</Category>" in side_file for name in CLASS_NAMES)
    ms_pixels = scene.ReadAsArray()
    assert np.array_equal(rgb.ReadAsArray(), demo_data.rgb_from_ms(ms_pixels))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nearest_centroid_on_band_means_learns_the_classes() -> None:
    """A classifier without TensorFlow separates the classes on held-out patches."""
    means = _patch_means(seed=0, numbers=range(1, 31))
    centroids = means[:, :20].mean(axis=1)
    held_out = means[:, 20:].reshape(-1, 13)
    truth = np.repeat(np.arange(len(CLASS_NAMES)), 10)
    accuracy = (_nearest(held_out, centroids) == truth).mean()
    assert accuracy >= 0.6, f"nearest-centroid accuracy {accuracy:.2f} (chance 0.10)"


def test_scene_regions_look_like_patches_of_their_class() -> None:
    """64x64 windows inside one scene region are classified by the patch centroids."""
    centroids = _patch_means(seed=0, numbers=range(1, 21)).mean(axis=1)
    scene, truth = demo_data.demo_scene(384, 384, seed=0)
    window_means, window_classes = [], []
    for row in range(0, 384 - 63, 16):
        for col in range(0, 384 - 63, 16):
            labels = truth[row : row + 64, col : col + 64]
            if (labels == labels[0, 0]).all():
                window_means.append(scene[:, row : row + 64, col : col + 64].mean(axis=(1, 2)))
                window_classes.append(labels[0, 0])
    window_classes = np.array(window_classes)
    assert set(window_classes) == set(range(len(CLASS_NAMES))), "a class has no whole window"
    accuracy = (_nearest(np.array(window_means), centroids) == window_classes).mean()
    assert accuracy >= 0.6, f"scene windows classified by patch centroids: {accuracy:.2f}"


def test_class_levels_are_plausible_against_real_eurosat(real_ms_dir: Path) -> None:
    """Per-class per-band means lie within -35%..+50% of real EuroSAT L1C means."""
    demo_means = _patch_means(seed=0, numbers=range(1, 21)).mean(axis=1)
    for class_index, name in enumerate(CLASS_NAMES):
        paths = list_images(real_ms_dir / name)
        if not paths:
            pytest.skip(f"no real EuroSAT MS images of {name} in {real_ms_dir}")
        real = np.mean([read_image(p).mean(axis=(0, 1)) for p in paths], axis=0)
        ratio = demo_means[class_index] / real
        assert ((ratio > 0.65) & (ratio < 1.5)).all(), f"{name}: demo/real {np.round(ratio, 2)}"
