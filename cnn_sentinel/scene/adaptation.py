"""Scene-adaptive batch normalisation: the model meets the scene's own statistics.

A model trained on EuroSAT's summer L1C patches sees another season, another
atmosphere or L2A surface reflectance as a shift of every layer's input
statistics; its batch-normalisation layers then normalise with the wrong mean
and variance, and whole classes vanish from the map (the sea of an L2A scene
read as HerbaceousVegetation). AdaBN (Li et al. 2016) re-estimates those
statistics on the scene itself, with no labels and no training. One scene's
windows are correlated and their classes unbalanced, so taking the scene's
statistics whole spreads the labels over every class; 06 therefore blends them
with the training statistics (BLEND, the scene's share) and estimates them from
windows spread over the whole scene, in strips, clouds and no data left out.

The layers are re-estimated in order, each from the windows passed through the
layers before it as already adapted. Only the model object in memory changes:
the user's file stays as it is, and the statistics are a small record
(`Adaptation`) that can be applied again to another copy of the model (a worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene.clouds import CloudSettings, scene_cloud_mask
from cnn_sentinel.scene.reading import read_block, window_view

ADAPT_MODES = ("auto", "on", "off")
# How far a scene is from the training data: the mean over every batch-normalisation
# layer of |scene mean - training mean| / training standard deviation, per channel.
# At or below SHIFT_NONE auto leaves the model as it is: EuroSAT's own validation patches
# (0.09 RGB, 0.11 13-band) and the winter L1C T33UUU scene (0.47-0.48), where adapting
# traded fields for villages and ponds (class-balanced 0.40 -> 0.43, area-weighted 0.50 ->
# 0.47: no clear gain). At or above SHIFT_FULL (the L2A Aberystwyth scene: 0.93, where it
# takes the map from 0.00 to 0.84) it takes the scene's share BLEND in full; linearly between.
SHIFT_NONE = 0.5
SHIFT_FULL = 0.9
# Strips of the scene the sample comes from (fewer when the scene is small).
SAMPLE_STRIPS = 16
# Windows per step of the statistics: VGG16's features of 32 windows take 0.14 GB.
PREDICT_BATCH = 32
# The banner's and the record's words for a scene without a pixel to adapt to.
NOTHING_TO_ADAPT_TO = "nothing to adapt to: every pixel is no data or cloud"


@dataclass
class Adaptation:
    """Blended statistics per batch-normalisation layer (by layer path), and how they
    were made: windows sampled, the scene's share, the seed."""

    statistics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    windows: int = 0
    blend: float = 0.0
    seed: int = 0
    shift: float | None = None

    def words(self) -> str:
        """For 06's banner."""
        if self.windows == 0:
            return f"batch normalisation as trained ({NOTHING_TO_ADAPT_TO})"
        shift = "" if self.shift is None else f"shift {self.shift:.2f}, "
        if not self.statistics:
            return f"batch normalisation as trained (the scene is close to it: {shift[:-2]})"
        return (
            f"batch normalisation adapted to the scene ({shift}scene share {self.blend:.2f}, "
            f"{self.windows} windows)"
        )

    def record(self) -> dict[str, str]:
        """For the label map's metadata (the run's record); "none needed": auto measured
        the scene close to the training data and left the model as it is; "nothing to
        adapt to": the scene has no pixel with data outside clouds."""
        adapted = "batchnorm" if self.statistics else "none needed"
        return {
            "ADAPTATION": adapted if self.windows else "nothing to adapt to",
            "ADAPTATION_SHIFT": "" if self.shift is None else f"{self.shift:.4f}",
            "ADAPTATION_WINDOWS": str(self.windows),
            "ADAPTATION_BLEND": f"{self.blend:.4g}",
            "ADAPTATION_SEED": str(self.seed),
            "ADAPTATION_LAYERS": str(len(self.statistics)),
        }


