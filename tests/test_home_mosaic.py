"""The geometry of benchmarks/home_mosaic.py's mosaics, on generated patches (no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from script_modules import REPO_ROOT

from image_functions import CLASS_NAMES, MS_BAND_NAMES

# Registered in sys.modules before it runs: its dataclasses look their module up there.
SPEC = importlib.util.spec_from_file_location(
    "home_mosaic_benchmark", REPO_ROOT / "benchmarks" / "home_mosaic.py"
)
home = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = home
SPEC.loader.exec_module(home)


def patch_value(class_index: int, number: int) -> int:
    """The constant of generated patch `number` of a class (unique over the split)."""
    return 1000 + 100 * class_index + number


def make_split(folder: Path, per_class: int, bands: int = 13) -> Path:
    """A split folder with `per_class` constant 64 x 64 uint16 validation patches per class,
    each pixel holding its patch's value plus its row in band 2 (to see orientation)."""
    for class_index, class_name in enumerate(CLASS_NAMES):
        (folder / "validation" / class_name).mkdir(parents=True)
        for number in range(per_class):
            pixels = np.full((bands, 64, 64), patch_value(class_index, number), np.uint16)
            pixels[1] += np.arange(64, dtype=np.uint16)[:, np.newaxis]
            path = folder / "validation" / class_name / f"{class_name}_{number}.tif"
            dataset = gdal.GetDriverByName("GTiff").Create(
                str(path), 64, 64, bands, gdal.GDT_UInt16
            )
            dataset.WriteArray(pixels)
            dataset = None
    return folder


def window(mosaic: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 64 x 64 window of pixel (row, col) as 06 cuts it (rows row-32..row+31)."""
    return mosaic[:, row - 32 : row + 32, col - 32 : col + 32]


def test_patch_centres_map_back_to_their_patch_and_class(tmp_path):
    split = make_split(tmp_path / "split", per_class=20)
    layout = home.plan_blocks(home.validation_patches(split), blocks_per_class=2, seed=3)
    assert len(layout.blocks) == 2 * len(CLASS_NAMES)
    assert layout.shape == (2 * 192, len(CLASS_NAMES) * 192)
    assert sorted(block.class_name for block in layout.blocks) == sorted(CLASS_NAMES * 2)
    assert layout.repeated == 0
    path = home.write_mosaic(tmp_path / "mosaic.tif", home.assemble(layout), overwrite=False)

    dataset = gdal.Open(str(path))
    mosaic = dataset.ReadAsArray()
    assert dataset.GetGeoTransform() == (500000.0, 10.0, 0.0, 5800000.0, 0.0, -10.0)
    assert dataset.GetSpatialRef().GetAuthorityCode(None) == "32633"
    assert dataset.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"
    assert dataset.GetRasterBand(1).GetBlockSize() == [256, 256]
    descriptions = [dataset.GetRasterBand(n).GetDescription() for n in range(1, 14)]
    assert descriptions == list(MS_BAND_NAMES)

    rows, cols, classes = home.known_pixels(layout)["patch centres"]
    assert rows.size == 9 * len(layout.blocks)
    expected = np.arange(64, dtype=np.uint16)[:, np.newaxis]
    for row, col, class_index in zip(rows, cols, classes, strict=True):
        cut = window(mosaic, row, col)
        value = int(cut[0, 0, 0])
        assert np.all(cut[0] == value)  # one patch, not a seam
        assert np.array_equal(cut[1] - value, np.broadcast_to(expected, (64, 64)))
        assert (value - 1000) // 100 == class_index  # the patch's own class
    # Every patch appears exactly once, as the centre of its own window.
    values = [int(window(mosaic, r, c)[0, 0, 0]) for r, c in zip(rows, cols, strict=True)]
    assert len(set(values)) == len(values)

    # Block-centre patches are the middle patch of each block, in the same class.
    block_rows, block_cols, block_classes = home.known_pixels(layout)["block-centre patches"]
    for index, block in enumerate(layout.blocks):
        top, left = layout.origin(index)
        assert (block_rows[index], block_cols[index]) == (top + 96, left + 96)
        assert CLASS_NAMES[block_classes[index]] == block.class_name


def test_seam_windows_stay_inside_one_block(tmp_path):
    split = make_split(tmp_path / "split", per_class=9, bands=3)
    layout = home.plan_blocks(home.validation_patches(split), blocks_per_class=5, seed=0)
    assert len(layout.blocks) == len(CLASS_NAMES)  # 9 patches a class: one block each
    mosaic = home.assemble(layout)
    pixels = home.known_pixels(layout)
    for category, patches_per_window in (("seam corners", 4), ("seam edges", 2)):
        rows, cols, classes = pixels[category]
        for row, col, class_index in zip(rows, cols, classes, strict=True):
            values = np.unique(window(mosaic, row, col)[0])
            assert values.size == patches_per_window
            assert np.all((values - 1000) // 100 == class_index)
    rows, cols, _ = pixels["in-block windows"]
    assert rows.size == len(layout.blocks) * 129 * 129


def test_a_class_short_of_patches_repeats_some(tmp_path):
    split = make_split(tmp_path / "split", per_class=8, bands=3)
    layout = home.plan_blocks(home.validation_patches(split), blocks_per_class=6, seed=0)
    assert len(layout.blocks) == len(CLASS_NAMES)
    assert layout.repeated == len(CLASS_NAMES)
    assert all(len(set(block.files)) == 8 for block in layout.blocks)


def test_scores_count_the_known_pixels(tmp_path):
    split = make_split(tmp_path / "split", per_class=9, bands=3)
    layout = home.plan_blocks(home.validation_patches(split), blocks_per_class=1, seed=0)
    labels = np.full(layout.shape, home.CLOUD_LABEL, np.uint8)
    for index, block in enumerate(layout.blocks):
        top, left = layout.origin(index)
        labels[top : top + 192, left : left + 192] = CLASS_NAMES.index(block.class_name)
    first_top, first_left = layout.origin(0)
    labels[first_top + 96, first_left + 96] = home.CLOUD_LABEL  # one block centre wrong
    scores = home.score(labels, layout)
    assert scores["patch centres"]["accuracy"] == pytest.approx(89 / 90, abs=1e-4)
    assert scores["block-centre patches"]["accuracy"] == pytest.approx(0.9)
    assert scores["block-centre patches"]["cloud"] == 1
    assert scores["seam corners"]["accuracy"] == 1.0
    wrong_class = layout.blocks[0].class_name
    assert scores["block-centre patches"]["per_class"][wrong_class] == 0.0
    assert scores["block-centre patches"]["wrong_called"] == {str(home.CLOUD_LABEL): 1}


def test_a_split_without_validation_patches_is_refused(tmp_path):
    (tmp_path / "split" / "validation").mkdir(parents=True)
    with pytest.raises(home.InputError, match="no validation images of AnnualCrop"):
        home.validation_patches(tmp_path / "split")
