"""One scene through 06: open it, choose the model, decide the cloud mask, classify,
write the outputs and print the summary.

    summary = classify_one(settings, image)

`settings` is 06's parsed settings (the namespace of its constants, flags applied);
it is read, never changed, so one namespace serves every scene of a run. A large
scene can also be classified in row bands, each on its own (on different Dask
workers, see many.py), and the bands assembled into the same outputs:

    counts = classify_band(settings, image, first_row, last_row, folder)   # per band
    summary = assemble_scene(settings, image, [counts, ...], folder)         # then once

The band's windows read the scene's real rows above and below it (only the scene's
own edges are mirrored), so the assembled outputs equal the whole-scene run's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.outputs import (
    atomic_output,
    folder_lock,
    outputs_need,
    refuse_existing,
    write_atomic,
)
from cnn_sentinel.precision import precision_policy
from cnn_sentinel.scene import clouds, predictors, writers
from cnn_sentinel.scene import reading as scenes
from cnn_sentinel.scene.radiometry import check_reflectance_scale
from image_functions import MS_BAND_NAMES

# The models the project ships, trained by its own scripts (see models/*/README.md).
MODELS_FOLDER: Final = Path(__file__).resolve().parents[2] / "models"
SHIPPED_MODELS: Final = {
    "rgb": MODELS_FOLDER / "eurosat-rgb-resnet-valid-narrow" / "model.keras",
    "ms": MODELS_FOLDER / "eurosat-ms-resnet-valid-narrow" / "model.keras",
}


def parse_numbers(values: tuple | list, kind: type, what: str) -> list | None:
    """Numbers from flag values such as ("330000", "5814360", ...) or ("1,2,3,4",)."""
    if not values:
        return None
    items = [item for value in values for item in str(value).replace(",", " ").split()]
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise InputError(f"{what} {' '.join(items)} must be four numbers.") from None


def shipped_model_for(scene_names: list[str], bands: str | None) -> tuple[str, str]:
    """The shipped model for a scene (MODEL auto): the 13-band one when the scene has all
    13 EuroSAT bands (and --bands does not pick fewer), the RGB one otherwise (a Level-2A
    scene, without B10, too: the scene adaptation meets its surface reflectance).
    Returns (path, words for the banner: which model, and why)."""
    picked = len(str(bands).replace(",", " ").split()) if bands else None
    has_all = set(MS_BAND_NAMES) <= set(scene_names) or len(scene_names) == len(MS_BAND_NAMES)
    if has_all and picked in (None, len(MS_BAND_NAMES)):
        return str(SHIPPED_MODELS["ms"]), ", shipped 13-band model: the scene has all 13 bands"
    missing = [name for name in MS_BAND_NAMES if name not in scene_names]
    if has_all:
        return str(SHIPPED_MODELS["rgb"]), f", shipped RGB model: --bands picks {picked} bands"
    lacks = ", ".join(missing) if len(missing) <= 3 else "the 13 bands"
    why = " (Level-2A has no cirrus band)" if missing == ["B10"] else ""
    return str(SHIPPED_MODELS["rgb"]), f", shipped RGB model: the scene lacks {lacks}{why}"


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


def scene_outputs(settings, image: str | Path) -> SceneOutputs:
    """Where 06 writes the outputs of `image`: OUTPUT_DIR, or the scene's own folder."""
    image = Path(image)
    output_dir = Path(settings.output_dir) if settings.output_dir else image.resolve().parent
    stem = scenes.scene_stem(image)
    return SceneOutputs(
        output_dir / f"{stem}_label.tif",
        output_dir / f"{stem}_prob.tif",
        output_dir / f"{stem}_quicklook.png" if settings.quicklook else None,
    )


def open_settings_scene(settings, image: str | Path):
    """The scene `image` opened as 06's --bbox / --window ask (a virtual crop)."""
    bbox = parse_numbers(settings.bbox, float, "bounding box")
    window = parse_numbers(settings.window, int, "pixel window")
    return scenes.open_scene(Path(image), bbox=bbox, window=window, bbox_crs=settings.bbox_crs)


