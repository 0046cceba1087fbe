"""Optimisation: the stages of a training recipe, their optimisers, learning-rate
schedules and the compile step that sets each stage's trainable layers.

Keras 3 changed several optimiser defaults, so every learning rate here is explicit.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnn_sentinel.errors import InputError
from cnn_sentinel.networks import set_trainable

OPTIMIZERS = ("adam", "sgd", "sgd-nesterov", "adamw", "adadelta")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Stage:
    """One training stage of a recipe.

    trainable: "head" (backbone frozen), "above-block1" (backbone frozen up to its
    frozen_through layer) or "all". optimizer: one of OPTIMIZERS.
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
