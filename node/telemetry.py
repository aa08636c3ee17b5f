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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "ASSOCIATIONS",
    "ASSOCIATIONS_ACTIVE",
    "COMPLETENESS_DECISIONS",
    "EXPORT_ATTEMPTS",
    "INSTANCES_RECEIVED",
    "INSTANCES_REFUSED",
    "JOB_DURATION",
    "LAST_IMAGE_TO_RESULT",
    "MODEL_INFERENCE",
    "RECEIVED_BYTES",
    "REGISTRY",
    "dimse_status_label",
]

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
    "DICOM associations requested, by their outcome",
    ["role", "result"],  # result: accepted | rejected | aborted
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


def dimse_status_label(status: int) -> str:
    """A DIMSE status as a metric label value: ``0xA700``."""
    return f"0x{status:04X}"
