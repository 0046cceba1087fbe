"""Teach a model your scene: fine-tune it on your own reference polygons or points.

A model trained on EuroSAT's summer L1C patches can be wrong on a scene of another
season or landscape (the winter T33UUU forests come out as fields). This script
takes the reference 07 reads (any OGR vector in any CRS with a class field or layer
names, or a class raster; the built-in tables or a JSON/CSV table say which EuroSAT
classes each reference class means) and fine-tunes the model on windows of the scene
centred on reference pixels, the same number per reference class, read exactly as 06
reads the scene (its bands, reflectance scale, no-data fill and cloud mask; clouds
and no data are never a centre). A window counts as right when the model gives any
compatible class (OSM farm: AnnualCrop, PermanentCrop, Pasture or
HerbaceousVegetation). HOLDOUT_BBOX keeps a part of the scene out: no training centre
lies within one window's width (64 px) of it, so the part can be scored fairly.
EUROSAT replays patches of a split of 01 against forgetting, and both models are
measured on its validation set. PSEUDO_LABELS adds windows the start model is sure
of where the reference says nothing (the lakes and fields it already knows).

Against forgetting (benchmarks/README.md, "Teaching a model the user's scene"): every
layer learns but batch normalisation, which keeps the start model's statistics
(TRAIN_LAYERS frozen-bn); the replayed EuroSAT patches learn the start model's
probabilities (DISTILL 1: Learning without Forgetting) instead of their labels; SOUP 3
models are taught with seeds SEED, SEED + 1, SEED + 2 and their weights averaged (a model
soup); and the saved weights lie INTERPOLATE 0.9 of the way from the start model to that
soup (WiSE-FT; lower gives back EuroSAT and small clearings for some of the forest). Also
there, not the defaults: DISTILL_REFERENCE (the start model's choice among a window's
compatible classes), DISTILL_SCENE (its probabilities on windows no reference covers),
L2_SP (a pull toward the start weights) and HEAD_EPOCHS (the head alone first, LP-FT).

CLASSES "reference" makes the model's classes your own instead of EuroSAT's ten: the
reference classes the table teaches (a built-in table: OSM farm, forest, grass, meadow,
residential, water), or the classes a table file of yours names instead of EuroSAT
classes (one a row; rows may share one), coloured by the table's `#rrggbb` cells or a
fixed palette; "auto" (the default) is "reference" exactly when the table names classes
of its own, else "eurosat". The start model's backbone is kept and a new softmax head
with a unit per class learns with it (first alone for HEAD_EPOCHS); model.json
lists the classes and their colours (own_classes true), and 06 and 07 take them from it.
EuroSAT replay then teaches each patch the own classes its class agrees with through the
table; the model's EuroSAT accuracy is not measured (it has no EuroSAT classes).
DISTILL* and INTERPOLATE do not apply then: the start model's answers are EuroSAT's
classes. With OWN_CLASSES_RECIPE (the default) own classes are taught with OWN_RECIPE,
the recipe measured for them (all layers, Adam 0.0002, 5 epochs, one model, a head
epoch first), not with the settings tuned for the EuroSAT route.

Writes runs/<run name>/ like 02-05: model.keras (plain Keras), model.json (where the
model came from and how it was taught), history.csv, report/ (the maps before and
after, 06 at stride 1 over the whole scene; held_out.json, 07's scores inside the
hold-out box; before_after.png: scene | before | after with the reference outlines).
The last lines give the held-out class-balanced agreement before and after, per class.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Final

import numpy as np

from cnn_sentinel import reference_training as teach
from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import atomic_output, write_atomic
from cnn_sentinel.scene import job as scene_job
from cnn_sentinel.scene import plan as scene_plan
from cnn_sentinel.scene import teaching
from cnn_sentinel.scene.reading import load_scene_model, scene_stem
from cnn_sentinel.settings import parse_settings, run_script, settings_values
from cnn_sentinel.training import (
    CHECKPOINTS,
    HISTORY_FILE,
    STATE_FILE,
    check_writable,
    clear_run_folder,
    open_run_folder,
    write_history_csv,
)

IMAGE = None  # the scene (GeoTIFF/VRT, .SAFE folder or .zip), as 06 reads it
REFERENCE = None  # OGR vector (polygons or points, any CRS) or a class raster, as 07 reads it
REFERENCE_FIELD = "auto"  # field with the class; layer: the layer names; auto: fclass, class...
TABLE = "auto"  # auto: the built-in table that fits; or a JSON/CSV file: class -> EuroSAT classes
CLASSES = "auto"  # auto | eurosat | reference: EuroSAT's ten or yours (auto: TABLE's own if any)
OWN_CLASSES_RECIPE = True  # with your classes: OWN_RECIPE's layers, rate, epochs, soup, head
MODEL = "auto"  # start: auto (the shipped model that fits the scene), a run folder or a .keras
HOLDOUT_BBOX = ()  # xmin ymin xmax ymax in the scene's CRS: kept out of training, scored
EUROSAT = None  # split folder of 01 (train/, validation/): replayed, and accuracy measured
REPLAY = 0.25  # EuroSAT patches replayed per scene window (0: none)
DISTILL = 1.0  # share of a replayed patch's target that is the start model's probabilities
DISTILL_REFERENCE = 0.0  # weight of the start model's choice among a window's compatible classes
DISTILL_SCENE = 0  # windows where no reference is, taught the start model's probabilities (0: none)
L2_SP = 0.0  # strength of the pull of every learning weight toward its start value (0: none)
INTERPOLATE = 0.9  # saved weights: (1 - this) * start + this * taught (soup), all (1: as taught)
SAMPLES_PER_CLASS = 500  # training windows per reference class (repeated if it has fewer)
MIN_SAMPLES = 20  # a reference class with fewer usable pixels is an error
ERODE = 0  # pixels taken off the edge of every reference class against edge noise
KEEP_AGREEING = False  # a window the start model already calls a compatible class keeps that class
PSEUDO_LABELS = 0  # windows per class the start model is sure of, where no reference is
PSEUDO_CONFIDENCE = 0.9  # the start model's probability a pseudo-label needs
HEAD_EPOCHS = 0  # epochs of the head alone before TRAIN_LAYERS learn, per member (LP-FT; 0: none)
HEAD_LEARNING_RATE = 0.001  # Adam's learning rate of those head epochs
TRAIN_LAYERS = "frozen-bn"  # all | frozen-bn | head | last-block | bn: the layers that learn
LEARNING_RATE = 0.0003  # Adam's learning rate
EPOCHS = 7  # passes over the training windows (per member of the soup)
SOUP = 3  # models taught with seeds SEED, SEED + 1...; the saved one averages their weights
BATCH_SIZE = 64  # windows per step
AUGMENT = True  # each window under one of the 8 flips and 90-degree rotations
BANDS = None  # scene bands for the model (06's --bands); None: by band name or in order
REFLECTANCE_SCALE = "auto"  # 06's: auto (10000), or 1000, 1
RGB_SCALING = "auto"  # auto | eurosat | none: 06's scaling of L1C values for RGB models
CLOUD_MASK = "auto"  # auto | on | off: 06's cloud mask (cloudy pixels are never a centre)
CLOUD_THRESHOLD = 0.65  # 06's cloud probability threshold
MAPS = True  # classify the scene before and after (06, stride 1) and score the hold-out box
OUTPUT = "runs"  # folder that receives the run folder
RUN_NAME = ""  # run folder name; empty: reference-<scene stem>; the same name resumes a run
SEED = 0  # seed of sampling, shuffling and augmentation
PROGRESS = True  # show Keras' progress
OVERWRITE = False  # replace existing outputs: teach a finished run of the same name again

# The recipe measured for your own classes (a new head; benchmarks/README.md, "Own
# classes"): it replaces these settings when OWN_CLASSES_RECIPE is on.
OWN_RECIPE: Final = {
    "train_layers": "all",
    "learning_rate": 0.0002,
    "epochs": 5,
    "soup": 1,
    "head_epochs": 1,
    "head_learning_rate": 0.002,
}
SCRIPT_06: Final = Path(__file__).resolve().parent / "06_classify_image.py"
# Settings a resumed run may change (they do not change what is trained).
FREE_ON_RESUME: Final = ("progress", "output", "run_name", "overwrite", "maps")


def settings_for_06(settings, model: str, output_dir: Path | None = None):
    """06's namespace for this scene and model: 06's defaults, 08's scene flags, stride 1."""
    argv = ["--image", str(settings.image), "--model", str(model), "--stride", "1",
            "--reflectance-scale", str(settings.reflectance_scale),
            "--rgb-scaling", settings.rgb_scaling, "--cloud-mask", settings.cloud_mask,
            "--cloud-threshold", str(settings.cloud_threshold), "--no-progress", "--overwrite",
            "--method", "dense"]  # fmt: skip
    argv += ["--bands", settings.bands] if settings.bands else []
    argv += ["--output-dir", str(output_dir)] if output_dir else []
    return parse_settings(SCRIPT_06, argv)


