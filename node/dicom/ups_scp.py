"""The UPS SCP service: the node as task manager (Unified Procedure Step, DICOM PS3.4 Annex CC).

Offered by :class:`node.dicom.scp.DicomListener` beside Storage (``services=``,
:mod:`node.dicom.services`) when ``[ups] enabled``. The SCP role of every UPS SOP class
but Event, whose SCU role it takes:

* UPS Push (1.2.840.10008.5.1.4.34.6.1): N-CREATE, N-GET, N-ACTION Request Cancel;
* UPS Pull (…34.6.3): C-FIND, N-GET, N-SET, N-ACTION Change UPS State;
* UPS Watch (…34.6.2): N-ACTION Subscribe / Unsubscribe / Suspend Global Subscription
  (to one UPS, globally 1.2.840.10008.5.1.4.34.5, or filtered 1.2.840.10008.5.1.4.34.5.1
  with matching keys), N-GET, C-FIND, Request Cancel;
* UPS Query (…34.6.5): C-FIND;
* UPS Event (…34.6.4): N-EVENT-REPORT sent to the subscribers, each on its own association
  opened by the node (:class:`EventSender`): UPS State Report (1), UPS Cancel Requested (2),
  UPS Progress Report (3) and SCP Status Change (4, RESTARTED / WARM START when the
  listener starts, to the subscribers and to the ``[ups] event_receivers`` marked ``fallback``).

Every N-* request must name the UPS Push SOP class as its Affected/Requested SOP class,
whichever UPS context it arrives on (CC.3.1); another class is answered 0x0122. What a
request *does* (the state table, the content checks, the final-state requirements) is
not decided here: the service is given those rules (:class:`UpsRules`, the node passes
:mod:`node.workflow.ups`), so this module knows DIMSE and no medicine. The ledger is the
UPS database (:mod:`node.ledger.workitems`); a state change is decided inside the
ledger's write transaction, so two performers cannot both claim a UPS.

Receiving AEs: a subscription names the AE that receives the events; the node must know
where it listens, from ``[ups] event_receivers`` (AE title, host, port); another AE is
answered C308. Deletion locks are granted: a COMPLETED or CANCELED UPS is kept for
``[ups] retention_days`` and longer while a lock holds it. C-FIND matches as PS3.4
C.2.2.2 says (universal, single value, wild card ``*``/``?``, UID list, date/time range,
sequence matching) and never returns the Transaction UID; N-GET never returns it either.
Nothing here logs a patient's name, ID or birth date: logs name the UPS by its UID.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext

from node.config import Settings, UpsReceiver
from node.dicom.audit import AuditLog
from node.dicom.services import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Peers, audit_quietly
from node.ledger import Ledger, Workitem, WorkitemChange, utcnow

__all__ = [
    "EVENT_TYPES",
    "PURGE_EVERY_S",
    "UPS_EVENT",
    "UPS_PULL",
    "UPS_PUSH",
    "UPS_QUERY",
    "UPS_WATCH",
    "EventReport",
    "EventSender",
    "UpsRules",
    "UpsService",
    "matches",
    "response_identifier",
]

_log = logging.getLogger("cardionode.ups")

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
UPS_QUERY = "1.2.840.10008.5.1.4.34.6.5"
#: seconds between two purges of final UPSs past retention (at start, then at a creation once this has passed)
PURGE_EVERY_S = 3600.0
#: the Event Type IDs of UPS N-EVENT-REPORTs (CC.2.4.1)
EVENT_TYPES = {"state": 1, "cancel-requested": 2, "progress": 3, "scp-status": 4, "assigned": 5}

_TRANSACTION_UID = Tag(0x0008, 0x1195)
_GLOBAL = "1.2.840.10008.5.1.4.34.5"
_FILTERED = "1.2.840.10008.5.1.4.34.5.1"
#: the attributes whose value (at creation) or update (N-SET) triggers a UPS Assigned event (5, CC.2.4.3)
_ASSIGNMENT = ("ScheduledStationNameCodeSequence", "ScheduledHumanPerformersSequence")
_SUCCESS_OR_WARNING = (0x0000, 0x0001, 0xB300, 0xB301, 0xB304, 0xB305, 0xB306)


class UpsRules(Protocol):
    """What a UPS request does (PS3.4 Annex CC): the node passes :mod:`node.workflow.ups`."""

    Status: Any

    def check_creation(self, request: Dataset, *, sop_instance_uid: str, worklist_label: str, now: datetime) -> Any:
        ...

    def outcome(self, request: str, state: str | None) -> Any:
        ...

    def change_state_request(self, requested_state: str, given_uid: str, state: str | None,
                             recorded_uid: str) -> str | None:
        ...

    def request_cancel(self, state: str | None, *, performed_by_node: bool, performer_subscribed: bool,
                       node_cancels: bool) -> Any:
        ...

    def set_status(self, state: str | None, recorded_uid: str, modification: Dataset) -> tuple[int, str]:
        ...

    def final_state_problems(self, ups: Dataset, target: str) -> list[str]:
        ...

    def complete_cancellation(self, ups: Dataset, now: datetime, *, reason: Dataset | None = None) -> None:
        ...


# ---------------------------------------------------------------------------- datasets


def _to_json(ds: Dataset) -> dict[str, Any]:
    kept = Dataset()
    kept.update(ds)
    if _TRANSACTION_UID in kept:
        del kept[_TRANSACTION_UID]
    return dict(kept.to_json_dict())


def _from_json(data: Mapping[str, Any]) -> Dataset:
    return Dataset.from_json(dict(data))


def _text(ds: Dataset | None, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def _summary(ups: Dataset) -> dict[str, Any]:
    """The ledger's columns of a UPS (what `cardionode status` shows, no patient data)."""
    progress: float | None = None
    description = ""
    items = ups.get("ProcedureStepProgressInformationSequence") or []
    if items:
        value = items[0].get("ProcedureStepProgress")
        progress = float(value) if value not in (None, "") else None
        description = _text(items[0], "ProcedureStepProgressDescription")
    return {
        "input_readiness": _text(ups, "InputReadinessState")[:16],
        "priority": _text(ups, "ScheduledProcedureStepPriority")[:8],
        "label": _text(ups, "ProcedureStepLabel"),
        "worklist_label": _text(ups, "WorklistLabel")[:64],
        "study_uid": _text(ups, "StudyInstanceUID")[:64],
        "progress": progress,
        "progress_description": description,
        "attributes": _to_json(ups),
    }


