"""Writers: the outputs of a scene classification, fed block by block.

Each writer takes the PredictedBlock of every row block in order (`write`),
completes its output at the end (`finish`) and releases it, also after an error
(`close`). A new output format is one more class with these three methods;
`output_writers` makes the standard set of 06. A writer that also needs the
scene's pixels (e.g. a quicklook beside a true-colour image) finds the block's
pixels, with their halo, in `block.source.pixels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from scene_functions import LABEL_NODATA, PROBABILITY_NODATA, class_colour
from scene_predictors import PredictedBlock

gdal.UseExceptions()

# Creation options of every output GeoTIFF.
GEOTIFF_OPTIONS = ("TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")
# Longest side of the quicklook image in pixels (larger scenes are decimated).
QUICKLOOK_MAX_SIDE = 2000


def create_geotiff(
    dataset: gdal.Dataset, path: Path, bands: int, data_type: int, options: Sequence[str] = ()
) -> gdal.Dataset:
    """A tiled, DEFLATE-compressed GeoTIFF the size of `dataset`, with its
    geotransform and projection when it has them."""
    output = gdal.GetDriverByName("GTiff").Create(
        str(path),
        dataset.RasterXSize,
        dataset.RasterYSize,
        bands,
        data_type,
        [*GEOTIFF_OPTIONS, *options],
    )
    transform = dataset.GetGeoTransform(can_return_null=True)
    if transform is not None:
        output.SetGeoTransform(transform)
    projection = dataset.GetProjection()
    if projection:
        output.SetProjection(projection)
    return output


class GeoTiffWriter:
    """Common part of the GeoTIFF writers: block rows written as they come, finished
    tiles flushed at once (GDAL would otherwise keep them in its cache)."""

    output: gdal.Dataset | None = None

    def write(self, block: PredictedBlock) -> None:
        for number, values in enumerate(self.bands(block), start=1):
            self.output.GetRasterBand(number).WriteArray(values, 0, block.first_row)
        self.output.FlushCache()

    def bands(self, block: PredictedBlock) -> list[np.ndarray]:
        raise NotImplementedError

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        self.output = None


class LabelWriter(GeoTiffWriter):
    """The label raster: Byte class index, colour table, nodata LABEL_NODATA (class
    names follow with `write_category_names` once the file has its final name)."""

    def __init__(self, dataset: gdal.Dataset, path: Path, class_names: Sequence[str]):
        self.output = create_geotiff(dataset, path, 1, gdal.GDT_Byte)
        band = self.output.GetRasterBand(1)
        band.SetNoDataValue(LABEL_NODATA)
        band.SetDescription("label")
        colours = gdal.ColorTable()
        for index, name in enumerate(class_names):
            colours.SetColorEntry(index, (*class_colour(name, index), 255))
        colours.SetColorEntry(LABEL_NODATA, (0, 0, 0, 0))
        band.SetRasterColorTable(colours)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)

    def bands(self, block: PredictedBlock) -> list[np.ndarray]:
        return [block.labels]


class ProbabilityWriter(GeoTiffWriter):
    """The probability raster, Float32, nodata NaN: one band with the winning class's
    probability ("max"), or one band per class described by its name ("all")."""

    def __init__(
        self, dataset: gdal.Dataset, path: Path, class_names: Sequence[str], probabilities: str
    ):
        self.all = probabilities == "all"
        count = len(class_names) if self.all else 1
        self.output = create_geotiff(dataset, path, count, gdal.GDT_Float32, ["PREDICTOR=3"])
        for number in range(1, count + 1):
            band = self.output.GetRasterBand(number)
            band.SetNoDataValue(PROBABILITY_NODATA)
            band.SetDescription(class_names[number - 1] if self.all else "probability")

    def bands(self, block: PredictedBlock) -> list[np.ndarray]:
        grid = block.probabilities
        if self.all:
            return [
                block.spread(grid[..., index], PROBABILITY_NODATA)
                for index in range(grid.shape[-1])
            ]
        return [block.spread(grid.max(axis=-1), PROBABILITY_NODATA)]


def decimation(length: int, max_side_scale: float) -> np.ndarray:
    """Source indices of a nearest-neighbour decimation of `length` pixels by
    `max_side_scale`, the ones GDAL's RasterIO picks (pixel centres)."""
    count = max(1, round(length / max_side_scale))
    return np.floor((np.arange(count) + 0.5) * length / count).astype(np.int64)


class QuicklookWriter:
    """A PNG of the label map with a class legend (matplotlib, Agg backend).

    Scenes longer than `max_side` are decimated (nearest neighbour) while the
    blocks pass, so the picture costs no second read of the label raster.
    """

    def __init__(
        self,
        dataset: gdal.Dataset,
        path: Path,
        class_names: Sequence[str],
        title: str,
        max_side: int = QUICKLOOK_MAX_SIDE,
    ):
        rows, cols = dataset.RasterYSize, dataset.RasterXSize
        scale = max(1.0, max(rows, cols) / max_side)
        self.rows, self.cols = decimation(rows, scale), decimation(cols, scale)
        self.labels = np.full((len(self.rows), len(self.cols)), LABEL_NODATA, np.uint8)
        self.path, self.class_names, self.title = Path(path), list(class_names), title

    def write(self, block: PredictedBlock) -> None:
        inside = (self.rows >= block.first_row) & (self.rows < block.source.last_row)
        self.labels[inside] = block.labels[self.rows[inside] - block.first_row][:, self.cols]

    def finish(self) -> None:
        write_quicklook(self.labels, self.path, self.class_names, self.title)

    def close(self) -> None:
        pass


def write_quicklook(
    labels: np.ndarray, output_path: Path, class_names: Sequence[str], title: str
) -> None:
    """Save labels (rows, cols) uint8 as a PNG with a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = np.zeros((256, 4))
    for index, name in enumerate(class_names):
        colours[index] = (*np.array(class_colour(name, index)) / 255.0, 1.0)
    figure_width = 10.0
    figure_height = max(3.0, figure_width * labels.shape[0] / labels.shape[1] * 0.75)
    figure, axes = plt.subplots(figsize=(figure_width, figure_height))
    axes.imshow(labels, cmap=ListedColormap(colours), vmin=0, vmax=255, interpolation="nearest")
    axes.set_title(title)
    axes.set_axis_off()
    present = np.unique(labels)
    handles = [
        Patch(facecolor=colours[index], edgecolor="black", label=name)
        for index, name in enumerate(class_names)
        if index in present
    ]
    axes.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    figure.savefig(output_path, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def write_category_names(label_path: Path, class_names: Sequence[str]) -> None:
    """Give a finished label GeoTIFF its class names as category names.

    GeoTIFF has no tag for them, so GDAL keeps them in `<label>.aux.xml` beside
    the file (QGIS and GDAL read it); call this after the label file has its
    final name, or the sidecar would keep the temporary name.
    """
    dataset = gdal.Open(str(label_path), gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(list(class_names))
    dataset = None


def output_writers(
    dataset: gdal.Dataset,
    class_names: Sequence[str],
    label_path: Path,
    probability_path: Path,
    quicklook_path: Path | None = None,
    probabilities: str = "max",
    title: str = "",
) -> list:
    """06's outputs: label and probability GeoTIFFs, and the quicklook when a path is given."""
    writers = [
        LabelWriter(dataset, label_path, class_names),
        ProbabilityWriter(dataset, probability_path, class_names, probabilities),
    ]
    if quicklook_path is not None:
        writers.append(QuicklookWriter(dataset, quicklook_path, class_names, title))
    return writers
