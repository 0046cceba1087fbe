"""Maps at home: 06 on georeferenced mosaics of EuroSAT validation patches, scored where the
answer is known (issue 18, "no regression where the model is at home").

Each split folder from 01 (SPLITS) gives one mosaic of its validation patches, which the
shipped models never saw: blocks of 3 x 3 patches (192 x 192 pixels) of one class, every
class with the same number of blocks (at most BLOCKS_PER_CLASS, fewer where a class has
fewer than 9 patches per block; a class short of patches for its blocks repeats some),
the blocks in a shuffled grid of one row of blocks per class. The mosaic is a tiled,
compressed GeoTIFF in EPSG:32633 with 10 m pixels: uint8 with the JPEG values for 3-band
patches (bands B04, B03, B02), uint16 in EuroSAT's band order for 13-band patches. 06 runs
on it at stride 1 in a subprocess, once per flag set of VARIANTS, with the shipped model it
picks by bands, and the label map is scored at pixels whose answer is known:
  patch centres         pixel (32, 32) of every patch: its window is exactly the patch;
  block-centre patches  the same for the middle patch of each block only;
  seam edges            the middle of each seam between two patches of a block: the
                        window is half one patch, half the other (12 per block);
  seam corners          where four patches of a block meet (4 per block);
  in-block windows      every pixel whose window lies inside one block (129 x 129 each).
The window of pixel (r, c) covers rows r-32..r+31 and cols c-32..c+31
(cnn_sentinel/scene/reading.py). Cloud (254) counts as wrong. The table is printed with
the CPU, and OUTPUT_DIR gets the mosaics, 06's outputs and results.json.

Run from the repository root, e.g.:
    .venv/bin/python benchmarks/home_mosaic.py --splits split_rgb split_ms
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from osgeo import gdal, osr

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cnn_sentinel.errors import InputError  # noqa: E402
from cnn_sentinel.outputs import atomic_output, refuse_existing, write_atomic  # noqa: E402
from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402
from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES  # noqa: E402

gdal.UseExceptions()

SPLITS = ("split_rgb", "split_ms")  # split folders from 01; one mosaic of each validation/ part
BLOCKS_PER_CLASS = 6  # 3 x 3 blocks per class at most (fewer where the validation set is small)
SEED = 42  # seed of the choice of patches and of the order of the blocks
VARIANTS = ("--adapt off", "defaults")  # 06 flag sets to compare; "defaults": 06's own settings
OUTPUT_DIR = "/tmp/home_mosaic"  # mosaics, 06's outputs and results.json (keep it out of the repo)
OVERWRITE = False  # replace the outputs of an earlier run in OUTPUT_DIR

# Patch side (EuroSAT) and patches per block side.
PATCH: Final = 64
BLOCK_PATCHES: Final = 3
BLOCK: Final = PATCH * BLOCK_PATCHES
# The mosaics' georeference: UTM 33N, 10 m pixels, an upper-left corner inside the zone.
EPSG: Final = 32633
ORIGIN: Final = (500000.0, 5800000.0)
PIXEL_SIZE: Final = 10.0
# Label values of 06 that are no class.
CLOUD_LABEL: Final = 254
# The measured pixel sets, in the table's order.
CATEGORIES: Final = (
    "patch centres",
    "block-centre patches",
    "seam edges",
    "seam corners",
    "in-block windows",
)


@dataclass(frozen=True)
class Block:
    """One 3 x 3 block of a mosaic: its class and its 9 patch files, row by row."""

    class_name: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Layout:
    """Blocks in a grid of `columns` blocks per row, row by row."""

    blocks: tuple[Block, ...]
    columns: int

    @property
    def shape(self) -> tuple[int, int]:
        rows = -(-len(self.blocks) // self.columns)
        return rows * BLOCK, self.columns * BLOCK

    def origin(self, index: int) -> tuple[int, int]:
        """Pixel (row, col) of the upper-left corner of block `index`."""
        return index // self.columns * BLOCK, index % self.columns * BLOCK

    @property
    def repeated(self) -> int:
        """Placements of a patch already placed before (classes short of patches)."""
        files = [file for block in self.blocks for file in block.files]
        return len(files) - len(set(files))


def validation_patches(split: Path) -> dict[str, list[Path]]:
    """The validation patches of a split folder from 01, per class (sorted file names)."""
    folder = split / "validation"
    if not folder.is_dir():
        raise InputError(f"split folder {split} has no validation/ folder; make it with 01.")
    patches = {}
    for class_name in CLASS_NAMES:
        files = sorted(
            path
            for path in (folder / class_name).glob("*")
            if path.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".png")
        )
        if not files:
            raise InputError(f"split folder {split} has no validation images of {class_name}.")
        patches[class_name] = files
    return patches


def plan_blocks(patches: dict[str, list[Path]], blocks_per_class: int, seed: int) -> Layout:
    """Blocks of one class each, the same number for every class, in a shuffled grid.

    Every class gets min(blocks_per_class, its fewest patches // 9) blocks, at least one;
    its patches are drawn without repetition while they last, then repeated in order.
    """
    if blocks_per_class < 1:
        raise InputError(f"BLOCKS_PER_CLASS must be at least 1, not {blocks_per_class}.")
    generator = np.random.default_rng(seed)
    per_block = BLOCK_PATCHES * BLOCK_PATCHES
    fewest = min(len(files) for files in patches.values())
    count = max(1, min(blocks_per_class, fewest // per_block))
    blocks = []
    for class_name, files in patches.items():
        order = [files[index] for index in generator.permutation(len(files))]
        chosen = [order[index % len(order)] for index in range(count * per_block)]
        blocks += [
            Block(class_name, tuple(chosen[start : start + per_block]))
            for start in range(0, len(chosen), per_block)
        ]
    shuffled = tuple(blocks[index] for index in generator.permutation(len(blocks)))
    return Layout(shuffled, columns=len(patches))


def read_patch(path: Path) -> np.ndarray:
    """A patch as (bands, 64, 64) in its file's data type."""
    try:
        pixels = gdal.Open(str(path)).ReadAsArray()
    except RuntimeError as error:
        raise InputError(f"patch {path} cannot be read: {error}") from None
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.shape[1:] != (PATCH, PATCH):
        raise InputError(f"patch {path} is {pixels.shape[2]} x {pixels.shape[1]}, not 64 x 64.")
    return pixels


def assemble(layout: Layout, read: Callable[[Path], np.ndarray] = read_patch) -> np.ndarray:
    """The mosaic as (bands, rows, cols); every patch must have the first one's bands and type."""
    first = read(layout.blocks[0].files[0])
    mosaic = np.zeros((first.shape[0], *layout.shape), first.dtype)
    for index, block in enumerate(layout.blocks):
        top, left = layout.origin(index)
        for number, path in enumerate(block.files):
            pixels = read(path)
            if pixels.shape != first.shape or pixels.dtype != first.dtype:
                raise InputError(
                    f"patch {path} has {pixels.shape[0]} bands of {pixels.dtype}, unlike the "
                    f"mosaic's {first.shape[0]} of {first.dtype}."
                )
            row, col = divmod(number, BLOCK_PATCHES)
            top_row, left_col = top + row * PATCH, left + col * PATCH
            mosaic[:, top_row : top_row + PATCH, left_col : left_col + PATCH] = pixels
    return mosaic


def write_mosaic(path: Path, mosaic: np.ndarray, overwrite: bool) -> Path:
    """Write the mosaic as a tiled, compressed GeoTIFF in EPSG:32633 with band names."""
    band_names = {len(RGB_BAND_NAMES): RGB_BAND_NAMES, len(MS_BAND_NAMES): MS_BAND_NAMES}
    if mosaic.shape[0] not in band_names:
        raise InputError(f"patches with {mosaic.shape[0]} bands are neither RGB nor 13-band.")
    data_type = {np.dtype(np.uint8): gdal.GDT_Byte, np.dtype(np.uint16): gdal.GDT_UInt16}
    if mosaic.dtype not in data_type:
        raise InputError(f"patches of {mosaic.dtype} are neither uint8 (RGB) nor uint16 (MS).")
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE"]
    if mosaic.shape[0] > 3:
        options.append("INTERLEAVE=BAND")
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(EPSG)
    with atomic_output(path, overwrite) as temporary:
        bands, rows, cols = mosaic.shape
        dataset = gdal.GetDriverByName("GTiff").Create(
            str(temporary), cols, rows, bands, data_type[mosaic.dtype], options
        )
        dataset.SetGeoTransform((ORIGIN[0], PIXEL_SIZE, 0.0, ORIGIN[1], 0.0, -PIXEL_SIZE))
        dataset.SetProjection(reference.ExportToWkt())
        for number, name in enumerate(band_names[bands], start=1):
            band = dataset.GetRasterBand(number)
            band.SetDescription(name)
            band.WriteArray(mosaic[number - 1])
        dataset = None
    return path


def known_pixels(layout: Layout) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per category of CATEGORIES: (rows, cols, class index) of the pixels it scores."""
    offsets = {
        "patch centres": [(PATCH * i + 32, PATCH * j + 32) for i in range(3) for j in range(3)],
        "block-centre patches": [(PATCH + 32, PATCH + 32)],
        "seam edges": [(PATCH * i, PATCH * j + 32) for i in (1, 2) for j in range(3)]
        + [(PATCH * i + 32, PATCH * j) for i in range(3) for j in (1, 2)],
        "seam corners": [(PATCH * i, PATCH * j) for i in (1, 2) for j in (1, 2)],
        "in-block windows": [
            (row, col) for row in range(32, BLOCK - 31) for col in range(32, BLOCK - 31)
        ],
    }
    pixels = {}
    for category in CATEGORIES:
        local = np.array(offsets[category])
        rows, cols, classes = [], [], []
        for index, block in enumerate(layout.blocks):
            top, left = layout.origin(index)
            rows.append(local[:, 0] + top)
            cols.append(local[:, 1] + left)
            classes.append(np.full(len(local), CLASS_NAMES.index(block.class_name)))
        pixels[category] = tuple(np.concatenate(values) for values in (rows, cols, classes))
    return pixels


def score(labels: np.ndarray, layout: Layout) -> dict[str, dict]:
    """Per category: pixels, share correct, Cloud count, and per class share correct."""
    results = {}
    for category, (rows, cols, classes) in known_pixels(layout).items():
        given = labels[rows, cols]
        correct = given == classes
        per_class = {
            name: round(float(correct[classes == index].mean()), 4)
            for index, name in enumerate(CLASS_NAMES)
            if np.any(classes == index)
        }
        wrong = given[~correct]
        called = {
            (CLASS_NAMES[value] if value < len(CLASS_NAMES) else str(int(value))): int(n)
            for value, n in zip(*np.unique(wrong, return_counts=True), strict=True)
        }
        results[category] = {
            "pixels": int(correct.size),
            "accuracy": round(float(correct.mean()), 4),
            "cloud": int(np.sum(given == CLOUD_LABEL)),
            "per_class": per_class,
            "wrong_called": called,
        }
    return results


def classify(mosaic: Path, variant: str, folder: Path, overwrite: bool) -> tuple[list[str], dict]:
    """06 at stride 1 on the mosaic with the variant's flags: (command, its record)."""
    flags = [] if variant == "defaults" else shlex.split(variant)
    command = [
        sys.executable, str(REPO_ROOT / "06_classify_image.py"), "--image", str(mosaic),
        "--stride", "1", "--output-dir", str(folder), "--no-progress", "--no-quicklook",
        *flags, *(["--overwrite"] if overwrite else []),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
        raise InputError(f"06 failed on mosaic {mosaic} with flags {variant!r}.")
    label_path = folder / f"{mosaic.stem}_label.tif"
    dataset = gdal.Open(str(label_path))
    lines = result.stdout.strip().splitlines()
    timing = next((line for line in lines if " classified in " in line), "")
    record = {
        "seconds": round(seconds, 1),
        "classified_seconds": float(timing.split(" classified in ")[1].split(" s ")[0])
        if timing
        else None,
        "label_map": str(label_path),
        "metadata": dataset.GetMetadata(),
        "stdout": lines,
    }
    return command, {**record, "labels": dataset.ReadAsArray()}


def table(results: dict) -> str:
    """The summary table (Markdown): one row per mosaic and variant."""
    lines = [
        "| mosaic | 06 flags | " + " | ".join(CATEGORIES) + " | 06 s (classifying) |",
        "|---|---|" + "---:|" * (len(CATEGORIES) + 1),
    ]
    for name, mosaic in results["mosaics"].items():
        for variant, run in mosaic["runs"].items():
            cells = [
                f"{run['scores'][category]['accuracy']:.4f} ({run['scores'][category]['pixels']})"
                for category in CATEGORIES
            ]
            seconds = f"{run['seconds']} ({run['classified_seconds']})"
            lines.append(f"| {name} | {variant} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def class_table(results: dict, category: str = "patch centres") -> str:
    """Per class accuracy of one category (Markdown), a column per mosaic and variant."""
    columns = [
        (name, variant, run)
        for name, mosaic in results["mosaics"].items()
        for variant, run in mosaic["runs"].items()
    ]
    header = " | ".join(f"{name}, {variant}" for name, variant, _ in columns)
    lines = [
        f"| {category} | {header} |",
        "|---|" + "---:|" * len(columns),
    ]
    for class_name in CLASS_NAMES:
        cells = [f"{run['scores'][category]['per_class'][class_name]:.3f}" for *_, run in columns]
        lines.append(f"| {class_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(__file__, argv)
    from cnn_sentinel.precision import cpu_model

    output_dir = Path(settings.output_dir).resolve()
    if output_dir == REPO_ROOT or REPO_ROOT in output_dir.parents:
        raise InputError(f"output folder {output_dir} is inside the repository; use one outside.")
    results_path = output_dir / "results.json"
    refuse_existing([results_path], settings.overwrite)
    results = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "settings": {key: value for key, value in vars(settings).items() if key != "progress"},
        "mosaics": {},
    }
    print(f"CPU {results['cpu']}, {results['cpus']} CPUs, load {results['load_average_before']}")
    for split in settings.splits:
        split = Path(split)
        layout = plan_blocks(validation_patches(split), settings.blocks_per_class, settings.seed)
        mosaic = assemble(layout)
        name = f"{split.name}_home_mosaic"
        mosaic_path = write_mosaic(output_dir / f"{name}.tif", mosaic, settings.overwrite)
        rows, cols = layout.shape
        print(
            f"{mosaic_path}: {cols} x {rows} x {mosaic.shape[0]} {mosaic.dtype}, "
            f"{len(layout.blocks)} blocks ({len(layout.blocks) // len(CLASS_NAMES)} per class), "
            f"{layout.repeated} repeated patch placements"
        )
        record = {
            "mosaic": str(mosaic_path),
            "split": str(split.resolve()),
            "size": [cols, rows, int(mosaic.shape[0])],
            "blocks_per_class": len(layout.blocks) // len(CLASS_NAMES),
            "repeated_placements": layout.repeated,
            "blocks": [
                {"class": block.class_name, "files": [path.name for path in block.files]}
                for block in layout.blocks
            ],
            "runs": {},
        }
        for variant in settings.variants:
            folder = output_dir / name / variant.replace("--", "").replace(" ", "_")
            command, run = classify(mosaic_path, variant, folder, settings.overwrite)
            run["scores"] = score(run.pop("labels"), layout)
            run["command"] = shlex.join(command)
            record["runs"][variant] = run
            summary = ", ".join(
                f"{category} {run['scores'][category]['accuracy']:.4f}" for category in CATEGORIES
            )
            print(f"  {variant}: {summary} ({run['seconds']} s)")
        results["mosaics"][split.name] = record
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    write_atomic(results_path, results, settings.overwrite)
    print()
    print(table(results))
    print()
    print(class_table(results))
    print(f"\nwrote {results_path}")


if __name__ == "__main__":
    run_script(main)