def _progress_information(ups: Dataset) -> Any:
    items = ups.get("ProcedureStepProgressInformationSequence") or []
    if not items:
        return None
    item = items[0]
    return (_text(item, "ProcedureStepProgress"), _text(item, "ProcedureStepProgressDescription"),
            str(item.get("ProcedureStepCommunicationsURISequence", "")))


# ---------------------------------------------------------------------------- C-FIND matching (PS3.4 C.2.2.2)

_RANGE_VRS = ("DA", "DT", "TM")


def _values(element_value: Any) -> list[str]:
    if element_value is None:
        return []
    if isinstance(element_value, (list, MultiValue)):
        return [str(v) for v in element_value]
    return [str(element_value)]


def _in_range(value: str, key: str) -> bool:
    low, _, high = key.partition("-")
    return (not low or value >= low) and (not high or value[: len(high)] <= high)


def _wildcard(key: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key) + r"\Z", re.S)


def _element_matches(stored: Any, key_element: Any) -> bool:
    key = key_element.value
    if key_element.VR == "SQ":
        if not key:  # universal
            return True
        item_key = key[0]
        if not len(item_key):  # an empty item: universal
            return True
        return any(matches(item, item_key) for item in (stored.value if stored is not None else []) or [])
    key_text = "" if key is None else str(key)
    if key_text in ("", "*"):
        return True
    values = _values(stored.value) if stored is not None else []
    if key_element.VR == "UI":
        wanted = set(_values(key))
        return any(v in wanted for v in values)
    if key_element.VR in _RANGE_VRS and "-" in key_text:
        return any(_in_range(v, key_text) for v in values)
    if "*" in key_text or "?" in key_text:
        pattern = _wildcard(key_text)
        return any(pattern.match(v) for v in values)
    if key_element.VR == "PN":
        return any(v.upper() == key_text.upper() for v in values)
    return any(v == key_text for v in values)


