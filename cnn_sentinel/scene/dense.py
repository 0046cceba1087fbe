"""The whole-block pass: every window of a row block in one fully convolutional pass.

For a network with no zero padding inside its window (valid convolutions and
pools, a global pooling over the last feature map, Dense layers after it), the
output for the window centred on (r, c) depends only on that window's pixels,
so one pass over a block computes all windows exactly (OverFeat 2014; Giusti et
al. 2013; Li et al. 2014; Long, Shelhamer and Darrell 2015, section 3.2).
The pass is built from the saved Keras model itself by walking its functional
graph (nested models included) and running every layer on the whole block:

- pointwise layers (normalisation, batch normalisation, activations, Dense on the
  last axis, Add and the other merges) and stride-1 'valid' convolutions run as
  they are; augmentation and dropout are the identity at inference; croppings crop;
- a layer with stride s (a strided convolution, a pooling) runs at stride 1, and its
  output is split into s x s phase fragments with space_to_batch: fragment (i, j)
  holds the positions the layer would compute for windows starting at offsets
  i, j (mod s). Later layers see each fragment at their own resolution, so every
  intermediate value is computed once. Fragments that no requested window needs
  are dropped (at stride 4 of a network with total stride 4 only one remains);
- a global average (max) pooling over the final k x k map becomes a k x k pooling
  at stride 1, after which Dense layers act as 1 x 1 convolutions;
- each remaining fragment holds the outputs of windows starting at
  offset + T * m (T: the product of the strides), gathered at the requested
  window starts.

Fragments against dilated ("a trous") kernels: both compute the same values;
`method="dilation"` is kept for the measurement in benchmarks/classify_scene.py,
which chose fragments (see benchmarks/README.md): dilated kernels cannot drop the
phases a stride > 1 does not need, and TensorFlow runs a dilated convolution as
space_to_batch + convolution + batch_to_space on every layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.scene.blocks import PredictedBlock, ReadBlock, prefetch

# Output pixels of one dense tile (rows x cols of window starts); memory grows with it.
DENSE_TILE_PIXELS = 256 * 512
# Layers that are the identity at inference (augmentation, regularisation).
IDENTITY_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
)
# Layers that act on every pixel (and every window) alike: they run on the block as they are.
POINTWISE_LAYERS = (
    "Normalization",
    "Rescaling",
    "BatchNormalization",
    "FusedBatchNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Softmax",
    "Dense",
)
# Layers that merge branches of the same shape.
MERGE_LAYERS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")


class NotDenseError(Exception):
    """The model has a layer that the whole-block pass cannot reproduce exactly."""


def _graph(model):
    """The functional graph of a Keras model (a Sequential model holds one)."""
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        raise NotDenseError(f"{model.name} is not a functional Keras model")
    return graph


def _nodes(graph) -> Iterator:
    """The graph's computing nodes, inputs before the layers that use them."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def layer_kind(layer) -> str:
    """How the whole-block pass treats a layer: input, identity, pointwise, merge,
    conv, pool, global, crop or model; NotDenseError with the reason when it cannot."""
    import keras

    name = type(layer).__name__
    where = f"its layer {layer.name} ({name})"
    if isinstance(layer, keras.layers.InputLayer):
        return "input"
    if isinstance(layer, keras.Model):
        return "model"
    if name.startswith("Random") or name in IDENTITY_LAYERS:
        return "identity"
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        raise NotDenseError(f"{where} is channels_first")
    if name == "ZeroPadding2D" or (
        config.get("padding") == "same" and max(_pair(config.get("kernel_size", 1))) > 1
    ):
        raise NotDenseError(f"{where} pads with zeros inside the window (padding='same')")
    if name in ("MaxPooling2D", "AveragePooling2D") and config.get("padding") == "same":
        raise NotDenseError(f"{where} pads inside the window (padding='same')")
    if name == "Softmax" and config.get("axis", -1) not in (-1, 3):
        raise NotDenseError(f"{where} does not act on the class axis")
    if name == "Concatenate" and config.get("axis", -1) not in (-1, 3):
        raise NotDenseError(f"{where} does not concatenate channels")
    if name in POINTWISE_LAYERS:
        return "pointwise"
    if name in MERGE_LAYERS:
        return "merge"
    if isinstance(layer, keras.layers.Conv2D) and type(layer).__name__ == "Conv2D":
        if config.get("groups", 1) != 1:
            raise NotDenseError(f"{where} is a grouped convolution")
        return "conv"
    if name in ("MaxPooling2D", "AveragePooling2D"):
        return "pool"
    if name in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return "global"
    if name == "Cropping2D":
        return "crop"
    raise NotDenseError(f"{where} is not a layer the whole-block pass knows")


