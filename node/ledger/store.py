"""The ledger: what the node received, decided, produced and sent, with states and reasons.

One SQLAlchemy 2 database (SQLite file by default, PostgreSQL by URL only).
Every change of state is a row in ``events`` as well, so `cardionode status`
can say why a study or job is where it is.

States (explicit columns, never inferred):

* study: ``receiving`` -> ``complete`` (with the completeness ``rule`` that decided:
  ``expected_series``, ``quiet_period``, ``force_deadline``, ``manual``) ->
  ``processing`` -> ``done`` | ``ignored`` | ``failed`` | ``given_up``.
  A new instance of a study in ``done``/``ignored``/``failed``/``given_up`` puts it
  back to ``receiving`` (``run`` is incremented when it is next processed; the new
  run's reports supersede the earlier ones). An instance arriving while the study
  is ``complete``/``processing`` is kept; when that run ends the study goes back to
  ``receiving`` instead of ``done`` (see :meth:`Ledger.transition_study`).
* job: ``queued`` -> ``running`` -> ``reported`` -> ``sent`` | ``failed`` | ``dead`` | ``discarded``.
* send (one per output and destination): ``pending`` -> ``sent`` | ``retrying`` | ``dead_letter``.

All times are naive UTC :class:`datetime.datetime`. Methods return detached
snapshots of the rows (ORM objects whose attributes are loaded); changing them
does not change the ledger. The ledger is safe to use from several threads
(one session per call; SQLite in WAL mode, ``BEGIN IMMEDIATE`` and a busy
timeout so writers queue instead of failing). SQLite runs with
``synchronous=NORMAL``: every commit survives a crash of the process (kill -9);
after a power failure the last commits may be missing, which is why received
instances are fsync'ed in the spool first and re-recorded from it at start.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from node.pipelines.base import SeriesSummary, StudySummary

__all__ = [
    "STUDY_STATES",
    "JOB_STATES",
    "SEND_STATES",
    "COMPLETENESS_RULES",
    "LedgerError",
    "InstanceMeta",
    "OutputMeta",
    "Study",
    "Series",
    "Instance",
    "Job",
    "Output",
    "Send",
    "Event",
    "Rejection",
    "Ledger",
    "utcnow",
]

STUDY_STATES = ("receiving", "complete", "processing", "done", "ignored", "failed", "given_up")
STUDY_FINISHED = ("done", "ignored", "failed", "given_up")
JOB_STATES = ("queued", "running", "reported", "sent", "failed", "dead", "discarded")
JOB_FINISHED = ("sent", "failed", "dead", "discarded")
SEND_STATES = ("pending", "sent", "retrying", "dead_letter")
COMPLETENESS_RULES = ("expected_series", "quiet_period", "force_deadline", "manual")

_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_MULTI = "\\"  # multi-valued text columns use the DICOM separator


def utcnow() -> datetime:
    """Now, as naive UTC (the ledger's time convention)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class LedgerError(RuntimeError):
    """A ledger operation that cannot be done (unknown id, forbidden transition)."""


class _Base(DeclarativeBase):
    pass


class Study(_Base):
    __tablename__ = "studies"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[str | None] = mapped_column(String(32), default=None)  # completeness rule that decided
    pipeline: Mapped[str | None] = mapped_column(String(64), default=None)
    run: Mapped[int] = mapped_column(Integer, default=0)  # completed processing runs started
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)  # entered "complete"
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Series(_Base):
    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    image_type: Mapped[str] = mapped_column(Text, default="")
    description: Mapped[str] = mapped_column(Text, default="")
    radiopharmaceutical_codes: Mapped[str] = mapped_column(Text, default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)