def matches(ups: Dataset, keys: Dataset) -> bool:
    """Whether ``ups`` matches every key of the C-FIND identifier ``keys`` (empty keys match everything;
    the Transaction UID is never a key)."""
    for key_element in keys:
        if key_element.tag == _TRANSACTION_UID or key_element.tag.element == 0 or key_element.keyword == "SpecificCharacterSet":
            continue
        if not _element_matches(ups.get(key_element.tag), key_element):
            return False
    return True


def response_identifier(ups: Dataset, keys: Dataset) -> Dataset:
    """The C-FIND response identifier for ``ups``: each key of ``keys`` with the UPS's value (empty when it has
    none); a sequence key with an item returns, in each of the UPS's items, the keys of that item."""
    out = Dataset()
    for key_element in keys:
        tag = key_element.tag
        if tag == _TRANSACTION_UID or tag.element == 0:
            continue
        stored = ups.get(tag)
        if key_element.VR == "SQ":
            items = list(stored.value) if stored is not None and stored.value else []
            if key_element.value and len(key_element.value[0]):
                items = [response_identifier(item, key_element.value[0]) for item in items]
            out.add_new(tag, "SQ", Sequence(items))
        elif stored is not None:
            out.add(stored)
        else:
            out.add_new(tag, key_element.VR, None)
    if "SpecificCharacterSet" in ups:
        out.SpecificCharacterSet = ups.SpecificCharacterSet
    return out


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventReport:
    """One N-EVENT-REPORT to send: to ``ae_title``, ``event_type`` (:data:`EVENT_TYPES`) about the UPS
    ``uid`` (the global subscription UID for SCP Status Change), with the event information ``info``."""

    ae_title: str
    event_type: int
    uid: str
    info: Dataset


