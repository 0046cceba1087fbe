"""One scene through 06: open it, choose the model, decide the cloud mask, classify,
write the outputs and print the summary.

    summary = classify_one(settings, image)

`settings` is 06's parsed settings (the namespace of its constants, flags applied);
it is read, never changed, so one namespace serves every scene of a run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Final

from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import atomic_output, folder_lock, outputs_need, refuse_existing
from cnn_sentinel.precision import precision_policy
from cnn_sentinel.scene import clouds, predictors, writers
from cnn_sentinel.scene import reading as scenes
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
    13 EuroSAT bands (and --bands does not pick fewer), the RGB one otherwise.
    Returns (path, words for the banner)."""
    picked = len(str(bands).replace(",", " ").split()) if bands else None
    has_all = set(MS_BAND_NAMES) <= set(scene_names) or len(scene_names) == len(MS_BAND_NAMES)
    if has_all and picked in (None, len(MS_BAND_NAMES)):
        return str(SHIPPED_MODELS["ms"]), ", shipped 13-band model: the scene has all 13 bands"
    return str(SHIPPED_MODELS["rgb"]), ", shipped RGB model: the scene lacks the 13 bands"


def classify_one(settings, image: str | Path) -> dict:
    """Classify the scene `image` with 06's `settings`: writes <stem>_label.tif,
    <stem>_prob.tif and (QUICKLOOK) <stem>_quicklook.png, prints the banner, the
    timing, the class shares and the files written; returns the run's counts
    (predictors.SceneClassification.run). InputError for every bad input."""
    bbox = parse_numbers(settings.bbox, float, "bounding box")
    window = parse_numbers(settings.window, int, "pixel window")
    image = Path(image)
    scene = scenes.open_scene(image, bbox=bbox, window=window)
    output_dir = Path(settings.output_dir) if settings.output_dir else image.resolve().parent
    stem = scenes.scene_stem(image)
    label_path = output_dir / f"{stem}_label.tif"
    probability_path = output_dir / f"{stem}_prob.tif"
    quicklook_path = output_dir / f"{stem}_quicklook.png"
    outputs = [label_path, probability_path] + ([quicklook_path] if settings.quicklook else [])
    # One run at a time writes a scene's outputs into a folder; a second is refused.
    with folder_lock(
        output_dir,
        stem,
        f"output folder {output_dir} (outputs {stem}_*)",
        "wait for that run to end or give another --output-dir",
    ):
        return _classify_into(settings, image, scene, outputs)


def _classify_into(settings, image: Path, scene: gdal.Dataset, outputs: list[Path]) -> dict:
    """classify_one's work once the outputs' folder is locked: outputs are the label,
    probability and (QUICKLOOK) quicklook paths."""
    label_path, stem = outputs[0], scenes.scene_stem(image)
    refuse_existing(outputs, settings.overwrite)
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
    steps = []
    cloud_settings = clouds.CloudSettings(threshold=settings.cloud_threshold)
    cloud_bands = tuple(clouds.cloud_band_indices(scene_names)) if masking else None
    if masking:
        steps.append(clouds.CloudMaskStep(scene, cloud_bands, cloud_settings))

    precision = precision_policy(settings.mixed_precision)
    classification = predictors.prepare_classification(
        scene,
        model,
        bands=settings.bands,
        rgb_scaling=settings.rgb_scaling,
        precision=precision,
        method=settings.method,
        scene_label=str(image),
        tta=settings.tta,
        reflectance_scale=settings.reflectance_scale,
        adapt=settings.adapt,
        adapt_blend=settings.adapt_blend,
        adapt_windows=settings.adapt_windows,
        cloud_bands=cloud_bands,
        cloud_settings=cloud_settings,
    )
    print(
        f"{image}: {classification.describe()} (model {model}{model_words}), "
        f"stride {settings.stride}; "
        f"{masking_words}"
    )

    gdal.SetCacheMax(settings.gdal_cache_mb * 2**20)
    started = time.perf_counter()
    class_count = len(classification.config.class_names)
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            outputs_need(
                label_path.parent,
                f"the outputs of {stem}",
                writers.output_bytes(scene, class_count, settings.probabilities),
            )
        )
        temporary = [
            stack.enter_context(atomic_output(path, settings.overwrite)) for path in outputs
        ]
        scene_writers = writers.output_writers(
            scene,
            classification.config.class_names,
            *temporary[:2],
            quicklook_path=temporary[2] if settings.quicklook else None,
            probabilities=settings.probabilities,
            title=f"{stem} ({precision})",
            clouds=masking,
        )
        summary = classification.run(
            scene_writers,
            stride=settings.stride,
            batch_size=settings.batch_size,
            block_rows=settings.block_rows,
            progress=settings.progress,
            steps=steps,
        )
    writers.write_category_names(
        label_path,
        clouds.category_names(classification.config.class_names, masking),
        classification.record(),
    )
    seconds = time.perf_counter() - started

    classified_pixels = sum(summary["pixels"].values()) + summary["cloud"]
    print(
        f"{summary['classified']} of {summary['windows']} windows classified in {seconds:.1f} s "
        f"({summary['classified'] / max(seconds, 1e-9):.0f} patches/s, {classification.method}); "
        f"{summary['nodata']} nodata pixels."
    )
    for name, count in [*summary["pixels"].items(), (clouds.CLOUD_NAME, summary["cloud"])]:
        if count:
            print(f"  {name:22s} {100 * count / max(classified_pixels, 1):5.1f} %")
    for path in [*outputs, Path(f"{label_path}.aux.xml")]:
        print(f"wrote {path}")
    return summary