def start_model_path(model: str) -> str:
    """MODEL as a path: auto stays auto (06 picks); a run folder gives its model.keras."""
    if model in (None, "", "auto"):
        return "auto"
    path = Path(model)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise InputError(f"model {model} is neither a .keras file nor a run folder with one.")
    return str(path)


def classify(settings, model: str, folder: Path) -> Path:
    """The scene classified by 06's code with `model` into `folder`; its label map."""
    settings06 = settings_for_06(settings, model, folder)
    plan = scene_plan.plan_scene(settings06, settings.image)
    scene_job.classify_one(plan, report=lambda _line: None)
    return plan.outputs.label


def training_centres(settings, scene, reference, targets, part):
    """SAMPLES_PER_CLASS centres per taught reference class, outside the hold-out box and
    its margin, with data and without cloud; and where centres may lie at all."""
    usable = teaching.usable_pixels(scene)
    allowed = teaching.training_allowed(scene.shape, part, scene.size) & usable
    masks = {
        name: teaching.class_pixels(reference, name, settings.erode) & allowed for name in targets
    }
    if not any(mask.any() for mask in masks.values()):
        raise InputError(
            f"reference {settings.reference} has no usable pixel outside the hold-out box "
            f"(and its {scene.size}-pixel margin), so there is nothing to train on."
        )
    centres = teaching.sample_centres(
        masks, settings.samples_per_class, settings.min_samples, settings.seed
    )
    return centres, allowed


