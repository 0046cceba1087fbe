"""The runner: a planned scene and its model classified together, block by block.

    classification = prepare_classification(plan)     # plan.plan_scene's ScenePlan
    summary = classification.run(writers)

`prepare_classification` puts the plan's model under its precision, adapts its batch
normalisation to the scene (adaptation.py) and chooses the method (dense where the
model allows it exactly). `run` streams the scene:
    reading.read_blocks -> predictor -> block steps -> writers.
- A predictor (predictors.py, dense.py) turns each ReadBlock into a PredictedBlock.
- Block steps are functions PredictedBlock -> PredictedBlock run in order before
  the writers (clouds.CloudMaskStep marks the pixels under cloud); a step
  sees the block's pixels through `block.source.pixels`.
- Writers (writers.py) take every PredictedBlock in order; `finish()` completes
  the output, `close()` releases it (also after an error).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.networks import custom_objects, with_dihedral_averaging
from cnn_sentinel.scene.adaptation import (
    Adaptation,
    batch_normalization_layers,
    copy_model,
    sample_windows,
)
from cnn_sentinel.scene.adaptation import adapt as adapt_model
from cnn_sentinel.scene.blocks import CLOUD_LABEL, LABEL_NODATA, PredictedBlock
from cnn_sentinel.scene.dense import (
    DensePredictor,
    dense_unsupported_reason,
    dihedral_unsupported_reason,
)
from cnn_sentinel.scene.plan import ScenePlan
from cnn_sentinel.scene.predictors import Predictor, WindowPredictor, make_predictor
from cnn_sentinel.scene.products import dn_offset_words
from cnn_sentinel.scene.reading import read_blocks, scene_band_names, scene_dtype, window_centres

# Layers that stay float32 under mixed precision (preprocessing needs the precision).
FLOAT32_LAYERS = ("InputLayer", "Normalization", "Rescaling")
# Most memory the activations of one forward pass of the per-window path may take: a
# batch of windows through a network with large early feature maps (VGG16: 2 MB a
# window) is cut to fit; on a CPU a VGG16 batch of 64 ran as fast as one of 256 and
# peaked 0.3-0.4 GiB lower (benchmarks/README.md, issue 21).
ACTIVATION_BUDGET = 128 * 2**20


def _has_mixed_layers(model) -> bool:
    """Whether any layer of `model`, nested models included, computes in 16 bits."""
    for layer in model.layers:
        if layer.compute_dtype != "float32":
            return True
        if hasattr(layer, "layers") and _has_mixed_layers(layer):
            return True
    return False


def with_precision(model, policy: str):
    """A copy of `model` computing under a Keras dtype policy ("mixed_bfloat16", ...).

    precision.precision_policy turns the scripts' auto|off|bf16|fp16
    into the policy. Weights stay float32; preprocessing layers stay float32
    because uint16 digital numbers lose their precision in 16 bits.
    """
    import keras

    # A model trained under mixed precision keeps its policy when saved, so float32
    # (the exact talk answer) needs the copy too, unless every layer is float32 already.
    if policy == "float32" and not _has_mixed_layers(model):
        return model
    serialized = keras.saving.serialize_keras_object(model)

    def set_policy(node: object) -> None:
        if isinstance(node, dict):
            config = node.get("config")
            if (
                isinstance(config, dict)
                and "dtype" in config
                and node.get("class_name") not in FLOAT32_LAYERS
                and isinstance(config["dtype"], dict)
            ):
                config["dtype"] = policy
            for value in node.values():
                set_policy(value)
        elif isinstance(node, list):
            for value in node:
                set_policy(value)

    set_policy(serialized)
    with keras.saving.custom_object_scope(custom_objects()):
        mixed = keras.saving.deserialize_keras_object(serialized)
    mixed.set_weights(model.get_weights())
    return mixed


# ---------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------


class Writer(Protocol):
    """An output fed block by block (see writers.py)."""

    def write(self, block: PredictedBlock) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class SceneClassification:
    """A planned scene and its model ready to classify together (`prepare_classification`).

    model: the plan's model under the plan's precision (a Keras dtype policy), its
    batch normalisation adapted to the scene when `adaptation` says so. method:
    "windows" or "dense" (the one `run` uses); dense_reason: why the dense pass
    cannot be exact for this model (None: it can). With the plan's tta every window's
    probabilities are averaged over its 8 flips and 90-degree rotations (8 passes;
    dense: through the 8 turned networks, the same numbers).
    """

    plan: ScenePlan
    model: object
    method: str
    dense_reason: str | None
    adaptation: Adaptation | None = None

    @property
    def info(self) -> ModelInfo:
        return self.plan.info

    @property
    def precision(self) -> str:
        return self.plan.precision

    @property
    def tta(self) -> bool:
        return self.plan.tta

    @property
    def input_dtype(self) -> np.dtype:
        plan = self.plan
        return scene_dtype(plan.scene, plan.band_indices, plan.rgb_scaling, plan.reflectance_factor)

    def describe(self) -> str:
        """What will run, for 06's banner: bands, classes, precision, scaling, method."""
        plan = self.plan
        names = scene_band_names(plan.scene)
        method = (
            "whole-block pass (exact: no zero padding in the window)"
            if self.method == "dense"
            else "one pass per window"
        )
        return (
            f"{plan.scene.RasterXSize}x{plan.scene.RasterYSize} px, bands "
            f"{', '.join(names[index] for index in plan.band_indices)}{plan.band_words} -> "
            f"{len(plan.info.class_names)} classes, {plan.precision}"
            f"{', talk normalisation' if plan.info.normalise_in_front else ''}"
            f"{plan.reflectance_words}"
            f"{', EuroSAT RGB scaling' if plan.rgb_scaling else ''}"
            f"{dn_offset_words(plan.scene)}; {method}"
            f"{'; ' + self.adaptation.words() if self.adaptation else ''}"
            f"{', averaged over the 8 flips and rotations' if plan.tta else ''}"
        )

    def record(self) -> dict[str, str]:
        """How the scene was read and adapted, for the label map's metadata."""
        record = {"REFLECTANCE_FACTOR": f"{self.plan.reflectance_factor:g}"}
        record.update(self.adaptation.record() if self.adaptation else {"ADAPTATION": "off"})
        return record

    def predictor(self, prefetch_depth: int = 4) -> Predictor:
        """The predictor of `method` (windows: batches of the plan's batch size)."""
        plan = self.plan
        if self.method == "dense":
            return DensePredictor(
                self.model,
                plan.info,
                prefetch_depth=prefetch_depth,
                symmetries=8 if plan.tta else 1,
            )
        model = self.model
        batch_size = batch_within_budget(model, plan.batch_size, 8 if plan.tta else 1)
        if plan.tta:
            model = with_dihedral_averaging(model)
        forward = make_predictor(model, plan.info, self.input_dtype, len(plan.band_indices))
        return WindowPredictor(forward, len(plan.info.class_names), batch_size, prefetch_depth)

    def run(
        self,
        writers: Sequence[Writer],
        progress: bool | None = None,
        prefetch_depth: int = 4,
        steps: Sequence[Callable[[PredictedBlock], PredictedBlock]] = (),
        predictor: Predictor | None = None,
        first_row: int = 0,
        last_row: int | None = None,
    ) -> dict:
        """Classify the scene into `writers`; returns counts: "windows", "classified",
        "pixels" per class name, "cloud" and "nodata" pixels.

        Pixel (r, c) at stride 1 gets the class of its window, rows r-size/2..
        r+size/2-1; at stride s the window centred on each s x s cell fills the
        cell. Streams the plan's block rows at a time (rounded to the stride).
        progress: a progress bar (None: the plan's). first_row, last_row: only that
        strip of output rows (reading.read_blocks), the counts those of the strip.
        """
        plan = self.plan
        check_run_settings(plan.stride, plan.batch_size, plan.block_rows)
        rows, cols = plan.scene.RasterYSize, plan.scene.RasterXSize
        stride = clamp_stride(plan.stride, rows, cols)
        block_rows = max(stride, plan.block_rows // stride * stride)
        class_count = len(plan.info.class_names)
        predictor = predictor or self.predictor(prefetch_depth)
        blocks = read_blocks(
            plan.scene,
            plan.band_indices,
            plan.window_size,
            stride,
            block_rows,
            plan.rgb_scaling,
            plan.reflectance_factor,
            first_row,
            last_row,
        )
        strip_rows = window_centres(rows, stride)[first_row // stride :]
        if last_row is not None:
            strip_rows = strip_rows[: -(-last_row // stride) - first_row // stride]
        total = len(strip_rows) * len(window_centres(cols, stride))
        label_counts = np.zeros(256, np.int64)
        classified = 0
        progress = plan.progress if progress is None else progress
        try:
            with progress_bar(
                total=total, unit="patch", desc="classifying", disable=not progress, smoothing=0.1
            ) as bar:
                for block in predictor.predict(blocks, bar.update):
                    for step in steps:
                        block = step(block)
                    for writer in writers:
                        writer.write(block)
                    classified += int(np.count_nonzero(block.classified))
                    label_counts += np.bincount(block.labels.ravel(), minlength=256)
            for writer in writers:
                writer.finish()
        finally:  # release the files deterministically, also when interrupted
            for writer in writers:
                writer.close()
        return {
            "windows": total,
            "classified": classified,
            "pixels": dict(
                zip(plan.info.class_names, label_counts[:class_count].tolist(), strict=True)
            ),
            "cloud": int(label_counts[CLOUD_LABEL]),
            "nodata": int(label_counts[LABEL_NODATA]),
        }


def _layers(model) -> Iterator:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):  # a nested model (a backbone)
            yield from _layers(layer)


def activation_bytes(model) -> int:
    """Bytes one window's largest layer output takes, with that layer's input (float32):
    what a forward pass holds at its peak, per window (VGG16 on 64 x 64: 2 MB)."""
    largest = 0
    for layer in _layers(model):
        try:
            shape = tuple(layer.output.shape[1:])
        except (AttributeError, ValueError):
            continue
        if shape and all(isinstance(side, int) for side in shape):
            largest = max(largest, math.prod(shape))
    return 2 * 4 * largest


def batch_within_budget(model, batch_size: int, symmetries: int = 1) -> int:
    """`batch_size`, or fewer windows when a batch's activations (activation_bytes, times
    the TTA symmetries) would pass ACTIVATION_BUDGET; the note says so. Results do not
    change: every window is computed on its own."""
    per_window = activation_bytes(model) * symmetries
    fitting = max(1, ACTIVATION_BUDGET // max(per_window, 1))
    if batch_size <= fitting:
        return batch_size
    print(
        f"note: batches of {fitting} windows, not {batch_size}: this model's activations take "
        f"{per_window / 2**20:.1f} MB a window, and a batch is kept under "
        f"{ACTIVATION_BUDGET // 2**20} MB.",
        file=sys.stderr,
    )
    return fitting


def clamp_stride(stride: int, rows: int, cols: int) -> int:
    """A stride no larger than the scene's longer side, with a note when it was larger
    (then one window classifies the whole scene)."""
    longest = max(rows, cols)
    if stride <= longest:
        return stride
    print(
        f"note: stride {stride} is larger than the scene ({rows} x {cols} pixels); using "
        f"{longest}, so one window classifies the whole scene.",
        file=sys.stderr,
    )
    return longest


def check_run_settings(stride: int, batch_size: int, block_rows: int) -> None:
    """InputError unless stride, batch size and block rows are at least 1."""
    if stride < 1:
        raise InputError(f"stride must be at least 1, not {stride}.")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, not {batch_size}.")
    if block_rows < 1:
        raise InputError(f"block rows must be at least 1, not {block_rows}.")


def prepare_classification(plan: ScenePlan) -> SceneClassification:
    """The plan's model ready for its scene: under the plan's precision; its batch
    normalisation adapted to the scene (adapt "on": `adapt_windows` windows, the
    scene's share `adapt_blend`, cloudy windows left out when the plan masks clouds;
    "auto": the share scaled by how far the scene is from the training data, none when
    it is close; "off": as trained), on a copy, so a cached model keeps its
    statistics; the method chosen (auto: dense when it is exact, with tta also for
    the 8 turned networks). InputError for method "dense" with a model that has
    zero padding inside the window (or, with tta, is not symmetric enough)."""
    model = with_precision(plan.model, plan.precision)
    adaptation = None
    if plan.adapt != "off" and batch_normalization_layers(model):
        windows = sample_windows(
            plan.scene,
            plan.band_indices,
            plan.window_size,
            plan.rgb_scaling,
            plan.reflectance_factor,
            plan.adapt_windows,
            cloud_bands=plan.cloud_bands or None,
            cloud_settings=plan.cloud,
        )
        # A copy: the caller's model (a worker's cached one) keeps its trained statistics.
        model = copy_model(model)
        adaptation = adapt_model(model, windows, plan.adapt, plan.adapt_blend)
    reason = (dihedral_unsupported_reason if plan.tta else dense_unsupported_reason)(model)
    if plan.method == "dense" and reason is not None:
        what = "--method dense --tta" if plan.tta else "--method dense"
        raise InputError(
            f"model {plan.model_path} cannot be classified exactly with {what}: {reason}; "
            "use --method windows."
        )
    auto_dense = plan.method == "auto" and reason is None
    chosen = "dense" if plan.method == "dense" or auto_dense else "windows"
    return SceneClassification(plan, model, chosen, reason, adaptation)
