"""Classify a scene: every pixel gets the class of the 64x64 window around it.

Reads a GeoTIFF/VRT, or a Sentinel-2 .SAFE folder or its .zip (stacked on the
fly into the 13 bands at 10 m in EuroSAT order), streams it block by block
through a trained model and writes <stem>_label.tif (class index, colour table,
class names), <stem>_prob.tif (the winning class's probability, or every class's)
and <stem>_quicklook.png (label map with legend). With STRIDE 1 every pixel gets
its own window, exactly as the talk's classifier; with STRIDE s one window
centred on each s x s block classifies the block (s*s times fewer forward passes).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from osgeo import gdal

from command_line import atomic_output, parse_settings, refuse_existing, run_script
from image_functions import InputError
from network_functions import PRECISION_MODES

IMAGE = None  # scene: GeoTIFF/VRT, Sentinel-2 .SAFE folder or its .zip
MODEL = None  # trained model (.keras; the talk's .h5/.hdf5 too) with model.json beside it
OUTPUT_DIR = None  # folder for the outputs; None: the scene's folder
STRIDE = 16  # one window every STRIDE pixels fills its STRIDE x STRIDE block; 1: every pixel
BATCH_SIZE = 256  # windows per forward pass
BLOCK_ROWS = 256  # scene rows read and written at a time; memory grows with it, not the scene
BANDS = None  # scene bands for the model: None = by band name or in order; "B04,B03,B02" or "4,3,2"
BBOX = ()  # minx miny maxx maxy in the scene's CRS: classify only this part
WINDOW = ()  # xoff yoff xsize ysize in pixels: classify only this part
PROBABILITIES = "max"  # max: one band, the winning class's probability; all: a band per class
RGB_SCALING = "auto"  # auto: RGB models get L1C values scaled like EuroSAT's JPEGs (eurosat)
MIXED_PRECISION = "off"  # off: float32 (exact, the talk's answer); bf16, fp16; auto: by hardware
GDAL_CACHE_MB = 256  # GDAL's block cache: enough for the tiles of about two row blocks
QUICKLOOK = True  # also write <stem>_quicklook.png
PROGRESS = True  # show a progress bar
OVERWRITE = False  # replace existing outputs


def parse_numbers(values: tuple | list, kind: type, what: str) -> list | None:
    """Numbers from flag values such as ("330000", "5814360", ...) or ("1,2,3,4",)."""
    if not values:
        return None
    items = [item for value in values for item in str(value).replace(",", " ").split()]
    try:
        return [kind(item) for item in items]
    except ValueError:
        raise InputError(f"{what} {' '.join(items)} must be four numbers.") from None


def main(argv: list[str] | None = None) -> dict:
    settings = parse_settings(
        __file__,
        argv,
        choices={
            "PROBABILITIES": ["max", "all"],
            "RGB_SCALING": ["auto", "eurosat", "none"],
            "MIXED_PRECISION": PRECISION_MODES,
        },
    )
    import scene_functions as scenes
    from network_functions import precision_policy

    if not settings.image or not settings.model:
        raise InputError("give the scene with --image and the trained model with --model.")
    image = Path(settings.image)
    scene = scenes.open_scene(
        image,
        bbox=parse_numbers(settings.bbox, float, "bounding box"),
        window=parse_numbers(settings.window, int, "pixel window"),
    )
    output_dir = Path(settings.output_dir) if settings.output_dir else image.resolve().parent
    stem = scenes.scene_stem(image)
    label_path = output_dir / f"{stem}_label.tif"
    probability_path = output_dir / f"{stem}_prob.tif"
    quicklook_path = output_dir / f"{stem}_quicklook.png"
    outputs = [label_path, probability_path] + ([quicklook_path] if settings.quicklook else [])
    refuse_existing(outputs, settings.overwrite)
    if not Path(settings.model).exists():
        raise InputError(f"model {settings.model} does not exist.")

    model, config = scenes.load_classifier(settings.model)
    band_indices = scenes.choose_scene_bands(
        scenes.scene_band_names(scene), config.band_names, settings.bands, str(image)
    )
    scenes.warn_if_not_georeferenced(scene, str(image))
    rgb_scaling = scenes.rgb_scaling_needed(settings.rgb_scaling, config.band_names, scene)
    precision = precision_policy(settings.mixed_precision)
    model = scenes.with_precision(model, precision)
    dtype = scenes.scene_dtype(scene, band_indices, rgb_scaling)
    predict = scenes.make_predictor(model, config, dtype, len(band_indices))
    print(
        f"{image}: {scene.RasterXSize}x{scene.RasterYSize} px, bands "
        f"{', '.join(scenes.scene_band_names(scene)[index] for index in band_indices)} -> "
        f"model {settings.model} ({len(config.class_names)} classes, {precision}"
        f"{', talk normalisation' if config.mean is not None else ''}"
        f"{', EuroSAT RGB scaling' if rgb_scaling else ''}), stride {settings.stride}"
    )

    gdal.SetCacheMax(settings.gdal_cache_mb * 2**20)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        label_temporary = stack.enter_context(atomic_output(label_path, settings.overwrite))
        probability_temporary = stack.enter_context(
            atomic_output(probability_path, settings.overwrite)
        )
        summary = scenes.classify_scene(
            scene,
            predict,
            config,
            band_indices,
            label_temporary,
            probability_temporary,
            stride=settings.stride,
            batch_size=settings.batch_size,
            block_rows=settings.block_rows,
            probabilities=settings.probabilities,
            rgb_scaling=rgb_scaling,
            progress=settings.progress,
        )
        if settings.quicklook:
            quicklook_temporary = stack.enter_context(
                atomic_output(quicklook_path, settings.overwrite)
            )
            scenes.write_quicklook(
                label_temporary, quicklook_temporary, config.class_names, f"{stem} ({precision})"
            )
    scenes.write_category_names(label_path, config.class_names)
    seconds = time.perf_counter() - started

    classified_pixels = sum(summary["pixels"].values())
    print(
        f"{summary['classified']} of {summary['windows']} windows classified in {seconds:.1f} s "
        f"({summary['classified'] / max(seconds, 1e-9):.0f} patches/s); "
        f"{summary['nodata']} nodata pixels."
    )
    for name, count in summary["pixels"].items():
        if count:
            print(f"  {name:22s} {100 * count / max(classified_pixels, 1):5.1f} %")
    for path in [*outputs, Path(f"{label_path}.aux.xml")]:
        print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    run_script(main)
