"""Write a EuroSAT-like demo dataset and scene that we make ourselves.

The demo data stands in for EuroSAT in the tests and in `make demo`: the same
folder layout (`<Class>/<Class>_<n>.jpg|tif`), 64x64 patches, 13-band uint16
GeoTIFFs in EuroSAT's band order, and RGB JPEGs made from the MS bands exactly
as EuroSAT's were. Every class has its own plausible Sentinel-2 L1C spectra and
texture (fields in stripes, orchard rows, a road, a river, roofs, ...) so that a
small network learns it. Patches and scenes are drawn by the same texture
generator, so a scene region of a class looks like that class's patches.
Everything is seeded: the same seed gives the same bytes.

About 620 lines: half of them are the ten class textures (one small function per
class, dispatched by `class_field`); they change together with the spectra table
and the scene layout, so they stay in one file.

Usage: python demo_data.py --target demo [--images-per-class N] [--scene-size N] [--seed S]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

import numpy as np
from osgeo import gdal, osr

from cnn_sentinel.errors import InputError
from cnn_sentinel.outputs import atomic_output, refuse_existing
from cnn_sentinel.scene.blocks import CLASS_COLOURS
from cnn_sentinel.settings import parse_settings, run_script
from image_functions import (
    CLASS_NAMES,
    IMAGE_SIZE,
    MS_BAND_NAMES,
    RGB_BAND_NAMES,
    eurosat_rgb_from_l1c,
)

gdal.UseExceptions()

TARGET = "demo"  # folder that receives eurosat_rgb/, eurosat_ms/ and the scenes
IMAGES_PER_CLASS = 100  # patches written per class and kind
SCENE_SIZE = 384  # rows and columns of the demo scenes
SEED = 0  # one seed for everything; the same seed writes the same bytes
OVERWRITE = False  # replace existing outputs

# Fixed facts of the demo data (Final, so they are not command-line flags).
# Coordinate system of everything written: WGS 84 / UTM zone 33N, 10 m pixels.
EPSG: Final[int] = 32633
PIXEL_SIZE_M: Final[float] = 10.0
# Upper-left corner of the demo scene (a Sentinel-2 tile corner in zone 33N).
SCENE_ORIGIN: Final[tuple[float, float]] = (399960.0, 5900040.0)
# EuroSAT's JPEGs differ from their MS twins by about 1.5 levels; so do ours at this quality.
JPEG_QUALITY: Final[int] = 95
# Scene regions are about this many pixels across (at least ten, one per class).
SCENE_REGION_SIZE: Final[int] = 192

# Sentinel-2 bands recorded at 20 m and 60 m; EuroSAT resampled them to 10 m,
# so they are smoother than the 10 m bands. Box-filter widths in 10 m pixels.
_BAND_BLUR: dict[str, int] = {
    **dict.fromkeys(("B05", "B06", "B07", "B8A", "B11", "B12"), 3),
    **dict.fromkeys(("B01", "B09", "B10"), 7),
}

# Surface materials as L1C digital numbers (reflectance x 10000 plus atmosphere),
# one value per band in image_functions.MS_BAND_NAMES order:
#          B01   B02   B03   B04   B05   B06   B07   B08   B09  B10   B11   B12   B8A
# Levels follow the per-class means of real EuroSAT MS patches: water dark from
# the red edge on, vegetation bright in B08/B8A with a steep red edge, soil and
# roofs bright in red and SWIR, B10 (cirrus) about 10-20 everywhere.
_MATERIALS: dict[str, tuple[int, ...]] = {
    "sea": (1190, 900, 720, 440, 460, 320, 300, 250, 60, 8, 50, 35, 230),
    "river": (1240, 990, 880, 660, 650, 500, 470, 420, 160, 9, 260, 160, 400),
    "canopy": (1140, 850, 730, 440, 800, 2380, 3050, 3000, 880, 9, 1420, 570, 3400),
    "canopy_shadow": (1100, 780, 630, 360, 640, 1750, 2200, 2150, 740, 9, 1100, 450, 2450),
    "grass": (1210, 940, 910, 560, 1150, 2900, 3550, 3500, 1120, 12, 1950, 880, 3950),
    "green_crop": (1300, 1020, 1000, 700, 1400, 3300, 4100, 4000, 1050, 13, 2100, 1050, 4450),
    "soil": (1500, 1420, 1500, 1850, 1920, 2200, 2420, 2350, 850, 15, 3300, 2550, 2600),
    "dry_vegetation": (1360, 1200, 1200, 1300, 1560, 2050, 2280, 2270, 1080, 18, 2850, 1950, 2520),
    "tile_roof": (1550, 1350, 1250, 1600, 1650, 1800, 1900, 1850, 650, 13, 2300, 1900, 2000),
    "grey_roof": (1700, 1620, 1560, 1600, 1650, 1800, 1920, 1850, 620, 13, 2250, 1850, 2050),
    "bright_roof": (2100, 2150, 2050, 2100, 2100, 2250, 2350, 2250, 650, 12, 2500, 2100, 2450),
    "asphalt": (1400, 1200, 1100, 1100, 1150, 1300, 1400, 1350, 500, 12, 1650, 1350, 1450),
    "concrete": (1650, 1550, 1500, 1550, 1600, 1750, 1850, 1800, 600, 13, 2200, 1800, 1950),
}

Field = np.ndarray  # (bands, rows, cols) float32 digital numbers


def _spectrum(name: str) -> np.ndarray:
    """A material's spectrum as float32 of shape (bands, 1, 1), ready to broadcast."""
    return np.asarray(_MATERIALS[name], dtype=np.float32)[:, None, None]


