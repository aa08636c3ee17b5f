"""What every trainer shares: seeding, the progress bar and the result record.

Training is deterministic for a given seed on CPU (:func:`seed_everything`: fixed
torch/numpy seeds, deterministic algorithms). Progress goes to stderr as plain text.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

__all__ = ["Progress", "TrainResult", "seed_everything"]


class Progress:
    """Plain-text progress bar on stderr (one line per update when stderr is not a terminal)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_pct = -1

    def update(self, done: int, message: str = "") -> None:
        pct = int(100 * done / self.total)
        if not self.tty and pct // 10 == self.last_pct // 10 and done < self.total:
            return
        self.last_pct = pct
        filled = int(self.width * done / self.total)
        line = f"[{self.label}] |{'#' * filled}{'-' * (self.width - filled)}| {pct:3d}% {time.monotonic() - self.start:6.1f}s {message}"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def seed_everything(seed: int) -> None:
    """Seed numpy's global generator and torch, and ask torch for deterministic algorithms."""
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle: str
    out: Path
    network: nn.Module
    history: list[dict[str, float]]
    evaluation: dict[str, Any]
    seconds: float
