"""Large rasters in: opening scenes (GeoTIFF, VRT, Sentinel-2 .SAFE or .zip, STAC item), choosing
their bands, loading the model, and reading row blocks with a mirrored halo.

Scene classification (cnn_sentinel/scene/) is split by what changes together:
  blocks.py       the bottom: ReadBlock, PredictedBlock, prefetch
  reading.py      scenes and models in: open, bands, block reads (this module)
  products.py     .SAFE folders and .zip files as one 13-band stack
  stac.py         STAC items (their band assets, over HTTP too) and STAC API searches
  plan.py         ScenePlan: 06's settings for one scene, decided once (plan_scene)
  predictors.py   blocks of class probabilities out, one pass per window
  dense.py        the whole-block (fully convolutional) pass, exact for models
                  without zero padding inside the window
  runner.py       a plan's model made ready and run: prepare_classification(plan).run
  clouds.py       the s2cloudless cloud mask, a block step
  writers.py      outputs: label and probability GeoTIFFs; quicklooks.py the PNG
  job.py, many.py 06 on one planned scene, on many (Dask)
A new output format is one writer; a new way to compute probabilities is one predictor.

The window of pixel (r, c) covers rows r-32..r+31 and cols c-32..c+31 (for the
64-pixel EuroSAT window), the scene mirrored (numpy "symmetric") past its edges,
exactly as the talk's classifier did. Unlike the talk, the scene is streamed:
row blocks are read with GDAL together with their half-window halo, so memory
depends on the block size and not on the scene size. TensorFlow and Keras are
imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, gdal_array

from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.networks import load_model
from cnn_sentinel.scene.blocks import ReadBlock
from cnn_sentinel.scene.geometry import crop_scene
from cnn_sentinel.scene.products import is_sentinel2_product, sentinel2_stack
from cnn_sentinel.scene.stac import is_stac_item, item_stack
from image_functions import (
    CLASS_NAMES,
    IMAGE_SIZE,
    RGB_BAND_NAMES,
    default_band_names,
    eurosat_rgb_from_l1c,
)

gdal.UseExceptions()

# Model file suffixes 06 accepts; .h5/.hdf5 are the talk's legacy format.
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def normalise_band_name(name: str) -> str:
    """Canonical Sentinel-2 band name: "B1" and "b01" -> "B01", "B8a" -> "B8A"."""
    match = re.fullmatch(r"B0*(\d{1,2})(A?)", name.strip().upper())
    if match is None:
        return name.strip()
    return f"B{int(match.group(1)):02d}{match.group(2)}" if not match.group(2) else "B8A"


def _first_int(value: object) -> int | None:
    """An int from 64, "64", [64, 64] or [64, 64, 13]; None if there is none."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _has_normalization_layer(model) -> bool:
    """Whether a Keras model (or a model nested in it) holds a Normalization layer."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            return True
        if hasattr(layer, "layers") and _has_normalization_layer(layer):
            return True
    return False


# Models kept by load_scene_model(cache=True), by (path, modification time, thread): a Dask
# worker keeps its models between tasks, so each is read from disk once per worker thread,
# with its weights as loaded (a task may change a model's weights: the scene adaptation
# sets its batch-normalisation statistics, so two threads never share one model).
_LOADED_MODELS: dict[tuple[str, int, int], tuple[object, ModelInfo, list]] = {}


def load_scene_model(model_path: str | Path, cache: bool = False):
    """Load a Keras model for classifying scenes, and what it says about itself: the scene
    side's one model loader (networks.load_model reads the file).

    cache: keep the model in this process, one copy per thread (a Dask worker's tasks,
    many.py), and set its weights back to the file's at every call (what an earlier
    task changed is undone); a changed file (modification time) is loaded again.

    Returns (model, ModelInfo). The facts come from `model.json`
    beside the model ("class_names", "band_names", "input_size"; missing keys
    fall back to what the model itself says). A model without model.json (the
    talk's .h5/.hdf5) gets the talk's class list and, unless it holds its own
    Normalization layer, the talk's normalisation constants chosen by band count.
    """

    model_path = Path(model_path)
    if cache and model_path.is_file():
        resolved = model_path.resolve()
        key = (str(resolved), resolved.stat().st_mtime_ns, threading.get_ident())
        if key not in _LOADED_MODELS:
            model, info = load_scene_model(resolved)
            _LOADED_MODELS[key] = (model, info, model.get_weights())
        model, info, weights = _LOADED_MODELS[key]
        model.set_weights(weights)
        return model, info
    if not model_path.exists():
        raise InputError(f"model {model_path} does not exist.")
    if model_path.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(
            f"model {model_path} is not a Keras model file ({', '.join(MODEL_SUFFIXES)})."
        )
    model = load_model(model_path)
    input_shape = tuple(model.inputs[0].shape)
    output_units = int(model.outputs[0].shape[-1])
    model_bands = int(input_shape[-1])
    model_size = _first_int(input_shape[1])

    info = ModelInfo.load(model_path)
    class_names = info.class_names if info is not None else []
    if not class_names:
        class_names = (
            CLASS_NAMES
            if output_units == len(CLASS_NAMES)
            else [f"class{index}" for index in range(output_units)]
        )
        if model_path.suffix.lower() == ".keras":  # the talk's models are .h5/.hdf5
            print(
                f"note: no model.json found for {model_path} (beside it, or in its run folder "
                f"for a checkpoint), so its {output_units} classes are ASSUMED to be "
                f"{', '.join(class_names)}; copy the run's model.json beside it if they are not.",
                file=sys.stderr,
            )
    band_names = (info.band_names if info is not None else []) or default_band_names(model_bands)
    input_size = (info.input_size if info is not None else None) or model_size or IMAGE_SIZE
    source = info.source if info is not None else f"{model_path} (no model.json)"

    if len(class_names) != output_units:
        raise InputError(
            f"model {model_path} has {output_units} outputs but {source} lists "
            f"{len(class_names)} classes."
        )
    if len(band_names) != model_bands:
        raise InputError(
            f"model {model_path} takes {model_bands} bands but {source} lists "
            f"{len(band_names)} bands ({', '.join(band_names)})."
        )
    if model_size is not None and model_size != input_size:
        raise InputError(
            f"model {model_path} takes {model_size}x{model_size} windows but {source} says "
            f"input_size {input_size}."
        )
    facts = {
        "class_names": [str(name) for name in class_names],
        "band_names": [normalise_band_name(str(name)) for name in band_names],
        "input_size": int(input_size),
        "source": source,
    }
    if info is None and not _has_normalization_layer(model):
        info = ModelInfo.for_talk_model(model_bands)
    return model, ModelInfo(**facts) if info is None else dataclasses.replace(info, **facts)


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------


def scene_stem(path: str | Path) -> str:
    """Output name stem of a scene: "a/S2A_X.SAFE.zip" -> "S2A_X", "b/scene.tif" -> "scene"."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".zip", ".safe", ".vrt", ".tiff", ".tif", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def open_scene(
    path: str | Path,
    bbox: Sequence[float] | None = None,
    window: Sequence[int] | None = None,
) -> gdal.Dataset:
    """Open a scene read-only: a GeoTIFF/VRT/any GDAL raster, a .SAFE folder or its .zip,
    a STAC item's .json (its band assets, stac.item_stack).

    bbox (minx, miny, maxx, maxy) in the scene's CRS or window (xoff, yoff, xsize,
    ysize) in pixels limits the scene to that part (geometry.crop_scene: a virtual crop, no
    copy, only its blocks are read). Raises InputError naming the file when it is
    missing or not a raster.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"scene {path} does not exist.")
    if is_sentinel2_product(path):
        dataset = sentinel2_stack(path)
    elif is_stac_item(path):
        dataset = item_stack(path)
    elif path.is_dir():
        raise InputError(f"scene {path} is a folder but not a Sentinel-2 .SAFE product.")
    else:
        try:
            dataset = gdal.Open(str(path), gdal.GA_ReadOnly)
        except RuntimeError:
            dataset = None
        if dataset is None or dataset.RasterCount == 0:
            raise InputError(f"scene {path} is not a raster GDAL can read.")
    return crop_scene(dataset, str(path), bbox, window)


def scene_band_names(dataset: gdal.Dataset) -> tuple[str, ...]:
    """Band names of a scene: its band descriptions (normalised, "B1" -> "B01") when
    every band has one, else the default names for its band count."""
    descriptions = [
        dataset.GetRasterBand(number).GetDescription().strip()
        for number in range(1, dataset.RasterCount + 1)
    ]
    if all(descriptions):
        return tuple(normalise_band_name(name) for name in descriptions)
    return default_band_names(dataset.RasterCount)


def band_spec_items(spec: str | None) -> list[str]:
    """The items of a band choice: "B04,B03,B02" -> ["B04", "B03", "B02"]; "4,3,2" and
    "4 3 2" -> ["4", "3", "2"]; None or "" -> []."""
    return str(spec).replace(",", " ").split() if spec else []


def band_numbers(items: Sequence[str]) -> list[int] | None:
    """GDAL band numbers (1-based) when every item of a band choice is one, else None."""
    if not items or not all(item.isdigit() for item in items):
        return None
    return [int(item) for item in items]


def choose_scene_bands(
    scene_names: Sequence[str],
    model_bands: Sequence[str],
    spec: str | None,
    scene_label: str,
) -> list[int]:
    """0-based scene band indices that feed the model's bands, in the model's order.

    spec None: by band name when the scene has all the model's bands (e.g. the
    15-band RaVAEn scene, or RGB out of 13 bands), else every band in file order
    if the count matches. spec "B04,B03,B02" selects by name, "4,3,2" by GDAL
    band number. A mismatch is an InputError that lists the expected band names.
    """
    expected = ", ".join(model_bands)
    if spec:
        items = band_spec_items(spec)
        numbers = band_numbers(items)
        if numbers is not None:
            indices = [number - 1 for number in numbers]
            if any(index < 0 or index >= len(scene_names) for index in indices):
                raise InputError(
                    f"bands {spec} are not all among the {len(scene_names)} bands of scene "
                    f"{scene_label}."
                )
        else:
            wanted = [normalise_band_name(item) for item in items]
            missing = [name for name in wanted if name not in scene_names]
            if missing:
                raise InputError(
                    f"scene {scene_label} has no band {', '.join(missing)} (its bands: "
                    f"{', '.join(scene_names)})."
                )
            indices = [list(scene_names).index(name) for name in wanted]
        if len(indices) != len(model_bands):
            raise InputError(
                f"bands {spec} select {len(indices)} bands of scene {scene_label}, but the "
                f"model expects {len(model_bands)} bands: {expected}."
            )
        return indices
    if all(name in scene_names for name in model_bands):
        return [list(scene_names).index(name) for name in model_bands]
    if len(scene_names) == len(model_bands):
        return list(range(len(model_bands)))
    missing = [name for name in model_bands if name not in scene_names]
    lacks = f"; it lacks {', '.join(missing)}" if len(missing) < len(model_bands) else ""
    raise InputError(
        f"scene {scene_label} has {len(scene_names)} bands ({', '.join(scene_names)}) but the "
        f"model expects {len(model_bands)} bands: {expected}{lacks}; select them with --bands."
    )


def symmetric_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices start..stop-1 folded into 0..length-1 as numpy's "symmetric" pad mirrors them.

    -1 -> 0, -2 -> 1, length -> length-1, ... (the edge pixel is repeated), with
    period 2*length so that windows larger than the scene still work.
    """
    positions = np.arange(start, stop) % (2 * length)
    return np.where(positions < length, positions, 2 * length - 1 - positions)


