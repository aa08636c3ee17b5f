"""Fixtures shared by the whole suite."""

from __future__ import annotations

import random

import pytest


@pytest.fixture
def seed() -> int:
    """A fresh random seed for phantom tests; shown in the test id output on failure."""
    value = random.SystemRandom().randrange(2**31)
    print(f"random seed: {value}")
    return value
