"""README.md: its first code block is the two make commands, and every code block marked
runnable (a fenced ```bash block whose first line is `# runnable`) runs and exits with 0.

The runnable blocks continue from one another (data -> 01 -> statistics.py -> training
-> 06), so they run in README order in one temporary folder that holds links to the
repository's scripts, with this interpreter's folder first on PATH (`python` is the
interpreter running the tests). Running one test alone first runs the blocks before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
RUNNABLE_MARK = "# runnable"
BLOCK_TIMEOUT_S = 300


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a markdown text, in order.

    Blocks indented inside list items are found too (their indentation is removed).
    """
    dedented = re.sub(r"^[ \t]+(?=```)", "", text, flags=re.MULTILINE)
    blocks = []
    for match in FENCE.finditer(dedented):
        body = match.group(2)
        indent = min(
            (len(line) - len(line.lstrip()) for line in body.splitlines() if line.strip()),
            default=0,
        )
        body = "\n".join(line[indent:] for line in body.splitlines()) + "\n"
        blocks.append((match.group(1), body))
    return blocks


def runnable_blocks(text: str) -> list[str]:
    """Bodies of the ```bash blocks whose first line is `# runnable`."""
    return [
        body
        for language, body in code_blocks(text)
        if language == "bash" and body.lstrip().splitlines()[0].strip() == RUNNABLE_MARK
    ]


RUNNABLE = runnable_blocks(README.read_text(encoding="utf-8"))


def test_first_code_block_is_make_demo_and_make_test():
    language, body = code_blocks(README.read_text(encoding="utf-8"))[0]
    commands = [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    assert language == "bash"
    assert commands == ["make demo", "make test"]


def test_readme_has_runnable_blocks():
    assert len(RUNNABLE) >= 5


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """A folder with links to the repository's scripts, an environment whose `python` is
    this interpreter, and the results of the blocks run so far."""
    folder = tmp_path_factory.mktemp("readme")
    for script in REPO_ROOT.glob("*.py"):
        (folder / script.name).symlink_to(script)
    interpreter_folder = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        "PATH": interpreter_folder + os.pathsep + os.environ.get("PATH", ""),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    environment.pop("TF_CONFIG", None)
    return {"folder": folder, "environment": environment, "results": []}


def run_blocks_through(workspace: dict, index: int) -> subprocess.CompletedProcess:
    """Run the runnable blocks up to `index` that have not run yet; the block's result."""
    results = workspace["results"]
    while len(results) <= index:
        body = RUNNABLE[len(results)]
        if results and results[-1].returncode != 0:
            pytest.fail(f"an earlier runnable block failed, so block {index} cannot run")
        body = body.replace(".venv/bin/python", sys.executable)
        results.append(
            subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", body],
                cwd=workspace["folder"],
                env=workspace["environment"],
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
        )
    return results[index]


@pytest.mark.parametrize(
    "index", range(len(RUNNABLE)), ids=[f"block{index}" for index in range(len(RUNNABLE))]
)
def test_runnable_block(workspace, index):
    result = run_blocks_through(workspace, index)
    assert result.returncode == 0, (
        f"README block {index} failed:\n{RUNNABLE[index]}\n--- stdout:\n{result.stdout[-3000:]}"
        f"\n--- stderr:\n{result.stderr[-3000:]}"
    )
