"""The ledger's schema and database: tables, states, time convention, sessions.

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
  ``receiving`` instead of ``done`` (see :meth:`node.ledger.studies.StudyStore.transition`).
* job: ``queued`` -> ``running`` -> ``reported`` -> ``sent`` | ``failed`` | ``dead`` | ``discarded``.
* send (one per output and destination): ``pending`` -> ``sent`` | ``retrying`` | ``dead_letter``.
* workitem (a UPS, :mod:`node.ledger.workitems`): ``SCHEDULED`` -> ``IN PROGRESS`` -> ``COMPLETED`` |
  ``CANCELED`` (DICOM's words; the transitions are PS3.4 Table CC.1.1-2's, :mod:`node.workflow.ups`).

All times are naive UTC :class:`datetime.datetime` (:func:`utcnow`). The stores
return detached snapshots of the rows (ORM objects whose attributes are
loaded); changing them does not change the ledger.

:class:`Database` is safe to use from several threads (one session per call).
SQLite runs in WAL mode with ``BEGIN IMMEDIATE`` and a busy timeout, so writers
queue instead of failing; on PostgreSQL each write transaction first takes one
transaction-scoped advisory lock, so writers queue there too (and two
processes cannot both create the row of a new study). SQLite runs with
``synchronous=NORMAL``: every commit survives a crash of the process (kill -9);
after a power failure the last commits may be missing, which is why received
instances are fsync'ed in the spool first and re-recorded from it at start
(:func:`node.dicom.storage.recover_unrecorded_instances`).

Schema revisions (Alembic, :mod:`node.ledger.revisions` and the revisions in
:mod:`node.ledger.migrations`): every process that opens the ledger
(:class:`Database`) goes through :func:`prepare_schema`, the one place that decides
what to do with the database it finds (:func:`schema_status`):

* ``empty`` (none of the ledger's tables, no revision): created at the head
  revision, by running the revisions; two processes starting at once create it once;
* ``current`` (at the head revision): used;
* ``behind`` (at an older revision), ``unversioned`` (a ledger made before schema
  revisions: the ledger's tables but no ``alembic_version``): refused with
  :class:`LedgerSchemaError`, whose message says to run ``cardionode db upgrade``
  (:func:`upgrade_schema`, which keeps every row);
* ``newer`` (a revision this CardioNode does not know: a newer one upgraded it),
  ``obsolete`` (series without routing attributes: older than the baseline) and
  ``foreign`` (some of the ledger's table names, not all, and no revision): refused,
  and not upgraded either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from node.ledger import revisions
from node.pipelines.routing import AttributeValue

__all__ = [
    "COMPLETENESS_RULES",
    "JOB_FINISHED",
    "JOB_STATES",
    "PRUNED_PATH",
    "SCHEMA_STATES",
    "SEND_STATES",
    "STUDY_FINISHED",
    "STUDY_STATES",
    "WORKITEM_STATES",
    "WORKLIST_OUTCOMES",
    "Base",
    "Database",
    "Event",
    "Instance",
    "Job",
    "LedgerError",
    "LedgerSchemaError",
    "Output",
    "RejectionRecord",
    "SchemaStatus",
    "Send",
    "Series",
    "Store",
    "Study",
    "UpsSubscription",
    "Workitem",
    "WorklistAnswer",
    "clip",
    "prepare_schema",
    "read_schema_status",
    "refusal",
    "schema_status",
    "upgrade_schema",
    "utcnow",
]

_log = logging.getLogger("node.ledger")

STUDY_STATES = ("receiving", "complete", "processing", "done", "ignored", "failed", "given_up")
STUDY_FINISHED = ("done", "ignored", "failed", "given_up")
JOB_STATES = ("queued", "running", "reported", "sent", "failed", "dead", "discarded")
JOB_FINISHED = ("sent", "failed", "dead", "discarded")
SEND_STATES = ("pending", "sent", "retrying", "dead_letter")
COMPLETENESS_RULES = ("expected_series", "quiet_period", "force_deadline", "manual", "ups_inputs")
#: states of a UPS work item (DICOM PS3.4 Table CC.1.1-1), as DICOM spells them
WORKITEM_STATES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED")
#: what a worklist lookup found: an answer, no scheduled step for the study, or no answer (down, refused, timed out)
WORKLIST_OUTCOMES = ("found", "not_found", "down")
#: the ``path`` of an instance or output whose file retention removed (node.ops.retention); the row stays
PRUNED_PATH = ""

#: key of the PostgreSQL advisory lock that serialises the ledger's write transactions
_PG_WRITE_LOCK_KEY = 0x43_4E_4C_45_44  # "CNLED"


def utcnow() -> datetime:
    """Now, as naive UTC (the ledger's time convention)."""
    return datetime.now(UTC).replace(tzinfo=None)


def clip(text: str | None, n: int) -> str:
    """``text`` cut to the ``n`` characters its column holds (``""`` for None)."""
    return (text or "")[:n]


class LedgerError(RuntimeError):
    """A ledger operation that cannot be done (unknown id, forbidden transition)."""


class LedgerSchemaError(LedgerError):
    """The ledger's database is not at this CardioNode's schema revision; the message says what to do."""


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables (``Base.metadata`` is the schema)."""


class Study(Base):
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


class Series(Base):
    __tablename__ = "series"

    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    # routing attributes (node.pipelines.routing): name -> string or list of strings
    routing: Mapped[dict[str, AttributeValue]] = mapped_column(JSON, default=dict)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)


class Instance(Base):
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


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), index=True)
    pipeline: Mapped[str] = mapped_column(String(64))
    run: Mapped[int] = mapped_column(Integer, default=1)  # the study's run this job belongs to
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    task_id: Mapped[str | None] = mapped_column(String(128), default=None)  # Celery task id of the running step (node.queue)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Output(Base):
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


class Send(Base):
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
    last_error: Mapped[str] = mapped_column(Text, default="")  # the node's words, never the peer's
    # protected: the destination's Error Comment at the last attempt, the study's patient identifiers
    # replaced (node.dicom.logs.clean_peer_text); never logged, shown only by `cardionode status --peer-text`
    peer_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class Event(Base):
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


class WorklistAnswer(Base):
    """What the modality worklist said about a study (table ``worklist_answers``, one row per study).

    Written by :mod:`node.ledger.worklist` for :mod:`node.workflow.worklist`. No patient
    name, birth date or patient ID: ``patient_key`` is a one-way hash of the patient ID
    and its issuer (to pair studies of one patient, e.g. the two days of a stress/rest
    protocol); the accession number is kept because orders are paired by it.
    ``steps`` holds every scheduled procedure step the worklist returned for the query
    (date, time, modality, protocol codes, stress/rest states, accession, requested
    procedure), ``clinical`` the facts the pipelines use (height in m, weight in kg,
    sex, age in years, reason for the requested procedure).
    """

    __tablename__ = "worklist_answers"

    study_uid: Mapped[str] = mapped_column(ForeignKey("studies.study_uid"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), index=True)  # WORKLIST_OUTCOMES
    worklist: Mapped[str] = mapped_column(String(64), default="")  # name of the [[worklists]] entry
    matched_by: Mapped[str] = mapped_column(String(16), default="")  # accession | patient
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")  # the node's words, no identifiers
    patient_key: Mapped[str] = mapped_column(String(64), default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    pipeline: Mapped[str | None] = mapped_column(String(64), default=None)
    expected_series: Mapped[list[str]] = mapped_column(JSON, default=list)
    clinical: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    queried_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class RejectionRecord(Base):
    """A refused instance, association or presentation context (table ``rejections``)."""

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


class Workitem(Base):
    """A Unified Procedure Step (UPS) work item (table ``workitems``, :mod:`node.ledger.workitems`).

    ``role``: ``manager`` for a UPS the node's UPS SCP manages (:mod:`node.dicom.ups_scp`);
    ``performer`` for a UPS of a site's task manager the node claimed or looked at
    (:mod:`node.workflow.performer`): ``transaction_uid`` is then the node's claim, written before
    the claim is sent; ``performer_ae`` the node's AE title while it holds the UPS (``""`` when
    another performer does); ``run`` the study's processing run that performs it.
    ``attributes`` is the UPS itself in the DICOM JSON model, without its Transaction UID;
    it is protected like ``sends.peer_text``: it holds the patient's identification that
    N-GET and C-FIND return, and is never logged or shown by `cardionode status`.
    ``transaction_uid`` is the locking UID recorded at the claim, kept after the final state
    (a repeated COMPLETED gets B306) and never returned to a peer. ``performer_ae``: the
    calling AE title of the claim (``""`` while SCHEDULED or when the node performs it).
    """

    __tablename__ = "workitems"

    sop_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="manager")
    state: Mapped[str] = mapped_column(String(16), index=True)  # WORKITEM_STATES
    transaction_uid: Mapped[str] = mapped_column(String(64), default="")
    performer_ae: Mapped[str] = mapped_column(String(16), default="")
    input_readiness: Mapped[str] = mapped_column(String(16), default="")
    priority: Mapped[str] = mapped_column(String(8), default="")
    label: Mapped[str] = mapped_column(Text, default="")  # Procedure Step Label
    worklist_label: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    progress: Mapped[float | None] = mapped_column(Float, default=None)  # Procedure Step Progress, percent
    progress_description: Mapped[str] = mapped_column(Text, default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")  # the node's words about the last change
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)  # entered COMPLETED or CANCELED
    # role ``performer`` (node.workflow.performer): the study's processing run that performs the work item
    run: Mapped[int | None] = mapped_column(Integer, default=None)


class UpsSubscription(Base):
    """An AE's subscription to the UPS event reports (table ``ups_subscriptions``, PS3.4 CC.2.3).

    ``ups_uid`` is the SOP Instance UID of one UPS, or a well-known UID for the AE's global
    state (1.2.840.10008.5.1.4.34.5, or 1.2.840.10008.5.1.4.34.5.1 with the matching keys of
    a filtered global subscription in ``filter``, DICOM JSON model).
    """

    __tablename__ = "ups_subscriptions"
    __table_args__ = (UniqueConstraint("ae_title", "ups_uid", name="uq_ups_subscription"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ae_title: Mapped[str] = mapped_column(String(16), index=True)
    ups_uid: Mapped[str] = mapped_column(String(64), index=True)
    deletion_lock: Mapped[bool] = mapped_column(Boolean, default=False)
    filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Database:
    """The ledger's database at ``url``: engine, schema revision check, and sessions for the stores.

    An empty database is created at the head revision; one at any other revision is
    refused with :class:`LedgerSchemaError` (:func:`prepare_schema`). Thread safety
    and durability: see the module docstring.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url, busy_timeout_s)
        try:
            prepare_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._postgresql = self.engine.dialect.name == "postgresql"
        # SQLite serialises writers anyway; this lock keeps threads of one process from
        # spinning on the busy timeout.
        self._write_lock: AbstractContextManager[Any] = (
            threading.RLock() if url.startswith("sqlite") else nullcontext()
        )

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in a write transaction, committed when the block ends (rolled back on error)."""
        with self._write_lock, self._sessions.begin() as session:
            if self._postgresql:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITE_LOCK_KEY})
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; rows read stay usable after the block (detached snapshots)."""
        with self._sessions() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


