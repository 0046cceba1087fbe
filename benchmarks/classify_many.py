"""Benchmark of 06 on many scenes: the in-process loop against Dask distributed on the
same machine and cores.

Four scenes of --size x --size pixels (crops at different offsets of a VRT that
repeats the real T33UUU 13-band scene, in a temporary folder; generated demo scenes
when ../shared/data is absent)
go through 06 as a user runs it, one subprocess per variant, with the shipped
13-band model (dense pass) and the cloud mask:
  none      --scheduler none: the scenes one after another in one process
            (TensorFlow with its default threads: every core);
  dask-1x2  --scheduler local --workers 1 --threads-per-worker 2: the same cores in
            one Dask worker process (the overhead of the Dask path);
  dask-2x1  --scheduler local --workers 2 --threads-per-worker 1: one scene per
            worker at a time (the throughput of 2 workers).
Wall time counts everything the user waits for (Python and TensorFlow start-up,
cluster start and stop); "compute" adds up the seconds each scene took
(summary.json). Variants take turns for --rounds rounds; the best round of each
is reported (the machine is shared). Prints the CPU model, the load and the ratios.

Run from the repository root:
    .venv/bin/python benchmarks/classify_many.py                    # 2048 px, stride 1
    .venv/bin/python benchmarks/classify_many.py --size 1024 --stride 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from osgeo import gdal

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from classify_scene import tile_vrt  # noqa: E402

import demo_data  # noqa: E402
from cnn_sentinel.precision import cpu_model  # noqa: E402

gdal.UseExceptions()

# The real 13-band scene the benchmark scenes are cropped from (when present).
REAL_SCENE = REPO_ROOT.parent / "shared" / "data" / "scenes"
REAL_SCENE_FILE = "sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
# Offset in pixels between the four crops (down and right) of the repeated real scene.
CROP_STEP = 256
SCENE_COUNT = 4
# The variants: name -> 06 flags.
VARIANTS = {
    "none": ["--scheduler", "none"],
    "dask-1x2": ["--scheduler", "local", "--workers", "1", "--threads-per-worker", "2"],
    "dask-2x1": ["--scheduler", "local", "--workers", "2", "--threads-per-worker", "1"],
}


def make_scenes(folder: Path, size: int) -> tuple[list[Path], str]:
    """The benchmark scenes in `folder`, and words for where they come from."""
    source = Path(os.environ.get("EUROSAT_SAMPLES", REAL_SCENE.parent)) / "scenes"
    real = source / REAL_SCENE_FILE
    tile = tile_vrt(folder, real, size + CROP_STEP * SCENE_COUNT) if real.exists() else None
    projection = gdal.Open(str(real)).GetProjection() if tile else None
    scenes = []
    for number in range(SCENE_COUNT):
        path = folder / f"scene{number}.{'vrt' if tile else 'tif'}"
        if tile:
            offset = number * CROP_STEP
            gdal.Translate(
                str(path),
                str(tile),
                format="VRT",
                srcWin=[offset, offset, size, size],
                outputSRS=projection,
            )
        else:
            demo_data.write_demo_scene(path, "ms", size, size, seed=number)
        scenes.append(path)
    words = f"crops of {real}, repeated" if tile else "generated demo scenes (no real scene)"
    return scenes, f"{SCENE_COUNT} scenes of {size}x{size} px, {words}"


def run_variant(name: str, scenes: list[Path], output: Path, stride: int) -> dict:
    """06 on the scenes with the variant's flags; wall and compute seconds."""
    command = [
        sys.executable, str(REPO_ROOT / "06_classify_image.py"), "--image", *map(str, scenes),
        "--output-dir", str(output), "--stride", str(stride), "--no-progress", "--overwrite",
        *VARIANTS[name],
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{name} failed (exit status {result.returncode}):\n{result.stdout[-2000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    rows = json.loads((output / "summary.json").read_text())["scenes"]
    windows = sum(row["windows_per_second"] * row["seconds"] for row in rows)
    return {
        "wall": wall,
        "compute": sum(row["seconds"] for row in rows),
        "windows": windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stride", type=int, default=1, help="06's --stride")
    parser.add_argument("--rounds", type=int, default=1, help="turns of the three variants")
    parser.add_argument("--size", type=int, default=2048, help="side of each scene in pixels")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from: " + ", ".join(VARIANTS),
    )
    arguments = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        scenes, words = make_scenes(folder, arguments.size)
        print(f"{words}; stride {arguments.stride}; shipped 13-band model, cloud mask auto")
        best: dict[str, dict] = {}
        for round_number in range(arguments.rounds):
            for name in arguments.variants.split(","):
                result = run_variant(name, scenes, folder / name, arguments.stride)
                print(
                    f"round {round_number + 1} {name:9s} wall {result['wall']:6.1f} s, "
                    f"compute {result['compute']:6.1f} s, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if name not in best or result["wall"] < best[name]["wall"]:
                    best[name] = result
    base = best.get("none")
    if base is None or len(best) < len(VARIANTS):
        return
    print(f"\nbest of {arguments.rounds} round(s):")
    for name, result in best.items():
        print(
            f"  {name:9s} wall {result['wall']:6.1f} s ({result['wall'] / base['wall']:.2f}x "
            f"in-process), {len(scenes) / (result['wall'] / 3600):.0f} scenes/hour, "
            f"{result['windows'] / result['wall']:,.0f} windows/s"
        )
    overhead = best["dask-1x2"]["wall"] / base["wall"] - 1
    print(f"Dask overhead (1 worker x 2 threads vs in-process): {100 * overhead:+.1f} %")
    speedup = base["wall"] / best["dask-2x1"]["wall"]
    print(f"2 workers x 1 thread vs in-process: {speedup:.2f}x")


if __name__ == "__main__":
    main()