def check_adapt_settings(mode: str, blend: float, windows: int) -> None:
    """InputError for a mode, blend or sample size 06 cannot use."""
    if mode not in ADAPT_MODES:
        raise InputError(f"adapt must be one of {', '.join(ADAPT_MODES)}, not {mode}.")
    if not 0.0 <= blend <= 1.0:
        raise InputError(f"adapt blend must be between 0 and 1, not {blend}.")
    if windows < 16:
        raise InputError(f"adapt windows must be at least 16, not {windows}.")


def batch_normalization_layers(model) -> list[tuple[list, object]]:
    """Every BatchNormalization layer of a (possibly nested) functional model, in the
    order data flows, each with the chain of models that leads to it."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(([model], layer))
        elif isinstance(layer, keras.Model):
            found.extend(
                ([model, *chain], inner) for chain, inner in batch_normalization_layers(layer)
            )
    return found


def _input_statistics(chain: Sequence, layers: Sequence, windows: np.ndarray) -> list:
    """Per-channel (mean, variance) of what each of `layers` (all inside the last model
    of `chain`) receives for `windows`, through the nested models of `chain`; one pass,
    batch by batch, so memory holds one batch of features."""
    import keras

    parts = []
    for outer, inner in zip(chain[:-1], chain[1:], strict=True):
        tensor = inner._inbound_nodes[0].input_tensors[0]
        parts.append(keras.Model(outer.input, tensor))
    # Per window, each layer's input is reduced inside the model to its channel means and
    # mean squares: the features themselves (VGG16: 4 MB a window) never reach numpy.
    reduced = []
    for layer in layers:
        spatial = tuple(range(1, len(layer.input.shape) - 1))
        reduced += [
            keras.ops.mean(layer.input, axis=spatial),
            keras.ops.mean(keras.ops.square(layer.input), axis=spatial),
        ]
    parts.append(keras.Model(chain[-1].input, reduced))
    count, totals, squares = 0, [0.0] * len(layers), [0.0] * len(layers)
    for start in range(0, len(windows), PREDICT_BATCH):
        # Called eagerly batch by batch: `predict` would trace a new function per layer.
        values = windows[start : start + PREDICT_BATCH].astype(np.float32)
        for part in parts:
            values = part(values, training=False)
        values = [np.asarray(value, np.float64) for value in values]
        count += len(values[0])
        for number in range(len(layers)):  # per window, then summed over windows
            totals[number] = totals[number] + values[2 * number].sum(axis=0)
            squares[number] = squares[number] + values[2 * number + 1].sum(axis=0)
    means = [total / count for total in totals]
    return [
        (mean, np.maximum(square / count - np.square(mean), 0.0))
        for mean, square in zip(means, squares, strict=True)
    ]


def _layer_key(chain: Sequence, layer) -> str:
    return "/".join([model.name for model in chain[1:]] + [layer.name])


def sample_windows(
    dataset: gdal.Dataset,
    band_indices: Sequence[int],
    size: int,
    rgb_scaling: bool,
    reflectance_factor: float,
    count: int,
    seed: int = 0,
    cloud_bands: Sequence[int] | None = None,
    cloud_settings: CloudSettings | None = None,
) -> np.ndarray:
    """`count` windows (n, size, size, bands) spread over the scene, read exactly as 06
    reads them: SAMPLE_STRIPS strips of `size` rows, evenly spaced top to bottom,
    windows drawn at random inside them among the centres with data (and, when
    `cloud_bands` is given, without cloud). Fewer when the scene has fewer; none when
    every pixel is no data or cloud."""
    rows = dataset.RasterYSize
    before = size // 2
    strips = max(1, min(SAMPLE_STRIPS, rows // size))
    strip_rows = min(size, rows)
    tops = np.linspace(0, rows - strip_rows, strips).round().astype(int)
    random = np.random.default_rng(seed)
    per_strip = -(-count // strips)
    picked, taken = None, 0  # the windows, filled strip by strip (no second copy)
    for first in (int(top) for top in tops):
        last = first + strip_rows
        pixels, nodata = read_block(
            dataset,
            band_indices,
            size,
            first - before,
            last - before + size,
            rgb_scaling,
            reflectance_factor,
        )
        usable = ~nodata[before : before + strip_rows, before : before + dataset.RasterXSize]
        if cloud_bands is not None:
            usable &= ~scene_cloud_mask(dataset, cloud_bands, first, last, cloud_settings)
        centres = np.flatnonzero(usable)
        if not len(centres):
            continue
        chosen = random.choice(centres, size=min(per_strip, len(centres)), replace=False)
        row, col = np.divmod(np.sort(chosen), usable.shape[1])
        if picked is None:
            picked = np.empty((per_strip * strips, size, size, pixels.shape[-1]), pixels.dtype)
        picked[taken : taken + len(row)] = window_view(pixels, size)[row, col]
        taken += len(row)
    if picked is None:  # every pixel is no data or cloud: its map holds no class at all
        return np.empty((0, size, size, len(band_indices)), np.float32)
    return picked[: min(taken, count)]


def scene_shift(model, windows: np.ndarray) -> float:
    """How far `windows` are from the model's training data, as its batch-normalisation
    layers see them (as trained): the mean over layers and channels of |scene mean -
    training mean| / training standard deviation."""
    groups: dict[tuple, list] = {}  # layers by the nested model that holds them
    for chain, layer in batch_normalization_layers(model):
        groups.setdefault(tuple(chain), []).append(layer)
    shifts = []
    for chain, layers in groups.items():
        statistics = _input_statistics(chain, layers, windows)
        for layer, (mean, _) in zip(layers, statistics, strict=True):
            trained_mean = np.asarray(layer.moving_mean, np.float64)
            trained_std = np.sqrt(np.asarray(layer.moving_variance, np.float64) + layer.epsilon)
            shifts.append(np.mean(np.abs(mean - trained_mean) / trained_std))
    return float(np.mean(shifts))


def blend_for_shift(shift: float, blend: float) -> float:
    """The scene's share under ADAPT auto: none up to SHIFT_NONE, `blend` from SHIFT_FULL."""
    return blend * float(np.clip((shift - SHIFT_NONE) / (SHIFT_FULL - SHIFT_NONE), 0.0, 1.0))