class EventSender:
    """Sends the UPS N-EVENT-REPORTs in order, from one thread, on associations the node opens to each
    receiver (UPS Event context, default role). A report that fails is logged and dropped: PS3.4 CC.2.4.3
    asks no queueing or retry (subscribers poll with C-FIND or N-GET as their floor)."""

    def __init__(self, settings: Settings, receivers: Mapping[str, UpsReceiver]) -> None:
        self.settings = settings
        self.receivers = receivers
        self._queue: queue.Queue[EventReport | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ups-events", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then stop (at most ``timeout_s`` seconds)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def put(self, report: EventReport) -> None:
        self._queue.put(report)

    def idle(self) -> bool:
        """Nothing queued (the last report may still be on its way)."""
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            report = self._queue.get()
            try:
                if report is None:
                    return
                self._send([report])
            except Exception:
                _log.exception("UPS event to %s not sent", report.ae_title if report else "")
                self.failed += 1
            finally:
                self._queue.task_done()

    def _send(self, batch: list[EventReport]) -> None:
        receiver = self.receivers.get(batch[0].ae_title)
        if receiver is None:
            _log.warning("UPS event for %s dropped: no [ups] event_receivers entry", batch[0].ae_title)
            self.failed += len(batch)
            return
        ae = AE(ae_title=self.settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.network_timeout_s
        ae.add_requested_context(UPS_EVENT)
        assoc = ae.associate(receiver.host, receiver.port, ae_title=receiver.ae_title)
        if not assoc.is_established:
            _log.warning("UPS events to %s (%s:%d) not sent: association not established",
                         receiver.ae_title, receiver.host, receiver.port)
            self.failed += len(batch)
            return
        try:
            for report in batch:
                status, _ = assoc.send_n_event_report(report.info, report.event_type, UPS_PUSH, report.uid)
                code = int(getattr(status, "Status", -1))
                if code == 0x0000:
                    self.sent += 1
                else:
                    self.failed += 1
                    _log.warning("UPS event %d for %s answered 0x%04X by %s", report.event_type, report.uid,
                                 code & 0xFFFF, receiver.ae_title)
        finally:
            assoc.release()


# ---------------------------------------------------------------------------- the service


class UpsService:
    """The UPS SCP (see the module docstring) over ``ledger``, deciding with ``rules``.

    ``node_cancels(uid)``: whether the node cancels a UPS it performs itself when a peer
    requests it; by default it does not (C313: the node does not stop a job it started).
    """

    counters: tuple[str, ...] = ("ups_requests",)

    def __init__(self, settings: Settings, ledger: Ledger, rules: UpsRules, *, audit: AuditLog | None = None,
                 node_cancels: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.rules = rules
        self.audit = audit
        self.node_cancels = node_cancels or (lambda uid: False)
        self.receivers = {r.ae_title.strip(): r for r in settings.ups.event_receivers}
        self.events = EventSender(settings, self.receivers)
        self._peers: Peers | None = None
        self._purged_at = 0.0  # time.monotonic() of the last purge

    # ---------------------------------------------------------------- DicomService
    def contexts(self) -> list[PresentationContext]:
        return [build_context(uid) for uid in (UPS_PUSH, UPS_PULL, UPS_WATCH, UPS_QUERY)]

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        self._peers = peers
        return [
            (evt.EVT_N_CREATE, self._on_create),
            (evt.EVT_N_SET, self._on_set),
            (evt.EVT_N_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_action),
            (evt.EVT_C_FIND, self._on_find),
        ]

    def prepare(self) -> None:
        """Start the event sender, drop final UPSs past retention, and tell who must know that the SCP
        restarted (SCP Status Change, RESTARTED, subscriptions and UPS list kept: WARM START)."""
        self.events.start()
        self.purge()
        info = Dataset()
        info.SCPStatus = "RESTARTED"
        info.SubscriptionListStatus = "WARM START"
        info.UnifiedProcedureStepListStatus = "WARM START"
        aes = [r.ae_title.strip() for r in self.settings.ups.event_receivers if r.fallback]
        aes += [s.ae_title for s in self.ledger.ups_subscriptions.find()]
        for ae in dict.fromkeys(aes):
            self.events.put(EventReport(ae, EVENT_TYPES["scp-status"], _GLOBAL, info))

    def close(self) -> None:
        """Send the queued events and stop the sender."""
        self.events.stop()

    def purge(self) -> list[str]:
        """Delete the COMPLETED and CANCELED UPSs older than ``[ups] retention_days`` that no deletion lock holds."""
        self._purged_at = time.monotonic()
        cutoff = utcnow() - timedelta(days=self.settings.ups.retention_days)
        return self.ledger.workitems.purge_final(cutoff, self.ledger.ups_subscriptions.locked())

    # ---------------------------------------------------------------- helpers
    def _count(self, event: evt.Event) -> str:
        peer = self._peers.get(event.assoc) if self._peers is not None else None
        if peer is not None:
            peer.count("ups_requests")
            return peer.calling_ae
        return str(event.assoc.requestor.ae_title).strip()

    def _subscribers(self, uid: str) -> list[str]:
        return [s.ae_title for s in self.ledger.ups_subscriptions.find(ups_uids=[uid])]

    def _report(self, uid: str, event_type: str, info: Dataset, aes: list[str] | None = None) -> None:
        for ae in aes if aes is not None else self._subscribers(uid):
            self.events.put(EventReport(ae, EVENT_TYPES[event_type], uid, info))

    @staticmethod
    def _state_info(ups: Dataset, state: str) -> Dataset:
        info = Dataset()
        info.ProcedureStepState = state
        info.InputReadinessState = _text(ups, "InputReadinessState")
        if state == "CANCELED":
            items = ups.get("ProcedureStepProgressInformationSequence") or []
            if items and "ReasonForCancellation" in items[0]:
                info.ReasonForCancellation = items[0].ReasonForCancellation
            if items and items[0].get("ProcedureStepDiscontinuationReasonCodeSequence"):
                info.ProcedureStepDiscontinuationReasonCodeSequence = \
                    items[0].ProcedureStepDiscontinuationReasonCodeSequence
        return info

    @staticmethod
    def _failure(status: int, comment: str) -> tuple[Any, Dataset | None]:
        """A refusal: the status with an Error Comment (UIDs and attribute names only, never patient data)."""
        _log.info("UPS request refused 0x%04X: %s", status, comment)
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = comment[:64]
        return answer, None

    # ---------------------------------------------------------------- N-CREATE
    def _on_create(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        calling = self._count(event)
        request: Any = event.request
        if str(request.AffectedSOPClassUID or "") != UPS_PUSH:
            return self._failure(0x0122, "N-CREATE for a SOP class other than UPS Push")
        uid = str(request.AffectedSOPInstanceUID or "") or f"2.25.{uuid.uuid4().int}"
        status, ups, why = self.create(event.attribute_list, uid, calling_ae=calling)
        if ups is None:
            return self._failure(status, why)
        reply = Dataset()
        reply.update(ups)
        if request.AffectedSOPInstanceUID is None:
            reply.AffectedSOPInstanceUID = uid
        return status, reply

    def create(self, request: Dataset, uid: str, *, calling_ae: str = "") -> tuple[int, Dataset | None, str]:
        """Create the UPS ``uid`` from an N-CREATE data set (also for UPSs the node makes itself, ``calling_ae``
        empty); the subscribers by global subscription get its State Report.

        Returns
        -------
        status : int
            0x0000, B300, or the failure (PS3.4 CC.2.5.4).
        ups : Dataset or None
            The UPS as kept (None on failure).
        why : str
            The failure or the modifications, in words.
        """
        if time.monotonic() - self._purged_at > PURGE_EVERY_S:
            self.purge()
        existing = self.ledger.workitems.get(uid)
        if existing is not None:
            return self.rules.outcome("create", existing.state).status, None, f"UPS {uid} exists"
        creation = self.rules.check_creation(request, sop_instance_uid=uid,
                                             worklist_label=self.settings.ups.worklist_label, now=datetime.now())
        if creation.status not in _SUCCESS_OR_WARNING:
            return creation.status, None, "; ".join(creation.problems)
        ups: Dataset = creation.dataset
        if not self.ledger.workitems.create(uid, state="SCHEDULED", role="manager",
                                            reason=f"created by {calling_ae or 'the node'}", **_summary(ups)):
            return self.rules.outcome("create", "SCHEDULED").status, None, f"UPS {uid} exists"
        if creation.changes:
            _log.info("UPS %s created with modifications: %s", uid, "; ".join(creation.changes))
        audit_quietly(self.audit, "ups.created", uid=uid, calling_ae=calling_ae, status=creation.status)
        for sub in self.ledger.ups_subscriptions.find(ups_uids=[_GLOBAL, _FILTERED]):
            if sub.ups_uid == _FILTERED and not matches(ups, _from_json(sub.filter)):
                continue
            if self.ledger.ups_subscriptions.subscribe(sub.ae_title, [uid], sub.deletion_lock, keep_existing=True):
                self._report(uid, "state", self._state_info(ups, "SCHEDULED"), [sub.ae_title])
                assigned = self._assigned_info(ups)
                if assigned is not None:
                    self._report(uid, "assigned", assigned, [sub.ae_title])
        return creation.status, ups, "; ".join(creation.changes)

    @staticmethod
    def _assigned_info(ups: Dataset) -> Dataset | None:
        """The UPS Assigned event information (event 5, Table CC.2.4-1: the Scheduled Station Name Code
        Sequence, the Human Performer Code Sequence and Organization of the scheduled human performer), or
        None when neither a station nor a human performer is scheduled."""
        info = Dataset()
        if ups.get("ScheduledStationNameCodeSequence"):
            info.ScheduledStationNameCodeSequence = ups.ScheduledStationNameCodeSequence
        performers = ups.get("ScheduledHumanPerformersSequence") or []
        for keyword in ("HumanPerformerCodeSequence", "HumanPerformerOrganization"):
            if performers and performers[0].get(keyword):
                info[keyword] = performers[0][keyword]
        return info if len(info) else None

    # ---------------------------------------------------------------- N-GET
    def _on_get(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        self._count(event)
        request: Any = event.request
        if str(request.RequestedSOPClassUID or "") != UPS_PUSH:
            return self._failure(0x0122, "N-GET for a SOP class other than UPS Push")
        uid = str(request.RequestedSOPInstanceUID or "")
        row = self.ledger.workitems.get(uid)
        if row is None:
            return self._failure(self.rules.Status.NO_SUCH_UPS, f"N-GET of unknown UPS {uid}")
        ups = _from_json(row.attributes)
        tags = request.AttributeIdentifierList
        if not tags:
            return 0x0000, ups
        out = Dataset()
        for tag in (tags if isinstance(tags, (list, MultiValue)) else [tags]):
            tag = Tag(tag)
            if tag != _TRANSACTION_UID and tag in ups:
                out.add(ups[tag])
        return 0x0000, out

    # ---------------------------------------------------------------- N-SET
    def _on_set(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        self._count(event)
        request: Any = event.request
        if str(request.RequestedSOPClassUID or "") != UPS_PUSH:
            return self._failure(0x0122, "N-SET for a SOP class other than UPS Push")
        uid = str(request.RequestedSOPInstanceUID or "")
        modification: Dataset = event.modification_list
        status, why = self.update(uid, modification)
        if status != 0x0000:
            return self._failure(status, f"N-SET of UPS {uid}: {why}")
        reply = Dataset()
        reply.update(modification)
        if _TRANSACTION_UID in reply:
            del reply[_TRANSACTION_UID]
        return 0x0000, reply

    def update(self, uid: str, modification: Dataset) -> tuple[int, str]:
        """Set attributes of the UPS ``uid`` as an N-SET does (PS3.4 CC.2.6; the node performing its own UPS
        calls it too, with its Transaction UID): each attribute given replaces the UPS's, sequences whole; a
        change of Input Readiness State is State-Reported, of the progress Progress-Reported, of the scheduled
        station or human performers Assigned-Reported. Returns the status and, on failure, why."""
        result: dict[str, Any] = {}

        def decide(row: Workitem | None) -> WorkitemChange | None:
            status, why = self.rules.set_status(row.state if row else None, row.transaction_uid if row else "",
                                                modification)
            result["status"], result["why"] = status, why
            if row is None or status != 0x0000:
                return None
            ups = _from_json(row.attributes)
            before = (_text(ups, "InputReadinessState"), _progress_information(ups))
            for element in modification:
                if element.tag != _TRANSACTION_UID:
                    ups[element.tag] = element
            result["ups"], result["state"] = ups, row.state
            result["readiness"] = _text(ups, "InputReadinessState") != before[0]
            result["progress"] = _progress_information(ups) != before[1]
            result["assigned"] = any(k in modification for k in _ASSIGNMENT)
            return WorkitemChange(_summary(ups), "N-SET")

        self.ledger.workitems.change(uid, decide)
        if result["status"] != 0x0000:
            return int(result["status"]), str(result["why"])
        ups = result["ups"]
        if result["readiness"]:
            self._report(uid, "state", self._state_info(ups, result["state"]))
        if result["progress"]:
            info = Dataset()
            info.ProcedureStepProgressInformationSequence = ups.ProcedureStepProgressInformationSequence
            self._report(uid, "progress", info)
        if result["assigned"]:
            self._report(uid, "assigned", self._assigned_info(ups) or Dataset())
        return 0x0000, ""

    # ---------------------------------------------------------------- N-ACTION
    def _on_action(self, event: evt.Event) -> tuple[Any, Dataset | None]:
        calling = self._count(event)
        request: Any = event.request
        if str(request.RequestedSOPClassUID or "") != UPS_PUSH:
            return self._failure(0x0122, "N-ACTION for a SOP class other than UPS Push")
        uid = str(request.RequestedSOPInstanceUID or "")
        info: Dataset = event.action_information or Dataset()
        action = int(event.action_type or 0)
        if action == 1:
            return self._change_state(uid, info, calling)
        if action == 2:
            return self._request_cancel(uid, info, calling)
        if action in (3, 4, 5):
            return self._subscription(action, uid, info)
        return self._failure(self.rules.Status.NO_SUCH_ACTION, f"N-ACTION type {action}")

    def _change_state(self, uid: str, info: Dataset, calling: str) -> tuple[Any, Dataset | None]:
        status, why = self.change_state(uid, _text(info, "ProcedureStepState"), _text(info, "TransactionUID"),
                                        performer_ae=calling)
        if status in _SUCCESS_OR_WARNING:
            return status, None
        return self._failure(status, f"Change UPS State of {uid}: {why}")

    def change_state(self, uid: str, requested: str, transaction_uid: str, *, performer_ae: str) -> tuple[int, str]:
        """Change the state of the UPS ``uid`` as an N-ACTION Change UPS State does (PS3.4 Table CC.1.1-2,
        final-state requirements, State Report to the subscribers). ``performer_ae``: the calling AE title of a
        peer, ``""`` when the node itself claims (it then performs the step: a Request UPS Cancel is its to
        decide). Returns the status and, on failure, why."""
        result: dict[str, Any] = {"status": None, "why": ""}

        def decide(row: Workitem | None) -> WorkitemChange | None:
            state = row.state if row else None
            which = self.rules.change_state_request(requested, transaction_uid, state,
                                                    row.transaction_uid if row else "")
            if which is None:
                result["status"], result["why"] = self.rules.Status.INVALID_ATTRIBUTE_VALUE, \
                    f"Procedure Step State {requested!r} is not a UPS state"
                return None
            out = self.rules.outcome(which, state)
            result["status"], result["why"] = out.status, f"{which} on a UPS {state or 'that does not exist'}"
            if row is None or out.state is None:
                return None
            ups = _from_json(row.attributes)
            if out.state == "CANCELED":
                self.rules.complete_cancellation(ups, datetime.now())
            if "check-final-state" in out.effects:
                problems = self.rules.final_state_problems(ups, out.state)
                if problems:
                    result["status"], result["why"] = out.otherwise, "; ".join(problems)
                    return None
            ups.ProcedureStepState = out.state
            fields = _summary(ups)
            fields["state"] = out.state
            if "record-transaction-uid" in out.effects:
                fields["transaction_uid"], fields["performer_ae"] = transaction_uid, performer_ae[:16]
            result["ups"], result["report"] = ups, "report-state" in out.effects
            return WorkitemChange(fields, f"Change UPS State by {performer_ae or 'the node'}")

        self.ledger.workitems.change(uid, decide)
        status = int(result["status"])
        if "ups" in result:
            ups = result["ups"]
            audit_quietly(self.audit, "ups.state", uid=uid, calling_ae=performer_ae,
                          state=_text(ups, "ProcedureStepState"))
            if result["report"]:
                self._report(uid, "state", self._state_info(ups, _text(ups, "ProcedureStepState")))
        return status, "" if status == 0x0000 else str(result["why"])

    def _request_cancel(self, uid: str, info: Dataset, calling: str) -> tuple[Any, Dataset | None]:
        result: dict[str, Any] = {"status": None}
        subscribers = self._subscribers(uid)

        def decide(row: Workitem | None) -> WorkitemChange | None:
            state = row.state if row else None
            by_node = row is not None and state == "IN PROGRESS" and not row.performer_ae
            out = self.rules.request_cancel(
                state, performed_by_node=by_node,
                performer_subscribed=row is not None and row.performer_ae in subscribers,
                node_cancels=by_node and self.node_cancels(uid))
            result["status"], result["effects"], result["state"] = out.status, out.effects, state
            if row is None or out.status not in _SUCCESS_OR_WARNING or (out.state is None and not out.effects):
                return None
            ups = _from_json(row.attributes)
            fields: dict[str, Any] = {"cancel_requested": True}
            if out.state == "CANCELED":
                self.rules.complete_cancellation(ups, datetime.now(), reason=info)
                ups.ProcedureStepState = "CANCELED"
                fields.update(_summary(ups), state="CANCELED")
                if "cancel-through-in-progress" in out.effects:
                    # the SCP claims it itself (a UID nobody else holds), then cancels it
                    fields["transaction_uid"] = f"2.25.{uuid.uuid4().int}"
            result["ups"] = ups
            return WorkitemChange(fields, f"cancel requested by {calling}")

        self.ledger.workitems.change(uid, decide)
        status = int(result["status"])
        if status not in _SUCCESS_OR_WARNING:
            return self._failure(status, f"Request UPS Cancel of {uid} ({result['state'] or 'no such UPS'})")
        ups = result.get("ups")
        effects = result["effects"]
        if ups is not None and "report-cancel-requested" in effects:
            requested = Dataset()
            requested.RequestingAE = calling
            for keyword in ("ReasonForCancellation", "ProcedureStepDiscontinuationReasonCodeSequence",
                            "ContactURI", "ContactDisplayName"):
                if keyword in info:
                    requested[keyword] = info[keyword]
            self._report(uid, "cancel-requested", requested, subscribers)
        if ups is not None and "cancel-through-in-progress" in effects:
            self._report(uid, "state", self._state_info(ups, "IN PROGRESS"), subscribers)
        if ups is not None and "report-state" in effects:
            self._report(uid, "state", self._state_info(ups, "CANCELED"), subscribers)
        if ups is not None:
            audit_quietly(self.audit, "ups.cancel_requested", uid=uid, calling_ae=calling,
                          state=_text(ups, "ProcedureStepState"))
        return status, None

    def _subscription(self, action: int, uid: str, info: Dataset) -> tuple[Any, Dataset | None]:
        status = self.rules.Status
        receiving = _text(info, "ReceivingAE")
        if not receiving:
            return self._failure(status.MISSING_ATTRIBUTE, "subscription without Receiving AE")
        if receiving not in self.receivers:
            return self._failure(status.RECEIVING_AE_UNKNOWN, f"Receiving AE {receiving} is not in [ups] event_receivers")
        subscriptions = self.ledger.ups_subscriptions
        lock = _text(info, "DeletionLock").upper() == "TRUE"
        if action == 5:  # suspend global: new UPSs no longer subscribed, existing ones stay
            if uid != _GLOBAL:
                return self._failure(status.ACTION_NOT_APPROPRIATE, f"suspend global subscription on {uid}")
            subscriptions.unsubscribe(receiving, [_GLOBAL, _FILTERED])
            return 0x0000, None
        if action == 4:
            if uid == _GLOBAL:  # unsubscribe globally: every subscription of the AE, global and specific
                subscriptions.unsubscribe(receiving)
            elif uid == _FILTERED:
                subscriptions.unsubscribe(receiving, [_FILTERED])
            elif self.ledger.workitems.get(uid) is None:
                return self._failure(status.NO_SUCH_UPS, f"unsubscribe from unknown UPS {uid}")
            else:
                subscriptions.unsubscribe(receiving, [uid])
            return 0x0000, None
        # action 3: subscribe
        if uid in (_GLOBAL, _FILTERED):
            keys = Dataset()
            if uid == _FILTERED:
                keys.update(info)
                for keyword in ("ReceivingAE", "DeletionLock"):
                    if keyword in keys:
                        del keys[keyword]
            subscriptions.subscribe(receiving, [uid], lock, _to_json(keys) if uid == _FILTERED else None)
            rows = [w for w in self.ledger.workitems.find() if uid == _GLOBAL or matches(_from_json(w.attributes), keys)]
            added = subscriptions.subscribe(receiving, [w.sop_instance_uid for w in rows], lock, keep_existing=True)
            if lock:  # Table CC.2.3-2: with lock, each UPS newly subscribed gets its initial State Report
                for item in rows:
                    if item.sop_instance_uid in added:
                        ups = _from_json(item.attributes)
                        self._report(item.sop_instance_uid, "state", self._state_info(ups, item.state), [receiving])
            return 0x0000, None
        row = self.ledger.workitems.get(uid)
        if row is None:
            return self._failure(status.NO_SUCH_UPS, f"subscription to unknown UPS {uid}")
        subscriptions.subscribe(receiving, [uid], lock)
        self._report(uid, "state", self._state_info(_from_json(row.attributes), row.state), [receiving])
        return 0x0000, None

    # ---------------------------------------------------------------- C-FIND
    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self._count(event)
        if str(event.request.AffectedSOPClassUID or "") not in (UPS_PULL, UPS_WATCH, UPS_QUERY):
            yield 0x0122, None
            return
        keys: Dataset = event.identifier
        for row in self.ledger.workitems.find():
            if event.is_cancelled:
                yield 0xFE00, None
                return
            ups = _from_json(row.attributes)
            if matches(ups, keys):
                yield 0xFF00, response_identifier(ups, keys)
        yield 0x0000, None
