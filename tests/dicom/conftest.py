"""Fixtures of the listener tests: listeners in the test's own process, stopped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import RunningListener, listener_in_process


@pytest.fixture()
def start_listener(tmp_path: Path) -> Iterator[Callable[..., RunningListener]]:
    """Start a listener in this process (settings ``overrides`` as keywords), as many as a test needs."""
    running: list[RunningListener] = []

    def start(**overrides: Any) -> RunningListener:
        item = listener_in_process(tmp_path, **overrides)
        running.append(item)
        return item

    yield start
    for item in running:
        item.stop()
