"""Benchmark of 06's scene classifier: the whole-block (dense) pass against one pass per
window, and the per-window path against the talk's algorithm and the model itself.

Sections (--sections, comma-separated; default "phase,dense,tile-dense"):
  phase       the dense pass's two ways to handle strides, fragments (space_to_batch)
              against dilated kernels, on one block at stride 1, float32;
  dense       dense vs windows side by side on crops of the real T33UUU scene at
              strides 1 (small crop), 4 and 16, float32: identical labels, ties
              (top two within 1e-4), max probability difference, speed ratio;
  tile-dense  the whole-tile estimate at stride 1: 06 --method dense in a subprocess on
              the first rows of a 10980 x 10980 13-band tile (a VRT repeating the real
              scene), time extrapolated by rows, peak RSS; float32 and bfloat16;
  windows     0.-3. of the per-window path: the inference call, ours vs the talk's
              algorithm, vs the model-bound limit, bfloat16 vs float32 (--window-model);
  tile        4. a full tile at --tile-stride through 06 per window: time and peak RSS,
              and peak RSS by where 06 was when it was reached (--tile-side 5490
              --tile-model vgg16: the quarter tile of issue 21 with an untrained VGG16).
  adapt       the cost of 06's scene adaptation (ADAPT): preparing the classification of a
              whole 10980 x 10980 tile with --adapt off, auto and on in fresh processes
              (time, peak RSS), against the tile-dense estimate of the whole tile.

Run from the repository root:
    .venv/bin/python benchmarks/classify_scene.py                       # dense sections
    .venv/bin/python benchmarks/classify_scene.py --model runs/x/model.keras
    .venv/bin/python benchmarks/classify_scene.py --sections windows,tile
Without --model the dense sections use a randomly initialised resnet-valid RGB model
(speed and exactness only; its probabilities are near uniform, so ties are frequent).
The machine is shared: keep runs short; ratios are more telling than seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from osgeo import gdal

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from helpers import PRECISION_MODES, prepare, settings_06  # noqa: E402
from talk_reference import talk_classify  # noqa: E402

from cnn_sentinel.model_info import ModelInfo  # noqa: E402
from cnn_sentinel.scene import dense, plan, predictors, runner, writers  # noqa: E402
from cnn_sentinel.scene import reading as scenes  # noqa: E402
from image_functions import (  # noqa: E402
    CLASS_NAMES,
    MS_BAND_NAMES,
    RGB_BAND_NAMES,
    talk_constants,
)

gdal.UseExceptions()

# The real 13-band scene the small benchmark scene is cropped from (when present).
REAL_SCENE = Path("sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif")
# Runs of each of our measurements; the best counts (the machine is shared).
REPEATS = 3
# Side of a full Sentinel-2 tile at 10 m.
TILE_SIDE = 10980


def shared_scenes() -> Path | None:
    """The shared scenes folder ($EUROSAT_SAMPLES/../scenes or ../shared/data/scenes)."""
    candidates = []
    if os.environ.get("EUROSAT_SAMPLES"):
        given = Path(os.environ["EUROSAT_SAMPLES"])
        candidates += [given / "scenes", given.parent / "scenes"]
    candidates.append(REPO_ROOT.parent / "shared" / "data" / "scenes")
    return next((folder for folder in candidates if folder.is_dir()), None)


def build_model(kind: str, bands: int):
    """A classifier with its own normalisation: "small" (3 strided convs) or "vgg16"."""
    import keras

    keras.utils.set_random_seed(0)
    mean, std = talk_constants(bands)
    inputs = keras.Input((64, 64, bands))
    x = keras.layers.Normalization(mean=list(mean), variance=list(np.square(std)))(inputs)
    if kind == "vgg16":
        backbone = keras.applications.VGG16(include_top=False, weights=None, input_tensor=x)
        x = keras.layers.GlobalAveragePooling2D()(backbone.output)
        x = keras.layers.Dense(2048, activation="relu")(x)
        x = keras.layers.Dense(2048, activation="relu")(x)
    else:
        for filters in (32, 64, 128):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def small_scene(folder: Path, rows: int, cols: int) -> Path:
    """A rows x cols x 13 uint16 scene: a crop of the real scene, or generated."""
    path = folder / "small_scene.tif"
    base = shared_scenes()
    if base is not None and (base / REAL_SCENE).is_file():
        gdal.Translate(str(path), str(base / REAL_SCENE), srcWin=[600, 300, cols, rows])
        return path
    generator = np.random.default_rng(0)
    image = generator.integers(200, 3000, (13, rows, cols), dtype=np.uint16)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, 13, gdal.GDT_UInt16)
    dataset.WriteArray(image)
    dataset = None
    return path


def timed(function, *args, **kwargs):
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def ours(dataset, model, folder: Path, name: str, batch_size: int, prefetch_depth: int = 4):
    """Classify the scene with 06's pipeline at stride 1: (best of REPEATS seconds, labels)."""
    config = ModelInfo(list(CLASS_NAMES), list(MS_BAND_NAMES), 64, source="benchmark")
    classification = prepare(
        dataset, model, config, precision=model.layers[-1].dtype_policy.name,
        method="windows", stride=1, block_rows=64, batch_size=batch_size,
    )  # fmt: skip
    predictor = classification.predictor(prefetch_depth)
    predictor.forward(np.zeros((batch_size, 64, 64, 13), np.uint16))  # trace once, as a run would
    label_path, probability_path = folder / f"{name}_label.tif", folder / f"{name}_prob.tif"
    best = math.inf
    for _ in range(REPEATS):
        for path in (label_path, probability_path):
            path.unlink(missing_ok=True)
        outputs = writers.output_writers(dataset, CLASS_NAMES, label_path, probability_path)
        seconds, _ = timed(classification.run, outputs, progress=False, predictor=predictor)
        best = min(best, seconds)
    return best, gdal.Open(str(label_path)).ReadAsArray()


