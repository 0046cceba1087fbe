"""README.md: its first code block is the two make commands, and every code block marked
runnable (a fenced ```bash block whose first line is `# runnable`) runs and exits with 0.

The runnable blocks continue from one another (data -> 01 -> statistics.py -> training
-> 06), so they run in README order in one temporary folder (the session fixture
`readme_chain` of conftest.py, which test_demo reuses). Running one test alone first
runs the blocks before it.
"""

from __future__ import annotations

import pytest
from helpers import README, code_blocks, runnable_blocks

RUNNABLE = runnable_blocks(README.read_text(encoding="utf-8"))
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


def test_readme_has_runnable_blocks():
    assert len(RUNNABLE) >= 5


@pytest.mark.parametrize(
    "index", range(len(RUNNABLE)), ids=[f"block{index}" for index in range(len(RUNNABLE))]
)
def test_runnable_block(readme_chain, index):
    result = readme_chain.run_through(index)
    assert result.returncode == 0, (
        f"README block {index} failed:\n{RUNNABLE[index]}\n--- stdout:\n{result.stdout[-3000:]}"
        f"\n--- stderr:\n{result.stderr[-3000:]}"
    )
    noise = [line for line in result.stderr.splitlines() if any(w in line for w in NATIVE_NOISE)]
    assert not noise, f"README block {index} printed TensorFlow's native log lines: {noise[:3]}"
