"""The tooling pyproject.toml configures: ruff's formatter and linter on the whole tree, and mypy on the library.

They run here, as tests, so that the README's test command — which is exactly what CI (`.ci/run`) runs — checks them
too, with the versions the `dev` extra installs, and nobody needs a second command to know the tree is clean.
"""

from __future__ import annotations

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


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.slow] if name == "mypy" else []) for name in CHECKS]
)
def test_the_tree_passes(name):
    result = subprocess.run([sys.executable, "-m", *CHECKS[name]], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"`{' '.join(CHECKS[name])}` failed:\n{result.stdout}{result.stderr}"
