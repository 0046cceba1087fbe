"""Training: the run folder and its resume state, strategy and precision, stages with
their optimisers, and fit.

A training script (02-05) is the recipe: it inspects its split, opens a
`training_run` (this module's context manager: run folder, resume, strategy,
precision, seed), builds its model, names its stages and calls `run.fit` and
`run.report`. An interrupted run (Ctrl-C, SIGTERM, kill -9, a power cut) never
loses a finished epoch: every epoch ends with a checkpoint and then state.json,
written atomically and in that order, and the same command resumes from there.
TensorFlow and Keras are imported inside functions: importing this module is cheap.
About 800 lines: the crash safety of the run folder stays beside the fit loop that
relies on it.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from cnn_sentinel.datasets import SplitInfo, band_choice_note
from cnn_sentinel.errors import InputError
from cnn_sentinel.model_info import CHECKPOINTS_FOLDER, MODEL_INFO_FILE, ModelInfo
from cnn_sentinel.networks import (
    ARCHITECTURES,
    MODEL_FILE,
    VARIANTS,
    inference_model,
    load_model,
    set_trainable,
)
from cnn_sentinel.outputs import folder_lock, write_atomic
from cnn_sentinel.precision import PRECISION_MODES, dtype_policy, precision_policy
from cnn_sentinel.reports import evaluate_model
from cnn_sentinel.settings import flags_given, parse_settings, settings_values
from image_functions import IMAGE_SIZE, folder_dataset

# talk: flips and +-45 degree rotations inside the training model (the talk's);
# dihedral: the 8 flips and 90-degree rotations of the square in the input pipeline
# (exact, cheap; nadir imagery has no "up"); none.
AUGMENTATIONS = ("talk", "dihedral", "none")
OPTIMIZERS = ("adam", "sgd", "sgd-nesterov", "adamw", "adadelta")
SCHEDULES = ("constant", "cosine")
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


def use_talk_recipe(settings: argparse.Namespace) -> None:
    """03/05 `--recipe talk`: every setting of TALK_SCRATCH_RECIPE takes the talk's value,
    except those the user passed as flags, whatever their value (`--batch-size 128`
    keeps 128 even where 128 is the script's default)."""
    given = flags_given(settings)
    for key, value in TALK_SCRATCH_RECIPE.items():
        if key not in given:
            setattr(settings, key, value)


# Keras versions known to need work_around_keras_20585 (multi-worker fit).
KERAS_20585_CHECKED_UP_TO = (3, 15)
# Logged by Keras for compile(metrics=["categorical_accuracy"]); checkpoints follow it.
MONITOR = "val_categorical_accuracy"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
CHECKPOINTS = CHECKPOINTS_FOLDER


# ---------------------------------------------------------------------------
# Stages and their optimisers
# ---------------------------------------------------------------------------


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


def random_shift(images, shift: int):
    """Each image of a batch (n, rows, cols, bands) moved by its own random offset of
    up to `shift` pixels along each axis, the edges filled by reflection (no new
    values, no interpolation). shift must be smaller than rows and cols."""
    import tensorflow as tf

    size = tf.shape(images)[1:3]
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]], mode="REFLECT")
    offsets = tf.random.uniform([tf.shape(images)[0], 2], 0, 2 * shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size[0])[tf.newaxis]
    columns = offsets[:, 1:] + tf.range(size[1])[tf.newaxis]
    rows_taken = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(rows_taken, columns, axis=2, batch_dims=1)


def pipeline_augmentation(augmentation: str, shift: int):
    """The training batches' augmentation in the input pipeline, or None: the 8
    symmetries of the square for "dihedral", then a random shift of up to `shift`
    pixels (reflected edges) when shift > 0. "talk" augments inside the model."""
    dihedral = augmentation == "dihedral"
    if not dihedral and not shift:
        return None

    def augment(images, training: bool = True):
        images = dihedral_augmentation(images, training) if dihedral else images
        return random_shift(images, shift) if shift and training else images

    return augment


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
# Distribution
# ---------------------------------------------------------------------------


