"""A small tmpfs (root only) for tests that need a file system that really fills up (ENOSPC)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "small_tmpfs"]


@contextmanager
def small_tmpfs(path: Path, size_mb: int = 24) -> Iterator[Path]:
    """Mount a ``size_mb`` MiB tmpfs at ``path`` for the block; skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root and CAP_SYS_ADMIN needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until its file system has no space left; returns the bytes written."""
    written = 0
    chunk = b"\0" * 2**20
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    try:  # the last partial block
        with open(path, "ab", buffering=0) as handle:
            while True:
                written += handle.write(b"\0" * 512)
    except OSError:
        pass
    os.sync()
    return written
