"""The UPS harness: the node's UPS SCP in the test's process, UPS requests as codec-neutral data, two
independent SCUs that send them (pynetdicom and npm ``dcmjs-dimse``), and an Event SCP that receives
the node's N-EVENT-REPORTs.

A *request* is a dict any codec can send (the dcmjs driver reads the same JSON,
``tests/support/js/ups_driver.js``)::

    {"op": "create" | "action" | "set" | "get" | "find", "uid": SOP Instance UID,
     "meta": SOP class of the presentation context (Pull, Watch, ...; Push when absent),
     "action": N-ACTION type, "dataset": {keyword: value, sequences as lists of dicts},
     "attributes": [keywords] (N-GET), "sopClass": C-FIND model, "requestedClass": a wrong SOP class on purpose}

Every N-* request names UPS Push as its SOP class (PS3.4 CC.3.1) and goes out on the context of
``meta``: both SCUs propose every UPS context, so a Push request on a Pull context is really tested.
A *result* is ``{"status": int, "dataset": {...} | None, "matches": [...]}`` (``matches``: C-FIND).
The UIDs of the SOP classes are written here as the standard gives them, not taken from the node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from tests.support import REPO
from tests.support.ports import free_port, port_open, wait_for

__all__ = [
    "EVENT",
    "DcmjsEventReceiver",
    "GLOBAL",
    "FILTERED",
    "JS_DIR",
    "PULL",
    "PUSH",
    "QUERY",
    "WATCH",
    "EventWatcher",
    "ScriptedTaskManager",
    "input_information",
    "UpsNode",
    "dataset_from",
    "final_attributes",
    "cancel_attributes",
    "new_uid",
    "require_dcmjs",
    "run_dcmjs",
    "run_pynetdicom",
    "ups_node",
    "workitem",
]

PUSH = "1.2.840.10008.5.1.4.34.6.1"
WATCH = "1.2.840.10008.5.1.4.34.6.2"
PULL = "1.2.840.10008.5.1.4.34.6.3"
EVENT = "1.2.840.10008.5.1.4.34.6.4"
QUERY = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
#: the folder of the dcmjs-dimse driver and its package.json (``npm ci --prefix tests/support/js``)
JS_DIR = REPO / "tests" / "support" / "js"


def new_uid() -> str:
    """A fresh UID (2.25 form)."""
    return f"2.25.{uuid.uuid4().int}"


def workitem(**overrides: Any) -> dict[str, Any]:
    """A UPS as a Task Requester creates it (PS3.4 Table CC.2.5-3: type 1 valued, type 2 present), a
    cardiac SPECT processing step; ``overrides`` replace or add keywords (``None`` removes one)."""
    ds: dict[str, Any] = {
        "ProcedureStepState": "SCHEDULED",
        "ScheduledProcedureStepPriority": "MEDIUM",
        "ProcedureStepLabel": "SPECT MPI quantification",
        "WorklistLabel": "CARDIONODE",
        "ScheduledProcedureStepStartDateTime": "20261207080000",
        "InputReadinessState": "READY",
        "ScheduledProcessingParametersSequence": [],
        "ScheduledStationNameCodeSequence": [],
        "ScheduledStationClassCodeSequence": [],
        "ScheduledStationGeographicLocationCodeSequence": [],
        "ScheduledWorkitemCodeSequence": [
            {"CodeValue": "110003", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Computer Aided Diagnosis"}],
        "CommentsOnTheScheduledProcedureStep": "",
        "InputInformationSequence": [],
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "PatientName": "",
        "PatientID": "",
        "PatientBirthDate": "",
        "PatientSex": "",
        "AdmissionID": "",
        "IssuerOfAdmissionIDSequence": [],
        "AdmittingDiagnosesDescription": "",
        "AdmittingDiagnosesCodeSequence": [],
        "ReferencedRequestSequence": [],
        "OtherPatientIDsSequence": [],
        "ProcedureStepProgressInformationSequence": [],
        "UnifiedProcedureStepPerformedProcedureSequence": [],
    }
    for key, value in overrides.items():
        if value is None:
            ds.pop(key, None)
        else:
            ds[key] = value
    return ds


def final_attributes(transaction_uid: str) -> dict[str, Any]:
    """The N-SET a performer sends before COMPLETED (the P attributes of PS3.4 CC.2.5.1.1), with its Transaction UID."""
    return {
        "TransactionUID": transaction_uid,
        "UnifiedProcedureStepPerformedProcedureSequence": [{
            "PerformedStationNameCodeSequence": [
                {"CodeValue": "CARDIONODE", "CodingSchemeDesignator": "99CARDIO", "CodeMeaning": "CardioNode"}],
            "PerformedProcedureStepStartDateTime": "20261207080100",
            "PerformedProcedureStepEndDateTime": "20261207080500",
            "PerformedWorkitemCodeSequence": [
                {"CodeValue": "110003", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Computer Aided Diagnosis"}],
            "OutputInformationSequence": [],
        }],
    }


def cancel_attributes(transaction_uid: str) -> dict[str, Any]:
    """The N-SET a performer sends before CANCELED (the X attributes: a discontinuation reason, CID 9300)."""
    return {
        "TransactionUID": transaction_uid,
        "ProcedureStepProgressInformationSequence": [{
            "ProcedureStepDiscontinuationReasonCodeSequence": [
                {"CodeValue": "110523", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Object Set incomplete"}],
            "ReasonForCancellation": "inputs not retrievable",
        }],
    }


def dataset_from(data: dict[str, Any]) -> Dataset:
    """A pydicom data set from a request's ``dataset`` (keywords; sequences as lists of dicts)."""
    ds = Dataset()
    for keyword, value in data.items():
        if isinstance(value, list) and (not value or isinstance(value[0], dict)) and keyword.endswith("Sequence"):
            setattr(ds, keyword, [dataset_from(item) for item in value])
        else:
            setattr(ds, keyword, value)
    return ds


