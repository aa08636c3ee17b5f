"""What the web app is given: the settings, the ledger, the audit log and a view of the live node.

:class:`WebContext` is the one object every part of :mod:`node.web` (pages, actions,
``/metrics``, health, STOW-RS) receives. ``cardionode serve`` builds it from the running
:class:`node.service.Node` (listener, broker, workers in this process); ``cardionode web``
builds it from the configuration alone, for a node running elsewhere on the same ledger
(then ``storage`` is None and STOW-RS answers 503, and the probe reads the node lock and the
broker instead of the objects of a running node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from node.config import Settings
from node.dicom.audit import AuditLog
from node.dicom.storage import StorageService
from node.ledger import Ledger

__all__ = ["ComponentState", "NodeProbe", "WebContext"]


@dataclass(frozen=True)
class ComponentState:
    """One component of the node as ``/readyz`` and the overview page show it."""

    name: str  # ledger | broker | listener | disk | workers
    ok: bool
    detail: str  # plain words: "bound on 0.0.0.0:11112", "redis://127.0.0.1:6379/0 does not answer: ..."


class NodeProbe(Protocol):
    """Live facts about the node that the ledger does not hold."""

    def components(self) -> list[ComponentState]:
        """Every component's state now: ledger, broker, listener, disk (and workers seen, informative)."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per Celery queue (cpu, gpu, io); an empty dict when the broker cannot tell."""
        ...


@dataclass
class WebContext:
    """Everything the web app uses; built once at start."""

    settings: Settings
    ledger: Ledger
    probe: NodeProbe
    audit: AuditLog | None = None
    #: the listener's storage service (STOW-RS stores through it); None when the web app runs alone
    storage: StorageService | None = None
    #: called after a study was marked complete or a job retried from the page, to wake the conductor
    on_change: Callable[[], None] | None = None
