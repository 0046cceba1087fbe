"""Benchmark: what the cloud mask adds to 06, in time and peak memory, side by side.

Runs 06_classify_image.py in subprocesses on the real 13-band T33UUU scene (or a
window of it), alternating --cloud-mask off and auto (the default: on for this
scene), REPEATS times each, and prints the best time of each (the whole run, and
the classification as 06 reports it), their ratios, and the peak resident memory
of each (ru_maxrss of the child). The machine is shared, so only ratios of runs made
side by side mean something. Models have random weights (speed only), a
Normalization layer inside, and are saved with model.json in a temporary folder.

Run from the repository root:
    .venv/bin/python benchmarks/cloud_mask.py                       # resnet-valid RGB
    .venv/bin/python benchmarks/cloud_mask.py --arch vgg16 --window 0 0 768 768
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from image_functions import CLASS_NAMES, MS_BAND_NAMES, RGB_BAND_NAMES, talk_constants  # noqa: E402

REAL_SCENE = (
    REPO_ROOT.parent / "shared/data/scenes/sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif"
)
REPEATS = 3


def save_random_model(folder: Path, arch: str, band_names) -> Path:
    """A random-weight classifier of `arch` with model.json, as 06 loads them."""
    from cnn_sentinel.model_info import ModelInfo
    from cnn_sentinel.networks import build_network
    from cnn_sentinel.outputs import write_atomic

    mean, std = talk_constants(len(band_names))
    model = build_network(arch, band_names, len(CLASS_NAMES), mean, std, augment=False)
    path = folder / "model.keras"
    write_atomic(path, model.save, overwrite=True)
    ModelInfo(
        class_names=list(CLASS_NAMES),
        band_names=list(band_names),
        mean=list(mean),
        std=list(std),
        arch=arch,
    ).save(folder / "model.json")
    return path


def run_06(arguments: list[str]) -> tuple[float, float, float, str]:
    """(seconds of the whole run, seconds classifying as 06 reports them, peak RSS in
    GiB, output) of one 06 run in a subprocess."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "06_classify_image.py"), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"06 failed:\n{output}")
    classifying = float(re.search(r"classified in ([\d.]+) s", output).group(1))
    return seconds, classifying, usage.ru_maxrss / 2**20, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet-valid")
    parser.add_argument("--bands", choices=["rgb", "ms"], default="rgb")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--window", nargs=4, default=None, help="xoff yoff xsize ysize")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--extra", default="", help="more 06 flags, e.g. '--mixed-precision bf16'")
    options = parser.parse_args()
    if not REAL_SCENE.is_file():
        raise SystemExit(f"the real scene {REAL_SCENE} is missing.")
    band_names = RGB_BAND_NAMES if options.bands == "rgb" else MS_BAND_NAMES
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model = save_random_model(folder, options.arch, band_names)
        common = ["--image", str(REAL_SCENE), "--model", str(model), "--output-dir", str(folder)]
        common += ["--stride", str(options.stride), "--no-progress", "--overwrite"]
        common += ["--window", *options.window] if options.window else []
        common += options.extra.split()
        results: dict[str, list[tuple[float, float, float]]] = {"off": [], "auto": []}
        for repeat in range(options.repeats):
            for mode in results:
                whole, classifying, memory, output = run_06([*common, "--cloud-mask", mode])
                results[mode].append((whole, classifying, memory))
                print(
                    f"run {repeat + 1} --cloud-mask {mode:4s}: {whole:6.1f} s in all, "
                    f"{classifying:6.1f} s classifying, {memory:.2f} GiB"
                )
                if repeat == 0:
                    print("  " + "\n  ".join(output.strip().splitlines()[:2]))
    print(f"{options.arch} ({options.bands}), stride {options.stride}, best of {options.repeats}:")
    for column, name in ((0, "whole run"), (1, "classifying")):
        off = min(run[column] for run in results["off"])
        on = min(run[column] for run in results["auto"])
        print(f"  {name:12s} off {off:6.1f} s, mask {on:6.1f} s, ratio {on / off:.2f}")
    off = max(run[2] for run in results["off"])
    on = max(run[2] for run in results["auto"])
    print(f"  peak RSS     off {off:6.2f} GiB, mask {on:6.2f} GiB ({100 * (on / off - 1):+.1f} %)")


if __name__ == "__main__":
    main()
