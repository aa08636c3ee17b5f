"""Whether a node runs on a data directory: the lock that ``serve`` and ``listen`` hold while they run.

`cardionode serve` and `cardionode listen` take an exclusive lock (:func:`fcntl.flock`) on
``<data_dir>/node.pid`` when they start and hold it until they exit; the file says who holds
it (process id, command, listening address and port, start time in UTC, as JSON). The kernel
drops the lock when the process ends, however it ends (``kill -9`` included), so a file left
behind never claims that a node runs. `cardionode status` and `cardionode config check` ask
:func:`running_node`; a second node on the same data directory is refused by
:meth:`NodeLock.acquire` (:class:`NodeAlreadyRunning`).

The lock covers one machine: a listener on another machine sharing a PostgreSQL ledger has
its own data directory and is not seen here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

__all__ = ["NodeAlreadyRunning", "NodeLock", "RunningNode", "running_node"]


@dataclass(frozen=True)
class RunningNode:
    """Who holds the lock: process id, ``command`` (``serve`` or ``listen``), the listening
    ``address`` and ``port``, and ``started_at`` (ISO 8601, UTC); zeros and empty strings
    when the file could not be read while its holder was writing it."""

    pid: int = 0
    command: str = ""
    address: str = ""
    port: int = 0
    started_at: str = ""

    def describe(self) -> str:
        """``serve, pid 1234, listening on 127.0.0.1:11112, since 2026-12-07 15:00:00 UTC`` (what is known)."""
        parts = [self.command or "a node"]
        if self.pid:
            parts.append(f"pid {self.pid}")
        if self.port:
            parts.append(f"listening on {self.address}:{self.port}")
        if self.started_at:
            parts.append(f"since {self.started_at.replace('T', ' ')[:19]} UTC")
        return ", ".join(parts)


class NodeAlreadyRunning(RuntimeError):
    """Another process holds the lock of this data directory; ``holder`` says who."""

    def __init__(self, path: Path, holder: RunningNode) -> None:
        super().__init__(f"a node already runs with this data directory ({holder.describe()}; lock {path})")
        self.path, self.holder = path, holder


def _read(handle: IO[str]) -> RunningNode:
    handle.seek(0)
    try:
        data = json.loads(handle.read() or "{}")
        return RunningNode(**{k: data[k] for k in RunningNode.__dataclass_fields__ if k in data})
    except (ValueError, TypeError):
        return RunningNode()


def running_node(path: Path) -> RunningNode | None:
    """The node holding the lock file ``path`` now, or None when no process holds it (or it does not exist)."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (held across the lock test)
    except OSError:  # no such file (no node ever ran here), or no folder of that name
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read(handle)
            raise
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


class NodeLock:
    """The lock of one data directory's node, held from :meth:`acquire` to :meth:`release` (or exit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self, command: str, address: str, port: int) -> None:
        """Take the lock and write who holds it; raises :class:`NodeAlreadyRunning` when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (kept open while the node runs)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read(handle)
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise NodeAlreadyRunning(self.path, holder) from None
            raise
        me = RunningNode(os.getpid(), command, address, port, datetime.now(UTC).isoformat(timespec="seconds"))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(asdict(me)) + "\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock (the file stays; :func:`running_node` then says no node runs)."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
