"""The node as IHE AIW-I task performer for a site's task manager (UPS Pull, Watch and Event SCU).

With ``[ups.task_manager]`` configured, `cardionode serve` runs :meth:`Performer.run_once`
in a loop (every ``PERFORMER_TICK_S``; a UPS event wakes it). Each pass, on one association
proposing UPS Pull and Watch only (:class:`node.dicom.ups_scu.UpsPullClient`):

1. **Work items the node holds** (ledger ``workitems`` with role ``performer`` and a Transaction
   UID of the node's, :meth:`node.ledger.WorkitemStore.performing`) are moved forward:

   * a claim written but not known to have landed (state SCHEDULED): the claim (N-ACTION
     Change UPS State to IN PROGRESS) is sent again with the **same** Transaction UID.
     0000: the node holds it. No response, or C302 (which is also what a claim that landed
     before a crash gets): an N-SET of a progress item with the node's Transaction UID
     tells (0000: the claim is the node's; C301: another performer's; C310, or an N-GET
     showing SCHEDULED: the claim never landed, send it again). C300 or C307: someone
     else finished it, or it is gone: the node forgets it (its row keeps the state, no
     Transaction UID).
   * IN PROGRESS: missing inputs are fetched (C-MOVE to the node from the Retrieve AE
     Title's ``[[retrieve_from]]`` source, :func:`node.dicom.retrieve.move_study`; after
     ``fetch_attempts`` CANCELED with 110523 "Object Set incomplete"); the study is
     processed by the normal assembler and conductor path, decided by the ``ups_inputs``
     completeness rule (:func:`node.workflow.completeness.ups_inputs`); progress is
     reported by N-SET at the milestones of :data:`MILESTONES`; once the run's jobs
     finished, the results that the Output Destination (else any configured destination)
     acknowledged are listed in the Output Information Sequence of one N-SET of the whole
     UPS Performed Procedure Sequence, then N-ACTION COMPLETED. No result acknowledged, a
     failed run, or a study no pipeline accepts: CANCELED with a CID 9300 reason
     (:data:`REASONS`). C304 on COMPLETED: the missing attributes are logged, the N-SET is
     sent again and COMPLETED retried (at most ``COMPLETE_ATTEMPTS`` times).
   * A Cancel Requested event (type 2, :meth:`Performer.on_event`) marks the row: before
     the run's results are stored the run's jobs are discarded and the UPS is CANCELED
     (110513 with the requester's reason); after, the node finishes, says so in the
     progress description, and COMPLETES.

2. **New work items**: C-FIND (Pull) for SCHEDULED items of the configured Worklist Label
   whose start time has passed, by priority then start time; N-GET of each; UNAVAILABLE
   inputs: skipped; INCOMPLETE: not claimed (waits for READY); READY with its inputs in the
   ledger or retrievable: a new Transaction UID is **written to the ledger**, then the claim
   is sent (as above). An expired work item (Scheduled Procedure Step Expiration passed) is
   claimed and CANCELED with 110533.

Everything the performer knows is in the ledger: a node killed at any point resumes with
the same Transaction UID. The UPS itself (N-GET answer, patient identification included)
is kept in the protected ``attributes`` column and never logged; logs name work items by
their UID.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from node.config import RetrieveSource, Settings
from node.dicom.retrieve import RetrieveUnavailable, move_study
from node.dicom.sender import Target
from node.dicom.ups_scu import Answer, UpsPullClient, UpsUnreachable
from node.ledger import Ledger, LedgerError, Workitem, WorkitemChange, utcnow
from node.ledger.schema import JOB_FINISHED, STUDY_FINISHED
from node.workflow import ups
from node.workflow.study_workitems import acknowledged_outputs, code_item, instance_references

__all__ = ["COMPLETE_ATTEMPTS", "MILESTONES", "PERFORMER_TICK_S", "REASONS", "Performer"]

_log = logging.getLogger("cardionode.performer")

#: seconds between two passes while the node holds work items (the poll for new ones follows ``poll_s``)
PERFORMER_TICK_S = 1.0
#: progress reported (Procedure Step Progress, percent) and its description, in order
MILESTONES = {
    "claimed": (0, "claimed by CardioNode"),
    "inputs": (10, "inputs complete"),
    "processing": (40, "processing"),
    "stored": (70, "results written, sending"),
    "acknowledged": (90, "results acknowledged by the destination"),
}
#: CID 9300 discontinuation reasons (PS3.16), by what went wrong
REASONS = {
    "incomplete": ("110523", "DCM", "Object Set incomplete"),
    "unsupported": ("110522", "DCM", "Object Types not supported"),
    "expired": ("110533", "DCM", "Workitem expired"),
    "unspecified": ("110513", "DCM", "Discontinued for unspecified reason"),
}
#: times COMPLETED is tried after C304 before the node leaves the work item IN PROGRESS with the reason
COMPLETE_ATTEMPTS = 3
_WORKITEM_CODE = ("110003", "DCM", "Computer Aided Diagnosis")
_PRIORITY = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}
_LOST = (0xC300, 0xC301, 0xC302, 0xC307)


def _dt(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _text(ds: Dataset | None, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def _status(answer: Answer) -> str:
    return "no response" if answer.status is None else f"0x{answer.status:04X}"


def _study_uid(workitem: Dataset) -> str:
    """The study the work item's results go into (Study Instance UID), else the study of its first input."""
    return _text(workitem, "StudyInstanceUID") or next((r.study_uid for r in ups.input_references(workitem)), "")


