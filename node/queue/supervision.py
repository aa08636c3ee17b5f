"""Who runs a step, and whether it is still alive: how the conductor notices a step whose worker died.

A worker records ownership of each task it takes in the result backend:

* ``RECEIVED`` (written by the worker's main process when the message arrives,
  :func:`node.queue.tasks.register`) with ``{"hostname", "pid", "at"}``: the worker's
  node name, its main process id and the time (s since the epoch);
* ``STARTED`` (Celery's ``task_track_started``, written by the pool process that
  runs it) with ``{"hostname", "pid"}``: the pid is the pool process.

The worker's node name is ``cardionode-<queues>-<main pid>@<host>``
(:func:`node.queue.worker.worker_argv`), so both states name the main process.
For a worker on this host, :func:`owner_problem` checks the main process; a step
whose worker's main process is gone (nobody will put its message back: the
SQLite broker restores taken messages only when the node starts), or which a
live worker took but did not start within ``start_timeout_s`` (a wedged pool
process, as after a pool process was killed between two steps), is sent again
by the conductor. A pool process that dies mid-task while its main process lives
is Celery's to handle (``task_reject_on_worker_lost``).
Remote workers are left to the broker (Redis visibility timeout).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["RECEIVED", "StepOwner", "owner_of", "owner_problem", "pid_alive"]

#: the Celery state a worker's main process records when it takes a step message
RECEIVED = "RECEIVED"

_NODENAME_RE = re.compile(r"^cardionode-[a-z-]+?-(?P<main>\d+)@(?P<host>.+)$")


@dataclass(frozen=True)
class StepOwner:
    """The worker that took a step: ``state`` (``RECEIVED`` or ``STARTED``), ``host``,
    ``main_pid``, ``pool_pid`` (STARTED only) and ``at`` (time of RECEIVED, s since the epoch; 0 unknown)."""

    state: str
    host: str
    main_pid: int
    pool_pid: int | None
    at: float


def owner_of(celery_state: str, meta: Any) -> StepOwner | None:
    """The owner recorded with a ``RECEIVED`` or ``STARTED`` state, or None (another state, or not a node worker)."""
    if celery_state not in (RECEIVED, "STARTED") or not isinstance(meta, dict):
        return None
    match = _NODENAME_RE.match(str(meta.get("hostname", "")))
    if match is None:
        return None
    pid = meta.get("pid")
    at = meta.get("at", 0.0)
    return StepOwner(
        celery_state, match["host"], int(match["main"]),
        int(pid) if celery_state == "STARTED" and isinstance(pid, int) else None,
        float(at) if isinstance(at, (int, float)) else 0.0,
    )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_problem(owner: StepOwner | None, now: float, start_timeout_s: float,
                  host: str | None = None) -> tuple[str, int | None] | None:
    """Why the step's owner can no longer finish it, or None (alive, remote or unknown).

    Returns ``(reason, stalled main pid)``: the pid is set when the worker's main process lives
    but did not start the step within ``start_timeout_s`` seconds (it must be restarted).
    """
    if owner is None or owner.host != (host or socket.gethostname()):
        return None
    if not pid_alive(owner.main_pid):
        return f"its worker (main process {owner.main_pid}) is gone", None
    # a pool process that died while the main process lives: Celery puts the message back itself
    # (task_reject_on_worker_lost), and its next delivery records a new owner
    if owner.state == RECEIVED and owner.at and now - owner.at > start_timeout_s:
        return (f"its worker (main process {owner.main_pid}) took it {now - owner.at:.0f} s ago "
                f"and did not start it", owner.main_pid)
    return None
