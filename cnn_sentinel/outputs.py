"""Output-file safety: refuse existing outputs, write atomically, clear leftovers.

`atomic_output` and `write_atomic` write an output under a temporary name and
rename it when complete, so nothing is ever half-written; leftovers of killed
runs are cleared by the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cnn_sentinel.errors import InputError


def refuse_existing(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Raise InputError naming the outputs that exist, unless overwriting is allowed."""
    existing = [str(path) for path in paths if Path(path).exists()]
    if existing and not overwrite:
        raise InputError(
            f"output {', '.join(existing)} already exists; pass --overwrite to replace it."
        )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Files GDAL keeps beside a raster: metadata (category names, statistics), overviews, masks.
GDAL_SIDE_SUFFIXES = (".aux.xml", ".ovr", ".msk")


def side_files(path: Path) -> list[Path]:
    """The GDAL side files beside `path` (`<name>.aux.xml`, `.ovr`, `.msk`) that exist."""
    return [
        side
        for suffix in GDAL_SIDE_SUFFIXES
        if (side := path.with_name(path.name + suffix)).exists() or side.is_symlink()
    ]


def temporary_name(path: Path, pid: int | None = None) -> Path:
    """The hidden temporary name of `path` while process `pid` (default: this one) writes it."""
    return path.with_name(
        f".{path.stem}.partial-{os.getpid() if pid is None else pid}{path.suffix}"
    )


def process_is_running(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_leftovers(path: Path) -> list[Path]:
    """Remove temporary outputs of `path` left by processes that are gone (killed runs).

    Those of a running process are left alone and named on stderr. Returns the
    removed paths.
    """
    if not path.parent.is_dir():
        return []
    pattern = re.compile(
        rf"^\.{re.escape(path.stem)}\.partial-(\d+)(?:\.old)?{re.escape(path.suffix)}"
        rf"(?:{'|'.join(re.escape(suffix) for suffix in GDAL_SIDE_SUFFIXES)})?$"
    )
    removed = []
    for entry in sorted(path.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        if process_is_running(pid):
            print(
                f"note: {entry} is being written by running process {pid}; left alone.",
                file=sys.stderr,
            )
            continue
        _remove(entry)
        removed.append(entry)
        print(f"removed {entry}, left behind by stopped process {pid}.", file=sys.stderr)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success.

    The temporary file or folder keeps the suffix of `path` (GDAL picks drivers
    by suffix); GDAL side files written beside it (`.aux.xml`) follow it. An
    existing `path`, or a side file of it such as a user's `<name>.aux.xml`, is
    an InputError unless `overwrite`. Leftover temporaries of killed processes
    are removed first. On any exception the temporary is removed and `path` is
    left untouched. A folder being replaced is moved aside first, then deleted.
    """
    path = Path(path)
    refuse_existing([path, *side_files(path)], overwrite)
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise InputError(f"output {path} exists and is not a regular file or folder.")
    if not path.parent.exists():
        try:  # another thread or process may create it at the same time
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"cannot create output folder {path.parent}: {error.strerror}."
            ) from None
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"output folder {path.parent} is not writable.")
    clear_leftovers(path)
    temporary = temporary_name(path)
    _remove(temporary)
    try:
        yield temporary
        old_folder = None
        if path.is_dir() and not path.is_symlink():
            # Moved aside under a temporary name of its own, which a later run clears
            # if this process dies before deleting it.
            old_folder = path.with_name(f".{path.stem}.partial-{os.getpid()}.old{path.suffix}")
            os.replace(path, old_folder)
        new_side_files = side_files(temporary)
        for stale in side_files(path):
            stale.unlink()
        os.replace(temporary, path)
        # GDAL keeps some metadata (category names, statistics) in a side file.
        for side_file in new_side_files:
            os.replace(side_file, path.with_name(path.name + side_file.name[len(temporary.name) :]))
        if old_folder is not None:
            shutil.rmtree(old_folder)
    finally:
        _remove(temporary)
        for side_file in side_files(temporary):
            _remove(side_file)


def write_atomic(
    path: str | Path,
    content: str | bytes | dict | list | Callable[[Path], object],
    overwrite: bool = False,
) -> Path:
    """Write `path` atomically (see `atomic_output`) and return it.

    content: text (str), bytes, JSON (a dict or list, indented, newline at the
    end), or a writer called with the temporary path (it may make a file or a
    folder there, e.g. `model.save`). `overwrite=True` replaces an existing output.
    """
    path = Path(path)
    with atomic_output(path, overwrite) as temporary:
        if isinstance(content, str):
            temporary.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            temporary.write_bytes(content)
        elif isinstance(content, (dict, list)):
            temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        else:
            content(temporary)
    return path
