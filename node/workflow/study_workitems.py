"""A UPS work item for every study the node processes from plain C-STORE, so watchers see its progress.

With ``[ups] enabled`` and ``[ups] study_workitems`` (the default), the node's UPS SCP
(:class:`node.dicom.ups_scp.UpsService`) holds one work item per study and run, created
"based on internal logic" as PS3.4 CC.2.5.3 allows, and the node performs it itself:

==============================  ======================================================================
the study in the ledger         the work item
==============================  ======================================================================
``receiving``                   SCHEDULED, Input Readiness State INCOMPLETE (State Report to global
                                subscribers: a new study is arriving)
``complete`` (a rule decided)   READY, Input Information Sequence = the instances received, the rule in
                                Comments on the Scheduled Procedure Step (State Report: the decision)
``processing``                  IN PROGRESS, claimed by the node (progress 10 %)
a job ``reported``              progress 80 % ("results written, sending")
``done``, the run's jobs        UPS Performed Procedure Sequence with the Output Information Sequence of
finished sending                the results a destination acknowledged (Retrieve AE Title: that
                                destination), then COMPLETED; CANCELED with 110513 when destinations are
                                configured and none acknowledged a result; COMPLETED with an empty
                                Output Information Sequence when none is configured (outbox only)
``ignored``, ``failed``,        CANCELED with a discontinuation reason (CID 9300): 110522 "Object Types
``given_up``                    not supported", 110513 "Discontinued for unspecified reason", 110523
                                "Object Set incomplete"
==============================  ======================================================================

A study that is processed again (instances after it was done) gets a new work item for its
new run. The UID of a work item is derived from the study and the run, and so is the node's
Transaction UID, so a restarted node carries on with the same ones. :class:`StudyWorkitems`
follows the ledger's events from a cursor kept in ``<data_dir>/ups/study_cursor.json`` (a
new node starts at the newest event) and brings each touched study's work item up to date,
step by step through the UPS SCP, so every step obeys PS3.4 Annex CC and is reported.
A peer's Request UPS Cancel of such a work item is answered C313 (the node does not stop a
job it started). The work items carry no patient name, ID or birth date.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Protocol

from pydicom.dataset import Dataset

from node.config import Settings
from node.dicom.spool import write_file_atomic
from node.ledger import Ledger, Study, Workitem
from node.ledger.schema import JOB_FINISHED
from node.uids import deterministic_uid

__all__ = ["DISCONTINUATION", "StudyWorkitems", "UpsManager", "acknowledged_outputs", "code_item",
           "instance_references", "workitem_uid"]

_log = logging.getLogger(__name__)

#: events read per pass
BATCH = 500
#: why a study's work item ends CANCELED, by the study's final state (CID 9300 codes)
DISCONTINUATION = {
    "ignored": ("110522", "DCM", "Object Types not supported"),
    "failed": ("110513", "DCM", "Discontinued for unspecified reason"),
    "given_up": ("110523", "DCM", "Object Set incomplete"),
    "done": ("110513", "DCM", "Discontinued for unspecified reason"),  # done, but no result acknowledged
}
_IN_RUN = ("processing", "done", "failed")  # states in which the study's run counter names this run
_WORKITEM_CODE = ("110003", "DCM", "Computer Aided Diagnosis")


class UpsManager(Protocol):
    """What the tracker needs of the UPS SCP (:class:`node.dicom.ups_scp.UpsService`)."""

    def create(self, request: Dataset, uid: str, *, calling_ae: str = "") -> tuple[int, Dataset | None, str]:
        ...

    def update(self, uid: str, modification: Dataset) -> tuple[int, str]:
        ...

    def change_state(self, uid: str, requested: str, transaction_uid: str, *, performer_ae: str) -> tuple[int, str]:
        ...


def workitem_uid(study_uid: str, run: int) -> str:
    """The UID of the work item of ``study_uid``'s processing run ``run`` (1, 2, ...)."""
    return deterministic_uid("cardionode study work item", study_uid, run)


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item (Code Value, Coding Scheme Designator, Code Meaning)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def instance_references(study_uid: str, rows: Iterable[tuple[str, str, str]],
                        retrieve_ae: dict[str, str]) -> list[Dataset]:
    """Referenced Instances and Access Macro items, one per series: ``rows`` are (series, class, instance)."""
    series: dict[str, list[tuple[str, str]]] = {}
    for series_uid, sop_class, sop_instance in rows:
        series.setdefault(series_uid, []).append((sop_class, sop_instance))
    items = []
    for series_uid, instances in series.items():
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID, item.SeriesInstanceUID = study_uid, series_uid
        refs = []
        for sop_class, sop_instance in instances:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
            refs.append(ref)
        item.ReferencedSOPSequence = refs
        ae = retrieve_ae.get(series_uid, "")
        if ae:
            retrieval = Dataset()
            retrieval.RetrieveAETitle = ae
            item.DICOMRetrievalSequence = [retrieval]
        items.append(item)
    return items


