"""The scene side of 08 (teach a model the user's scene): the reference on the scene's
grid, the hold-out box, the training centres and their windows, read as 06 reads them.

    scene = open_teaching_scene(settings06, image)           # 06's own preparation
    reference, targets = reference_targets(scene, path, field, table)
    part = holdout_part(scene, box)                           # [top, left, rows, cols]
    allowed = training_allowed(scene.shape, part, scene.size)
    centres = sample_centres(targets_masks, allowed & usable, per_class, seed)
    windows = read_windows(scene, rows, cols)                 # the ONE window reader

The reference is read by 07's code (cnn_sentinel.evaluation: any OGR vector in any
CRS with a class field or layer names, or a class raster; built-in, JSON or CSV
tables). A reference class teaches the EuroSAT classes its table row lists as
compatible (any of them counts as right, as 07 scores it); a class with an empty
row (OSM scrub, wetland) teaches nothing. No training centre lies within one
window's width of the hold-out box, so no training window overlaps a window whose
centre 07 scores inside it.

With the user's own classes (08's --classes reference, `own_classes`) the model's
classes become the reference classes the table teaches, or, for a table file that
names classes of its own instead of EuroSAT's, those classes (several reference
classes may make one), with the table's colours (`#rrggbb` cells) or OWN_CLASS_COLOURS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnn_sentinel import evaluation
from cnn_sentinel.errors import InputError
from cnn_sentinel.facts import CLASS_COLOURS, CLASS_NAMES
from cnn_sentinel.scene import plan as scene_plan

# Scene rows read at a time when the usable pixels are found.
STRIP_ROWS = 256
# Colours of the user's own classes that a table gives none: by a usual land-cover
# name (lower case), the EuroSAT colour of its kind; else the next of OWN_CLASS_PALETTE.
OWN_CLASS_COLOURS = {
    "forest": CLASS_COLOURS["Forest"],
    "wood": CLASS_COLOURS["Forest"],
    "water": CLASS_COLOURS["River"],
    "residential": CLASS_COLOURS["Residential"],
    "industrial": CLASS_COLOURS["Industrial"],
    "farm": CLASS_COLOURS["AnnualCrop"],
    "farmland": CLASS_COLOURS["AnnualCrop"],
    "meadow": CLASS_COLOURS["Pasture"],
    "grass": (110, 170, 60),
    "orchard": CLASS_COLOURS["PermanentCrop"],
    "vineyard": CLASS_COLOURS["PermanentCrop"],
    "scrub": (140, 120, 60),
    "wetland": (90, 170, 170),
}
OWN_CLASS_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


@dataclass
class OwnClasses:
    """The user's own classes of 08 --classes reference: their names (the model's
    output order), colours (r, g, b), the class each taught reference class becomes,
    and per EuroSAT class (10, classes) the own classes it agrees with through the
    table (for EuroSAT replay and pseudo-labels; all zero for a table of own names)."""

    names: list[str]
    colours: list[tuple[int, int, int]]
    class_of: dict[str, str]
    from_eurosat: np.ndarray


@dataclass
class TeachingScene:
    """A scene planned by 06's code (scene_plan.plan_scene: bands, reflectance factor,
    RGB scaling, cloud mask) and its grid as a LabelMap (labels unused) for 07's
    reference reading."""

    plan: scene_plan.ScenePlan
    grid: evaluation.LabelMap

    @property
    def size(self) -> int:
        return int(self.plan.window_size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.labels.shape

    @property
    def class_names(self) -> list[str]:
        return list(self.plan.info.class_names)


def open_teaching_scene(settings06, image, load_model=None) -> TeachingScene:
    """`image` planned exactly as 06 plans it with `settings06` (06's namespace)."""
    plan = scene_plan.plan_scene(settings06, image, load_model)
    dataset = plan.scene
    transform = dataset.GetGeoTransform(can_return_null=True)
    if transform is None or not dataset.GetProjection():
        raise InputError(f"scene {image} has no georeference, so no reference can be laid on it.")
    grid = evaluation.LabelMap(
        path=image,
        labels=np.zeros((dataset.RasterYSize, dataset.RasterXSize), np.uint8),
        class_names=list(plan.info.class_names),
        transform=tuple(transform),
        projection=dataset.GetProjection(),
        nodata=255,
    )
    return TeachingScene(plan, grid)


def read_windows(scene: TeachingScene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The model-input windows (n, size, size, bands) centred on scene pixels
    (rows[i], cols[i]), read exactly as 06 reads them (the plan's `windows_at`)."""
    return scene_plan.windows_at(scene.plan, rows, cols)


def usable_pixels(scene: TeachingScene) -> np.ndarray:
    """(rows, cols) bool: pixels with data and, when 06 masks clouds, without cloud."""
    rows, cols = scene.shape
    usable = np.zeros((rows, cols), bool)
    for first in range(0, rows, STRIP_ROWS):
        last = min(rows, first + STRIP_ROWS)
        usable[first:last] = ~scene_plan.nodata_rows(scene.plan, first, last)
        usable[first:last] &= ~scene_plan.cloud_rows(scene.plan, first, last)
    return usable


def holdout_part(scene: TeachingScene, box: Sequence[float] | None) -> list[int] | None:
    """The scene pixels centred in the hold-out box as [top, left, rows, cols] (07's
    --bbox takes the same pixels); None without a box."""
    if box is None:
        return None
    if len(box) != 4:
        raise InputError(f"hold-out box {' '.join(map(str, box))} must be four numbers.")
    try:
        _, part = evaluation.crop_to_box(scene.grid, box)
    except InputError as error:
        raise InputError(f"hold-out {error}") from None
    return part


def training_allowed(shape: tuple[int, int], part: list[int] | None, size: int) -> np.ndarray:
    """(rows, cols) bool: the centres at least `size` pixels (Chebyshev) from every
    pixel of the hold-out part, so that their size x size windows overlap no window
    centred in it. Everything without a part."""
    rows, cols = shape
    if part is None:
        return np.ones(shape, bool)
    top, left, height, width = part

    def far(length: int, start: int, count: int) -> np.ndarray:
        index = np.arange(length)
        distance = np.maximum(np.maximum(start - index, index - (start + count - 1)), 0)
        return distance >= size

    return far(rows, top, height)[:, None] | far(cols, left, width)[None, :]


def reference_targets(
    scene: TeachingScene, path, class_field: str, table_spec: str
) -> tuple[evaluation.Reference, str, dict[str, np.ndarray]]:
    """The reference on the scene's grid, its table's name, and per taught reference
    class the mask of the model classes it teaches (float32, one per model class).
    InputError when the reference misses the scene or the table maps nothing."""
    reference = scene_reference(scene, path, class_field)
    table_name, table = evaluation.compatibility_table(
        table_spec, reference.names, scene.class_names
    )
    targets = {}
    for name, compatible in table.items():
        if compatible:
            mask = np.zeros(len(scene.class_names), np.float32)
            mask[[scene.class_names.index(other) for other in compatible]] = 1.0
            targets[name] = mask
    if not targets:
        raise InputError(
            f"{table_name} maps no class of reference {path} "
            f"({', '.join(reference.names)}) to a class of the model, so there is nothing "
            "to teach."
        )
    return reference, table_name, targets


def own_classes(reference: evaluation.Reference, table_spec: str) -> tuple[str, OwnClasses]:
    """The table's name and the user's own classes (see OwnClasses) for `reference`:
    a table naming EuroSAT classes (auto: a built-in one) makes every reference class
    with a non-empty row a class of its own name; a table file naming only classes
    that are not EuroSAT's makes each row's class (one a row) the class. InputError
    for a table mixing both, a row with two own classes, or a table teaching nothing."""
    colours = {} if table_spec == "auto" else evaluation.table_colours(table_spec)
    rows = {} if table_spec == "auto" else evaluation.read_table(table_spec)
    named = {name for value in rows.values() for name in value}
    eurosat, own = sorted(named & set(CLASS_NAMES)), sorted(named - set(CLASS_NAMES))
    if eurosat and own:
        raise InputError(
            f"table {table_spec} names both EuroSAT classes ({', '.join(eurosat)}) and "
            f"classes of its own ({', '.join(own)}); name only EuroSAT classes (each taught "
            "reference class becomes a class of its name) or only your own classes."
        )
    if own:
        for name, value in rows.items():
            if len(value) > 1:
                raise InputError(
                    f"table {table_spec} makes reference class {name} into {len(value)} "
                    f"classes ({', '.join(value)}); with your own classes a row names one."
                )
        table_name, table = evaluation.compatibility_table(table_spec, reference.names, own)
        order = [value[0] for value in rows.values() if value]
        class_of = {name: value[0] for name, value in table.items() if value}
    else:
        table_name, table = evaluation.compatibility_table(table_spec, reference.names, CLASS_NAMES)
        order = [name for name in table if table[name]]
        class_of = {name: name for name in order}
    names = list(dict.fromkeys(name for name in order if name in class_of.values()))
    if not names:
        raise InputError(
            f"{table_name} makes no class of reference {reference.source} "
            f"({', '.join(reference.names)}) a class of your own, so there is nothing to teach."
        )
    given = {class_of[name]: colour for name, colour in colours.items() if name in class_of}
    palette = iter(OWN_CLASS_PALETTE * (len(names) // len(OWN_CLASS_PALETTE) + 1))
    chosen = [given.get(name) or OWN_CLASS_COLOURS.get(name.lower()) or next(palette)
              for name in names]  # fmt: skip
    from_eurosat = np.zeros((len(CLASS_NAMES), len(names)), np.float32)
    for name, compatible in table.items():
        for other in compatible if not own else []:
            from_eurosat[CLASS_NAMES.index(other), names.index(class_of[name])] = 1.0
    return table_name, OwnClasses(names, [tuple(c) for c in chosen], class_of, from_eurosat)


def table_names_own_classes(table_spec: str) -> list[str]:
    """The classes a table file names that are not EuroSAT's (none for auto)."""
    if table_spec == "auto":
        return []
    rows = evaluation.read_table(table_spec)
    return sorted({name for value in rows.values() for name in value} - set(CLASS_NAMES))


def scene_reference(scene: TeachingScene, path, class_field: str) -> evaluation.Reference:
    """The reference on the scene's grid (07's reading); InputError when it misses it."""
    try:
        return evaluation.read_reference(path, class_field, scene.grid)
    except InputError as error:
        raise InputError(str(error).replace(" map ", " scene ")) from None


def own_class_targets(
    scene: TeachingScene, path, class_field: str, table_spec: str
) -> tuple[evaluation.Reference, str, dict[str, np.ndarray], OwnClasses]:
    """reference_targets for the user's own classes: per taught reference class the
    one-hot mask (float32) of the own class it becomes, and the OwnClasses."""
    reference = scene_reference(scene, path, class_field)
    table_name, own = own_classes(reference, table_spec)
    targets = {}
    for name, own_name in own.class_of.items():
        targets[name] = np.zeros(len(own.names), np.float32)
        targets[name][own.names.index(own_name)] = 1.0
    return reference, table_name, targets, own


def class_pixels(reference: evaluation.Reference, name: str, erode: int) -> np.ndarray:
    """(rows, cols) bool: the pixels of reference class `name`, eroded by `erode`
    pixels (square) against edge noise; its pixels uneroded when erosion leaves none."""
    inside = reference.classes == reference.names.index(name)
    if erode <= 0:
        return inside
    from scipy import ndimage

    eroded = ndimage.binary_erosion(inside, np.ones((3, 3), bool), iterations=erode)
    return eroded if eroded.any() else inside


def sample_centres(
    masks: dict[str, np.ndarray],
    per_class: int,
    minimum: int,
    seed: int,
    where: str = "outside the hold-out box",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per class (rows, cols) of `per_class` centres drawn at random from its mask
    (with repetition only when it has fewer pixels). InputError naming the first
    class with fewer than `minimum` pixels, and its count."""
    random = np.random.default_rng(seed)
    centres = {}
    for name, mask in masks.items():
        pixels = np.flatnonzero(mask)
        if len(pixels) < minimum:
            raise InputError(
                f"reference class {name} has {len(pixels)} usable pixels {where} "
                f"(at least {minimum} needed); draw more, or lower --min-samples."
            )
        chosen = random.choice(pixels, size=per_class, replace=len(pixels) < per_class)
        centres[name] = np.divmod(np.sort(chosen), mask.shape[1])
    return centres
