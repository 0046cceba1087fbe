"""Quicklooks: a scene's true colour beside its label map, with the share of every class.

The label map and the picture are at the same decimation (labels: the pixel
centres GDAL's nearest neighbour picks; picture: GDAL's averages over the same
cells), so they line up pixel for pixel. Shares are counted on the full labels,
block by block, not on the decimated picture. matplotlib is imported inside the
functions (Agg backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.fonts import fonts_for
from cnn_sentinel.scene.blocks import (
    CLOUD_COLOUR,
    CLOUD_LABEL,
    CLOUD_NAME,
    LABEL_NODATA,
    class_colour,
)
from image_functions import RGB_BAND_NAMES, eurosat_rgb_from_l1c

gdal.UseExceptions()

# Longest side in pixels of each of the two panels (larger scenes are decimated).
QUICKLOOK_MAX_SIDE = 1200
# Colour of pixels without data in the label panel (black, as they look in the picture).
NODATA_COLOUR = (0, 0, 0)
NODATA_NAME = "No data"
# Rows of a finished label raster read at a time.
LABEL_BLOCK_ROWS = 512


def true_colour_bands(band_names: Sequence[str]) -> list[int] | None:
    """0-based indices of B04, B03, B02 (red, green, blue) among `band_names`, or None."""
    if not all(name in band_names for name in RGB_BAND_NAMES):
        return None
    return [list(band_names).index(name) for name in RGB_BAND_NAMES]


def label_colours(class_names: Sequence[str], class_colours=None) -> np.ndarray:
    """(256, 3) uint8 colour of every label value: classes (`class_colours`, one (r, g, b)
    per class, when given, e.g. a model's own classes; else by name), CLOUD_LABEL, nodata
    (black)."""
    colours = np.zeros((256, 3), np.uint8)
    for index, name in enumerate(class_names):
        colours[index] = class_colours[index] if class_colours else class_colour(name, index)
    colours[CLOUD_LABEL] = CLOUD_COLOUR
    colours[LABEL_NODATA] = NODATA_COLOUR
    return colours


def colour_table_colours(band: gdal.Band, count: int) -> list[tuple[int, int, int]] | None:
    """The (r, g, b) of the first `count` entries of a label band's colour table (what a
    label map of 06 says its classes look like), or None without a table."""
    table = band.GetColorTable()
    if table is None or table.GetCount() < count:
        return None
    return [tuple(table.GetColorEntry(index)[:3]) for index in range(count)]


def label_names(class_names: Sequence[str]) -> dict[int, str]:
    """Name of every label value 06 writes: the classes, CLOUD_NAME and NODATA_NAME."""
    return {**dict(enumerate(class_names)), CLOUD_LABEL: CLOUD_NAME, LABEL_NODATA: NODATA_NAME}


def label_shares(counts: np.ndarray) -> dict[int, float]:
    """Share (0..1) of all pixels of every label value that occurs, in value order."""
    total = max(int(counts.sum()), 1)
    return {int(value): counts[value] / total for value in np.flatnonzero(counts)}


def decimation(length: int, scale: float) -> np.ndarray:
    """Source indices of a nearest-neighbour decimation of `length` pixels by `scale`,
    the pixel centres GDAL's RasterIO picks."""
    count = max(1, round(length / scale))
    return np.floor((np.arange(count) + 0.5) * length / count).astype(np.int64)


def true_colour(dataset: gdal.Dataset, rgb_indices: Sequence[int], shape: tuple[int, int]):
    """(rows, cols, 3) uint8 picture of the scene at `shape` (GDAL averages the pixels):
    8-bit bands as they are, L1C digital numbers with EuroSAT's scaling (0..2750 -> 1..255)."""
    planes = [
        dataset.GetRasterBand(index + 1).ReadAsArray(
            buf_xsize=shape[1], buf_ysize=shape[0], resample_alg=gdal.GRIORA_Average
        )
        for index in rgb_indices
    ]
    values = np.stack(planes, axis=-1)
    if dataset.GetRasterBand(rgb_indices[0] + 1).DataType == gdal.GDT_Byte:
        return values.astype(np.uint8)
    return eurosat_rgb_from_l1c(np.nan_to_num(values))


