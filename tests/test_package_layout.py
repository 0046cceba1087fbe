"""The layout a newcomer reads: few files at the top, a package whose imports only go
down (no cycle, counting imports inside functions too), and long modules that say why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cnn_sentinel"
# The top level: scripts 01-07, statistics.py, image_functions.py, demo.py and one more.
TOP_LEVEL_MAX_FILES = 11
# Top-level modules the package may import: the design's named helper of pixel facts.
TOP_LEVEL_HELPERS = ("image_functions",)
LONG_MODULE_LINES = 600
# A long module says why at its top: a docstring line "About 640 lines: <reason>".
LENGTH_REASON = re.compile(r"^About (\d+) lines: \S", re.MULTILINE)


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} for the package and the top-level .py files."""
    modules = {path.stem: path for path in REPO_ROOT.glob("*.py")}
    for path in (REPO_ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{project module: line} of every import in `path`, at module level or inside a
    function; `from package import module` counts as importing that module."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name in modules:
                found.setdefault(name, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for imported in sorted(graph.get(module, {})):
            if state.get(imported) == "open":
                return stack[stack.index(imported) :] + [imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_walk_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "cnn_sentinel.scene.blocks" in graph["cnn_sentinel.scene.predictors"]
    assert "cnn_sentinel.errors" in graph["image_functions"]
    # 06 imports the scene job, which imports the writers.
    assert "cnn_sentinel.scene.writers" in graph["cnn_sentinel.scene.job"]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_package_imports_only_itself_and_the_pixel_helpers():
    wrong = [
        f"{module} line {line} imports {imported}"
        for module, imports in import_graph().items()
        if module.startswith(PACKAGE)
        for imported, line in imports.items()
        if not imported.startswith(PACKAGE) and imported not in TOP_LEVEL_HELPERS
    ]
    assert not wrong, wrong


def test_the_scene_bottom_module_imports_nothing_of_the_project():
    """scene/blocks.py imports only the package's bottom, facts.py, which imports nothing."""
    graph = import_graph()
    assert set(graph["cnn_sentinel.scene.blocks"]) == {"cnn_sentinel.facts"}
    assert graph["cnn_sentinel.facts"] == {}


def test_the_top_level_holds_few_python_files():
    files = sorted(path.name for path in REPO_ROOT.glob("*.py"))
    assert len(files) <= TOP_LEVEL_MAX_FILES, files


def test_long_modules_say_why_at_their_top():
    unexplained = []
    for path in project_modules().values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines <= LONG_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        reason = LENGTH_REASON.search(docstring)
        # The stated length stays roughly true as the module changes.
        if reason is None or abs(int(reason.group(1)) - lines) > 60:
            unexplained.append(f"{path.relative_to(REPO_ROOT)} ({lines} lines)")
    assert not unexplained, (
        f"over {LONG_MODULE_LINES} lines, no 'About N lines: why': {unexplained}"
    )
