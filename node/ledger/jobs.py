"""Processing jobs: one per study run and pipeline (``ledger.jobs``).

A job moves ``queued`` -> ``running`` -> ``reported`` -> ``sent`` | ``failed``
| ``dead`` | ``discarded`` through :meth:`JobStore.transition`, each move with
a reason and an event. The operator's `cardionode retry` and `cardionode
discard` are :meth:`JobStore.retry` and :meth:`JobStore.discard`; they also
move the job's sends and, for a discard, its study.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from node.ledger.events import record_event
from node.ledger.schema import JOB_STATES, STUDY_FINISHED, Job, LedgerError, Output, Send, Store, Study, utcnow

__all__ = ["JobStore", "NothingToRetry"]


class NothingToRetry(LedgerError):
    """`cardionode retry` of a job that is already done: its results were sent (or are in the outbox)."""


class JobStore(Store):
    """The node's processing jobs (``ledger.jobs``)."""

    def create(self, study_uid: str, pipeline: str, reason: str = "study complete") -> Job:
        """A new ``queued`` job for the study's current run (run = study.run, at least 1)."""
        now = utcnow()
        with self.database.write() as s:
            study = s.get(Study, study_uid)
            if study is None:
                raise LedgerError(f"no study {study_uid} in the ledger")
            job = Job(
                study_uid=study_uid,
                pipeline=pipeline,
                run=max(study.run, 1),
                state="queued",
                reason=reason,
                attempts=0,
                last_error="",
                created_at=now,
                updated_at=now,
            )
            s.add(job)
            s.flush()
            record_event(s, "job", job.id, None, "queued", reason)
            return job

    def get(self, job_id: int) -> Job | None:
        """The job's row, or None."""
        with self.database.read() as s:
            return s.get(Job, int(job_id))

    def find(
        self, states: Sequence[str] | None = None, study_uid: str | None = None, limit: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered; ``offset``: skip that many (paging)."""
        with self.database.read() as s:
            q = select(Job)
            if states:
                q = q.where(Job.state.in_(list(states)))
            if study_uid:
                q = q.where(Job.study_uid == study_uid)
            q = q.order_by(Job.id.desc())
            if limit:
                q = q.limit(limit)
            if offset:
                q = q.offset(offset)
            return list(s.scalars(q))

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state, in :data:`JOB_STATES` order)."""
        with self.database.read() as s:
            found = {state: count for state, count in s.execute(select(Job.state, func.count()).group_by(Job.state))}
        return {state: int(found.get(state, 0)) for state in JOB_STATES}

    def transition(
        self,
        job_id: int,
        to_state: str,
        reason: str = "",
        *,
        error: str | None = None,
        task_id: str | None = None,
        expected_from: Sequence[str] | None = None,
    ) -> Job:
        """Move a job to ``to_state``; entering ``running`` from another state counts an attempt
        (``running`` -> ``running``, the next step of the same attempt, does not).

        ``error`` is kept as ``last_error``; ``task_id`` records the queue's id.
        ``expected_from`` guards the move like :meth:`node.ledger.studies.StudyStore.transition`.
        """
        if to_state not in JOB_STATES:
            raise LedgerError(f"unknown job state {to_state!r}; states are {JOB_STATES}")
        with self.database.write() as s:
            job = s.get(Job, int(job_id))
            if job is None:
                raise LedgerError(f"no job {job_id} in the ledger")
            if expected_from is not None and job.state not in expected_from:
                raise LedgerError(f"job {job_id} is {job.state}, not {'/'.join(expected_from)}; not moved to {to_state}")
            old = job.state
            if to_state == "running" and old != "running":
                job.attempts += 1
            if error is not None:
                job.last_error = error
            if task_id is not None:
                job.task_id = task_id
            job.state, job.reason, job.updated_at = to_state, reason or job.reason, utcnow()
            record_event(s, "job", job.id, old, to_state, reason or (error or ""))
            return job

    def retry(self, job_id: int, force: bool = False) -> Job:
        """`cardionode retry`: run a job again, or send its dead-lettered results again.

        * a job with ``dead_letter`` sends (``reported``, ``sent`` or ``dead``) keeps its outputs and
          those sends go back to ``pending`` (job ``reported``);
        * a ``failed``, ``dead`` or ``discarded`` job, or with ``force`` a ``sent`` or ``reported``
          one, goes back to ``queued`` (task id cleared: the conductor dispatches a new attempt);
          its study goes back to ``processing`` for the job's run (the run number is kept), so
          that the new attempt ends the study ``done`` or ``failed`` as a first one would;
        * without ``force``, a ``sent`` job, or a ``reported`` one without pending sends, raises
          :class:`NothingToRetry` (its results were delivered, or are in the outbox when no
          destination is configured);
        * a ``queued`` or ``running`` job, or one whose results are still being sent, raises
          :class:`LedgerError`.
        """
        now = utcnow()
        with self.database.write() as s:
            job = s.get(Job, int(job_id))
            if job is None:
                raise LedgerError(f"no job {job_id} in the ledger; see `cardionode status`")
            if job.state in ("queued", "running"):
                raise LedgerError(f"job {job_id} is {job.state}; nothing to retry")
            has_outputs = s.scalar(select(func.count()).select_from(Output).where(Output.job_id == job.id)) or 0
            sends = list(s.scalars(select(Send).where(Send.job_id == job.id)))
            dead = [send for send in sends if send.state == "dead_letter"]
            sending = [send for send in sends if send.state in ("pending", "retrying")]
            if has_outputs and job.state in ("reported", "sent", "dead") and dead:
                for send in dead:
                    record_event(s, "send", send.id, send.state, "pending", "retry requested by an operator")
                    send.state, send.attempts, send.next_attempt_at, send.updated_at = "pending", 0, now, now
                old, job.state = job.state, "reported"
                job.reason, job.updated_at = "sending again (operator retry)", now
                record_event(s, "job", job.id, old, "reported", job.reason)
                return job
            if job.state in ("reported", "sent") and sending:
                raise LedgerError(f"job {job_id} is sending its results ({len(sending)} of {len(sends)} sends pending "
                                  "or retrying); retry it once they are sent or dead-lettered")
            if job.state in ("reported", "sent") and not force:
                where = (f"all {len(sends)} sends done" if sends
                         else f"its {has_outputs} result objects are in the outbox, no destination configured")
                raise NothingToRetry(f"job {job_id} is already done ({job.state}: {where}); nothing to retry; "
                                     f"`cardionode retry {job_id} --force` processes the study again")
            old, job.state = job.state, "queued"
            job.task_id, job.updated_at = None, now
            job.reason = "queued again (operator retry" + (", forced)" if force and old in ("reported", "sent") else ")")
            record_event(s, "job", job.id, old, "queued", job.reason)
            study = s.get(Study, job.study_uid)
            if study is not None and study.run == job.run and study.state in STUDY_FINISHED:
                reason = f"job {job.id} queued again (operator retry)"
                record_event(s, "study", study.study_uid, study.state, "processing", reason)
                study.state, study.reason, study.updated_at = "processing", reason, now
            return job

    def discard(self, job_id: int, reason: str = "discarded by an operator") -> Job:
        """`cardionode discard`: the job becomes ``discarded``; its unsent sends go to
        ``dead_letter``; a study still ``processing`` for it becomes ``failed`` with the reason."""
        now = utcnow()
        with self.database.write() as s:
            job = s.get(Job, int(job_id))
            if job is None:
                raise LedgerError(f"no job {job_id} in the ledger; see `cardionode status`")
            old, job.state, job.reason, job.updated_at = job.state, "discarded", reason, now
            record_event(s, "job", job.id, old, "discarded", reason)
            for send in s.scalars(select(Send).where(Send.job_id == job.id, Send.state.in_(("pending", "retrying")))):
                record_event(s, "send", send.id, send.state, "dead_letter", reason)
                send.state, send.last_error, send.updated_at = "dead_letter", reason, now
            study = s.get(Study, job.study_uid)
            if study is not None and study.state == "processing":
                record_event(s, "study", study.study_uid, study.state, "failed", f"job {job.id}: {reason}")
                study.state, study.reason, study.updated_at = "failed", f"job {job.id}: {reason}", now
            return job
