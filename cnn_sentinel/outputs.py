"""Output-file safety: refuse existing outputs, write atomically, clear leftovers, lock.

`atomic_output` and `write_atomic` write an output under a temporary name and
rename it when complete, so nothing is ever half-written; leftovers of killed
runs are cleared by the next run. `exclusive_lock` keeps a second process out of
outputs that one is writing; the kernel releases it when its process dies.
`interrupt_on_sigterm` makes SIGTERM (batch systems, Dask) end a script as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import threading
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


def size_words(size: float) -> str:
    """A byte count for people: "850 MB", "2.3 GB"."""
    return f"{size / 2**30:.1f} GB" if size >= 2**30 else f"{max(size / 2**20, 0.1):.1f} MB"


def is_disk_full(error: BaseException) -> bool:
    """Whether an error says the disk is full: OSError ENOSPC (or EDQUOT, a quota),
    or the words of GDAL's RuntimeError or HDF5's OSError for it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # GDAL (RuntimeError) and HDF5 (OSError without errno) say it in words.
    return any(words in str(error) for words in ("No space left on device", "quota exceeded"))


class DiskFullError(InputError):
    """No space left for an output (see disk_full_error); `outputs_need` words it for a set."""


def disk_full_error(
    folder: Path, what: str, space_needed: int | None = None, bound: str = "about"
) -> DiskFullError:
    """The one sentence for a full disk while writing `what` into `folder`: the folder,
    the space free there and the space the outputs need (`bound` it, when known)."""
    try:
        free = size_words(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    needed = f", {bound} {size_words(space_needed)} needed" if space_needed else ""
    return DiskFullError(
        f"no space left in {folder} for {what} ({free} free{needed}); free some space there "
        "or choose another output folder, then run the same command again."
    )


@contextlib.contextmanager
def outputs_need(
    folder: str | Path, what: str, space_needed: int, bound: str = "at most"
) -> Iterator[None]:
    """Around several atomic_outputs in one folder: a full disk while writing any of
    them is one sentence naming `what` (e.g. "the outputs of scene") and the space
    the whole set needs, not the one output that happened to be open."""
    try:
        yield
    except (OSError, RuntimeError, DiskFullError) as error:
        if isinstance(error, DiskFullError) or is_disk_full(error):
            raise disk_full_error(Path(folder), what, space_needed, bound) from None
        raise


@contextlib.contextmanager
def _disk_full_as_input_error(path: Path, space_needed: int | None) -> Iterator[None]:
    try:
        yield
    except (OSError, RuntimeError) as error:
        if is_disk_full(error):
            raise disk_full_error(path.parent, path.name, space_needed) from None
        raise


@contextlib.contextmanager
def atomic_output(
    path: str | Path, overwrite: bool = False, space_needed: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success.

    The temporary file or folder keeps the suffix of `path` (GDAL picks drivers
    by suffix); GDAL side files written beside it (`.aux.xml`) follow it. An
    existing `path`, or a side file of it such as a user's `<name>.aux.xml`, is
    an InputError unless `overwrite`. Leftover temporaries of killed processes
    are removed first. On any exception the temporary is removed and `path` is
    left untouched; a full disk becomes an InputError naming the folder, the free
    space and `space_needed` (bytes, when the caller knows it). A folder being
    replaced is moved aside first, then deleted.
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
        with _disk_full_as_input_error(path, space_needed):
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
    space_needed: int | None = None,
) -> Path:
    """Write `path` atomically (see `atomic_output`) and return it.

    content: text (str), bytes, JSON (a dict or list, indented, newline at the
    end), or a writer called with the temporary path (it may make a file or a
    folder there, e.g. `model.save`). `overwrite=True` replaces an existing output.
    `space_needed` (bytes) goes into the sentence of a full disk.
    """
    path = Path(path)
    with atomic_output(path, overwrite, space_needed) as temporary:
        if isinstance(content, str):
            temporary.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            temporary.write_bytes(content)
        elif isinstance(content, (dict, list)):
            temporary.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        else:
            content(temporary)
    return path


class FolderVanishedError(FileNotFoundError):
    """The folder of a lock file is gone (another process removed it): make it again."""


@contextlib.contextmanager
def exclusive_lock(lock_path: str | Path, what: str, advice: str) -> Iterator[None]:
    """Hold an exclusive lock (fcntl.flock on `lock_path`) while the block runs.

    Another process holding it is an InputError: "<what> is in use by running process
    <pid>; <advice>." The kernel drops the lock of a process that dies, even by
    kill -9, so it never stays stuck; the file is removed on release (one left by a
    killed process is empty of meaning and simply locked again).
    """
    lock_path = Path(lock_path)
    while True:
        try:
            handle = lock_path.open("a+", encoding="utf-8")
        except PermissionError:
            raise InputError(f"output folder {lock_path.parent} is not writable.") from None
        except FileNotFoundError:
            if not lock_path.parent.exists():
                raise FolderVanishedError(lock_path.parent) from None
            raise InputError(f"cannot create lock file {lock_path}: no such file.") from None
        except OSError as error:
            raise InputError(f"cannot create lock file {lock_path}: {error.strerror}.") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InputError(f"{what} is in use by running {holder}; {advice}.") from None
        # The previous holder may have removed the file between our open and our lock.
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled as Ctrl-C is (outputs being written are removed)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread,
    so the `finally` clauses of atomic_output remove the temporaries and the script
    ends as after Ctrl-C. Only the main thread can set a handler; elsewhere a no-op."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str, what: str, advice: str) -> Iterator[None]:
    """Hold `folder/.<name>.lock` (exclusive_lock) while the block runs: one process at a
    time writes the outputs called `name` there. A folder made for the lock is removed
    again when it is left empty (a refused or failed run leaves nothing behind). Other
    processes may make or remove the folder at the same time (Dask tasks of one run): the
    folder is made if missing, and made again if it vanished before the lock was taken."""
    folder = Path(folder)
    while True:
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as error:
            raise InputError(f"cannot create output folder {folder}: {error.strerror}.") from None
        if not folder.is_dir():
            raise InputError(f"output folder {folder} is a file, not a folder.")
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(exclusive_lock(folder / f".{name}.lock", what, advice))
        except FolderVanishedError:  # removed by a process that had made it, between mkdir and lock
            continue
        break
    try:
        with lock:
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
