"""Many scenes through 06: in this process, or on Dask distributed (an embedded
LocalCluster or an existing cluster), resumable.

    results = classify_many(settings, scenes, scheduler)

- Units of work: a scene that fits in BAND_ROWS rows is one task (job.classify_one
  on a worker); a larger one is cut into row bands (job.classify_band, one task each,
  on any worker) and assembled by one more task (job.assemble_scene), with the same
  outputs as one process would write.
- Each worker process loads a model once and keeps it (`cached_model`, keyed by
  path and modification time): tasks carry the model's path, never the model.
  TensorFlow's threads in a worker follow the worker's threads.
- Paths are made absolute here, on the client, before they are sent: a worker of a
  cluster runs in its own working folder (scenes and outputs must be on storage that
  every worker sees at the same paths: one machine, or a shared file system).
- A worker that dies: Dask runs its tasks again elsewhere; band files are written
  atomically and a finished band is not redone, so outputs end complete.
- Interrupted (Ctrl-C, SIGTERM): the run's tasks are cancelled and a running one stops
  before its next block (`stop_if_cancelled`; also when its client or its scheduler
  is gone), so no output appears after the run has ended. manifest.py records what
  was started and finished: the same command again skips finished scenes and redoes
  the others, also those whose outputs an interrupted run left.
- A scene that fails (bad input) fails alone, with its sentence in summary.csv/.json
  (summary.py, with the mosaic of several scenes).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.outputs import refuse_existing
from cnn_sentinel.scene import cluster, job
from cnn_sentinel.scene.listing import refuse_shared_outputs
from cnn_sentinel.scene.manifest import MANIFEST_FILE, Manifest
from cnn_sentinel.scene.reading import load_scene_model, scene_stem
from cnn_sentinel.scene.summary import SUMMARY_CSV, summary_row, write_mosaic, write_summary


def changed(settings: argparse.Namespace, **values) -> argparse.Namespace:
    """A copy of 06's settings with some values changed (the original is never changed)."""
    return argparse.Namespace(**{**vars(settings), **values})


def absolute(path: str | Path) -> Path:
    """`path` from this process's working folder, for a process that has another one."""
    return Path(os.path.abspath(path))


# ---------------------------------------------------------------------------
# Worker side: the model cache and the tasks
# ---------------------------------------------------------------------------


class TaskCancelledError(Exception):
    """The task's run no longer wants it: cancelled by an interrupted client, its client
    gone, or its worker closing (its scheduler gone)."""


def stop_if_cancelled() -> None:
    """In a Dask task, before each block: TaskCancelledError when the task is cancelled
    or its worker is closing (Dask cannot stop a running thread; the task stops itself,
    its partial outputs removed as after Ctrl-C). Outside a Dask task: nothing."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    task = worker.state.tasks.get(worker.get_current_task())
    if (
        task is None
        or task.state in ("cancelled", "released", "forgotten")
        or worker.status.name not in ("running", "paused")
    ):
        raise TaskCancelledError("the run no longer wants this task")


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
    key = (str(resolved), resolved.stat().st_mtime_ns, threading.get_ident())
    if key not in _LOADED_MODELS:
        set_up_worker_process()
        model, config = load_scene_model(resolved)
        _LOADED_MODELS[key] = (model, config, model.get_weights())
    model, config, weights = _LOADED_MODELS[key]
    model.set_weights(weights)
    return model, config


def scene_task(settings: argparse.Namespace, image: str) -> dict:
    """One whole scene on a worker: job.classify_one with the cached model; the lines
    it would print are returned as "text". A bad input is returned as {"error": its
    sentence} (an expected outcome, not a task failure for Dask to log)."""
    lines: list[str] = []
    try:
        summary = job.classify_one(
            settings, image, cached_model, report=lines.append, stop=stop_if_cancelled
        )
    except InputError as error:
        return {"error": str(error)}
    return {**summary, "text": "\n".join(lines)}


def band_task(
    settings: argparse.Namespace, image: str, first_row: int, last_row: int, folder: str
) -> dict:
    """One row band of a scene on a worker (job.classify_band with the cached model);
    a bad input as {"error": its sentence}."""
    try:
        return job.classify_band(
            settings, image, first_row, last_row, folder, cached_model, stop_if_cancelled
        )
    except InputError as error:
        return {"error": str(error)}


def assemble_task(settings: argparse.Namespace, image: str, bands: list[dict], folder: str) -> dict:
    """The outputs of a scene from its bands (job.assemble_scene), or the first band's error."""
    errors = [band for band in bands if "error" in band]
    if errors:
        shutil.rmtree(folder, ignore_errors=True)
        return errors[0]
    try:
        return job.assemble_scene(settings, image, bands, folder, stop_if_cancelled)
    except InputError as error:
        return {"error": str(error)}


