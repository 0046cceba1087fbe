"""Custom Keras layers: the project's two layer classes, in one home.

- RandomFlipRotation: the talk's augmentation (flips and a rotation) as one projective
  transform per batch, active only in training; models leave it out when saved.
- FusedBatchNormalization: BatchNormalization on TensorFlow's fused kernel, the speed
  substitution made under mixed precision after loading, never saved.

A saved model file holds stock Keras layers only (networks.inference_model), so these
classes matter only while training and for files saved by older versions; both are
registered for saving under the package name "cnn_sentinel". They are defined on first
use (custom_layers), so importing this module does not start TensorFlow.
"""

from __future__ import annotations

import numpy as np

_CUSTOM_LAYERS: dict[str, type] = {}


def custom_layers() -> dict[str, type]:
    """The project's Keras layer classes by name, defined (and registered for saving) on
    first use: RandomFlipRotation and FusedBatchNormalization."""
    if _CUSTOM_LAYERS:
        return _CUSTOM_LAYERS
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="cnn_sentinel")
    class RandomFlipRotation(keras.layers.Layer):
        """Random up/down and left/right flips and a rotation by a uniform angle in
        ±max_degrees, bilinear with reflect fill, active only in training.

        One projective transform per batch does all three: an output pixel p
        samples the input at F R (p - c) + c (R the rotation, F the diagonal of
        ±1 flips, c the image centre). Keras' RandomFlip + RandomRotation do the
        same in three passes over the batch, which made augmentation the
        bottleneck of the input pipeline (see benchmarks/input_pipeline.py).
        Input and output: (batch, rows, cols, bands), any float dtype.
        """

        def __init__(self, max_degrees: float = 45.0, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.max_degrees = max_degrees
            self.seed = seed
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.supports_masking = True

        def call(self, inputs, training=False):
            if not training:
                return inputs
            images = tf.cast(inputs, tf.float32)
            shape = tf.shape(images)
            count = shape[:1]
            radians = keras.random.uniform(
                count, -self.max_degrees, self.max_degrees, seed=self.seed_generator
            ) * (np.pi / 180.0)
            flips = keras.random.uniform(tf.concat([count, [2]], 0), seed=self.seed_generator)
            flip = tf.where(flips < 0.5, -1.0, 1.0)
            flip_x, flip_y = flip[:, 0], flip[:, 1]
            cos, sin = tf.cos(radians), tf.sin(radians)
            centre_y = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
            centre_x = (tf.cast(shape[2], tf.float32) - 1.0) / 2.0
            zeros = tf.zeros_like(cos)
            transforms = tf.stack(
                [
                    flip_x * cos,
                    -flip_x * sin,
                    centre_x - flip_x * (cos * centre_x - sin * centre_y),
                    flip_y * sin,
                    flip_y * cos,
                    centre_y - flip_y * (sin * centre_x + cos * centre_y),
                    zeros,
                    zeros,
                ],
                axis=1,
            )
            output = tf.raw_ops.ImageProjectiveTransformV3(
                images=images,
                transforms=transforms,
                output_shape=shape[1:3],
                fill_value=0.0,
                interpolation="BILINEAR",
                fill_mode="REFLECT",
            )
            return tf.cast(output, inputs.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "max_degrees": self.max_degrees, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="cnn_sentinel")
    class FusedBatchNormalization(keras.layers.BatchNormalization):
        """BatchNormalization computed by TensorFlow's fused kernel in the input's dtype.

        Keras 3's BatchNormalization casts bfloat16/float16 input to float32 and
        computes moments, normalisation and the casts as separate small ops; in
        DenseNet201 (about 200 BN layers on small feature maps) those dominate the
        step and eat the bfloat16 gain. FusedBatchNormV3 (oneDNN on CPU, cuDNN on
        GPU) takes 16-bit input with float32 statistics in one op. Same weights and
        config as BatchNormalization; the moving variance is updated with the
        unbiased batch variance (TensorFlow's fused kernel), a negligible difference.
        """

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

    _CUSTOM_LAYERS.update(
        RandomFlipRotation=RandomFlipRotation, FusedBatchNormalization=FusedBatchNormalization
    )
    return _CUSTOM_LAYERS


def fused_batch_normalization_class():
    """The FusedBatchNormalization class (see custom_layers)."""
    return custom_layers()["FusedBatchNormalization"]


def custom_objects() -> dict:
    """Layers of ours that saved models may hold; pass to keras.saving.load_model."""
    layers = custom_layers()
    return {**layers, **{f"cnn_sentinel>{name}": layer for name, layer in layers.items()}}