@dataclass
class PreparedScene:
    """A scene opened and matched with its model and cloud mask, ready to classify."""

    scene: gdal.Dataset
    classification: predictors.SceneClassification
    model: str
    model_words: str
    masking: bool
    masking_words: str
    cloud_bands: tuple[int, ...]

    def steps(self, settings, first_row: int = 0, last_row: int | None = None) -> list:
        """The block steps of the run (the cloud mask when on), for rows first..last."""
        if not self.masking:
            return []
        return [
            clouds.CloudMaskStep(
                self.scene,
                self.cloud_bands,
                cloud_settings(settings),
                first_row=first_row,
                last_row=last_row,
            )
        ]

    def banner(self, settings, image: str | Path) -> str:
        return (
            f"{image}: {self.classification.describe()} (model {self.model}{self.model_words}), "
            f"stride {settings.stride}; "
            f"{self.masking_words}"
        )


def cloud_settings(settings) -> clouds.CloudSettings:
    """The cloud mask of 06's settings: its threshold, and the scene's reflectance scale
    (REFLECTANCE_SCALE; auto is 10000, what L1C products hold)."""
    scale = check_reflectance_scale(settings.reflectance_scale)
    return clouds.CloudSettings(
        threshold=settings.cloud_threshold,
        reflectance_scale=scale or clouds.EUROSAT_REFLECTANCE_SCALE,
    )


def prepare_scene(
    settings,
    image: str | Path,
    load_model: Callable[[str], tuple[object, ModelInfo]] | None = None,
    scene: gdal.Dataset | None = None,
) -> PreparedScene:
    """Open `image` (unless `scene` is it, opened), choose its model (MODEL, or the
    shipped one that fits), decide the cloud mask and prepare the classification.
    load_model: path -> (model, ModelInfo), e.g. a cache that keeps the model between
    scenes; None loads it from the path."""
    if scene is None:
        scene = open_settings_scene(settings, image)
    scene_names = scenes.scene_band_names(scene)
    model, model_words = settings.model, ""
    if model in (None, "", "auto"):
        model, model_words = shipped_model_for(scene_names, settings.bands)
    if not Path(model).exists():
        raise InputError(f"model {model} does not exist.")
    masking, masking_words = clouds.cloud_mask_choice(
        settings.cloud_mask,
        scene_names,
        settings.cloud_threshold,
        str(image),
        scenes.band_names_assumed(scene),
    )
    cloud_bands = tuple(clouds.cloud_band_indices(scene_names)) if masking else ()
    loaded, config = load_model(str(model)) if load_model else (model, None)
    classification = predictors.prepare_classification(
        scene,
        loaded,
        config,
        bands=settings.bands,
        rgb_scaling=settings.rgb_scaling,
        precision=precision_policy(settings.mixed_precision),
        method=settings.method,
        scene_label=str(image),
        tta=settings.tta,
        reflectance_scale=settings.reflectance_scale,
        adapt=settings.adapt,
        adapt_blend=settings.adapt_blend,
        adapt_windows=settings.adapt_windows,
        cloud_bands=cloud_bands or None,
        cloud_settings=cloud_settings(settings),
    )
    return PreparedScene(
        scene, classification, str(model), model_words, masking, masking_words, cloud_bands
    )


def finish_rasters(settings, temporaries: list[Path]) -> None:
    """Make the written label and probability GeoTIFFs Cloud-Optimized (COG setting)."""
    if settings.cog:
        writers.convert_to_cog(temporaries[0], "label")
        writers.convert_to_cog(temporaries[1], "probability")


def summary_lines(summary: dict, seconds: float, method: str, outputs: SceneOutputs) -> list[str]:
    """06's closing lines: windows and speed, each class's share, the files written."""
    classified_pixels = sum(summary["pixels"].values()) + summary["cloud"]
    lines = [
        f"{summary['classified']} of {summary['windows']} windows classified in {seconds:.1f} s "
        f"({summary['classified'] / max(seconds, 1e-9):.0f} patches/s, {method}); "
        f"{summary['nodata']} nodata pixels."
    ]
    for name, count in [*summary["pixels"].items(), (clouds.CLOUD_NAME, summary["cloud"])]:
        if count:
            lines.append(f"  {name:22s} {100 * count / max(classified_pixels, 1):5.1f} %")
    return lines + [f"wrote {path}" for path in [*outputs.files, outputs.category_file]]


