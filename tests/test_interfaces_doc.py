"""docs/interfaces.md, the newcomer's map, names only what the code has: the first name of
every bullet under a `## <module path>.py` heading (`## cnn_sentinel/scene/reading.py`) must
exist in that module."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "interfaces.md"
BULLET = re.compile(r"^- `([A-Za-z_][A-Za-z0-9_]*)")


def documented_names() -> dict[str, list[str]]:
    """{module: [first name of each bullet]} for the sections headed `## <path>.py`."""
    names: dict[str, list[str]] = {}
    module = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## ([a-z_/]+)\.py\b", line)
        if line.startswith("## "):
            module = heading.group(1).replace("/", ".") if heading else None
            if module:
                names[module] = []
        elif module and (match := BULLET.match(line)):
            names[module].append(match.group(1))
    return names


def test_every_documented_name_exists_in_its_module():
    names = documented_names()
    assert len(names) >= 8 and sum(len(found) for found in names.values()) >= 40, names
    missing = [
        f"{module}.{name}"
        for module, found in names.items()
        for name in found
        if not hasattr(importlib.import_module(module), name)
    ]
    assert not missing, f"docs/interfaces.md names what the code lacks: {missing}"
