"""The :class:`Ledger`: one database and a store per entity.

Each entity has its own store, reached as an attribute::

    ledger = Ledger.from_settings(settings)
    ledger.instances.record(meta)
    ledger.studies.transition(study_uid, "complete", "all series received", rule="expected_series")
    job = ledger.jobs.create(study_uid, "spect_mpi")
    ledger.sends.due()

A new kind of record (UPS work items, worklist answers) adds a store module
and one attribute here, not methods on a growing class.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from node.ledger.events import EventStore, RejectionStore
from node.ledger.instances import InstanceStore
from node.ledger.jobs import JobStore
from node.ledger.outputs import OutputStore, SendStore
from node.ledger.retention import RetentionStore
from node.ledger.schema import Database
from node.ledger.studies import StudyStore
from node.ledger.workitems import SubscriptionStore, WorkitemStore
from node.ledger.worklist import WorklistStore

__all__ = ["Ledger"]


class Ledger:
    """The node's ledger at ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    An empty database is created at the head schema revision; a database at
    another revision is refused with :class:`node.ledger.schema.LedgerSchemaError`
    (``cardionode db upgrade``). Use one :class:`Ledger` per process; it may be
    shared by threads (see :mod:`node.ledger.schema`).

    Attributes
    ----------
    instances : InstanceStore
        Received instances (creates study and series rows).
    studies : StudyStore
        Studies, their series summaries and state transitions.
    jobs : JobStore
        Processing jobs, operator retry and discard.
    outputs : OutputStore
        Result objects in the outbox, predecessors of a new report.
    sends : SendStore
        One send per output and destination, with attempts.
    rejections : RejectionStore
        Refused instances, associations and presentation contexts.
    events : EventStore
        Every state change, with its reason.
    retention : RetentionStore
        What the files of each study are still needed for; marks of pruned files.
    workitems : WorkitemStore
        UPS work items of the node's UPS SCP (:mod:`node.ledger.workitems`).
    ups_subscriptions : SubscriptionStore
        Who receives the UPS event reports.
    worklist : WorklistStore
        What the modality worklist said about each study (:meth:`WorklistStore.answer_for`).
    """

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.database = Database(url, busy_timeout_s=busy_timeout_s)
        self.instances = InstanceStore(self.database)
        self.studies = StudyStore(self.database)
        self.jobs = JobStore(self.database)
        self.outputs = OutputStore(self.database)
        self.sends = SendStore(self.database)
        self.rejections = RejectionStore(self.database)
        self.events = EventStore(self.database)
        self.retention = RetentionStore(self.database)
        self.workitems = WorkitemStore(self.database)
        self.ups_subscriptions = SubscriptionStore(self.database)
        self.worklist = WorklistStore(self.database)

    @classmethod
    def from_settings(cls, settings: Any) -> Ledger:
        """The ledger configured in ``settings`` (a :class:`node.config.Settings`); creates data_dir."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings.effective_ledger_url)

    @property
    def url(self) -> str:
        return self.database.url

    @property
    def engine(self) -> Engine:
        return self.database.engine

    def close(self) -> None:
        self.database.close()