def save_quicklook(
    labels: np.ndarray,
    counts: np.ndarray,
    output_path: str | Path,
    class_names: Sequence[str],
    title: str,
    picture: np.ndarray | None = None,
    class_colours=None,
) -> list[str]:
    """Save decimated labels (rows, cols) uint8, beside the picture (rows, cols, 3) uint8
    when given, as a PNG with a legend of every label's share of `counts` (256,).

    Returns the legend texts, e.g. "Forest 23.4 %", in label order (classes, Cloud, No data).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    with fonts_for(class_names):  # class names in any alphabet
        colours = label_colours(class_names, class_colours)
        panels = [("label map", colours[labels])]
        if picture is not None:
            panels.insert(0, ("true colour (B04, B03, B02)", picture))
        names = label_names(class_names)
        texts, handles = [], []
        for value, share in label_shares(counts).items():
            texts.append(f"{names.get(value, f'label {value}')} {100 * share:.1f} %")
            handles.append(
                Patch(facecolor=colours[value] / 255.0, edgecolor="black", label=texts[-1])
            )

        panel_width = 6.0
        panel_height = max(2.0, panel_width * labels.shape[0] / labels.shape[1])
        figure, axes = plt.subplots(
            1,
            len(panels),
            figsize=(panel_width * len(panels) + 2.5, panel_height + 0.8),
            squeeze=False,
        )
        for axis, (name, image) in zip(axes[0], panels, strict=True):
            axis.imshow(image, interpolation="nearest")
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


class SideBySideQuicklookWriter:
    """06's quicklook: the scene's true colour beside its label map, with every label's
    share, as a PNG (see `save_quicklook`).

    The decimated labels and the counts of all labels are gathered while the row
    blocks pass (no second read of the label raster); the picture is read from the
    scene at the end, at the same decimation (GDAL averages). rgb_indices: 0-based
    scene bands B04, B03, B02, or None for the label map alone.
    """

    def __init__(
        self,
        dataset: gdal.Dataset,
        path: str | Path,
        class_names: Sequence[str],
        title: str,
        rgb_indices: Sequence[int] | None = None,
        max_side: int = QUICKLOOK_MAX_SIDE,
        class_colours=None,
    ):
        rows, cols = dataset.RasterYSize, dataset.RasterXSize
        scale = max(1.0, max(rows, cols) / max_side)
        self.rows, self.cols = decimation(rows, scale), decimation(cols, scale)
        self.labels = np.full((len(self.rows), len(self.cols)), LABEL_NODATA, np.uint8)
        self.counts = np.zeros(256, np.int64)
        self.dataset, self.path, self.title = dataset, Path(path), title
        self.class_names, self.rgb_indices = list(class_names), rgb_indices
        self.class_colours = class_colours
        self.texts: list[str] = []

    def add_rows(self, first_row: int, labels: np.ndarray) -> None:
        """Labels (rows, cols) uint8 of scene rows first_row..first_row+rows-1."""
        inside = (self.rows >= first_row) & (self.rows < first_row + len(labels))
        self.labels[inside] = labels[self.rows[inside] - first_row][:, self.cols]
        self.counts += np.bincount(labels.ravel(), minlength=256)

    def write(self, block) -> None:
        """A PredictedBlock (blocks.py: its first_row and labels)."""
        self.add_rows(block.first_row, block.labels)

    def finish(self) -> None:
        picture = None
        if self.rgb_indices is not None:
            picture = true_colour(self.dataset, self.rgb_indices, self.labels.shape)
        self.texts = save_quicklook(
            self.labels, self.counts, self.path, self.class_names, self.title, picture,
            self.class_colours,
        )  # fmt: skip

    def close(self) -> None:
        self.dataset = None


def write_side_by_side_quicklook(
    label_path: str | Path,
    output_path: str | Path,
    class_names: Sequence[str],
    title: str,
    scene: gdal.Dataset | None = None,
    rgb_indices: Sequence[int] | None = None,
) -> list[str]:
    """Save the quicklook of a finished label raster (the same PNG 06 writes): the
    scene's true colour (when `scene` and `rgb_indices` are given, the same size)
    beside the label map. Returns the legend texts."""
    labels_dataset = gdal.Open(str(label_path), gdal.GA_ReadOnly)
    band = labels_dataset.GetRasterBand(1)
    rows, cols = labels_dataset.RasterYSize, labels_dataset.RasterXSize
    writer = SideBySideQuicklookWriter(
        scene if scene is not None else labels_dataset,
        output_path,
        class_names,
        title,
        rgb_indices if scene is not None else None,
    )
    for top in range(0, rows, LABEL_BLOCK_ROWS):
        writer.add_rows(top, band.ReadAsArray(0, top, cols, min(LABEL_BLOCK_ROWS, rows - top)))
    labels_dataset = None
    try:
        writer.finish()
    finally:
        writer.close()
    return writer.texts
