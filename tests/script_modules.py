"""Load a numbered script as a module: its file name starts with a digit, so no plain import."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_script(file_name: str, module_name: str) -> ModuleType:
    """Execute REPO_ROOT/file_name as a module called `module_name` (never "statistics":
    under that name statistics.py becomes the standard-library module)."""
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
