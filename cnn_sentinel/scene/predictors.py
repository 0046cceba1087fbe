"""Predictors: row blocks of a scene in, blocks of class probabilities out.

A predictor turns each ReadBlock (blocks.py) into a PredictedBlock: the class
probabilities of the windows centred on the block's stride x stride cells (NaN where
the centre is nodata). WindowPredictor (here) makes one forward pass per window
(any model); dense.DensePredictor computes the whole block in one fully
convolutional pass (models without zero padding inside the window), with the same
numbers. runner.py chooses one and runs it over a scene.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.scene.blocks import PredictedBlock, ReadBlock, prefetch
from cnn_sentinel.scene.reading import window_view

# ---------------------------------------------------------------------------
# The per-window forward pass
# ---------------------------------------------------------------------------


def make_predictor(
    model, info: ModelInfo, input_dtype: np.dtype, window_bands: int
) -> Callable[[np.ndarray], np.ndarray]:
    """A fast batch predictor: (n, size, size, bands) raw pixels -> (n, classes) float32.

    Calls the model directly inside one traced tf.function (no per-call
    `model.predict` overhead); the cast to float32 and the legacy normalisation
    run inside the graph too.
    """
    import tensorflow as tf

    size = info.input_size
    mean = tf.constant(info.mean, tf.float32) if info.normalise_in_front else None
    std = tf.constant(info.std, tf.float32) if info.normalise_in_front else None

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
