"""Fonts for plots labelled with class names, whatever their alphabet.

matplotlib's own font (DejaVu Sans) covers Latin, Greek and Cyrillic; class names in
other scripts (Chinese, Japanese, Thai, ...) would draw as boxes, each with a
"Glyph missing" warning. `fonts_for` adds an installed font that has the missing
characters, or says once that none has them.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Iterable, Iterator


@functools.cache
def _characters(font_path: str) -> frozenset[int]:
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(font_path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _default_font_path() -> str:
    from matplotlib import font_manager, rcParams

    return font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))


def font_with(characters: Iterable[str]) -> str | None:
    """The name of an installed font that has every one of `characters`, or None."""
    from matplotlib import font_manager

    wanted = {ord(character) for character in characters}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda entry: entry.fname):
        # matplotlib's "Last Resort" font maps every character to a placeholder box.
        if not entry.name.startswith("Last Resort") and wanted <= _characters(entry.fname):
            return entry.name
    return None


@functools.cache
def _say_no_font_has(characters: str) -> None:
    print(
        f"note: no installed font has the characters {characters} of the class names, so "
        "plots draw them as boxes; install one that has them (e.g. Noto Sans CJK, "
        "fonts-noto-cjk) to see them.",
        file=sys.stderr,
    )


@contextlib.contextmanager
def fonts_for(texts: Iterable[str]) -> Iterator[None]:
    """matplotlib settings under which `texts` (class names) draw with real glyphs: the
    default font, then an installed font with the characters it lacks. When no font
    has them, one note on stderr (once per process and set of characters) and no
    "Glyph missing" warnings. Wrap the whole plot, savefig included (glyphs are drawn there).
    """
    import matplotlib

    default = _characters(_default_font_path())
    missing = sorted(
        {character for text in texts for character in str(text)}
        - {chr(code) for code in default}
        - set(" \t\n")
    )
    if not missing:
        yield
        return
    family = font_with(missing)
    settings = {}
    if family is not None:
        settings["font.family"] = [*matplotlib.rcParams["font.family"], family]
    with matplotlib.rc_context(settings), warnings.catch_warnings():
        if family is None:
            _say_no_font_has("".join(missing))
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield
