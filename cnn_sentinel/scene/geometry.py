"""Where a scene lies: its extent and CRS, bounding boxes as pixel windows (a box in
another CRS put in the scene's), the virtual crop to one, and whether its pixels are
the size the model was trained on.

Below reading.py (which opens scenes); GDAL and OSR only, no TensorFlow.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from osgeo import gdal, osr

from cnn_sentinel.errors import InputError

# A scene whose pixels differ from the model's by more than this factor (either way)
# gets a warning: the 64 x 64 window then covers another ground area than in training.
PIXEL_SIZE_TOLERANCE = 1.5


def scene_extent(dataset: gdal.Dataset) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a georeferenced scene, in its CRS's units."""
    left, width, _, top, _, height = dataset.GetGeoTransform()
    xs = (left, left + width * dataset.RasterXSize)
    ys = (top, top + height * dataset.RasterYSize)
    return min(xs), min(ys), max(xs), max(ys)


def _numbers(values: Sequence[float]) -> str:
    return " ".join(f"{value:.10g}" for value in values)


def crs_words(dataset: gdal.Dataset) -> str:
    """The scene's CRS as people name it: "EPSG:32633", else its name, else "its CRS"."""
    wkt = dataset.GetProjection()
    if not wkt:
        return "its CRS"
    reference = osr.SpatialReference(wkt=wkt)
    code = reference.GetAuthorityCode(None)
    return f"EPSG:{code}" if code else reference.GetName() or "its CRS"


def bbox_window(
    dataset: gdal.Dataset, bbox: Sequence[float], scene_label: str
) -> tuple[int, int, int, int]:
    """The pixel window (xoff, yoff, xsize, ysize) of a bounding box (minx, miny, maxx,
    maxy in the scene's CRS). A box outside the scene is an InputError naming the box
    and the scene's extent; one that reaches beyond it is clipped, with a note."""
    transform = dataset.GetGeoTransform()
    minx, miny, maxx, maxy = bbox
    columns = sorted(((minx - transform[0]) / transform[1], (maxx - transform[0]) / transform[1]))
    rows = sorted(((maxy - transform[3]) / transform[5], (miny - transform[3]) / transform[5]))
    left, top = math.floor(columns[0] + 1e-9), math.floor(rows[0] + 1e-9)
    right, bottom = math.ceil(columns[1] - 1e-9), math.ceil(rows[1] - 1e-9)
    clipped = (
        max(left, 0),
        max(top, 0),
        min(right, dataset.RasterXSize),
        min(bottom, dataset.RasterYSize),
    )
    extent = f"{_numbers(scene_extent(dataset))} ({crs_words(dataset)})"
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        raise InputError(
            f"bounding box {_numbers(bbox)} does not overlap scene {scene_label}, whose extent "
            f"is {extent}; give minx miny maxx maxy in the scene's CRS."
        )
    if clipped != (left, top, right, bottom):
        corners = [
            transform[0] + transform[1] * clipped[0],
            transform[3] + transform[5] * clipped[3],
            transform[0] + transform[1] * clipped[2],
            transform[3] + transform[5] * clipped[1],
        ]
        print(
            f"note: bounding box {_numbers(bbox)} reaches beyond scene {scene_label} (extent "
            f"{extent}); classifying its part inside the scene, {_numbers(corners)}.",
            file=sys.stderr,
        )
    return clipped[0], clipped[1], clipped[2] - clipped[0], clipped[3] - clipped[1]


def utm_code(dataset: gdal.Dataset) -> str:
    """The EPSG code of the UTM zone of the scene's centre ("EPSG:32633"), or a
    placeholder ("EPSG:326xx") when the centre cannot be found in longitude/latitude."""
    try:
        minx, miny, maxx, maxy = scene_extent(dataset)
        source = osr.SpatialReference(wkt=dataset.GetProjection())
        target = osr.SpatialReference()
        target.ImportFromEPSG(4326)
        for reference in (source, target):
            reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        longitude, latitude, _ = osr.CoordinateTransformation(source, target).TransformPoint(
            (minx + maxx) / 2, (miny + maxy) / 2
        )
    except (RuntimeError, TypeError, ValueError):
        return "EPSG:326xx"
    zone = min(60, max(1, math.floor((longitude + 180) / 6) + 1))
    return f"EPSG:{(32600 if latitude >= 0 else 32700) + zone}"


def pixel_size_problem(dataset: gdal.Dataset, model_pixel_size: float, scene_label: str) -> str:
    """Why the scene's pixels do not fit a model trained on `model_pixel_size` metre
    pixels (a geographic CRS, or pixels more than PIXEL_SIZE_TOLERANCE times larger or
    smaller), with the gdalwarp command that fixes it; "" when they fit or the scene
    has no georeference (warned about elsewhere)."""
    transform = dataset.GetGeoTransform(can_return_null=True)
    if transform is None or not dataset.GetProjection():
        return ""
    reference = osr.SpatialReference(wkt=dataset.GetProjection())
    size = f"{model_pixel_size:g} {model_pixel_size:g}"
    if reference.IsGeographic():
        return (
            f"scene {scene_label} is in geographic coordinates ({crs_words(dataset)}, degrees), "
            f"but the model was trained on {model_pixel_size:g} m pixels, so its windows would "
            f"cover other ground; reproject it first: gdalwarp -t_srs {utm_code(dataset)} "
            f"-tr {size} -r bilinear {scene_label} scene_utm.tif"
        )
    metres = max(abs(transform[1]), abs(transform[5])) * reference.GetLinearUnits()
    ratio = metres / model_pixel_size
    if 1 / PIXEL_SIZE_TOLERANCE <= ratio <= PIXEL_SIZE_TOLERANCE:
        return ""
    return (
        f"scene {scene_label} has {metres:.3g} m pixels, {ratio:.3g} times the "
        f"{model_pixel_size:g} m pixels the model was trained on, so its windows see other "
        f"things than in training and the map is likely wrong; resample it first: "
        f"gdalwarp -tr {size} -r bilinear {scene_label} scene_{model_pixel_size:g}m.tif"
    )


