"""Networks: build, ImageNet -> multispectral transfer, freezing, training, evaluation.

The numbered training scripts 02-05 are recipes over this module: each names its
bands, backbone, transfer variant and training stages; everything they share
(checking the split, building the self-contained model, checkpoints and resume,
strategy and mixed precision, the evaluation report) lives here.

A model built here takes raw pixel values (uint8 RGB or uint16 digital numbers
as float32, shape (batch, 64, 64, bands)) and holds its normalisation and its
training-only augmentation, so what trains is what is saved and classified.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from command_line import atomic_output
from image_functions import (
    CLASS_NAMES,
    IMAGE_SIZE,
    RGB_BAND_NAMES,
    InputError,
    augmentation_layers,
    band_statistics,
    class_folders,
    custom_layers,
    default_band_names,
    folder_dataset,
    list_class_images,
    load_band_stats,
    normalization_layer,
    read_image,
    select_bands,
    talk_constants,
)

# "tiny" is a two-block CNN for tests and quick demos, not a talk network.
# "vgg16-bn" is VGG16 with batch normalisation after every convolution: not the
# talk's network but the documented fix when VGG16 from scratch does not converge
# (from scratch only: Keras has no ImageNet weights for it).
# "resnet-valid" is the project's own from-scratch network for 64 x 64 patches on a
# CPU: a stride-2 stem, residual stages with batch normalisation, and no zero padding
# anywhere inside the window ('valid' convolutions), so that a whole scene can be
# classified in one fully convolutional pass that equals the per-window result.
ARCHITECTURES = ("vgg16", "densenet201", "tiny", "vgg16-bn", "resnet-valid")
# Filters of resnet-valid: stem, stage 1 (30 x 30), stage 2 (11 x 11), stage 3 (5 x 5).
RESNET_VALID_WIDTHS = (32, 64, 128, 256)
# Convolutions per block of VGG16 (filters 64, 128, 256, 512, 512).
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# How 04 feeds 13 bands to an ImageNet backbone (see build_classifier).
VARIANTS = ("adapter", "first-conv")
PRECISION_MODES = ("auto", "off", "bf16", "fp16")
# talk: flips and +-45 degree rotations inside the training model (the talk's);
# dihedral: the 8 flips and 90-degree rotations of the square in the input pipeline
# (exact, cheap; nadir imagery has no "up"); none.
AUGMENTATIONS = ("talk", "dihedral", "none")
OPTIMIZERS = ("adam", "sgd", "sgd-nesterov", "adamw", "adadelta")
SCHEDULES = ("constant", "cosine")
# Flag choices of the training scripts' constants (command_line.parse_settings).
SCRIPT_CHOICES = {
    "ARCH": ARCHITECTURES,
    "MIXED_PRECISION": PRECISION_MODES,
    "VARIANT": VARIANTS,
    "AUGMENTATION": AUGMENTATIONS,
    "OPTIMIZER": OPTIMIZERS,
    "SCHEDULE": SCHEDULES,
    "RECIPE": ("fast", "talk"),
}
# The talk's from-scratch settings (03/05 --recipe talk): VGG16, Adam 0.001, batch 64,
# 100 epochs with patience 50, flips and +-45 degree rotations in the model.
TALK_SCRATCH_RECIPE = {
    "arch": "vgg16",
    "batch_size": 64,
    "epochs": 100,
    "optimizer": "adam",
    "learning_rate": 0.001,
    "schedule": "constant",
    "warmup_epochs": 0,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "augmentation": "talk",
    "patience": 50,
}

# Keras' ImageNet weights without the classifier top: file name, download folder, MD5.
IMAGENET_FILES = {
    "vgg16": (
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "vgg16",
        ("6d6bbae143d832006294945121d1f1fc"),
    ),
    "densenet201": (
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "densenet",
        ("c13680b51ded0fb44dff2d8f86ac8bb1"),
    ),
}
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file}"
# The ImageNet kernels' input channels as Sentinel-2 bands: VGG16 was trained on
# Caffe-style BGR input, DenseNet on RGB.
IMAGENET_CHANNEL_BANDS = {
    "vgg16": ("B02", "B03", "B04"),
    "densenet201": ("B04", "B03", "B02"),
    "tiny": RGB_BAND_NAMES,
    "vgg16-bn": RGB_BAND_NAMES,
    "resnet-valid": RGB_BAND_NAMES,
}
# First convolution of each backbone (replaced by the 04 "first-conv" variant).
FIRST_CONV = {
    "vgg16": "block1_conv1",
    "densenet201": "conv1_conv",
    "tiny": "block1_conv1",
    "vgg16-bn": "block1_conv1",
    "resnet-valid": "stem_conv",
}
# Fine-tuning keeps the backbone frozen up to and including this layer: the talk's
# layers[:4] for VGG16 (input + block 1) and layers[:7] for DenseNet201 (stem to pool1).
FROZEN_THROUGH = {
    "vgg16": "block1_pool",
    "densenet201": "pool1",
    "tiny": "block1_pool",
    "vgg16-bn": "block1_pool",
    "resnet-valid": "stem_relu",
}
# Dense layers between global average pooling and the softmax (the talk's heads).
HEAD_UNITS = {
    "vgg16": (2048, 2048),
    "densenet201": (),
    "tiny": (),
    "vgg16-bn": (2048, 2048),
    "resnet-valid": (),
}
# Non-RGB kernels of a "first-conv" backbone start at this fraction of the RGB kernels' std.
FIRST_CONV_OTHER_BAND_SCALE = 0.1
ADAPTER_LAYER = "band_adapter"
# Logged by Keras for compile(metrics=["categorical_accuracy"]); checkpoints follow it.
MONITOR = "val_categorical_accuracy"
MODEL_FILE = "model.keras"
MODEL_INFO_FILE = "model.json"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"


# ---------------------------------------------------------------------------
# What a trained model says about itself (model.json)
# ---------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """The facts of a trained classifier, saved as model.json beside model.keras.

    class_names: one per output unit, in output order. band_names: the input
    bands in order. input_size: window side in pixels. mean/std: per-band
    normalisation (inside the model for models of 02-05; applied in front of the
    model for the talk's models, see for_talk_model). The rest records how the
    model was trained. `extra` keeps keys this version does not know; `source`
    (not saved) names the file the facts came from, for messages.
    """

    class_names: list[str]
    band_names: list[str]
    input_size: int | None = IMAGE_SIZE
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    normalisation_source: str = ""
    arch: str = ""
    variant: str | None = None
    recipe: str = ""
    mixed_precision: str = ""
    replicas: int = 1
    settings: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    epochs_trained: int = 0
    training_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    source: str = field(default="", compare=False)

    def to_json(self) -> dict:
        """The model.json object (input_size as [rows, cols], unknown keys kept)."""
        data = asdict(self)
        data.pop("source")
        extra = data.pop("extra")
        if self.input_size is not None:
            data["input_size"] = [self.input_size, self.input_size]
        return {**data, **extra}

    def save(self, path: str | Path) -> None:
        """Write model.json at `path` atomically."""
        write_json_atomic(Path(path), self.to_json())

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> ModelInfo:
        """ModelInfo from a model.json object; the legacy keys "classes" and "bands"
        and an input_size given as 64, "64" or [64, 64] (None when missing) are accepted."""
        data = dict(data)
        names = {item.name for item in fields(cls)} - {"extra", "source"}
        class_names = data.pop("class_names", None) or data.pop("classes", None) or []
        band_names = data.pop("band_names", None) or data.pop("bands", None) or []
        size = data.pop("input_size", None)
        if isinstance(size, (list, tuple)):
            size = size[0] if size else None
        try:
            input_size = int(size) if size is not None else None
        except (TypeError, ValueError):
            raise InputError(f"model configuration {source} has input_size {size!r}.") from None
        known = {key: data.pop(key) for key in list(data) if key in names}
        return cls(
            class_names=[str(name) for name in class_names],
            band_names=[str(name) for name in band_names],
            input_size=input_size,
            **known,
            extra=data,
            source=source,
        )

    @classmethod
    def load(cls, model_path: str | Path) -> ModelInfo | None:
        """The facts beside a model file: `<stem>.json`, else model.json in its folder;
        None when there is neither (e.g. a talk .hdf5). InputError for a file that
        is not a JSON object."""
        model_path = Path(model_path)
        for path in (model_path.with_suffix(".json"), model_path.with_name(MODEL_INFO_FILE)):
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    raise InputError(
                        f"model configuration {path} cannot be read: {error}."
                    ) from None
                if not isinstance(data, dict):
                    raise InputError(f"model configuration {path} is not a JSON object.")
                return cls.from_json(data, source=str(path))
        return None

    @classmethod
    def for_talk_model(cls, band_count: int) -> ModelInfo:
        """The facts the talk's models (.hdf5 without model.json) imply: EuroSAT's
        classes, RGB or all 13 bands, and the talk's normalisation constants, which
        such a model does not hold and which are applied in front of it."""
        mean, std = talk_constants(band_count)
        return cls(
            class_names=list(CLASS_NAMES),
            band_names=list(default_band_names(band_count)),
            mean=[float(value) for value in mean],
            std=[float(value) for value in std],
            normalisation_source="the talk's constants, applied in front of the model",
            recipe="talk",
            source="the talk's defaults (no model.json)",
        )


# ---------------------------------------------------------------------------
# Precision and distribution
# ---------------------------------------------------------------------------


def cpu_has_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def precision_policy(mode: str) -> str:
    """Keras dtype policy for `mode` auto|off|bf16|fp16.

    auto: mixed_bfloat16 on GPUs of compute capability >= 8 and on CPUs with
    AMX/AVX512-BF16 (when no GPU is visible), float32 otherwise.
    """
    policies = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    if mode in policies:
        return policies[mode]
    if mode != "auto":
        raise InputError(
            f"mixed precision must be one of {', '.join(PRECISION_MODES)}, not {mode}."
        )
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [
            tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            for gpu in gpus
        ]
        return "mixed_bfloat16" if min(capabilities) >= (8, 0) else "float32"
    return "mixed_bfloat16" if cpu_has_bfloat16() else "float32"


def set_mixed_precision(mode: str) -> str:
    """Set Keras' global dtype policy for `mode` (see precision_policy); returns its name."""
    import keras

    policy = precision_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[str]:
    """Use Keras' global dtype `policy` inside the block, restore the previous one after."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def choose_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy for
    more than one visible GPU, TensorFlow's default strategy otherwise.

    Call it before any other TensorFlow work: collective ops are configured once.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def patch_keras_for_multi_worker() -> None:
    """Make Keras 3's fit work under MultiWorkerMirroredStrategy (TensorFlow backend).

    Keras 3.15 reduces per-replica values with calls that collective all-reduce
    rejects: the first batch before building (eagerly) and scalar metrics with
    axis=0 (keras-team/keras#20585). This builds from the worker's own first
    batch and averages scalars over replicas instead. Harmless for other
    strategies; remove once Keras fixes the issue.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    if getattr(tensorflow_trainer, "_multi_worker_patched", False):
        return
    original_reduce = tensorflow_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return tf.nest.map_structure(
                lambda value: (
                    strategy.reduce("MEAN", value, axis=None)
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                values,
            )
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda value: (
                        self.distribute_strategy.experimental_local_results(value)[0]
                        if isinstance(value, tf.distribute.DistributedValues)
                        else value
                    ),
                    next(batches),
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tensorflow_trainer.reduce_per_replica = reduce_per_replica
    tensorflow_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tensorflow_trainer._multi_worker_patched = True


def is_chief(strategy) -> bool:
    """Whether this process writes the run's outputs (always true without TF_CONFIG)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


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
    if arch not in IMAGENET_FILES:
        raise InputError(
            f"Keras has no ImageNet weights for arch {arch}; pass --weights PATH or --weights none."
        )
    file_name, folder, file_hash = IMAGENET_FILES[arch]
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


_FUSED_BATCH_NORMALIZATION = []


def fused_batch_normalization_class():
    """BatchNormalization computed by TensorFlow's fused kernel in the input's dtype.

    Keras 3's BatchNormalization casts bfloat16/float16 input to float32 and
    computes moments, normalisation and the casts as separate small ops; in
    DenseNet201 (about 200 BN layers on small feature maps) those dominate the
    step and eat the bfloat16 gain. FusedBatchNormV3 (oneDNN on CPU, cuDNN on
    GPU) takes 16-bit input with float32 statistics in one op. Same weights and
    config as BatchNormalization; the moving variance is updated with the
    unbiased batch variance (TensorFlow's fused kernel), a negligible difference.
    """
    if _FUSED_BATCH_NORMALIZATION:
        return _FUSED_BATCH_NORMALIZATION[0]
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="cnn_sentinel")
    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            # Keras 3 keeps `axis` as an int (3 for NHWC after build, -1 before).
            if mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3):
                return super().call(inputs, training=training, mask=mask)
            if training and self.trainable:
                empty = tf.constant([], tf.float32)
                outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=inputs, scale=self.gamma, offset=self.beta, mean=empty, variance=empty,
                    epsilon=self.epsilon, data_format="NHWC", is_training=True,
                )  # fmt: skip
                self.moving_mean.assign(
                    self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
                )
                self.moving_variance.assign(
                    self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
                )
                return outputs
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=self.gamma, offset=self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, data_format="NHWC",
                is_training=False,
            )  # fmt: skip
            return outputs

    _FUSED_BATCH_NORMALIZATION.append(FusedBatchNormalization)
    return FusedBatchNormalization


def custom_objects() -> dict:
    """Layers of ours that saved models may hold; pass to keras.saving.load_model."""
    fused = fused_batch_normalization_class()
    layers = {"FusedBatchNormalization": fused, **custom_layers()}
    return {**layers, **{f"cnn_sentinel>{name}": layer for name, layer in layers.items()}}


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
    import keras

    shape = (IMAGE_SIZE, IMAGE_SIZE, band_count)
    if arch == "vgg16":
        return keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    if arch == "densenet201":
        return keras.applications.DenseNet201(include_top=False, weights=None, input_shape=shape)
    if arch in ("tiny", "vgg16-bn"):
        blocks = ((16, 1), (32, 1)) if arch == "tiny" else VGG16_BLOCKS
        inputs = keras.Input(shape)
        x = inputs
        for block, (filters, convolutions) in enumerate(blocks, start=1):
            for index in range(1, convolutions + 1):
                name = f"block{block}_conv{index}"
                x = keras.layers.Conv2D(filters, 3, padding="same", name=name)(x)
                suffix = "" if convolutions == 1 else str(index)
                x = keras.layers.BatchNormalization(name=f"block{block}_bn{suffix}")(x)
                x = keras.layers.Activation("relu", name=f"block{block}_relu{suffix}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        return keras.Model(inputs, x, name=arch)
    if arch == "resnet-valid":
        return resnet_valid(shape)
    raise InputError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch}.")


def resnet_valid(shape, widths: Sequence[int] = RESNET_VALID_WIDTHS):
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
    return keras.Model(inputs, x, name="resnet-valid")


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
        if target_layer.name == FIRST_CONV[arch]:
            weights[0] = first_conv_kernel(weights[0], arch, band_names, rng)
        target_layer.set_weights(weights)
    return target


def first_conv_kernel(
    kernel: np.ndarray, arch: str, band_names: Sequence[str], rng: np.random.Generator
) -> np.ndarray:
    """Kernel (k, k, len(band_names), filters) from an ImageNet kernel (k, k, 3, filters)."""
    channel_of = {band: index for index, band in enumerate(IMAGENET_CHANNEL_BANDS[arch])}
    scale = FIRST_CONV_OTHER_BAND_SCALE * float(kernel.std())
    result = np.empty((*kernel.shape[:2], len(band_names), kernel.shape[3]), kernel.dtype)
    for index, band in enumerate(band_names):
        if band in channel_of:
            result[:, :, index, :] = kernel[:, :, channel_of[band], :]
        else:
            result[:, :, index, :] = rng.normal(0.0, scale, kernel[:, :, 0, :].shape)
    return result


def adapter_kernel(arch: str, band_names: Sequence[str], seed: int = 0) -> np.ndarray:
    """Initial 1x1 kernel (1, 1, bands, 3) of the band adapter.

    Each ImageNet input channel starts as a copy of its Sentinel-2 band (B02, B03,
    B04) so stage 1 begins from the RGB network; channels whose band is missing
    start Glorot-uniform random.
    """
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (len(band_names) + 3))
    kernel = rng.uniform(-limit, limit, (1, 1, len(band_names), 3)).astype(np.float32)
    for channel, band in enumerate(IMAGENET_CHANNEL_BANDS[arch]):
        if band in band_names:
            kernel[0, 0, :, channel] = 0.0
            kernel[0, 0, list(band_names).index(band), channel] = 1.0
    return kernel


def build_classifier(
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
    ImageNet weights copied). Heads: GlobalAveragePooling2D, HEAD_UNITS[arch]
    relu Dense layers, Dense(num_classes, softmax) in float32.
    `augment=False` leaves out the augmentation layers (for timing the network alone).
    Preprocessing layers are float32 whatever the global mixed-precision policy
    (uint16 digital numbers do not fit bfloat16's 8-bit mantissa).
    """
    import keras

    if arch not in ARCHITECTURES:
        raise InputError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch}.")
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
    for index, units in enumerate(HEAD_UNITS[arch], start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{index}")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=f"{arch}_classifier")


# ---------------------------------------------------------------------------
# Freezing and stages
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One training stage of a recipe.

    trainable: "head" (backbone frozen), "above-block1" (backbone frozen up to
    FROZEN_THROUGH[arch]) or "all". optimizer: adadelta | sgd | adam.
    """

    name: str
    trainable: str
    optimizer: str
    learning_rate: float
    patience: int
    momentum: float = 0.0
    # "constant", or "cosine": linear warm-up over warmup_epochs from a tenth of
    # learning_rate to learning_rate, then cosine decay to zero at the last epoch.
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0


def finetuning_stages(settings: argparse.Namespace, head_optimizer: str) -> list[Stage]:
    """The talk's two fine-tuning stages from a script's settings: "head" (backbone
    frozen, `head_optimizer` at head_learning_rate, head_patience), then
    "fine-tune" (frozen up to block 1, SGD at finetune_learning_rate with
    finetune_momentum, patience)."""
    return [
        Stage("head", "head", head_optimizer, settings.head_learning_rate, settings.head_patience),
        Stage(
            "fine-tune",
            "above-block1",
            "sgd",
            settings.finetune_learning_rate,
            settings.patience,
            settings.finetune_momentum,
        ),
    ]


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
        frozen_count = names.index(FROZEN_THROUGH[arch]) + 1
    else:
        frozen_count = 0
    for position, layer in enumerate(backbone.layers):
        layer.trainable = position >= frozen_count
    if variant == "first-conv":
        backbone.get_layer(FIRST_CONV[arch]).trainable = True


def make_optimizer(name: str, learning_rate, momentum: float = 0.0, weight_decay: float = 0.0):
    """Keras optimizer by name; learning rates are explicit (Keras 3 changed defaults).

    learning_rate: a number or a Keras schedule. weight_decay: decoupled, for
    sgd-nesterov and adamw.
    """
    import keras

    if name == "sgd-nesterov":
        return keras.optimizers.SGD(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=True,
            weight_decay=weight_decay or None,
        )
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    if name == "adadelta":
        return keras.optimizers.Adadelta(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be adadelta, sgd or adam, not {name}")


def dihedral_augmentation(images, training: bool = True):
    """Each image of a batch (n, rows, cols, bands), rows == cols, under one of the 8
    symmetries of the square (4 rotations by 90 degrees, each with or without a
    flip), drawn independently per image. Exact: no interpolation, no new pixels."""
    import tensorflow as tf

    if not training:
        return images
    rotations = [tf.image.rot90(images, k) for k in range(4)]
    variants = tf.stack(rotations + [tf.reverse(image, axis=[2]) for image in rotations], axis=1)
    choice = tf.random.uniform([tf.shape(images)[0]], 0, 8, dtype=tf.int32)
    return tf.gather(variants, choice, axis=1, batch_dims=1)


def learning_rate_schedule(stage: Stage, steps_per_epoch: int, epochs: int):
    """The stage's learning rate: a number, or for "cosine" a stock Keras schedule
    (so a saved model loads without this project)."""
    import keras

    if stage.schedule == "constant":
        return stage.learning_rate
    if stage.schedule != "cosine":
        raise InputError(f"schedule must be constant or cosine, not {stage.schedule}.")
    warmup = min(stage.warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=stage.learning_rate / 10,
        decay_steps=max(epochs * steps_per_epoch - warmup, 1),
        warmup_target=stage.learning_rate,
        warmup_steps=warmup,
    )


def compile_for_stage(
    model,
    stage: Stage,
    arch: str,
    variant: str | None = None,
    steps_per_epoch: int = 1,
    epochs: int = 1,
) -> None:
    """Set the stage's trainable layers and compile (categorical cross-entropy with
    the stage's label smoothing, categorical accuracy); fp16 policies get loss
    scaling from Keras."""
    import keras

    set_trainable(model, arch, stage.trainable, variant)
    learning_rate = learning_rate_schedule(stage, steps_per_epoch, epochs)
    model.compile(
        optimizer=make_optimizer(
            stage.optimizer, learning_rate, stage.momentum, stage.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=stage.label_smoothing),
        metrics=["categorical_accuracy"],
    )


# ---------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------


@dataclass
class SplitInfo:
    """What a split folder holds: classes, chosen bands and their normalisation."""

    folder: Path
    class_names: list[str]
    band_names: list[str]
    band_indices: list[int]
    mean: list[float]
    std: list[float]
    normalisation_source: str
    has_test: bool


def inspect_split(
    folder: str | Path, bands: str, with_statistics: bool = True, progress: bool = True
) -> SplitInfo:
    """Check a split folder (train/, validation/, optional test/) and pick its bands.

    Normalisation (with_statistics) comes from `folder/band_stats.json`
    (statistics.py); when that is missing it is computed from train/ on the spot
    (nothing is written into the split). Without statistics, mean/std are empty.
    Raises InputError for a missing folder, class folders that differ, images
    whose band count differs between the parts, or stats of another band count.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"split folder {folder} does not exist; run 01 to make it.")
    parts = ["train", "validation"] + (["test"] if (folder / "test").is_dir() else [])
    for part in parts[:2]:
        if not (folder / part).is_dir():
            raise InputError(
                f"split folder {folder} has no {part}/ folder; run "
                "01_split_data_to_train_and_validation.py to make one."
            )
    class_names = class_folders(folder / "train")
    for part in parts[1:]:
        other = class_folders(folder / part)
        if other != class_names:
            missing = sorted(set(class_names) - set(other))
            extra = sorted(set(other) - set(class_names))
            raise InputError(
                f"class folders of {folder / part} differ from train/: missing "
                f"{', '.join(missing) or 'none'}, extra {', '.join(extra) or 'none'}."
            )
    band_counts = {}
    for part in parts:
        first = list_class_images(folder / part, class_names)[0][0]
        band_counts[part] = read_image(first).shape[-1]
    if len(set(band_counts.values())) > 1:
        counts = ", ".join(f"{part}/ {count}" for part, count in band_counts.items())
        raise InputError(f"images of split {folder} differ in band count: {counts}.")
    band_count = band_counts["train"]
    available = default_band_names(band_count)
    band_indices = select_bands(bands, available)
    stats_path = folder / "band_stats.json"
    if not with_statistics:
        stats, source = {"mean": [0.0] * band_count, "std": [1.0] * band_count}, "not read"
    elif stats_path.is_file():
        stats = load_band_stats(stats_path)
        source = str(stats_path)
    else:
        paths = [path for path, _ in list_class_images(folder / "train", class_names)]
        stats = band_statistics(paths, progress=progress)
        source = f"computed from {folder / 'train'} ({stats_path.name} missing)"
    if len(stats["mean"]) != band_count:
        raise InputError(
            f"band statistics {stats_path} describe {len(stats['mean'])} bands but the images "
            f"of {folder / 'train'} have {band_count}."
        )
    return SplitInfo(
        folder=folder,
        class_names=class_names,
        band_names=[available[index] for index in band_indices],
        band_indices=band_indices,
        mean=[float(stats["mean"][index]) for index in band_indices],
        std=[float(stats["std"][index]) for index in band_indices],
        normalisation_source=source,
        has_test="test" in parts,
    )


# ---------------------------------------------------------------------------
# Run folder: state, checkpoints, resume
# ---------------------------------------------------------------------------


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary name beside `path` and rename it into place."""
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def save_model_atomic(model, path: Path) -> None:
    """Save a .keras model under a temporary name and rename it into place, so an
    interrupted save never replaces the last good file."""
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}.keras")
    model.save(temporary)
    os.replace(temporary, path)


def write_history_csv(path: Path, rows: list[dict]) -> None:
    """history.csv: one row per epoch (epoch, stage, losses, accuracies, learning rate)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def run_identity(settings: argparse.Namespace, recipe: str, variant: str | None) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {
        "recipe": recipe,
        "variant": variant,
        "arch": settings.arch,
        "bands": settings.bands,
        "data": str(Path(settings.data).resolve()),
    }


def open_run_folder(run_folder: Path, identity: dict, overwrite: bool) -> dict:
    """Check the run folder and return its saved state (empty dict for a new run).

    An unfinished run with the same identity resumes; a finished one is refused
    unless `overwrite` (then its checkpoints and logs are cleared); a folder
    that exists but is not a run of these scripts is refused.
    """
    if run_folder.exists() and not run_folder.is_dir():
        raise InputError(f"output {run_folder} exists and is not a folder.")
    state_path = run_folder / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    if overwrite and state:
        for name in ("checkpoints", "logs"):
            shutil.rmtree(run_folder / name, ignore_errors=True)
        state_path.unlink()
        return {}
    if state and state.get("identity") != identity:
        raise InputError(
            f"run folder {run_folder} holds a run with other settings ({state.get('identity')}); "
            "choose another --run-name or pass --overwrite."
        )
    if state.get("finished") and (run_folder / MODEL_FILE).is_file():
        raise InputError(
            f"run {run_folder} is already complete; choose another --run-name or pass "
            "--overwrite to train it again."
        )
    if not state and run_folder.is_dir() and any(run_folder.iterdir()) and not overwrite:
        raise InputError(
            f"output folder {run_folder} exists and holds no training run; choose another "
            "--run-name or pass --overwrite."
        )
    return state


def check_writable(folder: Path) -> None:
    """InputError unless `folder` (or the nearest existing folder above it) is writable."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"output {probe} is a file, so {folder} cannot be created.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise InputError(f"output folder {probe} is not writable ({error.strerror}).") from None


def progress_callback(run_folder: Path, state: dict, stage: Stage):
    """Keras callback that, after each epoch, records the history row, keeps the
    stage's best checkpoint by validation accuracy and the last checkpoint (both
    .keras, written atomically), saves the resume state, and stops the stage
    after `stage.patience` epochs without improvement.
    """
    import keras

    checkpoints = run_folder / "checkpoints"

    class RunProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = {key: float(value) for key, value in (logs or {}).items()}
            state["history"].append({"epoch": epoch + 1, "stage": stage.name, **logs})
            accuracy = logs.get(MONITOR, float("nan"))
            if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
                state["best_accuracy"], state["best_epoch"], state["wait"] = accuracy, epoch + 1, 0
                save_model_atomic(self.model, checkpoints / f"{stage.name}-best.keras")
            else:
                state["wait"] += 1
            save_model_atomic(self.model, checkpoints / "last.keras")
            state["epoch"] = epoch + 1
            state["last_stage"] = stage.name
            write_history_csv(run_folder / HISTORY_FILE, state["history"])
            write_json_atomic(run_folder / STATE_FILE, state)
            if state["wait"] >= stage.patience:
                self.model.stop_training = True

    return RunProgress()


def tensorboard_callbacks(run_folder: Path) -> list:
    """[TensorBoard callback writing run_folder/logs], or [] with a note when the
    tensorboard package (which TensorFlow >= 2.20 no longer installs) is missing."""
    import importlib.util

    import keras

    if importlib.util.find_spec("tensorboard") is None:
        print("note: no TensorBoard logs, the tensorboard package is not installed.")
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(run_folder / "logs"), write_graph=False)]


def train_stages(
    model,
    stages: Sequence[Stage],
    train_data,
    validation_data,
    run_folder: Path,
    state: dict,
    *,
    arch: str,
    variant: str | None,
    epochs: int,
    steps_per_epoch: int | None,
    strategy,
):
    """Train `model` through `stages`, resuming from `state` (see open_run_folder).

    Each stage trains at most `epochs` epochs, stops early after its patience,
    and ends with the weights of its best epoch (by validation accuracy). Epochs
    are numbered continuously over the stages (history.csv, TensorBoard). With
    `steps_per_epoch` an epoch is that many batches of the repeated training set
    (the talk's epochs), otherwise one real pass. Returns the trained model.
    """
    import keras

    checkpoints = run_folder / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    steps = steps_per_epoch or int(train_data.cardinality())
    if steps_per_epoch:
        train_data = train_data.repeat()
    for index, stage in enumerate(stages):
        if index < state["stage"]:
            continue
        resuming = state.get("last_stage") == stage.name and (checkpoints / "last.keras").is_file()
        with strategy.scope():
            if resuming:
                model = load_model(checkpoints / "last.keras", compile=True)
            else:
                if index > 0:
                    model.load_weights(checkpoints / f"{stages[index - 1].name}-best.keras")
                compile_for_stage(model, stage, arch, variant, steps, epochs)
                state.update(stage_start=state["epoch"], best_accuracy=None, best_epoch=0, wait=0)
                state["stage_starts"].append(state["epoch"])
        if state["wait"] < stage.patience:
            model.fit(
                train_data,
                validation_data=validation_data,
                shuffle=False,  # the dataset reshuffles itself every epoch
                epochs=state["stage_start"] + epochs,
                initial_epoch=state["epoch"],
                steps_per_epoch=steps_per_epoch or None,
                callbacks=[
                    progress_callback(run_folder, state, stage),
                    keras.callbacks.TensorBoard(
                        log_dir=str(run_folder / "logs"), write_graph=False
                    ),
                ],
                verbose=2,
            )
        with strategy.scope():
            model.load_weights(checkpoints / f"{stage.name}-best.keras")
        state["stage"] = index + 1
        write_json_atomic(run_folder / STATE_FILE, state)
    return model


# ---------------------------------------------------------------------------
# Evaluation report
# ---------------------------------------------------------------------------


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Overall accuracy, per-class precision/recall/F1/support, confusion matrix
    (rows: true class, columns: predicted class) of labels (n,) vs probabilities (n, classes)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    predicted = probabilities.argmax(axis=1)
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    return {
        "images": int(len(labels)),
        "overall_accuracy": float(accuracy_score(labels, predicted)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, path: Path
) -> None:
    """PNG of a confusion matrix: counts in the cells, colour by share of the true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.0 + 0.6 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(counts.shape[0]):
        for column in range(counts.shape[1]):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(
                column,
                row,
                str(counts[row, column]),
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_training_curves(history: Sequence[dict], stage_starts: Sequence[int], path: Path) -> None:
    """PNG of loss and accuracy per epoch (training and validation), stage starts dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    for axes, key, label in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "categorical_accuracy", "accuracy"),
    ):
        for prefix, name in (("", "training"), ("val_", "validation")):
            values = [row.get(prefix + key, np.nan) for row in history]
            axes.plot(epochs, values, marker="o", markersize=3, label=name)
        for start in list(stage_starts)[1:]:
            axes.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle("training curves (dashed: next stage starts)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_model(model_path: str | Path, compile: bool = False):
    """Load a saved Keras model (.keras, .h5, .hdf5) that may hold the project's layers.

    The one loader of the project: training resumes, evaluation and 06 use it.
    InputError naming the file when it is missing or not a loadable Keras model.
    """
    import keras

    model_path = Path(model_path)
    if not model_path.is_file():
        raise InputError(f"model {model_path} does not exist.")
    try:
        return keras.saving.load_model(model_path, compile=compile, custom_objects=custom_objects())
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else "unreadable"
        raise InputError(f"model {model_path} cannot be loaded ({reason}).") from None


def load_for_evaluation(model_path: Path) -> tuple:
    """(model taking raw pixels, ModelInfo) of a saved model. A model without
    model.json (a talk .hdf5) gets the talk's facts and normalisation in front."""
    import keras

    model = load_model(model_path)
    info = ModelInfo.load(model_path)
    if info is not None:
        return model, info
    info = ModelInfo.for_talk_model(model.input_shape[-1])
    talk_model = keras.Sequential(
        [keras.Input(model.input_shape[1:]), normalization_layer(info.mean, info.std), model]
    )
    return talk_model, info


def evaluate_model(
    model_path: str | Path,
    split_folder: str | Path,
    report_folder: str | Path | None = None,
    batch_size: int = 64,
    overwrite: bool = False,
    history: Sequence[dict] = (),
    stage_starts: Sequence[int] = (),
    info: ModelInfo | None = None,
) -> dict:
    """Evaluate a saved model on the whole validation/ (and test/) of a split.

    Deterministic: every image once, in file order, no augmentation. Writes
    `report_folder` (default: `report-<split name>` beside the model), atomically:
    metrics.json, classification_report.txt, confusion_matrix.png (one per part:
    confusion_matrix_test.png for test/), training_curves.png when `history`
    is given. Bands and classes come from `info` or the model's model.json; a model
    without one is taken as a talk model (EuroSAT classes, all bands, talk
    normalisation). Returns the metrics per part.
    """
    from sklearn.metrics import classification_report

    model_path, split_folder = Path(model_path), Path(split_folder)
    if info is None:
        model, info = load_for_evaluation(model_path)
    else:
        model = load_model(model_path)
    split = inspect_split(split_folder, "all", with_statistics=False, progress=False)
    class_names, band_names = info.class_names or split.class_names, info.band_names
    available = default_band_names(len(split.band_names))
    band_indices = select_bands(list(band_names), available)
    if split.class_names != list(class_names):
        raise InputError(
            f"class folders of {split_folder} ({', '.join(split.class_names)}) differ from the "
            f"model's classes ({', '.join(class_names)})."
        )
    report_folder = Path(
        report_folder or model_path.with_name(f"report-{split_folder.resolve().name}")
    )
    metrics = {"model": str(model_path), "split": str(split_folder)}
    texts = []
    parts = ["validation"] + (["test"] if split.has_test else [])
    with atomic_output(report_folder, overwrite) as temporary:
        temporary.mkdir()
        for part in parts:
            dataset, labels = folder_dataset(
                split_folder / part,
                batch_size,
                training=False,
                band_indices=band_indices,
                class_names=class_names,
                progress=False,
            )
            probabilities = model.predict(dataset.map(lambda images, _: images), verbose=0)
            metrics[part] = classification_metrics(labels, probabilities, class_names)
            texts.append(
                f"{part}/ of {split_folder}\n"
                + classification_report(
                    labels,
                    probabilities.argmax(axis=1),
                    labels=list(range(len(class_names))),
                    target_names=list(class_names),
                    digits=4,
                    zero_division=0,
                )
            )
            suffix = "" if part == "validation" else f"_{part}"
            accuracy = metrics[part]["overall_accuracy"]
            plot_confusion_matrix(
                metrics[part]["confusion_matrix"],
                class_names,
                f"{part}: overall accuracy {accuracy:.4f}",
                temporary / f"confusion_matrix{suffix}.png",
            )
        if history:
            plot_training_curves(history, stage_starts, temporary / "training_curves.png")
        write_json_atomic(temporary / "metrics.json", metrics)
        (temporary / "classification_report.txt").write_text("\n".join(texts), encoding="utf-8")
    return metrics


# ---------------------------------------------------------------------------
# The recipe runner used by scripts 02-05
# ---------------------------------------------------------------------------


def add_action_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every training script has besides its constants: what to do, not how."""
    parser.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train again a finished run of the same name, replacing its outputs",
    )
    parser.add_argument(
        "--evaluate-only",
        metavar="MODEL",
        default="",
        help="write the report of a saved model on --data instead of training",
    )


def parse_training_settings(script_file: str, argv: list[str] | None = None):
    """A training script's settings: its constants as flags plus the action flags."""
    from command_line import parse_settings

    return parse_settings(script_file, argv, choices=SCRIPT_CHOICES, extra=add_action_flags)


def run_recipe(
    settings: argparse.Namespace, stages: Sequence[Stage], recipe: str, variant: str | None = None
) -> Path:
    """Train (or with `settings.evaluate_only` evaluate) as a script's recipe says.

    settings: parsed script flags (data, arch, bands, weights, batch_size,
    epochs, steps_per_epoch, output, run_name, mixed_precision, seed,
    overwrite, evaluate_only). recipe: the run's kind, e.g. "rgb-finetuning",
    also the default run name prefix. Writes `output/<run name>/` (model.keras,
    model.json, history.csv, logs/, report/, checkpoints/, state.json) and
    returns that folder (for evaluation: the report folder). Every check of the
    input happens before anything is written.
    """
    if settings.evaluate_only:
        model_path, split_folder = Path(settings.evaluate_only), Path(settings.data)
        report = model_path.with_name(f"report-{split_folder.resolve().name}")
        evaluate_model(model_path, split_folder, report, settings.batch_size, settings.overwrite)
        print(f"report written to {report}")
        return report
    if settings.batch_size < 1 or settings.epochs < 1 or settings.steps_per_epoch < 0:
        raise InputError("batch size and epochs must be at least 1, steps per epoch at least 0.")
    augmentation = getattr(settings, "augmentation", "talk")
    if augmentation not in AUGMENTATIONS:
        raise InputError(
            f"augmentation must be one of {', '.join(AUGMENTATIONS)}, not {augmentation}."
        )
    split = inspect_split(settings.data, settings.bands)
    name_parts = [recipe, variant, settings.arch]
    run_folder = Path(settings.output) / (
        settings.run_name or "-".join(part for part in name_parts if part)
    )
    check_writable(run_folder)
    identity = run_identity(settings, recipe, variant)
    state = open_run_folder(run_folder, identity, settings.overwrite)
    import keras

    strategy = choose_strategy()
    writer = is_chief(strategy)
    with dtype_policy(precision_policy(settings.mixed_precision)) as policy:
        keras.utils.set_random_seed(settings.seed)
        with strategy.scope():
            model = build_classifier(
                settings.arch,
                split.band_names,
                len(split.class_names),
                split.mean,
                split.std,
                weights=settings.weights,
                variant=variant,
                seed=settings.seed,
                augment=augmentation == "talk",
            )
        train_data, validation_data = (
            folder_dataset(
                split.folder / part, settings.batch_size, training=part == "train",
                band_indices=split.band_indices, class_names=split.class_names,
                seed=settings.seed,
                augment=dihedral_augmentation if augmentation == "dihedral" and part == "train"
                else None,
            )[0]
            for part in ("train", "validation")
        )  # fmt: skip
        # Workers other than the chief write into a scratch folder (Keras' multi-worker rule).
        work_folder = run_folder if writer else Path(tempfile.mkdtemp(prefix="worker-run-"))
        work_folder.mkdir(parents=True, exist_ok=True)
        state = state or {
            "identity": identity,
            "stage": 0,
            "epoch": 0,
            "history": [],
            "stage_starts": [],
            "finished": False,
            "wait": 0,
        }
        started = time.time()
        model = train_stages(
            model,
            stages,
            train_data,
            validation_data,
            work_folder,
            state,
            arch=settings.arch,
            variant=variant,
            epochs=settings.epochs,
            steps_per_epoch=settings.steps_per_epoch,
            strategy=strategy,
        )
        save_model_atomic(inference_model(model), work_folder / MODEL_FILE)
    info = ModelInfo(
        class_names=split.class_names,
        band_names=split.band_names,
        mean=split.mean,
        std=split.std,
        normalisation_source=split.normalisation_source,
        arch=settings.arch,
        variant=variant,
        recipe=recipe,
        mixed_precision=policy,
        replicas=strategy.num_replicas_in_sync,
        settings=dict(vars(settings)),
        stages=[asdict(stage) for stage in stages],
        epochs_trained=state["epoch"],
        training_seconds=round(time.time() - started, 1),
    )
    metrics = evaluate_model(
        work_folder / MODEL_FILE,
        split.folder,
        work_folder / "report",
        settings.batch_size,
        overwrite=True,
        history=state["history"],
        stage_starts=state["stage_starts"],
        info=info,
    )
    info.metrics = {
        part: {
            "overall_accuracy": metrics[part]["overall_accuracy"],
            "images": metrics[part]["images"],
        }
        for part in ("validation", "test")
        if part in metrics
    }
    info.save(work_folder / MODEL_INFO_FILE)
    state["finished"] = True
    write_json_atomic(work_folder / STATE_FILE, state)
    if not writer:
        shutil.rmtree(work_folder, ignore_errors=True)
    accuracy = metrics["validation"]["overall_accuracy"]
    print(f"validation accuracy {accuracy:.4f}; model and report in {run_folder}")
    return run_folder