def _json(ds: Dataset) -> dict[str, Any]:
    kept = Dataset()
    kept.update(ds)
    if "TransactionUID" in kept:
        del kept.TransactionUID
    return dict(kept.to_json_dict())


class _Connection:
    """The association to the task manager, opened at the first request of a pass (none when nothing is to say)."""

    def __init__(self, open_client: Callable[[], UpsPullClient]) -> None:
        self._open = open_client
        self.client: UpsPullClient | None = None

    def __call__(self) -> UpsPullClient:
        if self.client is not None and not (self.client.assoc is not None and self.client.assoc.is_established):
            self.close()  # aborted (e.g. no response in time): the next request goes on a new association
        if self.client is None:
            self.client = self._open().__enter__()
        return self.client

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.__exit__(None, None, None)


class Performer:
    """Performs the work items of ``[ups.task_manager]`` (see the module docstring).

    ``wake``: set when an event arrives, so the loop runs at once.
    """

    def __init__(self, ledger: Ledger, settings: Settings, wake: threading.Event | None = None) -> None:
        if settings.ups.task_manager is None:
            raise ValueError("the performer needs [ups.task_manager]")
        self.ledger, self.settings, self.tm = ledger, settings, settings.ups.task_manager
        self.wake = wake
        self.subscribed = False
        self.last_poll = 0.0  # time.monotonic() of the last C-FIND
        self.unreachable = ""  # why the task manager did not answer the last pass ("" when it did)
        self._fetches: dict[str, int] = {}
        self._completions: dict[str, int] = {}
        self._told: set[str] = set()  # work items skipped and logged once

    # ------------------------------------------------------------------ events (listener threads)
    def on_event(self, event_type: int, uid: str, info: Dataset, calling_ae: str) -> None:
        """A UPS N-EVENT-REPORT from the task manager: Cancel Requested (2) marks a work item the node holds; any
        report wakes the loop."""
        if event_type == 2:  # the requester's words (Reason For Cancellation) are not kept: they may name the patient
            def decide(row: Workitem | None) -> WorkitemChange | None:
                if row is None or row.role != "performer" or not row.transaction_uid or row.cancel_requested:
                    return None
                return WorkitemChange({"cancel_requested": True,
                                       "reason": f"cancel requested by {_text(info, 'RequestingAE') or calling_ae}"})

            if self.ledger.workitems.change(uid, decide) is not None:
                _log.info("work item %s: cancel requested", uid)
        if self.wake is not None:
            self.wake.set()

    # ------------------------------------------------------------------ a pass
    def run_once(self) -> bool:
        """One pass (see the module docstring); whether the node holds work items afterwards."""
        held = self.ledger.workitems.performing()
        poll_due = time.monotonic() - self.last_poll >= self.tm.poll_s
        if not held and not poll_due and self.subscribed:
            return False
        conn = _Connection(lambda: UpsPullClient(self.settings.ae_title, self.tm.host, self.tm.port,
                                                 self.tm.ae_title, timeout_s=self.tm.timeout_s))
        try:
            if self.tm.subscribe and not self.subscribed:
                answer = conn().subscribe(self.settings.ae_title)
                self.subscribed = answer.ok
                if not answer.ok:
                    _log.warning("task manager %s refused the subscription (%s %s); polling only",
                                 self.tm.ae_title, _status(answer), answer.comment)
                    self.subscribed = True  # polling is the floor (workflow.md 1.8): do not ask again each pass
            for row in held:
                try:
                    self._advance(conn, row)
                except LedgerError as exc:
                    _log.info("work item %s: %s (next pass)", row.sop_instance_uid, exc)
            if poll_due:
                self.last_poll = time.monotonic()
                self._poll(conn)
            self.unreachable = ""
        except UpsUnreachable as exc:
            if self.unreachable != str(exc):
                _log.warning("task manager unreachable: %s", exc)
            self.unreachable = str(exc)
            self.last_poll = time.monotonic()
        finally:
            conn.close()
        return bool(self.ledger.workitems.performing())

    # ------------------------------------------------------------------ new work items
    def _poll(self, conn: _Connection) -> None:
        holding = [w for w in self.ledger.workitems.performing() if w.state == "IN PROGRESS"]
        room = self.tm.max_in_progress - len(holding)
        if room <= 0:
            return
        keys = Dataset()
        keys.ProcedureStepState = ups.SCHEDULED
        keys.WorklistLabel = self.tm.worklist_label
        keys.InputReadinessState = ""
        keys.ScheduledProcedureStepPriority = ""
        keys.ScheduledProcedureStepStartDateTime = f"-{_dt(datetime.now())}"
        keys.SOPInstanceUID = ""
        keys.ProcedureStepLabel = ""
        final, found = conn().find(keys)
        if final.status not in (0x0000, None) or (final.status is None and not found):
            _log.warning("task manager %s: C-FIND ended %s %s", self.tm.ae_title, _status(final), final.comment)
        found.sort(key=lambda m: (_PRIORITY.get(_text(m, "ScheduledProcedureStepPriority"), 1),
                                  _text(m, "ScheduledProcedureStepStartDateTime")))
        for match in found:
            if room <= 0:
                break
            uid = _text(match, "SOPInstanceUID")
            row = self.ledger.workitems.get(uid) if uid else None
            if not uid or (row is not None and (row.role != "performer" or row.transaction_uid
                                                or row.state in ("COMPLETED", "CANCELED"))):
                continue
            got = conn().get(uid)
            if not got.ok or got.dataset is None:
                _log.info("work item %s: N-GET %s %s; not taken", uid, _status(got), got.comment)
                continue
            if self._take(conn, uid, got.dataset):
                room -= 1

    def _skip(self, uid: str, workitem: Dataset, why: str) -> bool:
        row = self.ledger.workitems.get(uid)
        if row is None or row.reason != why or row.input_readiness != _text(workitem, "InputReadinessState"):
            self._record(uid, workitem, None, why)
        if f"{uid} {why}" not in self._told:
            _log.info("work item %s not claimed: %s", uid, why)
            self._told.add(f"{uid} {why}")
        return False

    def _take(self, conn: _Connection, uid: str, workitem: Dataset) -> bool:
        """Decide (workflow.md 6.3), write the Transaction UID, claim; whether the node now holds it."""
        readiness = _text(workitem, "InputReadinessState")
        if readiness == "UNAVAILABLE":
            return self._skip(uid, workitem, "Input Readiness State UNAVAILABLE: skipped")
        if readiness != "READY":
            return self._skip(uid, workitem, f"Input Readiness State {readiness or 'empty'}: waiting for READY")
        if not ups.input_references(workitem):
            return self._skip(uid, workitem, "no input listed")
        missing = ups.missing_inputs(workitem, self.ledger.instances.exists)
        if missing and not all(self._source(ref.retrieve_ae) for ref in missing):
            return self._skip(uid, workitem, f"{len(missing)} inputs neither here nor retrievable")
        transaction_uid = f"2.25.{uuid.uuid4().int}"
        study = self.ledger.studies.get(_study_uid(workitem))
        run = (study.run if study is not None else 0) + 1
        self._record(uid, workitem, transaction_uid, "claim written; sending it", run=run)  # before the claim
        row = self.ledger.workitems.get(uid)
        assert row is not None
        self._claim(conn, row)
        row = self.ledger.workitems.get(uid)
        return row is not None and bool(row.transaction_uid)

    def _record(self, uid: str, workitem: Dataset, transaction_uid: str | None, reason: str,
                run: int | None = None) -> None:
        """Create or update the performer's row of ``uid`` (SCHEDULED; the Transaction UID when given)."""
        fields: dict[str, Any] = {
            "role": "performer",
            "input_readiness": _text(workitem, "InputReadinessState")[:16],
            "priority": _text(workitem, "ScheduledProcedureStepPriority")[:8],
            "label": _text(workitem, "ProcedureStepLabel"),
            "worklist_label": _text(workitem, "WorklistLabel")[:64],
            "study_uid": _study_uid(workitem)[:64],
            "attributes": _json(workitem),
            "reason": reason,
        }
        if transaction_uid is not None:
            fields.update(transaction_uid=transaction_uid, performer_ae=self.settings.ae_title[:16], run=run)
        created = self.ledger.workitems.create(uid, state=ups.SCHEDULED, reason=reason,
                                               **{k: v for k, v in fields.items() if k != "reason"})
        if created:  # the reason of create() is the event's; the row's column is set apart
            self.ledger.workitems.change(uid, lambda row: WorkitemChange({"reason": reason}))
            return
        self.ledger.workitems.change(uid, lambda row: WorkitemChange(fields, reason)
                                     if row is not None and row.role == "performer" and not row.transaction_uid
                                     else None)

    # ------------------------------------------------------------------ the claim
    def _claim(self, conn: _Connection, row: Workitem) -> None:
        uid, tx = row.sop_instance_uid, row.transaction_uid
        answer = conn().change_state(uid, ups.IN_PROGRESS, tx)
        if answer.status == 0x0000:
            self._held(uid, "claimed")
            self._progress(conn, self._row(uid), "claimed")
            return
        if answer.status in (0xC300, 0xC307):
            self._lost(conn, uid, answer)
            return
        if answer.status not in (None, 0xC302):
            _log.warning("work item %s: claim answered %s %s; trying again next pass", uid, _status(answer),
                         answer.comment)
            return
        # no response, or already IN PROGRESS (perhaps by this very claim, sent before a crash): ask with an N-SET
        probe = conn().update(uid, self._progress_set(*MILESTONES["claimed"]), tx)
        if probe.status == 0x0000:
            self._held(uid, "claimed (the earlier claim had landed)")
            self._progress_done(uid, "claimed")
        elif probe.status == 0xC301 and answer.status == 0xC302:
            self._lost(conn, uid, answer)
        else:
            got = conn().get(uid, ["ProcedureStepState"])
            state = _text(got.dataset, "ProcedureStepState") if got.ok else ""
            if state and state != ups.SCHEDULED:
                self._lost(conn, uid, answer)
            else:
                _log.info("work item %s: the claim did not land (%s); sending it again next pass", uid,
                          _status(probe))

    def _row(self, uid: str) -> Workitem:
        row = self.ledger.workitems.get(uid)
        assert row is not None
        return row

    def _held(self, uid: str, reason: str) -> None:
        self.ledger.workitems.change(uid, lambda row: WorkitemChange({"state": ups.IN_PROGRESS, "reason": reason},
                                                                     reason))
        _log.info("work item %s: %s", uid, reason)

    def _lost(self, conn: _Connection, uid: str, answer: Answer) -> None:
        """Another performer holds ``uid`` (or it ended, or is gone): forget the claim, keep its state as seen."""
        got = conn().get(uid, ["ProcedureStepState"]) if answer.status != 0xC307 else Answer(0xC307)
        state = _text(got.dataset, "ProcedureStepState") if got.ok else ""
        if state not in ups.STATES:
            state = ups.CANCELED if answer.status == 0xC307 else ups.IN_PROGRESS
        reason = {0xC302: "held by another performer", 0xC300: "ended by another performer",
                  0xC307: "no longer at the task manager"}.get(answer.status or 0, "held by another performer")
        reason = f"{reason} ({_status(answer)})"
        self.ledger.workitems.change(uid, lambda row: WorkitemChange(
            {"state": state, "transaction_uid": "", "performer_ae": "", "reason": reason}, reason))
        _log.info("work item %s: %s", uid, reason)

    # ------------------------------------------------------------------ progress
    @staticmethod
    def _progress_set(percent: int, description: str, extra: Dataset | None = None) -> Dataset:
        item = Dataset()
        item.ProcedureStepProgress = percent
        item.ProcedureStepProgressDescription = description[:1024]
        if extra is not None:
            item.update(extra)
        ds = Dataset()
        ds.ProcedureStepProgressInformationSequence = [item]
        return ds

    def _progress_done(self, uid: str, milestone: str, description: str | None = None) -> None:
        percent, words = MILESTONES[milestone]
        self.ledger.workitems.change(uid, lambda row: WorkitemChange(
            {"progress": float(percent), "progress_description": description or words}))

    def _progress(self, conn: _Connection, row: Workitem, milestone: str, description: str | None = None) -> None:
        """Report ``milestone`` (N-SET of the whole Progress Information Sequence) unless it was reported."""
        percent, words = MILESTONES[milestone]
        if row.progress is not None and row.progress >= percent and description in (None, row.progress_description):
            return
        answer = conn().update(row.sop_instance_uid, self._progress_set(percent, description or words),
                               row.transaction_uid)
        if answer.ok:
            self._progress_done(row.sop_instance_uid, milestone, description)
        elif answer.status in _LOST:
            self._lost(conn, row.sop_instance_uid, answer)
        else:
            _log.info("work item %s: progress %d%% answered %s", row.sop_instance_uid, percent, _status(answer))

    # ------------------------------------------------------------------ a held work item
    def _advance(self, conn: _Connection, row: Workitem) -> None:
        if row.state == ups.SCHEDULED:
            self._claim(conn, row)
            return
        uid = row.sop_instance_uid
        workitem = Dataset.from_json(dict(row.attributes or {}))
        study = self.ledger.studies.get(row.study_uid) if row.study_uid else None
        run = row.run or 1
        started = study is not None and study.run >= run
        jobs = [j for j in self.ledger.jobs.find(study_uid=row.study_uid) if j.run == run] if started else []
        stored = any(j.state in ("reported", "sent") for j in jobs)
        if row.cancel_requested and not stored:
            for job in jobs:
                if job.state not in JOB_FINISHED:
                    self.ledger.jobs.discard(job.id, f"work item {uid}: {row.reason}")
            self._cancel(conn, row, "unspecified", row.reason or "cancel requested")
            return
        expiry = _text(workitem, "ScheduledProcedureStepExpirationDateTime")
        if not started and expiry and expiry[:14] < _dt(datetime.now()):
            self._cancel(conn, row, "expired", "the work item expired before it was processed")
            return
        missing = ups.missing_inputs(workitem, self.ledger.instances.exists)
        if missing:
            self._fetch(conn, row, missing)
            return
        self._progress(conn, row, "inputs")
        if study is None:
            return
        if not started:
            self._start(conn, row, study)
            return
        if row.cancel_requested and stored and "cancel requested" not in row.progress_description:
            self._progress(conn, row, "stored", "cancel requested after the results were stored: finishing")
            row = self._row(uid)
        if not jobs:
            if study.state in ("ignored", "given_up", "failed"):
                self._cancel(conn, row, "unsupported" if study.state == "ignored" else "incomplete"
                             if study.state == "given_up" else "unspecified", f"study {study.state}")
            return
        if not stored and not all(j.state in JOB_FINISHED for j in jobs):
            self._progress(conn, row, "processing")
            return
        if not all(j.state in JOB_FINISHED for j in jobs):
            self._progress(conn, row, "stored", row.progress_description if row.cancel_requested else None)
            return
        outputs = acknowledged_outputs(self.ledger, self.settings, row.study_uid, run, self._destinations(workitem))
        if not outputs:
            why = ("processing failed" if any(j.state in ("failed", "dead", "discarded") for j in jobs)
                   else "no result acknowledged by the destination")
            self._cancel(conn, row, "unspecified", why)
            return
        self._complete(conn, row, workitem, outputs)

    def _start(self, conn: _Connection, row: Workitem, study: Any) -> None:
        """Every input is here and the run has not started: the assembler decides a receiving study (``ups_inputs``);
        a study finished before the claim is declared complete by that rule now."""
        claimed = [e.at for e in self.ledger.events.find("workitem", row.sop_instance_uid) if e.to_state == "IN PROGRESS"]
        since = claimed[-1] if claimed else row.created_at
        if study.state in ("ignored", "given_up") and study.updated_at >= since:
            self._cancel(conn, row, "unsupported" if study.state == "ignored" else "incomplete",
                         f"study {study.state}: {study.reason}"[:1024])
            return
        if study.state in STUDY_FINISHED:
            self.ledger.studies.transition(study.study_uid, "complete",
                                           f"every input of work item {row.sop_instance_uid} in the ledger",
                                           rule="ups_inputs", expected_from=STUDY_FINISHED)

    def _destinations(self, workitem: Dataset) -> list[str]:
        """The Output Destination's AE titles that are configured destinations (none: any configured destination)."""
        configured = {d.ae_title for d in self.settings.destinations}
        wanted = [_text(storage, "DestinationAE") for dest in workitem.get("OutputDestinationSequence") or []
                  for storage in dest.get("DICOMStorageSequence") or []]
        known = [ae for ae in wanted if ae in configured]
        if wanted and not known:
            _log.warning("Output Destination %s is not a configured destination; the configured ones are used",
                         ", ".join(wanted))
        return known

    # ------------------------------------------------------------------ inputs
    def _source(self, retrieve_ae: str) -> RetrieveSource | None:
        sources = self.settings.retrieve_from
        return next((s for s in sources if s.ae_title == retrieve_ae), sources[0] if sources else None)

    def _fetch(self, conn: _Connection, row: Workitem, missing: list[ups.InputReference]) -> None:
        uid = row.sop_instance_uid
        attempts = self._fetches.get(uid, 0)
        if attempts >= self.tm.fetch_attempts:
            self._cancel(conn, row, "incomplete", f"{len(missing)} inputs not retrievable after {attempts} C-MOVEs")
            return
        self._fetches[uid] = attempts + 1
        for study_uid in dict.fromkeys(ref.study_uid for ref in missing):
            ref = next(r for r in missing if r.study_uid == study_uid)
            source = self._source(ref.retrieve_ae)
            if source is None or not study_uid:
                continue
            target = Target(source.name, source.ae_title, source.host, source.port)
            try:
                outcome = move_study(target, study_uid, destination_ae=source.move_destination or self.settings.ae_title,
                                     calling_ae=self.settings.ae_title, timeout_s=source.timeout_s)
                _log.info("work item %s: inputs fetched from %s: %s", uid, source.name, outcome.words())
            except RetrieveUnavailable as exc:
                _log.warning("work item %s: inputs not fetched (%s): %s", uid, exc.kind, exc)
                self._progress(conn, self._row(uid), "claimed", f"waiting for the PACS: {exc}"[:1024])

    # ------------------------------------------------------------------ the end
    def _final(self, conn: _Connection, row: Workitem, target: str, reason: str) -> None:
        uid = row.sop_instance_uid
        answer = conn().change_state(uid, target, row.transaction_uid)
        done = (0x0000, 0xB306) if target == ups.COMPLETED else (0x0000, 0xB304)
        if answer.status in done:
            self.ledger.workitems.change(uid, lambda r: WorkitemChange({"state": target, "reason": reason}, reason))
            _log.info("work item %s %s: %s", uid, target, reason)
            self._fetches.pop(uid, None)
            self._completions.pop(uid, None)
        elif answer.status == 0xC304:
            tries = self._completions.get(uid, 0) + 1
            self._completions[uid] = tries
            words = (f"{target} refused 0xC304 (final-state requirements not met: {answer.comment or 'no comment'}); "
                     + ("the N-SET is sent again" if tries < COMPLETE_ATTEMPTS else "left IN PROGRESS"))
            _log.warning("work item %s: %s", uid, words)
            self.ledger.workitems.change(uid, lambda r: WorkitemChange({"reason": words[:1024]}))
        elif answer.status in _LOST:
            self._lost(conn, uid, answer)
        else:
            _log.warning("work item %s: %s answered %s %s; next pass", uid, target, _status(answer), answer.comment)

    def _performed(self, workitem: Dataset, row: Workitem, outputs: list[tuple[str, str, str, str]]) -> Dataset:
        """The whole UPS Performed Procedure Sequence (workflow.md 6.4)."""
        claimed = [e.at for e in self.ledger.events.find("workitem", row.sop_instance_uid) if e.to_state == "IN PROGRESS"]
        item = Dataset()
        item.PerformedStationNameCodeSequence = [code_item(self.settings.ae_title, "99CARDIO", self.settings.device_name)]
        item.PerformedProcedureStepStartDateTime = _dt(claimed[-1] if claimed else row.created_at)
        item.PerformedProcedureStepEndDateTime = _dt(utcnow())
        item.PerformedWorkitemCodeSequence = [code_item(*_WORKITEM_CODE)]
        study = self.ledger.studies.get(row.study_uid)
        item.PerformedProcedureStepDescription = f"CardioNode {study.pipeline if study else ''}, research use"
        by_study: dict[str, list[tuple[str, str, str]]] = {}
        for series, klass, instance, _ in outputs:
            by_study.setdefault(row.study_uid, []).append((series, klass, instance))
        item.OutputInformationSequence = [
            ref for study_uid, rows in by_study.items()
            for ref in instance_references(study_uid, rows, {s: ae for s, _, _, ae in outputs if ae})]
        ds = Dataset()
        ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
        return ds

    def _complete(self, conn: _Connection, row: Workitem, workitem: Dataset,
                  outputs: list[tuple[str, str, str, str]]) -> None:
        uid = row.sop_instance_uid
        if self._completions.get(uid, 0) >= COMPLETE_ATTEMPTS:
            return
        description = (row.progress_description if row.cancel_requested
                       else MILESTONES["acknowledged"][1])
        self._progress(conn, row, "acknowledged", description)
        performed = self._performed(workitem, row, outputs)
        answer = conn().update(uid, performed, row.transaction_uid)
        if not answer.ok:
            if answer.status in _LOST:
                self._lost(conn, uid, answer)
            else:
                _log.warning("work item %s: outputs N-SET answered %s %s", uid, _status(answer), answer.comment)
            return
        workitem.update(performed)
        kept = _json(workitem)
        self.ledger.workitems.change(uid, lambda r: WorkitemChange({"attributes": kept}))
        reason = f"{len(outputs)} results acknowledged and listed"
        if row.cancel_requested:
            reason += "; the cancel request came after the results were stored"
        self._final(conn, self._row(uid), ups.COMPLETED, reason)

    def _cancel(self, conn: _Connection, row: Workitem, why: str, words: str) -> None:
        """N-SET the discontinuation (CID 9300 reason, ``words``) and an empty Output Information Sequence, then
        N-ACTION CANCELED."""
        uid = row.sop_instance_uid
        extra = Dataset()
        extra.ReasonForCancellation = words[:1024]
        extra.ProcedureStepDiscontinuationReasonCodeSequence = [code_item(*REASONS[why])]
        extra.ProcedureStepCancellationDateTime = _dt(datetime.now())
        ds = self._progress_set(int(row.progress or 0), words, extra)
        performed = self._performed(Dataset.from_json(dict(row.attributes or {})), row, [])
        ds.UnifiedProcedureStepPerformedProcedureSequence = performed.UnifiedProcedureStepPerformedProcedureSequence
        answer = conn().update(uid, ds, row.transaction_uid)
        if not answer.ok:
            if answer.status in _LOST:
                self._lost(conn, uid, answer)
            else:
                _log.warning("work item %s: discontinuation N-SET answered %s %s", uid, _status(answer),
                             answer.comment)
            return
        self._final(conn, self._row(uid), ups.CANCELED, f"{REASONS[why][2]}: {words}"[:1024])
