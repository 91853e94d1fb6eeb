"""Linters are part of the suite (ruff); they run on the whole project in a couple of seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.unit


def _beside_python(tool: str) -> str:
    """The venv's own copy: the one next to the running interpreter (a git worktree has no .venv of its
    own and runs the main checkout's), else the project's .venv."""
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.exists() else str(ROOT / ".venv/bin" / tool)


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or _beside_python("ruff")
    res = subprocess.run([ruff, "check", "--output-format", "concise", "imagebuild", "tasks.py", "tests"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_tasks_module_imports_and_lists():
    res = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for task in ("build", "list", "show", "validate", "steps", "boot-test", "clean", "test"):
        assert task in res.stdout


def test_mypy_is_clean():
    mypy = shutil.which("mypy") or _beside_python("mypy")
    res = subprocess.run([mypy, "imagebuild"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