def window_centres(length: int, stride: int) -> np.ndarray:
    """Centre pixel of every stride x stride output block along one axis (int64).

    Block k covers pixels k*stride .. k*stride+stride-1; its window is centred on
    pixel k*stride + stride//2 (clipped to the scene), which for even strides puts
    the window's middle exactly on the block's middle (stride 64: the window is
    the block). Stride 1 gives every pixel, as the talk.
    """
    starts = np.arange(0, length, stride)
    return np.minimum(starts + stride // 2, length - 1)


def nodata_mask(block: np.ndarray, nodata_values: Sequence[float | None]) -> np.ndarray:
    """True where a pixel has no data: NaN in any band, a band's nodata value, or all zero.

    block (rows, cols, bands) any dtype -> (rows, cols) bool.
    """
    mask = np.all(block == 0, axis=-1)
    if np.issubdtype(block.dtype, np.floating):
        mask |= np.isnan(block).any(axis=-1)
    for band, value in enumerate(nodata_values):
        if value is not None and not math.isnan(value):
            mask |= block[..., band] == value
    return mask


def read_mirrored(
    dataset: gdal.Dataset,
    band_numbers: Sequence[int],
    top: int,
    bottom: int,
    left: int,
    right: int,
) -> np.ndarray:
    """Scene rows top..bottom-1, all columns plus `left`/`right` more, mirrored past the edges.

    Returns (bottom - top, left + cols + right, bands) in the scene's dtype,
    numpy "symmetric" beyond the scene. The scene part is read by GDAL straight
    into its place in the block (no second copy); the mirrored margins are then
    copied from it.
    """
    rows, cols = dataset.RasterYSize, dataset.RasterXSize
    row_sources = symmetric_indices(top, bottom, rows) - top
    col_sources = symmetric_indices(-left, cols + right, cols) + left
    block = np.empty(
        (bottom - top, left + cols + right, len(band_numbers)),
        scene_dtype(dataset, [band_numbers[0] - 1], rgb_scaling=False),
    )
    first, last = max(0, -top), min(bottom - top, rows - top)  # block rows inside the scene
    mirrored_rows = np.flatnonzero(row_sources != np.arange(bottom - top))
    mirrored_cols = np.flatnonzero(col_sources != np.arange(left + cols + right))
    if np.any((row_sources < first) | (row_sources >= last)):
        # The scene is smaller than the margins: mirror what one read of it gives.
        scene = dataset.ReadAsArray(band_list=list(band_numbers))
        scene = np.moveaxis(scene.reshape(len(band_numbers), rows, cols), 0, -1)
        return scene[np.ix_(row_sources + top, col_sources - left)]
    dataset.ReadAsArray(
        0,
        top + first,
        cols,
        last - first,
        buf_obj=block[first:last, left : left + cols].transpose(2, 0, 1),
        band_list=list(band_numbers),
    )
    block[mirrored_rows, left : left + cols] = block[row_sources[mirrored_rows], left : left + cols]
    block[:, mirrored_cols] = block[:, col_sources[mirrored_cols]]
    return block


def window_view(block: np.ndarray, size: int) -> np.ndarray:
    """Every size x size window of `block` as a read-only view, no copy.

    block (rows, cols, bands) -> (rows-size+1, cols-size+1, size, size, bands);
    window (i, j) starts at block pixel (i, j). Indexing it with arrays of window
    starts gathers a batch (n, size, size, bands) in one contiguous copy.
    """
    windows = np.lib.stride_tricks.sliding_window_view(block, (size, size), axis=(0, 1))
    return windows.transpose(0, 1, 3, 4, 2)


# ---------------------------------------------------------------------------
# Row blocks
# ---------------------------------------------------------------------------


def fill_nodata(pixels: np.ndarray, nodata: np.ndarray) -> None:
    """Give every no-data pixel the value of the nearest valid pixel of its row, in place
    (the mean of the two at a tie).

    Windows that touch no data (a NaN edge, a nodata border) then see the scene
    continued, as at the mirrored scene edge, instead of zeros that read as water
    or concrete. The pixels with no data keep no label; only their neighbours'
    windows change. Along rows only, so a block's pixels do not depend on where the
    block starts (row blocks and bands of a scene give the same numbers), and the
    tie rule is symmetric, so filling then mirroring equals mirroring then filling.
    Rows without any valid pixel are left as they are.
    """
    if not nodata.any():
        return
    cols = nodata.shape[1]
    index = np.broadcast_to(np.arange(cols), nodata.shape)
    left = np.maximum.accumulate(np.where(nodata, -1, index), axis=1)
    right = np.minimum.accumulate(np.where(nodata, cols, index)[:, ::-1], axis=1)[:, ::-1]
    has_left, has_right = left >= 0, right < cols
    to_left, to_right = index - left, right - index
    take_left = nodata & has_left & (~has_right | (to_left < to_right))
    take_right = nodata & has_right & (~has_left | (to_right < to_left))
    tie = nodata & has_left & has_right & (to_left == to_right)
    row, col = np.nonzero(take_left)
    pixels[row, col] = pixels[row, left[row, col]]
    row, col = np.nonzero(take_right)
    pixels[row, col] = pixels[row, right[row, col]]
    row, col = np.nonzero(tie)
    mean = (pixels[row, left[row, col]].astype(np.float64) + pixels[row, right[row, col]]) / 2
    pixels[row, col] = mean if np.issubdtype(pixels.dtype, np.floating) else np.floor(mean)


def read_block(
    dataset: gdal.Dataset,
    band_indices: Sequence[int],
    size: int,
    top: int,
    bottom: int,
    rgb_scaling: bool,
    reflectance_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Scene rows top..bottom-1 ready for the model, and where they have no data.

    Returns (pixels, nodata): pixels (bottom - top, size/2 + cols + size/2, bands),
    mirrored past the edges, no-data pixels filled from their nearest valid pixel,
    multiplied by `reflectance_factor` (to EuroSAT's reflectance x 10000) and scaled
    like EuroSAT's JPEGs when asked; nodata (same rows and columns) bool.
    """
    band_numbers = [index + 1 for index in band_indices]
    nodata_values = [dataset.GetRasterBand(number).GetNoDataValue() for number in band_numbers]
    before = size // 2
    pixels = read_mirrored(dataset, band_numbers, top, bottom, before, size - before)
    nodata = nodata_mask(pixels, nodata_values)
    if np.issubdtype(pixels.dtype, np.floating):
        np.nan_to_num(pixels, copy=False, nan=0.0)
    fill_nodata(pixels, nodata)
    if reflectance_factor != 1.0:
        pixels = pixels.astype(np.float32) * np.float32(reflectance_factor)
    if rgb_scaling:
        pixels = eurosat_rgb_from_l1c(pixels)
    return pixels, nodata


def read_blocks(
    dataset: gdal.Dataset,
    band_indices: Sequence[int],
    size: int,
    stride: int,
    block_rows: int,
    rgb_scaling: bool,
    reflectance_factor: float = 1.0,
    first_row: int = 0,
    last_row: int | None = None,
    halo_rows: int = 0,
) -> Iterator[ReadBlock]:
    """Read the scene in blocks of `block_rows` output rows (rounded to the stride).

    A block is read with a halo of half a window above and below, mirrored only
    at the true scene edges, and mirrored left and right (`read_block`). Lazy: one
    block at a time.
    first_row, last_row (multiples of the stride, or the scene's end): only the
    output rows of that band, in the same blocks as the whole scene when first_row
    is a multiple of the rounded block rows; the halo comes from the scene's rows
    around the band, so a band gives exactly those rows of the whole-scene run.
    halo_rows: each block also holds the window centres of up to this many grid rows
    above and below its own (inside the scene; ReadBlock.halo says how many).
    """
    rows, cols = dataset.RasterYSize, dataset.RasterXSize
    before = size // 2
    all_centre_rows = window_centres(rows, stride)
    centre_cols = window_centres(cols, stride)
    grid_rows_per_block = max(1, block_rows // stride)
    band_end = len(all_centre_rows) if last_row is None else -(-last_row // stride)
    for first_grid_row in range(first_row // stride, band_end, grid_rows_per_block):
        last_grid_row = min(first_grid_row + grid_rows_per_block, band_end)
        above = min(halo_rows, first_grid_row)
        centre_rows = all_centre_rows[first_grid_row - above : last_grid_row + halo_rows]
        below = len(centre_rows) - above - (last_grid_row - first_grid_row)
        block_first = first_grid_row * stride
        block_last = min(rows, block_first + (last_grid_row - first_grid_row) * stride)
        top = min(int(centre_rows[0]) - before, block_first)
        bottom = max(int(centre_rows[-1]) - before + size, block_last)
        # Block column j holds scene column j - before (mirrored past the edges).
        pixels, pixel_nodata = read_block(
            dataset, band_indices, size, top, bottom, rgb_scaling, reflectance_factor
        )
        yield ReadBlock(
            first_row=block_first,
            last_row=block_last,
            top=top,
            size=size,
            stride=stride,
            pixels=pixels,
            centre_rows=centre_rows,
            centre_cols=centre_cols,
            centre_nodata=pixel_nodata[np.ix_(centre_rows - top, centre_cols + before)],
            nodata=pixel_nodata[block_first - top : block_last - top, before : before + cols],
            halo=(above, below),
        )


def warn_if_not_georeferenced(dataset: gdal.Dataset, scene_label: str) -> None:
    """Warn (without stopping) when a scene has no geotransform or no projection."""
    if dataset.GetGeoTransform(can_return_null=True) is None or not dataset.GetProjection():
        warnings.warn(
            f"scene {scene_label} is not georeferenced; its outputs will not be either.",
            UserWarning,
            stacklevel=2,
        )


def rgb_scaling_needed(
    mode: str,
    model_bands: Sequence[str],
    dataset: gdal.Dataset,
    band_indices: Sequence[int] | None = None,
) -> bool:
    """Whether to scale L1C digital numbers like EuroSAT's JPEGs (0..2750 -> 1..255).

    mode "eurosat": always; "none": never; "auto": for an RGB model (B04, B03,
    B02) reading bands that are not 8-bit: the bands it reads (0-based
    `band_indices`; all bands when None), not the scene's first.
    """
    if mode == "eurosat":
        return True
    if mode == "none":
        return False
    used = range(dataset.RasterCount) if band_indices is None else band_indices
    return tuple(model_bands) == RGB_BAND_NAMES and any(
        dataset.GetRasterBand(index + 1).DataType != gdal.GDT_Byte for index in used
    )


def band_names_assumed(dataset: gdal.Dataset) -> bool:
    """Whether scene_band_names had to assume the names (a band without a description)."""
    return not all(
        dataset.GetRasterBand(number).GetDescription().strip()
        for number in range(1, dataset.RasterCount + 1)
    )


def band_choice_words(
    dataset: gdal.Dataset, model_bands: Sequence[str], band_indices: Sequence[int], spec
) -> str:
    """06's banner words for a band choice that is a fallback, with its reason ("" for
    a choice by name or by --bands): bands taken in file order because their names are
    not the model's, or names assumed from the band count because the scene has none."""
    names = scene_band_names(dataset)
    if spec:
        return ""
    if not all(name in names for name in model_bands):
        return f" (taken in file order as the model's {', '.join(model_bands)})"
    if band_names_assumed(dataset):
        return " (the scene names no bands: named by their count)"
    return ""


def scene_dtype(
    dataset: gdal.Dataset,
    band_indices: Sequence[int],
    rgb_scaling: bool,
    reflectance_factor: float = 1.0,
) -> np.dtype:
    """numpy dtype of the windows cut from a scene (uint8 after EuroSAT RGB scaling,
    float32 after a reflectance scale other than 10000)."""
    if rgb_scaling:
        return np.dtype(np.uint8)
    if reflectance_factor != 1.0:
        return np.dtype(np.float32)
    data_type = dataset.GetRasterBand(band_indices[0] + 1).DataType
    return np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(data_type))
