"""Shared command-line mechanics of the numbered scripts.

Every script starts with a block of UPPER_CASE constants, each with a one-line
comment. `parse_settings` turns that block into flags of the same name in kebab
case (`BATCH_SIZE` -> `--batch-size`), so a user can either edit the constant or
pass the flag. `run_script` turns an `InputError` into one clear sentence and
exit status 2. `atomic_output` writes an output under a temporary name and
renames it when complete, so nothing is ever half-written.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import shutil
import sys
import tokenize
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from image_functions import InputError

EXIT_INPUT_ERROR = 2


def _constant_comments(source: str) -> dict[int, str]:
    """Map line number -> trailing comment text for every line of `source`."""
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    return comments


def script_constants(script_file: str | Path) -> list[tuple[str, object, str]]:
    """The UPPER_CASE constants at module level of a script, in order.

    Returns (name, default value, help text from the trailing comment). A
    setting is a constant with a literal value (numbers, strings, booleans,
    None, tuples/lists of them) and a trailing `# comment`; constants without
    one are facts of the script (file names, tables) and get no flag.
    """
    source = Path(script_file).read_text(encoding="utf-8")
    comments = _constant_comments(source)
    constants = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Name) and target.id.isupper() and target.id[0].isalpha()):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        help_text = comments.get(node.end_lineno, "")
        if help_text:
            constants.append((target.id, value, help_text))
    return constants


def parse_settings(
    script_file: str | Path,
    argv: list[str] | None = None,
    choices: dict[str, Iterable[str]] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse flags made from a script's UPPER_CASE constants.

    The module docstring's first paragraph is the `--help` description. Types
    follow the defaults: bool -> `--flag/--no-flag`, int, float, str; a tuple or
    list default takes several values; a None default takes a string.
    `extra` may add flags that are not constants (e.g. `--evaluate-only`).
    Attribute names are the constant names in lower case.
    """
    source = Path(script_file).read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    parser = argparse.ArgumentParser(
        prog=Path(script_file).name,
        description=docstring.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    choices = choices or {}
    for name, default, help_text in script_constants(script_file):
        flag = "--" + name.lower().replace("_", "-")
        options: dict[str, object] = {
            "default": default,
            "help": help_text or " ",
            "dest": name.lower(),
        }
        if name in choices:
            options["choices"] = list(choices[name])
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
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def run_script(main: Callable[[], object]) -> None:
    """Run a script's `main()`; bad input ends in one sentence and exit status 2."""
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


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` on success.

    The temporary file or folder keeps the suffix of `path` (GDAL picks drivers
    by suffix). On any exception it is removed and `path` is left untouched.
    """
    path = Path(path)
    refuse_existing([path], overwrite)
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
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _remove(temporary)
    try:
        yield temporary
        if overwrite and path.exists() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(temporary, path)
        # GDAL keeps some metadata (category names, statistics) in a side file.
        for side_file in temporary.parent.glob(f"{temporary.name}.*"):
            os.replace(side_file, path.with_name(path.name + side_file.name[len(temporary.name) :]))
    finally:
        _remove(temporary)
        for side_file in temporary.parent.glob(f"{temporary.name}.*"):
            _remove(side_file)