class Instance(_Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    series_uid: Mapped[str] = mapped_column(ForeignKey("series.series_uid"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime)


class Job(_Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    run: Mapped[int] = mapped_column(Integer, default=1)  # the study's run this job belongs to
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str | None] = mapped_column(String(128), default=None)  # queue task id, owned by flow
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Output(_Base):
    __tablename__ = "outputs"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # in the outbox
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Send(_Base):
    __tablename__ = "sends"
    __table_args__ = (UniqueConstraint("output_uid", "destination", name="uq_send_output_destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    output_uid: Mapped[str] = mapped_column(ForeignKey("outputs.sop_instance_uid"), index=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)  # DIMSE status of the last attempt
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Event(_Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    entity: Mapped[str] = mapped_column(String(16))  # study | job | send
    entity_id: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    rule: Mapped[str | None] = mapped_column(String(32), default=None)


class Rejection(_Base):
    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_address: Mapped[str] = mapped_column(String(64), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(80), default="")  # as received, may be invalid
    sop_instance_uid: Mapped[str] = mapped_column(String(80), default="")  # as received, may be invalid
    study_uid: Mapped[str] = mapped_column(String(80), default="")
    status: Mapped[int] = mapped_column(Integer)  # DIMSE status answered (0 for refused associations)
    reason: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class InstanceMeta:
    """What the SCP knows about one stored instance (no patient identifiers)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str
    size_bytes: int
    transfer_syntax_uid: str = ""
    modality: str = ""
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    radiopharmaceutical_codes: tuple[str, ...] = ()
    calling_ae: str = ""
    received_at: datetime | None = None


@dataclass(frozen=True)
class OutputMeta:
    """One result object written to the outbox."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: str
    size_bytes: int = 0


def _clip(text: str | None, n: int) -> str:
    return (text or "")[:n]


def _merge_multi(existing: str, new: Iterable[str]) -> str:
    values = [v for v in existing.split(_MULTI) if v] if existing else []
    for v in new:
        if v and v not in values:
            values.append(v)
    return _MULTI.join(values)


class Ledger:
    """The node's ledger at ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    Tables are created if missing. Use one :class:`Ledger` per process; it
    may be shared by threads.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url, busy_timeout_s)
        _Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite serialises writers anyway; this lock keeps threads of one process from
        # spinning on the busy timeout.
        self._write_lock = threading.RLock() if url.startswith("sqlite") else _NullLock()

    @classmethod
    def from_settings(cls, settings: Any) -> "Ledger":
        """The ledger configured in ``settings`` (a :class:`node.config.Settings`); creates data_dir."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.effective_ledger_url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock, self._sessions.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def _event(
        self, s: Session, entity: str, entity_id: object, old: str | None, new: str, reason: str, rule: str | None = None
    ) -> None:
        s.add(
            Event(
                at=utcnow(),
                entity=entity,
                entity_id=str(entity_id),
                from_state=old,
                to_state=new,
                reason=reason,
                rule=rule,
            )
        )

    # ------------------------------------------------------------------ instances
    def record_instance(self, meta: InstanceMeta) -> bool:
        """Record a received instance; return False if its SOP Instance UID was already recorded.

        Idempotent: a second copy changes nothing but the study's last-instance
        time. Creates the study (``receiving``) and series rows as needed. A new
        instance of a finished study puts it back to ``receiving``.
        """
        now = meta.received_at or utcnow()
        with self._write() as s:
            study = s.get(Study, meta.study_uid)
            if study is None:
                study = Study(
                    study_uid=meta.study_uid,
                    state="receiving",
                    reason="first instance received",
                    run=0,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    updated_at=now,
                )
                s.add(study)
                s.flush()  # parent rows first (no ORM relationships to order inserts)
                self._event(s, "study", meta.study_uid, None, "receiving", "first instance received")
            study.last_received_at = max(study.last_received_at, now)
            if s.get(Instance, meta.sop_instance_uid) is not None:
                return False
            series = s.get(Series, meta.series_uid)
            if series is None:
                series = Series(
                    series_uid=meta.series_uid,
                    study_uid=meta.study_uid,
                    modality=_clip(meta.modality, 16),
                    sop_class_uid=meta.sop_class_uid,
                    image_type=_MULTI.join(meta.image_type),
                    description=meta.series_description,
                    radiopharmaceutical_codes="",
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                )
                s.add(series)
                s.flush()
            series.instance_count += 1
            series.last_received_at = max(series.last_received_at, now)
            series.radiopharmaceutical_codes = _merge_multi(
                series.radiopharmaceutical_codes, meta.radiopharmaceutical_codes
            )
            s.add(
                Instance(
                    sop_instance_uid=meta.sop_instance_uid,
                    series_uid=meta.series_uid,
                    study_uid=meta.study_uid,
                    sop_class_uid=meta.sop_class_uid,
                    transfer_syntax_uid=meta.transfer_syntax_uid,
                    path=meta.path,
                    size_bytes=meta.size_bytes,
                    calling_ae=_clip(meta.calling_ae, 16),
                    received_at=now,
                )
            )
            study.instance_count += 1
            if study.state in STUDY_FINISHED:
                reason = f"new instance after the study was {study.state}; it will be processed again"
                self._event(s, "study", study.study_uid, study.state, "receiving", reason)
                study.state, study.reason, study.rule, study.updated_at = "receiving", reason, None, now
            return True

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self._read() as s:
            return s.get(Instance, sop_instance_uid) is not None

    def instance(self, sop_instance_uid: str) -> Instance | None:
        with self._read() as s:
            return s.get(Instance, sop_instance_uid)

    def instances(self, study_uid: str, series_uids: Sequence[str] | None = None) -> list[Instance]:
        """Instances of a study (optionally only some series), ordered by series then arrival."""
        with self._read() as s:
            q = select(Instance).where(Instance.study_uid == study_uid)
            if series_uids is not None:
                q = q.where(Instance.series_uid.in_(list(series_uids)))
            return list(s.scalars(q.order_by(Instance.series_uid, Instance.received_at)))

    def instance_uids(self) -> set[str]:
        """Every recorded SOP Instance UID (for reconciling the spool after a crash)."""
        with self._read() as s:
            return set(s.scalars(select(Instance.sop_instance_uid)))

    def instance_count(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)

    # ------------------------------------------------------------------ studies
    def study(self, study_uid: str) -> Study | None:
        with self._read() as s:
            return s.get(Study, study_uid)

    def studies(self, states: Sequence[str] | None = None, limit: int | None = None) -> list[Study]:
        """Studies, most recently active first, optionally only in ``states``."""
        with self._read() as s:
            q = select(Study)
            if states:
                q = q.where(Study.state.in_(list(states)))
            q = q.order_by(Study.updated_at.desc())
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def studies_to_examine(self) -> list[Study]:
        """Studies the conductor must look at: ``receiving`` (apply completeness rules) and
        ``complete`` (start a job; e.g. after `cardionode complete`)."""
        return self.studies(("receiving", "complete"))

    def last_instance_time(self, study_uid: str) -> datetime | None:
        """When the study's latest instance arrived (UTC), or None if unknown."""
        study = self.study(study_uid)
        return study.last_received_at if study else None

    def study_summary(self, study_uid: str) -> StudySummary:
        """The study's series as :class:`node.pipelines.base.StudySummary` (for routing)."""
        with self._read() as s:
            rows = s.scalars(
                select(Series).where(Series.study_uid == study_uid).order_by(Series.first_received_at)
            ).all()
            return StudySummary(
                study_instance_uid=study_uid,
                series=tuple(
                    SeriesSummary(
                        series_instance_uid=r.series_uid,
                        modality=r.modality,
                        sop_class_uid=r.sop_class_uid,
                        image_type=tuple(v for v in r.image_type.split(_MULTI)) if r.image_type else (),
                        series_description=r.description,
                        radiopharmaceutical_codes=tuple(
                            v for v in r.radiopharmaceutical_codes.split(_MULTI) if v
                        ),
                        instance_count=r.instance_count,
                    )
                    for r in rows
                ),
            )

    def transition_study(
        self,
        study_uid: str,
        to_state: str,
        reason: str,
        *,
        rule: str | None = None,
        pipeline: str | None = None,
        expected_from: Sequence[str] | None = None,
    ) -> Study:
        """Move a study to ``to_state`` with a reason (and the completeness ``rule`` when
        entering ``complete``); returns the updated study.

        ``expected_from``: the move happens only if the study is in one of these
        states, else :class:`LedgerError` (guards against two deciders racing).
        Entering ``processing`` increments ``run``. Ending a run (``done``,
        ``ignored``, ``failed``, ``given_up``) when instances arrived after the
        study was decided puts it back to ``receiving`` instead, with that reason.
        """
        if to_state not in STUDY_STATES:
            raise LedgerError(f"unknown study state {to_state!r}; states are {STUDY_STATES}")
        if to_state == "complete" and rule not in COMPLETENESS_RULES:
            raise LedgerError(f"entering 'complete' needs a rule from {COMPLETENESS_RULES}, got {rule!r}")
        now = utcnow()
        with self._write() as s:
            study = s.get(Study, study_uid)
            if study is None:
                raise LedgerError(f"no study {study_uid} in the ledger")
            if expected_from is not None and study.state not in expected_from:
                raise LedgerError(
                    f"study {study_uid} is {study.state}, not {'/'.join(expected_from)}; not moved to {to_state}"
                )
            old = study.state
            if (
                to_state in STUDY_FINISHED
                and study.decided_at is not None
                and study.last_received_at > study.decided_at
            ):
                reason = f"{to_state}: {reason}; instances arrived meanwhile, study will be processed again"
                to_state = "receiving"
            if to_state == "complete":
                study.rule, study.decided_at = rule, now
            if to_state == "processing":
                study.run += 1
            if pipeline is not None:
                study.pipeline = pipeline
            study.state, study.reason, study.updated_at = to_state, reason, now
            self._event(s, "study", study_uid, old, to_state, reason, rule if to_state == "complete" else None)
            return study

    def complete_study_manually(self, study_uid: str, reason: str = "declared complete by an operator") -> Study:
        """`cardionode complete`: mark a study ``complete`` with rule ``manual``.

        Allowed from any state except ``processing`` (the running job must finish
        or be discarded first); the conductor starts a job for it.
        """
        study = self.study(study_uid)
        if study is None:
            raise LedgerError(f"no study {study_uid} in the ledger; check the Study Instance UID with `cardionode status`")
        allowed = tuple(st for st in STUDY_STATES if st != "processing")
        return self.transition_study(study_uid, "complete", reason, rule="manual", expected_from=allowed)

    # ------------------------------------------------------------------ jobs
    def create_job(self, study_uid: str, pipeline: str, reason: str = "study complete") -> Job:
        """A new ``queued`` job for the study's current run (run = study.run, at least 1)."""
        now = utcnow()
        with self._write() as s:
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
            self._event(s, "job", job.id, None, "queued", reason)
            return job

    def job(self, job_id: int) -> Job | None:
        with self._read() as s:
            return s.get(Job, int(job_id))

    def jobs(
        self, states: Sequence[str] | None = None, study_uid: str | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered."""
        with self._read() as s:
            q = select(Job)
            if states:
                q = q.where(Job.state.in_(list(states)))
            if study_uid:
                q = q.where(Job.study_uid == study_uid)
            q = q.order_by(Job.id.desc())
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def transition_job(
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
        ``expected_from`` guards the move like :meth:`transition_study`.
        """
        if to_state not in JOB_STATES:
            raise LedgerError(f"unknown job state {to_state!r}; states are {JOB_STATES}")
        with self._write() as s:
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
            self._event(s, "job", job.id, old, to_state, reason or (error or ""))
            return job

    def retry_job(self, job_id: int) -> Job:
        """`cardionode retry`: a ``failed``/``dead``/``discarded`` job goes back to ``queued``
        (task id cleared, so the conductor dispatches it again); a ``reported`` or ``sent``
        job keeps its outputs and its ``dead_letter`` sends go back to ``pending``."""
        job = self.job(job_id)
        if job is None:
            raise LedgerError(f"no job {job_id} in the ledger; see `cardionode status`")
        now = utcnow()
        with self._write() as s:
            job = s.get(Job, int(job_id))
            assert job is not None
            has_outputs = s.scalar(select(func.count()).select_from(Output).where(Output.job_id == job.id)) or 0
            if job.state in ("queued", "running"):
                raise LedgerError(f"job {job_id} is {job.state}; nothing to retry")
            dead = list(s.scalars(select(Send).where(Send.job_id == job.id, Send.state == "dead_letter")))
            if has_outputs and job.state in ("reported", "sent", "dead") and dead:
                for send in dead:
                    self._event(s, "send", send.id, send.state, "pending", "retry requested by an operator")
                    send.state, send.attempts, send.next_attempt_at, send.updated_at = "pending", 0, now, now
                old, job.state = job.state, "reported"
                job.reason, job.updated_at = "sending again (operator retry)", now
                self._event(s, "job", job.id, old, "reported", job.reason)
            else:
                old, job.state = job.state, "queued"
                job.task_id, job.reason, job.updated_at = None, "queued again (operator retry)", now
                self._event(s, "job", job.id, old, "queued", job.reason)
            return job

    def discard_job(self, job_id: int, reason: str = "discarded by an operator") -> Job:
        """`cardionode discard`: the job becomes ``discarded``; its unsent sends go to
        ``dead_letter``; a study still ``processing`` for it becomes ``failed`` with the reason."""
        now = utcnow()
        with self._write() as s:
            job = s.get(Job, int(job_id))
            if job is None:
                raise LedgerError(f"no job {job_id} in the ledger; see `cardionode status`")
            old, job.state, job.reason, job.updated_at = job.state, "discarded", reason, now
            self._event(s, "job", job.id, old, "discarded", reason)
            for send in s.scalars(select(Send).where(Send.job_id == job.id, Send.state.in_(("pending", "retrying")))):
                self._event(s, "send", send.id, send.state, "dead_letter", reason)
                send.state, send.last_error, send.updated_at = "dead_letter", reason, now
            study = s.get(Study, job.study_uid)
            if study is not None and study.state == "processing":
                self._event(s, "study", study.study_uid, study.state, "failed", f"job {job.id}: {reason}")
                study.state, study.reason, study.updated_at = "failed", f"job {job.id}: {reason}", now
            return job

    # ------------------------------------------------------------------ outputs
    def record_output(self, job_id: int, pipeline: str, meta: OutputMeta) -> bool:
        """Record a result object written to the outbox; False if its SOP Instance UID exists."""
        with self._write() as s:
            if s.get(Output, meta.sop_instance_uid) is not None:
                return False
            s.add(
                Output(
                    sop_instance_uid=meta.sop_instance_uid,
                    job_id=int(job_id),
                    study_uid=meta.study_uid,
                    series_uid=meta.series_uid,
                    sop_class_uid=meta.sop_class_uid,
                    pipeline=pipeline,
                    path=meta.path,
                    size_bytes=meta.size_bytes,
                    created_at=utcnow(),
                )
            )
            return True

    def outputs(self, job_id: int) -> list[Output]:
        with self._read() as s:
            return list(s.scalars(select(Output).where(Output.job_id == int(job_id)).order_by(Output.created_at)))

    def output(self, sop_instance_uid: str) -> Output | None:
        with self._read() as s:
            return s.get(Output, sop_instance_uid)

    def predecessors(self, study_uid: str, pipeline: str, before_run: int | None = None) -> tuple[tuple[str, str, str, str], ...]:
        """SR outputs of earlier runs of ``pipeline`` on the study, for Predecessor Documents.

        Returns ``(study_uid, series_uid, sop_class_uid, sop_instance_uid)``
        tuples (the :class:`ReportContext.predecessors` format), oldest first,
        from jobs that reported or sent, and whose run is below ``before_run``
        (all runs when None).
        """
        with self._read() as s:
            q = (
                select(Output)
                .join(Job, Job.id == Output.job_id)
                .where(
                    Output.study_uid == study_uid,
                    Output.pipeline == pipeline,
                    Output.sop_class_uid.startswith(_SR_CLASS_PREFIX),
                    Job.state.in_(("reported", "sent")),
                )
                .order_by(Job.run, Output.created_at)
            )
            if before_run is not None:
                q = q.where(Job.run < before_run)
            return tuple((o.study_uid, o.series_uid, o.sop_class_uid, o.sop_instance_uid) for o in s.scalars(q))

    # ------------------------------------------------------------------ sends
    def create_sends(self, output_uid: str, destinations: Sequence[str]) -> list[Send]:
        """One ``pending`` send per destination name for an output (idempotent)."""
        now = utcnow()
        with self._write() as s:
            out = s.get(Output, output_uid)
            if out is None:
                raise LedgerError(f"no output {output_uid} in the ledger")
            existing = {x.destination: x for x in s.scalars(select(Send).where(Send.output_uid == output_uid))}
            for name in destinations:
                if name not in existing:
                    send = Send(
                        output_uid=output_uid,
                        job_id=out.job_id,
                        destination=name,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        last_error="",
                        created_at=now,
                        updated_at=now,
                    )
                    s.add(send)
                    s.flush()
                    self._event(s, "send", send.id, None, "pending", f"to {name}")
                    existing[name] = send
            return [existing[n] for n in destinations]

    def record_send_attempt(
        self,
        send_id: int,
        to_state: str,
        *,
        status: int | None = None,
        error: str = "",
        next_attempt_at: datetime | None = None,
    ) -> Send:
        """Record one sending attempt: counts it and sets ``sent``, ``retrying`` (with
        ``next_attempt_at``) or ``dead_letter``; ``status`` is the DIMSE status (None when
        no association)."""
        if to_state not in ("sent", "retrying", "dead_letter"):
            raise LedgerError(f"an attempt ends sent, retrying or dead_letter, not {to_state!r}")
        with self._write() as s:
            send = s.get(Send, int(send_id))
            if send is None:
                raise LedgerError(f"no send {send_id} in the ledger")
            old = send.state
            send.attempts += 1
            send.last_status, send.last_error = status, error
            send.next_attempt_at = next_attempt_at if to_state == "retrying" else None
            send.state, send.updated_at = to_state, utcnow()
            status_text = f"status 0x{status:04X}" if status is not None else "no status"
            self._event(s, "send", send.id, old, to_state, f"attempt {send.attempts}: {status_text} {error}".strip())
            return send

    def sends(
        self, states: Sequence[str] | None = None, job_id: int | None = None, limit: int | None = None
    ) -> list[Send]:
        with self._read() as s:
            q = select(Send)
            if states:
                q = q.where(Send.state.in_(list(states)))
            if job_id is not None:
                q = q.where(Send.job_id == int(job_id))
            q = q.order_by(Send.id.desc())
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def sends_due(self, now: datetime | None = None) -> list[Send]:
        """``pending`` and ``retrying`` sends whose ``next_attempt_at`` has passed, oldest first."""
        now = now or utcnow()
        with self._read() as s:
            q = (
                select(Send)
                .where(Send.state.in_(("pending", "retrying")))
                .where((Send.next_attempt_at.is_(None)) | (Send.next_attempt_at <= now))
                .order_by(Send.id)
            )
            return list(s.scalars(q))

    # ------------------------------------------------------------------ rejections and events
    def record_rejection(
        self,
        reason: str,
        status: int,
        *,
        calling_ae: str = "",
        peer_address: str = "",
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
        study_uid: str = "",
    ) -> int:
        """Record a refused instance or association (``status`` 0 for associations); returns its id.

        UIDs are stored as received (clipped to 80 characters), never patient data.
        """
        with self._write() as s:
            row = Rejection(
                at=utcnow(),
                calling_ae=_clip(calling_ae, 16),
                peer_address=_clip(peer_address, 64),
                sop_class_uid=_clip(sop_class_uid, 80),
                sop_instance_uid=_clip(sop_instance_uid, 80),
                study_uid=_clip(study_uid, 80),
                status=int(status),
                reason=reason,
            )
            s.add(row)
            s.flush()
            return row.id

    def rejections(self, limit: int | None = None) -> list[Rejection]:
        with self._read() as s:
            q = select(Rejection).order_by(Rejection.id.desc())
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def events(self, entity: str | None = None, entity_id: object | None = None, limit: int | None = None) -> list[Event]:
        """State changes, oldest first, optionally of one entity (``study``/``job``/``send``)."""
        with self._read() as s:
            q = select(Event)
            if entity:
                q = q.where(Event.entity == entity)
            if entity_id is not None:
                q = q.where(Event.entity_id == str(entity_id))
            q = q.order_by(Event.id)
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _make_engine(url: str, busy_timeout_s: float) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; on power loss the last
        # commits may be lost. Instances are fsync'ed in the spool before their commit and
        # node.dicom.scp.recover_unrecorded_instances re-records them at start.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