def warn_if_pixel_size_differs(
    dataset: gdal.Dataset, model_pixel_size: float, scene_label: str
) -> None:
    """Warn (without stopping) when pixel_size_problem finds one."""
    problem = pixel_size_problem(dataset, model_pixel_size, scene_label)
    if problem:
        warnings.warn(problem + ".", UserWarning, stacklevel=2)


def centred_in_box(
    transform: Sequence[float], shape: tuple[int, int], box: Sequence[float], what: str
) -> list[int]:
    """[first row, first column, rows, columns] of the pixels of a north-up grid
    (`transform`, `shape` rows and columns) whose centres lie in `box` (xmin, ymin, xmax,
    ymax in the grid's CRS, edges included). InputError when the box is no box or holds
    no pixel centre of `what` (words for the message, e.g. "map x.tif")."""
    xmin, ymin, xmax, ymax = (float(value) for value in box)
    if not (xmin < xmax and ymin < ymax):
        raise InputError(f"box {xmin:g} {ymin:g} {xmax:g} {ymax:g} is not XMIN YMIN XMAX YMAX.")
    x0, width, _, y0, _, height = transform
    rows, cols = shape
    xs = x0 + (np.arange(cols) + 0.5) * width
    ys = y0 + (np.arange(rows) + 0.5) * height
    picked_cols = np.flatnonzero((xs >= xmin) & (xs <= xmax))
    picked_rows = np.flatnonzero((ys >= ymin) & (ys <= ymax))
    if not len(picked_cols) or not len(picked_rows):
        xs_edge, ys_edge = (x0, x0 + cols * width), (y0, y0 + rows * height)
        raise InputError(
            f"box {xmin:g} {ymin:g} {xmax:g} {ymax:g} holds no pixel of {what} (x "
            f"{min(xs_edge):g} to {max(xs_edge):g}, y {min(ys_edge):g} to {max(ys_edge):g})."
        )
    top, left = int(picked_rows[0]), int(picked_cols[0])
    return [top, left, int(picked_rows[-1]) + 1 - top, int(picked_cols[-1]) + 1 - left]


def bbox_in_scene_crs(
    dataset: gdal.Dataset, bbox: Sequence[float], crs: str, scene_label: str
) -> list[float]:
    """A bounding box (minx, miny, maxx, maxy) given in `crs` ("EPSG:4326": longitude,
    latitude) as the smallest box in the scene's CRS that holds it (edges densified,
    so a box of meridians and parallels is held whole by the scene's UTM box)."""
    given = osr.SpatialReference()
    try:
        known = given.SetFromUserInput(crs) == 0 and bool(given.ExportToWkt())
    except RuntimeError:  # the error itself, where osr raises exceptions
        known = False
    if not known:
        raise InputError(f"bounding box CRS {crs} is not a CRS GDAL knows (e.g. EPSG:4326).")
    if not dataset.GetProjection():
        raise InputError(f"scene {scene_label} has no CRS, so a box in {crs} cannot apply.")
    scene = osr.SpatialReference(wkt=dataset.GetProjection())
    for reference in (given, scene):
        reference.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(given, scene)
    try:
        return list(transform.TransformBounds(*bbox, 21))
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"bounding box {_numbers(bbox)} in {crs} cannot be put in the CRS of scene "
            f"{scene_label} ({crs_words(dataset)})."
        ) from None


def check_crop(bbox: Sequence[float] | None, window: Sequence[int] | None) -> None:
    """InputError for a bounding box and a pixel window together, or a box that is not
    minx miny maxx maxy."""
    if bbox and window:
        raise InputError("give either a bounding box or a pixel window, not both.")
    if bbox and (len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3])):
        raise InputError(f"bounding box {list(bbox)} is not minx miny maxx maxy.")


def crop_scene(
    dataset: gdal.Dataset,
    label: str,
    bbox: Sequence[float] | None = None,
    window: Sequence[int] | None = None,
) -> gdal.Dataset:
    """An opened scene limited to bbox (in its CRS) or window (pixels): a virtual crop
    (VRT) with the band descriptions kept; the scene itself without either."""
    check_crop(bbox, window)
    if bbox:
        transform = dataset.GetGeoTransform(can_return_null=True)
        if transform is None:
            raise InputError(
                f"scene {label} has no georeferencing, so a bounding box cannot apply."
            )
        window = bbox_window(dataset, bbox, label)
    if window:
        if len(window) != 4:
            raise InputError(f"pixel window {list(window)} is not xoff yoff xsize ysize.")
        xoff, yoff, xsize, ysize = (int(value) for value in window)
        if (
            xsize <= 0
            or ysize <= 0
            or xoff < 0
            or yoff < 0
            or xoff + xsize > dataset.RasterXSize
            or yoff + ysize > dataset.RasterYSize
        ):
            raise InputError(
                f"window {xoff} {yoff} {xsize} {ysize} (pixels) is not inside scene {label} "
                f"of {dataset.RasterXSize}x{dataset.RasterYSize} pixels."
            )
        descriptions = [
            dataset.GetRasterBand(number).GetDescription()
            for number in range(1, dataset.RasterCount + 1)
        ]
        dataset = gdal.Translate("", dataset, format="VRT", srcWin=[xoff, yoff, xsize, ysize])
        for number, description in enumerate(descriptions, start=1):
            dataset.GetRasterBand(number).SetDescription(description)
    return dataset
