"""Networks: one table of backbones, building, ImageNet -> multispectral transfer,
freezing and loading.

A model built here takes raw pixel values (uint8 RGB or uint16 digital numbers
as float32, shape (batch, 64, 64, bands)) and holds its normalisation; the
talk's augmentation is a training-only layer that the saved file leaves out
(inference_model), so model.keras holds stock Keras layers only.
Training lives in training.py, reports in reports.py, precision in precision.py.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
About 710 lines: every use of the backbone table (build, the two transfers, freezing,
the saved and runtime forms of a model) stays beside it.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_sentinel.errors import InputError
from cnn_sentinel.layers import custom_layers, custom_objects, fused_batch_normalization_class
from cnn_sentinel.model_info import ModelInfo
from cnn_sentinel.precision import dtype_policy
from image_functions import (
    IMAGE_SIZE,
    RGB_BAND_NAMES,
    augmentation_layers,
    normalization_layer,
)


@dataclass(frozen=True)
class Backbone:
    """Everything the project knows about one backbone, under its key in BACKBONES.

    build: (rows, cols, bands) -> Keras model without top, random weights, named
    after its key. first_conv: its first convolution (replaced by the 04
    "first-conv" variant). frozen_through: fine-tuning keeps the backbone frozen up
    to and including this layer. head_units: Dense layers between global average
    pooling and the softmax. channel_bands: its 3 input channels as Sentinel-2
    bands (ImageNet kernels are mapped to bands by these). imagenet: Keras' ImageNet
    weights without top (file name, download folder, MD5), or None.
    """

    build: Callable[[tuple[int, int, int]], object]
    first_conv: str
    frozen_through: str
    head_units: tuple[int, ...] = ()
    channel_bands: tuple[str, ...] = RGB_BAND_NAMES
    imagenet: tuple[str, str, str] | None = None


# Convolutions per block of VGG16 (filters 64, 128, 256, 512, 512) and of "tiny".
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
TINY_BLOCKS = ((16, 1), (32, 1))
# Filters of resnet-valid: stem, stage 1 (30 x 30), stage 2 (11 x 11), stage 3 (5 x 5).
RESNET_VALID_WIDTHS = (32, 64, 128, 256)
# resnet-valid-narrow: the same network at 3/4 of the filters (0.56x the FLOPs).
RESNET_VALID_NARROW_WIDTHS = (24, 48, 96, 192)
# Filters of tiny-valid: stem (16 x 16), conv2 (14 x 14, pooled to 7 x 7), conv3 (5 x 5).
TINY_VALID_WIDTHS = (16, 32, 64)
# Its batch normalisation forgets faster than Keras' 0.99: a demo epoch is 17 steps, and
# at 0.99 the statistics used for validation lag the weights by about 6 epochs.
TINY_VALID_BN_MOMENTUM = 0.9
# The backbones (adding one is one entry). vgg16 and densenet201 are the talk's; the
# talk froze VGG16's layers[:4] (input + block 1) and DenseNet201's layers[:7] (stem
# to pool1); VGG16 was trained on Caffe-style BGR input, DenseNet on RGB.
# "tiny" is a two-block CNN for tests, not a talk network.
# "vgg16-bn" is VGG16 with batch normalisation after every convolution: not the
# talk's network but the documented fix when VGG16 from scratch does not converge
# (from scratch only: Keras has no ImageNet weights for it).
# "resnet-valid" is the project's own from-scratch network for 64 x 64 patches on a
# CPU: a stride-2 stem, residual stages with batch normalisation, and no zero padding
# anywhere inside the window ('valid' convolutions), so that a whole scene can be
# classified in one fully convolutional pass that equals the per-window result;
# "resnet-valid-narrow" is its candidate at 3/4 of the filters (benchmarks/README.md).
# "tiny-valid" is the demo's network (`make demo`): a stride-4 stem and three small
# 'valid' convolutions, so 06 classifies a scene in one dense pass; under 1/5 of tiny's
# FLOPs (benchmarks/README.md#demo).
BACKBONES = {
    "vgg16": Backbone(
        build=lambda shape: keras_application("VGG16", shape),
        first_conv="block1_conv1",
        frozen_through="block1_pool",
        head_units=(2048, 2048),
        channel_bands=("B02", "B03", "B04"),
        imagenet=(
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "vgg16",
            "6d6bbae143d832006294945121d1f1fc",
        ),
    ),
    "densenet201": Backbone(
        build=lambda shape: keras_application("DenseNet201", shape),
        first_conv="conv1_conv",
        frozen_through="pool1",
        channel_bands=RGB_BAND_NAMES,
        imagenet=(
            "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "densenet",
            "c13680b51ded0fb44dff2d8f86ac8bb1",
        ),
    ),
    "tiny": Backbone(
        build=lambda shape: plain_cnn(shape, TINY_BLOCKS, "tiny"),
        first_conv="block1_conv1",
        frozen_through="block1_pool",
    ),
    "vgg16-bn": Backbone(
        build=lambda shape: plain_cnn(shape, VGG16_BLOCKS, "vgg16-bn"),
        first_conv="block1_conv1",
        frozen_through="block1_pool",
        head_units=(2048, 2048),
    ),
    "resnet-valid": Backbone(
        build=lambda shape: resnet_valid(shape),
        first_conv="stem_conv",
        frozen_through="stem_relu",
    ),
    "resnet-valid-narrow": Backbone(
        build=lambda shape: resnet_valid(shape, RESNET_VALID_NARROW_WIDTHS, "resnet-valid-narrow"),
        first_conv="stem_conv",
        frozen_through="stem_relu",
    ),
    "tiny-valid": Backbone(
        build=lambda shape: tiny_valid(shape),
        first_conv="stem_conv",
        frozen_through="stem_relu",
    ),
}
ARCHITECTURES = tuple(BACKBONES)
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file}"
# How 04 feeds 13 bands to an ImageNet backbone (see build_network).
VARIANTS = ("adapter", "first-conv")
# Non-RGB kernels of a "first-conv" backbone start at this fraction of the RGB kernels' std.
FIRST_CONV_OTHER_BAND_SCALE = 0.1
ADAPTER_LAYER = "band_adapter"
MODEL_FILE = "model.keras"


def backbone_entry(arch: str) -> Backbone:
    """BACKBONES[arch], or InputError naming the choices."""
    if arch not in BACKBONES:
        raise InputError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch}.")
    return BACKBONES[arch]


# ---------------------------------------------------------------------------
# Backbones and weights
# ---------------------------------------------------------------------------


def keras_cache_folder() -> Path:
    """Where Keras keeps downloaded weights ($KERAS_HOME/models, default ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(arch: str, weights: str | None) -> Path | None:
    """The weights file for `weights`: None/"none", "imagenet" or a local file path.

    "imagenet" uses Keras' cache and downloads when missing; an offline machine
    gets one sentence saying where to put the file instead.
    """
    if weights is None or str(weights).lower() in ("", "none"):
        return None
    if str(weights).lower() != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"weights file {path} does not exist.")
        return path
    imagenet = backbone_entry(arch).imagenet
    if imagenet is None:
        raise InputError(
            f"Keras has no ImageNet weights for arch {arch}; pass --weights PATH or --weights none."
        )
    file_name, folder, file_hash = imagenet
    cached = keras_cache_folder() / file_name
    if cached.is_file():
        return cached
    url = IMAGENET_URL.format(folder=folder, file=file_name)
    import keras

    try:
        return Path(
            keras.utils.get_file(file_name, url, cache_subdir="models", file_hash=file_hash)
        )
    except Exception:  # noqa: BLE001 - any download failure gets the same advice
        raise InputError(
            f"cannot download the ImageNet weights of {arch} from {url}; copy {file_name} "
            f"into {cached} or pass --weights PATH to a local copy."
        ) from None


