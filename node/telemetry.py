"""The node's Prometheus instruments: one registry, every metric defined once (knows nothing else).

The node service process owns these. The listener, the assembler, the conductor and the
sender record into them where the event happens; :mod:`node.web` exposes :data:`REGISTRY`
at ``/metrics`` together with gauges it computes from the ledger and the broker at scrape
time. Celery workers are separate processes and record nothing here: job step durations
reach the conductor in the workers' reports and are observed there.

Names follow the Prometheus conventions (https://prometheus.io/docs/practices/naming): the
prefix ``cardionode_``, base units (seconds, bytes) in the name, ``_total`` on counters
(``prometheus_client`` appends it), labels of low cardinality only. No label ever carries a
study, series or instance UID, an accession number or a patient identifier.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = [
    "ASSOCIATIONS",
    "ASSOCIATIONS_ABORTED",
    "ASSOCIATIONS_ACTIVE",
    "COMPLETENESS_DECISIONS",
    "EXPORT_ATTEMPTS",
    "INSTANCES_RECEIVED",
    "INSTANCES_REFUSED",
    "JOB_DURATION",
    "LAST_IMAGE_TO_RESULT",
    "MODEL_INFERENCE",
    "MWL_QUERIES",
    "RECEIVED_BYTES",
    "REGISTRY",
    "STUDIES_PAIRED",
    "dimse_status_label",
]

# no ``*_created`` series beside each counter and histogram (the time a label set was first seen): the
# text format has no use for them, and they would double the series a scrape returns
disable_created_metrics()

#: the node's own registry (not prometheus_client's global one, which also holds process metrics
#: of whatever imported it); node.web adds its scrape-time collectors to it
REGISTRY = CollectorRegistry(auto_describe=True)

ASSOCIATIONS_ACTIVE = Gauge(
    "cardionode_associations_active",
    "DICOM associations open now",
    ["role"],  # scp: peers' associations with the listener; scu: the node's own (sending, queries)
    registry=REGISTRY,
)
ASSOCIATIONS = Counter(
    "cardionode_associations",
    "DICOM associations requested, by the answer to the request",
    # result: accepted | rejected | failed (no answer: connection refused, timed out or lost before the
    # answer; the node's own requests only); each request counted once, so a sum over result is the requests
    ["role", "result"],
    registry=REGISTRY,
)
ASSOCIATIONS_ABORTED = Counter(
    "cardionode_associations_aborted",
    "accepted DICOM associations that ended in an A-ABORT (by either side, or a lost connection) instead of a release",
    ["role"],
    registry=REGISTRY,
)
INSTANCES_RECEIVED = Counter(
    "cardionode_instances_received",
    "instances stored in the spool and the ledger (duplicates not counted)",
    ["source"],  # dimse | stowrs
    registry=REGISTRY,
)
RECEIVED_BYTES = Counter(
    "cardionode_received_bytes",
    "bytes of the instances stored in the spool",
    ["source"],
    registry=REGISTRY,
)
INSTANCES_REFUSED = Counter(
    "cardionode_instances_refused",
    "instances refused, by the DIMSE status the refusal carries (hex, e.g. 0xA700)",
    ["source", "status"],
    registry=REGISTRY,
)
COMPLETENESS_DECISIONS = Counter(
    "cardionode_completeness_decisions",
    "studies found complete, by the rule that decided",
    ["rule"],  # node.ledger COMPLETENESS_RULES
    registry=REGISTRY,
)
LAST_IMAGE_TO_RESULT = Histogram(
    "cardionode_last_image_to_result_seconds",
    "seconds from a study's last received instance to its results acknowledged by a destination",
    ["pipeline"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "cardionode_job_duration_seconds",
    "seconds a job step ran in a worker",
    ["pipeline", "step"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
MODEL_INFERENCE = Histogram(
    "cardionode_model_inference_seconds",
    "seconds a job's model step (inference and explanations) ran in a worker",
    ["pipeline"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
EXPORT_ATTEMPTS = Counter(
    "cardionode_export_attempts",
    "C-STORE attempts of result objects, by destination and outcome",
    ["destination", "outcome"],  # outcome: success | transient | permanent
    registry=REGISTRY,
)
MWL_QUERIES = Counter(
    "cardionode_mwl_queries",
    "modality worklist lookups of a study, by outcome",
    ["outcome"],  # found | not_found | down (node.ledger WORKLIST_OUTCOMES)
    registry=REGISTRY,
)
STUDIES_PAIRED = Counter(
    "cardionode_studies_paired",
    "two-day stress/rest pairings decided, by where the earlier study came from",
    ["outcome"],  # from_ledger | fetched | alone (the earlier study found nowhere: processed alone)
    registry=REGISTRY,
)

# series whose label values are known in advance exist from the start, at zero (a rate over a series
# that appears with its first event misses that event); destinations, pipelines, steps, rules and
# statuses appear with their first event
for _role in ("scp", "scu"):
    ASSOCIATIONS_ACTIVE.labels(role=_role)
    ASSOCIATIONS_ABORTED.labels(role=_role)
    for _result in ("accepted", "rejected"):
        ASSOCIATIONS.labels(role=_role, result=_result)
ASSOCIATIONS.labels(role="scu", result="failed")
for _outcome in ("found", "not_found", "down"):
    MWL_QUERIES.labels(outcome=_outcome)
for _outcome in ("from_ledger", "fetched", "alone"):
    STUDIES_PAIRED.labels(outcome=_outcome)
for _source in ("dimse", "stowrs"):
    INSTANCES_RECEIVED.labels(source=_source)
    RECEIVED_BYTES.labels(source=_source)


def dimse_status_label(status: int) -> str:
    """A DIMSE status as a metric label value: ``0xA700``."""
    return f"0x{status:04X}"
