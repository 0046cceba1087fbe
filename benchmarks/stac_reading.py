"""Benchmark of 06 on a STAC item over HTTP: the bytes a 2 km box costs against the box's own
compressed tiles.

A 10980 x 10980 uint16 Cloud-Optimized GeoTIFF (the size of a Sentinel-2 10 m band; deflate,
--block x --block tiles, overviews) of SYNTHETIC data (smooth fields plus noise, generated
here: no real tile of that size is available offline) is written once to --folder (/tmp by
default) and served on 127.0.0.1 by the tests' byte-range server (tests/helpers.py,
ServedFolder), under three names (B02, B03, B04: three URLs, as three band assets). A STAC
item points at them, and 06 classifies a --box-km box at --stride with the shipped RGB model
(MODEL auto: the item lacks the 13 bands), as a user runs it, in a subprocess.

Prints, per asset and in all: the bytes the server sent, the compressed bytes of the tiles the
box touches (TIFF BLOCK_SIZE of each, with the 4-byte leader and trailer a COG puts around a
tile), their ratio (target <= 2), the number of requests, and the whole file's size.

Run from the repository root:
    .venv/bin/python benchmarks/stac_reading.py
    .venv/bin/python benchmarks/stac_reading.py --block 512 --box-km 2 --x-km 54.3 --y-km 54.7
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from helpers import ServedFolder, write_item  # noqa: E402

from cnn_sentinel.precision import cpu_model  # noqa: E402

gdal.UseExceptions()

SIDE = 10980  # pixels of a Sentinel-2 10 m band
ORIGIN = (300000.0, 10.0, 0.0, 5900040.0, 0.0, -10.0)  # a UTM 33N tile, 10 m
BANDS = ("B02", "B03", "B04")


def synthetic_cog(folder: Path, block: int) -> Path:
    """folder/tile_<block>.tif: SIDE x SIDE uint16, smooth fields and noise, a COG (made once)."""
    target = folder / f"tile_{block}.tif"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / "plain.tif"
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(32633)
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(plain), SIDE, SIDE, 1, gdal.GDT_UInt16, ["TILED=YES", "BIGTIFF=YES"]
    )
    dataset.SetGeoTransform(ORIGIN)
    dataset.SetProjection(reference.ExportToWkt())
    generator = np.random.default_rng(0)
    columns = np.arange(SIDE, dtype=np.float32)
    for top in range(0, SIDE, 1098):
        rows = np.arange(top, min(SIDE, top + 1098), dtype=np.float32)[:, None]
        fields = 1200 + 400 * np.sin(columns / 37.0) * np.cos(rows / 53.0) + 0.02 * rows
        noise = generator.normal(0, 40, fields.shape)
        dataset.GetRasterBand(1).WriteArray(
            np.clip(fields + noise, 1, 65535).astype(np.uint16), 0, top
        )
    dataset = None
    gdal.Translate(
        str(target),
        str(plain),
        format="COG",
        creationOptions=["COMPRESS=DEFLATE", f"BLOCKSIZE={block}", "BIGTIFF=IF_SAFER"],
    )
    plain.unlink()
    return target


def box_tile_bytes(path: Path, window: tuple[int, int, int, int], block: int) -> int:
    """Compressed bytes of the full-resolution tiles a pixel window touches (with each tile's
    4-byte leader and 4-byte trailer)."""
    dataset = gdal.Open(str(path))
    band = dataset.GetRasterBand(1)
    xoff, yoff, xsize, ysize = window
    total = 0
    for row in range(yoff // block, (yoff + ysize - 1) // block + 1):
        for col in range(xoff // block, (xoff + xsize - 1) // block + 1):
            total += int(band.GetMetadataItem(f"BLOCK_SIZE_{col}_{row}", "TIFF")) + 8
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/cnn_sentinel_stac_benchmark")
    parser.add_argument(
        "--block", type=int, default=1024, help="COG tile side (Earth Search: 1024)"
    )
    parser.add_argument("--box-km", type=float, default=2.0)
    parser.add_argument("--x-km", type=float, default=54.3, help="box's west edge from the tile's")
    parser.add_argument("--y-km", type=float, default=54.7, help="box's north edge from the tile's")
    parser.add_argument("--stride", type=int, default=16)
    arguments = parser.parse_args()

    folder = Path(arguments.folder)
    started = time.perf_counter()
    cog = synthetic_cog(folder, arguments.block)
    print(f"synthetic COG {cog}: {cog.stat().st_size / 2**20:.1f} MiB "
          f"({time.perf_counter() - started:.0f} s to make or find)")  # fmt: skip
    served = folder / f"served_{arguments.block}"
    served.mkdir(exist_ok=True)
    for band in BANDS:
        link = served / f"{band}.tif"
        if not link.exists():
            link.symlink_to(cog)
    west = ORIGIN[0] + arguments.x_km * 1000
    north = ORIGIN[3] - arguments.y_km * 1000
    box = (west, north - arguments.box_km * 1000, west + arguments.box_km * 1000, north)
    window = (
        round((box[0] - ORIGIN[0]) / 10), round((ORIGIN[3] - box[3]) / 10),
        round(arguments.box_km * 100), round(arguments.box_km * 100),
    )  # fmt: skip
    compressed = box_tile_bytes(cog, window, arguments.block)

    with ServedFolder(served) as server:
        item = write_item(
            folder / "item" / "synthetic.json",
            {band: f"{server.url}/{band}.tif" for band in BANDS},
            collection="sentinel-2-l2a",
        )
        command = [
            sys.executable, str(REPO_ROOT / "06_classify_image.py"), "--image", str(item),
            "--bbox", *(f"{value:.1f}" for value in box), "--stride", str(arguments.stride),
            "--output-dir", str(folder / "out"), "--overwrite", "--no-progress",
        ]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"06 failed:\n{result.stderr}")
    print(result.stdout.splitlines()[0])
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.2f}; 06 took {seconds:.1f} s")
    print(f"box {arguments.box_km:g} km = {window[2]} x {window[3]} px at pixel "
          f"({window[0]}, {window[1]}), {arguments.block} px tiles")  # fmt: skip
    total_sent = 0
    for band in BANDS:
        reads = [(first, last) for path, first, last in server.requests if path == f"/{band}.tif"]
        sent = sum(last + 1 - first for first, last in reads)
        total_sent += sent
        print(
            f"  {band}: {len(reads)} requests, {sent:,} bytes sent; box tiles {compressed:,} "
            f"bytes; ratio {sent / compressed:.3f}; whole file {cog.stat().st_size:,} bytes"
        )
    ratio = total_sent / (compressed * len(BANDS))
    print(f"transferred / box's compressed bytes: {ratio:.3f} (target <= 2); "
          f"of the whole files: {total_sent / (cog.stat().st_size * len(BANDS)):.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
