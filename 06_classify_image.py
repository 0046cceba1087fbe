"""Classify a scene: every pixel gets the class of the 64x64 window around it.

Reads a GeoTIFF/VRT, a Sentinel-2 .SAFE folder or its .zip, or a STAC item (its .json
or URL; its band assets read over HTTP, only the blocks of BBOX) stacked on the fly
into the 13 bands at 10 m in EuroSAT order, streams it block by block
through a trained model and writes <stem>_label.tif (class index, colour table,
class names), <stem>_prob.tif (the winning class's probability, or every class's)
and <stem>_quicklook.png (true colour beside the label map, legend with shares).
Sentinel-2 L1C scenes get a cloud mask (s2cloudless): cloudy pixels are labelled
Cloud (value 254) and have no probability. With STRIDE 1 every pixel gets
its own window, averaged with its neighbours' over ANTIALIAS pixels (which takes out
the dither the network's strided layers leave; ANTIALIAS 1: exactly the talk's
classifier); with STRIDE s one window centred on each s x s block classifies the
block (s*s times fewer forward passes).
A model without zero padding inside its window (resnet-valid) is run over whole
blocks at once (METHOD dense, exact: the same numbers as one pass per window).
TTA averages each window's probabilities over its 8 flips and 90-degree rotations.

Several scenes (paths, globs, folders, a .txt list) run on Dask distributed: an
embedded LocalCluster (SCHEDULER local, the default for several) or a cluster's
scheduler (tcp://host:8786); scenes taller than BAND_ROWS are cut into row strips
that run on every worker and are assembled into the same outputs. manifest.json
in the output folder lets a rerun skip finished scenes; summary.csv/.json,
mosaic.vrt and mosaic_quicklook.png describe the run. See docs/scaling.md.
STAC, COLLECTION, DATETIME, BBOX (with BBOX_CRS EPSG:4326) search a STAC API: the
items found are listed, saved as <id>.json in OUTPUT_DIR and classified as these
scenes are. See docs/scenes.md, "From a STAC catalog".
"""

from __future__ import annotations

from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.precision import PRECISION_MODES
from cnn_sentinel.scene.cluster import choose_scheduler
from cnn_sentinel.scene.dense import check_antialias
from cnn_sentinel.scene.job import classify_one, scene_lock
from cnn_sentinel.scene.listing import list_scenes
from cnn_sentinel.scene.many import classify_many
from cnn_sentinel.scene.plan import plan_run, plan_scene, plan_search, scene_outputs
from cnn_sentinel.scene.reading import scene_stem
from cnn_sentinel.scene.runner import check_run_settings
from cnn_sentinel.scene.stac import stac_inputs
from cnn_sentinel.settings import parse_settings, run_script

