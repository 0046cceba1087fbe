"""Writers: the outputs of a scene classification, fed block by block.

Each writer takes the PredictedBlock of every row block in order (`write`),
completes its output at the end (`finish`) and releases it, also after an error
(`close`). A new output format is one more class with these three methods;
`output_writers` makes the standard set of 06. A writer that also needs the
scene's pixels finds the block's pixels, with their halo, in `block.source.pixels`;
the quicklook (quicklooks.SideBySideQuicklookWriter) reads its
decimated true colour from the scene at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.scene.blocks import (
    CLOUD_COLOUR,
    CLOUD_LABEL,
    LABEL_NODATA,
    PROBABILITY_NODATA,
    PredictedBlock,
    class_colour,
)
from cnn_sentinel.scene.quicklooks import SideBySideQuicklookWriter, true_colour_bands
from cnn_sentinel.scene.reading import scene_band_names

gdal.UseExceptions()

# Creation options of every output GeoTIFF.
GEOTIFF_OPTIONS = ("TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER")
# Creation options of the Cloud-Optimized GeoTIFFs (GDAL's COG driver), by output kind:
# labels are averaged by the most common class in overviews, probabilities by their mean.
COG_OPTIONS = {
    "label": ("COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER", "OVERVIEW_RESAMPLING=MODE"),
    "probability": (
        "COMPRESS=DEFLATE",
        "PREDICTOR=YES",
        "BIGTIFF=IF_SAFER",
        "OVERVIEW_RESAMPLING=AVERAGE",
    ),
}


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
    tiles flushed at once (GDAL would otherwise keep them in its cache). A writer
    made on a band of a scene (`dataset` a crop of its rows) writes scene rows from
    `first_row` on."""

    output: gdal.Dataset | None = None
    first_row: int = 0

    def write(self, block: PredictedBlock) -> None:
        self.write_rows(block.first_row, self.bands(block))

    def write_rows(self, first_row: int, bands: Sequence[np.ndarray]) -> None:
        """Arrays (rows, cols), one per output band, of scene rows from `first_row` on."""
        for number, values in enumerate(bands, start=1):
            self.output.GetRasterBand(number).WriteArray(values, 0, first_row - self.first_row)
        self.output.FlushCache()

    def bands(self, block: PredictedBlock) -> list[np.ndarray]:
        raise NotImplementedError

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        self.output = None


class LabelWriter(GeoTiffWriter):
    """The label raster: Byte class index, colour table, nodata LABEL_NODATA, and with
    `clouds` CLOUD_LABEL in CLOUD_COLOUR (category names follow with
    `write_category_names` once the file has its final name). class_colours: one
    (r, g, b) per class (a model's own classes), else EuroSAT's colours by name."""

    def __init__(
        self,
        dataset: gdal.Dataset,
        path: Path,
        class_names: Sequence[str],
        clouds: bool = False,
        first_row: int = 0,
        class_colours=None,
    ):
        self.first_row = first_row
        self.output = create_geotiff(dataset, path, 1, gdal.GDT_Byte)
        band = self.output.GetRasterBand(1)
        band.SetNoDataValue(LABEL_NODATA)
        band.SetDescription("label")
        colours = gdal.ColorTable()
        for index, name in enumerate(class_names):
            colour = class_colours[index] if class_colours else class_colour(name, index)
            colours.SetColorEntry(index, (*colour, 255))
        if clouds:
            colours.SetColorEntry(CLOUD_LABEL, (*CLOUD_COLOUR, 255))
        colours.SetColorEntry(LABEL_NODATA, (0, 0, 0, 0))
        band.SetRasterColorTable(colours)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)

    def bands(self, block: PredictedBlock) -> list[np.ndarray]:
        return [block.labels]


class ProbabilityWriter(GeoTiffWriter):
    """The probability raster, Float32, nodata NaN: one band with the winning class's
    probability ("max"), or one band per class described by its name ("all")."""

    def __init__(
        self,
        dataset: gdal.Dataset,
        path: Path,
        class_names: Sequence[str],
        probabilities: str,
        first_row: int = 0,
    ):
        self.first_row = first_row
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


def convert_to_cog(path: Path, kind: str) -> None:
    """Rewrite the finished GeoTIFF `path` as a Cloud-Optimized GeoTIFF in place, with
    overviews (`kind` "label": mode; "probability": average); nodata, colour table and
    band descriptions are kept. The pixels do not change."""
    cog = path.with_name(f"{path.stem}.cog{path.suffix}")
    try:
        gdal.Translate(str(cog), str(path), format="COG", creationOptions=list(COG_OPTIONS[kind]))
        cog.replace(path)
    finally:
        cog.unlink(missing_ok=True)


def write_record(label_path: Path, record: dict[str, str]) -> None:
    """Write the run's record (how the scene was read and adapted) into a written label
    GeoTIFF as metadata items, before it is made Cloud-Optimized (a later update
    would break the COG layout)."""
    dataset = gdal.Open(str(label_path), gdal.GA_Update)
    dataset.SetMetadata({**(dataset.GetMetadata() or {}), **record})
    dataset = None


def write_category_names(label_path: Path, class_names: Sequence[str]) -> None:
    """Give a finished label GeoTIFF its class names as category names.

    GeoTIFF has no tag for category names, so GDAL keeps them in `<label>.aux.xml`
    beside the file (QGIS and GDAL read it); call this after the label file has its
    final name, or the sidecar would keep the temporary name.
    """
    dataset = gdal.Open(str(label_path), gdal.GA_Update)
    dataset.GetRasterBand(1).SetCategoryNames(list(class_names))
    dataset = None


# Room for a quicklook PNG (at most 2000 px a side, a few MB), for the space needed.
QUICKLOOK_BYTES = 8 * 2**20


def output_bytes(dataset: gdal.Dataset, class_count: int, probabilities: str = "max") -> int:
    """The most space 06's outputs of `dataset` take (GeoTIFFs uncompressed, one byte a
    label and four a probability band, plus a quicklook), for the sentence of a full disk."""
    bands = class_count if probabilities == "all" else 1
    return dataset.RasterXSize * dataset.RasterYSize * (1 + 4 * bands) + QUICKLOOK_BYTES


def output_writers(
    dataset: gdal.Dataset,
    class_names: Sequence[str],
    label_path: Path,
    probability_path: Path,
    quicklook_path: Path | None = None,
    probabilities: str = "max",
    title: str = "",
    clouds: bool = False,
    class_colours=None,
) -> list:
    """06's outputs: label and probability GeoTIFFs, and when a path is given the
    quicklook (the scene's true colour, when it has B04, B03, B02, beside the label map)."""
    writers = [
        LabelWriter(dataset, label_path, class_names, clouds, class_colours=class_colours),
        ProbabilityWriter(dataset, probability_path, class_names, probabilities),
    ]
    if quicklook_path is not None:
        rgb_indices = true_colour_bands(scene_band_names(dataset))
        writers.append(
            SideBySideQuicklookWriter(
                dataset,
                quicklook_path,
                class_names,
                title,
                rgb_indices,
                class_colours=class_colours,
            )  # fmt: skip
        )
    return writers
