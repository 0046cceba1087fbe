"""Predictors: row blocks of a scene in, blocks of class probabilities out; and the
one entry point that 06 and the tests use.

    classification = prepare_classification(dataset, model_path_or_model, bands=..., method=...)
    summary = classification.run(writers, stride=..., block_rows=...)

`run` streams the scene:  read_blocks -> predictor -> block steps -> writers.
- A predictor turns each ReadBlock (blocks.py) into a PredictedBlock: the
  class probabilities of the windows centred on the block's stride x stride cells
  (NaN where the centre is nodata). WindowPredictor makes one forward pass per
  window (any model); dense.DensePredictor computes the whole block in one
  fully convolutional pass (models without zero padding inside the window), with
  the same numbers.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from osgeo import gdal

from cnn_sentinel.console import progress_bar
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.networks import custom_objects, with_dihedral_averaging
from cnn_sentinel.scene.adaptation import (
    Adaptation,
    batch_normalization_layers,
    check_adapt_settings,
    copy_model,
    sample_windows,
)
from cnn_sentinel.scene.adaptation import (
    adapt as adapt_model,
)
from cnn_sentinel.scene.blocks import CLOUD_LABEL, LABEL_NODATA, PredictedBlock, ReadBlock, prefetch
from cnn_sentinel.scene.clouds import CloudSettings
from cnn_sentinel.scene.dense import (
    DensePredictor,
    antialias_halo,
    average_phases,
    check_antialias,
    dense_unsupported_reason,
    dihedral_unsupported_reason,
)
from cnn_sentinel.scene.geometry import warn_if_pixel_size_differs
from cnn_sentinel.scene.products import dn_offset_words
from cnn_sentinel.scene.radiometry import reflectance_factor
from cnn_sentinel.scene.reading import (
    band_choice_words,
    choose_scene_bands,
    load_scene_model,
    read_blocks,
    rgb_scaling_needed,
    scene_band_names,
    scene_dtype,
    warn_if_not_georeferenced,
    window_centres,
    window_view,
)

# Layers that stay float32 under mixed precision (preprocessing needs the precision).
FLOAT32_LAYERS = ("InputLayer", "Normalization", "Rescaling")
# Ways to compute a scene: per window, whole blocks at once, or dense when the model allows.
METHODS = ("auto", "windows", "dense")
# Most memory the activations of one forward pass of the per-window path may take: a
# batch of windows through a network with large early feature maps (VGG16: 2 MB a
# window) is cut to fit; on a CPU a VGG16 batch of 64 ran as fast as one of 256 and
# peaked 0.3-0.4 GiB lower (benchmarks/README.md, issue 21).
ACTIVATION_BUDGET = 128 * 2**20


# ---------------------------------------------------------------------------
# Models: precision and the per-window forward pass
# ---------------------------------------------------------------------------


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


def make_predictor(
    model, config: ModelInfo, input_dtype: np.dtype, window_bands: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A fast batch predictor: (n, size, size, bands) raw pixels -> (n, classes) float32.

    Calls the model directly inside one traced tf.function (no per-call
    `model.predict` overhead); the cast to float32 and the legacy normalisation
    run inside the graph too.
    """
    import tensorflow as tf

    size = config.input_size
    mean = tf.constant(config.mean, tf.float32) if config.normalise_in_front else None
    std = tf.constant(config.std, tf.float32) if config.normalise_in_front else None

    @tf.function(
        autograph=False,
        input_signature=[tf.TensorSpec((None, size, size, window_bands), tf.as_dtype(input_dtype))],
    )
    def forward(batch):
        pixels = tf.cast(batch, tf.float32)
        if mean is not None:
            pixels = (pixels - mean) / std
        return tf.cast(model(pixels, training=False), tf.float32)

    return lambda batch: forward(batch).numpy()


# ---------------------------------------------------------------------------
# Predicted blocks and predictors
# ---------------------------------------------------------------------------