class Store:
    """Base of the per-entity stores (:mod:`node.ledger.instances`, ...): they share one :class:`Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database


# ---------------------------------------------------------------- schema revisions

#: what :func:`schema_status` finds in a database (see the module docstring)
SCHEMA_STATES = ("empty", "current", "behind", "unversioned", "newer", "obsolete", "foreign")

#: the tables of a ledger made before schema revisions (the baseline revision's tables)
_UNVERSIONED_TABLES = ("studies", "series", "instances", "jobs", "outputs", "sends", "events", "rejections")
#: a ledger made before schema revisions is at the first of these revisions whose
#: (table, column) it has, else at :data:`_BASELINE_REVISION`; fixed history, never extended
_UNVERSIONED_MARKERS = (("0002", "sends", "peer_text"),)
_BASELINE_REVISION = "0001"


@dataclass(frozen=True)
class SchemaStatus:
    """Where a ledger database stands against this CardioNode's schema revisions.

    Attributes
    ----------
    state : str
        One of :data:`SCHEMA_STATES`.
    revision : str or None
        The revision recorded in the database; for an ``unversioned`` ledger, the
        revision its tables match; None when ``empty``, ``obsolete`` or ``foreign``.
    head : str
        This CardioNode's revision (the newest).
    missing : tuple of str
        For ``foreign``: the ledger's tables the database lacks.
    """

    state: str
    revision: str | None
    head: str
    missing: tuple[str, ...] = ()


def schema_status(connection: Connection) -> SchemaStatus:
    """What the database on ``connection`` holds: no ledger, a ledger at some revision, or something else."""
    head = revisions.head_revision()
    revision = revisions.current_revision(connection)
    if revision is not None:
        if revision == head:
            return SchemaStatus("current", revision, head)
        return SchemaStatus("behind" if revisions.is_known(revision) else "newer", revision, head)
    inspector = inspect(connection)
    ledger_tables = set(inspector.get_table_names()) & (set(Base.metadata.tables) | set(_UNVERSIONED_TABLES))
    if not ledger_tables:
        return SchemaStatus("empty", None, head)
    if "series" in ledger_tables and "routing" not in {c["name"] for c in inspector.get_columns("series")}:
        return SchemaStatus("obsolete", None, head)
    missing = tuple(t for t in _UNVERSIONED_TABLES if t not in ledger_tables)
    if missing:
        return SchemaStatus("foreign", None, head, missing)
    matched = next(
        (rev for rev, table, column in _UNVERSIONED_MARKERS if column in {c["name"] for c in inspector.get_columns(table)}),
        _BASELINE_REVISION,
    )
    return SchemaStatus("unversioned", matched, head)


def prepare_schema(engine: Engine) -> None:
    """Make the ledger at ``engine`` usable by this CardioNode, or refuse it in words.

    An ``empty`` database is created at the head revision (under the write lock, so
    that processes starting together create it once); a ``current`` one is used as it
    is; any other is refused with :class:`LedgerSchemaError` (see :func:`refusal`).
    Every process that opens the ledger goes through here (:class:`Database`).
    """
    with engine.connect() as connection:
        status = schema_status(connection)
    if status.state == "empty":
        with _locked(engine) as connection:
            status = schema_status(connection)  # another process may have created it meanwhile
            if status.state == "empty":
                revisions.upgrade(connection)
                _log.info("ledger at %s created at schema revision %s", _where(engine), status.head)
                return
    if status.state != "current":
        raise LedgerSchemaError(refusal(status, _where(engine)))


def refusal(status: SchemaStatus, where: str) -> str:
    """Why the node does not use the ledger at ``where`` in ``status``, and what the operator does about it."""
    upgrade = "run `cardionode db upgrade` (with the same configuration) to upgrade it; it keeps every record"
    messages = {
        "behind": (
            f"the ledger at {where} is at schema revision {status.revision} and this CardioNode needs "
            f"revision {status.head}: {upgrade}"
        ),
        "unversioned": (
            f"the ledger at {where} was created by a CardioNode from before schema revisions (no "
            f"{revisions.VERSION_TABLE} table) and this CardioNode needs revision {status.head}: {upgrade}"
        ),
        "newer": (
            f"the ledger at {where} is at schema revision {status.revision}, which this CardioNode does not know "
            f"(its newest is {status.head}): a newer CardioNode upgraded it; run that version, or restore the "
            "ledger from a backup taken before the upgrade"
        ),
        "obsolete": (
            f"the ledger at {where} was created by an earlier CardioNode (series without a 'routing' column), "
            "older than `cardionode db upgrade` can convert; move it aside (finished studies are in the PACS, "
            "unfinished ones are re-recorded from the spool when the listener starts) or recreate it"
        ),
        "foreign": (
            f"the database at {where} has some of the ledger's tables but not {', '.join(status.missing)}, and no "
            f"{revisions.VERSION_TABLE} table: it is not a CardioNode ledger; set ledger_url to an empty "
            "database or to a CardioNode ledger"
        ),
    }
    if status.state not in messages:
        raise ValueError(f"a ledger in state {status.state!r} is used, not refused")
    return messages[status.state]


def read_schema_status(url: str) -> SchemaStatus:
    """:func:`schema_status` of the ledger at ``url``, changing nothing (``cardionode db current``)."""
    engine = _make_engine(url, busy_timeout_s=30.0)
    try:
        with engine.connect() as connection:
            return schema_status(connection)
    finally:
        engine.dispose()


def upgrade_schema(url: str) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the ledger at ``url`` to the head revision, keeping its rows (``cardionode db upgrade``).

    ``empty``: created; ``behind``: the revisions after its own run; ``unversioned``
    (made before revisions): recorded at the revision its tables match, then upgraded;
    ``current``: nothing to do. ``newer``, ``obsolete`` and ``foreign`` are refused with
    :class:`LedgerSchemaError`. Everything runs in one transaction under the ledger's
    write lock: a failed upgrade changes nothing.

    Returns
    -------
    before, after : SchemaStatus
        The ledger's status before and after.
    """
    engine = _make_engine(url, busy_timeout_s=30.0)
    try:
        with _locked(engine) as connection:
            before = schema_status(connection)
            if before.state in ("newer", "obsolete", "foreign"):
                raise LedgerSchemaError(refusal(before, _where(engine)))
            if before.state == "unversioned":
                assert before.revision is not None
                revisions.stamp(connection, before.revision)
            if before.state != "current":
                revisions.upgrade(connection)
            after = schema_status(connection)
    finally:
        engine.dispose()
    if before.state != "current":
        _log.info("ledger at %s upgraded from %s (revision %s) to revision %s",
                  _where(engine), before.state, before.revision, after.revision)
    return before, after


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the ledger's write lock (SQLite: ``BEGIN IMMEDIATE``;
    PostgreSQL: the advisory lock of :meth:`Database.write`), committed when the block ends."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_WRITE_LOCK_KEY})
        yield connection


def _where(engine: Engine) -> str:
    """The database's URL for messages, password hidden."""
    return engine.url.render_as_string(hide_password=True)


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
        # node.dicom.storage.recover_unrecorded_instances re-records them at start.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