def choose_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG is set, MirroredStrategy for
    more than one visible GPU, TensorFlow's default strategy otherwise.

    Call it before any other TensorFlow work: collective ops are configured once.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        work_around_keras_20585()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def keras_version() -> tuple[int, int]:
    """(major, minor) of the installed Keras."""
    import keras

    return tuple(int(part) for part in keras.__version__.split(".")[:2])


def work_around_keras_20585() -> None:
    """Make Keras 3's fit work under MultiWorkerMirroredStrategy (TensorFlow backend).

    Keras (checked up to KERAS_20585_CHECKED_UP_TO) reduces per-replica values
    with calls that collective all-reduce rejects: the first batch before
    building (eagerly) and scalar metrics with axis=0 (keras-team/keras#20585).
    This replaces two private functions of Keras' TensorFlow trainer: it builds
    from the worker's own first batch and averages scalars over replicas.
    Harmless for other strategies. tests/test_distributed.py runs fit without it
    and fails once a Keras release no longer needs it: then delete this function.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    if getattr(tensorflow_trainer, "_keras_20585_worked_around", False):
        return
    if keras_version() > KERAS_20585_CHECKED_UP_TO:
        print(
            f"note: Keras {'.'.join(map(str, keras_version()))} is newer than the versions "
            "checked for keras-team/keras#20585; applying the multi-worker workaround."
        )
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
    tensorflow_trainer._keras_20585_worked_around = True


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
# The run folder: state, checkpoints, resume
# ---------------------------------------------------------------------------


def write_history_csv(path: Path, rows: list[dict]) -> None:
    """history.csv: one row per epoch (epoch, stage, losses, accuracies, learning rate)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(path, write, overwrite=True)


# Settings a resumed run may change: they do not change what is trained (RECIPE fast/talk
# only sets others, which are compared themselves).
FREE_ON_RESUME = frozenset(
    {"progress", "verbose", "output", "run_name", "overwrite", "evaluate_only", "tta", "recipe"}
)


def run_identity(settings: argparse.Namespace, recipe: str, variant: str | None) -> dict:
    """The settings a resumed run must share with the run it continues: every setting
    that changes what is trained (all but FREE_ON_RESUME), as JSON values."""
    identity = {
        name: value
        for name, value in settings_values(settings).items()
        if name not in FREE_ON_RESUME
    }
    identity.update(recipe=recipe, variant=variant, data=str(Path(settings.data).resolve()))
    return json.loads(json.dumps(identity))