def training_windows(settings, scene, reference, targets, centres, allowed, before_map, own=None):
    """The training windows and their target masks: the reference classes' centres, and
    PSEUDO_LABELS per class of the start model where no reference is (with `own`
    classes, the own classes its EuroSAT class agrees with)."""
    from osgeo import gdal

    rows = [centres[name][0] for name in targets]
    cols = [centres[name][1] for name in targets]
    masks_out = [np.repeat(targets[name][None], len(centres[name][0]), 0) for name in targets]
    counts = {name: len(centres[name][0]) for name in targets}
    labels = gdal.Open(str(before_map)).ReadAsArray() if before_map is not None else None
    if settings.keep_agreeing and labels is not None:
        width = len(scene.class_names)
        for position, (row, col) in enumerate(zip(rows, cols, strict=True)):
            before = labels[row, col].astype(np.int64)
            agree = before < width
            agree[agree] = masks_out[position][np.flatnonzero(agree), before[agree]] > 0
            masks_out[position][agree] = teach.one_hot(before[agree], width)
    if settings.pseudo_labels and labels is not None:
        probability = gdal.Open(str(before_map).replace("_label.tif", "_prob.tif")).ReadAsArray()
        free = allowed & (reference.classes == teaching.evaluation.NO_REFERENCE)
        free &= probability >= settings.pseudo_confidence
        random = np.random.default_rng(settings.seed + 1)
        for index, name in enumerate(scene.class_names):
            pixels = np.flatnonzero(free & (labels == index))
            if len(pixels) < settings.min_samples:
                continue
            chosen = random.choice(pixels, min(settings.pseudo_labels, len(pixels)), replace=False)
            row, col = np.divmod(chosen, scene.shape[1])
            masks, keep = replay_targets(own, np.full(len(row), index), len(scene.class_names))
            if not keep.any():
                continue
            rows.append(row)
            cols.append(col)
            masks_out.append(masks)
            counts[f"pseudo {name}"] = len(row)
    windows = teaching.read_windows(scene, np.concatenate(rows), np.concatenate(cols))
    return windows, np.concatenate(masks_out), counts


