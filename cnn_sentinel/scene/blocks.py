"""The bottom of the scene package: the blocks that flow from reading to predicting to
writing, `prefetch` that runs a producer of them ahead in a thread, and the reserved
label values and colours every output agrees on (named from cnn_sentinel/facts.py, the
one module of the project it imports).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# The reserved label values and the class colours every output agrees on (cnn_sentinel/facts.py).
from cnn_sentinel.facts import CLASS_COLOURS as CLASS_COLOURS
from cnn_sentinel.facts import CLOUD_COLOUR as CLOUD_COLOUR
from cnn_sentinel.facts import CLOUD_LABEL as CLOUD_LABEL
from cnn_sentinel.facts import CLOUD_NAME as CLOUD_NAME
from cnn_sentinel.facts import LABEL_NODATA as LABEL_NODATA
from cnn_sentinel.facts import PROBABILITY_NODATA as PROBABILITY_NODATA


def class_colour(name: str, index: int) -> tuple[int, int, int]:
    """RGB colour of a class: the EuroSAT colour by name, else one from matplotlib's tab20."""
    if name in CLASS_COLOURS:
        return CLASS_COLOURS[name]
    from matplotlib import colormaps

    red, green, blue, _ = colormaps["tab20"](index % 20)
    return round(red * 255), round(green * 255), round(blue * 255)


@dataclass
class ReadBlock:
    """One row block of a scene, read with the halo its windows need.

    Output rows first_row..last_row-1, all columns. pixels: scene rows top..top+len-1
    and columns -size/2..cols+size/2-1, mirrored past the scene's edges, NaN set to 0
    and scaled like EuroSAT's JPEGs when asked: the window of centre (r, c) is
    pixels[r - size/2 - top :][:size, c : c + size]. centre_rows, centre_cols: scene
    rows/cols of the window centres of the block's stride x stride cells;
    centre_nodata (len(centre_rows), len(centre_cols)): centres with no data, whose
    windows are not classified; nodata (rows, cols): the output pixels with no data.
    """

    first_row: int
    last_row: int
    top: int
    size: int
    stride: int
    pixels: np.ndarray
    centre_rows: np.ndarray
    centre_cols: np.ndarray
    centre_nodata: np.ndarray
    nodata: np.ndarray

    @property
    def window_rows(self) -> np.ndarray:
        """Row of `pixels` where the window of each centre row starts."""
        return self.centre_rows - self.size // 2 - self.top


@dataclass
class PredictedBlock:
    """The predictions of one row block.

    source: the ReadBlock they were computed from (pixels, nodata, centres).
    probabilities: (grid rows, grid cols, classes) float32, one row per centre row
    and one column per centre column; NaN where the window was not classified.
    cloud: None, or (rows, cols) bool of the output pixels under cloud (set by a
    cloud mask step): they get CLOUD_LABEL and no probability.
    """

    source: ReadBlock
    probabilities: np.ndarray
    cloud: np.ndarray | None = None

    @property
    def first_row(self) -> int:
        return self.source.first_row

    @property
    def classified(self) -> np.ndarray:
        """(grid rows, grid cols) bool: windows that were classified."""
        return ~np.isnan(self.probabilities[..., 0])

    @cached_property
    def grid_labels(self) -> np.ndarray:
        """(grid rows, grid cols) uint8 class index, LABEL_NODATA where not classified."""
        labels = np.argmax(np.nan_to_num(self.probabilities), axis=-1).astype(np.uint8)
        labels[~self.classified] = LABEL_NODATA
        return labels

    @cached_property
    def labels(self) -> np.ndarray:
        """(rows, cols) uint8 labels of the block's output pixels (CLOUD_LABEL under cloud)."""
        labels = self.spread(self.grid_labels, LABEL_NODATA)
        if self.cloud is not None:
            labels[self.cloud & ~self.source.nodata] = CLOUD_LABEL
        return labels

    def spread(self, values: np.ndarray, fill: float) -> np.ndarray:
        """(grid rows, grid cols) -> the block's output pixels (rows, cols), each value
        over its stride x stride cell, `fill` on nodata pixels and under cloud."""
        stride, nodata = self.source.stride, self.source.nodata
        # Each output pixel picks its cell's value: memory grows with the block, not
        # with stride squared (a repeat would make whole stride x stride cells first).
        rows, cols = nodata.shape
        values = values[np.ix_(np.arange(rows) // stride, np.arange(cols) // stride)]
        values[nodata] = fill
        if self.cloud is not None:
            values[self.cloud] = fill
        return values


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a background thread, `depth` items ahead of the consumer.

    Reading and cutting windows (GDAL, numpy) then overlaps with inference
    (TensorFlow), both of which release the GIL.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    finished = object()
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put `item` in the queue unless the consumer has stopped; whether it went in."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not offer(item):
                    return
            offer(finished)
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is finished:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
