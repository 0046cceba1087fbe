"""Classify a scene: every pixel gets the class of the 64x64 window around it.

Reads a GeoTIFF/VRT, or a Sentinel-2 .SAFE folder or its .zip (stacked on the
fly into the 13 bands at 10 m in EuroSAT order), streams it block by block
through a trained model and writes <stem>_label.tif (class index, colour table,
class names), <stem>_prob.tif (the winning class's probability, or every class's)
and <stem>_quicklook.png (true colour beside the label map, legend with shares).
Sentinel-2 L1C scenes get a cloud mask (s2cloudless): cloudy pixels are labelled
Cloud (value 254) and have no probability. With STRIDE 1 every pixel gets
its own window, exactly as the talk's classifier; with STRIDE s one window
centred on each s x s block classifies the block (s*s times fewer forward passes).
A model without zero padding inside its window (resnet-valid) is run over whole
blocks at once (METHOD dense, exact: the same numbers as one pass per window).
TTA averages each window's probabilities over its 8 flips and 90-degree rotations.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Final

from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import atomic_output, refuse_existing
from cnn_sentinel.precision import PRECISION_MODES
from cnn_sentinel.settings import parse_settings, run_script

IMAGE = None  # scene: GeoTIFF/VRT, Sentinel-2 .SAFE folder or its .zip
MODEL = "auto"  # auto: the shipped model that fits the scene (models/); or a .keras/.h5 file
OUTPUT_DIR = None  # folder for the outputs; None: the scene's folder
STRIDE = 16  # one window every STRIDE pixels fills its STRIDE x STRIDE block; 1: every pixel
BATCH_SIZE = 256  # windows per forward pass
BLOCK_ROWS = 256  # scene rows read and written at a time; memory grows with it, not the scene
BANDS = None  # scene bands for the model: None = by band name or in order; "B04,B03,B02" or "4,3,2"
BBOX = ()  # minx miny maxx maxy in the scene's CRS: classify only this part
WINDOW = ()  # xoff yoff xsize ysize in pixels: classify only this part
PROBABILITIES = "max"  # max | all: one band, the winning class's probability; a band per class
RGB_SCALING = "auto"  # auto | eurosat | none: auto scales L1C values for RGB models (eurosat)
REFLECTANCE_SCALE = "auto"  # auto: 10000 (L1C/L2A products, most exports); or 1000, 1 (0-1)
ADAPT = "auto"  # auto | off: auto adapts batch normalisation to the scene's statistics
ADAPT_BLEND = 0.5  # the scene's share of the adapted statistics (1: the scene's alone)
ADAPT_WINDOWS = 2048  # windows sampled over the scene for its statistics
MIXED_PRECISION = "off"  # off: float32 (exact, the talk's answer); bf16, fp16; auto: by hardware
METHOD = "auto"  # auto | windows | dense: auto is dense where the model allows it exactly
TTA = False  # average each window over its 8 flips and 90-degree rotations (8x the time)
CLOUD_MASK = "auto"  # auto | on | off: auto is on where the scene has s2cloudless' L1C bands
CLOUD_THRESHOLD = 0.65  # cloud probability above which a pixel is Cloud (s2cloudless' own: 0.4)
GDAL_CACHE_MB = 256  # GDAL's block cache: enough for the tiles of about two row blocks
QUICKLOOK = True  # also write <stem>_quicklook.png
PROGRESS = True  # show a progress bar
OVERWRITE = False  # replace existing outputs


# The models the project ships, trained by its own scripts (see models/*/README.md).
MODELS_FOLDER: Final = Path(__file__).resolve().parent / "models"
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


def check_flags(settings) -> None:
    """The numeric flags and the output folder, before TensorFlow and the model load."""
    from cnn_sentinel.scene.predictors import check_run_settings

    check_run_settings(settings.stride, settings.batch_size, settings.block_rows)
    if settings.gdal_cache_mb < 1:
        raise InputError(f"GDAL cache must be at least 1 MB, not {settings.gdal_cache_mb}.")
    if settings.output_dir and Path(settings.output_dir).exists():
        if not Path(settings.output_dir).is_dir():
            raise InputError(f"output folder {settings.output_dir} is a file, not a folder.")


def shipped_model_for(scene_names: list[str], bands: str | None) -> tuple[str, str]:
    """The shipped model for a scene (MODEL auto): the 13-band one when the scene has all
    13 EuroSAT bands (and --bands does not pick fewer), the RGB one otherwise.
    Returns (path, words for the banner)."""
    from image_functions import MS_BAND_NAMES

    picked = len(str(bands).replace(",", " ").split()) if bands else None
    has_all = set(MS_BAND_NAMES) <= set(scene_names) or len(scene_names) == len(MS_BAND_NAMES)
    if has_all and picked in (None, len(MS_BAND_NAMES)):
        return str(SHIPPED_MODELS["ms"]), ", shipped 13-band model: the scene has all 13 bands"
    return str(SHIPPED_MODELS["rgb"]), ", shipped RGB model: the scene lacks the 13 bands"


def main(argv: list[str] | None = None) -> dict:
    settings = parse_settings(
        __file__,
        argv,
        choices={"MIXED_PRECISION": PRECISION_MODES},
    )
    from cnn_sentinel.precision import precision_policy
    from cnn_sentinel.scene import clouds, predictors, writers
    from cnn_sentinel.scene import reading as scenes

    if not settings.image:
        raise InputError("give the scene with --image (and a trained model with --model).")
    check_flags(settings)
    bbox = parse_numbers(settings.bbox, float, "bounding box")
    window = parse_numbers(settings.window, int, "pixel window")
    image = Path(settings.image)
    scene = scenes.open_scene(image, bbox=bbox, window=window)
    output_dir = Path(settings.output_dir) if settings.output_dir else image.resolve().parent
    stem = scenes.scene_stem(image)
    label_path = output_dir / f"{stem}_label.tif"
    probability_path = output_dir / f"{stem}_prob.tif"
    quicklook_path = output_dir / f"{stem}_quicklook.png"
    outputs = [label_path, probability_path] + ([quicklook_path] if settings.quicklook else [])
    refuse_existing(outputs, settings.overwrite)
    scene_names = scenes.scene_band_names(scene)
    model_words = ""
    if settings.model in (None, "", "auto"):
        settings.model, model_words = shipped_model_for(scene_names, settings.bands)
    if not Path(settings.model).exists():
        raise InputError(f"model {settings.model} does not exist.")

    masking, masking_words = clouds.cloud_mask_choice(
        settings.cloud_mask, scene_names, settings.cloud_threshold, str(image)
    )
    steps = []
    cloud_settings = clouds.CloudSettings(threshold=settings.cloud_threshold)
    cloud_bands = tuple(clouds.cloud_band_indices(scene_names)) if masking else None
    if masking:
        steps.append(clouds.CloudMaskStep(scene, cloud_bands, cloud_settings))

    precision = precision_policy(settings.mixed_precision)
    classification = predictors.prepare_classification(
        scene,
        settings.model,
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
        f"{image}: {classification.describe()} (model {settings.model}{model_words}), "
        f"stride {settings.stride}; "
        f"{masking_words}"
    )

    gdal.SetCacheMax(settings.gdal_cache_mb * 2**20)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
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


if __name__ == "__main__":
    run_script(main)