def _shown(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def identity_differences(saved: dict, identity: dict) -> list[str]:
    """'--learning-rate 0.1, not 0.5' for each setting that differs between a saved
    run's identity and this one's; settings one of them lacks (runs saved by older
    versions recorded five) are not compared."""
    differences = []
    for name in saved:
        if name in identity and saved[name] != identity[name]:
            # recipe and variant are the script's own, not flags of the training scripts.
            label = name if name in ("recipe", "variant") else "--" + name.replace("_", "-")
            differences.append(f"{label} {_shown(saved[name])}, not {_shown(identity[name])}")
    return differences


def new_state(identity: dict) -> dict:
    """state.json of a run before its first epoch."""
    return {
        "identity": identity,
        "stage": 0,
        "epoch": 0,
        "history": [],
        "stage_starts": [],
        "finished": False,
        "wait": 0,
        "training_seconds": 0.0,
    }


def holds_only_an_empty_start(run_folder: Path) -> bool:
    """Whether `run_folder` holds only what a run leaves before its first epoch
    ends (empty checkpoints/, logs/, partial files): a start that can begin again."""
    for child in run_folder.iterdir():
        if ".partial-" in child.name or child.name == "logs":
            continue
        if child.name != CHECKPOINTS or any(
            ".partial-" not in entry.name and entry.name != MODEL_INFO_FILE
            for entry in child.iterdir()
        ):
            return False
    return True


def open_run_folder(run_folder: Path, identity: dict, overwrite: bool) -> dict:
    """Check the run folder and return its saved state (a new state for a new run).

    An unfinished run with the same identity resumes; a finished one is refused
    unless `overwrite` (then its checkpoints and logs are cleared); a folder
    that exists but is not a run of these scripts is refused. Reads only.
    """
    if run_folder.exists() and not run_folder.is_dir():
        raise InputError(f"output {run_folder} exists and is not a folder.")
    state_path = run_folder / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    except ValueError as error:
        raise InputError(f"run state {state_path} cannot be read ({error}).") from None
    differences = identity_differences(state.get("identity") or {}, identity) if state else []
    if differences and not overwrite:
        raise InputError(
            f"run folder {run_folder} holds a run started with other settings "
            f"({'; '.join(differences)}); repeat them to resume it, choose another --run-name "
            "or pass --overwrite."
        )
    if state.get("finished") and (run_folder / MODEL_FILE).is_file() and not overwrite:
        raise InputError(
            f"run {run_folder} is already complete; choose another --run-name or pass "
            "--overwrite to train it again."
        )
    started = bool(state) or (run_folder.is_dir() and holds_only_an_empty_start(run_folder))
    if run_folder.is_dir() and any(run_folder.iterdir()) and not started and not overwrite:
        raise InputError(
            f"output folder {run_folder} exists and holds no training run; choose another "
            "--run-name or pass --overwrite."
        )
    if overwrite or not state:
        return new_state(identity)
    return state


def clear_run_folder(run_folder: Path) -> None:
    """Remove what a run of these scripts wrote into `run_folder` (for --overwrite
    and for a start that never finished an epoch)."""
    for name in (CHECKPOINTS, "logs"):
        shutil.rmtree(run_folder / name, ignore_errors=True)
    for name in (STATE_FILE, HISTORY_FILE):
        (run_folder / name).unlink(missing_ok=True)


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


def checkpoint_path(run_folder: Path, state: dict, which: str) -> Path:
    """The "last" or "best" checkpoint that `state` names (runs saved before the
    epoch-named checkpoints used last.keras and <stage>-best.keras)."""
    if which == "last":
        name = state.get("last_checkpoint", "last.keras")
    else:
        name = state.get("best_checkpoint", f"{state.get('last_stage')}-best.keras")
    return run_folder / CHECKPOINTS / name


def remove_stale_checkpoints(run_folder: Path, state: dict) -> None:
    """Delete checkpoints that `state` no longer names (and partial files); the
    checkpoints' model.json stays."""
    keep = {checkpoint_path(run_folder, state, which).name for which in ("last", "best")}
    keep.add(MODEL_INFO_FILE)
    for path in (run_folder / CHECKPOINTS).iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def progress_callback(run_folder: Path, state: dict, stage: Stage):
    """Keras callback that, after each epoch, saves the model as
    checkpoints/epoch-NNN.keras, records the history row, the best epoch of the
    stage by validation accuracy and the resume state (state.json names the last
    and the best checkpoint; it is written after the checkpoint, so it never
    names a file that is not complete), then deletes checkpoints no longer named,
    and stops the stage after `stage.patience` epochs without improvement.
    """
    import keras

    class RunProgress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = {key: float(value) for key, value in (logs or {}).items()}
            name = f"epoch-{epoch + 1:03d}.keras"
            previous = checkpoint_path(run_folder, state, "last")
            needed = previous.stat().st_size if previous.is_file() else None  # for a full disk
            write_atomic(
                run_folder / CHECKPOINTS / name,
                self.model.save,
                overwrite=True,
                space_needed=needed,
            )
            state["history"].append({"epoch": epoch + 1, "stage": stage.name, **logs})
            accuracy = logs.get(MONITOR, float("nan"))
            if state["best_accuracy"] is None or accuracy > state["best_accuracy"]:
                state.update(best_accuracy=accuracy, best_epoch=epoch + 1, wait=0)
                state["best_checkpoint"] = name
            else:
                state["wait"] += 1
            state.update(epoch=epoch + 1, last_stage=stage.name, last_checkpoint=name)
            state["training_seconds"] = state.get("training_seconds", 0.0) + round(
                time.time() - self.started, 1
            )
            write_history_csv(run_folder / HISTORY_FILE, state["history"])
            write_atomic(run_folder / STATE_FILE, state, overwrite=True)
            remove_stale_checkpoints(run_folder, state)
            if state["wait"] >= stage.patience:
                self.model.stop_training = True

    return RunProgress()


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
):
    """Train `model` through `stages`, resuming from `state` (see open_run_folder),
    inside the distribution strategy's scope.

    Each stage trains at most `epochs` epochs, stops early after its patience,
    and ends with the weights of its best epoch (by validation accuracy). Epochs
    are numbered continuously over the stages (history.csv, TensorBoard). With
    `steps_per_epoch` an epoch is that many batches of the repeated training set
    (the talk's epochs), otherwise one real pass. Returns the trained model: the
    best epoch of the last stage, also when every stage ended in an earlier run.
    """
    import keras

    (run_folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    write_atomic(run_folder / STATE_FILE, state, overwrite=True)  # from now on a rerun resumes
    steps = steps_per_epoch or int(train_data.cardinality())
    if steps_per_epoch:
        train_data = train_data.repeat()
    if state["stage"] >= len(stages):
        print("run finished earlier: writing its report")
    for index, stage in enumerate(stages):
        if index < state["stage"]:
            continue
        label = f"stage {index + 1} of {len(stages)} ({stage.name})"
        last = checkpoint_path(run_folder, state, "last")
        if state.get("last_stage") == stage.name and last.is_file():
            print(
                f"resuming {label} at epoch {state['epoch'] - state['stage_start'] + 1} of {epochs}"
            )
            model = load_model(last, compile=True)
        else:
            if index > 0:
                model.load_weights(checkpoint_path(run_folder, state, "best"))
            print(f"training {label}: up to {epochs} epochs")
            compile_for_stage(model, stage, arch, variant, steps, epochs)
            state.update(stage_start=state["epoch"], best_accuracy=None, best_epoch=0, wait=0)
            state["stage_starts"] = state["stage_starts"][:index] + [state["epoch"]]
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
        state["stage"] = index + 1
        write_atomic(run_folder / STATE_FILE, state, overwrite=True)
    if stages and not state.get("last_stage"):
        raise InputError(f"run {run_folder} trained no epoch; check --epochs.")
    model.load_weights(checkpoint_path(run_folder, state, "best"))
    return model


# ---------------------------------------------------------------------------
# The run: what a training script opens around its recipe
# ---------------------------------------------------------------------------


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
    """A training script's settings: its constants as flags plus the action flags,
    checked before anything is read or written."""
    settings = parse_settings(script_file, argv, choices=SCRIPT_CHOICES, extra=add_action_flags)
    if settings.batch_size < 1 or settings.epochs < 1 or settings.steps_per_epoch < 0:
        raise InputError("batch size and epochs must be at least 1, steps per epoch at least 0.")
    if not 0 <= getattr(settings, "shift", 0) < IMAGE_SIZE:
        raise InputError(f"shift must be 0 to {IMAGE_SIZE - 1} pixels, not {settings.shift}.")
    return settings


@dataclass
class TrainingRun:
    """An open run folder with its strategy and precision (see training_run)."""

    settings: argparse.Namespace
    split: SplitInfo
    recipe: str
    variant: str | None
    folder: Path
    state: dict
    strategy: object
    policy: str
    stages: Sequence[Stage] = ()

    def datasets(self, augment=None) -> tuple:
        """(train, validation) tf.data datasets of raw pixels and one-hot labels;
        `augment` (e.g. dihedral_augmentation) is applied to training batches."""
        return tuple(
            folder_dataset(
                self.split.folder / part,
                self.settings.batch_size,
                training=part == "train",
                band_indices=self.split.band_indices,
                class_names=self.split.class_names,
                seed=self.settings.seed,
                augment=augment if part == "train" else None,
                progress=self.settings.progress,
            )[0]
            for part in ("train", "validation")
        )

    def fit(self, model, stages: Sequence[Stage], train_data, validation_data):
        """Train through `stages` (resuming where an earlier run stopped); returns
        the model with the weights of the last stage's best epoch. checkpoints/ gets
        a model.json of its own, so a checkpoint used as a model (06 --model) knows
        its classes and bands before the run has finished."""
        self.stages = list(stages)
        (self.folder / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        self.model_info().save(self.folder / CHECKPOINTS / MODEL_INFO_FILE)
        return train_stages(
            model,
            stages,
            train_data,
            validation_data,
            self.folder,
            self.state,
            arch=self.settings.arch,
            variant=self.variant,
            epochs=self.settings.epochs,
            steps_per_epoch=self.settings.steps_per_epoch,
        )

    def model_info(self) -> ModelInfo:
        """What the run's models say about themselves (model.json), before metrics."""
        split = self.split
        return ModelInfo(
            class_names=split.class_names,
            band_names=split.band_names,
            mean=split.mean,
            std=split.std,
            normalisation_source=split.normalisation_source,
            arch=self.settings.arch,
            variant=self.variant,
            recipe=self.recipe,
            mixed_precision=self.policy,
            replicas=self.strategy.num_replicas_in_sync,
            settings=settings_values(self.settings),
            stages=[asdict(stage) for stage in self.stages],
        )

    def report(self, model) -> dict:
        """Save model.keras (stock layers only), evaluate it on the whole
        validation/ (and test/) set into report/, write model.json and mark the
        run finished. Returns the report's metrics."""
        write_atomic(self.folder / MODEL_FILE, inference_model(model).save, overwrite=True)
        split, settings = self.split, self.settings
        info = self.model_info()
        info.epochs_trained = self.state["epoch"]
        info.training_seconds = round(self.state.get("training_seconds", 0.0), 1)
        metrics = evaluate_model(
            self.folder / MODEL_FILE,
            split.folder,
            self.folder / "report",
            settings.batch_size,
            overwrite=True,
            history=self.state["history"],
            stage_starts=self.state["stage_starts"],
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
        info.save(self.folder / MODEL_INFO_FILE)
        self.state["finished"] = True
        self.state["validation_accuracy"] = metrics["validation"]["overall_accuracy"]
        write_atomic(self.folder / STATE_FILE, self.state, overwrite=True)
        return metrics


@contextlib.contextmanager
def training_run(
    settings: argparse.Namespace, split: SplitInfo, recipe: str, variant: str | None = None
) -> Iterator[TrainingRun]:
    """Open the run folder `settings.output/<run name>` around a script's recipe.

    Checks the settings and the folder (resume an unfinished run of the same
    settings, refuse a finished one unless --overwrite, refuse a folder that
    holds something else), chooses the distribution strategy, sets the dtype
    policy of settings.mixed_precision and the seed, and runs the block inside
    the strategy's scope. The run name defaults to `<recipe>[-<variant>]-<arch>`.
    Workers other than the chief of a multi-worker run write into a scratch folder.
    """
    import keras

    note = band_choice_note(split, "ms" if recipe.startswith("ms") else "rgb")
    if note:
        print(note)
    name = settings.run_name or "-".join(part for part in (recipe, variant, settings.arch) if part)
    run_folder = Path(settings.output) / name
    check_writable(run_folder)
    strategy = choose_strategy()
    writer = is_chief(strategy)
    with contextlib.ExitStack() as stack:
        if writer:  # one process trains a run folder at a time; locked before reading its state
            stack.enter_context(
                folder_lock(
                    run_folder.parent,
                    name,
                    f"run folder {run_folder}",
                    "wait for that run to end or choose another --run-name",
                )
            )
        identity = run_identity(settings, recipe, variant)
        state = open_run_folder(run_folder, identity, settings.overwrite)
        # Workers other than the chief write into a scratch folder (Keras' multi-worker rule).
        folder = run_folder if writer else Path(tempfile.mkdtemp(prefix="worker-run-"))
        if not writer:
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        if writer and state["epoch"] == 0 and run_folder.is_dir():
            clear_run_folder(run_folder)
        with dtype_policy(precision_policy(settings.mixed_precision)) as policy:
            keras.utils.set_random_seed(settings.seed)
            with strategy.scope():
                yield TrainingRun(settings, split, recipe, variant, folder, state, strategy, policy)
    if state["finished"]:
        accuracy = state["validation_accuracy"]
        print(f"validation accuracy {accuracy:.4f}; model and report in {run_folder}")
