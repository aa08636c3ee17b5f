"""A UPS Pull and Watch SCU: how a task performer talks to a task manager (PS3.4 Annex CC), DIMSE only.

The groundwork of the node as AIW-I task performer against a site's task manager (issue 19,
item 2): :class:`UpsPullClient` opens one association proposing **UPS Pull and UPS Watch only,
never UPS Push**, and sends every N-GET, N-SET and N-ACTION with Requested SOP Class UPS Push
(CC.3.1). That is the interoperability trap of pynetdicom #509 and fo-dicom #1322: pynetdicom
sends a Push request on a Push context when one was accepted, and a strict SCP (dcm4chee-arc)
refuses it; with Pull only, it goes out on the Pull context with the Push class. C-FIND uses the
Pull model. Each call returns an :class:`Answer` (status, data set, Error Comment); what the
performer does with it (claim, write its Transaction UID to the ledger first, report progress,
complete) is decided above this module, which knows DIMSE and no medicine.

:class:`UpsEventReceiver` is the other half of UPS Watch: the Event SCU role on the node's own
listener (a :class:`node.dicom.services.DicomService`). The task manager opens an association
to the node proposing UPS Event (1.2.840.10008.5.1.4.34.6.4) and sends N-EVENT-REPORTs (State
Report, Cancel Requested, Progress, SCP Status Change, Assigned); each is answered Success and
handed to a callback, which the performer gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext

from node.dicom.services import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Peers
from node.dicom.ups_scp import UPS_EVENT, UPS_PULL, UPS_PUSH, UPS_WATCH

__all__ = ["Answer", "UpsEventReceiver", "UpsPullClient", "UpsUnreachable"]

_GLOBAL = "1.2.840.10008.5.1.4.34.5"


class UpsUnreachable(ConnectionError):
    """The task manager could not be reached, refused the association, or accepted neither Pull nor Watch."""


@dataclass(frozen=True)
class Answer:
    """A task manager's answer: the DIMSE ``status`` (None: no response, the association broke), the
    returned data set (the N-GET attributes), and its Error Comment ("" when none)."""

    status: int | None
    dataset: Dataset | None = None
    comment: str = ""

    @property
    def ok(self) -> bool:
        """Success or a warning (0x0000, 0x0001, 0xBxxx)."""
        return self.status is not None and (self.status in (0x0000, 0x0001) or self.status >> 12 == 0xB)


def _answer(status: Dataset | None, dataset: Dataset | None) -> Answer:
    if status is None or "Status" not in status:
        return Answer(None)
    return Answer(int(status.Status), dataset, str(status.get("ErrorComment", "") or ""))


class UpsPullClient:
    """One association from ``calling_ae`` to the task manager ``called_ae`` at ``host``:``port``
    (use as a context manager; :class:`UpsUnreachable` when it cannot be opened)."""

    def __init__(self, calling_ae: str, host: str, port: int, called_ae: str, *, timeout_s: float = 30.0) -> None:
        self.calling_ae, self.host, self.port, self.called_ae = calling_ae, host, port, called_ae
        self.timeout_s = timeout_s
        self.assoc: Any = None

    def __enter__(self) -> UpsPullClient:
        ae = AE(ae_title=self.calling_ae)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(UPS_PULL)  # never Push: see the module docstring
        ae.add_requested_context(UPS_WATCH)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise UpsUnreachable(f"{self.called_ae} at {self.host}:{self.port}: association not established")
        self.assoc = assoc
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    @property
    def accepted_classes(self) -> set[str]:
        """The abstract syntaxes the task manager accepted."""
        return {str(cx.abstract_syntax) for cx in self.assoc.accepted_contexts}

    # ------------------------------------------------------------------ Pull
    def find(self, keys: Dataset) -> tuple[Answer, list[Dataset]]:
        """C-FIND on the Pull model; the final answer and the identifiers of the pending responses."""
        found: list[Dataset] = []
        final = Answer(None)
        for status, identifier in self.assoc.send_c_find(keys, UPS_PULL):
            answer = _answer(status, None)
            if answer.status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
            else:
                final = answer
        return final, found

    def get(self, uid: str, keywords: Sequence[str] = ()) -> Answer:
        """N-GET of the UPS ``uid`` (``keywords``: the attributes asked; none: all)."""
        tags = [tag_for_keyword(k) for k in keywords]
        return _answer(*self.assoc.send_n_get([t for t in tags if t is not None], UPS_PUSH, uid))

    def update(self, uid: str, modification: Dataset, transaction_uid: str | None) -> Answer:
        """N-SET of the UPS ``uid``; ``transaction_uid`` is added when given (an IN PROGRESS UPS needs it,
        a SCHEDULED one must not have it)."""
        ds = Dataset()
        ds.update(modification)
        if transaction_uid:
            ds.TransactionUID = transaction_uid
        return _answer(*self.assoc.send_n_set(ds, UPS_PUSH, uid))

    def change_state(self, uid: str, state: str, transaction_uid: str) -> Answer:
        """N-ACTION Change UPS State (type 1) of the UPS ``uid`` to ``state`` with ``transaction_uid``; the claim
        is ``change_state(uid, "IN PROGRESS", new_transaction_uid)``."""
        ds = Dataset()
        ds.ProcedureStepState = state
        ds.TransactionUID = transaction_uid
        return _answer(*self.assoc.send_n_action(ds, 1, UPS_PUSH, uid))

    # ------------------------------------------------------------------ Watch
    def request_cancel(self, uid: str, reason: str = "") -> Answer:
        """N-ACTION Request UPS Cancel (type 2) of a UPS another performer holds."""
        ds = Dataset()
        ds.ReasonForCancellation = reason
        return _answer(*self.assoc.send_n_action(ds, 2, UPS_PUSH, uid))

    def subscribe(self, receiving_ae: str, uid: str = _GLOBAL, *, deletion_lock: bool = False,
                  keys: Dataset | None = None) -> Answer:
        """N-ACTION Subscribe (type 3) ``receiving_ae`` to the UPS ``uid`` (default: globally; the filtered global
        UID 1.2.840.10008.5.1.4.34.5.1 with matching ``keys``). A performer should not take deletion locks."""
        ds = Dataset()
        if keys is not None:
            ds.update(keys)
        ds.ReceivingAE = receiving_ae
        ds.DeletionLock = "TRUE" if deletion_lock else "FALSE"
        return _answer(*self.assoc.send_n_action(ds, 3, UPS_PUSH, uid))

    def unsubscribe(self, receiving_ae: str, uid: str = _GLOBAL) -> Answer:
        """N-ACTION Unsubscribe (type 4) ``receiving_ae`` from the UPS ``uid`` (default: from everything)."""
        ds = Dataset()
        ds.ReceivingAE = receiving_ae
        return _answer(*self.assoc.send_n_action(ds, 4, UPS_PUSH, uid))


class UpsEventReceiver:
    """Receives UPS N-EVENT-REPORTs on the node's listener (Event SCU role, a DicomService).

    ``on_event(event_type, ups_uid, information, calling_ae)`` gets each report (Event Type ID of
    PS3.4 CC.2.4.1, the Affected SOP Instance UID, the Event Information); it must not block long.
    A report for another SOP class than UPS Push is answered 0x0122, one the callback fails on 0x0110.
    """

    counters: tuple[str, ...] = ("ups_events",)

    def __init__(self, on_event: Callable[[int, str, Dataset, str], None]) -> None:
        self.on_event = on_event
        self._peers: Peers | None = None

    def contexts(self) -> list[PresentationContext]:
        return [build_context(UPS_EVENT)]

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        self._peers = peers
        return [(evt.EVT_N_EVENT_REPORT, self._on_report)]

    def prepare(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        request: Any = event.request
        peer = self._peers.get(event.assoc) if self._peers is not None else None
        if peer is not None:
            peer.count("ups_events")
        if str(request.AffectedSOPClassUID or "") != UPS_PUSH:
            return 0x0122, None
        calling = peer.calling_ae if peer is not None else str(event.assoc.requestor.ae_title).strip()
        try:
            self.on_event(int(event.event_type or 0), str(request.AffectedSOPInstanceUID or ""),
                          event.event_information or Dataset(), calling)
        except Exception:  # the task manager gets a failure; the node goes on
            logging.getLogger("cardionode.ups").exception("UPS event not handled")
            return 0x0110, None
        return 0x0000, None
