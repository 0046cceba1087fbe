"""Clouds in Sentinel-2 L1C scenes: a per-pixel cloud mask with s2cloudless, block by block.

s2cloudless (Sentinel Hub's single-pixel LightGBM detector; its model ships in the
wheel, so it works offline) gives a pixel a cloud probability from ten
top-of-atmosphere reflectances (L1C digital number / 10000). Its mask is that
probability averaged over a disk, above a threshold, then dilated by a disk.

Here the probability is computed once per CELL x CELL pixel cell, on the cell's
mean reflectances (Sentinel Hub runs the same detector on 160 m pixels: clouds
look alike at every scale), spread back over the cell's pixels, and the
averaging and dilation run on the pixels as s2cloudless does them. Cells start
at the scene's first row and column, so a block of rows read with a halo of
whole cells gives exactly the rows of the whole-scene mask, in memory bounded
by the block. s2cloudless is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from collections.abc import Iterator, Sequence

import numpy as np
from osgeo import gdal

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene.blocks import CLOUD_LABEL, CLOUD_NAME, prefetch
from cnn_sentinel.scene.radiometry import EUROSAT_REFLECTANCE_SCALE

gdal.UseExceptions()

# s2cloudless' ten input bands, in the order its 10-band model takes them.
CLOUD_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")
# Cloud probability above which a pixel is cloud. s2cloudless' own default is 0.4;
# on the real February T33UUU scene 0.4 also marks 26 % of the clear winter fields
# and forest, while 0.65 (Earth Engine's s2cloudless example, MAX_CLOUD_PROBABILITY
# = 65) marks the cloud streaks and little else (8 % of the scene).
CLOUD_THRESHOLD = 0.65
# Radius in pixels of the disk the probability is averaged over, and of the disk
# that dilates the mask (s2cloudless' published examples: average_over=4, dilation_size=2).
CLOUD_AVERAGE_OVER = 4
CLOUD_DILATION = 2
# Side in pixels of the cells that get one probability each (8: 80 m at 10 m, where
# the coarsest bands s2cloudless reads have 60 m pixels; 64x fewer LightGBM
# evaluations than every pixel; the mask agrees with the every-pixel mask on 99.1 %
# of the real T33UUU scene, 99.6 % at 4, which costs 4x more).
CLOUD_CELL = 8
# Rows of the cloud mask 06 computes at a time, ahead of the classification.
CLOUD_CHUNK_ROWS = 256
# 06's --cloud-mask: auto (on when the scene has the bands), on, off.
CLOUD_MASK_MODES = ("auto", "on", "off")


def cloud_detector_installed() -> bool:
    """Whether the s2cloudless package can be imported (without importing it)."""
    return importlib.util.find_spec("s2cloudless") is not None


def cloud_bands_available(band_names: Sequence[str]) -> bool:
    """Whether a scene with these band names ("B01", "B8A", ...) has all of CLOUD_BANDS."""
    return all(name in band_names for name in CLOUD_BANDS)


def cloud_band_indices(band_names: Sequence[str], scene_label: str = "the scene") -> list[int]:
    """0-based indices of CLOUD_BANDS within `band_names`, in CLOUD_BANDS order."""
    missing = [name for name in CLOUD_BANDS if name not in band_names]
    if missing:
        raise InputError(
            f"{scene_label} has no band {', '.join(missing)}, which the cloud mask needs "
            f"(it has {', '.join(band_names)})."
        )
    return [list(band_names).index(name) for name in CLOUD_BANDS]


@dataclasses.dataclass(frozen=True)
class CloudSettings:
    """How the mask is made: probability threshold, cell side in pixels, radii in
    pixels of the averaging and dilation disks, and the scene's values per unit of
    reflectance (06's REFLECTANCE_SCALE: 10000 for L1C products)."""

    threshold: float = CLOUD_THRESHOLD
    cell: int = CLOUD_CELL
    average_over: int = CLOUD_AVERAGE_OVER
    dilation_size: int = CLOUD_DILATION
    reflectance_scale: float = EUROSAT_REFLECTANCE_SCALE

    @property
    def halo(self) -> int:
        """Pixels beyond a block whose probabilities its mask depends on (averaging, then
        dilation); `scene_cloud_mask` widens that to whole cells."""
        return self.average_over + self.dilation_size


@functools.lru_cache(maxsize=4)
def _detector(average_over: int, dilation_size: int):
    """An s2cloudless detector with these post-processing radii (its model loads once)."""
    if not cloud_detector_installed():
        raise InputError(
            "the cloud mask needs the s2cloudless package: pip install -r requirements.txt."
        )
    from s2cloudless import S2PixelCloudDetector

    return S2PixelCloudDetector(
        all_bands=False, average_over=average_over, dilation_size=dilation_size
    )


def load_cloud_model() -> None:
    """Import s2cloudless and load its LightGBM model now (a few seconds, once)."""
    _detector(0, 0).classifier  # noqa: B018 - the property loads the model


def cell_means(values: np.ndarray, cell: int) -> np.ndarray:
    """Mean of every cell x cell cell of (rows, cols, ...) values, as float64.

    Returns (ceil(rows / cell), ceil(cols / cell), ...); cells cut by the last
    row or column average the pixels they have.
    """
    rows, cols = values.shape[:2]
    row_starts, col_starts = np.arange(0, rows, cell), np.arange(0, cols, cell)
    sums = np.add.reduceat(values, row_starts, axis=0, dtype=np.float64)
    sums = np.add.reduceat(sums, col_starts, axis=1)
    counts = np.outer(np.diff(np.append(row_starts, rows)), np.diff(np.append(col_starts, cols)))
    return sums / counts.reshape(counts.shape + (1,) * (values.ndim - 2))


def cell_probability(reflectance_cells: np.ndarray) -> np.ndarray:
    """s2cloudless cloud probability of (rows, cols, 10) reflectances in CLOUD_BANDS order.

    Returns (rows, cols) float32 in 0..1; cells with a missing (NaN) band get 0.
    """
    reflectance = np.ascontiguousarray(reflectance_cells, dtype=np.float32)
    probability = _detector(0, 0).get_cloud_probability_maps(reflectance[None])[0]
    probability = probability.astype(np.float32)
    probability[~np.isfinite(reflectance).all(axis=-1)] = 0.0
    return probability


def mask_from_cell_probability(
    probability: np.ndarray, shape: tuple[int, int], cloud: CloudSettings
) -> np.ndarray:
    """Spread cell probabilities over their pixels, then average, threshold and dilate.

    probability (cell rows, cell cols) -> (rows, cols) bool mask of `shape`.
    """
    cell = cloud.cell
    pixels = np.repeat(np.repeat(probability, cell, axis=0), cell, axis=1)
    pixels = np.ascontiguousarray(pixels[: shape[0], : shape[1]])
    detector = _detector(cloud.average_over, cloud.dilation_size)
    return detector.get_mask_from_prob(pixels[None], cloud.threshold)[0].astype(bool)


def cell_reflectance(means: np.ndarray, scale: float = EUROSAT_REFLECTANCE_SCALE) -> np.ndarray:
    """Cell means of digital numbers -> top-of-atmosphere reflectance, as s2cloudless takes."""
    return means / scale


def cloud_mask_block(
    bands: np.ndarray, band_names: Sequence[str], cloud: CloudSettings = CloudSettings()
) -> np.ndarray:
    """Cloud mask of a whole array of L1C digital numbers: True where cloudy.

    bands (rows, cols, bands) any numeric dtype, named by `band_names` (they
    must include CLOUD_BANDS); pixel (0, 0) starts a cell. Returns (rows, cols)
    bool. The edges of the array are treated as the edges of the scene; for a
    block of a larger scene use `scene_cloud_mask`, which adds the halo.
    """
    means = cell_means(bands[..., cloud_band_indices(band_names)], cloud.cell)
    probability = cell_probability(cell_reflectance(means, cloud.reflectance_scale))
    return mask_from_cell_probability(probability, bands.shape[:2], cloud)


def scene_cloud_mask(
    dataset: gdal.Dataset,
    band_indices: Sequence[int],
    first_row: int,
    last_row: int,
    cloud: CloudSettings = CloudSettings(),
) -> np.ndarray:
    """Rows first_row..last_row-1 of the whole-scene cloud mask, read with their halo.

    band_indices: 0-based scene bands in CLOUD_BANDS order (`cloud_band_indices`).
    Reads those bands one at a time for the rows plus the halo on each side,
    widened to whole cells and clipped to the scene, and reduces each to cell
    means at once, so memory holds one band of the rows read. Returns
    (last_row - first_row, scene cols) bool, equal to those rows of
    `cloud_mask_block` over the whole scene.
    """
    rows, cols, cell = dataset.RasterYSize, dataset.RasterXSize, cloud.cell
    top = max(0, (first_row - cloud.halo) // cell * cell)
    bottom = min(rows, math.ceil((last_row + cloud.halo) / cell) * cell)
    means = np.empty((math.ceil((bottom - top) / cell), math.ceil(cols / cell), len(band_indices)))
    for position, index in enumerate(band_indices):
        values = dataset.GetRasterBand(index + 1).ReadAsArray(0, top, cols, bottom - top)
        means[..., position] = cell_means(values, cell)
    probability = cell_probability(cell_reflectance(means, cloud.reflectance_scale))
    mask = mask_from_cell_probability(probability, (bottom - top, cols), cloud)
    return mask[first_row - top : last_row - top]


def cloud_mask_choice(
    mode: str,
    band_names: Sequence[str],
    threshold: float,
    scene_label: str,
    names_assumed: bool = False,
) -> tuple[bool, str]:
    """Whether 06 masks clouds (mode "auto", "on" or "off"), and the banner's words for it.

    auto: on when the scene has CLOUD_BANDS and s2cloudless is installed. on:
    InputError when it cannot be (missing bands or package). When on, the
    detector's model is loaded here, with 06's other set-up, not in the first block.
    names_assumed: the scene's bands have no names (band_names are assumed from their
    count), which the words then say, since the mask reads its bands by those names.
    """
    masking, words = _cloud_mask_choice(mode, band_names, threshold, scene_label)
    if masking and names_assumed:
        words += "; the scene's bands are unnamed, so the mask takes them in EuroSAT's order"
    return masking, words


def _cloud_mask_choice(
    mode: str, band_names: Sequence[str], threshold: float, scene_label: str
) -> tuple[bool, str]:
    if mode not in CLOUD_MASK_MODES:
        raise InputError(f"cloud mask must be one of {', '.join(CLOUD_MASK_MODES)}, not {mode}.")
    if not 0.0 < threshold < 1.0:
        raise InputError(f"cloud threshold must be between 0 and 1, not {threshold}.")
    if mode == "off":
        return False, "cloud mask off"
    if mode == "on":
        cloud_band_indices(band_names, f"scene {scene_label}")
        load_cloud_model()  # InputError when s2cloudless is missing
        return True, f"cloud mask on (s2cloudless, threshold {threshold})"
    if not cloud_bands_available(band_names):
        return False, "cloud mask off (auto: the scene lacks the L1C bands s2cloudless needs)"
    if not cloud_detector_installed():
        return False, "cloud mask off (auto: s2cloudless is not installed)"
    load_cloud_model()
    return True, f"cloud mask on (auto: s2cloudless, threshold {threshold})"


def category_names(class_names: Sequence[str], clouds: bool) -> list[str]:
    """Category names of a label raster: the classes, and CLOUD_NAME at CLOUD_LABEL."""
    if not clouds:
        return list(class_names)
    return [*class_names, *[""] * (CLOUD_LABEL - len(class_names)), CLOUD_NAME]


class CloudMaskStep:
    """06's block step: marks the output pixels of each predicted block that are under
    cloud (`blocks.PredictedBlock.cloud`), from the whole-scene mask.

    The mask is computed in chunks of `chunk_rows` rows, top to bottom, in a
    background thread up to `depth` chunks ahead of the blocks asking for them,
    so it overlaps with inference; chunks are dropped once the blocks are past
    them. Any chunking gives the same rows (`scene_cloud_mask` adds the halo), so
    first_row, last_row limit it to a band of rows with the whole scene's mask there.
    """

    def __init__(
        self,
        dataset: gdal.Dataset,
        band_indices: Sequence[int],
        cloud: CloudSettings = CloudSettings(),
        chunk_rows: int = CLOUD_CHUNK_ROWS,
        depth: int = 2,
        first_row: int = 0,
        last_row: int | None = None,
    ):
        self.dataset, self.band_indices, self.cloud = dataset, list(band_indices), cloud
        self.chunk_rows, self.depth = chunk_rows, depth
        self.first_row = first_row
        self.last_row = dataset.RasterYSize if last_row is None else last_row
        self.chunks: Iterator | None = None
        self.ready: list[tuple[int, np.ndarray]] = []  # (first row, mask rows), in order

    def chunk_masks(self) -> Iterator[tuple[int, np.ndarray]]:
        for top in range(self.first_row, self.last_row, self.chunk_rows):
            bottom = min(self.last_row, top + self.chunk_rows)
            mask = scene_cloud_mask(self.dataset, self.band_indices, top, bottom, self.cloud)
            yield top, mask

    def rows(self, first_row: int, last_row: int) -> np.ndarray:
        """Rows first_row..last_row-1 of the scene's cloud mask; rows are asked for in order."""
        if self.chunks is None:
            self.chunks = prefetch(self.chunk_masks(), self.depth)
        while not self.ready or self.ready[-1][0] + len(self.ready[-1][1]) < last_row:
            self.ready.append(next(self.chunks))
        self.ready = [(top, mask) for top, mask in self.ready if top + len(mask) > first_row]
        top = self.ready[0][0]
        return np.concatenate([mask for _, mask in self.ready])[first_row - top : last_row - top]

    def __call__(self, block):
        return dataclasses.replace(block, cloud=self.rows(block.first_row, block.source.last_row))
