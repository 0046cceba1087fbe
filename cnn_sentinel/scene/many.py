"""Many scenes through 06: in this process, or on Dask distributed (an embedded
LocalCluster or an existing cluster), resumable, with a summary and a mosaic.

    results = classify_many(plan.plan_run(settings), scenes, scheduler)

- Units of work: a scene that fits in BAND_ROWS rows is one task (job.classify_one
  on a worker); a larger one is cut into row strips (job.classify_rows, one task each,
  on any worker) and assembled by one more task (job.assemble_scene), with the same
  outputs as one process would write. Each task makes the scene's plan from 06's
  settings (plan.plan_scene); the client makes it too, for the manifest.
- Each worker process loads a model once and keeps it (`cached_model`, keyed by
  path and modification time): tasks carry 06's settings, never the model.
  TensorFlow's threads in a worker follow the worker's threads.
- A worker that dies: Dask runs its tasks again elsewhere; band files are written
  atomically and a finished band is not redone, so outputs end complete.
- A manifest (manifest.json in the run folder) records each finished scene: its
  inputs (size, modification time), what changes its outputs (the scene plan's
  fields that say so, and the model file's SHA-256: plan.output_values) and the
  outputs' SHA-256. A rerun skips those scenes; --overwrite redoes them. A scene
  that fails (bad input) fails alone, with its sentence in summary.csv/summary.json.
- Several scenes also give mosaic.vrt (every label map, one layer) and its quicklook.

Scenes and outputs must be on storage that every worker sees (one machine, or a
shared file system for a cluster). dask.distributed is imported inside the
functions that need it.
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import glob
import hashlib
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.outputs import atomic_output, refuse_existing, write_atomic
from cnn_sentinel.scene import job, quicklooks
from cnn_sentinel.scene.blocks import CLOUD_LABEL, CLOUD_NAME, LABEL_NODATA
from cnn_sentinel.scene.plan import RunPlan, SceneOutputs, ScenePlan, file_sha256, plan_scene
from cnn_sentinel.scene.plan import output_values as plan_output_values
from cnn_sentinel.scene.products import is_sentinel2_product
from cnn_sentinel.scene.reading import load_scene_model, scene_stem

gdal.UseExceptions()

# Files taken as scenes in a folder given to --image (a .SAFE folder is one scene).
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".zip", ".safe")
# Files in a scene folder that are 06's own outputs, never scenes.
OUTPUT_SUFFIXES = ("_label.tif", "_prob.tif", "_quicklook.png")
# The run's own files, in OUTPUT_DIR (or the scenes' common folder).
MANIFEST_FILE = "manifest.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
MOSAIC_FILE = "mosaic.vrt"
MOSAIC_QUICKLOOK = "mosaic_quicklook.png"


# ---------------------------------------------------------------------------
# Scenes and schedulers from the settings
# ---------------------------------------------------------------------------


def is_scene_file(path: Path) -> bool:
    """Whether a folder entry is a scene: a raster or product suffix, not a hidden file,
    not one of 06's outputs."""
    name = path.name.lower()
    return (
        not name.startswith(".")
        and name.endswith(SCENE_SUFFIXES)
        and not name.endswith(OUTPUT_SUFFIXES)
    )


def list_scenes(values: Sequence[str]) -> list[Path]:
    """The scenes of --image: paths, glob patterns, folders of scenes (a .SAFE folder
    is one scene) and .txt files with one scene per line (relative to the list's
    folder; blank lines and # comments skipped), in order, each once. A path that
    does not exist is kept (it fails as that scene's error)."""
    scenes: list[Path] = []
    for value in values:
        value = str(value)
        if glob.has_magic(value):
            matches = sorted(Path(match) for match in glob.glob(value))
            if not matches:
                raise InputError(f"no scene matches {value}.")
            scenes += matches
            continue
        path = Path(value)
        if path.suffix.lower() == ".txt" and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            entries = [line.strip() for line in lines]
            scenes += [
                path.parent / entry for entry in entries if entry and not entry.startswith("#")
            ]
        elif path.is_dir() and not is_sentinel2_product(path):
            found = sorted(entry for entry in path.iterdir() if is_scene_file(entry))
            if not found:
                raise InputError(f"folder {path} holds no scene ({', '.join(SCENE_SUFFIXES)}).")
            scenes += found
        else:
            scenes.append(path)
    unique = list(dict.fromkeys(scenes))
    stems: dict[str, Path] = {}
    for scene in unique:
        other = stems.setdefault(scene_stem(scene), scene)
        if other != scene:
            raise InputError(
                f"scenes {other} and {scene} would both write {scene_stem(scene)}_label.tif; "
                "classify them into different output folders."
            )
    return unique


