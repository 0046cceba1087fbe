"""What the training scripts 02-05 share: their flags, the talk's from-scratch settings,
`--evaluate-only`, and the from-scratch recipe of 03 and 05.

Each script stays the story of its recipe (settings on top, data, model, stages, fit,
report); what would be written four times lives here, one call each:
`parse_training_settings` (constants as flags, the action flags, `--recipe talk`),
`evaluate_only` (the report of a saved model instead of training) and, for 03 and 05,
whose recipes differ only in their bands and epochs, `train_from_scratch`.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.networks import ARCHITECTURES, VARIANTS
from cnn_sentinel.optimisation import OPTIMIZERS, SCHEDULES, Stage
from cnn_sentinel.precision import PRECISION_MODES
from cnn_sentinel.reports import evaluate_saved_model
from cnn_sentinel.settings import flags_given, parse_settings, script_constants
from cnn_sentinel.training import TrainingRun
from image_functions import AUGMENTATIONS, IMAGE_SIZE, pipeline_augmentation

# Flag choices of the training scripts' constants (settings.parse_settings).
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
    "shift": 0,
    "patience": 50,
}
# The fast recipe as 03 and 05 ship it at their top (tests check both scripts against
# it): `--recipe talk` replaces a setting only where the script still holds this value,
# so a constant the user edited wins, as a flag does.
SHIPPED_FAST_RECIPE = {
    "arch": "resnet-valid-narrow",
    "batch_size": 128,
    "optimizer": "sgd-nesterov",
    "learning_rate": 0.1,
    "schedule": "cosine",
    "warmup_epochs": 2,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "label_smoothing": 0.1,
    "augmentation": "dihedral",
    "shift": 4,
    "patience": 30,
}
# EPOCHS as shipped: the cosine runs over 100 epochs in 03 and 30 in 05.
SHIPPED_FAST_EPOCHS = {"03_train_rgb_from_scratch.py": 100, "05_train_ms_from_scratch.py": 30}


def shipped_fast_recipe(script_file: str | Path) -> dict:
    """The fast-recipe settings as `script_file` (03 or 05) ships them; EPOCHS only for
    the scripts of SHIPPED_FAST_EPOCHS (another file's epochs count as not edited)."""
    epochs = SHIPPED_FAST_EPOCHS.get(Path(script_file).name)
    return {**SHIPPED_FAST_RECIPE, **({} if epochs is None else {"epochs": epochs})}


def use_talk_recipe(settings: argparse.Namespace, script_file: str | Path) -> None:
    """03/05 `--recipe talk`: every setting of TALK_SCRATCH_RECIPE takes the talk's value,
    except those the user chose: passed as flags, whatever their value (`--batch-size
    128` keeps 128 even where 128 is the script's default), or edited at the top of the
    script (its constant differs from the shipped one; a note names each)."""
    given = flags_given(settings)
    shipped = shipped_fast_recipe(script_file)
    constants = {name.lower(): value for name, value, _ in script_constants(script_file)}
    for key, value in TALK_SCRATCH_RECIPE.items():
        if key in given:
            continue
        if key in shipped and constants.get(key, shipped[key]) != shipped[key]:
            print(
                f"note: --recipe talk keeps {key.upper()} = {constants[key]!r} as edited in "
                f"{Path(script_file).name} (the talk's: {value!r})"
            )
            continue
        setattr(settings, key, value)


def add_action_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every training script has besides its constants: what to do, not how."""
    parser.add_argument(
        "--evaluate-only",
        metavar="MODEL",
        default="",
        help="write the report of a saved model on --data instead of training",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with --evaluate-only: average predictions over the 8 flips/90-degree rotations",
    )


def parse_training_settings(script_file: str, argv: list[str] | None = None):
    """A training script's settings: its constants as flags plus the action flags, with
    `--recipe talk` applied (03/05, see use_talk_recipe), checked before anything is
    read or written."""
    settings = parse_settings(script_file, argv, choices=SCRIPT_CHOICES, extra=add_action_flags)
    if getattr(settings, "recipe", "fast") == "talk":
        use_talk_recipe(settings, script_file)
    if settings.batch_size < 1 or settings.epochs < 1 or settings.steps_per_epoch < 0:
        raise InputError("batch size and epochs must be at least 1, steps per epoch at least 0.")
    if not 0 <= getattr(settings, "shift", 0) < IMAGE_SIZE:
        raise InputError(f"shift must be 0 to {IMAGE_SIZE - 1} pixels, not {settings.shift}.")
    return settings


def evaluate_only(settings: argparse.Namespace) -> Path:
    """`--evaluate-only MODEL`: the report of a saved model on --data (with --tta: averaged
    over the 8 flips/rotations) beside the model, instead of training. Returns its folder."""
    return evaluate_saved_model(
        settings.evaluate_only,
        settings.data,
        settings.batch_size,
        settings.overwrite,
        tta=settings.tta,
    )


def train_from_scratch(run: TrainingRun) -> dict:
    """The from-scratch recipe of 03 and 05 inside an open run: raw pixels ->
    normalisation -> [the talk's augmentation, AUGMENTATION talk] -> random backbone ->
    head; training batches under the pipeline augmentation (dihedral, SHIFT); one stage
    in which every layer learns, with the script's optimiser and schedule; then the
    report. Returns the report's metrics."""
    settings = run.settings
    model = run.network(weights=settings.weights, augment=settings.augmentation == "talk")
    train, validation = run.pipelines(
        augment=pipeline_augmentation(settings.augmentation, settings.shift)
    )
    stage = Stage(
        "train",
        "all",
        settings.optimizer,
        settings.learning_rate,
        settings.patience,
        momentum=settings.momentum,
        schedule=settings.schedule,
        warmup_epochs=settings.warmup_epochs,
        weight_decay=settings.weight_decay,
        label_smoothing=settings.label_smoothing,
    )
    model = run.fit(model, [stage], train, validation)
    return run.report(model)
