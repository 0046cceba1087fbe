"""Dither along class boundaries at stride 1, and what removing it does to 07's scores
(issue 26, item 10).

A pixel is isolated when all four of its neighbours carry another label (pixels on the
map's edge, Cloud and no data are not counted; a neighbour that is Cloud counts as another
label). The raw stride-1 pass gives period-2/4 patterns of such pixels along class
boundaries: the network's strided layers make its answer depend on the window's position
modulo their stride. 06's ANTIALIAS averages each window's class probabilities with those
of its neighbours over one such period (cnn_sentinel/scene/dense.py, average_phases).

For each scene of SCENES, 06 runs at stride 1 in a subprocess once per value of
ANTIALIAS_VALUES (with the scene's own flags), then 07 scores the map against the scene's
reference; the table gives the isolated share, the seconds 06 took for the scene and 07's
two agreements, side by side, with the CPU. OUTPUT_DIR gets 06's and 07's outputs.

Run from the repository root, e.g.:
    .venv/bin/python benchmarks/map_dither.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
from osgeo import gdal

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cnn_sentinel.errors import InputError  # noqa: E402
from cnn_sentinel.scene.blocks import CLOUD_LABEL  # noqa: E402
from cnn_sentinel.settings import parse_settings, run_script  # noqa: E402

gdal.UseExceptions()

DATA = "../shared/data"  # the shared data folder (scenes/, reference/)
SCENES = ("T33UUU", "Aberystwyth")  # keys of SCENE_RUNS to measure
ANTIALIAS_VALUES = (1, 2, 4)  # 06 --antialias values, side by side (1: the raw pass)
OUTPUT_DIR = "/tmp/map_dither"  # 06's and 07's outputs (keep it out of the repository)

# Per scene: the scene, 06's flags besides --stride 1, 07's reference and its flags.
SCENE_RUNS: Final = {
    "T33UUU": (
        "scenes/sentinel2_l1c_T33UUU_20170216_13band_1536x768.tif",
        [],
        "reference/T33UUU_osm/T33UUU_osm_landuse_water.gpkg",
        [],
    ),
    "Aberystwyth": (
        "reference/aberystwyth/sentinel2_l2a_aberystwyth_20210527_10band_324x339.tif",
        ["--bands", "3,2,1", "--reflectance-scale", "1000"],
        "reference/aberystwyth/aber_reference_polygons.gpkg",
        [],
    ),
}


def isolated_share(labels: np.ndarray) -> float:
    """The share of the map's inner class pixels whose four neighbours all differ."""
    centre = labels[1:-1, 1:-1]
    counted = centre < CLOUD_LABEL
    isolated = (
        (labels[:-2, 1:-1] != centre)
        & (labels[2:, 1:-1] != centre)
        & (labels[1:-1, :-2] != centre)
        & (labels[1:-1, 2:] != centre)
    )
    return float((isolated & counted).sum() / max(counted.sum(), 1))


def run(command: list[str]) -> str:
    """Run a command in the repository root; its output, or InputError with its stderr."""
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode:
        raise InputError(f"{shlex.join(command)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def measure(name: str, antialias: int, data: Path, folder: Path) -> dict:
    """06 at stride 1 with --antialias `antialias`, then 07 on its map."""
    scene, flags, reference, reference_flags = SCENE_RUNS[name]
    output = folder / f"{name}_antialias{antialias}"
    classify = [sys.executable, "06_classify_image.py", "--image", str(data / scene)]
    classify += ["--stride", "1", "--antialias", str(antialias), "--output-dir", str(output)]
    classify += [*flags, "--no-progress", "--no-quicklook", "--overwrite"]
    printed = run(classify)
    seconds = float(re.search(r"classified in ([0-9.]+) s", printed).group(1))
    label = output / f"{Path(scene).stem}_label.tif"
    evaluate = [sys.executable, "07_evaluate_map.py", "--map", str(label)]
    evaluate += ["--reference", str(data / reference), *reference_flags]
    evaluate += ["--output-dir", str(output / "evaluation"), "--no-picture", "--overwrite"]
    run(evaluate)
    report = json.loads((output / "evaluation" / "evaluation.json").read_text())
    labels = gdal.Open(str(label)).ReadAsArray()
    return {
        "scene": name,
        "antialias": antialias,
        "isolated": isolated_share(labels),
        "seconds": seconds,
        "class_balanced": report["class_balanced_agreement"],
        "area_weighted": report["area_weighted_agreement"],
        "per_class": {key: entry["agreement"] for key, entry in report["classes"].items()},
        "labels": labels,
    }


def main(argv: Sequence[str] | None = None) -> None:
    from cnn_sentinel.precision import cpu_model

    settings = parse_settings(__file__, argv)
    data = (REPO_ROOT / settings.data).resolve()
    unknown = sorted(set(settings.scenes) - set(SCENE_RUNS))
    if unknown:
        raise InputError(f"scenes {', '.join(unknown)} unknown; known: {', '.join(SCENE_RUNS)}.")
    folder = Path(settings.output_dir)
    print(f"CPU {cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| scene | --antialias | isolated pixels | labels changed | 06 s | class-balanced |"
          " area-weighted |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in settings.scenes:
        rows = [measure(name, value, data, folder) for value in settings.antialias_values]
        raw = rows[0]["labels"]
        for row in rows:
            changed = float((row["labels"] != raw).mean())
            print(
                f"| {name} | {row['antialias']} | {100 * row['isolated']:.3f} % | "
                f"{100 * changed:.2f} % | {row['seconds']:.1f} | {row['class_balanced']:.4f} | "
                f"{row['area_weighted']:.4f} |"
            )
        for row in rows:
            words = ", ".join(f"{key} {value:.4f}" for key, value in row["per_class"].items())
            print(f"  {name} --antialias {row['antialias']}: {words}")


if __name__ == "__main__":
    run_script(main)
