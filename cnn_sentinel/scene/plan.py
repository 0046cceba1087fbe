"""The plan of one scene: everything 06 decides before it classifies, decided once.

    plan = plan_scene(settings, image)            # 06's settings, one scene
    summary = job.classify_one(plan)              # 06's work on it

`plan_scene` is the one place that reads 06's settings (the namespace of its
constants, flags applied) for a scene: it opens the scene (cropped to --bbox, in
--bbox-crs, or --window), picks the model (the shipped one that fits, MODEL auto) and loads it with
its ModelInfo, chooses the bands, the RGB scaling and the reflectance factor, decides
the cloud mask, and fixes the geometry, adaptation, precision, method and output
paths. Every other scene module takes the plan, or the part of it it needs. A
ScenePlan is frozen; each field says in its metadata whether it changes the
outputs (`changes_outputs`), which is what the many-scene manifest compares
(`output_values`), so a new setting cannot be left out of it.

`plan_search` makes 06's --stac flags a stac.StacSearch (None without --stac), whose
items stac.stac_inputs saves as the scenes to plan.

08 (fine-tuning on the user's reference) builds the same plan to read the scene
exactly as 06 does: `windows_at` cuts the model's windows at given pixels, and
`nodata_rows` / `cloud_rows` give the scene's no-data and cloud masks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.precision import precision_policy
from cnn_sentinel.scene import clouds
from cnn_sentinel.scene.adaptation import check_adapt_settings
from cnn_sentinel.scene.dense import check_antialias
from cnn_sentinel.scene.geometry import (
    bbox_in_scene_crs,
    check_crop,
    crop_scene,
    warn_if_pixel_size_differs,
)
from cnn_sentinel.scene.radiometry import (
    EUROSAT_REFLECTANCE_SCALE,
    check_reflectance_scale,
    reflectance_factor,
)
from cnn_sentinel.scene.reading import (
    band_choice_words,
    band_names_assumed,
    band_spec_items,
    choose_scene_bands,
    load_scene_model,
    nodata_mask,
    open_scene,
    read_block,
    read_mirrored,
    rgb_scaling_needed,
    scene_band_names,
    scene_stem,
    warn_if_not_georeferenced,
    window_view,
)
from cnn_sentinel.scene.stac import StacSearch, search_of
from image_functions import MS_BAND_NAMES

# The models the project ships, trained by its own scripts (see models/*/README.md).
MODELS_FOLDER: Final = Path(__file__).resolve().parents[2] / "models"
SHIPPED_MODELS: Final = {
    "rgb": MODELS_FOLDER / "eurosat-rgb-resnet-valid-narrow" / "model.keras",
    "ms": MODELS_FOLDER / "eurosat-ms-resnet-valid-narrow" / "model.keras",
}
# Ways to compute a scene: per window, whole blocks at once, or dense when the model allows.
METHODS = ("auto", "windows", "dense")
# Scene rows windows_at reads at a time (its memory grows with it, not with the scene).
WINDOW_READ_ROWS = 256
# Bytes read at a time for a model file's checksum.
HASH_CHUNK = 2**22

# A model loader: path -> (Keras model, ModelInfo): reading.load_scene_model, or it with
# cache=True (many.cached_model).
ModelLoader = Callable[[str], tuple[object, ModelInfo]]


def changes_outputs(outputs: bool, **options) -> dataclasses.Field:
    """A ScenePlan field that says whether its value changes the scene's outputs."""
    return field(metadata={"outputs": outputs}, **options)


@dataclass(frozen=True)
class SceneOutputs:
    """The files 06 writes for one scene (quicklook None without QUICKLOOK)."""

    label: Path
    probability: Path
    quicklook: Path | None

    @property
    def rasters(self) -> list[Path]:
        return [self.label, self.probability]

    @property
    def files(self) -> list[Path]:
        return [*self.rasters, *([self.quicklook] if self.quicklook else [])]

    @property
    def category_file(self) -> Path:
        """The label raster's side file with the category names."""
        return Path(f"{self.label}.aux.xml")