def with_fused_batch_normalization(model):
    """A copy of `model` (a backbone or a whole classifier, nested models included)
    with every BatchNormalization fused, same weights: the speed substitution that
    06 and resumed training make after loading a saved model under mixed precision."""
    import keras

    fused = fused_batch_normalization_class()

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return fused.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def with_dihedral_averaging(model):
    """Test-time augmentation: a model that returns the mean of `model`'s outputs over
    the 8 symmetries of the square window (4 rotations by 90 degrees, each with and
    without a flip). For evaluation and 06; built after loading, never saved."""
    import keras
    from keras import ops

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    rotations = [inputs]
    for _ in range(3):  # rot90: transpose rows and columns, then flip the rows
        rotations.append(ops.flip(ops.transpose(rotations[-1], (0, 2, 1, 3)), axis=1))
    variants = rotations + [ops.flip(rotation, axis=2) for rotation in rotations]
    outputs = keras.layers.Average(name="dihedral_average")([model(x) for x in variants])
    return keras.Model(inputs, outputs, name=f"{model.name}_dihedral_average")


def inference_model(model):
    """A copy of a trained classifier to save for users: stock Keras layers only.

    The talk's augmentation (training only) is left out and fused batch
    normalisation goes back to Keras' BatchNormalization (same weights and dtype
    policies), so plain `keras.saving.load_model` opens the file anywhere and
    predicts what `model` predicts. Speed substitutions are made after loading.
    """
    import keras

    fused = fused_batch_normalization_class()
    augmentation = custom_layers()["RandomFlipRotation"]

    def clone(layer):
        if isinstance(layer, fused):
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, augmentation) else layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def build_backbone(arch: str, band_count: int):
    """A backbone without top for (64, 64, band_count) input, random weights.

    The model is named after `arch`, so it can be found in a classifier with
    `model.get_layer(arch)`. Under a mixed-precision policy its batch
    normalisation layers are fused ones (see fused_batch_normalization_class).
    """
    return fused_under_mixed_precision(_stock_backbone(arch, band_count))