def replay_targets(own, labels: np.ndarray, class_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The target masks of EuroSAT patches of class indices `labels` and which of them
    to replay: their own class with EuroSAT's, the own classes the table agrees with."""
    if own is None:
        return teach.one_hot(labels, class_count), np.ones(len(labels), bool)
    masks = own.from_eurosat[labels]
    return masks, masks.any(axis=1)


def distillation(settings, model, scene, reference, allowed, windows, targets, replayed, counts):
    """Targets of teach.teaching_loss: the replayed EuroSAT patches (the last `replayed`
    windows) keep DISTILL of the start model's probabilities beside their label, and
    DISTILL_SCENE windows where no reference lies learn the start model's probabilities
    (Learning without Forgetting); the scene's windows learn, with weight DISTILL_REFERENCE,
    the start model's probabilities among their compatible classes (which of AnnualCrop,
    Pasture... a farm is); `model` is still the start model."""
    width = targets.shape[1]
    soft = np.zeros_like(targets)
    weight = np.ones(len(targets), np.float32)
    if settings.distill_reference:
        scene_rows = len(targets) - replayed
        start = teach.predict_windows(model, windows[:scene_rows])
        soft[:scene_rows] = settings.distill_reference * teach.within_compatible(
            start, targets[:scene_rows]
        )
    if replayed:
        start = teach.predict_windows(model, windows[-replayed:])
        soft[-replayed:] = settings.distill * start
        weight[-replayed:] = 1.0 - settings.distill
    wide = teach.distillation_targets(targets, soft, weight[:, None])
    free = []
    if settings.distill_scene:
        free = np.flatnonzero(allowed & (reference.classes == teaching.evaluation.NO_REFERENCE))
    if len(free):
        random = np.random.default_rng(settings.seed + 3)
        chosen = random.choice(free, min(settings.distill_scene, len(free)), replace=False)
        row, col = np.divmod(chosen, scene.shape[1])
        extra = teaching.read_windows(scene, row, col)
        start = teach.predict_windows(model, extra)
        windows = np.concatenate([windows, extra.astype(windows.dtype)])
        wide = np.concatenate([wide, teach.distillation_targets(np.zeros((len(row), width)),
                                                                start, 0.0)])  # fmt: skip
        counts["distilled scene"] = len(row)
    return windows, wide


def fit_head_first(settings, model, windows, targets, state: dict) -> None:
    """LP-FT: HEAD_EPOCHS of the head alone before the first epoch, so that the layers
    below learn against a head that already fits the scene and move less. Not saved on
    its own: a resumed run's checkpoint holds its result."""
    import keras

    if not settings.head_epochs or state["epoch"] % settings.epochs:
        return
    teach.set_trainable(model, "head")
    model.compile(
        optimizer=keras.optimizers.Adam(settings.head_learning_rate),
        loss=teach.teaching_loss,
        metrics=[teach.teaching_accuracy],
    )
    batches = teach.window_batches(
        windows, targets, settings.batch_size, settings.augment, settings.seed + 4, 0
    )
    model.fit(batches, epochs=settings.head_epochs, verbose=1 if settings.progress else 2)
    teach.set_trainable(model, settings.train_layers)


def fit_soup(settings, model, windows, targets, run_folder: Path, state: dict) -> None:
    """SOUP members, each taught from the start weights for EPOCHS with its own random
    seed (dropout, Keras' initial state; the batches follow the run's epoch count), then
    every weight averaged over them (a model soup: what one seed gets by luck, the
    average keeps). A finished member is saved as checkpoints/member-<k>.weights.h5."""
    import keras

    start = model.get_weights()
    members = []
    for member in range(settings.soup):
        saved = run_folder / CHECKPOINTS / f"member-{member}.weights.h5"
        if state["epoch"] >= (member + 1) * settings.epochs and saved.is_file():
            model.load_weights(saved)
        else:
            model.set_weights(start)
            keras.utils.set_random_seed(settings.seed + member)
            fit_head_first(settings, model, windows, targets, state)
            fit(settings, model, windows, targets, run_folder, state, member)
            partial = saved.with_name(f"partial-{os.getpid()}.weights.h5")
            model.save_weights(partial)
            os.replace(partial, saved)
        members.append(model.get_weights())
    model.set_weights(teach.average_weights(members))


def fit(settings, model, windows, targets, run_folder: Path, state: dict, member: int = 0):
    """Train member `member` of the soup for EPOCHS (the run's epochs member * EPOCHS + 1
    on), saving weights, state.json and history.csv after every epoch; a run stopped
    between epochs resumes from its last one."""
    import keras

    checkpoint = run_folder / CHECKPOINTS / "last.weights.h5"
    first, last = member * settings.epochs, (member + 1) * settings.epochs
    if state["epoch"] > first and checkpoint.is_file():
        model.load_weights(checkpoint)
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=teach.teaching_loss,
        metrics=[teach.teaching_accuracy],
    )

    class SaveEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            partial = checkpoint.with_name(f"partial-{os.getpid()}.weights.h5")
            self.model.save_weights(partial)
            os.replace(partial, checkpoint)
            state["epoch"] = epoch + 1
            state["history"].append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
            state["training_seconds"] += time.perf_counter() - self.started
            self.started = time.perf_counter()
            write_atomic(run_folder / STATE_FILE, state, overwrite=True)
            write_history_csv(run_folder / HISTORY_FILE, state["history"])

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

    batches = teach.window_batches(
        windows, targets, settings.batch_size, settings.augment, settings.seed, state["epoch"]
    )
    if state["epoch"] < last:
        model.fit(
            batches,
            epochs=last,
            initial_epoch=max(state["epoch"], first),
            callbacks=[SaveEpoch()],
            verbose=1 if settings.progress else 2,
        )


