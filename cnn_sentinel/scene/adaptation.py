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

ADAPT_MODES = ("auto", "off")
# Strips of the scene the sample comes from (fewer when the scene is small).
SAMPLE_STRIPS = 16
PREDICT_BATCH = 128


@dataclass
class Adaptation:
    """Blended statistics per batch-normalisation layer (by layer path), and how they
    were made: windows sampled, the scene's share, the seed."""

    statistics: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    windows: int = 0
    blend: float = 0.0
    seed: int = 0

    def words(self) -> str:
        """For 06's banner."""
        return (
            f"batch normalisation adapted to the scene ({self.windows} windows, "
            f"scene share {self.blend:g})"
        )

    def record(self) -> dict[str, str]:
        """For the label map's metadata (the run's record)."""
        return {
            "ADAPTATION": "batchnorm",
            "ADAPTATION_WINDOWS": str(self.windows),
            "ADAPTATION_BLEND": f"{self.blend:g}",
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


def _layer_inputs(chain: Sequence, layer, windows: np.ndarray) -> np.ndarray:
    """What `layer` receives for `windows`, through the nested models of `chain`."""
    import keras

    values = windows
    for outer, inner in zip(chain, [*chain[1:], layer], strict=True):
        tensor = inner.input if inner is layer else inner._inbound_nodes[0].input_tensors[0]
        if isinstance(tensor, (list, tuple)):
            tensor = tensor[0]
        part = keras.Model(outer.input, tensor)
        # Called eagerly batch by batch: `predict` would trace a new function per layer.
        values = np.concatenate(
            [
                np.asarray(part(values[start : start + PREDICT_BATCH], training=False))
                for start in range(0, len(values), PREDICT_BATCH)
            ]
        )
    return np.asarray(values, np.float64)


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
    `cloud_bands` is given, without cloud). Fewer when the scene has fewer."""
    rows = dataset.RasterYSize
    before = size // 2
    strips = max(1, min(SAMPLE_STRIPS, rows // size))
    strip_rows = min(size, rows)
    tops = np.linspace(0, rows - strip_rows, strips).round().astype(int)
    random = np.random.default_rng(seed)
    per_strip = -(-count // strips)
    picked = []
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
        picked.append(window_view(pixels, size)[row, col])
    if not picked:
        raise InputError("the scene has no window with data (and without cloud) to adapt to.")
    return np.concatenate(picked)[:count]


def estimate(model, windows: np.ndarray, blend: float, seed: int = 0) -> Adaptation:
    """Re-estimate the model's batch-normalisation statistics on `windows`, layer by
    layer, each blended as blend * scene + (1 - blend) * training; applies them to
    `model` (in memory) and returns them."""
    adaptation = Adaptation(windows=len(windows), blend=blend, seed=seed)
    for chain, layer in batch_normalization_layers(model):
        inputs = _layer_inputs(chain, layer, windows)
        axes = tuple(range(inputs.ndim - 1))
        mean = blend * inputs.mean(axis=axes) + (1 - blend) * np.asarray(layer.moving_mean)
        variance = blend * inputs.var(axis=axes) + (1 - blend) * np.asarray(layer.moving_variance)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
        adaptation.statistics[_layer_key(chain, layer)] = (
            mean.astype(np.float32),
            variance.astype(np.float32),
        )
    return adaptation


def apply(model, adaptation: Adaptation) -> None:
    """Set the statistics of an `estimate` on another copy of the same model."""
    for chain, layer in batch_normalization_layers(model):
        mean, variance = adaptation.statistics[_layer_key(chain, layer)]
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)
