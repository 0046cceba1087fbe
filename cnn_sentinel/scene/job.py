"""One scene through 06: classify its plan, write the outputs and print the summary.

    plan = plan.plan_scene(settings, image)     # the scene, its model, every decision
    summary = classify_one(plan)

A large scene can also be classified in row strips, each on its own (on different
Dask workers, see many.py), and the strips assembled into the same outputs:

    counts = classify_rows(plan, first_row, last_row, folder)   # per strip
    summary = assemble_scene(plan, [counts, ...], folder)        # then once

The strip's windows read the scene's real rows above and below it (only the scene's
own edges are mirrored), so the assembled outputs equal the whole-scene run's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from osgeo import gdal

from cnn_sentinel.outputs import (
    atomic_output,
    folder_lock,
    outputs_need,
    refuse_existing,
    write_atomic,
)
from cnn_sentinel.scene import clouds, writers
from cnn_sentinel.scene.plan import SceneOutputs, ScenePlan
from cnn_sentinel.scene.runner import SceneClassification, prepare_classification
from cnn_sentinel.scene.stac import remote_read_errors


def stop_step(stop: Callable[[], None]):
    """A block step that calls `stop` before each block is written (it raises to end
    the run early, e.g. a Dask task whose run was interrupted)."""

    def step(block):
        stop()
        return block

    return step


def cloud_steps(plan: ScenePlan, first_row: int = 0, last_row: int | None = None) -> list:
    """The block steps of a run (the cloud mask when the plan masks), for rows first..last."""
    if not plan.masking:
        return []
    return [
        clouds.CloudMaskStep(
            plan.scene, plan.cloud_bands, plan.cloud, first_row=first_row, last_row=last_row
        )
    ]


def banner(plan: ScenePlan, classification: SceneClassification) -> str:
    """06's first line for a scene: what it reads, with which model, how."""
    return (
        f"{plan.image}: {classification.describe()} (model {plan.model_path}{plan.model_words}), "
        f"stride {plan.stride}{antialias_words(plan.stride, plan.antialias)}; "
        f"{plan.masking_words}"
    )


def antialias_words(stride: int, antialias: int) -> str:
    """The banner's words for ANTIALIAS: only stride 1 averages windows."""
    if stride != 1 or antialias == 1:
        return ""
    return f", each window averaged with its neighbours over {antialias} px (antialias)"


def finish_rasters(plan: ScenePlan, temporaries: list[Path]) -> None:
    """Make the written label and probability GeoTIFFs Cloud-Optimized (the plan's cog)."""
    if plan.cog:
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


def scene_lock(outputs: SceneOutputs, stem: str):
    """One run at a time writes a scene's outputs (`stem`_*) into their folder; a second
    is refused in one sentence (a context manager, outputs.folder_lock)."""
    return folder_lock(
        outputs.label.parent,
        stem,
        f"output folder {outputs.label.parent} (outputs {stem}_*)",
        "wait for that run to end or give another --output-dir",
    )


def classify_one(
    plan: ScenePlan,
    report: Callable[[str], object] = print,
    stop: Callable[[], None] | None = None,
    locked: bool = False,
) -> dict:
    """Classify the planned scene: writes <stem>_label.tif, <stem>_prob.tif
    (Cloud-Optimized with cog) and (quicklook) <stem>_quicklook.png, prints (through
    `report`) the banner, the timing, the class shares and the files written; returns
    the run's counts (runner.SceneClassification.run) with "seconds" and "method".
    InputError for every bad input, and for a STAC item's asset that breaks off midway
    (stac.remote_read_errors). `stop`: called before each block is written and once more
    before the outputs are put in place, it may raise to end the run (nothing is left
    half-written). `locked`: the caller holds scene_lock already (06 takes it before the
    model loads)."""
    with contextlib.ExitStack() as stack:
        if not locked:
            stack.enter_context(scene_lock(plan.outputs, plan.stem))
        with remote_read_errors(plan.image, plan.stem):
            return _classify_into(plan, report, stop)


