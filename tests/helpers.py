"""Plain helpers that several test modules share: tiny models, generated scenes and rasters,
the one scene-classification entry point, tiny training splits, the docs' code blocks.

Fixtures live in conftest.py; these are ordinary functions and constants, imported by name
(`from helpers import tiny_model`), because pytest advises against importing conftest.py and
test modules should not import each other. Helpers used by one test module stay in it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
from osgeo import gdal

import demo_data
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.scene import plan, runner, writers
from cnn_sentinel.scene import reading as scenes
from cnn_sentinel.settings import parse_settings
from image_functions import CLASS_NAMES, MS_BAND_NAMES, list_images, talk_constants

gdal.UseExceptions()

REPO_ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# Training scripts 02-05 on tiny splits
# ---------------------------------------------------------------------------

SCRIPTS = {
    "02": "02_train_rgb_finetuning.py",
    "03": "03_train_rgb_from_scratch.py",
    "04": "04_train_ms_finetuning.py",
    "05": "05_train_ms_from_scratch.py",
}
# Tiny and quick: the test network, 4 images per batch, float32.
FAST = ["--arch", "tiny", "--batch-size", "4", "--mixed-precision", "off"]
# What Keras warns while it tries a weights file of another backbone, before our one-sentence
# error: expected in the tests of that error (pytest.mark.filterwarnings), nowhere else.
WRONG_WEIGHTS_WARNING = "ignore:Skipping nested container:UserWarning"


def make_split(source: Path, target: Path, with_test: bool = False) -> Path:
    """train/ (first 3 per class), validation/ (next 2), test/ (last 1) as links to `source`."""
    parts = {"train": slice(0, 3), "validation": slice(3, 5)}
    if with_test:
        parts["test"] = slice(5, 6)
    for class_name in CLASS_NAMES:
        images = list_images(source / class_name)
        for part, chosen in parts.items():
            (target / part / class_name).mkdir(parents=True)
            for image in images[chosen]:
                (target / part / class_name / image.name).symlink_to(image.resolve())
    return target


def read_history(run: Path) -> list[dict]:
    """The rows of a run folder's history.csv."""
    with (run / "history.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------
# Scenes: tiny models, generated rasters, the classification entry point
# ---------------------------------------------------------------------------

ORIGIN = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)
UTM33N = 32633