def _mix(weights: dict[str, np.ndarray | float]) -> Field:
    """Blend material spectra with per-pixel weights (rows, cols) that sum to one."""
    return sum(_spectrum(name) * np.asarray(weight, np.float32) for name, weight in weights.items())


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    """Smooth random field of shape (rows, cols), float32, about N(0, 0.5) per pixel.

    Value noise: standard-normal values on a grid `scale` pixels apart, at a
    random offset, interpolated with a smoothstep.
    """
    grid = rng.standard_normal((int(rows / scale) + 3, int(cols / scale) + 3)).astype(np.float32)
    offset_y, offset_x = rng.random(2)
    y = np.arange(rows, dtype=np.float32) / scale + offset_y
    x = np.arange(cols, dtype=np.float32) / scale + offset_x
    y0, x0 = y.astype(np.intp), x.astype(np.intp)
    fy, fx = y - y0, x - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fractal_noise(
    rng: np.random.Generator, rows: int, cols: int, scale: float, octaves: int = 3
) -> np.ndarray:
    """Sum of `_smooth_noise` octaves from `scale` down, halving scale and weight; (rows, cols)."""
    total = np.zeros((rows, cols), np.float32)
    for octave in range(octaves):
        total += _smooth_noise(rng, rows, cols, max(scale / 2**octave, 1.0)) / 2**octave
    return total