def score_map(settings, label_path, box, when: str, own):
    """07's scores of a map inside the hold-out box. With own classes the map after is
    scored with the identity table (auto), or the table of own classes that made
    them; the map before (EuroSAT's classes) with the table when it names EuroSAT
    classes, else the built-in one (None when none fits)."""
    table = settings.table
    own_names = own is not None and teaching.table_names_own_classes(table)
    if own is not None and (when == "before") == bool(own_names):
        table = "auto"
    try:
        return teach.score_part(
            label_path, settings.reference, settings.reference_field, table, box
        )
    except InputError:
        if when == "after" or own is None:
            raise
        return None


def main(argv: list[str] | None = None) -> dict:
    settings = parse_settings(__file__, argv)
    if not settings.image or not settings.reference:
        raise InputError("give the scene with --image and your reference with --reference.")
    if min(settings.epochs, settings.batch_size, settings.samples_per_class, settings.soup) < 1:
        raise InputError("epochs, batch size, samples per class and soup must be at least 1.")
    if not 0 <= settings.distill <= 1:
        raise InputError(f"--distill is a share between 0 and 1, not {settings.distill}.")
    if settings.head_epochs < 0:
        raise InputError(f"head epochs must be 0 or more, not {settings.head_epochs}.")
    classes = settings.classes
    if classes == "auto":
        classes = "reference" if teaching.table_names_own_classes(settings.table) else "eurosat"
    if classes == "reference" and settings.keep_agreeing:
        raise InputError(
            "--keep-agreeing keeps EuroSAT classes; leave it out with --classes reference."
        )
    if classes == "reference" and settings.own_classes_recipe:
        for name, value in OWN_RECIPE.items():
            setattr(settings, name, value)
    box = scene_plan.parse_numbers(settings.holdout_bbox, float, "hold-out box")
    run_folder = Path(settings.output) / (
        settings.run_name or f"reference-{scene_stem(settings.image)}"
    )
    values = settings_values(settings)
    identity = {k: v for k, v in values.items() if k not in FREE_ON_RESUME}
    identity = json.loads(json.dumps(identity, default=str))
    state = open_run_folder(run_folder, identity, settings.overwrite)
    start = start_model_path(settings.model)

    settings06 = settings_for_06(settings, start)
    model_cache = {}

    def load(path: str):
        model_cache.setdefault(path, load_scene_model(path))
        return model_cache[path]

    scene = teaching.open_teaching_scene(settings06, settings.image, load)
    start = scene.plan.model_path
    model, info = load(start)
    part = teaching.holdout_part(scene, box)
    own = None
    if classes == "reference":
        reference, table_name, targets, own = teaching.own_class_targets(
            scene, settings.reference, settings.reference_field, settings.table
        )
    elif named := teaching.table_names_own_classes(settings.table):
        raise InputError(
            f"table {settings.table} names classes of its own ({', '.join(named)}), not "
            "EuroSAT's; teach them with --classes reference."
        )
    else:
        reference, table_name, targets = teaching.reference_targets(
            scene, settings.reference, settings.reference_field, settings.table
        )
    if own is not None and settings.eurosat and not own.from_eurosat.any():
        raise InputError(
            f"table {settings.table} names no EuroSAT class, so no EuroSAT patch can be "
            "replayed as one of your classes; leave --eurosat out."
        )
    centres, allowed = training_centres(settings, scene, reference, targets, part)
    if settings.eurosat:
        train_x, train_y = teach.eurosat_arrays(
            settings.eurosat, "train", info.band_names, info.class_names
        )
        val_x, val_y = teach.eurosat_arrays(
            settings.eurosat, "validation", info.band_names, info.class_names
        )
    check_writable(run_folder)
    if settings.overwrite or not state["epoch"]:
        clear_run_folder(run_folder)
    run_folder.mkdir(parents=True, exist_ok=True)
    write_atomic(run_folder / STATE_FILE, state, overwrite=True)
    report = run_folder / "report"
    started = time.perf_counter()
    held_out = f", hold-out box {' '.join(f'{v:.0f}' for v in box)} (pixels {part})" if box else ""
    print(f"{settings.image}: teaching {start} with {settings.reference} ({table_name} table)"
          f"{held_out}")  # fmt: skip
    before_map = classify(settings, start, report / "before") if settings.maps else None
    windows, targets_array, counts = training_windows(
        settings, scene, reference, targets, centres, allowed, before_map, own
    )
    print("training windows: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    eurosat = {}
    replayed = 0
    if settings.eurosat:
        if own is None:
            eurosat["before"] = teach.accuracy(model, val_x, val_y)
        replay_masks, replayable = replay_targets(own, train_y, len(info.class_names))
        replayed = int(round(settings.replay * len(windows)))
        if replayed:
            random = np.random.default_rng(settings.seed + 2)
            picked = random.choice(np.flatnonzero(replayable), replayed)
            windows = np.concatenate([windows, train_x[picked].astype(windows.dtype)])
            targets_array = np.concatenate([targets_array, replay_masks[picked]])
    distilled = settings.distill or settings.distill_scene or settings.distill_reference
    if own is None and distilled:
        windows, targets_array = distillation(
            settings, model, scene, reference, allowed, windows, targets_array, replayed, counts
        )
    import keras

    keras.utils.set_random_seed(settings.seed)
    if own is not None:
        model = teach.with_new_head(model, len(own.names), start)
        print(f"your classes: {', '.join(own.names)} (a new head on {start}'s backbone; "
              "no distillation or interpolation toward its EuroSAT classes)")  # fmt: skip
        if settings.own_classes_recipe:
            print("the own-classes recipe: " + ", ".join(f"{k} {v}" for k, v in OWN_RECIPE.items())
                  + " (--no-own-classes-recipe: your flags)")  # fmt: skip
    trainable = teach.set_trainable(model, settings.train_layers)
    print(f"{len(windows)} windows, {trainable} weights learn ({settings.train_layers})")
    start_weights = model.get_weights()
    if settings.l2_sp:
        teach.pull_to_start(model, settings.l2_sp)
    fit_soup(settings, model, windows, targets_array, run_folder, state)
    if own is None and settings.interpolate != 1.0:
        model.set_weights(
            teach.interpolate_weights(start_weights, model.get_weights(), settings.interpolate)
        )
    model_path = run_folder / "model.keras"
    with atomic_output(model_path, overwrite=True) as temporary:
        teach.clean_copy(model, start, len(own.names) if own else None).save(temporary)
    if eurosat:
        eurosat["after"] = teach.accuracy(model, val_x, val_y)
    info.recipe = "train-on-reference"
    info.settings = identity
    info.epochs_trained = state["epoch"]
    info.training_seconds = state["training_seconds"]
    info.metrics = {"eurosat_validation_accuracy": eurosat}
    if own is not None:
        info.class_names, info.own_classes = list(own.names), True
        info.class_colours = [list(colour) for colour in own.colours]
        info.extra = {**info.extra, "class_of_reference_class": own.class_of}
    info.extra = {**info.extra, "started_from": start, "scene": str(settings.image),
                  "reference": str(settings.reference), "table": table_name,
                  "holdout_bbox": box, "training_windows": counts}  # fmt: skip
    info.save(run_folder / "model.json")
    result = {"training_windows": counts, "eurosat_validation_accuracy": eurosat}
    if settings.maps:
        after_map = classify(settings, str(model_path), report / "after")
        scores = {
            when: score_map(settings, path, box, when, own)
            for when, path in (("before", before_map), ("after", after_map))
        }
        result["held_out"] = {"bbox": box, "pixels": part, **scores}
        write_atomic(report / "held_out.json", result, overwrite=True)
        # An RGB model's bands are red, green, blue: the picture takes them by number.
        indices = scene.plan.band_indices
        picture_bands = ",".join(str(i + 1) for i in indices) if len(indices) == 3 else None
        teach.save_before_after(
            settings.image, [before_map, after_map], settings.reference,
            settings.reference_field, box, report / "before_after.png",
            f"{scene_stem(settings.image)}: before and after 08", picture_bands,
        )  # fmt: skip
    state["finished"] = True
    write_atomic(run_folder / STATE_FILE, state, overwrite=True)
    minutes = (time.perf_counter() - started) / 60
    print(f"wrote {run_folder} in {minutes:.1f} min")
    if eurosat:
        print(f"EuroSAT validation accuracy: before {eurosat['before']:.4f}, "
              f"after {eurosat['after']:.4f}")  # fmt: skip
    elif own is not None:
        print("EuroSAT validation accuracy: not measured (the model's classes are yours: "
              f"{', '.join(own.names)})")  # fmt: skip
    if settings.maps:
        print("\n".join(teach.held_out_lines(scores["before"], scores["after"])))
    return result


if __name__ == "__main__":
    run_script(main)
