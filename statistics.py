"""Per-band mean and standard deviation of a training folder, written to JSON.

Run `python statistics.py split/train` after 01: it streams every image under
the folder (JPEG or GeoTIFF) once, in float64, prints a table and writes
`split/band_stats.json` ({"bands", "mean", "std", "images", "pixels",
"method"}), which the training scripts turn into the model's normalisation.

`--method exact` (default) gives the true mean and standard deviation over all
pixels. `--method talk` reproduces the talk's statistics script: the mean of
per-image means and the mean of per-image standard deviations (which ignores
the variance between images, so its std is smaller than the whole folder's).

This file shares its name with the standard-library module `statistics`. When
it is imported as `statistics` (because the repository root is first on
`sys.path`), it loads the standard library's module in its place, so
third-party code doing `import statistics` keeps working.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

OUTPUT = None  # JSON file to write; None: band_stats.json in the folder's parent
METHOD = "exact"  # exact | talk: mean/std over all pixels, or mean of per-image means and stds
PROGRESS = True  # show a progress bar over the images
OVERWRITE = False  # replace existing outputs


def _standard_library_statistics() -> ModuleType:
    """Load the standard library's `statistics` module from its own file.

    Searches the standard-library folder first, then every `sys.path` entry
    except the folder of this file, so this file is never found again.
    """
    own_folder = Path(__file__).resolve().parent
    search_path = [sysconfig.get_path("stdlib")] + [
        entry for entry in sys.path if Path(entry or ".").resolve() != own_folder
    ]
    spec = importlib.machinery.PathFinder.find_spec("statistics", search_path)
    if spec is None or spec.loader is None or spec.origin == str(Path(__file__).resolve()):
        raise ImportError("the standard library's statistics module was not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules["statistics"] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "statistics":
    # Imported as a module, not run as a script: become the standard library's
    # `statistics`. The import system returns what sys.modules holds after this
    # file ran, so `import statistics` yields the standard module; names are
    # re-exported too, for anyone who kept a reference to this module object.
    _standard = _standard_library_statistics()
    globals().update(
        {name: value for name, value in vars(_standard).items() if not name.startswith("__")}
    )
    __all__ = list(_standard.__all__)
    __doc__ = _standard.__doc__


def default_output(folder: Path) -> Path:
    """`band_stats.json` in the parent of `folder` (split/train -> split/band_stats.json)."""
    return folder.resolve().parent / "band_stats.json"


def format_table(stats: dict) -> str:
    """A plain-text table of band name, mean and standard deviation."""
    lines = [f"{'band':<6} {'mean':>12} {'std':>12}", "-" * 32]
    for band, mean, std in zip(stats["bands"], stats["mean"], stats["std"], strict=True):
        lines.append(f"{band:<6} {mean:12.3f} {std:12.3f}")
    lines.append(
        f"{stats['images']} images, {stats['pixels']} pixels per band, method {stats['method']}"
    )
    return "\n".join(lines)


def add_folder_argument(parser: argparse.ArgumentParser) -> None:
    """The positional FOLDER argument (not a constant: it has no sensible default)."""
    parser.add_argument("folder", type=Path, help="folder of class folders, e.g. split/train")


def main(argv: list[str] | None = None) -> dict:
    """Compute, print and write the band statistics of a folder; returns them."""
    from cnn_sentinel.errors import InputError
    from cnn_sentinel.outputs import atomic_output
    from cnn_sentinel.settings import parse_settings
    from image_functions import band_statistics, check_band_stats, class_folders, list_class_images

    settings = parse_settings(__file__, argv, extra=add_folder_argument)
    folder: Path = settings.folder
    if not folder.is_dir():
        raise InputError(f"folder {folder} does not exist or is not a folder.")
    output = Path(settings.output) if settings.output else default_output(folder)
    # The output is checked (and its folder made) before the long pass over the
    # images; it is written under a temporary name and renamed when complete.
    with atomic_output(output, settings.overwrite) as temporary:
        # Any class folder names: the classes are the folder's own (EuroSAT's or not).
        paths = [path for path, _label in list_class_images(folder, class_folders(folder))]
        stats = band_statistics(paths, method=settings.method, progress=settings.progress)
        check_band_stats(stats, f"computed from {folder}")
        print(format_table(stats))
        temporary.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return stats


if __name__ == "__main__":
    # Run as a script: the repository root is sys.path[0], so put this file's
    # stand-in for the standard `statistics` in place before anything imports it.
    if "statistics" not in sys.modules:
        _standard_library_statistics()
    from cnn_sentinel.settings import run_script

    run_script(main)