def in_batches(predict, windows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Predictions of ready-made windows (n, 64, 64, bands), batch by batch."""
    return [
        predict(windows[start : start + batch_size]) for start in range(0, len(windows), batch_size)
    ]


def row(name: str, seconds: float, patches: int, reference: float | None, note: str = "") -> None:
    ratio = f"{reference / seconds:6.2f}x" if reference else "      "
    print(f"  {name:44s} {seconds:8.2f} s {patches / seconds:9.0f} patches/s {ratio}  {note}")


def inference_calls(model, batch_size: int, repeats: int = 5) -> None:
    """0. Time one batch through the three ways of calling a Keras model."""
    import tensorflow as tf

    batch = np.random.default_rng(1).integers(200, 3000, (batch_size, 64, 64, 13))
    batch = batch.astype(np.float32)

    @tf.function(autograph=False)
    def forward(x):
        return model(x, training=False)

    ways = {
        "model(x) in tf.function": lambda: forward(batch).numpy(),
        "model.predict_on_batch(x)": lambda: model.predict_on_batch(batch),
        "model.predict(x)": lambda: model.predict(batch, batch_size=batch_size, verbose=0),
    }
    print(f"0. one batch of {batch_size} windows, best of {repeats}")
    fastest = None
    for name, call in ways.items():
        call()
        best = min(timed(call)[0] for _ in range(repeats))
        fastest = fastest or best
        row(name, best, batch_size, fastest)


# Runs 06 (sys.argv[1:]) with a thread that samples the resident memory every 50 ms and
# charges it to where the main thread is (the innermost function of the project); prints,
# in the order first reached, each place's resident memory on arrival and its peak.
PROFILED_RUN = """
import os, runpy, sys, threading

def resident():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def where(frame):
    while frame is not None:
        name = frame.f_code.co_filename
        if "cnn_sentinel" in name or name.endswith("_classify_image.py"):
            return os.path.basename(name)[:-3] + "." + frame.f_code.co_name
        frame = frame.f_back
    return "(start-up, imports)"

places = {}  # place -> [resident on arrival, peak]
stop = threading.Event()

def sample():
    main = threading.main_thread().ident
    while not stop.wait(0.05):
        place, now = where(sys._current_frames().get(main)), resident()
        arrival_and_peak = places.setdefault(place, [now, now])
        arrival_and_peak[1] = max(arrival_and_peak[1], now)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    stop.set()
    sampler.join()
    print("resident memory by place (GiB), in the order first reached: on arrival, peak")
    for place, (arrival, peak) in places.items():
        print(f"  {arrival / 2**30:5.2f} {peak / 2**30:5.2f}  {place}")
"""


def full_tile(
    folder: Path, model, stride: int, block_rows: int, side: int = TILE_SIDE, extra=()
) -> None:
    """4. A side x side x 13 tile through the 06 script in a subprocess: time, peak RSS,
    and the peak RSS of each place 06 was in (PROFILED_RUN)."""
    block_side = TILE_SIDE // 10
    generator = np.random.default_rng(2)
    block = generator.integers(200, 3000, (13, block_side, block_side), dtype=np.uint16)
    source = folder / "tile_block.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(source), block_side, block_side, 13, gdal.GDT_UInt16, ["TILED=YES"]
    )
    dataset.WriteArray(block)
    dataset = None
    # A VRT repeating the block 10 x 10 times: a full tile that is read like a file.
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">{source.name}</SourceFilename>'
        f"<SourceBand>{{band}}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{block_side}" ySize="{block_side}"/>'
        f'<DstRect xOff="{column * block_side}" yOff="{line * block_side}" '
        f'xSize="{block_side}" ySize="{block_side}"/></SimpleSource>'
        for line in range(10)
        for column in range(10)
    )
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{number}"><Description>{name}</Description>'
        + sources.format(band=number)
        + "</VRTRasterBand>"
        for number, name in enumerate(MS_BAND_NAMES, start=1)
    )
    vrt = folder / "tile.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{TILE_SIDE}" rasterYSize="{TILE_SIDE}">'
        "<GeoTransform>300000, 10, 0, 5900040, 0, -10</GeoTransform>"
        f"{bands}</VRTDataset>"
    )
    window = ["--window", "0", "0", str(side), str(side)] if side != TILE_SIDE else []
    model_folder = folder / "tile_model"
    model_folder.mkdir()
    model.save(model_folder / "model.keras")
    facts = {"class_names": list(CLASS_NAMES), "band_names": list(MS_BAND_NAMES)}
    (model_folder / "model.json").write_text(json.dumps({**facts, "input_size": [64, 64]}))
    command = [
        sys.executable, "-c", PROFILED_RUN, str(REPO_ROOT / "06_classify_image.py"),
        "--image", str(vrt), "--model", str(model_folder / "model.keras"),
        "--output-dir", str(folder / "tile_out"), "--stride", str(stride),
        "--block-rows", str(block_rows), "--no-progress", *window, *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    windows = (side // stride + (side % stride > 0)) ** 2
    talk_bytes = ((side + 128) ** 2 * 13 + side**2 * 13 + side**2 * 2) * 8
    print(f"4. tile {side} x {side} x 13 uint16, stride {stride}, 06 in a subprocess")
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:])
        raise SystemExit("the full-tile run failed")
    print(f"  {windows} windows in {seconds:.1f} s (whole process, TensorFlow start included)")
    print(f"  peak RSS {peak:.2f} GiB (limit 2 GiB)")
    print(
        f"  the talk's algorithm would hold >= {talk_bytes / 2**30:.0f} GiB (float64 scene, padded)"
    )
    lines = result.stdout.strip().splitlines()
    print("  " + lines[0][:300])
    print("  " + next(line for line in lines if "windows classified in" in line))
    print("\n".join(line for line in lines if line.startswith(("resident memory", "  "))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="phase,dense,tile-dense")
    parser.add_argument("--model", help="trained model (.keras with model.json) for dense")
    parser.add_argument("--tile-rows", type=int, default=128, help="rows of the tile estimate")
    parser.add_argument("--tile-precisions", default="off,bf16", help="06 --mixed-precision")
    parser.add_argument("--rows", type=int, default=32, help="windows: small scene rows")
    parser.add_argument("--cols", type=int, default=64, help="windows: small scene columns")
    parser.add_argument("--window-model", choices=["small", "vgg16"], default="small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tile-stride", type=int, default=64)
    parser.add_argument("--tile-block-rows", type=int, default=256)
    parser.add_argument("--tile-side", type=int, default=TILE_SIDE, help="tile: rows = cols")
    parser.add_argument(
        "--tile-model", choices=["small", "vgg16"], default="small",
        help="tile: small, or an untrained VGG16 from build_network (no download)",
    )  # fmt: skip
    parser.add_argument("--tile-06", default="", help="tile: more flags for 06, in one string")
    arguments = parser.parse_args()
    sections = set(arguments.sections.split(","))
    import tensorflow as tf

    from cnn_sentinel.precision import cpu_has_amx, cpu_has_bfloat16, cpu_model

    print(
        f"TensorFlow {tf.__version__}, devices "
        f"{[device.device_type for device in tf.config.list_physical_devices()]}, "
        f"{os.cpu_count()} CPUs visible, CPU {cpu_model()}, bfloat16 instructions: "
        f"{cpu_has_bfloat16()}, AMX: {cpu_has_amx()}, load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if sections & {"phase", "dense", "tile-dense"}:
            model_path = Path(arguments.model) if arguments.model else None
            if model_path is None:
                model_path = random_resnet_valid(folder / "resnet_valid")
            print(f"dense model: {arguments.model or 'resnet-valid, random weights'}")
            if "phase" in sections:
                phase_methods(model_path)
            if "dense" in sections:
                dense_against_windows(model_path)
            if "tile-dense" in sections:
                for precision in arguments.tile_precisions.split(","):
                    tile_estimate(folder, model_path, arguments.tile_rows, precision)
        if "adapt" in sections:
            model_path = Path(arguments.model) if arguments.model else SHIPPED_MS
            adapt_cost(folder, model_path)
        if "windows" in sections:
            model = build_model(arguments.window_model, 13)
            small_scene_comparisons(model, folder, arguments)
        if "tile" in sections:
            full_tile(
                folder,
                tile_model(arguments.tile_model),
                arguments.tile_stride,
                arguments.tile_block_rows,
                arguments.tile_side,
                arguments.tile_06.split(),
            )


def tile_model(kind: str):
    """The tile section's model: build_model("small"), or the project's VGG16 (13 bands,
    normalisation inside, random weights: speed and memory only)."""
    if kind == "small":
        return build_model("small", 13)
    from cnn_sentinel import networks as nf

    mean, std = talk_constants(13)
    return nf.build_network("vgg16", MS_BAND_NAMES, len(CLASS_NAMES), mean, std, augment=False)


def random_resnet_valid(folder: Path) -> Path:
    """A resnet-valid RGB classifier with random weights, saved with its model.json."""
    from cnn_sentinel import networks as nf

    mean, std = talk_constants(3)
    model = nf.build_network("resnet-valid", RGB_BAND_NAMES, len(CLASS_NAMES), mean, std)
    folder.mkdir()
    model.save(folder / "model.keras")
    facts = {"class_names": list(CLASS_NAMES), "band_names": list(RGB_BAND_NAMES)}
    (folder / "model.json").write_text(json.dumps({**facts, "input_size": 64}))
    return folder / "model.keras"


def real_scene() -> Path:
    base = shared_scenes()
    if base is None or not (base / REAL_SCENE).is_file():
        raise SystemExit(f"the dense sections need {REAL_SCENE} in the shared scenes folder")
    return base / REAL_SCENE


class Collect:
    """A writer that keeps the probability grids of every block (float32)."""

    def __init__(self):
        self.grids: list[np.ndarray] = []

    def write(self, block) -> None:
        self.grids.append(block.probabilities.copy())

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass

    def result(self) -> np.ndarray:
        return np.concatenate(self.grids, axis=0)


def classify(model_path: Path, window: list[int], method: str, stride: int, precision="float32"):
    """(seconds, probability grid) of one run through 06's entry point on a crop."""
    settings = settings_06(
        model=str(model_path), window=tuple(window), mixed_precision=PRECISION_MODES[precision],
        method=method, stride=stride, adapt="off", cloud_mask="off", reflectance_scale=10000,
    )  # fmt: skip
    classification = runner.prepare_classification(plan.plan_scene(settings, real_scene()))
    collect = Collect()
    seconds, _ = timed(classification.run, [collect], progress=False)
    return seconds, collect.result()


def phase_methods(model_path: Path) -> None:
    """Fragments (space_to_batch) against dilated kernels, one block at stride 1."""
    model, config = scenes.load_scene_model(model_path)
    dataset = scenes.open_scene(real_scene(), window=[600, 200, 512 + 63, 128 + 63])
    pixels = np.moveaxis(dataset.ReadAsArray(band_list=[4, 3, 2]), 0, -1)
    from image_functions import eurosat_rgb_from_l1c

    pixels = eurosat_rgb_from_l1c(pixels)
    rows, cols = np.arange(128), np.arange(512)
    print("phase: one block of 128 x 512 windows at stride 1, float32, best of 2")
    results = {}
    for method in ("fragments", "dilation"):
        network = dense.DenseNetwork(model, config, method)
        network.tile(pixels, rows[:2], cols[:2])  # trace
        network.tile(pixels, rows, cols)
        best = min(timed(network.tile, pixels, rows, cols)[0] for _ in range(2))
        results[method] = (best, network.tile(pixels, rows, cols))
        print(f"  {method:10s} {best:7.2f} s {rows.size * cols.size / best:9.0f} windows/s")
    difference = np.abs(results["fragments"][1] - results["dilation"][1]).max()
    ratio = results["dilation"][0] / results["fragments"][0]
    print(f"  fragments are {ratio:.2f}x dilation; max difference {difference:.1e}")


def compare(windows: np.ndarray, dense: np.ndarray) -> str:
    """Identical labels, ties within 1e-4, other differences, max probability difference."""
    classified = ~np.isnan(windows[..., 0])
    window_probabilities, dense_probabilities = windows[classified], dense[classified]
    same = np.argmax(window_probabilities, -1) == np.argmax(dense_probabilities, -1)
    top_two = np.sort(window_probabilities, axis=-1)[:, -2:]
    ties = top_two[:, 1] - top_two[:, 0] < 1e-4
    difference = np.abs(window_probabilities - dense_probabilities).max()
    return (
        f"labels identical {same.sum()}/{same.size}, differing {np.sum(~same)} "
        f"(of them ties {np.sum(~same & ties)}; ties in all {ties.sum()}), "
        f"max probability difference {difference:.1e}"
    )


# Crops (xoff, yoff, xsize, ysize) of the real scene for each stride of section "dense".
DENSE_CROPS = {1: [700, 300, 96, 48], 4: [600, 200, 256, 256], 16: [0, 0, 1536, 768]}


def dense_against_windows(model_path: Path) -> None:
    """Dense vs windows side by side, float32, on crops of the real scene."""
    print("dense: dense vs windows through 06's entry point, float32 (first run traces)")
    for stride, window in DENSE_CROPS.items():
        windows_count = math.ceil(window[2] / stride) * math.ceil(window[3] / stride)
        small = [window[0], window[1], min(window[2], 2 * stride), min(window[3], 2 * stride)]
        for method in ("windows", "dense"):
            classify(model_path, small, method, stride)  # trace both at this stride
        window_seconds, window_grid = classify(model_path, window, "windows", stride)
        dense_seconds, dense_grid = classify(model_path, window, "dense", stride)
        print(
            f"  stride {stride:2d}, {window[2]} x {window[3]} crop, {windows_count} windows: "
            f"windows {window_seconds:.2f} s, dense {dense_seconds:.2f} s, "
            f"dense {window_seconds / dense_seconds:.1f}x faster"
        )
        print(f"    {compare(window_grid, dense_grid)}")


def tile_vrt(folder: Path, source: Path, side: int = TILE_SIDE) -> Path:
    """A side x side VRT repeating `source` (its bands and descriptions) as often as needed."""
    dataset = gdal.Open(str(source))
    width, height, count = dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount
    placements = [(x, y) for y in range(0, side, height) for x in range(0, side, width)]
    bands = ""
    for number in range(1, count + 1):
        band = dataset.GetRasterBand(number)
        sources = "".join(
            f"<SimpleSource><SourceFilename>{source}</SourceFilename>"
            f"<SourceBand>{number}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{min(width, side - x)}" '
            f'ySize="{min(height, side - y)}"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{min(width, side - x)}" '
            f'ySize="{min(height, side - y)}"/></SimpleSource>'
            for x, y in placements
        )
        bands += (
            f'<VRTRasterBand dataType="UInt16" band="{number}">'
            f"<Description>{band.GetDescription()}</Description>{sources}</VRTRasterBand>"
        )
    path = folder / "tile.vrt"
    transform = ", ".join(str(value) for value in dataset.GetGeoTransform())
    path.write_text(
        f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}">'
        f"<GeoTransform>{transform}</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def tile_estimate(folder: Path, model_path: Path, rows: int, precision: str) -> None:
    """06 --method dense at stride 1 on the first `rows` rows of a full-width tile."""
    vrt = folder / "tile.vrt" if (folder / "tile.vrt").exists() else tile_vrt(folder, real_scene())
    output = folder / f"tile_{precision}"
    command = [
        sys.executable, str(REPO_ROOT / "06_classify_image.py"),
        "--image", str(vrt), "--model", str(model_path), "--output-dir", str(output),
        "--window", "0", "0", str(TILE_SIDE), str(rows), "--stride", "1",
        "--method", "dense", "--mixed-precision", precision, "--no-progress", "--no-quicklook",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(command, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:])
        raise SystemExit("the tile run failed")
    line = next(text for text in result.stdout.splitlines() if "windows classified in" in text)
    seconds = float(line.split(" classified in ")[1].split(" s ")[0])
    whole = seconds * TILE_SIDE / rows
    print(
        f"tile-dense: {TILE_SIDE} x {rows} (full width) at stride 1, --mixed-precision "
        f"{precision}: {seconds:.1f} s classifying ({TILE_SIDE * rows / seconds:.0f} windows/s)"
    )
    print(
        f"  whole tile {TILE_SIDE} x {TILE_SIDE}: {whole / 60:.1f} min (x {TILE_SIDE / rows:.1f} "
        f"rows); peak RSS {max(peak, before) / 2**20:.2f} GiB"
        f"{' (the largest child so far)' if peak == before else ''}"
    )


SHIPPED_MS = REPO_ROOT / "models" / "eurosat-ms-resnet-valid-narrow" / "model.keras"
PREPARE = """
import resource, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/tests")
from helpers import settings_06
from cnn_sentinel.scene import plan, runner
started = time.perf_counter()
settings = settings_06(model={model!r}, adapt={mode!r}, cloud_mask="on", reflectance_scale=10000)
classification = runner.prepare_classification(plan.plan_scene(settings, {vrt!r}))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, peak, classification.describe())
"""


def adapt_cost(folder: Path, model_path: Path) -> None:
    """Time and peak RSS of preparing a whole tile's classification, per ADAPT mode."""
    vrt = folder / "tile.vrt" if (folder / "tile.vrt").exists() else tile_vrt(folder, real_scene())
    for mode in ("off", "auto", "on"):
        code = PREPARE.format(root=str(REPO_ROOT), vrt=str(vrt), model=str(model_path), mode=mode)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-2000:])
            raise SystemExit("the adaptation run failed")
        seconds, peak, words = result.stdout.strip().splitlines()[-1].split(" ", 2)
        print(
            f"adapt {mode:4s}: prepare {float(seconds):6.1f} s, peak RSS of the process "
            f"{int(peak) / 2**20:.2f} GiB; {words.split('; ')[-1]}"
        )


