"""Many scenes through 06: in this process, or on Dask distributed (an embedded
LocalCluster or an existing cluster), resumable.

    results = classify_many(plan.plan_run(settings), scenes, scheduler)

- Units of work: a scene that fits in BAND_ROWS rows is one task (job.classify_one
  on a worker); a larger one is cut into row strips (job.classify_rows, one task each,
  on any worker) and assembled by one more task (job.assemble_scene), with the same
  outputs as one process would write. Each task makes the scene's plan from 06's
  settings (plan.plan_scene); the client makes it too, for the manifest.
- Each worker process loads a model once and keeps it (`cached_model`:
  reading.load_scene_model with cache, keyed by path, modification time and thread):
  tasks carry 06's settings, never the model.
  TensorFlow's threads in a worker follow the worker's threads.
- Paths are made absolute here, on the client, before they are sent (the scene's, and
  OUTPUT_DIR and the model in RunPlan.task_settings): a worker of a cluster runs in its
  own working folder (scenes and outputs must be on storage that every worker sees at
  the same paths: one machine, or a shared file system).
- A worker that dies: Dask runs its tasks again elsewhere; strip files are written
  atomically and a finished strip is not redone, so outputs end complete.
- Interrupted (Ctrl-C, SIGTERM): the run's tasks are cancelled and a running one stops
  before its next block (`stop_if_cancelled`; also when its client or its scheduler
  is gone), so no output appears after the run has ended. The summary then says where
  the run stood: each scene done, skipped, failed, interrupted (begun) or not started.
  manifest.py records what was started and finished: the same command again skips
  finished scenes and redoes the others, also those whose outputs an interrupted run left.
- A scene that fails (bad input) fails alone, with its sentence in summary.csv/.json
  (summary.py, with the mosaic of several scenes).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import refuse_existing
from cnn_sentinel.scene import cluster, job
from cnn_sentinel.scene.listing import refuse_shared_outputs
from cnn_sentinel.scene.manifest import MANIFEST_FILE, Manifest, output_settings
from cnn_sentinel.scene.plan import RunPlan, SceneOutputs, ScenePlan, plan_scene
from cnn_sentinel.scene.reading import load_scene_model
from cnn_sentinel.scene.summary import (
    SUMMARY_CSV,
    SUMMARY_JSON,
    summary_row,
    write_mosaic,
    write_summary,
)

# The scene model loader of many scenes: each process keeps its models (Dask workers
# between tasks; this process between the scenes it plans).
cached_model = functools.partial(load_scene_model, cache=True)


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


@functools.cache
def set_up_worker_process() -> None:
    """In a Dask worker process, once, before its first model: give TensorFlow as many threads
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


def worker_plan(settings, image: str) -> ScenePlan:
    """The plan of a scene on a worker: with the cached model, without a progress bar,
    replacing outputs (existing ones were refused by the client, once; a task run again
    after its worker died may find the outputs it had written)."""
    set_up_worker_process()
    plan = plan_scene(settings, image, cached_model)
    return dataclasses.replace(plan, progress=False, overwrite=True)


def scene_task(settings, image: str) -> dict:
    """One whole scene on a worker: job.classify_one with the cached model; the lines
    it would print are returned as "text". A bad input is returned as {"error": its
    sentence} (an expected outcome, not a task failure for Dask to log)."""
    lines: list[str] = []
    try:
        plan = worker_plan(settings, image)
        summary = job.classify_one(plan, report=lines.append, stop=stop_if_cancelled)
    except InputError as error:
        return {"error": str(error)}
    return {**summary, "text": "\n".join(lines)}


def strip_task(settings, image: str, first_row: int, last_row: int, folder: str) -> dict:
    """One row strip of a scene on a worker (job.classify_rows with the cached model);
    a bad input as {"error": its sentence}."""
    try:
        plan = worker_plan(settings, image)
        return job.classify_rows(plan, first_row, last_row, folder, stop_if_cancelled)
    except InputError as error:
        return {"error": str(error)}


def assemble_task(settings, image: str, strips: list[dict], folder: str) -> dict:
    """The outputs of a scene from its strips (job.assemble_scene), or the first strip's
    error."""
    errors = [strip for strip in strips if "error" in strip]
    if errors:
        shutil.rmtree(folder, ignore_errors=True)
        return errors[0]
    try:
        return job.assemble_scene(worker_plan(settings, image), strips, folder, stop_if_cancelled)
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


def run_in_process(todo: dict[Path, ScenePlan], finished, begun: set[Path]) -> None:
    """The planned scenes one after another in this process, as 06 runs one scene; each
    is added to `begun` as it begins."""
    for image in list(todo):
        begun.add(image)
        try:
            summary = job.classify_one(todo.pop(image))
        except Exception as error:  # a bad scene fails alone, as a task on Dask does
            print(f"error: {failure_sentence(error)}")
            finished(image, None, error)
        else:
            finished(image, summary, None)