@dataclass(frozen=True)
class ScenePlan:
    """One scene as 06 will classify it (built by `plan_scene`).

    The scene (opened, cropped), the model, how its bands are read, the geometry,
    clouds, adaptation, computation and outputs. Each field's metadata "outputs"
    says whether a different value gives different outputs.
    """

    # The scene: the path as given, opened (a virtual crop to bbox / window); bbox as
    # given, in bbox_crs ("scene": the scene's own CRS; "EPSG:4326": longitude/latitude).
    image: Path = changes_outputs(False)
    scene: gdal.Dataset = changes_outputs(False, repr=False, compare=False)
    bbox: tuple[float, ...] | None = changes_outputs(True)
    bbox_crs: str = changes_outputs(True)
    window: tuple[int, ...] | None = changes_outputs(True)
    # The model: its file (the manifest adds its checksum), loaded, and its facts.
    model_path: str = changes_outputs(True)
    model: object = changes_outputs(False, repr=False, compare=False)
    info: ModelInfo = changes_outputs(True)
    model_words: str = changes_outputs(False)  # the banner's words for a shipped model
    # The scene's bands for the model, in its order (0-based), and how they are scaled.
    band_indices: tuple[int, ...] = changes_outputs(True)
    band_words: str = changes_outputs(False)  # a band choice that is a fallback, and why
    rgb_scaling: bool = changes_outputs(True)  # L1C values scaled like EuroSAT's JPEGs
    reflectance_factor: float = changes_outputs(True)  # to EuroSAT's reflectance x 10000
    reflectance_words: str = changes_outputs(False)
    # Geometry: the window side, one window every `stride` pixels, rows per block.
    window_size: int = changes_outputs(True)
    stride: int = changes_outputs(True)
    # At stride 1, each window's probabilities averaged over this period (1: raw windows).
    antialias: int = changes_outputs(True)
    block_rows: int = changes_outputs(False)
    batch_size: int = changes_outputs(False)
    # Clouds: whether the s2cloudless mask runs, the banner's words, its bands, settings.
    masking: bool = changes_outputs(True)
    masking_words: str = changes_outputs(False)
    cloud_bands: tuple[int, ...] = changes_outputs(True)
    cloud: clouds.CloudSettings = changes_outputs(True)
    # Adaptation of batch normalisation to the scene (adaptation.py).
    adapt: str = changes_outputs(True)
    adapt_blend: float = changes_outputs(True)
    adapt_windows: int = changes_outputs(True)
    # Computation: the Keras dtype policy, auto | windows | dense, the 8 symmetries.
    precision: str = changes_outputs(True)
    method: str = changes_outputs(True)
    tta: bool = changes_outputs(True)
    # Outputs.
    outputs: SceneOutputs = changes_outputs(False)
    probabilities: str = changes_outputs(True)
    cog: bool = changes_outputs(True)
    quicklook: bool = changes_outputs(True)
    overwrite: bool = changes_outputs(False)
    progress: bool = changes_outputs(False)
    gdal_cache_mb: int = changes_outputs(False)

    @property
    def label(self) -> str:
        """The scene as messages name it."""
        return str(self.image)

    @property
    def stem(self) -> str:
        return scene_stem(self.image)


def output_fields(plan: ScenePlan | type = ScenePlan) -> list[str]:
    """The names of the fields of a plan (or plan class) whose value changes the outputs."""
    return [item.name for item in dataclasses.fields(plan) if item.metadata["outputs"]]