def _plain(ds: Dataset | None) -> dict[str, Any] | None:
    if ds is None:
        return None
    out: dict[str, Any] = {}
    for element in ds:
        if element.tag.element == 0:
            continue
        key = element.keyword or str(element.tag)
        if element.VR == "SQ":
            out[key] = [_plain(item) for item in element.value]
        else:
            value = element.value
            out[key] = "" if value is None else (str(value) if not isinstance(value, (int, float)) else value)
    return out


# ---------------------------------------------------------------------------- the node's SCP


@dataclass
class UpsNode:
    """The node's listener with its UPS SCP, in the test's process."""

    listener: Any
    ledger: Any
    service: Any
    settings: Any

    @property
    def port(self) -> int:
        return int(self.listener.port)

    def events_sent(self, timeout_s: float = 20.0) -> None:
        """Wait until the SCP's event sender has sent (or dropped) everything queued."""
        wait_for(self.service.events.idle, timeout_s, "the UPS event sender to finish", interval_s=0.05)

    def stop(self) -> None:
        self.listener.stop()
        self.service.close()
        self.ledger.close()


def ups_node(tmp: Path, receivers: Sequence[dict[str, Any]] = (), *,
             node_cancels: Callable[[str], bool] | None = None, **ups: Any) -> UpsNode:
    """Start the node's listener with its UPS SCP on a free port (data under ``tmp``); ``receivers`` are
    ``[ups] event_receivers`` entries (``ae_title``, ``host``, ``port``, ``fallback``), ``ups`` other
    ``[ups]`` settings, ``node_cancels`` the service's answer to a cancel request of a UPS the node performs.
    Stop it with :meth:`UpsNode.stop`."""
    from node.config import load_settings
    from node.dicom.scp import DicomListener
    from node.dicom.ups_scp import UpsService
    from node.ledger import Ledger
    from node.pipelines.routing import routing_attributes
    from node.workflow import ups as rules
    from tests.support.config import listener_config

    config, _ = listener_config(tmp, port=0, ups={"event_receivers": list(receivers), **ups})
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    service = UpsService(settings, ledger, rules, node_cancels=node_cancels)
    listener = DicomListener(settings, ledger, routing_attributes, services=[service])
    listener.start()
    return UpsNode(listener, ledger, service, settings)


# ---------------------------------------------------------------------------- Event SCP (receiver)


