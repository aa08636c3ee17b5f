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
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
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
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from node.pipelines.routing import AttributeValue

__all__ = [
    "COMPLETENESS_RULES",
    "JOB_FINISHED",
    "JOB_STATES",
    "SEND_STATES",
    "STUDY_FINISHED",
    "STUDY_STATES",
    "Base",
    "Database",
    "Event",
    "Instance",
    "Job",
    "LedgerError",
    "Output",
    "RejectionRecord",
    "Send",
    "Series",
    "Store",
    "Study",
    "clip",
    "utcnow",
]

STUDY_STATES = ("receiving", "complete", "processing", "done", "ignored", "failed", "given_up")
STUDY_FINISHED = ("done", "ignored", "failed", "given_up")
JOB_STATES = ("queued", "running", "reported", "sent", "failed", "dead", "discarded")
JOB_FINISHED = ("sent", "failed", "dead", "discarded")
SEND_STATES = ("pending", "sent", "retrying", "dead_letter")
COMPLETENESS_RULES = ("expected_series", "quiet_period", "force_deadline", "manual")

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


class Database:
    """The ledger's database at ``url``: engine, schema check, and sessions for the stores.

    Tables are created if missing; a ledger written by an earlier, incompatible
    CardioNode is refused with :class:`LedgerError`. Thread safety and
    durability: see the module docstring.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.engine: Engine = _make_engine(url, busy_timeout_s)
        Base.metadata.create_all(self.engine)
        _check_schema(self.engine, url)
        _add_columns(self.engine)
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


def _check_schema(engine: Engine, url: str) -> None:
    """Refuse a ledger written by an earlier CardioNode whose series rows lack the routing attributes."""
    columns = {c["name"] for c in inspect(engine).get_columns("series")}
    if "routing" not in columns:
        raise LedgerError(
            f"the ledger at {make_url(url).render_as_string(hide_password=True)} was created by an earlier "
            "CardioNode (series without a 'routing' column); move it aside (finished studies are in the PACS, "
            "unfinished ones are re-recorded from the spool when the listener starts) or recreate it"
        )


#: columns added to existing tables since the ledger format began: (table, column, SQL definition);
#: a ledger that lacks one gets it when opened
_ADDED_COLUMNS = (("sends", "peer_text", "TEXT NOT NULL DEFAULT ''"),)


def _add_columns(engine: Engine) -> None:
    """Add the :data:`_ADDED_COLUMNS` an older ledger lacks (another process may add them at the same time)."""
    for table, column, definition in _ADDED_COLUMNS:
        if column in {c["name"] for c in inspect(engine).get_columns(table)}:
            continue
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except DBAPIError:
            if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise


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