def _plain(value):
    """A field's value as JSON values (tuples as lists, dataclasses as dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
        value.pop("source", None)  # ModelInfo's file name, for messages only
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def output_values(plan: ScenePlan) -> dict:
    """What the scene's outputs depend on besides its pixels: every field that changes
    outputs (as JSON values) and the model file's SHA-256. Two plans with the same
    values give the same outputs."""
    values = {name: _plain(getattr(plan, name)) for name in output_fields(plan)}
    model_file = Path(plan.model_path)
    values["model_sha256"] = file_sha256(model_file) if model_file.is_file() else None
    return json.loads(json.dumps(values))


# ---------------------------------------------------------------------------
# From 06's settings
# ---------------------------------------------------------------------------


def parse_numbers(values: tuple | list, kind: type, what: str) -> list | None:
    """Numbers from flag values such as ("330000", "5814360", ...) or ("1,2,3,4",)."""
    if not values:
        return None
    items = [item for value in values for item in str(value).replace(",", " ").split()]
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise InputError(f"{what} {' '.join(items)} must be four numbers.") from None


def shipped_model_for(scene_names: Sequence[str], bands: str | None) -> tuple[str, str]:
    """The shipped model for a scene (MODEL auto): the 13-band one when the scene has all
    13 EuroSAT bands (and --bands does not pick fewer), the RGB one otherwise (a Level-2A
    scene, without B10, too: the scene adaptation meets its surface reflectance).
    Returns (path, words for the banner: which model, and why)."""
    picked = len(band_spec_items(bands)) if bands else None
    has_all = set(MS_BAND_NAMES) <= set(scene_names) or len(scene_names) == len(MS_BAND_NAMES)
    if has_all and picked in (None, len(MS_BAND_NAMES)):
        return str(SHIPPED_MODELS["ms"]), ", shipped 13-band model: the scene has all 13 bands"
    if has_all:
        return str(SHIPPED_MODELS["rgb"]), f", shipped RGB model: --bands picks {picked} bands"
    missing = [name for name in MS_BAND_NAMES if name not in scene_names]
    lacks = ", ".join(missing) if len(missing) <= 3 else "the 13 bands"
    why = " (Level-2A has no cirrus band)" if missing == ["B10"] else ""
    return str(SHIPPED_MODELS["rgb"]), f", shipped RGB model: the scene lacks {lacks}{why}"


def scene_outputs(settings, image: str | Path) -> SceneOutputs:
    """Where 06 writes the outputs of `image`: OUTPUT_DIR, or the scene's own folder."""
    image = Path(image)
    output_dir = Path(settings.output_dir) if settings.output_dir else image.resolve().parent
    stem = scene_stem(image)
    return SceneOutputs(
        output_dir / f"{stem}_label.tif",
        output_dir / f"{stem}_prob.tif",
        output_dir / f"{stem}_quicklook.png" if settings.quicklook else None,
    )


def bbox_crs_of(settings) -> str:
    """06's --bbox-crs: "scene" (the scene's own CRS) when unset or without --bbox."""
    return str(settings.bbox_crs or "scene") if settings.bbox else "scene"


def open_settings_scene(settings, image: str | Path) -> gdal.Dataset:
    """The scene `image` opened as 06's --bbox (in --bbox-crs: put in the scene's CRS,
    geometry.bbox_in_scene_crs) / --window ask (a virtual crop)."""
    bbox = parse_numbers(settings.bbox, float, "bounding box")
    window = parse_numbers(settings.window, int, "pixel window")
    crs = bbox_crs_of(settings)
    if crs == "scene":
        return open_scene(Path(image), bbox=bbox, window=window)
    check_crop(bbox, window)
    whole = open_scene(Path(image))
    return crop_scene(whole, str(image), bbox_in_scene_crs(whole, bbox, crs, str(image)))


def plan_search(settings) -> StacSearch | None:
    """06's --stac search (--collection, --datetime, --bbox in --bbox-crs EPSG:4326,
    --max-cloud, --limit) as a StacSearch; None without --stac. InputError naming the
    flag that is missing or wrong (stac.search_of)."""
    if not settings.stac:
        return None
    return search_of(
        settings.stac,
        collection=settings.collection,
        datetime=settings.datetime,
        bbox=settings.bbox,
        bbox_crs=settings.bbox_crs,
        max_cloud=settings.max_cloud,
        limit=settings.limit,
        images=settings.image,
    )


def cloud_settings(settings) -> clouds.CloudSettings:
    """The cloud mask of 06's settings: its threshold, and the scene's reflectance scale
    (REFLECTANCE_SCALE; auto is 10000, what L1C products hold)."""
    scale = check_reflectance_scale(settings.reflectance_scale)
    return clouds.CloudSettings(
        threshold=settings.cloud_threshold,
        reflectance_scale=scale or EUROSAT_REFLECTANCE_SCALE,
    )


