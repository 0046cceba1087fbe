"""No value in the docs contradicts the scripts.

README.md, CONTRIBUTING.md and docs/*.md quote script settings as `NAME = value` (in code
spans, also inside tables, and as lines of code blocks) and as `--flag value` followed by
"(default". A quote belongs to the scripts its paragraph, list item, table row or code
block names (`03`, `02/04`, `02-05`, `03_train_rgb_from_scratch.py`, `statistics.py`),
else to those its section heading names, and must equal the constant of one of them that
has it. A quote whose context names no script with that constant must equal it in every
script that has it. Names no entry script has (module facts such as CLOUD_CELL) are not
checked here. The values come from the scripts themselves, read by the project's own
settings parser.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import README, REPO_ROOT

from cnn_sentinel.settings import script_constants

DOCS = [README, REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SCRIPTS = [
    *sorted(REPO_ROOT.glob("[0-9][0-9]_*.py")),
    *(REPO_ROOT / name for name in ("statistics.py", "demo.py", "demo_data.py")),
]
CONSTANTS = {
    script.name: {name: value for name, value, _ in script_constants(script)} for script in SCRIPTS
}

CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
QUOTE = re.compile(r"^\s*([A-Z][A-Z0-9_]*) = (.+?)\s*$")
DEFAULT_FLAG = re.compile(r"`--([a-z0-9][a-z0-9-]*) ([^`\s]+)`\s*\((?:the )?default")
# 03, 02/04, 02-05, 03_train_rgb_from_scratch.py; not dates (2017-02-16), times (06:57),
# band names (B02) or numbers (0.05).
SCRIPT_NUMBER = re.compile(
    r"(?<![\w.:-])0([1-9])(?:-0([1-9]))?(?![\w.]|[-:]\d)|(?<![\w.])0([1-9])_[a-z_]+\.py"
)
SCRIPT_FILE = re.compile(r"(?<![\w/])(statistics|demo|demo_data)\.py\b")
FENCE = "```"
LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.) ")


@dataclass
class Quote:
    line: int
    name: str
    value: object
    context: str  # the paragraph, list item, table row or code block around the quote
    heading: str


def scripts_named(text: str) -> list[str]:
    """File names of the entry scripts a text names, by number or file name."""
    names = []
    for match in SCRIPT_NUMBER.finditer(text):
        first = int(match.group(1) or match.group(3))
        last = int(match.group(2) or first)
        for number in range(first, last + 1):
            names += [path.name for path in SCRIPTS if path.name.startswith(f"{number:02d}_")]
    names += [f"{match.group(1)}.py" for match in SCRIPT_FILE.finditer(text)]
    return list(dict.fromkeys(names))


def parse_value(text: str) -> object:
    """A quoted value as Python sees it (numbers, None, booleans, tuples), else the text."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("\"'")


def flag_constant(flag: str) -> str:
    return flag.replace("-", "_").upper()


def units(text: str) -> list[tuple[int, str, str, bool]]:
    """(first line number, text, heading, is code) of each paragraph, list item, table
    row and fenced code block of a markdown text."""
    found = []
    heading = ""
    current: list[str] = []
    start = 0
    in_fence = False

    def close() -> None:
        if current:
            found.append((start, "\n".join(current), heading, in_fence))
            current.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            if in_fence:
                close()
                in_fence = False
            else:
                close()
                in_fence, start = True, number + 1
            continue
        if in_fence:
            current.append(line)
            continue
        if not stripped or stripped.startswith(("#", "|")) or LIST_ITEM.match(line):
            close()
            if stripped.startswith("#"):
                heading = stripped
                continue
            if stripped.startswith("|"):
                found.append((number, stripped, heading, False))
                continue
        if stripped:
            if not current:
                start = number
            current.append(line)
    close()
    return found


def quotes(text: str) -> list[Quote]:
    """Every `NAME = value` and `--flag value` (default) quote of a markdown text."""
    found = []
    for start, unit, heading, is_code in units(text):
        for offset, line in enumerate(unit.splitlines()):
            if is_code:
                spans = [line.split("  #")[0]]
            else:
                spans = CODE_SPAN.findall(line)
                for flag, value in DEFAULT_FLAG.findall(line):
                    name = flag_constant(flag)
                    found.append(Quote(start + offset, name, parse_value(value), unit, heading))
            for span in spans:
                if match := QUOTE.match(span):
                    name, value = match.groups()
                    found.append(Quote(start + offset, name, parse_value(value), unit, heading))
    return found


def same_value(quoted: object, constant: object) -> bool:
    if isinstance(constant, bool) or isinstance(quoted, bool):
        return quoted is constant
    if isinstance(constant, int | float) and isinstance(quoted, int | float):
        return float(quoted) == float(constant)
    if constant is None:
        return quoted is None
    if isinstance(constant, tuple | list):
        return isinstance(quoted, tuple | list) and list(quoted) == list(constant)
    return str(quoted) == str(constant)