def _rotated_coordinates(
    rng: np.random.Generator, rows: int, cols: int, angle: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u along, v across a random direction) from the field centre.

    Returns two float32 arrays of shape (rows, cols) in pixels.
    """
    angle = rng.uniform(0, np.pi) if angle is None else angle
    y = np.arange(rows, dtype=np.float32)[:, None] - (rows - 1) / 2
    x = np.arange(cols, dtype=np.float32)[None, :] - (cols - 1) / 2
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _cell_lookup(rng: np.random.Generator, *cell_indices: np.ndarray) -> np.ndarray:
    """A uniform random value in [0, 1) per cell: same cell index -> same value."""
    shifted = [index - index.min() for index in cell_indices]
    table = rng.random(tuple(int(index.max()) + 1 for index in shifted)).astype(np.float32)
    return table[tuple(shifted)]


def _crop_fields(rng: np.random.Generator, rows: int, cols: int, greenness: float) -> Field:
    """Rectangular fields in parallel strips, each soil, dry or green crop; (bands, rows, cols)."""
    u, v = _rotated_coordinates(rng, rows, cols)
    strip = np.floor(u / rng.uniform(7, 16) + rng.random()).astype(np.intp)
    field_length = rng.uniform(20, 60)
    # Field boundaries along a strip are staggered from strip to strip.
    stagger = _cell_lookup(rng, strip) * field_length
    field = np.floor((v + stagger) / field_length).astype(np.intp)
    green = np.clip(_cell_lookup(rng, strip, field) * 1.4 - 0.7 + greenness, 0, 1)
    dry = (1 - green) * _cell_lookup(rng, strip, field) * 0.8
    brightness = 0.9 + 0.2 * _cell_lookup(rng, strip, field)
    # Sowing rows inside a field, 2-3 pixels apart.
    rows_texture = 1 + 0.04 * np.sin(u * rng.uniform(2.1, 3.1)) * (1 - green)
    mixed = _mix({"green_crop": green, "dry_vegetation": dry, "soil": 1 - green - dry})
    return mixed * (brightness * rows_texture)


def _annual_crop(rng: np.random.Generator, rows: int, cols: int) -> Field:
    return _crop_fields(rng, rows, cols, greenness=rng.uniform(-0.1, 0.5))


def _forest(rng: np.random.Generator, rows: int, cols: int) -> Field:
    crowns = _fractal_noise(rng, rows, cols, rng.uniform(3, 6), octaves=2)
    stands = _smooth_noise(rng, rows, cols, 24)
    shadow = np.clip(0.45 + 0.35 * crowns + 0.25 * stands, 0, 1)
    return _mix({"canopy": 1 - shadow, "canopy_shadow": shadow})


def _herbaceous_vegetation(rng: np.random.Generator, rows: int, cols: int) -> Field:
    mottle = _fractal_noise(rng, rows, cols, rng.uniform(4, 10), octaves=3)
    shrubs = np.clip(_fractal_noise(rng, rows, cols, 5, octaves=2) - 0.3, 0, 1)
    dry = np.clip(0.6 + 0.6 * mottle, 0, 1) * (1 - shrubs)
    soil = np.clip(_smooth_noise(rng, rows, cols, 12) * 0.3, 0, 0.25) * (1 - shrubs - dry)
    grass = 1 - shrubs - dry - soil
    return _mix({"dry_vegetation": dry, "grass": grass, "canopy": shrubs, "soil": soil})


# Roads and rivers repeat every LINE_SPACING pixels across their direction, so a
# 64x64 window anywhere in a large Highway or River region of the scene sees one,
# as every EuroSAT patch of these classes does; a patch itself holds just one.
LINE_SPACING: Final[int] = 72


def _distance_to_repeated_line(offset: np.ndarray) -> np.ndarray:
    """Distance in pixels to the nearest of parallel lines at offset 0, ±LINE_SPACING, ..."""
    return np.abs((offset + LINE_SPACING / 2) % LINE_SPACING - LINE_SPACING / 2)


def _highway(rng: np.random.Generator, rows: int, cols: int) -> Field:
    background = 0.5 * _crop_fields(rng, rows, cols, greenness=0.3) + 0.5 * _pasture(
        rng, rows, cols
    )
    u, v = _rotated_coordinates(rng, rows, cols)
    # A gentle curve through the middle: two carriageways and a green median.
    curve = v - rng.uniform(-10, 10) - u * u / rng.uniform(400, 4000) * rng.choice((-1, 1))
    width = rng.uniform(2.0, 3.5)
    distance = _distance_to_repeated_line(curve)
    road = np.clip(width - distance + 0.5, 0, 1)
    verge = np.clip(width + 2.5 - distance, 0, 1) * (1 - road)
    median = np.clip(0.8 - distance, 0, 1) * rng.uniform(0.3, 0.8)
    surface = rng.choice(("asphalt", "concrete"))
    road_field = _mix({surface: road - median * road, "grass": median * road})
    return (
        background * (1 - road - verge)[None]
        + road_field
        + _spectrum("concrete") * (verge * 0.5)
        + _spectrum("dry_vegetation") * (verge * 0.5)
    )


def _industrial(rng: np.random.Generator, rows: int, cols: int) -> Field:
    u, v = _rotated_coordinates(rng, rows, cols, angle=rng.uniform(0, np.pi / 2))
    block_rows, block_cols = rng.uniform(12, 26, 2)
    iy = np.floor(u / block_rows + rng.random()).astype(np.intp)
    ix = np.floor(v / block_cols + rng.random()).astype(np.intp)
    local_y = u / block_rows + 0.5 - np.floor(u / block_rows + 0.5)
    local_x = v / block_cols + 0.5 - np.floor(v / block_cols + 0.5)
    hall_height = 0.5 + 0.45 * _cell_lookup(rng, iy, ix)
    hall_width = 0.5 + 0.45 * _cell_lookup(rng, iy, ix)
    hall = (local_y < hall_height) & (local_x < hall_width) & (_cell_lookup(rng, iy, ix) < 0.85)
    roof_kind = _cell_lookup(rng, iy, ix)
    bright = hall & (roof_kind < 0.45)
    grey = hall & (roof_kind >= 0.45)
    vegetation = np.clip(_smooth_noise(rng, rows, cols, 10) - 0.4, 0, 1) * ~hall
    yard = (1 - vegetation) * ~hall
    return _mix(
        {
            "bright_roof": bright * 1.0,
            "grey_roof": grey * 1.0,
            "concrete": yard * 0.5,
            "asphalt": yard * 0.5,
            "grass": vegetation,
        }
    )


def _pasture(rng: np.random.Generator, rows: int, cols: int) -> Field:
    variation = _fractal_noise(rng, rows, cols, rng.uniform(8, 24), octaves=3)
    dry = np.clip(0.2 + 0.5 * variation, 0, 1)
    return _mix({"grass": 1 - dry, "dry_vegetation": dry}) * (1 + 0.03 * variation)


def _permanent_crop(rng: np.random.Generator, rows: int, cols: int) -> Field:
    u, v = _rotated_coordinates(rng, rows, cols)
    row_spacing, tree_spacing = rng.uniform(3.5, 6), rng.uniform(2.5, 4.5)
    across = u / row_spacing - np.floor(u / row_spacing) - 0.5
    along = v / tree_spacing - np.floor(v / tree_spacing) - 0.5
    crown_size = rng.uniform(0.04, 0.09)
    crowns = np.exp(-(across**2 + along**2) / crown_size)
    ground_dry = np.clip(0.8 + 0.4 * _smooth_noise(rng, rows, cols, 16), 0, 1)
    ground = _mix(
        {"soil": ground_dry * 0.6, "dry_vegetation": ground_dry * 0.4, "grass": 1 - ground_dry}
    )
    return ground * (1 - crowns)[None] + _spectrum("canopy") * crowns


def _residential(rng: np.random.Generator, rows: int, cols: int) -> Field:
    u, v = _rotated_coordinates(rng, rows, cols, angle=rng.uniform(0, np.pi / 2))
    plot_rows, plot_cols = rng.uniform(6, 9, 2)
    iy = np.floor(u / plot_rows).astype(np.intp)
    ix = np.floor(v / plot_cols).astype(np.intp)
    local_y = u / plot_rows - iy
    local_x = v / plot_cols - ix
    house = (np.abs(local_y - 0.5) < 0.36) & (np.abs(local_x - 0.5) < 0.36)
    house &= _cell_lookup(rng, iy, ix) < 0.9
    street_every = rng.integers(3, 6)
    street = (iy % street_every == 0) & (local_y < 0.35)
    house &= ~street
    roof_kind = _cell_lookup(rng, iy, ix)
    garden = ~house & ~street
    trees = np.clip(_fractal_noise(rng, rows, cols, 4, octaves=2) - 0.2, 0, 1) * garden
    return _mix(
        {
            "tile_roof": house & (roof_kind < 0.55),
            "grey_roof": house & (roof_kind >= 0.55),
            "asphalt": street * 1.0,
            "grass": garden * 1.0 - trees,
            "canopy": trees,
        }
    )


def _river(rng: np.random.Generator, rows: int, cols: int) -> Field:
    background = (
        0.4 * _pasture(rng, rows, cols)
        + 0.3 * _herbaceous_vegetation(rng, rows, cols)
        + 0.3 * _forest(rng, rows, cols)
    )
    u, v = _rotated_coordinates(rng, rows, cols)
    wavelength = rng.uniform(40, 120)
    meander = rng.uniform(4, 14) * np.sin(2 * np.pi * u / wavelength + rng.uniform(0, 2 * np.pi))
    distance = _distance_to_repeated_line(v - rng.uniform(-8, 8) - meander)
    half_width = rng.uniform(6, 13)
    water = np.clip(half_width - distance + 0.5, 0, 1)
    bank_trees = np.clip(half_width + 3 - distance, 0, 1) * (1 - water)
    bank_trees *= np.clip(0.6 + _smooth_noise(rng, rows, cols, 6), 0, 1)
    land = 1 - water - bank_trees
    return background * land + _mix(
        {"river": water, "canopy": bank_trees * 0.6, "canopy_shadow": bank_trees * 0.4}
    )


def _sea_lake(rng: np.random.Generator, rows: int, cols: int) -> Field:
    turbidity = np.clip(0.1 + 0.25 * _smooth_noise(rng, rows, cols, rng.uniform(30, 80)), 0, 1)
    # Waves, floating plants and shallows: a trace of vegetation in each pixel.
    vegetation = 0.02 * np.clip(1 + _fractal_noise(rng, rows, cols, 3, octaves=2), 0, None)
    return _mix({"sea": 1 - turbidity, "river": turbidity}) + vegetation * (
        _spectrum("grass") - _spectrum("sea")
    )


_CLASS_TEXTURES: dict[str, Callable[[np.random.Generator, int, int], Field]] = {
    "AnnualCrop": _annual_crop,
    "Forest": _forest,
    "HerbaceousVegetation": _herbaceous_vegetation,
    "Highway": _highway,
    "Industrial": _industrial,
    "Pasture": _pasture,
    "PermanentCrop": _permanent_crop,
    "Residential": _residential,
    "River": _river,
    "SeaLake": _sea_lake,
}


def class_field(class_index: int, rng: np.random.Generator, rows: int, cols: int) -> Field:
    """Surface of class `class_index` (position in CLASS_NAMES), any size.

    Returns float32 L1C digital numbers of shape (13, rows, cols) in
    MS_BAND_NAMES order, before sensor blur and noise. The same function draws
    the demo patches and the regions of the demo scene. A random gain (sun,
    atmosphere) varies the overall level from field to field.
    """
    texture = _CLASS_TEXTURES[CLASS_NAMES[class_index]]
    field = texture(rng, rows, cols).astype(np.float32)
    field *= np.float32(rng.normal(1.0, 0.06))
    # Water vapour (B09) varies more between acquisitions than the surface does.
    field[MS_BAND_NAMES.index("B09")] *= np.float32(rng.uniform(0.75, 1.25))
    return field


def _box_blur(bands: np.ndarray, width: int) -> np.ndarray:
    """Mean over a `width` x `width` window (edges repeated) of (..., rows, cols) float32."""
    before, after = width // 2, width - 1 - width // 2
    pad = [(0, 0)] * (bands.ndim - 2) + [(before + 1, after), (before + 1, after)]
    summed = np.pad(bands, pad, mode="edge")
    summed[..., 0, :] = 0
    summed[..., :, 0] = 0
    summed = summed.cumsum(axis=-2, dtype=np.float64).cumsum(axis=-1)
    rows, cols = bands.shape[-2:]
    window = (
        summed[..., width:, width:]
        - summed[..., :rows, width:]
        - summed[..., width:, :cols]
        + summed[..., :rows, :cols]
    )
    return (window / (width * width)).astype(np.float32)


def sensor_image(field: Field, rng: np.random.Generator) -> np.ndarray:
    """What Sentinel-2 L1C records of a surface: coarse bands blurred, noise, uint16.

    field: float32 (13, rows, cols) digital numbers; returns uint16 of the same shape.
    """
    recorded = field.copy()
    for width in sorted(set(_BAND_BLUR.values())):
        indices = [MS_BAND_NAMES.index(name) for name, w in _BAND_BLUR.items() if w == width]
        recorded[indices] = _box_blur(field[indices], width)
    noise = rng.standard_normal(field.shape, dtype=np.float32)
    recorded += noise * (0.005 * recorded + 0.5)
    return np.clip(np.round(recorded), 1, 65535).astype(np.uint16)


def demo_patch(class_index: int, number: int, seed: int = 0) -> np.ndarray:
    """Demo patch `<Class>_<number>` as uint16 of shape (13, 64, 64), MS_BAND_NAMES order.

    Depends only on (class_index, number, seed), so RGB and MS twins agree.
    """
    rng = np.random.default_rng([seed, 0, class_index, number])
    return sensor_image(class_field(class_index, rng, IMAGE_SIZE, IMAGE_SIZE), rng)


def rgb_from_ms(bands: np.ndarray) -> np.ndarray:
    """EuroSAT RGB of an MS image: (13, rows, cols) uint16 -> (3, rows, cols) uint8."""
    return eurosat_rgb_from_l1c(bands[[MS_BAND_NAMES.index(name) for name in RGB_BAND_NAMES]])


def _utm_wkt() -> str:
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(EPSG)
    return reference.ExportToWkt()


def _write_geotiff(
    path: Path,
    bands: np.ndarray,
    band_names: tuple[str, ...],
    origin: tuple[float, float],
    options: list[str],
    class_names: tuple[str, ...] = (),
) -> None:
    """Write (bands, rows, cols) uint8/uint16 as a GeoTIFF in EPSG:32633 with 10 m pixels.

    With `class_names`, the single band is a label raster: colour table and category names.
    """
    data_type = gdal.GDT_Byte if bands.dtype == np.uint8 else gdal.GDT_UInt16
    count, rows, cols = bands.shape
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), cols, rows, count, data_type, options=options
    )
    dataset.SetGeoTransform((origin[0], PIXEL_SIZE_M, 0.0, origin[1], 0.0, -PIXEL_SIZE_M))
    dataset.SetProjection(_utm_wkt())
    for index, name in enumerate(band_names):
        band = dataset.GetRasterBand(index + 1)
        band.SetDescription(name)
        band.WriteArray(bands[index])
    if class_names:
        colours = gdal.ColorTable()
        for index, name in enumerate(class_names):
            colours.SetColorEntry(index, (*CLASS_COLOURS[name], 255))
        band = dataset.GetRasterBand(1)
        band.SetRasterColorTable(colours)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        # GeoTIFF keeps category names in a side file, <name>.aux.xml.
        band.SetCategoryNames(list(class_names))
    band = dataset = None


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Write (3, rows, cols) uint8 as a JPEG, full-resolution colour (no 4:2:0 subsampling)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))).save(
        path, format="JPEG", quality=JPEG_QUALITY, subsampling=0
    )


def _check_kind(kind: str) -> None:
    if kind not in ("rgb", "ms"):
        raise InputError(f"demo data kind must be 'rgb' or 'ms', not {kind!r}.")


def write_demo_datasets(
    targets: dict[str, str | Path],
    images_per_class: int = 40,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write demo datasets of several kinds ({"rgb": folder, "ms": folder}) in one pass.

    Each patch is drawn once and written as every kind asked for; see
    `write_demo_dataset`. Returns the target folders by kind.
    """
    for kind in targets:
        _check_kind(kind)
    if images_per_class < 1:
        raise InputError(f"images per class must be at least 1, not {images_per_class}.")
    with contextlib.ExitStack() as stack:
        folders = {
            kind: stack.enter_context(atomic_output(target, overwrite))
            for kind, target in targets.items()
        }
        for class_index, class_name in enumerate(CLASS_NAMES):
            for folder in folders.values():
                (folder / class_name).mkdir(parents=True)
            for number in range(1, images_per_class + 1):
                patch = demo_patch(class_index, number, seed)
                name = f"{class_name}/{class_name}_{number}"
                if "ms" in folders:
                    rng = np.random.default_rng([seed, 2, class_index, number])
                    origin = (
                        300000.0 + PIXEL_SIZE_M * rng.integers(0, 40000),
                        5000000.0 + PIXEL_SIZE_M * rng.integers(0, 100000),
                    )
                    path = folders["ms"] / f"{name}.tif"
                    _write_geotiff(path, patch, MS_BAND_NAMES, origin, ["INTERLEAVE=PIXEL"])
                if "rgb" in folders:
                    _write_jpeg(folders["rgb"] / f"{name}.jpg", rgb_from_ms(patch))
    return {kind: Path(target) for kind, target in targets.items()}


def write_demo_dataset(
    target: str | Path,
    kind: str = "rgb",
    images_per_class: int = 40,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a EuroSAT-like dataset: `target/<Class>/<Class>_<n>.jpg|tif`, n = 1..N.

    kind "ms": 64x64 13-band uint16 GeoTIFFs (MS_BAND_NAMES order, band
    descriptions set, EPSG:32633, 10 m pixels, a different place per patch).
    kind "rgb": 64x64 RGB JPEGs made from the very same patches as EuroSAT made
    its JPEGs (B04, B03, B02 clipped to 0..2750, scaled to 1..255). The folder
    is written under a temporary name and renamed when complete; an existing
    `target` is an InputError unless `overwrite`. Returns `target`.
    """
    return write_demo_datasets({kind: target}, images_per_class, seed, overwrite)[kind]


def scene_layout(rows: int, cols: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Regions of a demo scene: (region index per pixel, class index per region).

    A grid of regions about SCENE_REGION_SIZE pixels across (at least ten, so
    every class appears) with wavy borders; the classes are shuffled over the
    regions. Returns intp (rows, cols) region indices and uint8 (regions,) classes.
    """
    rng = np.random.default_rng([seed, 1, rows, cols])
    grid_rows, grid_cols = max(1, rows // SCENE_REGION_SIZE), max(1, cols // SCENE_REGION_SIZE)
    while grid_rows * grid_cols < len(CLASS_NAMES):
        if rows / (grid_rows + 1) >= cols / (grid_cols + 1):
            grid_rows += 1
        else:
            grid_cols += 1
    region_classes = rng.permutation(np.resize(np.arange(len(CLASS_NAMES)), grid_rows * grid_cols))
    amplitude = min(rows / grid_rows, cols / grid_cols) / 8
    warp_y = amplitude * np.tanh(_smooth_noise(rng, rows, cols, 4 * amplitude))
    warp_x = amplitude * np.tanh(_smooth_noise(rng, rows, cols, 4 * amplitude))
    y = np.arange(rows)[:, None] + warp_y
    x = np.arange(cols)[None, :] + warp_x
    cell_y = np.clip((y * grid_rows / rows).astype(np.intp), 0, grid_rows - 1)
    cell_x = np.clip((x * grid_cols / cols).astype(np.intp), 0, grid_cols - 1)
    return cell_y * grid_cols + cell_x, region_classes.astype(np.uint8)


def demo_scene(rows: int = 384, cols: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The demo scene's pixels and truth.

    Returns (uint16 (13, rows, cols) in MS_BAND_NAMES order, uint8 (rows, cols)
    class indices). Each region is drawn by `class_field` of its class, so it
    looks like that class's patches; the sensor model runs over the whole scene.
    """
    if rows < IMAGE_SIZE or cols < IMAGE_SIZE:
        raise InputError(f"a demo scene needs at least {IMAGE_SIZE}x{IMAGE_SIZE} pixels.")
    regions, region_classes = scene_layout(rows, cols, seed)
    surface = np.zeros((len(MS_BAND_NAMES), rows, cols), np.float32)
    for region, class_index in enumerate(region_classes):
        inside = regions == region
        row_span = np.flatnonzero(inside.any(axis=1))
        col_span = np.flatnonzero(inside.any(axis=0))
        if row_span.size == 0:
            continue
        top, bottom = row_span[0], row_span[-1] + 1
        left, right = col_span[0], col_span[-1] + 1
        rng = np.random.default_rng([seed, 1, rows, cols, region + 1])
        field = class_field(int(class_index), rng, int(bottom - top), int(right - left))
        window = inside[top:bottom, left:right]
        surface[:, top:bottom, left:right][:, window] = field[:, window]
    sensor_rng = np.random.default_rng([seed, 3, rows, cols])
    return sensor_image(surface, sensor_rng), region_classes[regions]


def write_demo_scene(
    path: str | Path,
    kind: str = "ms",
    rows: int = 384,
    cols: int = 384,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write the demo scene GeoTIFF and its truth raster `<stem>_truth.tif` beside it.

    kind "ms": 13-band uint16; kind "rgb": 3-band uint8 (B04, B03, B02 scaled
    as EuroSAT's JPEGs) of the same scene. Both EPSG:32633, 10 m pixels, band
    descriptions set, tiled and DEFLATE-compressed. Truth: Byte class indices
    (CLASS_NAMES positions) with a colour table and category names (in
    `<stem>_truth.tif.aux.xml`, as GDAL keeps them for GeoTIFF).
    Returns (scene path, truth path).
    """
    _check_kind(kind)
    path = Path(path)
    truth_path = path.with_name(f"{path.stem}_truth.tif")
    scene, truth = demo_scene(rows, cols, seed)
    if kind == "rgb":
        scene, band_names = rgb_from_ms(scene), RGB_BAND_NAMES
    else:
        band_names = MS_BAND_NAMES
    options = ["TILED=YES", "COMPRESS=DEFLATE", "PREDICTOR=2", "BIGTIFF=IF_SAFER"]
    with (
        atomic_output(path, overwrite) as scene_temporary,
        atomic_output(truth_path, overwrite) as truth_temporary,
    ):
        _write_geotiff(scene_temporary, scene, band_names, SCENE_ORIGIN, options)
        _write_geotiff(truth_temporary, truth[None], ("class",), SCENE_ORIGIN, options, CLASS_NAMES)
    return path, truth_path


def main() -> None:
    settings = parse_settings(__file__)
    target = Path(settings.target)
    datasets = {kind: target / f"eurosat_{kind}" for kind in ("rgb", "ms")}
    scenes = {kind: target / f"scene_{kind}.tif" for kind in ("rgb", "ms")}
    truths = [path.with_name(f"{path.stem}_truth.tif") for path in scenes.values()]
    refuse_existing([*datasets.values(), *scenes.values(), *truths], settings.overwrite)
    count, size, seed = settings.images_per_class, settings.scene_size, settings.seed
    write_demo_datasets(datasets, count, seed, settings.overwrite)
    for kind, folder in datasets.items():
        print(f"wrote {folder}: {len(CLASS_NAMES)} classes x {count} {kind} patches")
    for kind, path in scenes.items():
        scene, truth = write_demo_scene(path, kind, size, size, seed, settings.overwrite)
        print(f"wrote {scene} ({size}x{size}, {kind}) and its truth {truth}")


if __name__ == "__main__":
    run_script(main)
