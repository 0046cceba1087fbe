"""Quicklooks: a scene's true colour beside its label map, with the share of every class.

The label map and the picture are read at the same decimation (GDAL reads
straight into the small buffer: nearest neighbour for labels, averages for the
picture), so they line up pixel for pixel. Shares are counted on the full
label raster, block by block, not on the decimated picture. matplotlib is
imported inside the functions (Agg backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from cloud_functions import CLOUD_COLOUR, CLOUD_LABEL, CLOUD_NAME
from image_functions import RGB_BAND_NAMES, eurosat_rgb_from_l1c
from scene_functions import LABEL_NODATA, class_colour

gdal.UseExceptions()

# Longest side in pixels of each of the two panels (larger scenes are decimated).
QUICKLOOK_MAX_SIDE = 1200
# Colour of pixels without data in the label panel (black, as they look in the picture).
NODATA_COLOUR = (0, 0, 0)
NODATA_NAME = "No data"
# Rows of the label raster counted at a time.
COUNT_BLOCK_ROWS = 512


def true_colour_bands(band_names: Sequence[str]) -> list[int] | None:
    """0-based indices of B04, B03, B02 (red, green, blue) among `band_names`, or None."""
    if not all(name in band_names for name in RGB_BAND_NAMES):
        return None
    return [list(band_names).index(name) for name in RGB_BAND_NAMES]


def label_colours(class_names: Sequence[str]) -> np.ndarray:
    """(256, 3) uint8 colour of every label value: classes, CLOUD_LABEL, nodata (black)."""
    colours = np.zeros((256, 3), np.uint8)
    for index, name in enumerate(class_names):
        colours[index] = class_colour(name, index)
    colours[CLOUD_LABEL] = CLOUD_COLOUR
    colours[LABEL_NODATA] = NODATA_COLOUR
    return colours


def label_names(class_names: Sequence[str]) -> dict[int, str]:
    """Name of every label value 06 writes: the classes, CLOUD_NAME and NODATA_NAME."""
    return {**dict(enumerate(class_names)), CLOUD_LABEL: CLOUD_NAME, LABEL_NODATA: NODATA_NAME}


def label_counts(label_path: str | Path) -> np.ndarray:
    """Pixels of every label value (256,) int64 in a Byte label raster, counted block by block."""
    dataset = gdal.Open(str(label_path), gdal.GA_ReadOnly)
    band = dataset.GetRasterBand(1)
    rows, cols = dataset.RasterYSize, dataset.RasterXSize
    counts = np.zeros(256, np.int64)
    for top in range(0, rows, COUNT_BLOCK_ROWS):
        block = band.ReadAsArray(0, top, cols, min(COUNT_BLOCK_ROWS, rows - top))
        counts += np.bincount(block.ravel(), minlength=256)
    return counts


def label_shares(counts: np.ndarray) -> dict[int, float]:
    """Share (0..1) of all pixels of every label value that occurs, in value order."""
    total = max(int(counts.sum()), 1)
    return {int(value): counts[value] / total for value in np.flatnonzero(counts)}


def read_decimated(
    dataset: gdal.Dataset, band_numbers: Sequence[int], shape: tuple[int, int], algorithm: int
) -> np.ndarray:
    """Bands (1-based numbers) of a dataset read into (rows, cols, bands) of `shape`."""
    planes = [
        dataset.GetRasterBand(number).ReadAsArray(
            buf_xsize=shape[1], buf_ysize=shape[0], resample_alg=algorithm
        )
        for number in band_numbers
    ]
    return np.stack(planes, axis=-1)


def true_colour(dataset: gdal.Dataset, rgb_indices: Sequence[int], shape: tuple[int, int]):
    """(rows, cols, 3) uint8 picture: 8-bit bands as they are, L1C digital numbers with
    EuroSAT's scaling (0..2750 -> 1..255)."""
    numbers = [index + 1 for index in rgb_indices]
    values = read_decimated(dataset, numbers, shape, gdal.GRIORA_Average)
    if dataset.GetRasterBand(numbers[0]).DataType == gdal.GDT_Byte:
        return values.astype(np.uint8)
    return eurosat_rgb_from_l1c(np.nan_to_num(values))


def write_side_by_side_quicklook(
    label_path: str | Path,
    output_path: str | Path,
    class_names: Sequence[str],
    title: str,
    scene: gdal.Dataset | None = None,
    rgb_indices: Sequence[int] | None = None,
) -> list[str]:
    """Save a PNG of the scene's true colour (when `scene` and `rgb_indices` are given)
    beside its label map, with a legend giving every label's share of the scene.

    The scene and the label raster must have the same size. Returns the legend
    texts, e.g. "Forest 23.4 %", in label order (classes, Cloud, No data).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    labels_dataset = gdal.Open(str(label_path), gdal.GA_ReadOnly)
    rows, cols = labels_dataset.RasterYSize, labels_dataset.RasterXSize
    scale = max(1.0, max(rows, cols) / QUICKLOOK_MAX_SIDE)
    shape = (max(1, round(rows / scale)), max(1, round(cols / scale)))
    labels = read_decimated(labels_dataset, [1], shape, gdal.GRIORA_NearestNeighbour)[..., 0]
    labels_dataset = None
    colours = label_colours(class_names)
    panels = [("label map", colours[labels])]
    if scene is not None and rgb_indices is not None:
        panels.insert(0, ("true colour (B04, B03, B02)", true_colour(scene, rgb_indices, shape)))

    counts = label_counts(label_path)
    names = label_names(class_names)
    texts, handles = [], []
    for value, share in label_shares(counts).items():
        texts.append(f"{names.get(value, f'label {value}')} {100 * share:.1f} %")
        handles.append(Patch(facecolor=colours[value] / 255.0, edgecolor="black", label=texts[-1]))

    panel_width = 6.0
    panel_height = max(2.0, panel_width * shape[0] / shape[1])
    figure, axes = plt.subplots(
        1, len(panels), figsize=(panel_width * len(panels) + 2.5, panel_height + 0.8), squeeze=False
    )
    for axis, (name, picture) in zip(axes[0], panels, strict=True):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title)
    axes[0][-1].legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False
    )
    figure.savefig(output_path, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return texts
