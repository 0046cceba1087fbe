"""The model side of 08 (teach a model the user's scene): which layers learn, the loss
that accepts any compatible class, batches with the 8 flips and rotations, EuroSAT
replay and accuracy, the held-out score with 07's code, and the report picture.

A reference class usually agrees with several EuroSAT classes (OSM farm: AnnualCrop,
PermanentCrop, Pasture, HerbaceousVegetation), so a window's target is the mask of
its compatible classes and the loss is -log of the probability the model gives to
them together (`compatible_loss`): a window counts as right exactly when 07 would
count its pixel as agreeing. EuroSAT patches and pseudo-labels have one class (a
mask with one 1). With the user's own classes (08 --classes reference) the start
model's last Dense layer is replaced by a new one with a unit per own class
(`with_new_head`), and the same loss is the cross-entropy of one-hot masks. Only keras
and numpy at the top; TensorFlow loads with keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnn_sentinel import evaluation
from cnn_sentinel.errors import InputError
from cnn_sentinel.scene.quicklooks import QUICKLOOK_MAX_SIDE, decimation, label_colours

TRAIN_LAYERS = ("all", "frozen-bn", "head", "last-block", "bn")
# Layers that end a block: "last-block" trains what follows the last of them.
BLOCK_ENDS = ("Add", "Concatenate", "MaxPooling2D", "AveragePooling2D")


def flat_layers(model) -> list:
    """Every leaf layer of a model, nested models opened, in order."""
    layers = []
    for layer in model.layers:
        layers.extend(flat_layers(layer) if hasattr(layer, "layers") else [layer])
    return layers


def set_trainable(model, which: str) -> int:
    """Make `which` layers trainable, the rest frozen: all (every layer but the input
    normalisation), frozen-bn (those but batch normalisation, which keeps its statistics),
    head (the last layer with weights), last-block (the layers after the last block end),
    bn (batch normalisation and the head). Returns the trainable weight count."""
    if which not in TRAIN_LAYERS:
        raise InputError(f"train layers must be one of {', '.join(TRAIN_LAYERS)}, not {which}.")
    layers = flat_layers(model)
    weighted = [layer for layer in layers if layer.weights]
    ends = [i for i, layer in enumerate(layers) if type(layer).__name__ in BLOCK_ENDS]
    for container in [model, *[layer for layer in model.layers if hasattr(layer, "layers")]]:
        container.trainable = True
    for index, layer in enumerate(layers):
        kind = type(layer).__name__
        learns = {
            "all": kind != "Normalization",
            "frozen-bn": kind not in ("Normalization", "BatchNormalization"),
            "head": layer is weighted[-1],
            "last-block": index > (ends[-1] if ends else len(layers) - 2),
            "bn": kind == "BatchNormalization" or layer is weighted[-1],
        }[which]
        layer.trainable = learns
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def with_new_head(model, class_count: int, where: str):
    """The model with its last layer (a softmax Dense) replaced by a new softmax Dense of
    `class_count` units of the same name on the same features (the backbone's weights
    shared, the head's drawn afresh). InputError when the model ends otherwise."""
    import keras

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise InputError(
            f"model {where} does not end in a Dense layer, so 08 cannot give it a head "
            "for your own classes; train it with --classes eurosat."
        )
    outputs = keras.layers.Dense(class_count, activation="softmax", name=head.name)(head.input)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=model.name)


def pull_to_start(model, strength: float) -> None:
    """L2-SP: every trainable weight gets the penalty strength * sum((w - w_start) ** 2),
    w_start its value now, added to the loss while the model trains (the saved model,
    `clean_copy`, holds no regulariser)."""
    import keras

    for variable in model.trainable_weights:
        start = keras.ops.convert_to_tensor(np.array(variable.numpy()))
        variable.regularizer = lambda value, start=start: (
            strength * keras.ops.sum(keras.ops.square(value - start))
        )


