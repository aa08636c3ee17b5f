"""How the listener offers DICOM services, the pynetdicom way; and Verification (C-ECHO).

The listener (:class:`node.dicom.scp.DicomListener`) owns the association: its
policy, the AE, start and stop, and the association events (requested,
accepted, released, aborted). Each DICOM service it offers is a
:class:`DicomService` that contributes

* its presentation contexts (what the AE accepts, :meth:`DicomService.contexts`),
* ``(event, handler)`` pairs, as pynetdicom's ``evt_handlers`` take them
  (:meth:`DicomService.handlers`),
* the counters it keeps per association (:attr:`DicomService.counters`),
* and a :meth:`DicomService.prepare` step run before the socket is bound.

Verification (C-ECHO, :class:`VerificationService`, here) and Storage (C-STORE,
:class:`node.dicom.storage.StorageService`) are offered by every node; a UPS
Push SCP adds its N-CREATE, N-ACTION, N-SET, N-GET and C-FIND handlers the same
way, passed to the listener with ``services=``, without changing the listener.

Per accepted association the listener keeps a :class:`Peer` (calling AE
title, address, the services' counters, the studies touched); services find it
with :meth:`Peers.get` and count on it, and the listener logs and audits the
counts when the association closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import __version__
from node.dicom.audit import AuditLog
from node.uids import deterministic_uid

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "DicomService",
    "Peer",
    "Peers",
    "VerificationService",
    "audit_quietly",
]

_log = logging.getLogger("cardionode.scp")

#: Implementation Class UID of CardioNode (derived once from the project name), for the
#: A-ASSOCIATE negotiation and the File Meta of every file the node writes
IMPLEMENTATION_CLASS_UID = deterministic_uid("CardioNode", "implementation class")
IMPLEMENTATION_VERSION_NAME = f"CARDIONODE_{__version__.replace('.', '')}"[:16]


@dataclass
class Peer:
    """The requestor of one accepted association, and what the services counted on it."""

    calling_ae: str
    address: str
    counts: dict[str, int] = field(default_factory=dict)  # counter name -> count, in the services' order
    study_uids: set[str] = field(default_factory=set)

    def count(self, counter: str) -> None:
        """Add one to ``counter``."""
        self.counts[counter] = self.counts.get(counter, 0) + 1


class Peers:
    """The peers of the associations open now, by association (safe to use from the association threads).

    ``counters``: the counter names every :class:`Peer` starts with (at 0), in order.
    """

    def __init__(self, counters: Sequence[str] = ()) -> None:
        self.counters = tuple(counters)
        self._lock = threading.Lock()
        self._peers: dict[int, Peer] = {}

    def open(self, assoc: Any, calling_ae: str, address: str) -> Peer:
        """Start keeping the peer of an accepted association."""
        peer = Peer(calling_ae, address, dict.fromkeys(self.counters, 0))
        with self._lock:
            self._peers[id(assoc)] = peer
        return peer

    def get(self, assoc: Any) -> Peer | None:
        """The peer of ``assoc``, or None (an association the policy did not accept)."""
        with self._lock:
            return self._peers.get(id(assoc))

    def close(self, assoc: Any) -> Peer | None:
        """Stop keeping the peer of ``assoc``; returns it (None if it was not kept)."""
        with self._lock:
            return self._peers.pop(id(assoc), None)


class DicomService(Protocol):
    """A DICOM service the listener offers (see the module docstring)."""

    #: what the service counts per association (e.g. ``"stored"``), reported in this order at its end
    counters: tuple[str, ...]

    def contexts(self) -> list[PresentationContext]:
        """The presentation contexts to accept (abstract syntax and transfer syntaxes)."""
        ...

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        """The ``(event, handler)`` pairs to register; ``peers`` finds the peer of an event's association."""
        ...

    def prepare(self) -> None:
        """Get ready before the listener accepts associations (e.g. reconcile stored state)."""
        ...


class VerificationService:
    """Verification SCP: C-ECHO is answered Success (0x0000) on every accepted association."""

    counters: tuple[str, ...] = ()

    def contexts(self) -> list[PresentationContext]:
        return [build_context(Verification)]

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        return [(evt.EVT_C_ECHO, self._on_echo)]

    def prepare(self) -> None:
        return None

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000


def audit_quietly(audit: AuditLog | None, event: str, **fields: Any) -> None:
    """Record ``event`` in ``audit`` when there is one; a failing audit log is logged, never raised
    (the answer to a peer must not depend on it)."""
    if audit is not None:
        try:
            audit.record(event, **fields)
        except OSError:
            _log.exception("cannot write the audit log")