def _classify_into(plan: ScenePlan, report, stop) -> dict:
    """classify_one's work once the outputs' folder is locked."""
    outputs = plan.outputs
    refuse_existing(outputs.files, plan.overwrite)
    classification = prepare_classification(plan)
    report(banner(plan, classification))

    gdal.SetCacheMax(plan.gdal_cache_mb * 2**20)
    started = time.perf_counter()
    class_names = plan.info.class_names
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            outputs_need(
                outputs.label.parent,
                f"the outputs of {plan.stem}",
                writers.output_bytes(plan.scene, len(class_names), plan.probabilities),
            )
        )
        temporary = [
            stack.enter_context(atomic_output(path, plan.overwrite)) for path in outputs.files
        ]
        scene_writers = writers.output_writers(
            plan.scene,
            class_names,
            *temporary[:2],
            quicklook_path=temporary[2] if plan.quicklook else None,
            probabilities=plan.probabilities,
            title=f"{plan.stem} ({plan.precision})",
            clouds=plan.masking,
            class_colours=plan.info.class_colours,
        )
        summary = classification.run(
            scene_writers, steps=[*cloud_steps(plan), *([stop_step(stop)] if stop else [])]
        )
        writers.write_record(temporary[0], classification.record())
        finish_rasters(plan, temporary)
        if stop:
            stop()  # the last moment to end the run before the outputs appear
    writers.write_category_names(outputs.label, clouds.category_names(class_names, plan.masking))
    seconds = time.perf_counter() - started
    report("\n".join(summary_lines(summary, seconds, classification.method, outputs)))
    return {**summary, "seconds": seconds, "method": classification.method}


# ---------------------------------------------------------------------------
# Row strips of a scene: classified apart, assembled into the same outputs
# ---------------------------------------------------------------------------