def small_scene_comparisons(model, folder: Path, arguments: argparse.Namespace) -> None:
    """0.-3. on a small scene at stride 1."""
    inference_calls(model, arguments.batch_size)

    scene_path = small_scene(folder, arguments.rows, arguments.cols)
    dataset = scenes.open_scene(scene_path)
    image = np.moveaxis(dataset.ReadAsArray(), 0, -1)
    patches = arguments.rows * arguments.cols
    print(f"1.-3. {arguments.rows} x {arguments.cols} x 13 scene ({scene_path.name}), stride 1")
    model.predict(np.zeros((1, 64, 64, 13), np.float32), verbose=0)
    talk_seconds, (talk_labels, _) = timed(talk_classify, image, model)
    ours_seconds, labels = ours(dataset, model, folder, "ours", arguments.batch_size)
    inline_seconds, inline_labels = ours(
        dataset, model, folder, "inline", arguments.batch_size, prefetch_depth=0
    )
    padded = np.pad(image.astype(np.float32), ((32, 31), (32, 31), (0, 0)), "symmetric")
    windows = np.ascontiguousarray(scenes.window_view(padded, 64).reshape(-1, 64, 64, 13))
    bound_seconds, _ = timed(model.predict, windows, batch_size=arguments.batch_size, verbose=0)
    config = ModelInfo(list(CLASS_NAMES), list(MS_BAND_NAMES), 64, source="benchmark")
    forward = predictors.make_predictor(model, config, np.dtype(np.float32), 13)
    forward(windows[: arguments.batch_size])
    forward_seconds = min(
        timed(in_batches, forward, windows, arguments.batch_size)[0] for _ in range(REPEATS)
    )
    del windows
    mixed = runner.with_precision(model, "mixed_bfloat16")
    bf16_seconds, bf16_labels = ours(dataset, mixed, folder, "bf16", arguments.batch_size)
    identical = np.array_equal(labels, talk_labels) and np.array_equal(inline_labels, labels)
    row("talk algorithm (model.predict per row)", talk_seconds, patches, None)
    row(
        "ours (float32)", ours_seconds, patches, talk_seconds,
        f"vs talk; labels identical: {identical}",
    )  # fmt: skip
    row("model-bound: model.predict on ready arrays", bound_seconds, patches, None)
    row("ours (float32)", ours_seconds, patches, bound_seconds, "of the model-bound limit")
    row("model-bound: tf.function on ready arrays", forward_seconds, patches, None)
    row("ours (float32)", ours_seconds, patches, forward_seconds, "of the tf.function bound")
    row("ours without the reading thread", inline_seconds, patches, forward_seconds, "of it")
    agreement = np.mean(bf16_labels == labels)
    row(
        "ours (bfloat16)", bf16_seconds, patches, ours_seconds,
        f"vs float32; label agreement {agreement:.4f}",
    )  # fmt: skip


if __name__ == "__main__":
    main()
