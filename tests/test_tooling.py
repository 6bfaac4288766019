"""The tooling pyproject.toml configures: ruff's formatter and linter on the whole tree, and mypy on the library.

They run here, as tests, so that the README's test command — which is exactly what CI (`.ci/run`) runs — checks them
too, with the versions the `dev` extra installs, and nobody needs a second command to know the tree is clean.

mypy takes ~45 s of one core, and the suite leaves the second core of a 2-core machine idle about half the time: where
its test is collected, it starts at once in the background (`start_early`, from conftest.py), at a lower priority,
and its test only waits for the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKS = {
    "ruff format": ["ruff", "format", "--check", "."],
    "ruff check": ["ruff", "check", "."],
    "mypy": ["mypy"],  # what and how strictly: [tool.mypy] in pyproject.toml
}
EARLY = "mypy"
_started: dict[str, subprocess.Popen] = {}


def start_early(node_ids: list[str]) -> None:
    """Start the slow check in the background if its test is among `node_ids` (the session's collected tests)."""
    if any(node_id.endswith(f"test_tooling.py::test_the_tree_passes[{EARLY}]") for node_id in node_ids):
        _started[EARLY] = check = _start(EARLY)
        if hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, check.pid, 10)  # the tests themselves come first


def stop_early() -> None:
    """End a check started early whose test did not run (a session stopped by a failure, or interrupted)."""
    for check in _started.values():
        check.kill()
        check.communicate()
    _started.clear()


def _start(name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *CHECKS[name]], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.slow] if name == EARLY else []) for name in CHECKS]
)
def test_the_tree_passes(name):
    check = _started.pop(name, None) or _start(name)
    output, _ = check.communicate()
    assert check.returncode == 0, f"`{' '.join(CHECKS[name])}` failed:\n{output}"