def row_strips(rows: int, strip_rows: int, stride: int, block_rows: int) -> list[tuple[int, int]]:
    """(first_row, last_row) of the strips of a scene of `rows` rows: `strip_rows` rows
    each (06's BAND_ROWS), rounded down to whole row blocks (the block rows rounded to
    the stride, as a run streams them), so every strip is read in the same blocks as
    the whole scene."""
    block = max(stride, block_rows // stride * stride)
    strip = max(block, strip_rows // block * block)
    return [(first, min(rows, first + strip)) for first in range(0, rows, strip)]


def strip_files(folder: Path, first_row: int) -> tuple[Path, Path, Path]:
    """The strip's label and probability GeoTIFFs and its counts (JSON), in `folder`."""
    name = f"rows{first_row:06d}"
    return folder / f"{name}_label.tif", folder / f"{name}_prob.tif", folder / f"{name}.json"


def classify_rows(
    plan: ScenePlan,
    first_row: int,
    last_row: int,
    folder: str | Path,
    stop: Callable[[], None] | None = None,
) -> dict:
    """Classify output rows first_row..last_row-1 of the planned scene into strip files
    in `folder` (their windows read the scene's rows around the strip); returns the
    strip's counts with its rows, classes, cloud mask and seconds. A strip finished
    before (its counts file exists, e.g. written just before its worker died) is not
    redone. `stop` as classify_one's."""
    folder = Path(folder)
    _, _, counts_path = strip_files(folder, first_row)
    if counts_path.exists():
        return json.loads(counts_path.read_text(encoding="utf-8"))
    with remote_read_errors(plan.image, plan.stem):
        return _classify_rows_into(plan, first_row, last_row, folder, stop)


def _classify_rows_into(plan: ScenePlan, first_row: int, last_row: int, folder: Path, stop):
    """classify_rows' work once its strip is known to be undone."""
    label_path, probability_path, counts_path = strip_files(folder, first_row)
    classification = prepare_classification(plan)
    scene = plan.scene
    strip = gdal.Translate(
        "", scene, format="VRT", srcWin=[0, first_row, scene.RasterXSize, last_row - first_row]
    )
    started = time.perf_counter()
    class_names = plan.info.class_names
    with contextlib.ExitStack() as stack:
        label_file = stack.enter_context(atomic_output(label_path, overwrite=True))
        probability_file = stack.enter_context(atomic_output(probability_path, overwrite=True))
        strip_writers = [
            writers.LabelWriter(
                strip, label_file, class_names, plan.masking, first_row, plan.info.class_colours
            ),
            writers.ProbabilityWriter(
                strip, probability_file, class_names, plan.probabilities, first_row
            ),
        ]
        counts = classification.run(
            strip_writers,
            progress=False,
            steps=[
                *cloud_steps(plan, first_row, last_row),
                *([stop_step(stop)] if stop else []),
            ],
            first_row=first_row,
            last_row=last_row,
        )
    counts.update(
        first_row=first_row,
        last_row=last_row,
        class_names=list(class_names),
        clouds=plan.masking,
        precision=plan.precision,
        method=classification.method,
        banner=banner(plan, classification),
        record=classification.record(),
        seconds=time.perf_counter() - started,
    )
    write_atomic(counts_path, counts, overwrite=True)
    return counts


def assemble_scene(
    plan: ScenePlan,
    strips: list[dict],
    folder: str | Path,
    stop: Callable[[], None] | None = None,
) -> dict:
    """Write the outputs of the planned scene from its strip files in `folder`
    (classify_rows' counts of every strip, any order), then delete the folder. Returns
    the scene's counts as classify_one does (seconds: the strips' time added up) and
    "text", the lines classify_one prints. `stop`: called before each strip is copied
    and before the outputs are put in place (it may raise)."""
    folder = Path(folder)
    strips = sorted(strips, key=lambda strip: strip["first_row"])
    first = strips[0]
    class_names, masking = first["class_names"], first["clouds"]
    outputs = plan.outputs
    gdal.SetCacheMax(plan.gdal_cache_mb * 2**20)
    with contextlib.ExitStack() as stack:
        temporary = [
            stack.enter_context(atomic_output(path, plan.overwrite)) for path in outputs.files
        ]
        scene_writers = writers.output_writers(
            plan.scene,
            class_names,
            *temporary[:2],
            quicklook_path=temporary[2] if plan.quicklook else None,
            probabilities=plan.probabilities,
            title=f"{plan.stem} ({first['precision']})",
            clouds=masking,
            class_colours=plan.info.class_colours,
        )
        try:
            for strip in strips:
                if stop:
                    stop()
                copy_strip(folder, strip, scene_writers, plan.block_rows)
            for writer in scene_writers:
                writer.finish()
        finally:
            for writer in scene_writers:
                writer.close()
        writers.write_record(temporary[0], first["record"])
        finish_rasters(plan, temporary)
        if stop:
            stop()  # the last moment to end the run before the outputs appear
    writers.write_category_names(outputs.label, clouds.category_names(class_names, masking))
    shutil.rmtree(folder, ignore_errors=True)
    summary = {
        "windows": sum(strip["windows"] for strip in strips),
        "classified": sum(strip["classified"] for strip in strips),
        "pixels": {
            name: sum(strip["pixels"][name] for strip in strips) for name in first["pixels"]
        },
        "cloud": sum(strip["cloud"] for strip in strips),
        "nodata": sum(strip["nodata"] for strip in strips),
        "seconds": sum(strip["seconds"] for strip in strips),
        "method": first["method"],
    }
    lines = summary_lines(summary, summary["seconds"], summary["method"], outputs)
    return {**summary, "text": "\n".join([first["banner"], *lines])}


def copy_strip(folder: Path, strip: dict, scene_writers: list, block_rows: int) -> None:
    """Feed the rows of one strip's file pair to the scene's writers (label,
    probability, then the quicklook if any), `block_rows` rows at a time."""
    label_path, probability_path, _ = strip_files(folder, strip["first_row"])
    labels = gdal.Open(str(label_path), gdal.GA_ReadOnly)
    probabilities = gdal.Open(str(probability_path), gdal.GA_ReadOnly)
    cols = labels.RasterXSize
    for top in range(0, labels.RasterYSize, block_rows):
        count = min(block_rows, labels.RasterYSize - top)
        label_rows = labels.GetRasterBand(1).ReadAsArray(0, top, cols, count)
        probability_rows = probabilities.ReadAsArray(0, top, cols, count)
        probability_rows = np.reshape(probability_rows, (-1, count, cols))
        scene_writers[0].write_rows(strip["first_row"] + top, [label_rows])
        scene_writers[1].write_rows(strip["first_row"] + top, list(probability_rows))
        if len(scene_writers) > 2:
            scene_writers[2].add_rows(strip["first_row"] + top, label_rows)