def plan_scene(
    settings,
    image: str | Path,
    load_model: ModelLoader | None = None,
    scene: gdal.Dataset | None = None,
) -> ScenePlan:
    """The plan of `image` under 06's `settings` (read, never changed).

    Opens the scene (unless `scene` is it, opened), picks the model (MODEL, or the
    shipped one that fits) and loads it with `load_model` (path -> (model, ModelInfo),
    e.g. a cache that keeps it between scenes; None: reading.load_scene_model),
    chooses the bands (--bands), the RGB scaling and the reflectance factor, decides
    the cloud mask. Warns when the scene is not georeferenced or its pixels are not
    the model's size; InputError for every mismatch.
    """
    image = Path(image)
    label = str(image)
    if scene is None:
        scene = open_settings_scene(settings, image)
    scene_names = scene_band_names(scene)
    model_path, model_words = settings.model, ""
    if model_path in (None, "", "auto"):
        model_path, model_words = shipped_model_for(scene_names, settings.bands)
    model, info = (load_model or load_scene_model)(str(model_path))
    masking, masking_words = clouds.cloud_mask_choice(
        settings.cloud_mask,
        scene_names,
        settings.cloud_threshold,
        label,
        band_names_assumed(scene),
    )
    cloud_bands = tuple(clouds.cloud_band_indices(scene_names)) if masking else ()
    if settings.method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {settings.method}.")
    band_indices = choose_scene_bands(scene_names, info.band_names, settings.bands, label)
    warn_if_not_georeferenced(scene, label)
    warn_if_pixel_size_differs(scene, info.pixel_size, label)
    factor, factor_words = reflectance_factor(
        settings.reflectance_scale, scene, band_indices, label
    )
    check_adapt_settings(settings.adapt, settings.adapt_blend, settings.adapt_windows)
    check_antialias(settings.antialias)
    bbox = parse_numbers(settings.bbox, float, "bounding box")
    window = parse_numbers(settings.window, int, "pixel window")
    return ScenePlan(
        image=image,
        scene=scene,
        bbox=tuple(bbox) if bbox else None,
        bbox_crs=bbox_crs_of(settings),
        window=tuple(window) if window else None,
        model_path=str(model_path),
        model=model,
        info=info,
        model_words=model_words,
        band_indices=tuple(band_indices),
        band_words=band_choice_words(scene, info.band_names, band_indices, settings.bands),
        rgb_scaling=rgb_scaling_needed(settings.rgb_scaling, info.band_names, scene, band_indices),
        reflectance_factor=factor,
        reflectance_words=factor_words,
        window_size=info.input_size,
        stride=settings.stride,
        antialias=settings.antialias,
        block_rows=settings.block_rows,
        batch_size=settings.batch_size,
        masking=masking,
        masking_words=masking_words,
        cloud_bands=cloud_bands,
        cloud=cloud_settings(settings),
        adapt=settings.adapt,
        adapt_blend=settings.adapt_blend,
        adapt_windows=settings.adapt_windows,
        precision=precision_policy(settings.mixed_precision),
        method=settings.method,
        tta=settings.tta,
        outputs=scene_outputs(settings, image),
        probabilities=settings.probabilities,
        cog=settings.cog,
        quicklook=settings.quicklook,
        overwrite=settings.overwrite,
        progress=settings.progress,
        gdal_cache_mb=settings.gdal_cache_mb,
    )


# ---------------------------------------------------------------------------
# The scene as the plan reads it (for 08)
# ---------------------------------------------------------------------------


