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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnn_sentinel import evaluation
from cnn_sentinel.errors import InputError
from cnn_sentinel.scene import plan as scene_plan

# Scene rows read at a time when the usable pixels are found.
STRIP_ROWS = 256


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
    try:
        reference = evaluation.read_reference(path, class_field, scene.grid)
    except InputError as error:
        raise InputError(str(error).replace(" map ", " scene ")) from None
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