def adapt(model, windows: np.ndarray, mode: str, blend: float, seed: int = 0) -> Adaptation:
    """06's adaptation: "on" estimates with the scene's share `blend`; "auto" first
    measures the scene's shift and scales the share by it (`blend_for_shift`), leaving
    the model untouched when the scene is close to the training data. No `windows`
    (every pixel no data or cloud): the model as it is, whatever the mode, since no
    pixel of the map takes a class."""
    if not len(windows):
        return Adaptation(windows=0, blend=0.0, seed=seed)
    shift = scene_shift(model, windows) if mode == "auto" else None
    share = blend if shift is None else blend_for_shift(shift, blend)
    if share == 0.0:
        return Adaptation(windows=len(windows), blend=0.0, seed=seed, shift=shift)
    adaptation = estimate(model, windows, share, seed)
    adaptation.shift = shift
    return adaptation


def estimate(model, windows: np.ndarray, blend: float, seed: int = 0) -> Adaptation:
    """Re-estimate the model's batch-normalisation statistics on `windows`, layer by
    layer, each blended as blend * scene + (1 - blend) * training; applies them to
    `model` (in memory) and returns them."""
    adaptation = Adaptation(windows=len(windows), blend=blend, seed=seed)
    for chain, layer in batch_normalization_layers(model):
        ((scene_mean, scene_variance),) = _input_statistics(chain, [layer], windows)
        mean = blend * scene_mean + (1 - blend) * np.asarray(layer.moving_mean)
        variance = blend * scene_variance + (1 - blend) * np.asarray(layer.moving_variance)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
        adaptation.statistics[_layer_key(chain, layer)] = (
            mean.astype(np.float32),
            variance.astype(np.float32),
        )
    return adaptation


def copy_model(model):
    """A copy of a Keras model with the same weights (and dtype policies), so adapting it
    leaves the original as it is."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def apply(model, adaptation: Adaptation) -> None:
    """Set the statistics of an `estimate` on another copy of the same model."""
    for chain, layer in batch_normalization_layers(model):
        mean, variance = adaptation.statistics[_layer_key(chain, layer)]
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
