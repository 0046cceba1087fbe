"""Shared command-line mechanics of the numbered scripts.

Every script starts with a block of UPPER_CASE settings, each written
`NAME = <literal>  # help text`. `parse_settings` turns them into flags of the
same name in kebab case (`BATCH_SIZE` -> `--batch-size`), so a user can either
edit the constant or pass the flag. A comment starting `a | b | c: ...` declares
the allowed values. Any other public UPPER_CASE name of a script must be marked
a fixed fact with `typing.Final` (`EPSG: Final = 32633`): a constant that would
silently not be a flag (no comment, a computed value, another annotation) is an
error at start-up, as is an edited default outside its choices.

`run_script` turns an `InputError` into one clear sentence and exit status 2,
and keeps TensorFlow's native log lines (CUDA probing on CPU machines, absl)
away from the user unless `--verbose` is given or `TF_CPP_MIN_LOG_LEVEL` is set.
`atomic_output` and `write_atomic` write an output under a temporary name and
rename it when complete, so nothing is ever half-written; leftovers of killed
runs are cleared by the next run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import shutil
import sys
import threading
import tokenize
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """Bad input from the user: the message is one sentence naming the culprit."""


# ---------------------------------------------------------------------------
# Quiet defaults, set when this module is imported: every script imports it
# before TensorFlow or tqdm (both read their settings when first imported).
# ---------------------------------------------------------------------------

TF_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Marks a TF_CPP_MIN_LOG_LEVEL that this module set (also in child processes, which
# inherit the environment), so that only a level the user set counts as theirs.
QUIET_MARK_VARIABLE = "CNN_SENTINEL_QUIET_TF"
QUIET_TF_LOG_LEVEL = "2"
if TF_LOG_VARIABLE not in os.environ:
    os.environ[TF_LOG_VARIABLE] = os.environ[QUIET_MARK_VARIABLE] = QUIET_TF_LOG_LEVEL
# The user's own TensorFlow log level, if any: it always wins over ours.
USER_TF_LOG_LEVEL = (
    None
    if os.environ.get(QUIET_MARK_VARIABLE) == os.environ[TF_LOG_VARIABLE]
    else os.environ[TF_LOG_VARIABLE]
)
# Seconds between progress-bar redraws when stderr is a file or pipe (a log gets a
# line every few seconds, not hundreds per minute); tqdm reads TQDM_MININTERVAL.
NON_TERMINAL_REDRAW_S = 5.0


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(sys.__stderr__.fileno())
    except (AttributeError, OSError, ValueError):
        return False


# Decided once, before run_script may put a pipe on file descriptor 2.
STDERR_IS_TERMINAL = _stderr_is_terminal()
if not STDERR_IS_TERMINAL:
    os.environ.setdefault("TQDM_MININTERVAL", str(NON_TERMINAL_REDRAW_S))

# Native log lines of TensorFlow, XLA and absl: "I0000 00:00:1795.1 123 file.cc:31] ...",
# the older "2025-01-01 12:00:00.1: W file.cc:31] ...", and two absl/CPU notices.
# FATAL (F) lines are never dropped.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s:]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow)"
)


def progress_bar(iterable=None, **options):
    """A tqdm progress bar that redraws every NON_TERMINAL_REDRAW_S seconds when
    stderr is not a terminal (options as tqdm's, e.g. desc, unit, total, disable)."""
    from tqdm import tqdm

    if not STDERR_IS_TERMINAL:
        options.setdefault("mininterval", NON_TERMINAL_REDRAW_S)
    return tqdm(iterable, **options)


class NativeLogFilter:
    """Drop TensorFlow's native log lines written to file descriptor 2.

    C++ code writes to fd 2 directly, before and after TensorFlow reads any
    setting, so fd 2 becomes a pipe read by a thread that forwards every other
    line to the real stderr. Python's own `sys.stderr` (error sentences,
    tracebacks, progress bars) is pointed straight at the real stderr, so it
    never waits on the thread; so is faulthandler.
    """

    def __init__(self):
        self.real_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.saved_stderr = sys.stderr
        sys.stderr = os.fdopen(
            os.dup(self.real_fd),
            "w",
            buffering=1,
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
        )
        with contextlib.suppress(Exception):
            import faulthandler

            faulthandler.enable(file=sys.stderr)
        self.thread = threading.Thread(target=self._forward, name="native-log-filter", daemon=True)
        self.thread.start()

    def _forward(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"(?<=[\n\r])", pending)
            kept = b"".join(line for line in lines if not NATIVE_LOG_LINE.match(line))
            # A part line (a progress bar redraw) goes out at once unless it starts
            # like a log line, which then waits for its end.
            if pending and not re.match(rb"^(?:[IWE]\d|\d{4}-|WARNING: All|To enable)", pending):
                kept, pending = kept + pending, b""
            if kept:
                os.write(self.real_fd, kept)
        if pending and not NATIVE_LOG_LINE.match(pending):
            os.write(self.real_fd, pending)

    def close(self) -> None:
        """Put the real stderr back on fd 2 and forward what is still in the pipe."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self.real_fd, 2)  # closes this process's write end of the pipe
        self.thread.join(timeout=2.0)
        sys.stderr = self.saved_stderr


def quiet_native_logs(argv: list[str]) -> NativeLogFilter | None:
    """Keep TensorFlow's native log lines from the user, unless `--verbose` is in argv
    (then TensorFlow logs everything) or the user set TF_CPP_MIN_LOG_LEVEL (theirs wins)."""
    if "--verbose" in argv:
        if USER_TF_LOG_LEVEL is None:
            # Unmarked, so child processes (demo.py's steps) log everything too.
            os.environ[TF_LOG_VARIABLE] = "0"
            os.environ.pop(QUIET_MARK_VARIABLE, None)
        return None
    if USER_TF_LOG_LEVEL is not None:
        return None
    try:
        return NativeLogFilter()
    except OSError:
        return None


# ---------------------------------------------------------------------------
# Settings: a script's UPPER_CASE constants as flags
# ---------------------------------------------------------------------------

# "copy | hardlink | symlink: how files get into TARGET" declares three choices.
CHOICES_COMMENT = re.compile(r"^\s*([\w.+-]+(?:\s*\|\s*[\w.+-]+)+)\s*:")
SETTING_FORM = "`NAME = <literal>  # help` (a flag) or `NAME: Final = ...` (a fixed fact)"


def _constant_comments(source: str) -> dict[int, str]:
    """Map line number -> trailing comment text for every line of `source`."""
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    return comments


def _is_public_constant(name: str) -> bool:
    return name.isupper() and name[0].isalpha()


def _is_final(annotation: ast.expr) -> bool:
    """Whether an annotation is `Final`, `Final[...]` or `typing.Final[...]`."""
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    if isinstance(annotation, ast.Attribute):
        return annotation.attr == "Final"
    return isinstance(annotation, ast.Name) and annotation.id == "Final"


def script_constants(script_file: str | Path) -> list[tuple[str, object, str]]:
    """The settings of a script: its module-level UPPER_CASE constants, in order.

    Returns (name, default value, help text from the trailing comment). A
    setting is `NAME = <literal>  # help` (numbers, strings, booleans, None,
    tuples/lists of them). A public UPPER_CASE name annotated `Final` is a
    fixed fact and no flag; any other form (no trailing comment, a computed
    value, another annotation, several targets) raises InputError naming the
    line, so a constant never silently stops being a flag.
    """
    script_file = Path(script_file)
    source = script_file.read_text(encoding="utf-8")
    comments = _constant_comments(source)
    constants = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign):
            if isinstance(node.target, ast.Name) and _is_public_constant(node.target.id):
                if not _is_final(node.annotation):
                    raise InputError(
                        f"{script_file.name} line {node.lineno}: {node.target.id} is annotated, "
                        f"so it would silently not be a flag; write it as {SETTING_FORM}."
                    )
            continue
        if not isinstance(node, ast.Assign):
            continue
        names = [
            name.id
            for target in node.targets
            for name in ast.walk(target)
            if isinstance(name, ast.Name) and _is_public_constant(name.id)
        ]
        if not names:
            continue
        target = node.targets[0]
        if len(node.targets) != 1 or not isinstance(target, ast.Name):
            raise InputError(
                f"{script_file.name} line {node.lineno}: {', '.join(names)} must be assigned "
                f"one at a time, as {SETTING_FORM}."
            )
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise InputError(
                f"{script_file.name} line {node.lineno}: {target.id} has a computed value, so "
                f"it cannot be a flag; write it as {SETTING_FORM}."
            ) from None
        help_text = comments.get(node.end_lineno, "")
        if not help_text:
            raise InputError(
                f"{script_file.name} line {node.lineno}: {target.id} has no trailing comment, "
                f"so it would silently not be a flag; write it as {SETTING_FORM}."
            )
        constants.append((target.id, value, help_text))
    return constants


def declared_choices(help_text: str) -> list[str] | None:
    """The values a comment such as "copy | hardlink | symlink: how ..." allows, or None."""
    match = CHOICES_COMMENT.match(help_text)
    return [choice.strip() for choice in match.group(1).split("|")] if match else None


def parse_settings(
    script_file: str | Path,
    argv: list[str] | None = None,
    choices: dict[str, Iterable[str]] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse flags made from a script's UPPER_CASE constants.

    The module docstring's first paragraph is the `--help` description. Types
    follow the defaults: bool -> `--flag/--no-flag`, int, float, str; a tuple or
    list default takes several values; a None default takes a string. Allowed
    values come from the constant's comment ("a | b: ...") or from `choices`
    (name -> values; it wins over the comment). `extra` may add flags that are
    not constants (e.g. `--evaluate-only`). Every script also gets `--verbose`
    (TensorFlow's own log lines) and, without a PROGRESS constant,
    `--progress/--no-progress`. Attribute names are the constant names in lower case.
    """
    source = Path(script_file).read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    parser = argparse.ArgumentParser(
        prog=Path(script_file).name,
        description=docstring.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    choices = choices or {}
    constants = script_constants(script_file)
    for name, default, help_text in constants:
        flag = "--" + name.lower().replace("_", "-")
        options: dict[str, object] = {"default": default, "help": help_text, "dest": name.lower()}
        allowed = list(choices[name]) if name in choices else declared_choices(help_text)
        if allowed is not None:
            if default is not None and default not in allowed:
                raise InputError(
                    f"{Path(script_file).name}: {name} = {default!r} is not one of "
                    f"{', '.join(allowed)}."
                )
            options["choices"] = allowed
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, (tuple, list)):
            options["nargs"] = "+"
            options["type"] = type(default[0]) if default else str
        elif isinstance(default, (int, float)):
            options["type"] = type(default)
        else:
            options["type"] = str
        parser.add_argument(flag, **options)
    names = {name for name, _default, _help in constants}
    if "VERBOSE" not in names:
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's own log lines (CUDA, XLA, absl) too",
        )
    if "PROGRESS" not in names:
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="show progress bars",
        )
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def run_script(main: Callable[[], object]) -> None:
    """Run a script's `main()`; bad input ends in one sentence and exit status 2."""
    log_filter = quiet_native_logs(sys.argv[1:])
    try:
        main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        print(
            "interrupted: outputs already completed are kept, nothing half-written.",
            file=sys.stderr,
        )
        sys.exit(130)
    finally:
        if log_filter is not None:
            log_filter.close()


# ---------------------------------------------------------------------------
# Outputs: refuse existing ones, write atomically, clear leftovers
# ---------------------------------------------------------------------------


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
        try:
            path.parent.mkdir(parents=True)
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
