"""Hostile bytes for tests that must show that the node refuses them without side effect.

:func:`malicious_pickle` is a real attack: unpickling it runs a shell command that
creates ``marker``; :func:`malicious_npy` is the same inside a ``.npy`` file (an object
array, which NumPy pickles, loaded by ``np.load(..., allow_pickle=True)``). A test plants it where the node or a worker reads, and asserts
both that the read is refused and that ``marker`` does not exist afterwards.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
from pathlib import Path

import numpy as np

__all__ = ["malicious_npy", "malicious_pickle"]


class _RunsCode:
    """Unpickling calls ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious_pickle(marker: Path) -> bytes:
    """A pickle that creates the file ``marker`` when it is loaded (any protocol-2+ reader)."""
    return pickle.dumps(_RunsCode(marker), protocol=pickle.HIGHEST_PROTOCOL)


def malicious_npy(marker: Path) -> bytes:
    """A ``.npy`` file of an object array whose item creates ``marker`` when the file is loaded with pickles allowed."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()