def contradictions(text: str, constants: dict[str, dict[str, object]] = CONSTANTS) -> list[str]:
    """One line per quote of `text` that no script it belongs to bears out."""
    problems = []
    for quote in quotes(text):
        having = [script for script, values in constants.items() if quote.name in values]
        if not having:
            continue
        owners = [s for s in scripts_named(quote.context) if s in having] or [
            s for s in scripts_named(quote.heading) if s in having
        ]
        check = any if owners else all
        owners = owners or having
        if not check(same_value(quote.value, constants[s][quote.name]) for s in owners):
            actual = ", ".join(f"{s} has {constants[s][quote.name]!r}" for s in owners)
            problems.append(f"line {quote.line}: {quote.name} = {quote.value!r}, but {actual}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(REPO_ROOT)) for doc in DOCS])
def test_no_doc_contradicts_a_script_constant(doc: Path):
    problems = contradictions(doc.read_text(encoding="utf-8"))
    assert not problems, f"{doc.relative_to(REPO_ROOT)} contradicts the scripts:\n" + "\n".join(
        problems
    )


def test_the_docs_quote_enough_values_to_check():
    """The check above is not empty: the tutorial alone quotes the fast recipe."""
    tutorial = quotes((REPO_ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8"))
    checked = {quote.name for quote in tutorial if any(quote.name in c for c in CONSTANTS.values())}
    assert {"BATCH_SIZE", "LEARNING_RATE", "PATIENCE", "ARCH", "OPTIMIZER"} <= checked


def test_the_readme_quotes_no_default():
    """The front page leaves defaults to `--help`: nothing there can drift."""
    readme = quotes(README.read_text(encoding="utf-8"))
    assert [q.name for q in readme if any(q.name in c for c in CONSTANTS.values())] == []


# ---------------------------------------------------------------------------
# The check itself, on doc text with known answers
# ---------------------------------------------------------------------------

FAKE = {
    "03_train_rgb_from_scratch.py": {"LEARNING_RATE": 0.1, "PATIENCE": 30, "BATCH_SIZE": 128},
    "02_train_rgb_finetuning.py": {"PATIENCE": 50, "BATCH_SIZE": 64},
    "05_train_ms_from_scratch.py": {"EPOCHS": 30, "BATCH_SIZE": 128, "ARCH": "resnet-valid-narrow"},
    "06_classify_image.py": {"METHOD": "auto", "TTA": False, "BBOX": ()},
    "statistics.py": {"METHOD": "exact"},
}


@pytest.mark.parametrize(
    "text",
    [
        "03 trains with Adam, `LEARNING_RATE = 0.001`, and stops after 50 epochs.",
        "| `03_train_rgb_from_scratch.py` | `split/` | `PATIENCE = 50` |",
        "The training scripts share `BATCH_SIZE = 64`.",
        "## 05: from scratch\n\nIt trains for `EPOCHS = 100` epochs.",
        "- 02 and 03 stop after `PATIENCE = 40` epochs.",
        "06 averages nothing unless asked (`TTA = True`).",
        "06 picks a method (`--method exact` (default)).",
        "```python\nARCH = 'vgg16'  # 05's backbone\n```",
    ],
    ids=["paragraph", "table-row", "no-script", "heading", "list-item", "boolean", "flag", "code"],
)
def test_a_wrong_value_is_a_contradiction(text):
    problems = contradictions(text, FAKE)
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    "text",
    [
        "03 trains with `LEARNING_RATE = 0.1` and `PATIENCE = 30`, 02 with `PATIENCE = 50`.",
        "03 and 05 share `BATCH_SIZE = 128`; 05 keeps `EPOCHS = 30`.",
        "## 02-03: training\n\nTraining steps take `BATCH_SIZE = 64` images in 02.",
        "statistics.py: `--method exact` (default); 06: `--method auto` (default), `TTA = False`.",
        "06 classifies all of the scene unless `BBOX = ()` is changed.",
        "A band `B02 = 5` and 2017-02-16, 06:57: `CLOUD_CELL = 8` is no script's constant.",
    ],
)
def test_a_right_value_passes(text):
    assert contradictions(text, FAKE) == []


def test_script_references():
    assert scripts_named("02/04, 03 and the 05_train_ms_from_scratch.py file") == [
        "02_train_rgb_finetuning.py",
        "04_train_ms_finetuning.py",
        "03_train_rgb_from_scratch.py",
        "05_train_ms_from_scratch.py",
    ]
    assert len(scripts_named("the training scripts 02-05")) == 4
    assert scripts_named("2017-02-16 at 06:57, bands B01 to B07, 0.05, 10.0.0.1") == []
    assert scripts_named("statistics.py and demo_data.py") == ["statistics.py", "demo_data.py"]