def _layer_nodes(model) -> Iterator[tuple]:
    """(node, layer_kind) of every layer of `model`, nested models walked into."""
    for node in _nodes(_graph(model)):
        kind = layer_kind(node.operation)
        if kind == "model":
            yield from _layer_nodes(node.operation)
        else:
            yield node, kind


def check_dense(model) -> None:
    """NotDenseError unless every layer of `model` (nested models included) has a dense form
    and the model maps fixed-size windows to one vector of class scores."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotDenseError("it does not have exactly one input and one output")
    if len(model.inputs[0].shape) != 4 or None in tuple(model.inputs[0].shape[1:]):
        raise NotDenseError("its input is not a fixed-size window")
    if len(model.outputs[0].shape) != 2:
        raise NotDenseError("its output is not one vector per window")
    for _ in _layer_nodes(model):  # layer_kind raises for a layer without a dense form
        pass


def dense_unsupported_reason(model) -> str | None:
    """Why the whole-block pass cannot be exact for `model`, or None when it can."""
    try:
        check_dense(model)
    except NotDenseError as reason:
        return str(reason)
    return None


def dihedral_kernel(kernel, symmetry: int):
    """A (rows, cols, in, out) kernel turned by symmetry 0-7 of the square: `symmetry`
    % 4 quarter turns, then a left-right flip for 4-7. The 8 together are the whole
    dihedral group, so averaging a network over them equals averaging its outputs
    over the 8 flips and rotations of the input window. A TensorFlow tensor (traced
    inside the pass, as the kernel is a variable), the turns as np.rot90's."""
    import tensorflow as tf

    turned = tf.experimental.numpy.rot90(kernel, symmetry % 4, axes=(0, 1))
    return tf.reverse(turned, [1]) if symmetry >= 4 else turned


def check_dihedral(model) -> None:
    """NotDenseError unless turning every kernel gives exactly the model's output for
    the turned window: square kernels, pools and strides, symmetric croppings, and
    every strided layer's window steps ending on its input's last pixel (so that a
    flipped window meets the same grid, e.g. 2 x 2 steps over an even size)."""
    for node, kind in _layer_nodes(model):
        layer = node.operation
        config = layer.get_config()
        where = f"its layer {layer.name}"
        if kind == "crop":
            (top, bottom), (left, right) = (_pair(value) for value in config["cropping"])
            if len({top, bottom, left, right}) != 1:
                raise NotDenseError(f"{where} crops unevenly")
        if kind not in ("conv", "pool"):
            continue
        kernel = _pair(config.get("kernel_size") or config["pool_size"])
        strides = _pair(config["strides"] or config["pool_size"])
        size = tuple(int(side) for side in node.input_tensors[0].shape[1:3])
        if kernel[0] != kernel[1] or strides[0] != strides[1] or size[0] != size[1]:
            raise NotDenseError(f"{where} is not square")
        if (size[0] - kernel[0]) % strides[0]:
            raise NotDenseError(f"{where}'s steps do not end on its input's last pixel")


def dihedral_unsupported_reason(model) -> str | None:
    """Why the whole-block pass cannot average over the 8 symmetries exactly, or None."""
    try:
        check_dense(model)
        check_dihedral(model)
    except NotDenseError as reason:
        return str(reason)
    return None


@dataclass(frozen=True)
class Phases:
    """Where the values of a fragmented tensor sit: batch element b holds the positions
    offsets[b] + step * m of the stride-1 map (per axis: rows, cols)."""

    step: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]


class DenseNetwork:
    """The model as a function of a whole tile: (rows, cols, bands) pixels ->
    the class scores of the windows starting at the positions asked for.

    method "fragments" (space_to_batch after every strided layer, unneeded phases
    dropped) or "dilation" (kernels dilated by the strides so far, all positions).
    symmetries 8: the mean of the 8 passes with every convolution kernel turned by
    one symmetry of the square (dihedral_kernel), which equals the mean of the model's
    scores over the 8 flips and rotations of each window (check_dihedral says when).
    """

    def __init__(self, model, info: ModelInfo, method: str = "fragments", symmetries: int = 1):
        check_dense(model)
        if symmetries not in (1, 8):
            raise ValueError("symmetries must be 1 or 8")
        if symmetries > 1:
            check_dihedral(model)
        self.model, self.info, self.method = model, info, method
        self.symmetries = symmetries
        self._symmetry = 0  # the one the graph walk traces now
        self.size = info.input_size
        self._functions: dict = {}
        self._phases: dict = {}

    # -- the graph walk ------------------------------------------------------

    def _run(self, graph, inputs: list, keep: tuple[int, int]) -> list:
        """Run a functional graph on (tensor, Phases-or-dilation) values."""
        graph = _graph(graph)
        values = {id(tensor): value for tensor, value in zip(graph.inputs, inputs, strict=True)}
        for node in _nodes(graph):
            arguments = [values[id(tensor)] for tensor in node.input_tensors]
            outputs = self._apply(node, arguments, keep)
            for tensor, value in zip(node.outputs, outputs, strict=True):
                values[id(tensor)] = value
        return [values[id(tensor)] for tensor in graph.outputs]

    def _apply(self, node, arguments: list, keep: tuple[int, int]) -> list:
        import tensorflow as tf

        layer = node.operation
        kind = layer_kind(layer)
        if kind == "model":
            return self._run(layer, arguments, keep)
        if kind == "identity":
            return arguments[:1]
        if kind == "merge":
            if len({value[1] for value in arguments}) != 1:
                raise NotDenseError(f"branches with different strides meet at layer {layer.name}")
            return [(layer([value[0] for value in arguments]), arguments[0][1])]
        x, where = arguments[0]
        if kind == "pointwise":
            return [(layer(x), where)]
        dilated = self.method == "dilation"
        dilation = where if dilated else (1, 1)
        config = layer.get_config()
        if kind == "crop":
            (top, bottom), (left, right) = (_pair(value) for value in config["cropping"])
            if dilated:
                top, bottom, left, right = (
                    top * dilation[0],
                    bottom * dilation[0],
                    left * dilation[1],
                    right * dilation[1],
                )
            shape = tf.shape(x)
            return [(x[:, top : shape[1] - bottom, left : shape[2] - right], where)]
        dtype = layer.compute_dtype
        x = tf.cast(x, dtype)
        if kind == "conv":
            strides = _pair(config["strides"])
            rate = _pair(config["dilation_rate"])
            y = tf.nn.conv2d(
                x,
                tf.cast(self._kernel(layer), dtype),
                strides=1,
                padding="VALID",
                dilations=[rate[0] * dilation[0], rate[1] * dilation[1]],
            )
            if layer.use_bias:
                y = y + tf.cast(layer.bias, dtype)
            y = layer.activation(y)
        elif kind == "pool":
            strides = _pair(config["strides"] or config["pool_size"])
            y = tf.nn.pool(
                x,
                _pair(config["pool_size"]),
                "MAX" if type(layer).__name__ == "MaxPooling2D" else "AVG",
                strides=[1, 1],
                padding="VALID",
                dilations=list(dilation),
            )
        else:  # global pooling over the window's last k x k map: a k x k pooling at stride 1
            strides = (1, 1)
            window = tuple(int(side) for side in node.input_tensors[0].shape[1:3])
            y = tf.nn.pool(
                x,
                window,
                "MAX" if type(layer).__name__ == "GlobalMaxPooling2D" else "AVG",
                strides=[1, 1],
                padding="VALID",
                dilations=list(dilation),
            )
        if strides == (1, 1):
            return [(y, where)]
        if dilated:
            return [(y, (dilation[0] * strides[0], dilation[1] * strides[1]))]
        return [self._split(y, where, strides, keep)]

    def _kernel(self, layer):
        """The layer's kernel, turned by the symmetry traced now."""
        return dihedral_kernel(layer.kernel, self._symmetry) if self._symmetry else layer.kernel

    def _split(self, y, where: Phases, strides: tuple[int, int], keep: tuple[int, int]):
        """Split a stride-1 map into phase fragments, keeping those a window needs."""
        import tensorflow as tf

        shape = tf.shape(y)
        paddings = [[0, (-shape[axis + 1]) % strides[axis]] for axis in (0, 1)]
        fragments = tf.space_to_batch(y, list(strides), paddings)
        step = (where.step[0] * strides[0], where.step[1] * strides[1])
        needed = [math.gcd(keep[axis], step[axis]) for axis in (0, 1)]
        indices, offsets = [], []
        count = len(where.offsets)
        for i in range(strides[0]):
            for j in range(strides[1]):
                for b, (row, col) in enumerate(where.offsets):
                    offset = (row + where.step[0] * i, col + where.step[1] * j)
                    if offset[0] % needed[0] == 0 and offset[1] % needed[1] == 0:
                        indices.append((i * strides[1] + j) * count + b)
                        offsets.append(offset)
        return tf.gather(fragments, indices), Phases(step, tuple(offsets))

    # -- traced tiles --------------------------------------------------------

    def _function(self, keep: tuple[int, int], dtype: np.dtype, bands: int):
        """The traced pass for windows whose starts repeat every keep[0] rows and
        keep[1] cols (0: a single window start on that axis)."""
        key = (keep, np.dtype(dtype).str, bands)
        if key not in self._functions:
            import tensorflow as tf

            info = self.info
            mean = tf.constant(info.mean, tf.float32) if info.normalise_in_front else None
            std = tf.constant(info.std, tf.float32) if info.normalise_in_front else None

            @tf.function(
                autograph=False,
                input_signature=[tf.TensorSpec((None, None, bands), tf.as_dtype(dtype))],
            )
            def forward(tile):
                pixels = tf.cast(tile, tf.float32)[tf.newaxis]
                if mean is not None:
                    pixels = (pixels - mean) / std
                start = (1, 1) if self.method == "dilation" else Phases((1, 1), ((0, 0),))
                turned = []
                for symmetry in range(self.symmetries):
                    self._symmetry = symmetry
                    (scores, where), *_ = self._run(self.model, [(pixels, start)], keep)
                    turned.append(tf.cast(scores, tf.float32))
                self._symmetry = 0
                self._phases[key] = where
                return turned[0] if len(turned) == 1 else tf.add_n(turned) / len(turned)

            self._functions[key] = forward
        return self._functions[key]

    def tile(self, pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Class scores (len(rows), len(cols), classes) of the windows starting at
        pixels[rows[a], cols[b]]; rows and cols are evenly spaced (or single)."""
        keep = (
            int(rows[1] - rows[0]) if len(rows) > 1 else 0,
            int(cols[1] - cols[0]) if len(cols) > 1 else 0,
        )
        if self.method == "dilation" and keep != (1, 1):
            raise ValueError("the dilation method computes stride 1 only")
        tile = pixels[rows[0] : rows[-1] + self.size, cols[0] : cols[-1] + self.size]
        function = self._function(keep, pixels.dtype, pixels.shape[-1])
        scores = function(tile).numpy()
        where = self._phases[(keep, np.dtype(pixels.dtype).str, pixels.shape[-1])]
        rows, cols = rows - rows[0], cols - cols[0]
        if self.method == "dilation":
            return scores[0][np.ix_(rows, cols)]
        lookup = np.full(where.step, -1)
        for index, (row, col) in enumerate(where.offsets):
            lookup[row, col] = index
        fragment = lookup[np.ix_(rows % where.step[0], cols % where.step[1])]
        if np.any(fragment < 0):
            raise AssertionError("a requested window fell in a dropped fragment")
        return scores[fragment, (rows // where.step[0])[:, None], (cols // where.step[1])[None, :]]


def _runs(starts: np.ndarray, stride: int) -> list[np.ndarray]:
    """Window starts split into evenly spaced runs: those `stride` apart, then the
    last one alone when the scene's edge moved it (window_centres clips it)."""
    if len(starts) > 1 and starts[-1] - starts[-2] != stride:
        return [starts[:-1], starts[-1:]]
    return [starts]


@dataclass
class DensePredictor:
    """The whole-block predictor: each ReadBlock's windows from DenseNetwork tiles
    of about DENSE_TILE_PIXELS window starts (column chunks of the block).
    symmetries 8: averaged over the 8 flips and rotations (test-time augmentation)."""

    model: object
    info: ModelInfo
    prefetch_depth: int = 4
    tile_pixels: int = DENSE_TILE_PIXELS
    phase_method: str = "fragments"
    method: str = "dense"
    symmetries: int = 1

    def __post_init__(self):
        self.network = DenseNetwork(self.model, self.info, self.phase_method, self.symmetries)

    def predict_block(self, block: ReadBlock) -> np.ndarray:
        """(grid rows, grid cols, classes) scores of every window of the block."""
        stride = block.stride
        grid = np.empty(
            (len(block.centre_rows), len(block.centre_cols), len(self.info.class_names)),
            np.float32,
        )
        row_runs = _runs(block.window_rows, stride)
        height = int(block.window_rows[-1] - block.window_rows[0]) + 1
        chunk = max(1, self.tile_pixels // max(height, 1) // stride)
        first_row = 0
        for rows in row_runs:
            first_col = 0
            for cols in _runs(block.centre_cols, stride):
                for start in range(0, len(cols), chunk):
                    part = cols[start : start + chunk]
                    grid[
                        first_row : first_row + len(rows),
                        first_col + start : first_col + start + len(part),
                    ] = self.network.tile(block.pixels, rows, part)
                first_col += len(cols)
            first_row += len(rows)
        grid[block.centre_nodata] = np.nan
        return grid

    def predict(
        self, blocks: Iterator[ReadBlock], advance: Callable[[int], None]
    ) -> Iterator[PredictedBlock]:
        items = prefetch(blocks, self.prefetch_depth) if self.prefetch_depth > 0 else blocks
        for block in items:
            grid = self.predict_block(block)
            advance(block.centre_nodata.size)
            yield PredictedBlock(block, grid)