def classify_one(
    settings,
    image: str | Path,
    load_model: Callable[[str], tuple[object, ModelInfo]] | None = None,
    report: Callable[[str], object] = print,
) -> dict:
    """Classify the scene `image` with 06's `settings`: writes <stem>_label.tif,
    <stem>_prob.tif (Cloud-Optimized with COG) and (QUICKLOOK) <stem>_quicklook.png,
    prints (through `report`) the banner, the timing, the class shares and the files
    written; returns the run's counts (predictors.SceneClassification.run) with
    "seconds" and "method". InputError for every bad input."""
    image = Path(image)
    scene = open_settings_scene(settings, image)
    outputs = scene_outputs(settings, image)
    stem = scenes.scene_stem(image)
    # One run at a time writes a scene's outputs into a folder; a second is refused.
    with folder_lock(
        outputs.label.parent,
        stem,
        f"output folder {outputs.label.parent} (outputs {stem}_*)",
        "wait for that run to end or give another --output-dir",
    ):
        return _classify_into(settings, image, scene, outputs, load_model, report)


def _classify_into(settings, image: Path, scene, outputs, load_model, report) -> dict:
    """classify_one's work once the outputs' folder is locked."""
    stem = scenes.scene_stem(image)
    refuse_existing(outputs.files, settings.overwrite)
    prepared = prepare_scene(settings, image, load_model, scene)
    classification = prepared.classification
    report(prepared.banner(settings, image))

    gdal.SetCacheMax(settings.gdal_cache_mb * 2**20)
    started = time.perf_counter()
    class_count = len(classification.config.class_names)
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            outputs_need(
                outputs.label.parent,
                f"the outputs of {stem}",
                writers.output_bytes(prepared.scene, class_count, settings.probabilities),
            )
        )
        temporary = [
            stack.enter_context(atomic_output(path, settings.overwrite)) for path in outputs.files
        ]
        scene_writers = writers.output_writers(
            prepared.scene,
            classification.config.class_names,
            *temporary[:2],
            quicklook_path=temporary[2] if settings.quicklook else None,
            probabilities=settings.probabilities,
            title=f"{scenes.scene_stem(image)} ({classification.precision})",
            clouds=prepared.masking,
        )
        summary = classification.run(
            scene_writers,
            stride=settings.stride,
            batch_size=settings.batch_size,
            block_rows=settings.block_rows,
            progress=settings.progress,
            steps=prepared.steps(settings),
        )
        writers.write_record(temporary[0], classification.record())
        finish_rasters(settings, temporary)
    writers.write_category_names(
        outputs.label, clouds.category_names(classification.config.class_names, prepared.masking)
    )
    seconds = time.perf_counter() - started
    report("\n".join(summary_lines(summary, seconds, classification.method, outputs)))
    return {**summary, "seconds": seconds, "method": classification.method}


# ---------------------------------------------------------------------------
# Row bands of a scene: classified apart, assembled into the same outputs
# ---------------------------------------------------------------------------