@dataclass
class EventWatcher:
    """An Event SCP (pynetdicom) on a free loopback port, as AE ``ae_title``: keeps every N-EVENT-REPORT
    as ``(event_type, uid, info)``."""

    ae_title: str = "WATCHER"
    port: int = field(default_factory=free_port)
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(EVENT)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_event)])

    def _on_event(self, event: evt.Event) -> tuple[int, None]:
        request: Any = event.request
        with self._lock:
            self.events.append((int(event.event_type or 0), str(request.AffectedSOPInstanceUID),
                                _plain(event.event_information) or {}))
        return 0x0000, None

    def receiver(self, fallback: bool = True) -> dict[str, Any]:
        """Its ``[ups] event_receivers`` entry."""
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "fallback": fallback}

    def of(self, uid: str) -> list[tuple[int, str, dict[str, Any]]]:
        with self._lock:
            return [e for e in self.events if e[1] == uid]

    def wait(self, uid: str, count: int, timeout_s: float = 20.0) -> list[tuple[int, str, dict[str, Any]]]:
        """The events about ``uid`` once there are at least ``count``."""
        wait_for(lambda: len(self.of(uid)) >= count, timeout_s, f"{count} UPS events about {uid}", interval_s=0.05)
        return self.of(uid)

    def stop(self) -> None:
        self._server.shutdown()


