"""The conductor: moves each job through its pipeline's steps on the workers.

For every ``queued`` job the conductor puts the study's instances in the
artifact store (those of the series its pipeline accepts, plus, for a study paired
with the earlier day of a two-day stress/rest protocol, that study's series of the
states it contributes: :mod:`node.workflow.pairing`) and sends the first step; for every ``running`` job it looks at
the current step's task (named in the ledger's ``task_id``) and, when it is
done, sends the next step or, after the last, collects the outputs: each
object is written to the outbox (fsync), recorded in the ledger with a
``pending`` send per destination, and only then is the job ``reported`` and the
study ``done``.

Every change is written to the ledger after the action it records, and every
action is idempotent (deterministic task ids and output UIDs), so a restart at
any point repeats at most one action and never duplicates a result.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pydicom
from pydicom import Dataset

from node.config import Settings
from node.dicom.audit import AuditLog
from node.dicom.logs import hash_identifier
from node.dicom.spool import write_file_atomic
from node.dicom.storage import disk_space_problem
from node.ledger import Job, Ledger, LedgerError, OutputMeta, utcnow
from node.pipelines import registry
from node.pipelines.base import Pipeline
from node.pipelines.configure import report_context, run_config
from node.queue.dispatch import JobQueue, is_disk_full, parse_task_id
from node.queue.steps import context_to_dict
from node.queue.supervision import owner_problem
from node.results.content import ReportContext
from node.telemetry import JOB_DURATION, MODEL_INFERENCE
from node.uids import validate_uid
from node.workflow.pairing import paired_study, series_of_states

__all__ = ["Conductor", "WAITING_FOR_DISK"]

#: how a job's reason starts while a step waits for disk space (shown by `cardionode status`)
WAITING_FOR_DISK = "waiting for disk space:"
#: least time between a step's ENOSPC and sending it again (s)
DISK_RETRY_S = 5.0

_log = logging.getLogger(__name__)


def _observe_step(pipeline: str, step: str, result: dict[str, Any] | None) -> None:
    """Record the seconds a finished step ran in its worker (the task's ``seconds``, :mod:`node.queue.tasks`)
    as ``cardionode_job_duration_seconds``, and the ``predict`` step's (the models) also as
    ``cardionode_model_inference_seconds``; a result without them (an older worker) records nothing."""
    seconds = (result or {}).get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < 1e7:
        return
    JOB_DURATION.labels(pipeline=pipeline, step=step).observe(float(seconds))
    if step == "predict":
        MODEL_INFERENCE.labels(pipeline=pipeline).observe(float(seconds))


class Conductor:
    """Drives jobs from ``queued`` to ``reported`` (or ``failed``).

    ``job_timeout_s``: a step that has neither finished nor failed this many
    seconds after it was sent fails the job (no worker consumes the queue, or
    its message was lost); ``cardionode retry`` runs it again.

    A step whose local worker is gone (its main process died, or it took the
    step but did not start it within ``step_start_timeout_s`` seconds) is sent
    again, at most ``max_resends`` times per step, with the
    reason in the ledger's job events (:mod:`node.queue.supervision`);
    ``restart_worker(main_pid)`` (the node's supervisor) restarts a stalled
    local worker. Until ``redelivery_until`` (``time.time()``) a step of a dead
    worker is left to the broker: the node restored its message at start-up
    (:func:`node.queue.recovery.restore_unfinished`). ``own_worker(main_pid)``
    says whether the node started that worker; others (even on this host) are
    left to their broker. Deterministic task ids and output UIDs make a late result of
    the first delivery and the result of the second interchangeable: the
    first one the conductor sees moves the job on, later ones are ignored.
    """

    def __init__(
        self,
        ledger: Ledger,
        queue: JobQueue,
        settings: Settings,
        audit: AuditLog | None = None,
        job_timeout_s: float = 3600.0,
        step_start_timeout_s: float = 20.0,
        max_resends: int = 3,
        restart_worker: Callable[[int], None] | None = None,
        redelivery_until: float = 0.0,
        own_worker: Callable[[int], bool] | None = None,
        on_reported: Callable[[], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.settings = settings
        self.audit = audit
        self.job_timeout_s = job_timeout_s
        self.step_start_timeout_s = step_start_timeout_s
        self.max_resends = max_resends
        self.restart_worker = restart_worker
        self._resends: dict[str, int] = {}  # task id -> times sent again (since the node started)
        self.redelivery_until = redelivery_until  # time.time() before which the broker redelivers restored messages
        self.own_worker = own_worker
        self.on_reported = on_reported  # called after a job's outputs are in the outbox (wakes the sender)

    # ------------------------------------------------------------------ loop
    def tick(self, now: datetime | None = None) -> int:
        """Dispatch queued jobs and advance running ones, once each; returns how many jobs it looked at
        (the node ticks more often while there are any)."""
        queued = self.ledger.jobs.find(states=("queued",))
        for job in reversed(queued):  # oldest first
            if job.task_id is None:
                self._guard(job, self._dispatch)
        running = self.ledger.jobs.find(states=("running",))
        for job in reversed(running):
            self._guard(job, lambda j: self._advance(j, now or utcnow()))
        return len(queued) + len(running)

    def _guard(self, job: Job, action: Callable[[Job], None]) -> None:
        try:
            action(job)
        except LedgerError as exc:  # moved by an operator meanwhile (discard, retry)
            _log.info("job %d changed while handled: %s", job.id, exc)
        except Exception as exc:  # one broken job must not stop the others
            if is_disk_full(exc) or "database or disk is full" in str(exc):  # transient: try again next tick
                _log.warning("job %d waits: the node's disk is full (%s: %s)", job.id, type(exc).__name__, str(exc)[:200])
                return
            _log.exception("job %d: unexpected error", job.id)
            try:
                self._fail(job, f"node error while handling the job: {type(exc).__name__}: {exc}")
            except LedgerError as moved:
                _log.info("job %d not marked failed: %s", job.id, moved)

    # ------------------------------------------------------------------ steps
    def _pipeline(self, job: Job) -> Pipeline:
        return registry.get(job.pipeline)

    def _context(self, job: Job) -> ReportContext:
        predecessors = self.ledger.outputs.predecessors(job.study_uid, job.pipeline, before_run=job.run)
        return report_context(self.settings, predecessors)

    def _submit(self, job: Job, pipeline: Pipeline, attempt: int, index: int, note: str = "") -> str:
        step = pipeline.steps[index]
        previous = pipeline.steps[index - 1].name if index > 0 else ""
        context = context_to_dict(self._context(job)) if step.name == "report" else {}
        paired = paired_study(self.ledger, job.study_uid)
        config = run_config(self.settings, pipeline.name, self.ledger.worklist.clinical_for(job.study_uid),
                            paired.run_pairing() if paired is not None else None).to_dict()
        task_id = self.queue.submit(
            job.id, attempt, pipeline.name, pipeline.version, step.name, step.queue, previous, context, config
        )
        self.ledger.jobs.transition(
            job.id, "running", f"{step.name} on queue {step.queue}{note}", task_id=task_id,
            expected_from=("queued", "running"),
        )
        return task_id

    def _dispatch(self, job: Job) -> None:
        pipeline = self._pipeline(job)
        attempt = job.attempts + 1
        summary = self.ledger.studies.summary(job.study_uid)
        accepted = pipeline.accept(summary)
        series = sorted({uid for uids in accepted.series_by_rule.values() for uid in uids})
        instances = self.ledger.instances.of_study(job.study_uid, series or None)
        if not instances:
            self._fail(job, "the study has no instances the pipeline can use")
            return
        paired = paired_study(self.ledger, job.study_uid)  # two-day protocol: the earlier day's series too
        if paired is not None and pipeline.pairs_across_studies:
            extra = series_of_states(self.ledger, pipeline.name, paired.earlier_study_uid, paired.states)
            if extra:
                instances += self.ledger.instances.of_study(paired.earlier_study_uid, extra)
        for earlier in range(1, attempt):  # a retried job: what its earlier attempts left (e.g. a discarded one)
            self._cleanup(job, pipeline, earlier)
        moved = self.queue.upload_inputs(job.id, attempt, [i.path for i in instances])
        self._submit(job, pipeline, attempt, 0)
        _log.info(
            "job %d: %s %s attempt %d on study %s: %d instances (%.1f MB copied to the artifact store) -> %s",
            job.id, pipeline.name, pipeline.version, attempt, hash_identifier(job.study_uid),
            len(instances), moved / 1e6, pipeline.steps[0].name,
        )

    def _advance(self, job: Job, now: datetime) -> None:
        if not job.task_id:
            self._fail(job, "running without a task id")
            return
        _, attempt, step_name = parse_task_id(job.task_id)
        state = self.queue.state(job.task_id)
        if state.status == "waiting":
            clock = time.time()
            owner = state.owner
            if owner is not None and self.own_worker is not None and not self.own_worker(owner.main_pid):
                owner = None  # a worker the node did not start is left to its broker (Redis visibility timeout)
            problem = owner_problem(owner, clock, self.step_start_timeout_s)
            if problem is not None and (problem[1] is not None or clock >= self.redelivery_until):
                self._resend(job, attempt, step_name, *problem)
                return
            waited = (now - job.updated_at).total_seconds()
            if waited > self.job_timeout_s:
                self._fail(job, f"{step_name} did not finish within {self.job_timeout_s:g} s "
                                f"(task {state.celery_state}); is a worker consuming its queue?")
            return
        if state.status == "failed" and state.disk_full:
            self._wait_for_disk(job, attempt, step_name, state.error, now)
            return
        if state.status == "failed":
            self._fail(job, f"{step_name} failed: {state.error}")
            return
        pipeline = self._pipeline(job)
        names = [s.name for s in pipeline.steps]
        index = names.index(step_name)
        if index + 1 < len(names):
            self._submit(job, pipeline, attempt, index + 1)
            _observe_step(job.pipeline, step_name, state.result)
            _log.info("job %d: %s done -> %s", job.id, step_name, names[index + 1])
            return
        self._collect(job, pipeline, attempt, state.result or {})
        _observe_step(job.pipeline, step_name, state.result)

    def _wait_for_disk(self, job: Job, attempt: int, step_name: str, error: str, now: datetime) -> None:
        """A step that ran out of disk space waits (the job stays ``running``, its reason says why)
        and is sent again once the data directory has ``disk_watermark_mb`` free, at least
        ``DISK_RETRY_S`` seconds after it failed (a worker whose own disk is full is not asked
        again and again); it fails only after waiting ``job_timeout_s``."""
        problem = disk_space_problem(self.settings.data_dir, self.settings.disk_watermark_mb)
        waiting = job.reason.startswith(WAITING_FOR_DISK)
        waited = (now - job.updated_at).total_seconds()
        if problem is None and waiting and waited >= DISK_RETRY_S:
            pipeline = self._pipeline(job)
            index = [s.name for s in pipeline.steps].index(step_name)
            self.queue.forget(job.id, attempt, step_name)
            _log.warning("job %d: disk space is back; sending %s again", job.id, step_name)
            self._submit(job, pipeline, attempt, index, note="; sent again: disk space is back")
            return
        if waiting:
            if waited > self.job_timeout_s:
                self._fail(job, f"{step_name} waited {waited:.0f} s for disk space ({problem or 'a worker disk'}): {error}")
            return
        _log.warning("job %d: %s ran out of disk space; waiting until %s", job.id, step_name,
                     f"{self.settings.disk_watermark_mb:g} MiB are free")
        self.ledger.jobs.transition(
            job.id, "running", f"{WAITING_FOR_DISK} {step_name} ran out of space ({problem or 'on its worker'}); "
            "it runs again when space returns", error=f"{step_name}: {error}", expected_from=("running",),
        )

    def _resend(self, job: Job, attempt: int, step_name: str, reason: str, stalled_pid: int | None) -> None:
        """Send a step whose worker is gone again (same task id), or fail the job after ``max_resends``."""
        task_id = job.task_id or ""
        count = self._resends.get(task_id, 0) + 1
        if count > self.max_resends:
            self._fail(job, f"{step_name} lost its worker {count - 1} times (last: {reason}); "
                            "see the worker logs; `cardionode retry` runs the job again")
            return
        self._resends[task_id] = count
        if stalled_pid is not None and self.restart_worker is not None:
            self.restart_worker(stalled_pid)
        self.queue.forget(job.id, attempt, step_name)  # the gone owner's RECEIVED/STARTED record
        pipeline = self._pipeline(job)
        index = [s.name for s in pipeline.steps].index(step_name)
        _log.warning("job %d: %s: %s; sending it again (%d of %d)", job.id, step_name, reason, count, self.max_resends)
        self._submit(job, pipeline, attempt, index, note=f"; sent again ({count} of {self.max_resends}): {reason}")

    # ------------------------------------------------------------------ results
    def _outputs(self, job: Job, attempt: int, result: dict[str, Any]) -> list[tuple[str, bytes, Dataset]] | str:
        """The report step's objects ``(key, bytes, header)``, or why they are refused (nothing is written then).

        The task's result names the keys; each must be ``<job prefix>/outputs/<SOP Instance UID>.dcm`` of
        this job attempt and hold a DICOM object with that SOP Instance UID, so that a forged result cannot
        make the node copy another job's instances (or anything else in the store) to the outbox.
        """
        keys = result.get("outputs", [])
        if not isinstance(keys, list):
            return f"report returned {type(keys).__name__} where a list of output keys belongs; refused"
        prefix = self.queue.outputs_prefix(job.id, attempt)
        objects: list[tuple[str, bytes, Dataset]] = []
        for key in keys:
            name = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else ""
            if not name.endswith(".dcm") or "/" in name:
                return f"report named the artifact {str(key)[:120]!r}, not one of this job's outputs ({prefix}*.dcm); refused"
            data = self.queue.fetch(key)
            try:
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                uid = str(header.SOPInstanceUID)
            except Exception as exc:  # not DICOM, truncated, no SOP Instance UID
                return f"result object {key} is not a DICOM object ({type(exc).__name__}: {str(exc)[:200]}); refused"
            if name != f"{uid}.dcm":
                return f"result object {key} holds SOP Instance UID {uid[:64]!r}, not the one its key names; refused"
            objects.append((key, data, header))
        return objects

    def _collect(self, job: Job, pipeline: Pipeline, attempt: int, result: dict[str, Any]) -> None:
        destinations = [d.name for d in self.settings.destinations]
        objects = self._outputs(job, attempt, result)
        if isinstance(objects, str):
            self._fail(job, objects)
            return
        keys = [key for key, _, _ in objects]
        metas: list[OutputMeta] = []
        ours: list[str] = []  # this job's objects recorded before (a repeated collection, a forced retry)
        for _key, data, header in objects:  # every file first: a full disk here leaves the ledger untouched
            study_uid = validate_uid(str(header.StudyInstanceUID), "StudyInstanceUID of a result object")
            series_uid = validate_uid(str(header.SeriesInstanceUID), "SeriesInstanceUID of a result object")
            sop_uid = validate_uid(str(header.SOPInstanceUID), "SOPInstanceUID of a result object")
            known = self.ledger.outputs.get(sop_uid)
            if known is not None:
                # deterministic UIDs: an object recorded before is not written again (it may have been sent
                # and removed from the outbox); only this job's own ones get their sends (idempotent)
                if known.job_id == job.id:
                    ours.append(sop_uid)
                continue
            path = self.settings.outbox_dir / study_uid / series_uid / f"{sop_uid}.dcm"
            write_file_atomic(path, data, durable=True)
            metas.append(OutputMeta(sop_uid, study_uid, series_uid, str(header.SOPClassUID), str(path.resolve()), len(data)))
        recorded = [meta.sop_instance_uid for meta in metas if self.ledger.outputs.record(job.id, pipeline.name, meta)]
        if destinations:  # after all outputs are recorded, so that one association sends them all
            for sop_uid in ours + recorded:
                self.ledger.sends.create(sop_uid, destinations)
        self.ledger.jobs.transition(
            job.id, "reported", f"{len(keys)} result objects in the outbox", expected_from=("running",)
        )
        unsent = self.ledger.sends.find(states=("pending", "retrying", "dead_letter"), job_id=job.id)
        if destinations and keys and not recorded and not unsent:
            # an unchanged re-run reproduces objects already recorded and sent: nothing new to send
            self.ledger.jobs.transition(
                job.id, "sent", f"all {len(keys)} result objects identical to those recorded before; nothing new to send",
                expected_from=("reported",),
            )
        try:
            study_state = self.ledger.studies.transition(
                job.study_uid, "done", f"{pipeline.name} run {job.run}: {len(keys)} result objects",
                expected_from=("processing",),
            ).state
        except LedgerError as exc:  # a retried job of a study that moved on meanwhile (a later run, new instances)
            _log.info("job %d: study left as it is: %s", job.id, exc)
            study_state = ""
        _log.info(
            "job %d: reported %d objects for study %s (%s)%s",
            job.id, len(keys), hash_identifier(job.study_uid), ", ".join(destinations) or "outbox only",
            "; more instances arrived, the study will run again" if study_state == "receiving" else "",
        )
        self._audit("job.reported", job, outputs=len(keys), destinations=destinations)
        if self.on_reported is not None and destinations:
            self.on_reported()
        self._cleanup(job, pipeline, attempt)

    def _fail(self, job: Job, reason: str) -> None:
        _log.warning("job %d failed: %s", job.id, reason)
        self.ledger.jobs.transition(job.id, "failed", reason, error=reason, expected_from=("queued", "running"))
        try:
            self.ledger.studies.transition(job.study_uid, "failed", f"job {job.id}: {reason}", expected_from=("processing",))
        except LedgerError:
            pass
        self._audit("job.failed", job, reason=reason)
        if job.task_id:
            try:
                _, attempt, _ = parse_task_id(job.task_id)
                self._cleanup(job, self._pipeline(job), attempt)
            except Exception:  # cleaning up is best effort
                _log.debug("job %d: cleanup failed", job.id, exc_info=True)

    def _cleanup(self, job: Job, pipeline: Pipeline, attempt: int) -> None:
        self.queue.cleanup(job.id, attempt)
        for step in pipeline.steps:
            self.queue.forget(job.id, attempt, step.name)

    def _audit(self, event: str, job: Job, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(event, study_uid=job.study_uid, job=job.id, pipeline=job.pipeline, **fields)