def tiny_model(bands: int, mean=None, std=None, classes: int = 10, seed: int = 0):
    """A small position-sensitive classifier of 64x64 windows (raw pixels in when mean given)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 64, bands))
    x = inputs
    if mean is not None:
        x = keras.layers.Normalization(mean=list(mean), variance=list(np.square(std)))(x)
    x = keras.layers.AveragePooling2D(16)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(24, activation="tanh")(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def valid_model(bands: int = 3, seed: int = 0):
    """A tiny resnet-valid classifier (cnn_sentinel.networks.resnet_valid, widths 4-8) with
    random batch-normalisation statistics, so every layer matters."""
    import keras

    from cnn_sentinel import networks as nf

    keras.utils.set_random_seed(seed)
    mean, std = talk_constants(bands)
    inputs = keras.Input((64, 64, bands))
    x = keras.layers.Normalization(mean=list(mean), variance=list(np.square(std)))(inputs)
    x = nf.resnet_valid((64, 64, bands), widths=(4, 6, 8, 8))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Dropout(0.2)(x))
    model = keras.Model(inputs, outputs)
    generator = np.random.default_rng(seed)
    for layer in model.get_layer("resnet-valid").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean_, variance = layer.get_weights()
            layer.set_weights(
                [
                    generator.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    generator.normal(0, 0.3, beta.shape).astype(np.float32),
                    generator.normal(0, 0.5, mean_.shape).astype(np.float32),
                    generator.uniform(0.5, 2.0, variance.shape).astype(np.float32),
                ]
            )
    return model


def save_model(model, folder: Path, band_names, name: str = "model.keras", json_facts=None):
    """Save a model with a model.json beside it (as cnn_sentinel.networks writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    model.save(path)
    facts = {
        "class_names": list(CLASS_NAMES),
        "band_names": list(band_names),
        "input_size": 64,
    }
    facts.update(json_facts or {})
    (folder / "model.json").write_text(json.dumps(facts))
    return path


def smooth_scene(rows: int, cols: int, bands: int, dtype, scale: float, seed: int = 0):
    """A scene with structure at several scales, so labels vary across it."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    layers = []
    for _ in range(bands):
        phase = generator.uniform(0, 2 * np.pi, 3)
        layer = (
            np.sin(x / 5.0 + phase[0])
            + np.cos(y / 7.0 + phase[1])
            + np.sin((x + y) / 11 + phase[2])
        )
        layers.append(layer + 0.3 * generator.standard_normal((rows, cols)))
    scene = (np.stack(layers, axis=-1) + 3.5) * scale
    return scene.astype(dtype)


def write_scene(
    path: Path,
    array: np.ndarray,
    georeferenced: bool = True,
    nodata: float | None = None,
    descriptions=None,
) -> Path:
    """Write (rows, cols, bands) as a GeoTIFF, optionally georeferenced, nodata, descriptions."""
    from osgeo import gdal_array, osr

    rows, cols, bands = array.shape
    data_type = gdal_array.NumericTypeCodeToGDALTypeCode(array.dtype)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, bands, data_type)
    if georeferenced:
        dataset.SetGeoTransform(ORIGIN)
        reference = osr.SpatialReference()
        reference.ImportFromEPSG(UTM33N)
        dataset.SetProjection(reference.ExportToWkt())
    for band in range(bands):
        raster_band = dataset.GetRasterBand(band + 1)
        raster_band.WriteArray(array[..., band])
        if nodata is not None:
            raster_band.SetNoDataValue(nodata)
        if descriptions:
            raster_band.SetDescription(descriptions[band])
    dataset = None
    return path


# Digital numbers of a bright cloud top in MS_BAND_NAMES order (B01..B12, B8A).
CLOUD_SPECTRUM = (4500, 4300, 4200, 4200, 4400, 4500, 4600, 4600, 1500, 80, 3500, 2500, 4700)


def cloudy_scene(rows: int = 64, cols: int = 72, seed: int = 0) -> np.ndarray:
    """(rows, cols, 13) uint16 demo scene with a soft cloud band across it."""
    surface, _ = demo_data.demo_scene(max(rows, 64), max(cols, 64), seed)
    surface = np.moveaxis(surface, 0, -1)[:rows, :cols].astype(np.float64)
    row, col = np.mgrid[0:rows, 0:cols]
    cover = np.clip(1.0 - np.abs(row - 0.6 * col - rows / 4) / 12.0, 0.0, 1.0)[..., None]
    scene = (1.0 - cover) * surface + cover * np.array(CLOUD_SPECTRUM)
    return np.round(scene).astype(np.uint16)


def read_raster(path: Path) -> np.ndarray:
    """(rows, cols) for one band, (bands, rows, cols) for several."""
    dataset = gdal.Open(str(path))
    array = dataset.ReadAsArray()
    dataset = None
    return array


def raw_config(band_names) -> ModelInfo:
    """Configuration of a self-contained model (normalisation inside)."""
    return ModelInfo(list(CLASS_NAMES), list(band_names), 64, source="test")


def settings_06(**overrides):
    """06's settings (its constants as parsed with no flags), some replaced by name."""
    settings = parse_settings(REPO_ROOT / "06_classify_image.py", [])
    for name, value in overrides.items():
        if not hasattr(settings, name):
            raise AttributeError(f"06 has no setting {name}")
        setattr(settings, name, value)
    return settings


# The Keras dtype policies the tests name, as 06's MIXED_PRECISION modes.
PRECISION_MODES = {"float32": "off", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}


def scene_plan(dataset, model, info, label="scene", precision="float32", **settings):
    """The plan 06 makes of an opened scene with a model in memory (`info` its ModelInfo):
    06's defaults but no adaptation, no cloud mask, the raw windows at stride 1 (antialias
    1) and the scale 10000 unless asked, `settings` (06's names: stride, bands, method,
    ...) replacing some."""
    defaults = {"adapt": "off", "cloud_mask": "off", "reflectance_scale": 10000, "antialias": 1}
    settings = {**defaults, **settings}
    settings.setdefault("mixed_precision", PRECISION_MODES[precision])
    settings.setdefault("model", "in-memory")
    return plan.plan_scene(
        settings_06(**settings), label, load_model=lambda path: (model, info), scene=dataset
    )


def prepare(dataset, model, info, label="scene", **settings) -> runner.SceneClassification:
    """The runner of `scene_plan` (model under its precision, adapted, method chosen)."""
    return runner.prepare_classification(scene_plan(dataset, model, info, label, **settings))


def run_classification(
    tmp_path: Path,
    scene_path: Path,
    model,
    info,
    name="out",
    probabilities="max",
    prefetch_depth=4,
    steps=(),
    rgb_scaling="none",
    **settings,
):
    """Classify a file through 06's plan and runner into the label and probability
    GeoTIFFs; returns (labels, probabilities) as read back. `settings`: 06's names."""
    dataset = scenes.open_scene(scene_path)
    classification = prepare(
        dataset,
        model,
        info,
        rgb_scaling=rgb_scaling,
        **settings,
    )
    label_path = tmp_path / f"{name}_label.tif"
    probability_path = tmp_path / f"{name}_prob.tif"
    outputs = writers.output_writers(
        dataset, info.class_names, label_path, probability_path, probabilities=probabilities
    )
    classification.run(outputs, progress=False, prefetch_depth=prefetch_depth, steps=steps)
    return read_raster(label_path), read_raster(probability_path)


def expected_at_stride(reference: np.ndarray, stride: int) -> np.ndarray:
    """The stride-1 result sampled at each block's centre and spread over the block."""
    rows, cols = reference.shape
    centre_rows = scenes.window_centres(rows, stride)
    centre_cols = scenes.window_centres(cols, stride)
    sampled = reference[np.ix_(centre_rows, centre_cols)]
    return np.repeat(np.repeat(sampled, stride, 0), stride, 1)[:rows, :cols]


def safe_layout(target: Path, band_files: dict[str, Path], level: str = "L1C") -> Path:
    """A .SAFE folder as ESA lays it out, with links to the given band images."""
    safe = target / f"S2A_MSI{level}_20170216T102101_N0204_R065_T33UUU_20170216T102204.SAFE"
    image_folder = safe / "GRANULE" / f"{level}_T33UUU_A008670_20170216T102204" / "IMG_DATA"
    image_folder.mkdir(parents=True)
    (safe / "manifest.safe").write_text("<xml/>")
    for band, source in band_files.items():
        (image_folder / f"T33UUU_20170216T102101_{band}.jp2").symlink_to(source)
    return safe


def generated_jp2_bands(folder: Path, rows: int = 96, cols: int = 60) -> dict[str, Path]:
    """Small lossless JPEG2000 bands at 10/20/60 m written by GDAL (JP2OpenJPEG)."""
    from osgeo import osr

    resolution = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60, "B10": 60}
    generator = np.random.default_rng(5)
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(UTM33N)
    files = {}
    for band in MS_BAND_NAMES:
        metres = resolution.get(band, 20)
        factor = metres // 10
        values = generator.integers(1, 4000, (rows // factor, cols // factor), dtype=np.uint16)
        memory = gdal.GetDriverByName("MEM").Create("", cols // factor, rows // factor, 1, 2)
        memory.SetGeoTransform((ORIGIN[0], metres, 0, ORIGIN[3], 0, -metres))
        memory.SetProjection(reference.ExportToWkt())
        memory.GetRasterBand(1).WriteArray(values)
        path = folder / f"{band}.jp2"
        gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
            str(path), memory, options=["REVERSIBLE=YES", "QUALITY=100"]
        )
        files[band] = path
    return files


# ---------------------------------------------------------------------------
# The docs' fenced code blocks: the README's first block (test_readme checks it) and
# the tutorial's runnable blocks (conftest runs them, test_readme checks each)
# ---------------------------------------------------------------------------

README = REPO_ROOT / "README.md"
TUTORIAL = REPO_ROOT / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
RUNNABLE_MARK = "# runnable"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a markdown text, in order.

    Blocks indented inside list items are found too (their indentation is removed).
    """
    dedented = re.sub(r"^[ \t]+(?=```)", "", text, flags=re.MULTILINE)
    blocks = []
    for match in FENCE.finditer(dedented):
        body = match.group(2)
        indent = min(
            (len(line) - len(line.lstrip()) for line in body.splitlines() if line.strip()),
            default=0,
        )
        body = "\n".join(line[indent:] for line in body.splitlines()) + "\n"
        blocks.append((match.group(1), body))
    return blocks


def runnable_blocks(text: str) -> list[str]:
    """Bodies of the ```bash blocks whose first line is `# runnable`."""
    return [
        body
        for language, body in code_blocks(text)
        if language == "bash" and body.lstrip().splitlines()[0].strip() == RUNNABLE_MARK
    ]


# ---------------------------------------------------------------------------
# STAC: static items over band files, and a folder served over HTTP as catalogs serve COGs
# (test_stac and benchmarks/stac_reading.py)
# ---------------------------------------------------------------------------


def write_band_cogs(folder: Path, dataset, names, block: int = 128, offset: int = 0) -> dict:
    """Each band of `dataset` as folder/<name>.tif, a Cloud-Optimized GeoTIFF (deflate,
    `block` x `block` tiles, no overviews), `offset` added to its non-zero values (the
    digital numbers of processing baseline 04.00+). Returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for number, name in enumerate(names, start=1):
        band = gdal.Translate("", dataset, format="MEM", bandList=[number])
        if offset:
            values = band.GetRasterBand(1).ReadAsArray().astype(np.int64)
            band.GetRasterBand(1).WriteArray(np.where(values > 0, values + offset, 0))
        files[name] = folder / f"{name}.tif"
        gdal.Translate(
            str(files[name]),
            band,
            format="COG",
            creationOptions=["COMPRESS=DEFLATE", f"BLOCKSIZE={block}", "OVERVIEWS=NONE"],
        )
    return files


def write_item(path: Path, hrefs: dict, properties=None, collection="sentinel-2-l1c") -> Path:
    """A STAC item (1.0.0) at `path` whose assets are the bands {key: href}, each with
    eo:bands (its name) and raster:bands; `properties` added to the item's."""
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": path.stem,
        "collection": collection,
        "geometry": {"type": "Point", "coordinates": [13.0, 52.5]},
        "bbox": [12.9, 52.4, 13.1, 52.6],
        "properties": {"datetime": "2017-02-16T10:22:04Z", **(properties or {})},
        "links": [],
        "assets": {
            key: {
                "href": str(href),
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "eo:bands": [{"name": key}],
            }
            for key, href in hrefs.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(item, indent=1))
    return path


class ServedFolder:
    """A folder served on 127.0.0.1 over HTTP/1.1 with byte ranges (as GDAL's /vsicurl/
    reads COGs), in a thread; every GET is recorded in `requests` as (path, first byte,
    last byte) and its body bytes added to `sent`. `routes` {path: function(query or
    JSON body) -> JSON object} answer as an API does. `break_after` N: from the N+1-th
    ranged GET on (`faults` of them, or all), the server fails as `fault` says: "cut"
    sends half the promised bytes and drops the connection, "stall" sends half and then
    nothing more until the server closes, "busy" answers HTTP 503 the first time a byte
    range is asked for (and sends it when asked again). Set `break_after` to None to
    bring the server back."""

    def __init__(
        self,
        folder: Path,
        routes=None,
        break_after: int | None = None,
        fault: str = "cut",
        faults: int | None = None,
    ):
        import http.server
        import threading

        self.folder, self.routes, self.break_after = Path(folder), routes or {}, break_after
        self.fault, self.faults, self.faulted = fault, faults, 0
        self.refused: set[tuple[str, int, int]] = set()  # ranges answered "busy" once
        self.closing = threading.Event()
        self.requests: list[tuple[str, int, int]] = []
        self.bodies: list[dict] = []
        self.sent = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                owner.answer(self, head=True)

            def do_GET(self):
                owner.answer(self, head=False)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                owner.answer(self, head=False, body=json.loads(self.rfile.read(length) or b"{}"))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def reply(self, handler, status: int, body: bytes, headers: dict, head: bool) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    def answer(self, handler, head: bool, body: dict | None = None) -> None:
        from urllib.parse import parse_qs, unquote, urlparse

        address = urlparse(handler.path)
        if address.path in self.routes:
            query = body if body is not None else parse_qs(address.query)
            with self.lock:
                self.bodies.append(query)
            payload = json.dumps(self.routes[address.path](query)).encode()
            self.reply(handler, 200, payload, {"Content-Type": "application/json"}, head)
            return
        path = self.folder / unquote(address.path).lstrip("/")
        if not path.is_file():
            self.reply(handler, 404, b"not found", {}, head)
            return
        size = path.stat().st_size
        if head:
            headers = {"Accept-Ranges": "bytes", "Content-Length": str(size)}
            self.reply(handler, 200, b"", headers, head)
            return
        first, last = 0, size - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
        if ranged:
            first = int(ranged.group(1))
            last = min(int(ranged.group(2) or last), size - 1)
        with path.open("rb") as file:
            file.seek(first)
            part = file.read(last + 1 - first)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if ranged:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        with self.lock:
            self.requests.append((address.path, first, last))
            broken = (
                ranged
                and self.break_after is not None
                and len(self.requests) > self.break_after
                and (self.faults is None or self.faulted < self.faults)
                and not (self.fault == "busy" and (address.path, first, last) in self.refused)
            )
            if broken and self.fault == "busy":
                self.refused.add((address.path, first, last))
            self.faulted += bool(broken)
            self.sent += 0 if broken and self.fault == "busy" else len(part)
        if broken and self.fault == "busy":
            self.reply(handler, 503, b"busy", {"Retry-After": "1"}, head=False)
            return
        if broken:
            handler.send_response(206)
            handler.send_header("Content-Length", str(len(part)))
            handler.send_header("Content-Range", headers["Content-Range"])
            handler.end_headers()
            handler.wfile.write(part[: len(part) // 2])
            handler.wfile.flush()
            if self.fault == "stall":
                self.closing.wait()
            handler.close_connection = True
            return
        self.reply(handler, 206 if ranged else 200, part, headers, head=False)