class DcmjsEventReceiver(EventWatcher):
    """The same Event SCP, on dcmjs-dimse (``tests/support/js/ups_event_receiver.js``, its own decoder): keeps
    every N-EVENT-REPORT as ``(event_type, uid, info)``; ``classes`` the Affected SOP Class UID of each."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.classes: list[str] = []
        node = require_dcmjs()
        self._process = subprocess.Popen([node, str(JS_DIR / "ups_event_receiver.js"), str(self.port), self.ae_title],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        assert first.strip() == "listening", f"the dcmjs event receiver did not start: {first!r}"
        wait_for(lambda: port_open(self.port), 20, "the dcmjs event receiver to listen", interval_s=0.05)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            with self._lock:
                self.classes.append(event["sopClass"])
                self.events.append((int(event["eventType"]), str(event["uid"]), event["info"] or {}))

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextmanager
def watchers(*titles: str) -> Iterator[list[EventWatcher]]:
    """Event SCPs with these AE titles, stopped at the end."""
    running = [EventWatcher(title) for title in titles]
    try:
        yield running
    finally:
        for watcher in running:
            watcher.stop()


# ---------------------------------------------------------------------------- a scripted task manager


def input_information(study_uid: str, instances: Sequence[tuple[str, str, str]], retrieve_ae: str = "") -> list[
        dict[str, Any]]:
    """An Input Information Sequence (Referenced Instances and Access Macro, PS3.4 Table CC.2.5-2c), one item per
    series: ``instances`` are (series UID, SOP class UID, SOP instance UID); ``retrieve_ae`` the Retrieve AE Title."""
    series: dict[str, list[dict[str, str]]] = {}
    for series_uid, sop_class, sop_instance in instances:
        series.setdefault(series_uid, []).append(
            {"ReferencedSOPClassUID": sop_class, "ReferencedSOPInstanceUID": sop_instance})
    items = []
    for series_uid, refs in series.items():
        item: dict[str, Any] = {"TypeOfInstances": "DICOM", "StudyInstanceUID": study_uid,
                                "SeriesInstanceUID": series_uid, "ReferencedSOPSequence": refs}
        if retrieve_ae:
            item["DICOMRetrievalSequence"] = [{"RetrieveAETitle": retrieve_ae}]
        items.append(item)
    return items


class ScriptedTaskManager:
    """The scripted UPS task manager of ``tests/support/js/ups_task_manager.js`` (dcmjs-dimse, its own state machine)
    on a free loopback port as ``ae_title``: ``items`` are ``{"uid", "dataset"}``, ``script`` the scenario's
    ``claim``, ``refuseCompletion``, ``cancelAtProgress``, ``eventTarget``. :attr:`records` holds what it handled
    (one dict per request, see the script); its state survives :meth:`restart` (a file under ``tmp``)."""

    def __init__(self, tmp: Path, items: Sequence[dict[str, Any]], ae_title: str = "TASKMGR", **script: Any) -> None:
        self.ae_title, self.port = ae_title, free_port()
        self.scenario = tmp / f"task-manager-{uuid.uuid4().hex[:8]}.json"
        self.scenario.write_text(json.dumps({"port": self.port, "ae": ae_title, "items": list(items),
                                             "stateFile": str(self.scenario.with_suffix(".state.json")), **script}))
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        node = require_dcmjs()
        self._process = subprocess.Popen([node, str(JS_DIR / "ups_task_manager.js"), str(self.scenario)],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        assert first.strip() == "listening", f"the scripted task manager did not start: {first!r}"
        wait_for(lambda: port_open(self.port), 20, "the scripted task manager to listen", interval_s=0.05)
        threading.Thread(target=self._read, args=(self._process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("{"):
                with self._lock:
                    self.records.append(json.loads(line))

    def as_setting(self, **extra: Any) -> dict[str, Any]:
        """The node's ``[ups.task_manager]`` for it (polling every 0.5 s)."""
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "poll_s": 0.5,
                "timeout_s": 10.0, **extra}

    def of(self, op: str, uid: str | None = None) -> list[dict[str, Any]]:
        """The records of ``op`` (``associate``, ``find``, ``get``, ``set``, ``action``, ``event``), about ``uid``."""
        with self._lock:
            return [r for r in self.records if r["op"] == op and (uid is None or r.get("uid") == uid)]

    def wait(self, predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
        return wait_for(predicate, timeout_s, what, interval_s=0.1)

    def state(self) -> dict[str, Any]:
        """The task manager's state as it keeps it (items: state, Transaction UID, data set)."""
        path = self.scenario.with_suffix(".state.json")
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def kill(self) -> None:
        """SIGKILL (the state file keeps what it had saved)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


# ---------------------------------------------------------------------------- the two SCUs


def run_pynetdicom(port: int, requests: Sequence[dict[str, Any]], calling: str = "REQUESTER",
                   called: str = "CARDIONODE") -> list[dict[str, Any]]:
    """Send ``requests`` in order on one association with pynetdicom (proposing every UPS SOP class)."""
    ae = AE(ae_title=calling)
    for uid in (PUSH, PULL, WATCH, QUERY):
        ae.add_requested_context(uid)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "the node refused the association"
    results: list[dict[str, Any]] = []
    try:
        for step in requests:
            results.append(_send_pynetdicom(assoc, step))
    finally:
        assoc.release()
    return results


def _send_pynetdicom(assoc: Any, step: dict[str, Any]) -> dict[str, Any]:
    ds = dataset_from(step.get("dataset") or {})
    uid = step.get("uid")
    meta = step.get("meta")
    klass = step.get("requestedClass") or PUSH
    op = step["op"]
    if op == "find":
        matches, status = [], None
        for status, identifier in assoc.send_c_find(ds, step["sopClass"]):
            if status and status.Status in (0xFF00, 0xFF01):
                matches.append(_plain(identifier))
        return {"status": int(status.Status) if status else None, "dataset": None, "matches": matches}
    if op == "create":
        status, reply = assoc.send_n_create(ds, klass, uid, meta_uid=meta)
    elif op == "action":
        status, reply = assoc.send_n_action(ds, step["action"], klass, uid, meta_uid=meta)
    elif op == "set":
        status, reply = assoc.send_n_set(ds, klass, uid, meta_uid=meta)
    elif op == "get":
        tags = [tag_for_keyword(k) for k in step.get("attributes", [])]
        status, reply = assoc.send_n_get(tags, klass, uid, meta_uid=meta)
    else:
        raise ValueError(op)
    assert "Status" in status, f"no response to {op} (association {'alive' if assoc.is_established else 'gone'})"
    return {"status": int(status.Status), "dataset": _plain(reply), "matches": []}


def require_dcmjs() -> str:
    """The ``node`` executable, once ``npm ci --prefix tests/support/js`` installed dcmjs-dimse; skips otherwise
    (the CI script installs it)."""
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "dcmjs-dimse").is_dir():
        pytest.skip("dcmjs-dimse is not installed: npm ci --prefix tests/support/js")
    return node


def run_dcmjs(port: int, requests: Sequence[dict[str, Any]], tmp: Path, calling: str = "REQUESTER",
              called: str = "CARDIONODE", timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Send ``requests`` in order on one association with dcmjs-dimse (its own encoder and decoder)."""
    node = require_dcmjs()
    scenario = tmp / f"scenario-{uuid.uuid4().hex[:8]}.json"
    scenario.write_text(json.dumps({"host": "127.0.0.1", "port": port, "calling": calling, "called": called,
                                    "requests": list(requests)}))
    done = subprocess.run([node, str(JS_DIR / "ups_driver.js"), str(scenario)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"dcmjs driver failed ({done.returncode}): {done.stderr[-2000:]}"
    answer = json.loads(lines[-1])
    assert answer["association"] == "accepted", answer
    results: list[dict[str, Any]] = answer["results"]
    assert all(r is not None for r in results), f"requests without a response: {results}"
    return results
