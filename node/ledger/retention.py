"""What retention may remove, and the marks it leaves (``ledger.retention``).

Retention (:mod:`node.ops.retention`) removes the files of finished studies; the
ledger keeps every row. A removed file leaves its row with ``path`` set to
:data:`~node.ledger.schema.PRUNED_PATH` (instances in the spool, outputs in the
outbox) and the study an event (``from_state`` = ``to_state`` = its state, the
reason starting with ``pruned:``), so history, `cardionode status` and
exactly-once (SOP Instance UIDs, deterministic output UIDs) still hold. An
instance sent again after its file was pruned is stored and recorded again
(:meth:`node.ledger.instances.InstanceStore.record`), so the study is processed
again instead of being taken for a duplicate.

What a study's files are still needed for is read in one pass
(:meth:`RetentionStore.studies`); each removal re-checks it in the same write
transaction that marks the rows (:meth:`RetentionStore.prune_spool`,
:meth:`RetentionStore.prune_outbox`), and moves the files aside inside that
transaction, so the listener cannot record a re-sent instance in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from node.ledger.events import record_event
from node.ledger.schema import PRUNED_PATH, STUDY_FINISHED, Instance, Job, Output, Send, Store, Study

__all__ = ["OPEN_JOB_STATES", "RETRIABLE_JOB_STATES", "StudyRetention", "RetentionStore"]

#: job states in which the job still reads the study's spool files
OPEN_JOB_STATES = ("queued", "running")
#: job states `cardionode retry` runs again from the spool
RETRIABLE_JOB_STATES = ("failed", "dead")
#: send states of a result that is not (yet) at its destination
UNSENT_SEND_STATES = ("pending", "retrying", "dead_letter")


@dataclass(frozen=True)
class StudyRetention:
    """What one study's files are still needed for (read by :meth:`RetentionStore.studies`).

    Attributes
    ----------
    study_uid : str
        Study Instance UID.
    state : str
        The study's state (:data:`node.ledger.STUDY_STATES`).
    last_activity : datetime
        The later of its last instance and its last state change (naive UTC).
    open_job : bool
        A job of the study is queued or running: it reads the spool.
    retriable : bool
        Its latest job failed or is dead: `cardionode retry` would read the spool again.
    unsent : bool
        A result of the study waits to be sent: a send ``pending``, ``retrying``, or
        ``dead_letter`` of a job not discarded.
    instances, pruned_instances : int
        Instances recorded, and how many of them had their spool file pruned.
    outputs, pruned_outputs : int
        Results recorded, and how many of them had their outbox file pruned.
    """

    study_uid: str
    state: str
    last_activity: datetime
    open_job: bool
    retriable: bool
    unsent: bool
    instances: int
    pruned_instances: int
    outputs: int
    pruned_outputs: int

    @property
    def finished(self) -> bool:
        """The study is ``done``, ``ignored``, ``failed`` or ``given_up``."""
        return self.state in STUDY_FINISHED

    @property
    def spool_needed(self) -> bool:
        """Its received instances may still be read: unfinished, or a job is queued or running."""
        return not self.finished or self.open_job

    @property
    def outbox_needed(self) -> bool:
        """Its results may still be read: :attr:`spool_needed` (a run may write them), or one waits to be sent."""
        return self.spool_needed or self.unsent


class RetentionStore(Store):
    """Reads what retention may remove and marks what it removed (``ledger.retention``)."""

    def studies(self) -> list[StudyRetention]:
        """Every study with what its files are still needed for, least recently active first."""
        with self.database.read() as s:
            open_jobs = set(s.scalars(select(Job.study_uid).where(Job.state.in_(OPEN_JOB_STATES)).distinct()))
            latest = dict(s.execute(select(Job.study_uid, func.max(Job.id)).group_by(Job.study_uid)).all())
            retriable_ids = set(s.scalars(select(Job.id).where(Job.state.in_(RETRIABLE_JOB_STATES))))
            unsent = set(
                s.scalars(
                    select(Output.study_uid)
                    .join(Send, Send.output_uid == Output.sop_instance_uid)
                    .join(Job, Job.id == Send.job_id)
                    .where(Send.state.in_(UNSENT_SEND_STATES), Job.state != "discarded")
                    .distinct()
                )
            )
            instances = _counts(s, Instance.study_uid, Instance.path)
            outputs = _counts(s, Output.study_uid, Output.path)
            found = []
            for study in s.scalars(select(Study)):
                uid = study.study_uid
                n_inst, pruned_inst = instances.get(uid, (0, 0))
                n_out, pruned_out = outputs.get(uid, (0, 0))
                found.append(StudyRetention(
                    study_uid=uid, state=study.state,
                    last_activity=max(study.last_received_at, study.updated_at),
                    open_job=uid in open_jobs, retriable=latest.get(uid) in retriable_ids, unsent=uid in unsent,
                    instances=n_inst, pruned_instances=pruned_inst, outputs=n_out, pruned_outputs=pruned_out,
                ))
        return sorted(found, key=lambda r: r.last_activity)

    def prune_spool(self, study_uid: str, reason: str, quiet_since: datetime, move_aside: Callable[[], int]) -> int | None:
        """Mark the study's received instances pruned and call ``move_aside()`` (which takes its spool
        files away and returns their bytes), in one write transaction; returns those bytes.

        None (nothing marked, ``move_aside`` not called) when the study is no longer finished, a job of
        it is queued or running, or an instance arrived after ``quiet_since`` (naive UTC): the listener
        records re-sent instances under the same lock, so none is lost between the check and the move.
        """
        with self.database.write() as s:
            study = s.get(Study, study_uid)
            if study is None or study.state not in STUDY_FINISHED or study.last_received_at > quiet_since:
                return None
            if s.scalar(select(func.count()).select_from(Job).where(
                    Job.study_uid == study_uid, Job.state.in_(OPEN_JOB_STATES))):
                return None
            s.execute(update(Instance).where(Instance.study_uid == study_uid).values(path=PRUNED_PATH))
            freed = move_aside()
            record_event(s, "study", study_uid, study.state, study.state, f"pruned: {reason}")
            return freed

    def prune_outbox(self, study_uid: str, reason: str, move_aside: Callable[[], int]) -> int | None:
        """Mark the study's results pruned and call ``move_aside()`` (which takes its outbox files away
        and returns their bytes), in one write transaction; returns those bytes.

        None (nothing marked) when the study is no longer finished, a job of it is queued or running,
        or one of its results waits to be sent (:attr:`StudyRetention.unsent`).
        """
        with self.database.write() as s:
            study = s.get(Study, study_uid)
            if study is None or study.state not in STUDY_FINISHED:
                return None
            if s.scalar(select(func.count()).select_from(Job).where(
                    Job.study_uid == study_uid, Job.state.in_(OPEN_JOB_STATES))):
                return None
            waiting = (
                select(func.count()).select_from(Send)
                .join(Output, Output.sop_instance_uid == Send.output_uid)
                .join(Job, Job.id == Send.job_id)
                .where(Output.study_uid == study_uid, Send.state.in_(UNSENT_SEND_STATES), Job.state != "discarded")
            )
            if s.scalar(waiting):
                return None
            s.execute(update(Output).where(Output.study_uid == study_uid).values(path=PRUNED_PATH))
            freed = move_aside()
            record_event(s, "study", study_uid, study.state, study.state, f"pruned: {reason}")
            return freed

    def pruned_studies(self) -> int:
        """How many studies had received instances or results pruned."""
        with self.database.read() as s:
            spool = set(s.scalars(select(Instance.study_uid).where(Instance.path == PRUNED_PATH).distinct()))
            outbox = set(s.scalars(select(Output.study_uid).where(Output.path == PRUNED_PATH).distinct()))
        return len(spool | outbox)

    def open_job_ids(self) -> set[int]:
        """Ids of the jobs queued or running (their artifacts are in use)."""
        with self.database.read() as s:
            return set(s.scalars(select(Job.id).where(Job.state.in_(OPEN_JOB_STATES))))


def _counts(session: Session, study_column: InstrumentedAttribute[str], path_column: InstrumentedAttribute[str]) -> dict[str, tuple[int, int]]:
    """``study_uid -> (rows, rows whose path is pruned)`` of a table with a study and a path column."""
    pruned = func.sum(case((path_column == PRUNED_PATH, 1), else_=0))
    rows = session.execute(select(study_column, func.count(), pruned).group_by(study_column)).all()
    return {uid: (int(n), int(p or 0)) for uid, n, p in rows}