class Predictor(Protocol):
    """Turns row blocks into predicted blocks, in order; `advance(n)` counts windows."""

    method: str

    def predict(
        self, blocks: Iterator[ReadBlock], advance: Callable[[int], None]
    ) -> Iterator[PredictedBlock]: ...


@dataclass(frozen=True)
class _Batch:
    """Windows ready for the model: pixels (n, size, size, bands) in the scene's
    dtype and their flat positions in the block's window grid (n,) int64."""

    pixels: np.ndarray
    positions: np.ndarray


@dataclass
class WindowPredictor:
    """One forward pass per window: windows are views into the block (no per-window
    Python loop), cut into batches in a background thread `prefetch_depth` items
    ahead of inference (0: in line), batches across rows."""

    forward: Callable[[np.ndarray], np.ndarray]
    class_count: int
    batch_size: int = 256
    prefetch_depth: int = 4
    method: str = field(default="windows", init=False)

    def _batches(self, blocks: Iterator[ReadBlock]) -> Iterator[ReadBlock | _Batch]:
        """Each block, then its batches of windows whose centre has data."""
        for block in blocks:
            yield block
            positions = np.flatnonzero(~block.centre_nodata.ravel())
            windows = window_view(block.pixels, block.size)
            window_rows = block.window_rows
            for start in range(0, len(positions), self.batch_size):
                chunk = positions[start : start + self.batch_size]
                grid_row, grid_col = np.divmod(chunk, len(block.centre_cols))
                yield _Batch(windows[window_rows[grid_row], block.centre_cols[grid_col]], chunk)

    def predict(
        self, blocks: Iterator[ReadBlock], advance: Callable[[int], None]
    ) -> Iterator[PredictedBlock]:
        items = self._batches(blocks)
        block, grid, remaining = None, None, 0
        for item in prefetch(items, self.prefetch_depth) if self.prefetch_depth > 0 else items:
            if isinstance(item, ReadBlock):
                if block is not None:
                    yield PredictedBlock(block, grid.reshape(*block.centre_nodata.shape, -1))
                block = item
                remaining = int(np.count_nonzero(~item.centre_nodata))
                grid = np.full((item.centre_nodata.size, self.class_count), np.nan, np.float32)
                advance(item.centre_nodata.size - remaining)
            else:
                grid[item.positions] = self.forward(item.pixels)
                advance(len(item.positions))
        if block is not None:
            yield PredictedBlock(block, grid.reshape(*block.centre_nodata.shape, -1))


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