def fused_under_mixed_precision(backbone):
    """`backbone` itself, or under a mixed-precision policy a copy with its batch
    normalisation fused (same weights)."""
    import keras

    if keras.mixed_precision.global_policy().name.startswith("mixed_") and any(
        type(layer) is keras.layers.BatchNormalization for layer in backbone.layers
    ):
        return with_fused_batch_normalization(backbone)
    return backbone


def _stock_backbone(arch: str, band_count: int):
    return backbone_entry(arch).build((IMAGE_SIZE, IMAGE_SIZE, band_count))


def keras_application(name: str, shape: tuple[int, int, int]):
    """A keras.applications network (e.g. "VGG16") without top, random weights."""
    import keras

    return getattr(keras.applications, name)(include_top=False, weights=None, input_shape=shape)


def plain_cnn(shape: tuple[int, int, int], blocks: Sequence[tuple[int, int]], name: str):
    """VGG-style blocks of (filters, convolutions): 3x3 'same' convolutions, each
    followed by batch normalisation and ReLU, then 2x2 max pooling per block."""
    import keras

    inputs = keras.Input(shape)
    x = inputs
    for block, (filters, convolutions) in enumerate(blocks, start=1):
        for index in range(1, convolutions + 1):
            x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv{index}")(x)
            suffix = "" if convolutions == 1 else str(index)
            x = keras.layers.BatchNormalization(name=f"block{block}_bn{suffix}")(x)
            x = keras.layers.Activation("relu", name=f"block{block}_relu{suffix}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=name)


def resnet_valid(shape, widths: Sequence[int] = RESNET_VALID_WIDTHS, name: str = "resnet-valid"):
    """The project's from-scratch backbone for 64 x 64 patches, without zero padding.

    stem: 2x2 convolution, stride 2 (64 -> 32); stage 1: 3x3 convolution (-> 30)
    and a residual block of two 3x3 convolutions (-> 26), 2x2 max pooling (-> 13);
    stage 2: the same at twice the filters (-> 11 -> 7); stage 3: one 3x3
    convolution (-> 5). Every convolution is 'valid', followed by batch
    normalisation and ReLU; a residual block adds its input cropped by the two
    pixels each side that its convolutions lose. About 212 MFLOPs per patch.
    """
    import keras

    def convolution(x, filters, kernel, name, strides=1, relu=True):
        x = keras.layers.Conv2D(
            filters, kernel, strides=strides, use_bias=False, name=f"{name}_conv"
        )(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    def residual(x, filters, name):
        y = convolution(x, filters, 3, f"{name}a")
        y = convolution(y, filters, 3, f"{name}b", relu=False)
        shortcut = keras.layers.Cropping2D(2, name=f"{name}_crop")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(
            keras.layers.Add(name=f"{name}_add")([shortcut, y])
        )

    inputs = keras.Input(shape)
    x = convolution(inputs, widths[0], 2, "stem", strides=2)
    x = convolution(x, widths[1], 3, "stage1")
    x = residual(x, widths[1], "res1")
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = convolution(x, widths[2], 3, "stage2")
    x = residual(x, widths[2], "res2")
    x = convolution(x, widths[3], 3, "stage3")
    return keras.Model(inputs, x, name=name)


def tiny_valid(shape, widths: Sequence[int] = TINY_VALID_WIDTHS, name: str = "tiny-valid"):
    """The demo's small backbone for 64 x 64 patches, without zero padding.

    stem: 4x4 convolution, stride 4 (64 -> 16); conv2: 3x3 convolution (-> 14),
    2x2 max pooling (-> 7); conv3: 3x3 convolution (-> 5). Every convolution is
    'valid', followed by batch normalisation and ReLU, so 06 runs it densely and
    exactly (cnn_sentinel/scene/dense.py). About 4.4 MFLOPs per 13-band patch (tiny: 25).
    """
    import keras

    x = inputs = keras.Input(shape)
    for (filters, kernel, strides), stage in zip(
        ((widths[0], 4, 4), (widths[1], 3, 1), (widths[2], 3, 1)),
        ("stem", "conv2", "conv3"),
        strict=True,
    ):
        x = keras.layers.Conv2D(
            filters, kernel, strides=strides, use_bias=False, name=f"{stage}_conv"
        )(x)
        x = keras.layers.BatchNormalization(momentum=TINY_VALID_BN_MOMENTUM, name=f"{stage}_bn")(x)
        x = keras.layers.ReLU(name=f"{stage}_relu")(x)
        if stage == "conv2":
            x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    return keras.Model(inputs, x, name=name)


def pretrained_backbone(arch: str, weights_file: Path):
    """A 3-band backbone with the weights of `weights_file` (an ImageNet-style file
    for the backbone without top: legacy .h5 or Keras 3 .weights.h5). The weights go
    into the stock layers the file was saved from, then batch normalisation is fused."""
    backbone = _stock_backbone(arch, 3)
    try:
        backbone.load_weights(str(weights_file))
    except Exception as error:  # noqa: BLE001 - Keras raises several types for a wrong file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else "mismatch"
        raise InputError(
            f"weights file {weights_file} does not fit a {arch} backbone without top ({reason})."
        ) from None
    return fused_under_mixed_precision(backbone)


def first_conv_backbone(source, arch: str, band_names: Sequence[str], seed: int = 0):
    """A backbone for `band_names` with every weight of the 3-band `source` copied
    except the first convolution, whose kernel is rebuilt per band: B04, B03, B02
    take the ImageNet kernel slice of their colour, other bands start small
    (normal, FIRST_CONV_OTHER_BAND_SCALE x the RGB kernels' std).
    """
    target = build_backbone(arch, len(band_names))
    rng = np.random.default_rng(seed)
    for source_layer, target_layer in zip(source.layers, target.layers, strict=True):
        weights = source_layer.get_weights()
        if not weights:
            continue
        if target_layer.name == backbone_entry(arch).first_conv:
            weights[0] = first_conv_kernel(weights[0], arch, band_names, rng)
        target_layer.set_weights(weights)
    return target


def first_conv_kernel(
    kernel: np.ndarray,
    arch: str,
    band_names: Sequence[str],
    rng: np.random.Generator,
    channel_bands: Sequence[str] | None = None,
) -> np.ndarray:
    """Kernel (k, k, len(band_names), filters) from a kernel (k, k, channels, filters)
    whose input channels are `channel_bands` (default: the backbone's ImageNet
    channels); bands without a channel start small and random."""
    channels = backbone_entry(arch).channel_bands if channel_bands is None else channel_bands
    channel_of = {band: index for index, band in enumerate(channels)}
    scale = FIRST_CONV_OTHER_BAND_SCALE * float(kernel.std())
    result = np.empty((*kernel.shape[:2], len(band_names), kernel.shape[3]), kernel.dtype)
    for index, band in enumerate(band_names):
        if band in channel_of:
            result[:, :, index, :] = kernel[:, :, channel_of[band], :]
        else:
            result[:, :, index, :] = rng.normal(0.0, scale, kernel[:, :, 0, :].shape)
    return result


def is_project_model(weights: str | Path | None) -> bool:
    """Whether a WEIGHTS setting names a trained classifier of this project (a .keras
    file of 02-05, with its model.json) rather than backbone weights."""
    return weights is not None and str(weights).lower().endswith(".keras")


def project_model_info(model_path: str | Path) -> ModelInfo:
    """The model.json of a trained classifier of this project, which must name one of
    the architectures; InputError otherwise."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist.")
    info = ModelInfo.load(model_path)
    if info is None or not info.arch:
        raise InputError(
            f"model {model_path} has no model.json naming its architecture; give a "
            "model.keras trained by 02-05 (or one of models/)."
        )
    if info.arch not in BACKBONES:
        raise InputError(f"model {model_path} has an unknown architecture {info.arch}.")
    return info


def network_from_model(
    model_path: str | Path,
    band_names: Sequence[str],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    augment: bool = True,
):
    """A classifier for `band_names` that starts from a trained classifier of this
    project (e.g. the RGB model for a 13-band one): returns (model, arch).

    The new model is build_network(arch of the source) with the normalisation of
    the new data; every backbone weight is copied, except that the first
    convolution is rebuilt per band: bands the source model saw (B04, B03, B02 of
    an RGB model) take the source kernels of those bands, the others start small
    (first_conv_kernel). The head is copied when the classes are the same.
    """
    source_path = Path(model_path)
    info = project_model_info(source_path)
    shared = [band for band in band_names if band in info.band_names]
    if not shared:
        raise InputError(
            f"model {source_path} was trained on bands {', '.join(info.band_names)}, none of "
            f"which are among {', '.join(band_names)}; nothing to transfer."
        )
    source = load_model(source_path)
    target = build_network(
        info.arch, band_names, len(class_names), mean, std, seed=seed, augment=augment
    )
    first_conv = backbone_entry(info.arch).first_conv
    source_backbone, target_backbone = source.get_layer(info.arch), target.get_layer(info.arch)
    rng = np.random.default_rng(seed)
    for source_layer, target_layer in zip(
        source_backbone.layers, target_backbone.layers, strict=True
    ):
        weights = source_layer.get_weights()
        if target_layer.name == first_conv:
            weights[0] = first_conv_kernel(
                weights[0], info.arch, band_names, rng, channel_bands=info.band_names
            )
        if weights:
            target_layer.set_weights(weights)
    if list(class_names) == list(info.class_names):
        for layer in target.layers:
            if layer.name == "predictions" or layer.name.startswith("head_dense"):
                layer.set_weights(source.get_layer(layer.name).get_weights())
    return target, info.arch


def adapter_kernel(arch: str, band_names: Sequence[str], seed: int = 0) -> np.ndarray:
    """Initial 1x1 kernel (1, 1, bands, 3) of the band adapter.

    Each ImageNet input channel starts as a copy of its Sentinel-2 band (B02, B03,
    B04) so stage 1 begins from the RGB network; channels whose band is missing
    start Glorot-uniform random.
    """
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (len(band_names) + 3))
    kernel = rng.uniform(-limit, limit, (1, 1, len(band_names), 3)).astype(np.float32)
    for channel, band in enumerate(backbone_entry(arch).channel_bands):
        if band in band_names:
            kernel[0, 0, :, channel] = 0.0
            kernel[0, 0, list(band_names).index(band), channel] = 1.0
    return kernel


def build_network(
    arch: str,
    band_names: Sequence[str],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    weights: str | Path | None = None,
    variant: str | None = None,
    seed: int = 0,
    augment: bool = True,
):
    """Self-contained classifier: raw pixels -> normalisation -> augmentation
    (training only) -> [band adapter] -> backbone -> head -> float32 softmax.

    arch: vgg16 | densenet201 | tiny. band_names: the input bands in order.
    weights: None (random), "imagenet" or a weights file of the 3-band backbone
    without top. With weights and other than 3 bands a `variant` is needed:
    "adapter" (Conv2D 1x1 bands -> 3 in front of the ImageNet backbone) or
    "first-conv" (backbone with a band-count first convolution, all other
    ImageNet weights copied). Heads: GlobalAveragePooling2D, the backbone's
    head_units relu Dense layers, Dense(num_classes, softmax) in float32.
    `augment=False` leaves out the augmentation layers (for timing the network alone).
    Preprocessing layers are float32 whatever the global mixed-precision policy
    (uint16 digital numbers do not fit bfloat16's 8-bit mantissa).
    """
    import keras

    head_units = backbone_entry(arch).head_units
    if variant is not None and variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, not {variant}.")
    band_names = list(band_names)
    weights_file = resolve_weights(arch, None if weights is None else str(weights))
    if weights_file is not None and variant is None and len(band_names) != 3:
        raise InputError(
            f"pretrained weights take 3 bands, not {len(band_names)}; use variant adapter or "
            "first-conv (04_train_ms_finetuning.py) or --bands rgb."
        )
    with dtype_policy("float32"):
        inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, len(band_names)), name="pixels")
        x = normalization_layer(mean, std)(inputs)
        if augment:
            x = augmentation_layers(seed=seed)(x)
    if variant == "adapter":
        adapter = keras.layers.Conv2D(3, 1, name=ADAPTER_LAYER)
        x = adapter(x)
        adapter.set_weights([adapter_kernel(arch, band_names, seed), np.zeros(3, np.float32)])
    if weights_file is None:
        backbone = build_backbone(arch, 3 if variant == "adapter" else len(band_names))
    elif variant == "first-conv":
        backbone = first_conv_backbone(
            pretrained_backbone(arch, weights_file), arch, band_names, seed
        )
    else:
        backbone = pretrained_backbone(arch, weights_file)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="average_pool")(x)
    for index, units in enumerate(head_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{index}")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=f"{arch}_classifier")


# ---------------------------------------------------------------------------
# Freezing and loading
# ---------------------------------------------------------------------------


def set_trainable(model, arch: str, trainable: str, variant: str | None = None) -> None:
    """Freeze the backbone of `model` for a stage; layers outside it always train.

    The first convolution of a "first-conv" backbone is new, so it trains in
    every stage, as the talk trained it with the head.
    """
    if trainable not in ("head", "above-block1", "all"):
        raise ValueError(f"trainable must be head, above-block1 or all, not {trainable}")
    model.trainable = True
    backbone = model.get_layer(arch)
    backbone.trainable = True
    names = [layer.name for layer in backbone.layers]
    if trainable == "head":
        frozen_count = len(names)
    elif trainable == "above-block1":
        frozen_count = names.index(backbone_entry(arch).frozen_through) + 1
    else:
        frozen_count = 0
    for position, layer in enumerate(backbone.layers):
        layer.trainable = position >= frozen_count
    if variant == "first-conv":
        backbone.get_layer(backbone_entry(arch).first_conv).trainable = True


def load_model(model_path: str | Path, compile: bool = False):
    """Load a saved Keras model (.keras, .h5, .hdf5) that may hold the project's layers.

    The one loader of the project: training resumes, evaluation and 06 use it.
    InputError naming the file when it is missing or not a loadable Keras model.
    """
    import keras

    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist.")
    damaged = damaged_model_file(model_path)
    if damaged:
        raise InputError(f"model {model_path} is damaged or not a Keras model ({damaged}).")
    try:
        return keras.saving.load_model(model_path, compile=compile, custom_objects=custom_objects())
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else "unreadable"
        raise InputError(f"model {model_path} cannot be loaded ({reason}).") from None


# The first bytes of every HDF5 file (.h5, .hdf5: Keras 2's format and the talk's models).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def damaged_model_file(model_path: Path) -> str:
    """Why a model file cannot be a complete Keras model, or "" when its container looks
    whole: a .keras file is a zip archive (a truncated one has no central directory),
    an .h5/.hdf5 file starts with the HDF5 signature. Checked before Keras, whose own
    message for such files is "File not found"."""
    if model_path.suffix == ".keras":
        if not zipfile.is_zipfile(model_path):
            return "not a complete .keras zip archive: truncated, or another kind of file"
        try:
            with zipfile.ZipFile(model_path) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            return f"its zip archive is broken: {error}"
        return f"{broken} inside it is corrupt" if broken else ""
    if model_path.suffix in (".h5", ".hdf5"):
        with model_path.open("rb") as handle:
            if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                return "not an HDF5 file"
    return ""
