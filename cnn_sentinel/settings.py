"""Settings of the numbered scripts: their UPPER_CASE constants as flags, and running them.

Every script starts with a block of UPPER_CASE settings, each written
`NAME = <literal>  # help text`. `parse_settings` turns them into flags of the
same name in kebab case (`BATCH_SIZE` -> `--batch-size`), so a user can either
edit the constant or pass the flag. A comment starting `a | b | c: ...` declares
the allowed values. Any other public UPPER_CASE name of a script must be marked
a fixed fact with `typing.Final` (`EPSG: Final = 32633`): a constant that would
silently not be a flag (no comment, a computed value, another annotation) is an
error at start-up, as is an edited default outside its choices.

`run_script` turns an `InputError` into one clear sentence and exit status 2,
with TensorFlow's native log lines filtered (console.quiet_native_logs).
"""

from __future__ import annotations

import argparse
import ast
import copy
import io
import re
import signal
import sys
import tokenize
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from cnn_sentinel.console import quiet_native_logs
from cnn_sentinel.errors import EXIT_INPUT_ERROR, InputError
from cnn_sentinel.outputs import Terminated, interrupt_on_sigterm

# Flags every script gets unless it says otherwise: TensorFlow's own log lines, progress bars.
COMMON_FLAGS = ("verbose", "progress")
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


def readable_default(action: argparse.Action) -> str:
    """A flag's default as --help shows it: none for an unset one (None, empty), values
    joined by spaces, --flag or --no-flag for an on/off one."""
    default = action.default
    if default is None or default is argparse.SUPPRESS or default in ((), [], ""):
        return ""
    if isinstance(action, argparse.BooleanOptionalAction):
        flag = action.option_strings[0]
        return flag if default else "--no-" + flag[2:]
    if isinstance(default, bool):  # store_true / store_false
        return ""
    if isinstance(default, (tuple, list)):
        return " ".join(str(value) for value in default)
    return str(default)


# A constant's comment says what its None default means ("None: the scene's folder");
# --help, where no None is typed, says "unset:" instead.
NONE_MEANING = re.compile(r"\bNone(?: =|:)")


class SettingsHelpFormatter(argparse.HelpFormatter):
    """--help with each flag's default as a user writes it (`readable_default`), never a
    Python literal such as () or None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace(" (default: %(default)s)", "")
        text = NONE_MEANING.sub("unset:", text)
        default = readable_default(action)
        if default and action.option_strings:
            text += f" (default: {default.replace('%', '%%')})"
        return text


def parse_settings(
    script_file: str | Path,
    argv: list[str] | None = None,
    choices: dict[str, Iterable[str]] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    common_flags: Iterable[str] = COMMON_FLAGS,
) -> argparse.Namespace:
    """Parse flags made from a script's UPPER_CASE constants.

    The module docstring's first paragraph is the `--help` description. Types
    follow the defaults: bool -> `--flag/--no-flag`, int, float, str; a tuple or
    list default takes several values; a None default takes a string. Allowed
    values come from the constant's comment ("a | b: ...") or from `choices`
    (name -> values; it wins over the comment). `extra` may add flags that are
    not constants (e.g. `--evaluate-only`). A script also gets `--verbose`
    (TensorFlow's own log lines) and, without a PROGRESS constant,
    `--progress/--no-progress`, unless `common_flags` leaves them out (a script
    without TensorFlow or progress bars). --help shows each default as a user writes
    it (SettingsHelpFormatter). Attribute names are the constant names in lower case.
    """
    source = Path(script_file).read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    parser = argparse.ArgumentParser(
        prog=Path(script_file).name,
        description=docstring.split("\n\n")[0],
        formatter_class=SettingsHelpFormatter,
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
    common_flags = set(common_flags)
    if "VERBOSE" not in names and "verbose" in common_flags:
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's own log lines (CUDA, XLA, absl) too",
        )
    if "PROGRESS" not in names and "progress" in common_flags:
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="show progress bars",
        )
    if extra is not None:
        extra(parser)
    settings = parser.parse_args(argv)
    setattr(settings, GIVEN_ATTRIBUTE, _flags_given(parser, argv))
    return settings


# Where parse_settings keeps the names of the settings given as flags (see flags_given);
# private, so settings_values leaves it out of what a run records.
GIVEN_ATTRIBUTE = "_flags_given"


def _flags_given(parser: argparse.ArgumentParser, argv: list[str] | None) -> frozenset[str]:
    """The attribute names of the flags present in `argv`, whatever their value: the
    same parser with every default suppressed sets only those."""
    bare = copy.deepcopy(parser)
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(bare.parse_args(argv)))


def flags_given(settings: argparse.Namespace) -> frozenset[str]:
    """Names (lower case) of the settings the user passed as flags, even when a flag's
    value equals the default: `--batch-size 128` counts where BATCH_SIZE = 128."""
    return getattr(settings, GIVEN_ATTRIBUTE, frozenset())


def settings_values(settings: argparse.Namespace) -> dict:
    """The settings as a plain dict (what model.json records), private entries left out."""
    return {name: value for name, value in vars(settings).items() if not name.startswith("_")}


def user_warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as a script's user sees it: "warning: <message>", without the file,
    line number and source line of the code that raised it (warnings.formatwarning)."""
    return f"warning: {message}\n"


def run_script(main: Callable[[], object]) -> None:
    """Run a script's `main()`; bad input ends in one sentence and exit status 2.
    Ctrl-C and SIGTERM end it alike: one line, temporaries removed, exit 130 or 143.
    Warnings print as one "warning: ..." line, without internal paths."""
    warnings.formatwarning = user_warning_line
    interrupt_on_sigterm()
    log_filter = quiet_native_logs(sys.argv[1:])
    try:
        main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt as interruption:  # Ctrl-C, or SIGTERM (outputs.Terminated)
        print(
            "interrupted: outputs already completed are kept, nothing half-written.",
            file=sys.stderr,
        )
        # 128 + the signal's number, as a shell reports a process the signal ended.
        sys.exit(128 + (signal.SIGTERM if isinstance(interruption, Terminated) else signal.SIGINT))
    finally:
        if log_filter is not None:
            log_filter.close()