class Writer(Protocol):
    """An output fed block by block (see writers.py)."""

    def write(self, block: PredictedBlock) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class SceneClassification:
    """A scene and a model ready to classify together (made by `prepare_classification`).

    band_indices: 0-based scene bands feeding the model in its order. rgb_scaling:
    whether L1C values are scaled like EuroSAT's JPEGs. precision: the Keras dtype
    policy the model computes in. method: "windows" or "dense" (the one `run` uses);
    dense_reason: why the dense pass cannot be exact for this model (None: it can).
    tta: average every window's probabilities over its 8 flips and 90-degree
    rotations (8 passes; dense: through the 8 turned networks, the same numbers).
    """

    dataset: gdal.Dataset
    model: object
    config: ModelInfo
    band_indices: list[int]
    rgb_scaling: bool
    precision: str
    method: str
    dense_reason: str | None
    tta: bool = False
    reflectance_factor: float = 1.0
    reflectance_words: str = ""
    adaptation: Adaptation | None = None
    band_words: str = ""  # a band choice that is a fallback, with its reason (describe)

    @property
    def input_dtype(self) -> np.dtype:
        return scene_dtype(
            self.dataset, self.band_indices, self.rgb_scaling, self.reflectance_factor
        )

    def describe(self) -> str:
        """What will run, for 06's banner: bands, classes, precision, scaling, method."""
        names = scene_band_names(self.dataset)
        method = (
            "whole-block pass (exact: no zero padding in the window)"
            if self.method == "dense"
            else "one pass per window"
        )
        return (
            f"{self.dataset.RasterXSize}x{self.dataset.RasterYSize} px, bands "
            f"{', '.join(names[index] for index in self.band_indices)}{self.band_words} -> "
            f"{len(self.config.class_names)} classes, {self.precision}"
            f"{', talk normalisation' if self.config.normalise_in_front else ''}"
            f"{self.reflectance_words}"
            f"{', EuroSAT RGB scaling' if self.rgb_scaling else ''}"
            f"{dn_offset_words(self.dataset)}; {method}"
            f"{'; ' + self.adaptation.words() if self.adaptation else ''}"
            f"{', averaged over the 8 flips and rotations' if self.tta else ''}"
        )

    def record(self) -> dict[str, str]:
        """How the scene was read and adapted, for the label map's metadata."""
        record = {"REFLECTANCE_FACTOR": f"{self.reflectance_factor:g}"}
        record.update(self.adaptation.record() if self.adaptation else {"ADAPTATION": "off"})
        return record

    def predictor(self, batch_size: int = 256, prefetch_depth: int = 4) -> Predictor:
        """The predictor of `method` (windows: batches of `batch_size`)."""
        if self.method == "dense":
            return DensePredictor(
                self.model,
                self.config,
                prefetch_depth=prefetch_depth,
                symmetries=8 if self.tta else 1,
            )
        model = self.model
        batch_size = batch_within_budget(model, batch_size, 8 if self.tta else 1)
        if self.tta:
            model = with_dihedral_averaging(model)
        forward = make_predictor(model, self.config, self.input_dtype, len(self.band_indices))
        return WindowPredictor(forward, len(self.config.class_names), batch_size, prefetch_depth)

    def run(
        self,
        writers: Sequence[Writer],
        stride: int = 16,
        batch_size: int = 256,
        block_rows: int = 256,
        progress: bool = True,
        prefetch_depth: int = 4,
        steps: Sequence[Callable[[PredictedBlock], PredictedBlock]] = (),
        predictor: Predictor | None = None,
        first_row: int = 0,
        last_row: int | None = None,
        antialias: int = 1,
    ) -> dict:
        """Classify the scene into `writers`; returns counts: "windows", "classified",
        "pixels" per class name, "cloud" and "nodata" pixels.

        Pixel (r, c) at stride 1 gets the class of its window, rows r-size/2..
        r+size/2-1; at stride s the window centred on each s x s cell fills the
        cell. Streams `block_rows` output rows at a time (rounded to the stride).
        first_row, last_row: only that band of output rows (reading.read_blocks), the
        counts those of the band. antialias: at stride 1, each window's probabilities
        are averaged with its neighbours' over that period (dense.average_phases);
        1: every pixel its own window's, as computed.
        """
        check_run_settings(stride, batch_size, block_rows)
        check_antialias(antialias)
        rows, cols = self.dataset.RasterYSize, self.dataset.RasterXSize
        stride = clamp_stride(stride, rows, cols)
        block_rows = max(stride, block_rows // stride * stride)
        class_count = len(self.config.class_names)
        predictor = predictor or self.predictor(batch_size, prefetch_depth)
        halo = antialias_halo(antialias) if stride == 1 else 0
        blocks = read_blocks(
            self.dataset,
            self.band_indices,
            self.config.input_size,
            stride,
            block_rows,
            self.rgb_scaling,
            self.reflectance_factor,
            first_row,
            last_row,
            halo_rows=halo,
        )
        band_rows = window_centres(rows, stride)[first_row // stride :]
        if last_row is not None:
            band_rows = band_rows[: -(-last_row // stride) - first_row // stride]
        total = len(band_rows) * len(window_centres(cols, stride))
        label_counts = np.zeros(256, np.int64)
        classified = 0
        try:
            with progress_bar(
                total=total, unit="patch", desc="classifying", disable=not progress, smoothing=0.1
            ) as bar:
                # With a halo the bar counts each block's own windows once it is averaged.
                for block in predictor.predict(blocks, bar.update if not halo else _no_count):
                    if halo:
                        block = average_phases(block, antialias)
                        bar.update(block.source.centre_nodata.size)
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
                zip(self.config.class_names, label_counts[:class_count].tolist(), strict=True)
            ),
            "cloud": int(label_counts[CLOUD_LABEL]),
            "nodata": int(label_counts[LABEL_NODATA]),
        }


def _no_count(_windows: int) -> None:
    """A progress callback that counts nothing."""


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


def prepare_classification(
    dataset: gdal.Dataset,
    model: str | Path | object,
    config: ModelInfo | None = None,
    bands: str | None = None,
    rgb_scaling: str = "auto",
    precision: str = "float32",
    method: str = "auto",
    scene_label: str = "scene",
    tta: bool = False,
    reflectance_scale: str | float = 10000,
    adapt: str = "off",
    adapt_blend: float = 0.5,
    adapt_windows: int = 2048,
    cloud_bands: Sequence[int] | None = None,
    cloud_settings: CloudSettings | None = None,
) -> SceneClassification:
    """Everything between an open scene and a run: load the model (a path; or a Keras
    model with its ModelInfo), choose the scene's bands (`bands` as 06's --bands),
    decide the RGB scaling (auto|eurosat|none), set the precision (a Keras dtype
    policy) and the method (auto|windows|dense; auto takes dense when it is exact,
    with `tta` also for the 8 turned networks). Warns when the scene is not
    georeferenced. InputError for every mismatch, and for "dense" with a model that
    has zero padding inside the window (or, with `tta`, is not symmetric enough).
    reflectance_scale: the scene's (auto, or 10000, 1000, 1): values are taken to
    EuroSAT's x 10000. adapt "on": the model's batch normalisation is adapted to the
    scene (`adaptation`: `adapt_windows` windows, the scene's share `adapt_blend`,
    cloudy windows left out when `cloud_bands` is given); "auto": the share scaled by
    how far the scene is from the training data (none when it is close); "off": as trained.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method}.")
    model_label = "the model"
    if isinstance(model, (str, Path)):
        model_label = f"model {model}"
        model, config = load_scene_model(model)
    elif config is None:
        raise InputError("a model given as an object needs its ModelInfo.")
    band_indices = choose_scene_bands(
        scene_band_names(dataset), config.band_names, bands, scene_label
    )
    warn_if_not_georeferenced(dataset, scene_label)
    warn_if_pixel_size_differs(dataset, config.pixel_size, scene_label)
    scaling = rgb_scaling_needed(rgb_scaling, config.band_names, dataset, band_indices)
    band_words = band_choice_words(dataset, config.band_names, band_indices, bands)
    factor, factor_words = reflectance_factor(reflectance_scale, dataset, band_indices, scene_label)
    check_adapt_settings(adapt, adapt_blend, adapt_windows)
    model = with_precision(model, precision)
    adaptation = None
    if adapt != "off" and batch_normalization_layers(model):
        windows = sample_windows(
            dataset,
            band_indices,
            config.input_size,
            scaling,
            factor,
            adapt_windows,
            cloud_bands=cloud_bands,
            cloud_settings=cloud_settings,
        )
        # A copy: the caller's model (a worker's cached one) keeps its trained statistics.
        model = copy_model(model)
        adaptation = adapt_model(model, windows, adapt, adapt_blend)
    reason = (dihedral_unsupported_reason if tta else dense_unsupported_reason)(model)
    if method == "dense" and reason is not None:
        what = "--method dense --tta" if tta else "--method dense"
        raise InputError(
            f"{model_label} cannot be classified exactly with {what}: {reason}; "
            "use --method windows."
        )
    chosen = "dense" if method == "dense" or (method == "auto" and reason is None) else "windows"
    return SceneClassification(
        dataset,
        model,
        config,
        band_indices,
        scaling,
        precision,
        chosen,
        reason,
        tta,
        factor,
        factor_words,
        adaptation,
        band_words,
    )
