"""What a single-core benchmark does before it measures: pin this process to one core.

Imported by the benchmark scripts run as ``python bench/<name>.py`` (their folder is first on
``sys.path``). The scripts set ``OMP_NUM_THREADS`` and its kin themselves, before numpy loads.
"""

from __future__ import annotations

import os

__all__ = ["pin_one_core"]


def pin_one_core() -> str:
    """Pin this process to the first core it may run on; return a line for the report saying what happened."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[0]})
        return f"pinned to core {cores[0]} of {len(cores)} available"
    except (AttributeError, OSError):
        return "could not pin to one core"