def acknowledged_outputs(ledger: Ledger, settings: Settings, study_uid: str, run: int,
                         destination_aes: Iterable[str] = ()) -> list[tuple[str, str, str, str]]:
    """(series, class, instance, destination AE) of the results of ``study_uid``'s run ``run`` that a destination
    acknowledged (a send ``sent``); only those acknowledged by one of ``destination_aes`` when given."""
    ae_of = {d.name: d.ae_title for d in settings.destinations}
    wanted = set(destination_aes)
    out = []
    for job in ledger.jobs.find(study_uid=study_uid):
        if job.run != run:
            continue
        sent: dict[str, str] = {}
        for send in ledger.sends.find(states=("sent",), job_id=job.id):
            if not wanted or ae_of.get(send.destination, "") in wanted:
                sent.setdefault(send.output_uid, send.destination)
        for output in ledger.outputs.of_job(job.id):
            if output.sop_instance_uid in sent:
                out.append((output.series_uid, output.sop_class_uid, output.sop_instance_uid,
                            ae_of.get(sent[output.sop_instance_uid], "")))
    return out


class StudyWorkitems:
    """Keeps a UPS work item per study and run in step with the ledger (see the module docstring)."""

    def __init__(self, ledger: Ledger, settings: Settings, ups: UpsManager) -> None:
        self.ledger, self.settings, self.ups = ledger, settings, ups
        self.cursor_path = settings.data_dir / "ups" / "study_cursor.json"
        self.cursor = self._read_cursor()

    def _read_cursor(self) -> int:
        try:
            return int(json.loads(self.cursor_path.read_text(encoding="ascii"))["event_id"])
        except (OSError, ValueError, KeyError, TypeError):
            cursor = self.ledger.events.last_id()  # a new node does not make work items of the past
            self._write_cursor(cursor)
            return cursor

    def _write_cursor(self, event_id: int) -> None:
        self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.cursor_path, json.dumps({"event_id": event_id}).encode("ascii"), durable=False)

    def run_once(self) -> int:
        """Bring the work items of the studies touched since the cursor up to date; returns how many."""
        events = self.ledger.events.after(self.cursor, BATCH)
        if not events:
            return 0
        touched: dict[tuple[str, int | None], None] = {}
        for event in events:
            if event.entity == "study":
                touched[(event.entity_id, None)] = None
            elif event.entity == "job" and event.to_state in ("reported", *JOB_FINISHED):
                job = self.ledger.jobs.get(int(event.entity_id))
                if job is not None:
                    touched[(job.study_uid, job.run)] = None
        for study_uid, run in touched:
            try:
                self.reconcile(study_uid, run)
            except Exception:
                _log.exception("work item of study %s not brought up to date", study_uid[-12:])
        self.cursor = events[-1].id
        self._write_cursor(self.cursor)
        return len(touched)

    # ------------------------------------------------------------------ one study
    def reconcile(self, study_uid: str, run: int | None = None) -> Workitem | None:
        """Move the work item of the study's run ``run`` (None: its current one) forward to where the study and
        the run's jobs are; returns it."""
        study = self.ledger.studies.get(study_uid)
        if study is None:
            return None
        current = study.run if study.state in _IN_RUN else study.run + 1
        run = current if run is None else run
        if run > current:
            return None
        state = study.state if run == current else "done"  # an earlier run ended when the study moved on
        uid = workitem_uid(study_uid, run)
        row = self.ledger.workitems.get(uid)
        if row is None:
            if run != current:
                return None
            status, _, why = self.ups.create(self._new_workitem(study), uid)
            if status not in (0x0000, 0xB300):
                _log.warning("work item of study run %d not created: 0x%04X %s", run, status, why)
                return None
            row = self.ledger.workitems.get(uid)
        if row is None or row.state in ("COMPLETED", "CANCELED") or state == "receiving":
            return row
        if row.input_readiness == "INCOMPLETE" and state != "given_up":
            self._step(uid, self.ups.update(uid, self._ready(study)), "inputs ready")
        tx = deterministic_uid("cardionode study work item transaction", uid)
        if row.state == "SCHEDULED" and state != "complete":
            self._step(uid, self.ups.change_state(uid, "IN PROGRESS", tx, performer_ae=""), "claimed")
            self._progress(uid, tx, 10, "processing")
        jobs = [j for j in self.ledger.jobs.find(study_uid=study_uid) if j.run == run]
        if state == "processing":
            if any(j.state == "reported" for j in jobs):
                self._progress(uid, tx, 80, "results written, sending")
        elif state == "done":
            destinations = bool(self.settings.destinations)
            if destinations and any(j.state not in JOB_FINISHED for j in jobs):
                self._progress(uid, tx, 80, "results written, sending")
            elif self._outputs(study_uid, run) or not destinations:
                self._step(uid, self.ups.update(uid, self._performed(study, run, tx)), "outputs listed")
                self._step(uid, self.ups.change_state(uid, "COMPLETED", tx, performer_ae=""), "completed")
            else:
                self._step(uid, self.ups.update(uid, self._discontinued(study, "done", tx)), "discontinued")
                self._step(uid, self.ups.change_state(uid, "CANCELED", tx, performer_ae=""), "canceled")
        elif state in DISCONTINUATION:
            self._step(uid, self.ups.update(uid, self._discontinued(study, state, tx)), "discontinued")
            self._step(uid, self.ups.change_state(uid, "CANCELED", tx, performer_ae=""), "canceled")
        return self.ledger.workitems.get(uid)

    def _step(self, uid: str, result: tuple[int, str], what: str) -> None:
        status, why = result
        if status not in (0x0000, 0xB304, 0xB306):
            _log.warning("work item %s: %s refused 0x%04X: %s", uid, what, status, why)

    def _progress(self, uid: str, tx: str, percent: int, description: str) -> None:
        row = self.ledger.workitems.get(uid)
        if row is None or row.state != "IN PROGRESS" or (row.progress or 0) >= percent:
            return
        item = Dataset()
        item.ProcedureStepProgress = percent
        item.ProcedureStepProgressDescription = description
        modification = Dataset()
        modification.TransactionUID = tx
        modification.ProcedureStepProgressInformationSequence = [item]
        self._step(uid, self.ups.update(uid, modification), "progress")

    # ------------------------------------------------------------------ content
    def _new_workitem(self, study: Study) -> Dataset:
        ds = Dataset()
        ds.ProcedureStepState = "SCHEDULED"
        ds.ScheduledProcedureStepPriority = "MEDIUM"
        ds.ProcedureStepLabel = "CardioNode processing of a received study"
        ds.WorklistLabel = self.settings.ups.worklist_label
        ds.ScheduledProcedureStepStartDateTime = study.first_received_at.strftime("%Y%m%d%H%M%S")
        ds.InputReadinessState = "INCOMPLETE"
        ds.ScheduledWorkitemCodeSequence = [code_item(*_WORKITEM_CODE)]
        ds.StudyInstanceUID = study.study_uid
        ds.InputInformationSequence = []
        return ds

    def _ready(self, study: Study) -> Dataset:
        instances = self.ledger.instances.of_study(study.study_uid)
        ds = Dataset()
        ds.InputReadinessState = "READY"
        ds.InputInformationSequence = instance_references(
            study.study_uid, ((i.series_uid, i.sop_class_uid, i.sop_instance_uid) for i in instances),
            {i.series_uid: self.settings.ae_title for i in instances})
        ds.CommentsOnTheScheduledProcedureStep = f"complete by rule {study.rule or 'unknown'}"[:10240]
        if study.pipeline:
            ds.ProcedureStepLabel = f"CardioNode {study.pipeline}"
        return ds

    def _outputs(self, study_uid: str, run: int) -> list[tuple[str, str, str, str]]:
        """(series, class, instance, destination AE) of the run's results a destination acknowledged."""
        return acknowledged_outputs(self.ledger, self.settings, study_uid, run)

    def _performed(self, study: Study, run: int, tx: str) -> Dataset:
        outputs = self._outputs(study.study_uid, run)
        row = self.ledger.workitems.get(workitem_uid(study.study_uid, run))
        started = row.updated_at if row is not None else study.updated_at
        item = Dataset()
        item.PerformedStationNameCodeSequence = [code_item(self.settings.ae_title, "99CARDIO", self.settings.device_name)]
        item.PerformedProcedureStepStartDateTime = (study.decided_at or started).strftime("%Y%m%d%H%M%S")
        item.PerformedProcedureStepEndDateTime = study.updated_at.strftime("%Y%m%d%H%M%S")
        item.PerformedWorkitemCodeSequence = [code_item(*_WORKITEM_CODE)]
        item.PerformedProcedureStepDescription = f"CardioNode {study.pipeline or ''}, research use".replace("  ", " ")
        item.OutputInformationSequence = instance_references(
            study.study_uid, ((s, c, i) for s, c, i, _ in outputs), {s: ae for s, _, _, ae in outputs})
        ds = Dataset()
        ds.TransactionUID = tx
        ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
        return ds

    def _discontinued(self, study: Study, state: str, tx: str) -> Dataset:
        item = Dataset()
        item.ProcedureStepDiscontinuationReasonCodeSequence = [code_item(*DISCONTINUATION[state])]
        item.ReasonForCancellation = "no result acknowledged by a destination" if state == "done" else f"study {state}"
        item.ProcedureStepProgressDescription = (study.reason or "")[:1024]
        ds = Dataset()
        ds.TransactionUID = tx
        ds.ProcedureStepProgressInformationSequence = [item]
        return ds