def row_bands(rows: int, band_rows: int, stride: int, block_rows: int) -> list[tuple[int, int]]:
    """(first_row, last_row) of the bands of a scene of `rows` rows: `band_rows` rows
    each, rounded down to whole row blocks (the block rows rounded to the stride, as
    a run streams them), so every band is read in the same blocks as the whole scene."""
    block = max(stride, block_rows // stride * stride)
    band = max(block, band_rows // block * block)
    return [(first, min(rows, first + band)) for first in range(0, rows, band)]


def band_files(folder: Path, first_row: int) -> tuple[Path, Path, Path]:
    """The band's label and probability GeoTIFFs and its counts (JSON), in `folder`."""
    name = f"rows{first_row:06d}"
    return folder / f"{name}_label.tif", folder / f"{name}_prob.tif", folder / f"{name}.json"


def classify_band(
    settings,
    image: str | Path,
    first_row: int,
    last_row: int,
    folder: str | Path,
    load_model: Callable[[str], tuple[object, ModelInfo]] | None = None,
) -> dict:
    """Classify output rows first_row..last_row-1 of `image` into band files in `folder`
    (their windows read the scene's rows around the band); returns the band's counts
    with its rows, classes, cloud mask and seconds. A band finished before (its counts
    file exists, e.g. written just before its worker died) is not redone."""
    label_path, probability_path, counts_path = band_files(Path(folder), first_row)
    if counts_path.exists():
        return json.loads(counts_path.read_text(encoding="utf-8"))
    prepared = prepare_scene(settings, image, load_model)
    classification = prepared.classification
    scene = prepared.scene
    band = gdal.Translate(
        "", scene, format="VRT", srcWin=[0, first_row, scene.RasterXSize, last_row - first_row]
    )
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        label_file = stack.enter_context(atomic_output(label_path, overwrite=True))
        probability_file = stack.enter_context(atomic_output(probability_path, overwrite=True))
        class_names = classification.config.class_names
        band_writers = [
            writers.LabelWriter(band, label_file, class_names, prepared.masking, first_row),
            writers.ProbabilityWriter(
                band, probability_file, class_names, settings.probabilities, first_row
            ),
        ]
        counts = classification.run(
            band_writers,
            stride=settings.stride,
            batch_size=settings.batch_size,
            block_rows=settings.block_rows,
            progress=False,
            steps=prepared.steps(settings, first_row, last_row),
            first_row=first_row,
            last_row=last_row,
        )
    counts.update(
        first_row=first_row,
        last_row=last_row,
        class_names=list(class_names),
        clouds=prepared.masking,
        precision=classification.precision,
        method=classification.method,
        banner=prepared.banner(settings, image),
        record=classification.record(),
        seconds=time.perf_counter() - started,
    )
    write_atomic(counts_path, counts, overwrite=True)
    return counts


def assemble_scene(settings, image: str | Path, bands: list[dict], folder: str | Path) -> dict:
    """Write the outputs of `image` from its band files in `folder` (classify_band's
    counts of every band, any order), then delete the folder. Returns the scene's
    counts as classify_one does (seconds: the bands' time added up) and "text", the
    lines classify_one prints."""
    image, folder = Path(image), Path(folder)
    bands = sorted(bands, key=lambda band: band["first_row"])
    first = bands[0]
    class_names, masking = first["class_names"], first["clouds"]
    outputs = scene_outputs(settings, image)
    scene = open_settings_scene(settings, image)
    gdal.SetCacheMax(settings.gdal_cache_mb * 2**20)
    with contextlib.ExitStack() as stack:
        temporary = [
            stack.enter_context(atomic_output(path, settings.overwrite)) for path in outputs.files
        ]
        scene_writers = writers.output_writers(
            scene,
            class_names,
            *temporary[:2],
            quicklook_path=temporary[2] if settings.quicklook else None,
            probabilities=settings.probabilities,
            title=f"{scenes.scene_stem(image)} ({first['precision']})",
            clouds=masking,
        )
        try:
            for band in bands:
                copy_band(folder, band, scene_writers, settings.block_rows)
            for writer in scene_writers:
                writer.finish()
        finally:
            for writer in scene_writers:
                writer.close()
        writers.write_record(temporary[0], first["record"])
        finish_rasters(settings, temporary)
    writers.write_category_names(outputs.label, clouds.category_names(class_names, masking))
    shutil.rmtree(folder, ignore_errors=True)
    summary = {
        "windows": sum(band["windows"] for band in bands),
        "classified": sum(band["classified"] for band in bands),
        "pixels": {name: sum(band["pixels"][name] for band in bands) for name in first["pixels"]},
        "cloud": sum(band["cloud"] for band in bands),
        "nodata": sum(band["nodata"] for band in bands),
        "seconds": sum(band["seconds"] for band in bands),
        "method": first["method"],
    }
    lines = summary_lines(summary, summary["seconds"], summary["method"], outputs)
    return {**summary, "text": "\n".join([first["banner"], *lines])}


def copy_band(folder: Path, band: dict, scene_writers: list, block_rows: int) -> None:
    """Feed the rows of one band file pair to the scene's writers (label, probability,
    then the quicklook if any), `block_rows` rows at a time."""
    label_path, probability_path, _ = band_files(folder, band["first_row"])
    labels = gdal.Open(str(label_path), gdal.GA_ReadOnly)
    probabilities = gdal.Open(str(probability_path), gdal.GA_ReadOnly)
    cols = labels.RasterXSize
    for top in range(0, labels.RasterYSize, block_rows):
        count = min(block_rows, labels.RasterYSize - top)
        label_rows = labels.GetRasterBand(1).ReadAsArray(0, top, cols, count)
        probability_rows = probabilities.ReadAsArray(0, top, cols, count)
        probability_rows = np.reshape(probability_rows, (-1, count, cols))
        scene_writers[0].write_rows(band["first_row"] + top, [label_rows])
        scene_writers[1].write_rows(band["first_row"] + top, list(probability_rows))
        if len(scene_writers) > 2:
            scene_writers[2].add_rows(band["first_row"] + top, label_rows)
