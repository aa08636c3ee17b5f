"""The node's durable state: what it received, decided, produced and sent, with states and reasons.

:class:`Ledger` (:mod:`node.ledger.ledger`) opens one database and gives one store per
entity: ``ledger.instances`` (:mod:`node.ledger.instances`), ``ledger.studies``
(studies, series and their states, :mod:`node.ledger.studies`), ``ledger.jobs``
(:mod:`node.ledger.jobs`), ``ledger.outputs`` and ``ledger.sends``
(:mod:`node.ledger.outputs`), ``ledger.rejections`` and ``ledger.events``
(:mod:`node.ledger.events`), ``ledger.retention`` (what retention may remove,
:mod:`node.ledger.retention`), ``ledger.worklist`` (what the modality worklist said about
each study, :mod:`node.ledger.worklist`), ``ledger.workitems`` and ``ledger.ups_subscriptions``
(the UPS work items of the node's UPS SCP and their subscribers, :mod:`node.ledger.workitems`).
Tables, states, the time convention, thread safety, durability and what the node does with
a database at each schema revision are in :mod:`node.ledger.schema`; the revisions themselves (Alembic) in
:mod:`node.ledger.migrations`, run through :mod:`node.ledger.revisions`;
``cardionode db upgrade`` and ``db current`` in :mod:`node.ledger.commands`.
"""

from node.ledger.events import EventStore, RejectionStore
from node.ledger.instances import InstanceMeta, InstanceStore
from node.ledger.jobs import JobStore
from node.ledger.ledger import Ledger
from node.ledger.outputs import OutputMeta, OutputStore, SendStore
from node.ledger.retention import RetentionStore, StudyRetention
from node.ledger.schema import (
    COMPLETENESS_RULES,
    JOB_STATES,
    PRUNED_PATH,
    SCHEMA_STATES,
    SEND_STATES,
    STUDY_STATES,
    WORKITEM_STATES,
    WORKLIST_OUTCOMES,
    Event,
    Instance,
    Job,
    LedgerError,
    LedgerSchemaError,
    Output,
    RejectionRecord,
    SchemaStatus,
    Send,
    Series,
    Study,
    UpsSubscription,
    Workitem,
    WorklistAnswer,
    read_schema_status,
    upgrade_schema,
    utcnow,
)
from node.ledger.studies import StudyStore
from node.ledger.workitems import SubscriptionStore, WorkitemChange, WorkitemStore
from node.ledger.worklist import WorklistStore

__all__ = [
    "COMPLETENESS_RULES",
    "JOB_STATES",
    "PRUNED_PATH",
    "SCHEMA_STATES",
    "SEND_STATES",
    "STUDY_STATES",
    "WORKLIST_OUTCOMES",
    "Event",
    "EventStore",
    "Instance",
    "InstanceMeta",
    "InstanceStore",
    "Job",
    "JobStore",
    "Ledger",
    "LedgerError",
    "LedgerSchemaError",
    "Output",
    "OutputMeta",
    "OutputStore",
    "RejectionRecord",
    "RejectionStore",
    "RetentionStore",
    "SchemaStatus",
    "Send",
    "SendStore",
    "Series",
    "Study",
    "StudyStore",
    "StudyRetention",
    "SubscriptionStore",
    "UpsSubscription",
    "WORKITEM_STATES",
    "Workitem",
    "WorkitemChange",
    "WorkitemStore",
    "WorklistAnswer",
    "WorklistStore",
    "read_schema_status",
    "upgrade_schema",
    "utcnow",
]