def submit_scene(client, run_plan: RunPlan, plan: ScenePlan, run: str) -> list:
    """The futures of one planned scene, the one that ends it last: a whole-scene task,
    or its strip tasks and the assembling task (keys named by scene and by `run`, so
    two runs on one cluster never share a task). The tasks carry 06's settings with
    every path absolute (RunPlan.task_settings), the scene's too."""
    settings, image = run_plan.task_settings(plan), str(absolute(plan.image))
    strips = [(0, plan.scene.RasterYSize)]
    if run_plan.strip_rows:
        strips = job.row_strips(
            plan.scene.RasterYSize, run_plan.strip_rows, plan.stride, plan.block_rows
        )
    name = f"{plan.stem}-{hashlib.sha1(image.encode()).hexdigest()[:8]}-{run}"
    if len(strips) == 1:
        return [client.submit(scene_task, settings, image, key=f"scene-{name}")]
    folder = absolute(plan.outputs.label.parent) / f".{plan.stem}.strips"
    shutil.rmtree(folder, ignore_errors=True)
    strip_futures = [
        client.submit(
            strip_task, settings, image, first, last, str(folder), key=f"strip-{name}-{first}"
        )
        for first, last in strips
    ]
    assembled = client.submit(
        assemble_task, settings, image, strip_futures, str(folder), key=f"scene-{name}"
    )
    return [*strip_futures, assembled]


def lost_scheduler(scheduler: str) -> InputError:
    return InputError(
        f"the Dask scheduler {scheduler} went away before this scene finished; start it and "
        "its workers again, then run the same command again (finished scenes are kept)."
    )


def submit_scenes(
    client, run_plan: RunPlan, todo, run: str, last_futures: dict, all_futures: list, finished
):
    """Submit each planned scene's tasks, filling last_futures {key of the task that ends
    a scene: image} and all_futures; a scene that cannot be submitted fails. Existing
    outputs were refused before, once; a task run again after its worker died may find
    the outputs it had written, and replaces them (worker_plan). Returns {key of each
    task: its image}."""
    scene_keys: dict[str, Path] = {}
    for image in list(todo):
        plan = todo.pop(image)
        try:
            futures = submit_scene(client, run_plan, plan, run)
        except InputError as error:
            print(f"error: {error}")
            finished(image, None, error)
            continue
        last_futures[futures[-1].key] = image
        all_futures += futures
        scene_keys.update(dict.fromkeys((future.key for future in futures), image))
    return scene_keys


def collect_scenes(
    scheduler: str,
    progress: bool,
    last_futures: dict,
    all_futures: list,
    finished,
    begun_strip=lambda key: None,
):
    """Each scene's result as its last task ends (a progress bar counts scenes, strips in
    its postfix; `begun_strip` is called with the key of each strip that ends), its key
    then taken out of `last_futures`; a scene whose task a lost scheduler cancelled fails
    with that sentence."""
    from dask.distributed import as_completed

    strips_total = len(all_futures) - len(last_futures)
    strips_done = 0
    with progress_bar(
        total=len(last_futures), unit="scene", desc="scenes", disable=not progress
    ) as bar:
        for future in as_completed(all_futures):
            image = last_futures.pop(future.key, None)
            if image is None:
                begun_strip(future.key)
                strips_done += 1
                bar.set_postfix(strips=f"{strips_done}/{strips_total}")
                continue
            take_result(future, image, scheduler, finished, bar.write)
            bar.update(1)


def take_result(future, image: Path, scheduler: str, finished, report=print) -> None:
    """The ended last task of a scene: `finished` with its summary or its error (a task
    that a lost scheduler cancelled: that sentence); the scene's lines go to `report`."""
    summary = future.result() if future.status == "finished" else {}
    if future.status == "cancelled":
        error = lost_scheduler(scheduler)
    elif future.status == "error":
        error = future.exception()
    else:
        error = InputError(summary["error"]) if "error" in summary else None
    if error is not None:
        report(f"error: {failure_sentence(error)}")
        finished(image, None, error)
    else:
        report(summary["text"])
        finished(image, summary, None)


def run_on_dask(
    client,
    scheduler: str,
    run_plan: RunPlan,
    todo: dict[Path, ScenePlan],
    finished,
    begun: set[Path],
) -> None:
    """The planned scenes as Dask tasks; `begun` gets each scene whose tasks began (a strip
    ended, or a task ran when the run was interrupted). Interrupted (KeyboardInterrupt:
    Ctrl-C or SIGTERM): the run's tasks are cancelled and stopped on the workers before
    it goes on."""
    last_futures: dict = {}
    all_futures: list = []
    scene_keys: dict[str, Path] = {}
    run = uuid.uuid4().hex[:8]

    def take_ended() -> None:
        """Scenes whose last task ended before its result was taken: finished (their
        outputs are complete)."""
        for future in all_futures:
            if future.key in last_futures and future.status == "finished":
                take_result(future, last_futures.pop(future.key), scheduler, finished)

    try:
        scene_keys = submit_scenes(client, run_plan, todo, run, last_futures, all_futures, finished)
        collect_scenes(
            scheduler,
            run_plan.progress,
            last_futures,
            all_futures,
            finished,
            lambda key: begun.add(scene_keys[key]),
        )
    except KeyboardInterrupt:
        print("interrupted: stopping the run's tasks on the Dask workers...", file=sys.stderr)
        take_ended()
        # Begun: a task of the scene runs now, or one of its tasks (a strip) ended.
        running = cluster.running_tasks(client, run)
        ended = [future.key for future in all_futures if future.done()]
        begun.update(scene_keys[key] for key in [*running, *ended] if key in scene_keys)
        stopped = cluster.stop_tasks(client, all_futures, run)
        take_ended()  # ended while the others stopped
        if not stopped:
            print(
                f"note: some of the run's tasks still run on the workers of {scheduler}; "
                "they stop before their next block.",
                file=sys.stderr,
            )
        raise


