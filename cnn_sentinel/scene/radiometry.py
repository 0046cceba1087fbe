"""Reflectance scale: every model here was trained on EuroSAT's patches, Sentinel-2 L1C
reflectance x 10000; scenes come as x 10000 (L1C/L2A products, most exports), x 1000
(ARCSI and others) or 0-1 floats. 06 converts the scene (REFLECTANCE_SCALE) and warns
when a GeoTIFF's values look like another scale than the one it assumes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from osgeo import gdal

from cnn_sentinel.errors import InputError

# What EuroSAT's patches hold, and so what every model here was trained on:
# Sentinel-2 L1C reflectance x 10000 (digital numbers). 06 converts other scales.
EUROSAT_REFLECTANCE_SCALE = 10000
# Below this median red (x 10000) a scene is darker than any sunlit land: its values
# are most likely reflectance x 1000 (or 0-1), and 06 says which flag to pass.
IMPLAUSIBLE_MEDIAN_RED = 100


def reflectance_factor(
    setting: str | float, dataset: gdal.Dataset, band_indices: Sequence[int], scene_label: str
) -> tuple[float, str]:
    """The factor that takes the scene's values to reflectance x 10000, and the banner's
    words for it. setting: "auto" (a Sentinel-2 product: its own metadata, read with
    the product; any other raster: 10000) or the scene's scale as a number (10000,
    1000, 1 for 0-1 floats). Under auto, warns once with the flag to pass when the
    median of the first model band looks like another scale."""
    if str(setting).lower() == "auto":
        if dataset.GetRasterBand(band_indices[0] + 1).DataType == gdal.GDT_Byte:
            return 1.0, ""  # 8-bit RGB (EuroSAT's JPEG scale), not reflectance
        median = _median_sample(dataset, band_indices[0])
        if median is not None and 0 < median < IMPLAUSIBLE_MEDIAN_RED:
            likely = "1 (0-1 floats)" if median <= 1.5 else "1000"
            warnings.warn(
                f"{scene_label}: median value {median:g} of band {band_indices[0] + 1} is far "
                f"below sunlit reflectance x 10000; if the scene holds reflectance x {likely}, "
                f"pass --reflectance-scale {likely.split()[0]}.",
                UserWarning,
                stacklevel=2,
            )
        return 1.0, ""
    scale = check_reflectance_scale(setting)
    factor = EUROSAT_REFLECTANCE_SCALE / scale
    words = "" if factor == 1.0 else f", reflectance x {scale:g} scaled by {factor:g}"
    return factor, words


def check_reflectance_scale(setting: str | float) -> float | None:
    """The scale as a number (None for auto); InputError for anything else."""
    if str(setting).lower() == "auto":
        return None
    try:
        scale = float(setting)
    except ValueError:
        raise InputError(
            f"reflectance scale must be auto or a number such as 10000, 1000 or 1, not {setting}."
        ) from None
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(
            f"reflectance scale must be a positive, finite number such as 10000, 1000 or 1, "
            f"not {setting}."
        )
    return scale


def _median_sample(dataset: gdal.Dataset, band_index: int, side: int = 256) -> float | None:
    """Median of one band from an overview-sized read (GDAL decimates), no data left out."""
    band = dataset.GetRasterBand(band_index + 1)
    width = min(side, dataset.RasterXSize)
    height = min(side, dataset.RasterYSize)
    values = band.ReadAsArray(buf_xsize=width, buf_ysize=height).astype(np.float64)
    valid = np.isfinite(values) & (values != 0)
    if band.GetNoDataValue() is not None:
        valid &= values != band.GetNoDataValue()
    return float(np.median(values[valid])) if valid.any() else None
