"""Live facts about the node for ``/readyz``, ``/metrics`` and the overview page (:class:`node.web.context.NodeProbe`).

Two probes, one per way the web app runs:

* :class:`LiveProbe` — ``cardionode serve``: the web app runs inside the node process and looks at
  the running :class:`node.service.Node` itself (its listener object, its local workers);
* :class:`StandaloneProbe` — ``cardionode web``: the web app runs alone beside a node on the same
  data directory and ledger; the listener is known from the data directory's node lock
  (:mod:`node.ops.running`), the workers are not seen.

Both check the same four things, each by one rule, and ``/readyz`` is ready when all four are:

``ledger``
    a trivial query answers (the newest job row; :func:`ledger_state`);
``broker``
    the broker answers within :data:`BROKER_TIMEOUT_S` (:func:`node.queue.broker.broker_reachable`);
``listener``
    bound and accepting (live), or a node holds the data directory's lock (standalone);
``disk``
    free space of ``data_dir`` at least ``disk_watermark_mb``
    (:func:`node.dicom.storage.disk_space_problem`, the rule by which the listener refuses associations).

``workers`` is informative, never a readiness condition: local worker processes alive against
those configured (live); remote workers are not observed.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from node.config import Settings
from node.dicom.storage import disk_space_problem
from node.ledger import Ledger
from node.ops.running import running_node
from node.queue.broker import broker_reachable, queue_depths
from node.web.context import ComponentState

if TYPE_CHECKING:
    from node.service import Node

__all__ = [
    "BROKER_TIMEOUT_S",
    "READINESS",
    "LiveProbe",
    "StandaloneProbe",
    "disk_free_bytes",
    "disk_state",
    "ledger_state",
]

#: seconds the broker has to answer a probe
BROKER_TIMEOUT_S = 2.0
#: the components whose state decides readiness (``workers`` is shown, not required)
READINESS: tuple[str, ...] = ("ledger", "broker", "listener", "disk")


def disk_free_bytes(settings: Settings) -> int | None:
    """Free bytes of the file system holding ``data_dir``, or None when it cannot be read."""
    try:
        return int(shutil.disk_usage(settings.data_dir).free)
    except OSError:
        return None


def ledger_state(ledger: Ledger) -> ComponentState:
    """``ledger``: whether a trivial query answers."""
    try:
        ledger.jobs.find(limit=1)
    except Exception as exc:  # the database's own errors, whatever the driver: the probe reports them
        return ComponentState("ledger", False, f"the ledger does not answer: {type(exc).__name__}: {str(exc)[:300]}")
    return ComponentState("ledger", True, "answers")


def disk_state(settings: Settings) -> ComponentState:
    """``disk``: free space of ``data_dir`` against ``disk_watermark_mb`` (the listener's rule)."""
    try:
        problem = disk_space_problem(settings.data_dir, settings.disk_watermark_mb)
    except OSError as exc:
        return ComponentState("disk", False, f"cannot read the free space of {settings.data_dir}: {exc}")
    if problem is not None:
        return ComponentState("disk", False, problem)
    free = disk_free_bytes(settings) or 0
    return ComponentState(
        "disk", True, f"{free / 2**20:.0f} MiB free in {settings.data_dir} (watermark {settings.disk_watermark_mb:g} MiB)"
    )


def _broker_state(settings: Settings) -> ComponentState:
    ok, words = broker_reachable(settings, BROKER_TIMEOUT_S)
    return ComponentState("broker", ok, words)


class LiveProbe:
    """The probe of ``cardionode serve``: looks at the running ``node`` (:class:`node.service.Node`)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def components(self) -> list[ComponentState]:
        """ledger, broker, listener, disk (the readiness conditions), then workers (informative)."""
        settings = self.node.settings
        ledger = getattr(self.node, "ledger", None)  # set by Node.start
        states = [
            ledger_state(ledger) if ledger is not None else ComponentState("ledger", False, "not opened yet"),
            _broker_state(settings),
            self._listener(),
            disk_state(settings),
            self._workers(),
        ]
        return states

    def _listener(self) -> ComponentState:
        listener = self.node.listener
        if listener is None:
            return ComponentState("listener", False, "not started")
        try:
            port = listener.port  # raises RuntimeError once stopped
        except RuntimeError:
            return ComponentState("listener", False, "stopped")
        settings = self.node.settings
        return ComponentState("listener", True, f"{settings.ae_title} listening on {settings.bind_address}:{port}")

    def _workers(self) -> ComponentState:
        configured = len(self.node.settings.workers)
        if configured == 0:
            return ComponentState("workers", True, "no local workers configured; remote workers are not observed")
        alive = sum(1 for process in self.node.workers if process.poll() is None)
        return ComponentState("workers", alive == configured, f"{alive} of {configured} local worker group(s) running")

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue, from the broker (empty when it does not answer)."""
        return queue_depths(self.node.settings, BROKER_TIMEOUT_S)


class StandaloneProbe:
    """The probe of ``cardionode web``: a node runs elsewhere on the same data directory (or not at all).

    ``ledger``: the web app's ledger (None opens one from ``settings``, closed by :meth:`close`).
    """

    def __init__(self, settings: Settings, ledger: Ledger | None = None) -> None:
        self.settings = settings
        self._own_ledger = ledger is None
        self.ledger = ledger if ledger is not None else Ledger.from_settings(settings)

    def components(self) -> list[ComponentState]:
        """ledger, broker, listener, disk (the readiness conditions), then workers (informative)."""
        return [
            ledger_state(self.ledger),
            _broker_state(self.settings),
            self._listener(),
            disk_state(self.settings),
            ComponentState("workers", True, "not observed by `cardionode web`; see the node's log"),
        ]

    def _listener(self) -> ComponentState:
        try:
            holder = running_node(self.settings.node_lock_path)
        except OSError as exc:
            return ComponentState("listener", False, f"cannot read the node lock {self.settings.node_lock_path}: {exc}")
        if holder is None:
            return ComponentState("listener", False, f"no node runs with {self.settings.data_dir} (no process holds its lock)")
        return ComponentState("listener", True, holder.describe())

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue, from the broker (empty when it does not answer)."""
        return queue_depths(self.settings, BROKER_TIMEOUT_S)

    def close(self) -> None:
        """Close the ledger this probe opened (not one it was given)."""
        if self._own_ledger:
            self.ledger.close()