def refuse_outputs(manifest: Manifest, image: Path, values: dict, outputs: SceneOutputs) -> None:
    """InputError when `outputs` of `image` exist and are not this command's to replace:
    the manifest's reason (the scene changed, other settings) or that they exist."""
    reason = manifest.refusal(image, values, outputs)
    if reason and any(path.exists() for path in outputs.files):
        raise InputError(reason)
    refuse_existing(outputs.files, False)


def classify_many(run_plan: RunPlan, images: list[Path], scheduler: str) -> list[dict]:
    """Classify `images` (scheduler "none", "local" or an address), skipping those the
    manifest has finished (unless OVERWRITE); write the summary and, for several
    scenes, the mosaic. Returns one row per scene (summary_row). InputError at the
    end when some scenes failed."""
    refuse_shared_outputs(run_plan, images)
    run_folder = run_plan.output_dir or common_folder(images)
    manifest = Manifest(run_folder / MANIFEST_FILE)
    rows: dict[Path, dict] = {}
    planned: dict[Path, tuple[dict, SceneOutputs]] = {}  # output settings and files

    def finished(image: Path, summary: dict | None, error: BaseException | None) -> None:
        if error is not None:
            rows[image] = summary_row(image, "failed", None, failure_sentence(error))
            return
        manifest.record(image, *planned[image], summary)
        rows[image] = summary_row(image, "done", summary, None)

    # Existing outputs are replaced with --overwrite, or when an earlier run of this
    # command started the scene and never finished it; otherwise refused, saying why.
    todo: dict[Path, ScenePlan] = {}  # the scenes to do, until they start
    for image in images:
        try:
            plan = plan_scene(run_plan.settings, image, cached_model)
        except Exception as error:  # a bad scene fails alone, as a task on Dask does
            print(f"error: {failure_sentence(error)}")
            finished(image, None, error)
            continue
        values = output_settings(plan)
        planned[image] = (values, plan.outputs)
        record = None if run_plan.overwrite else manifest.finished(image, values)
        if record is not None:
            print(f"{image}: finished before with these settings ({MANIFEST_FILE}); skipped.")
            rows[image] = summary_row(image, "skipped", record["summary"], None)
            continue
        replace = run_plan.overwrite or manifest.started(image, values)
        try:
            if not replace:
                refuse_outputs(manifest, image, values, plan.outputs)
        except InputError as error:
            print(f"error: {error}")
            finished(image, None, error)
            continue
        todo[image] = dataclasses.replace(plan, overwrite=replace)
    manifest.start({image: planned[image][0] for image in todo})

    begun: set[Path] = set()  # scenes this run began (those not finished: interrupted)
    try:
        stopping = run_scenes(run_plan, todo, scheduler, finished, begun)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the summary says where the run stood
        write_summary(run_folder, interrupted_rows(images, rows, begun))
        print(f"wrote {run_folder / SUMMARY_JSON} (the run so far)")
        raise
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


def run_scenes(
    run_plan: RunPlan, todo: dict[Path, ScenePlan], scheduler: str, finished, begun: set[Path]
) -> threading.Thread:
    """Run the planned scenes (scheduler "none": in this process; else on Dask), adding
    each that begins to `begun`. Returns the thread that stops the Dask client (not yet
    started: the workers take seconds to stop, meanwhile the summary is written)."""
    if todo and scheduler == "none":
        run_in_process(todo, finished, begun)
    elif todo:
        client = cluster.start_client(scheduler, run_plan.workers, run_plan.threads_per_worker)
        try:
            print(cluster.describe_client(client))
            cluster.prepare_cluster(client, scheduler)
            run_on_dask(client, scheduler, run_plan, todo, finished, begun)
        except BaseException:
            cluster.stop_client(client, scheduler)
            raise
        return threading.Thread(target=cluster.stop_client, args=(client, scheduler))
    return threading.Thread()


def interrupted_rows(images: list[Path], rows: dict[Path, dict], begun: set[Path]) -> list[dict]:
    """The summary rows of an interrupted run: each scene's row where it has one (done,
    skipped, failed), else "interrupted" where the run had begun it, else "not started"."""
    return [
        rows.get(image)
        or summary_row(image, "interrupted" if image in begun else "not started", None, None)
        for image in images
    ]


def common_folder(images: list[Path]) -> Path:
    """The deepest folder holding every scene (the run's files go there without OUTPUT_DIR)."""
    return Path(os.path.commonpath([str(image.resolve().parent) for image in images]))
