"""The scenes of 06's --image: paths, glob patterns, folders of scenes and .txt lists,
and the check that no two of them write the same outputs.

    images = list_scenes(values)                # 06's --image
    refuse_shared_outputs(run_plan, images)     # run_plan: plan.plan_run(settings)
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from cnn_sentinel.errors import InputError
from cnn_sentinel.scene.plan import RunPlan
from cnn_sentinel.scene.products import is_sentinel2_product

# Files taken as scenes in a folder given to --image (a .SAFE folder is one scene).
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt", ".zip", ".safe")
# Files in a scene folder that are 06's own outputs, never scenes.
OUTPUT_SUFFIXES = ("_label.tif", "_prob.tif", "_quicklook.png")


def is_scene_file(path: Path) -> bool:
    """Whether a folder entry is a scene: a raster or product suffix, not a hidden file,
    not one of 06's outputs."""
    name = path.name.lower()
    return (
        not name.startswith(".")
        and name.endswith(SCENE_SUFFIXES)
        and not name.endswith(OUTPUT_SUFFIXES)
    )


def list_scenes(values: Sequence[str]) -> list[Path]:
    """The scenes of --image: paths, glob patterns, folders of scenes (a .SAFE folder
    is one scene) and .txt files with one scene per line (relative to the list's
    folder; blank lines and # comments skipped), in order, each once. A path that
    does not exist is kept (it fails as that scene's error)."""
    scenes: list[Path] = []
    for value in values:
        value = str(value)
        if glob.has_magic(value):
            matches = sorted(Path(match) for match in glob.glob(value))
            if not matches:
                raise InputError(f"no scene matches {value}.")
            scenes += matches
            continue
        path = Path(value)
        if path.suffix.lower() == ".txt" and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            entries = [line.strip() for line in lines]
            scenes += [
                path.parent / entry for entry in entries if entry and not entry.startswith("#")
            ]
        elif path.is_dir() and not is_sentinel2_product(path):
            found = sorted(entry for entry in path.iterdir() if is_scene_file(entry))
            if not found:
                raise InputError(f"folder {path} holds no scene ({', '.join(SCENE_SUFFIXES)}).")
            scenes += found
        else:
            scenes.append(path)
    return list(dict.fromkeys(scenes))


def refuse_shared_outputs(run_plan: RunPlan, images: list[Path]) -> None:
    """InputError when two scenes would write the same outputs: the same file name in
    one --output-dir (without it each scene writes beside itself, and scenes of the same
    name in different folders are fine)."""
    writers: dict[Path, Path] = {}
    for image in images:
        label = run_plan.scene_outputs(image).label.absolute()
        other = writers.setdefault(label, image)
        if other != image:
            raise InputError(
                f"scenes {other} and {image} would both write {label}; "
                "classify them into different output folders."
            )