def choose_scheduler(scheduler: str, scene_count: int) -> str:
    """ "none", "local" or a cluster's address, from --scheduler ("auto": none for one
    scene, local for several)."""
    if scheduler == "auto":
        return "none" if scene_count == 1 else "local"
    if scheduler in ("none", "local") or "://" in scheduler:
        return scheduler
    raise InputError(
        f"scheduler must be auto, none, local or an address such as tcp://host:8786, "
        f"not {scheduler}."
    )


def start_client(scheduler: str, workers: int, threads_per_worker: int):
    """A dask.distributed Client: of a new LocalCluster ("local": `workers` processes,
    0: the cores divided by `threads_per_worker`) or of the cluster at an address."""
    from dask.distributed import Client, LocalCluster

    if threads_per_worker < 1:
        raise InputError(f"threads per worker must be at least 1, not {threads_per_worker}.")
    if scheduler != "local":
        try:
            return Client(scheduler, timeout="20s")
        except OSError as error:
            raise InputError(f"no Dask scheduler answers at {scheduler}: {error}.") from None
    count = workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
    cluster = LocalCluster(n_workers=count, threads_per_worker=threads_per_worker, processes=True)
    return Client(cluster)


# ---------------------------------------------------------------------------
# Worker side: the model cache and the tasks
# ---------------------------------------------------------------------------

# Models loaded in this process, by (path, modification time, thread): a Dask worker keeps
# its models between tasks, so each is read from disk once per worker thread, with its
# weights as loaded (a task may change a model's weights: the scene adaptation of issue 18
# sets its batch-normalisation statistics, so two threads never share one model).
_LOADED_MODELS: dict[tuple[str, int, int], tuple[object, ModelInfo, list]] = {}


def set_up_worker_process() -> None:
    """In a Dask worker process, before its first model: give TensorFlow as many threads
    as the worker has (before TensorFlow starts; later it keeps its own), and let the
    process end without TensorFlow's clean-up (seconds of a cluster's shutdown; every
    output is closed by then, its task finished)."""
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError):
        return
    atexit.register(os._exit, 0)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow started already in this process
        pass


def cached_model(path: str) -> tuple[object, ModelInfo]:
    """The model at `path` and its ModelInfo, loaded once per process and thread, its
    weights set back to the file's at every call (what an earlier task changed is undone)."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        return load_scene_model(path)  # its one sentence for a missing model
    key = (str(resolved), resolved.stat().st_mtime_ns, threading.get_ident())
    if key not in _LOADED_MODELS:
        set_up_worker_process()
        model, info = load_scene_model(resolved)
        _LOADED_MODELS[key] = (model, info, model.get_weights())
    model, info, weights = _LOADED_MODELS[key]
    model.set_weights(weights)
    return model, info


def worker_plan(settings, image: str) -> ScenePlan:
    """The plan of a scene on a worker: with the cached model, without a progress bar,
    replacing outputs (existing ones were refused by the client, once; a task run again
    after its worker died may find the outputs it had written)."""
    plan = plan_scene(settings, image, cached_model)
    return dataclasses.replace(plan, progress=False, overwrite=True)


def scene_task(settings, image: str) -> dict:
    """One whole scene on a worker: job.classify_one with the cached model; the lines
    it would print are returned as "text". A bad input is returned as {"error": its
    sentence} (an expected outcome, not a task failure for Dask to log)."""
    lines: list[str] = []
    try:
        summary = job.classify_one(worker_plan(settings, image), report=lines.append)
    except InputError as error:
        return {"error": str(error)}
    return {**summary, "text": "\n".join(lines)}


def band_task(settings, image: str, first_row: int, last_row: int, folder: str) -> dict:
    """One row strip of a scene on a worker (job.classify_rows with the cached model);
    a bad input as {"error": its sentence}."""
    try:
        return job.classify_rows(worker_plan(settings, image), first_row, last_row, folder)
    except InputError as error:
        return {"error": str(error)}


def assemble_task(settings, image: str, bands: list[dict], folder: str) -> dict:
    """The outputs of a scene from its bands (job.assemble_scene), or the first band's error."""
    errors = [band for band in bands if "error" in band]
    if errors:
        shutil.rmtree(folder, ignore_errors=True)
        return errors[0]
    try:
        return job.assemble_scene(worker_plan(settings, image), bands, folder)
    except InputError as error:
        return {"error": str(error)}