def windows_at(plan: ScenePlan, rows: Sequence[int], cols: Sequence[int]) -> np.ndarray:
    """The model's windows centred on scene pixels (rows[i], cols[i]), read exactly as
    06 reads them: the plan's bands, no-data filled from the nearest valid pixel of
    its row, the reflectance factor and RGB scaling applied, the scene mirrored past
    its edges. Returns (n, size, size, bands) in the dtype 06 feeds the model (uint8
    after RGB scaling, float32 after a reflectance factor, else the scene's); window
    i covers rows rows[i] - size/2 .. rows[i] + size/2 - 1, and the same columns.
    Reads WINDOW_READ_ROWS scene rows at a time, only where a pixel asks."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise InputError("windows_at takes two equal lists of rows and columns.")
    height, width = plan.scene.RasterYSize, plan.scene.RasterXSize
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    if not inside.all():
        raise InputError(f"pixels outside the scene of {width}x{height} pixels.")
    size = plan.window_size
    before = size // 2
    windows = None
    for first in np.unique(rows // WINDOW_READ_ROWS * WINDOW_READ_ROWS):
        last = min(height, int(first) + WINDOW_READ_ROWS)
        wanted = np.flatnonzero((rows >= first) & (rows < last))
        pixels, _ = read_block(
            plan.scene,
            plan.band_indices,
            size,
            int(first) - before,
            last - before + size,
            plan.rgb_scaling,
            plan.reflectance_factor,
        )
        # Block row i holds scene row first - before + i, block column j scene column
        # j - before: the window centred on (r, c) starts at block (r - first, c).
        cut = window_view(pixels, size)[rows[wanted] - first, cols[wanted]]
        if windows is None:
            windows = np.empty((len(rows), *cut.shape[1:]), cut.dtype)
        windows[wanted] = cut
    if windows is None:
        return np.empty((0, size, size, len(plan.band_indices)), np.float32)
    return windows


def nodata_rows(plan: ScenePlan, first_row: int = 0, last_row: int | None = None) -> np.ndarray:
    """(rows, cols) bool: where scene rows first_row..last_row-1 (None: to the end) have
    no data in the plan's bands, as 06 leaves them unlabelled."""
    last_row = plan.scene.RasterYSize if last_row is None else last_row
    band_numbers = [index + 1 for index in plan.band_indices]
    values = [plan.scene.GetRasterBand(number).GetNoDataValue() for number in band_numbers]
    pixels = read_mirrored(plan.scene, band_numbers, first_row, last_row, 0, 0)
    return nodata_mask(pixels, values)


def cloud_rows(plan: ScenePlan, first_row: int = 0, last_row: int | None = None) -> np.ndarray:
    """(rows, cols) bool: where scene rows first_row..last_row-1 (None: to the end) are
    under cloud, as 06 labels them Cloud (all False when the plan masks no clouds)."""
    last_row = plan.scene.RasterYSize if last_row is None else last_row
    if not plan.masking:
        return np.zeros((last_row - first_row, plan.scene.RasterXSize), bool)
    return clouds.scene_cloud_mask(plan.scene, plan.cloud_bands, first_row, last_row, plan.cloud)


# ---------------------------------------------------------------------------
# A run of several scenes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """06's settings for several scenes (many.py): where the run's files go, how the
    scenes are scheduled, and `settings` itself, from which each scene's plan is made
    (`plan_scene`, on a Dask worker too: the namespace travels, a plan does not)."""

    settings: object = field(repr=False)
    output_dir: Path | None
    overwrite: bool
    progress: bool
    workers: int
    threads_per_worker: int
    strip_rows: int  # BAND_ROWS: a scene taller than this is cut into row strips (0: never)

    def scene_outputs(self, image: str | Path) -> SceneOutputs:
        """Where this run writes the outputs of `image` (its ScenePlan's outputs)."""
        return scene_outputs(self.settings, image)

    def task_settings(self, plan: ScenePlan) -> argparse.Namespace:
        """06's settings as a Dask task of `plan`'s scene gets them: OUTPUT_DIR and the
        model absolute (a cluster's worker runs in its own working folder), the model
        the one the client chose (MODEL auto: a worker's copy of the project may have
        no models/)."""
        output_dir = self.output_dir and os.path.abspath(self.output_dir)
        model = os.path.abspath(plan.model_path)
        return argparse.Namespace(
            **{**vars(self.settings), "output_dir": output_dir, "model": model}
        )


def plan_run(settings) -> RunPlan:
    """The RunPlan of 06's settings."""
    return RunPlan(
        settings=settings,
        output_dir=Path(settings.output_dir) if settings.output_dir else None,
        overwrite=settings.overwrite,
        progress=settings.progress,
        workers=settings.workers,
        threads_per_worker=settings.threads_per_worker,
        strip_rows=settings.band_rows,
    )
