"""The node's durable state: what it received, decided, produced and sent, with states and reasons.

:class:`Ledger` (:mod:`node.ledger.ledger`) opens one database and gives one store per
entity: ``ledger.instances`` (:mod:`node.ledger.instances`), ``ledger.studies``
(studies, series and their states, :mod:`node.ledger.studies`), ``ledger.jobs``
(:mod:`node.ledger.jobs`), ``ledger.outputs`` and ``ledger.sends``
(:mod:`node.ledger.outputs`), ``ledger.rejections`` and ``ledger.events``
(:mod:`node.ledger.events`). Tables, states, the time convention, thread safety and
durability are in :mod:`node.ledger.schema`.
"""

from node.ledger.events import EventStore, RejectionStore
from node.ledger.instances import InstanceMeta, InstanceStore
from node.ledger.jobs import JobStore
from node.ledger.ledger import Ledger
from node.ledger.outputs import OutputMeta, OutputStore, SendStore
from node.ledger.schema import (
    COMPLETENESS_RULES,
    JOB_STATES,
    SEND_STATES,
    STUDY_STATES,
    Event,
    Instance,
    Job,
    LedgerError,
    Output,
    RejectionRecord,
    Send,
    Series,
    Study,
    utcnow,
)
from node.ledger.studies import StudyStore

__all__ = [
    "COMPLETENESS_RULES",
    "JOB_STATES",
    "SEND_STATES",
    "STUDY_STATES",
    "Event",
    "EventStore",
    "Instance",
    "InstanceMeta",
    "InstanceStore",
    "Job",
    "JobStore",
    "Ledger",
    "LedgerError",
    "Output",
    "OutputMeta",
    "OutputStore",
    "RejectionRecord",
    "RejectionStore",
    "Send",
    "SendStore",
    "Series",
    "Study",
    "StudyStore",
    "utcnow",
]