IMAGE = ()  # scenes (GeoTIFF/VRT, .SAFE, .zip, STAC item .json/URL): paths, globs, folders, .txt
MODEL = "auto"  # auto: the shipped model that fits the scene (models/); or a .keras/.h5 file
OUTPUT_DIR = None  # folder for the outputs (unset: the scene's own folder)
STRIDE = 16  # one window every STRIDE pixels fills its STRIDE x STRIDE block; 1: every pixel
ANTIALIAS = 4  # stride 1: mean probabilities of the windows within 4 px (no dither); 1: off
BATCH_SIZE = 256  # windows per forward pass
BLOCK_ROWS = 256  # scene rows read and written at a time; memory grows with it, not the scene
BANDS = None  # scene bands for the model, "B04,B03,B02" or "4,3,2" (unset: by name, else in order)
BBOX = ()  # minx miny maxx maxy in the scene's CRS (or BBOX_CRS): classify only this part
BBOX_CRS = "scene"  # CRS of BBOX: scene (its own); EPSG:4326 for longitude/latitude; any GDAL CRS
WINDOW = ()  # xoff yoff xsize ysize in pixels: classify only this part
STAC = None  # a STAC API to search (https://earth-search.aws.element84.com/v1) instead of IMAGE
COLLECTION = None  # the search's collection: sentinel-2-l1c, sentinel-2-l2a, ...
DATETIME = None  # the search's dates, START/END: 2023-06-01/2023-08-31
MAX_CLOUD = 100.0  # the search's largest cloud cover of an item, percent
LIMIT = 10  # the search's most items (each classified within BBOX)
PROBABILITIES = "max"  # max | all: one band, the winning class's probability; a band per class
RGB_SCALING = "auto"  # auto | eurosat | none: auto scales L1C values for RGB models (eurosat)
REFLECTANCE_SCALE = "auto"  # auto: 10000 (L1C/L2A products, most exports); or 1000, 1 (0-1)
ADAPT = "auto"  # auto | on | off: adapt batch normalisation to the scene (auto: as it is far)
ADAPT_BLEND = 0.5  # the scene's largest share of the adapted statistics (1: the scene's alone)
ADAPT_WINDOWS = 2048  # windows sampled over the scene for its statistics
MIXED_PRECISION = "off"  # off: float32 (exact, the talk's answer); bf16, fp16; auto: by hardware
METHOD = "auto"  # auto | windows | dense: auto is dense where the model allows it exactly
TTA = False  # average each window over its 8 flips and 90-degree rotations (8x the time)
CLOUD_MASK = "auto"  # auto | on | off: auto is on where the scene has s2cloudless' L1C bands
CLOUD_THRESHOLD = 0.65  # cloud probability above which a pixel is Cloud (s2cloudless' own: 0.4)
GDAL_CACHE_MB = 256  # GDAL's block cache: enough for the tiles of about two row blocks
QUICKLOOK = True  # also write <stem>_quicklook.png
PROGRESS = True  # show a progress bar
COG = True  # label and probability maps as Cloud-Optimized GeoTIFFs (overviews: mode, average)
SCHEDULER = "auto"  # auto: none for one scene, local for several; none; local; or tcp://host:8786
WORKERS = 0  # workers of the local Dask cluster; 0: the cores / THREADS_PER_WORKER
THREADS_PER_WORKER = 2  # threads (scenes at a time) of each Dask worker; TensorFlow's there too
BAND_ROWS = 2048  # Dask: a scene taller than this is cut into row strips, one task each; 0: never
OVERWRITE = False  # replace existing outputs


def check_flags(settings) -> None:
    """The numeric flags and the output folder, before TensorFlow and the model load."""
    from cnn_sentinel.scene.adaptation import check_adapt_settings
    from cnn_sentinel.scene.radiometry import check_reflectance_scale

    check_run_settings(settings.stride, settings.batch_size, settings.block_rows)
    check_antialias(settings.antialias)
    check_adapt_settings(settings.adapt, settings.adapt_blend, settings.adapt_windows)
    check_reflectance_scale(settings.reflectance_scale)
    if settings.workers < 0 or settings.band_rows < 0:
        raise InputError("workers and band rows must be 0 or more.")
    if settings.gdal_cache_mb < 1:
        raise InputError(f"GDAL cache must be at least 1 MB, not {settings.gdal_cache_mb}.")
    if settings.output_dir and Path(settings.output_dir).exists():
        if not Path(settings.output_dir).is_dir():
            raise InputError(f"output folder {settings.output_dir} is a file, not a folder.")


def main(argv: list[str] | None = None) -> dict:
    """One scene: its counts (as job.classify_one); several: {"scenes": summary rows}."""
    settings = parse_settings(
        __file__,
        argv,
        choices={"MIXED_PRECISION": PRECISION_MODES},
    )
    if not settings.image and not settings.stac:
        raise InputError("give the scene with --image (or a STAC search with --stac).")
    check_flags(settings)
    images = list_scenes(stac_inputs(settings.image, settings.output_dir, plan_search(settings)))
    scheduler = choose_scheduler(settings.scheduler, len(images))
    if scheduler == "none" and len(images) == 1:
        # The outputs' folder is locked before the model loads: a second run into it is
        # refused at once, before TensorFlow starts.
        with scene_lock(scene_outputs(settings, images[0]), scene_stem(images[0])):
            return classify_one(plan_scene(settings, images[0]), locked=True)
    return {"scenes": classify_many(plan_run(settings), images, scheduler)}


if __name__ == "__main__":
    run_script(main)