# ---------------------------------------------------------------------------
# The manifest of finished scenes
# ---------------------------------------------------------------------------


def input_fingerprint(path: Path) -> dict:
    """Size and newest modification time of a scene (a .SAFE folder: over its files)."""
    files = [path] if path.is_file() else [item for item in path.rglob("*") if item.is_file()]
    stats = [item.stat() for item in files]
    return {
        "size": sum(stat.st_size for stat in stats),
        "mtime_ns": max((stat.st_mtime_ns for stat in stats), default=0),
    }


def output_settings(plan: ScenePlan) -> dict:
    """What changes a scene's outputs, as JSON values: the plan's fields that say so
    and the model file's SHA-256 (plan.output_values)."""
    return plan_output_values(plan)


class Manifest:
    """manifest.json: {"scenes": {scene path: {inputs, settings, outputs {path: sha256},
    finished, summary}}}, rewritten atomically after each finished scene."""

    def __init__(self, path: Path):
        self.path = path
        self.scenes: dict[str, dict] = {}
        if path.exists():
            try:
                self.scenes = json.loads(path.read_text(encoding="utf-8"))["scenes"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"manifest {path} is not a manifest of 06; remove it.") from None

    @staticmethod
    def key(image: Path) -> str:
        return str(image.resolve())

    def finished(self, image: Path, settings: dict) -> dict | None:
        """The record of `image` when it finished with these inputs, output settings
        (`output_settings` of its plan) and outputs (checked by SHA-256); None when it
        must be (re)done."""
        record = self.scenes.get(self.key(image))
        if (
            record is None
            or not image.exists()
            or record["inputs"] != input_fingerprint(image)
            or record["settings"] != settings
        ):
            return None
        for name, digest in record["outputs"].items():
            if not Path(name).is_file() or file_sha256(Path(name)) != digest:
                return None
        return record

    def record(self, image: Path, settings: dict, outputs: SceneOutputs, summary: dict) -> None:
        self.scenes[self.key(image)] = {
            "inputs": input_fingerprint(image),
            "settings": settings,
            "outputs": {str(path): file_sha256(path) for path in outputs.files},
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "summary": {name: value for name, value in summary.items() if name != "text"},
        }
        write_atomic(self.path, {"scenes": self.scenes}, overwrite=True)


# ---------------------------------------------------------------------------
# Running the scenes
# ---------------------------------------------------------------------------


