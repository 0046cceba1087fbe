"""Training runs: the run folder and its resume state, and the fit loop that keeps them.

A training script (02-05) is the recipe: it inspects its split, opens a
`training_run` (this module's context manager: run folder, resume, strategy,
precision, seed), builds its model (`run.network`), names its stages and calls
`run.fit` and `run.report`. An interrupted run (Ctrl-C, SIGTERM, kill -9, a power cut)
never loses a finished epoch: every epoch ends with a checkpoint and then state.json,
written atomically and in that order (`progress_callback`), and the same command
resumes from there. The rest of training has rooms of its own: optimisation.py
(stages, optimisers, schedules), strategy.py (tf.distribute), image_functions.py
(augmentation), recipes.py (what the scripts share: flags, the talk's recipe,
--evaluate-only). TensorFlow and Keras are imported inside functions: importing this
module is cheap.

About 520 lines: the crash safety of the run folder (state, checkpoints, the per-epoch
callback, resume) is one thing, and it stays beside the fit loop and the run that rely
on it; splitting it would put the order of its writes in two places.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
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
    MODEL_FILE,
    build_network,
    inference_model,
    is_project_model,
    load_model,
    network_from_model,
)
from cnn_sentinel.optimisation import Stage, compile_for_stage
from cnn_sentinel.outputs import folder_lock, write_atomic
from cnn_sentinel.precision import dtype_policy, precision_policy
from cnn_sentinel.reports import evaluate_model
from cnn_sentinel.settings import settings_values
from cnn_sentinel.strategy import choose_strategy, is_chief
from image_functions import folder_pipeline

# Logged by Keras for compile(metrics=["categorical_accuracy"]); checkpoints follow it.
MONITOR = "val_categorical_accuracy"
STATE_FILE = "state.json"
HISTORY_FILE = "history.csv"
CHECKPOINTS = CHECKPOINTS_FOLDER


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
                shuffle=False,  # the pipeline reshuffles itself every epoch
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

    def network(self, weights=None, variant: str | None = None, augment: bool = True):
        """The run's classifier for its split (bands, classes, normalisation) and seed:
        build_network(settings.arch, ...) with `weights` (None, "imagenet", a backbone
        weights file), or for a trained model of this project (a .keras of 02-05) that
        model's network with its kernels for the bands it knows (network_from_model).
        `augment`: the talk's augmentation layer inside the model (training only)."""
        split, settings = self.split, self.settings
        if is_project_model(weights):
            model, _ = network_from_model(
                weights, split.band_names, split.class_names, split.mean, split.std,
                seed=settings.seed, augment=augment,
            )  # fmt: skip
            return model
        return build_network(
            settings.arch, split.band_names, len(split.class_names), split.mean, split.std,
            weights=weights, variant=variant, seed=settings.seed, augment=augment,
        )  # fmt: skip

    def pipelines(self, augment=None) -> tuple:
        """(train, validation) tf.data pipelines of raw pixels and one-hot labels;
        `augment` (e.g. image_functions.pipeline_augmentation) is applied to training
        batches."""
        return tuple(
            folder_pipeline(
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