# ---------------------------------------------------------------------------
# Running the scenes
# ---------------------------------------------------------------------------


def failure_sentence(error: BaseException) -> str:
    """One sentence for a failed scene: an InputError's own, else the error's type too."""
    if isinstance(error, InputError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def run_in_process(todo: dict[Path, argparse.Namespace], finished) -> None:
    """The scenes one after another in this process (each with its settings), as 06 runs
    one scene."""
    for image, settings in todo.items():
        try:
            summary = job.classify_one(settings, image)
        except Exception as error:  # a bad scene fails alone, as a task on Dask does
            print(f"error: {failure_sentence(error)}")
            finished(image, None, error)
        else:
            finished(image, summary, None)


def submit_scene(client, settings, image: Path, run: str) -> list:
    """The futures of one scene, the one that ends it last: a whole-scene task, or
    its band tasks and the assembling task (keys named by scene and by `run`, so two
    runs on one cluster never share a task). Every path is sent absolute, the model
    of MODEL auto chosen here (the workers' copy of the project may have no models/)."""
    image = absolute(image)
    scene = job.open_settings_scene(settings, image)
    model, _words = job.scene_model(settings, scene)
    settings = changed(settings, model=str(absolute(model)))
    bands = [(0, scene.RasterYSize)]
    if settings.band_rows:
        bands = job.row_bands(
            scene.RasterYSize, settings.band_rows, settings.stride, settings.block_rows
        )
    name = f"{scene_stem(image)}-{hashlib.sha1(str(image).encode()).hexdigest()[:8]}-{run}"
    if len(bands) == 1:
        return [client.submit(scene_task, settings, str(image), key=f"scene-{name}")]
    outputs = job.scene_outputs(settings, image)
    folder = outputs.label.parent / f".{scene_stem(image)}.bands"
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


def lost_scheduler(scheduler: str) -> InputError:
    return InputError(
        f"the Dask scheduler {scheduler} went away before this scene finished; start it and "
        "its workers again, then run the same command again (finished scenes are kept)."
    )


def submit_scenes(client, todo, run: str, last_futures: dict, all_futures: list, finished):
    """Submit each scene's tasks (paths absolute), filling last_futures {key of the task
    that ends a scene: image} and all_futures; a scene that cannot be submitted fails."""
    for image, settings in todo.items():
        # Existing outputs were refused before, once; a task run again after its worker
        # died may find the outputs it had written, and replaces them.
        worker_settings = changed(
            settings,
            progress=False,
            overwrite=True,
            output_dir=str(absolute(settings.output_dir)) if settings.output_dir else None,
        )
        try:
            futures = submit_scene(client, worker_settings, image, run)
        except InputError as error:
            print(f"error: {error}")
            finished(image, None, error)
            continue
        last_futures[futures[-1].key] = image
        all_futures += futures


def collect_scenes(scheduler: str, progress: bool, last_futures: dict, all_futures: list, finished):
    """Each scene's result as its last task ends (a progress bar counts scenes, bands in
    its postfix); a scene whose task a lost scheduler cancelled fails with that sentence."""
    from dask.distributed import as_completed

    bands_total = len(all_futures) - len(last_futures)
    bands_done = 0
    with progress_bar(
        total=len(last_futures), unit="scene", desc="scenes", disable=not progress
    ) as bar:
        for future in as_completed(all_futures):
            image = last_futures.get(future.key)
            if image is None:
                bands_done += 1
                bar.set_postfix(bands=f"{bands_done}/{bands_total}")
                continue
            summary = future.result() if future.status == "finished" else {}
            if future.status == "cancelled":
                error = lost_scheduler(scheduler)
            elif future.status == "error":
                error = future.exception()
            else:
                error = InputError(summary["error"]) if "error" in summary else None
            if error is not None:
                bar.write(f"error: {failure_sentence(error)}")
                finished(image, None, error)
            else:
                bar.write(summary["text"])
                finished(image, summary, None)
            bar.update(1)


def run_on_dask(client, scheduler: str, todo: dict[Path, argparse.Namespace], finished) -> None:
    """The scenes as Dask tasks. Interrupted (KeyboardInterrupt: Ctrl-C or SIGTERM): the
    run's tasks are cancelled and stopped on the workers before it goes on."""
    last_futures: dict = {}
    all_futures: list = []
    run = uuid.uuid4().hex[:8]
    progress = any(settings.progress for settings in todo.values())
    try:
        submit_scenes(client, todo, run, last_futures, all_futures, finished)
        collect_scenes(scheduler, progress, last_futures, all_futures, finished)
    except KeyboardInterrupt:
        print("interrupted: stopping the run's tasks on the Dask workers...", file=sys.stderr)
        if not cluster.stop_tasks(client, all_futures, run):
            print(
                f"note: some of the run's tasks still run on the workers of {scheduler}; "
                "they stop before their next block.",
                file=sys.stderr,
            )
        raise


def refuse_outputs(manifest: Manifest, settings, image: Path) -> None:
    """InputError when outputs of `image` exist and are not this command's to replace:
    the manifest's reason (the scene changed, other settings) or that they exist."""
    files = job.scene_outputs(settings, image).files
    reason = manifest.refusal(image, settings)
    if reason and any(path.exists() for path in files):
        raise InputError(reason)
    refuse_existing(files, False)


def classify_many(settings: argparse.Namespace, images: list[Path], scheduler: str) -> list[dict]:
    """Classify `images` (scheduler "none", "local" or an address), skipping those the
    manifest has finished (unless OVERWRITE); write the summary and, for several
    scenes, the mosaic. Returns one row per scene (summary_row). InputError at the
    end when some scenes failed."""
    refuse_shared_outputs(settings, images)
    run_folder = Path(settings.output_dir) if settings.output_dir else common_folder(images)
    manifest = Manifest(run_folder / MANIFEST_FILE)
    rows: dict[Path, dict] = {}

    def finished(image: Path, summary: dict | None, error: BaseException | None) -> None:
        if error is not None:
            rows[image] = summary_row(image, "failed", None, failure_sentence(error))
            return
        manifest.record(image, settings, summary)
        rows[image] = summary_row(image, "done", summary, None)

    # Existing outputs are replaced with --overwrite, or when an earlier run of this
    # command started the scene and never finished it; otherwise refused, saying why.
    todo: dict[Path, argparse.Namespace] = {}
    for image in images:
        record = None if settings.overwrite else manifest.finished(image, settings)
        if record is not None:
            print(f"{image}: finished before with these settings ({MANIFEST_FILE}); skipped.")
            rows[image] = summary_row(image, "skipped", record["summary"], None)
            continue
        replace = settings.overwrite or manifest.started(image, settings)
        try:
            if not replace:
                refuse_outputs(manifest, settings, image)
        except InputError as error:
            print(f"error: {error}")
            finished(image, None, error)
            continue
        todo[image] = changed(settings, overwrite=replace)
    manifest.start([image for image in todo if image.exists()], settings)

    stopping = threading.Thread()
    if todo and scheduler == "none":
        run_in_process(todo, finished)
    elif todo:
        client = cluster.start_client(scheduler, settings.workers, settings.threads_per_worker)
        try:
            print(cluster.describe_client(client))
            cluster.prepare_cluster(client, scheduler)
            run_on_dask(client, scheduler, todo, finished)
        except BaseException:
            cluster.stop_client(client, scheduler)
            raise
        # The workers take seconds to stop: meanwhile the summary and the mosaic are written.
        stopping = threading.Thread(target=cluster.stop_client, args=(client, scheduler))
    stopping.start()
    try:
        ordered = [rows[image] for image in images]
        write_summary(run_folder, ordered)
        if len(images) > 1:
            done = [image for image in images if rows[image]["done"]]
            write_mosaic(run_folder, settings, done)
    finally:
        stopping.join()
    failed = [row for row in ordered if row["status"] == "failed"]
    if failed:
        raise InputError(
            f"{len(failed)} of {len(images)} scenes failed (first: {failed[0]['error']}); "
            f"see {run_folder / SUMMARY_CSV}."
        )
    return ordered


def common_folder(images: list[Path]) -> Path:
    """The deepest folder holding every scene (the run's files go there without OUTPUT_DIR)."""
    return Path(os.path.commonpath([str(image.resolve().parent) for image in images]))