def compatible_loss(mask, probabilities):
    """-log of the probability given to the compatible classes (mask 1) together."""
    import keras

    inside = keras.ops.sum(mask * probabilities, axis=-1)
    return -keras.ops.log(keras.ops.clip(inside, 1e-7, 1.0))


def distillation_targets(mask, soft=None, mask_weight=1.0) -> np.ndarray:
    """Targets of `teaching_loss`, (n, 2 * classes + 1) float32: the compatible-class mask,
    the soft target (the start model's probabilities, scaled by their weight; zeros when
    None) and the weight of the mask's term."""
    mask = np.asarray(mask, np.float32)
    soft = np.zeros_like(mask) if soft is None else np.asarray(soft, np.float32)
    weight = np.broadcast_to(np.asarray(mask_weight, np.float32).reshape(-1, 1), (len(mask), 1))
    return np.concatenate([mask, soft, weight], axis=1).astype(np.float32)


def within_compatible(probabilities: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The probabilities of the compatible classes (mask 1), rescaled to sum to 1 (equal
    shares where the model gives them none), (n, classes) float32."""
    inside = np.asarray(probabilities, np.float64) * mask + 1e-12 * mask
    return (inside / inside.sum(axis=-1, keepdims=True)).astype(np.float32)


def teaching_loss(targets, probabilities):
    """`compatible_loss` for targets of one mask per window (classes wide); for targets of
    `distillation_targets` (2 * classes + 1 wide) the mask's term times its weight plus the
    cross-entropy to the soft target (Learning without Forgetting: the replayed patches
    keep the start model's answers, not only their labels)."""
    import keras

    classes = probabilities.shape[-1]
    if targets.shape[-1] == classes:
        return compatible_loss(targets, probabilities)
    mask, soft = targets[..., :classes], targets[..., classes : 2 * classes]
    weight = targets[..., 2 * classes]
    inside = keras.ops.sum(mask * probabilities, axis=-1)
    hard = -keras.ops.log(keras.ops.clip(inside, 1e-7, 1.0)) * weight
    logs = keras.ops.log(keras.ops.clip(probabilities, 1e-7, 1.0))
    return hard - keras.ops.sum(soft * logs, axis=-1)


def teaching_accuracy(targets, probabilities):
    """`compatible_accuracy` on the mask, or, where a window has only a soft target, 1
    where the most probable class is the soft target's."""
    import keras

    classes = probabilities.shape[-1]
    if targets.shape[-1] == classes:
        return compatible_accuracy(targets, probabilities)
    mask, soft = targets[..., :classes], targets[..., classes : 2 * classes]
    has_mask = keras.ops.cast(keras.ops.sum(mask, axis=-1) > 0, probabilities.dtype)
    best_soft = keras.ops.one_hot(keras.ops.argmax(soft, axis=-1), classes)
    chosen = has_mask[..., None] * mask + (1.0 - has_mask[..., None]) * best_soft
    return compatible_accuracy(chosen, probabilities)


def average_weights(members: list[list]) -> list:
    """A model soup: each weight averaged over the members' weights (one member: its own)."""
    if len(members) == 1:
        return [np.asarray(weight) for weight in members[0]]
    return [
        np.mean(np.stack(weights), axis=0).astype(np.asarray(weights[0]).dtype)
        for weights in zip(*members, strict=True)
    ]


def interpolate_weights(start: list, tuned: list, share: float) -> list:
    """WiSE-FT: every weight (batch-norm moving statistics included) at (1 - share) * start
    + share * tuned; share 0 gives the start weights exactly, 1 the tuned ones."""
    mixed = []
    for before, after in zip(start, tuned, strict=True):
        before, after = np.asarray(before), np.asarray(after)
        if np.issubdtype(before.dtype, np.floating):
            keep = before.dtype.type(1.0 - share)
            move = before.dtype.type(share)
            mixed.append((keep * before + move * after).astype(before.dtype))
        else:
            mixed.append(after if share >= 0.5 else before)
    return mixed


def compatible_accuracy(mask, probabilities):
    """1 where the most probable class is a compatible one."""
    import keras

    best = keras.ops.argmax(probabilities, axis=-1)
    return keras.ops.take_along_axis(mask, keras.ops.expand_dims(best, -1), axis=-1)[..., 0]


def dihedral(windows: np.ndarray, random: np.random.Generator) -> np.ndarray:
    """Each window under one of the 8 symmetries of the square, drawn per window."""
    turned = np.empty_like(windows)
    choice = random.integers(0, 8, len(windows))
    for k in range(8):
        picked = choice == k
        rotated = np.rot90(windows[picked], k % 4, axes=(1, 2))
        turned[picked] = rotated[:, :, ::-1] if k >= 4 else rotated
    return turned


def window_batches(windows, targets, batch_size: int, augment: bool, seed: int, epoch: int):
    """A keras PyDataset of shuffled (windows float32, target masks) batches; the
    shuffle and the symmetries depend on `seed` and the epoch only (resumable)."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = epoch
            self.order = self._order()

        def _order(self):
            return np.random.default_rng([seed, self.epoch]).permutation(len(windows))

        def __len__(self):
            return -(-len(windows) // batch_size)

        def __getitem__(self, index):
            picked = np.sort(self.order[index * batch_size : (index + 1) * batch_size])
            batch = windows[picked].astype(np.float32)
            if augment:
                batch = dihedral(batch, np.random.default_rng([seed, self.epoch, index]))
            return batch, targets[picked]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Batches()


def eurosat_arrays(split: str | Path, part: str, band_names: Sequence[str], class_names):
    """The images of split/part (01's folder) with the model's bands, and their class
    indices in the model's class order."""
    from image_functions import default_band_names, load_arrays, select_bands

    folder = Path(split) / part
    if not folder.is_dir():
        raise InputError(f"EuroSAT split {split} has no {part}/ folder; make one with 01.")
    probe = next(folder.glob("*/*"), None)
    if probe is None:
        raise InputError(f"EuroSAT split folder {folder} holds no images.")
    from image_functions import read_image

    available = default_band_names(read_image(probe).shape[-1])
    indices = select_bands(list(band_names), available)
    images, labels, _ = load_arrays(folder, indices, list(class_names), progress=False)
    return images, labels


def predict_windows(model, windows: np.ndarray, chunk: int = 512) -> np.ndarray:
    """The model's probabilities for (n, rows, cols, bands) windows of any dtype, converted
    to float32 a chunk at a time (the whole set as float32 would double the memory)."""
    parts = [
        model.predict(windows[i : i + chunk].astype(np.float32), batch_size=64, verbose=0)
        for i in range(0, len(windows), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def one_hot(labels: np.ndarray, count: int) -> np.ndarray:
    return np.eye(count, dtype=np.float32)[labels]


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> float:
    """Share of images whose most probable class is their class."""
    if not len(images):
        return float("nan")
    predicted = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predicted, axis=-1) == labels))


def clean_copy(model, start_path: str | Path, class_count: int | None = None):
    """The trained weights in a fresh load of the start model's file (plain Keras, no
    compile state, its layers as trainable as they were saved), for model.keras; with
    `class_count`, with the new head of the user's own classes (`with_new_head`)."""
    import keras

    copy = keras.saving.load_model(start_path, compile=False)
    if class_count is not None:
        copy = with_new_head(copy, class_count, str(start_path))
    copy.set_weights(model.get_weights())
    return copy


def score_part(label_path, reference_path, class_field: str, table: str, box) -> dict:
    """07's assessment of a label map of 06, inside `box` (all of it when None)."""
    label_map = evaluation.read_label_map(label_path)
    if box is not None:
        label_map, _ = evaluation.crop_to_box(label_map, box)
    reference = evaluation.read_reference(reference_path, class_field, label_map)
    _, compatible = evaluation.compatibility_table(table, reference.names, label_map.class_names)
    return evaluation.assess(label_map, reference, compatible)


def held_out_lines(before: dict | None, after: dict) -> list[str]:
    """The closing lines: class-balanced agreement before and after, then per class
    (before None: the map before could not be scored with the table, n/a)."""

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    before = before or {"class_balanced_agreement": None, "classes": {}}

    lines = [
        f"held-out class-balanced agreement: before {number(before['class_balanced_agreement'])}"
        f", after {number(after['class_balanced_agreement'])}"
    ]
    for name, entry in after["classes"].items():
        if entry["pixels"]:
            lines.append(
                f"  {name:20s} {entry['pixels']:8d} px: before "
                f"{number(before['classes'].get(name, {}).get('agreement'))}, "
                f"after {number(entry['agreement'])}"
            )
    return lines


def save_before_after(
    scene_path, maps, reference_path, class_field, box, output_path, title, scene_bands=None
) -> None:
    """PNG: the scene's true colour (`scene_bands` "r,g,b", or B04, B03, B02 by name), the
    map before and the map after, the reference outlines on all three, the hold-out box."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    label_maps = [evaluation.read_label_map(path) for path in maps]
    first = label_maps[0]
    reference = evaluation.read_reference(reference_path, class_field, first)
    rows, cols = first.labels.shape
    scale = max(1.0, max(rows, cols) / QUICKLOOK_MAX_SIDE)
    picked = np.ix_(decimation(rows, scale), decimation(cols, scale))
    # The maps may have different classes (after: the user's own), each its colours.
    colours = [label_colours(m.class_names, m.colours) for m in label_maps]
    scene = evaluation.open_picture_scene(scene_path, scene_bands)
    panels = [("scene", evaluation.scene_picture(*scene, first, first.labels[picked].shape))]
    panels += [
        (name, colour[m.labels[picked]])
        for name, m, colour in zip(("before", "after"), label_maps, colours, strict=True)
    ]
    minx, miny, maxx, maxy = first.bounds
    palette = plt.get_cmap(evaluation.OUTLINE_COLOURS)
    figure, axes = plt.subplots(1, 3, figsize=(18, 1.0 + 5.5 * rows / cols), squeeze=False)
    for axis, (name, image) in zip(axes[0], panels, strict=True):
        axis.imshow(image, extent=(minx, maxx, miny, maxy), interpolation="nearest")
        for index, paths in enumerate(reference.outlines.values()):
            for path in paths:
                axis.plot(path[:, 0], path[:, 1], color=palette(index % 10), linewidth=0.6)
        if box is not None:
            width, height = box[2] - box[0], box[3] - box[1]
            outline = {"fill": False, "edgecolor": "white", "linestyle": "--", "linewidth": 1.2}
            axis.add_patch(Rectangle((box[0], box[1]), width, height, **outline))
        axis.set_xlim(minx, maxx)
        axis.set_ylim(miny, maxy)
        axis.set_title(name, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    legend = {}
    for label_map, colour in zip(label_maps, colours, strict=True):
        for value in np.unique(label_map.labels[picked]).tolist():
            if value < len(label_map.class_names):
                legend.setdefault(label_map.class_names[value], colour[value])
    # The first map's classes in class order, then the other map's own ones.
    order = list(dict.fromkeys([*first.class_names, *legend]))
    handles = [
        Patch(facecolor=legend[name] / 255.0, edgecolor="black", label=name)
        for name in sorted(legend, key=order.index)
    ]
    handles += [
        Patch(facecolor="none", edgecolor=palette(index % 10), label=f"reference {name}")
        for index, name in enumerate(reference.outlines)
    ]
    figure.suptitle(title)
    axes[0][-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.savefig(output_path, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
