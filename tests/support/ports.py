"""Free loopback ports, and waiting for a port or any other condition."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

__all__ = ["free_port", "port_open", "wait_for", "wait_for_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (asked from the OS)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def wait_for_port(port: int, timeout_s: float = 60.0, what: str | None = None,
                  process: subprocess.Popen[Any] | None = None, interval_s: float = 0.1) -> None:
    """Wait until ``port`` accepts connections; fail at once when ``process`` (the server) has exited."""

    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what or 'the server'} exited with {process.returncode} before listening on {port}")
        return port_open(port)

    wait_for(listening, timeout_s, what or f"something to listen on port {port}", interval_s)
