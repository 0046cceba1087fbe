"""README.md is a front page: at most 200 lines, its first code block the two make
commands. docs/tutorial.md: every code block marked runnable (a fenced ```bash block
whose first line is `# runnable`) runs and exits with 0.

The runnable blocks continue from one another (data -> 01 -> statistics.py -> training
-> 06), so they run in the tutorial's order in one temporary folder (the session fixture
`readme_chain` of conftest.py, which test_demo reuses). Running one test alone first
runs the blocks before it.
"""

from __future__ import annotations

import pytest
from helpers import README, TUTORIAL, code_blocks, runnable_blocks

RUNNABLE = runnable_blocks(TUTORIAL.read_text(encoding="utf-8"))
README_MOST_LINES = 200  # a front page; the manual lives in docs/
# Native TensorFlow/CUDA/absl start-up lines: none may reach a user (settings.run_script).
NATIVE_NOISE = (
    "cuInit",
    "cudart_stub",
    "absl::InitializeLog",
    "cpu_feature_guard",
    "W0000",
    "I0000",
)


def test_first_code_block_is_make_demo_and_make_test():
    language, body = code_blocks(README.read_text(encoding="utf-8"))[0]
    commands = [line.split("#")[0].strip() for line in body.splitlines() if line.strip()]
    assert language == "bash"
    assert commands == ["make demo", "make test"]


def test_readme_is_a_front_page_that_starts_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MOST_LINES
    # the title, a blank line, then a block of exactly the two commands: nothing above them
    assert lines[0].startswith("# ")
    assert (lines[1], lines[2], lines[5]) == ("", "```bash", "```")
    assert [line.split("#")[0].strip() for line in lines[3:5]] == ["make demo", "make test"]


def test_readme_runs_no_blocks_and_points_to_the_tutorial():
    assert runnable_blocks(README.read_text(encoding="utf-8")) == []
    assert "docs/tutorial.md" in README.read_text(encoding="utf-8")


def test_readme_has_runnable_blocks():
    assert len(RUNNABLE) >= 5


@pytest.mark.parametrize(
    "index", range(len(RUNNABLE)), ids=[f"block{index}" for index in range(len(RUNNABLE))]
)
def test_runnable_block(readme_chain, index):
    result = readme_chain.run_through(index)
    assert result.returncode == 0, (
        f"tutorial block {index} failed:\n{RUNNABLE[index]}\n--- stdout:\n{result.stdout[-3000:]}"
        f"\n--- stderr:\n{result.stderr[-3000:]}"
    )
    noise = [line for line in result.stderr.splitlines() if any(w in line for w in NATIVE_NOISE)]
    assert not noise, f"tutorial block {index} printed TensorFlow's native log lines: {noise[:3]}"