def failure_sentence(error: BaseException) -> str:
    """One sentence for a failed scene: an InputError's own, else the error's type too."""
    if isinstance(error, InputError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_in_process(plans: dict[Path, ScenePlan], finished) -> None:
    """The planned scenes one after another in this process, as 06 runs one scene."""
    for image in list(plans):
        try:
            summary = job.classify_one(plans.pop(image))
        except Exception as error:  # a bad scene fails alone, as a task on Dask does
            print(f"error: {failure_sentence(error)}")
            finished(image, None, error)
        else:
            finished(image, summary, None)


def submit_scene(client, run_plan: RunPlan, plan: ScenePlan, run: str) -> list:
    """The futures of one planned scene, the one that ends it last: a whole-scene task,
    or its strip tasks and the assembling task (keys named by scene and by `run`, so
    two runs on one cluster never share a task). The tasks carry 06's settings."""
    settings, image = run_plan.settings, plan.image
    bands = [(0, plan.scene.RasterYSize)]
    if run_plan.strip_rows:
        bands = job.row_strips(
            plan.scene.RasterYSize, run_plan.strip_rows, plan.stride, plan.block_rows
        )
    name = f"{scene_stem(image)}-{hashlib.sha1(str(image).encode()).hexdigest()[:8]}-{run}"
    if len(bands) == 1:
        return [client.submit(scene_task, settings, str(image), key=f"scene-{name}")]
    folder = plan.outputs.label.parent / f".{scene_stem(image)}.bands"
    shutil.rmtree(folder, ignore_errors=True)
    band_futures = [
        client.submit(
            band_task, settings, str(image), first, last, str(folder), key=f"band-{name}-{first}"
        )
        for first, last in bands
    ]
    assembled = client.submit(
        assemble_task, settings, str(image), band_futures, str(folder), key=f"scene-{name}"
    )
    return [*band_futures, assembled]


def run_on_dask(client, run_plan: RunPlan, plans: dict[Path, ScenePlan], finished) -> None:
    """The planned scenes as Dask tasks; a progress bar counts scenes (strips in its
    postfix)."""
    from dask.distributed import as_completed

    # Existing outputs are refused here, once; the workers' plans replace them
    # (worker_plan), as a task run again after its worker died may find its own.
    last_futures, all_futures = {}, []
    run = uuid.uuid4().hex[:8]
    for image in list(plans):
        plan = plans.pop(image)
        try:
            refuse_existing(plan.outputs.files, run_plan.overwrite)
            futures = submit_scene(client, run_plan, plan, run)
        except InputError as error:
            print(f"error: {error}")
            finished(image, None, error)
            continue
        last_futures[futures[-1].key] = image
        all_futures += futures
    bands_total = len(all_futures) - len(last_futures)
    bands_done = 0
    with progress_bar(
        total=len(last_futures), unit="scene", desc="scenes", disable=not run_plan.progress
    ) as bar:
        for future in as_completed(all_futures):
            image = last_futures.get(future.key)
            if image is None:
                bands_done += 1
                bar.set_postfix(bands=f"{bands_done}/{bands_total}")
                continue
            summary = future.result() if future.status != "error" else None
            if summary is None or "error" in summary:
                error = future.exception() if summary is None else InputError(summary["error"])
                bar.write(f"error: {failure_sentence(error)}")
                finished(image, None, error)
            else:
                bar.write(summary["text"])
                finished(image, summary, None)
            bar.update(1)


def classify_many(run_plan: RunPlan, images: list[Path], scheduler: str) -> list[dict]:
    """Classify `images` (scheduler "none", "local" or an address), skipping those the
    manifest has finished (unless OVERWRITE); write the summary and, for several
    scenes, the mosaic. Returns one row per scene (summary_row). InputError at the
    end when some scenes failed."""
    run_folder = run_plan.output_dir or common_folder(images)
    manifest = Manifest(run_folder / MANIFEST_FILE)
    rows: dict[Path, dict] = {}
    plans: dict[Path, ScenePlan] = {}  # the scenes to do, until they start
    planned: dict[Path, tuple[dict, SceneOutputs]] = {}  # output settings and files
    for image in images:
        try:
            plan = plan_scene(run_plan.settings, image, cached_model)
        except Exception as error:  # a bad scene fails alone, as a task on Dask does
            print(f"error: {failure_sentence(error)}")
            rows[image] = summary_row(image, "failed", None, failure_sentence(error))
            continue
        planned[image] = (output_settings(plan), plan.outputs)
        record = None if run_plan.overwrite else manifest.finished(image, planned[image][0])
        if record is None:
            plans[image] = plan
        else:
            print(f"{image}: finished before with these settings ({MANIFEST_FILE}); skipped.")
            rows[image] = summary_row(image, "skipped", record["summary"], None)

    def finished(image: Path, summary: dict | None, error: BaseException | None) -> None:
        if error is not None:
            rows[image] = summary_row(image, "failed", None, failure_sentence(error))
            return
        manifest.record(image, *planned[image], summary)
        rows[image] = summary_row(image, "done", summary, None)

    stopping = threading.Thread()
    if plans and scheduler == "none":
        run_in_process(plans, finished)
    elif plans:
        client = start_client(scheduler, run_plan.workers, run_plan.threads_per_worker)
        try:
            print(f"Dask: {len(client.nthreads())} workers; dashboard {client.dashboard_link}")
            run_on_dask(client, run_plan, plans, finished)
        except BaseException:
            stop_client(client, scheduler)
            raise
        # The workers take seconds to stop: meanwhile the summary and the mosaic are written.
        stopping = threading.Thread(target=stop_client, args=(client, scheduler))
    stopping.start()
    try:
        ordered = [rows[image] for image in images]
        write_summary(run_folder, ordered)
        if len(images) > 1:
            done = [planned[image][1] for image in images if rows[image]["done"]]
            write_mosaic(run_folder, done)
    finally:
        stopping.join()
    failed = [row for row in ordered if row["status"] == "failed"]
    if failed:
        raise InputError(
            f"{len(failed)} of {len(images)} scenes failed (first: {failed[0]['error']}); "
            f"see {run_folder / SUMMARY_CSV}."
        )
    return ordered


def stop_client(client, scheduler: str) -> None:
    """Close the client; an embedded cluster stops with its workers, a cluster's own stays up."""
    if scheduler == "local":
        client.shutdown()
    else:
        client.close()


def common_folder(images: list[Path]) -> Path:
    """The deepest folder holding every scene (the run's files go there without OUTPUT_DIR)."""
    return Path(os.path.commonpath([str(image.resolve().parent) for image in images]))


# ---------------------------------------------------------------------------
# Summary and mosaic
# ---------------------------------------------------------------------------


def summary_row(image: Path, status: str, summary: dict | None, error: str | None) -> dict:
    """scene, status (done | skipped | failed), seconds, windows/s, class shares (0..1 of
    the classified pixels), cloud share, error; "done": whether it has outputs."""
    row = {
        "scene": str(image),
        "status": status,
        "done": summary is not None,
        "seconds": None,
        "windows_per_second": None,
        "cloud_share": None,
        "shares": {},
        "error": error,
    }
    if summary is not None:
        seconds = summary.get("seconds") or 0.0
        classified = sum(summary["pixels"].values()) + summary["cloud"]
        row.update(
            seconds=round(seconds, 3),
            windows_per_second=round(summary["classified"] / max(seconds, 1e-9), 1),
            cloud_share=round(summary["cloud"] / max(classified, 1), 6),
            shares={
                name: round(count / max(classified, 1), 6)
                for name, count in summary["pixels"].items()
            },
            pixels=summary["pixels"],
            cloud=summary["cloud"],
        )
    return row


def write_summary(folder: Path, rows: list[dict]) -> None:
    """summary.json (the rows) and summary.csv (one column per class share)."""
    classes = list(dict.fromkeys(name for row in rows for name in row["shares"]))
    columns = ["scene", "status", "seconds", "windows_per_second"]
    columns += [f"share_{name}" for name in classes] + ["cloud_share", "error"]
    text = io.StringIO()
    table = csv.DictWriter(text, columns, lineterminator="\n")
    table.writeheader()
    for row in rows:
        shares = {f"share_{name}": row["shares"].get(name) for name in classes}
        table.writerow({**{name: row.get(name) for name in columns}, **shares})
    public = [
        {name: value for name, value in row.items() if name not in ("done", "pixels", "cloud")}
        for row in rows
    ]
    write_atomic(folder / SUMMARY_JSON, {"scenes": public}, overwrite=True)
    write_atomic(folder / SUMMARY_CSV, text.getvalue(), overwrite=True)


def write_mosaic(folder: Path, outputs: list[SceneOutputs]) -> None:
    """mosaic.vrt of the scenes' label maps (one layer for QGIS) and its quicklook;
    a note instead when GDAL cannot mosaic them (e.g. different coordinate systems)."""
    if not outputs:
        return
    labels = [str(scene_outputs.label) for scene_outputs in outputs]
    try:
        with atomic_output(folder / MOSAIC_FILE, overwrite=True) as temporary:
            mosaic = gdal.BuildVRT(str(temporary), labels)
            if mosaic is None or mosaic.RasterCount == 0:
                raise RuntimeError("no label map could be added")
            mosaic = None
        with atomic_output(folder / MOSAIC_QUICKLOOK, overwrite=True) as temporary:
            mosaic_quicklook(folder / MOSAIC_FILE, labels[0], temporary)
    except RuntimeError as error:
        print(f"note: no mosaic of the label maps: {error}")
        return
    print(f"wrote {folder / MOSAIC_FILE}\nwrote {folder / MOSAIC_QUICKLOOK}")


def mosaic_quicklook(mosaic_path: Path, first_label: str, output_path: Path) -> None:
    """The mosaic's label map, decimated, with every label's share (counted on the
    decimated mosaic), in the colours of the first scene's classes."""
    first = gdal.Open(first_label)
    category_names = first.GetRasterBand(1).GetCategoryNames() or []
    first = None
    class_names = [name for name in category_names[:CLOUD_LABEL] if name and name != CLOUD_NAME]
    mosaic = gdal.Open(str(mosaic_path))
    rows, cols = mosaic.RasterYSize, mosaic.RasterXSize
    scale = max(1.0, max(rows, cols) / quicklooks.QUICKLOOK_MAX_SIDE)
    shape = (max(1, round(rows / scale)), max(1, round(cols / scale)))
    labels = mosaic.GetRasterBand(1).ReadAsArray(buf_xsize=shape[1], buf_ysize=shape[0])
    counts = np.bincount(labels.ravel(), minlength=256)
    counts[LABEL_NODATA] = 0
    quicklooks.save_quicklook(
        labels, counts, output_path, class_names, f"mosaic of {mosaic_path.parent.name}"
    )
