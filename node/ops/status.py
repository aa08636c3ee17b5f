"""The operator's status model: one snapshot of the ledger, for `cardionode status` and the web page.

:func:`status_snapshot` reads the ledger once per table and returns a
:class:`StatusSnapshot`: counts by state (studies, jobs, sends), the most
recent studies, jobs, sends, rejections and state changes (ledger rows:
detached snapshots with their states and reasons), the listener's refusals by
reason since it started (:mod:`node.dicom.refusals`: association requests refused
by the policy and connections refused before a request, which the ledger does not
keep one by one), and who the node is. The
CLI (:func:`node.ops.admin.status_main`) prints it as tables; the web page
renders the same object. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.dicom.refusals import REASONS, RefusalSnapshot, read_refusal_counts
from node.ledger import Event, Job, Ledger, RejectionRecord, Send, Study, utcnow

__all__ = ["StatusSnapshot", "status_snapshot"]

#: rows per table by default (studies, jobs, sends); rejections and events
ROWS = 50
REJECTIONS = 10
EVENTS = 20


@dataclass(frozen=True)
class StatusSnapshot:
    """What the node holds and where each thing stands, at ``taken_at`` (naive UTC)."""

    taken_at: datetime
    ae_title: str
    destinations: tuple[str, ...]  # configured destination names
    instances: int  # instances recorded
    studies_by_state: Mapping[str, int]  # every study state, in node.ledger.STUDY_STATES order
    jobs_by_state: Mapping[str, int]  # every job state, in node.ledger.JOB_STATES order
    sends_by_state: Mapping[str, int]  # every send state, in node.ledger.SEND_STATES order
    studies: tuple[Study, ...]  # most recently active first
    jobs: tuple[Job, ...]  # newest first
    sends: tuple[Send, ...]  # newest first
    rejections: tuple[RejectionRecord, ...]  # newest first
    events: tuple[Event, ...]  # newest first
    refusals: RefusalSnapshot  # the listener's refusals by reason since it started (node.dicom.refusals.REASONS)


def status_snapshot(
    ledger: Ledger,
    settings: Any,
    *,
    rows: int = ROWS,
    rejections: int = REJECTIONS,
    events: int = EVENTS,
) -> StatusSnapshot:
    """The status of the node whose ledger and settings (a :class:`node.config.Settings`) are given.

    ``rows`` limits the studies, jobs and sends listed; ``rejections`` and
    ``events`` the refusals and state changes (the counts cover everything).
    """
    return StatusSnapshot(
        taken_at=utcnow(),
        ae_title=settings.ae_title,
        destinations=tuple(d.name for d in settings.destinations),
        instances=ledger.instances.count(),
        studies_by_state=ledger.studies.count_by_state(),
        jobs_by_state=ledger.jobs.count_by_state(),
        sends_by_state=ledger.sends.count_by_state(),
        studies=tuple(ledger.studies.find(limit=rows)),
        jobs=tuple(ledger.jobs.find(limit=rows)),
        sends=tuple(ledger.sends.find(limit=rows)),
        rejections=tuple(ledger.rejections.find(limit=rejections)),
        events=tuple(ledger.events.recent(events)),
        refusals=_refusals(settings),
    )


def _refusals(settings: Any) -> RefusalSnapshot:
    """The listener's refusal counts; none for settings without ``refusal_counts_path`` (a stand-in)."""
    path = getattr(settings, "refusal_counts_path", None)
    return read_refusal_counts(path) if path is not None else RefusalSnapshot(None, dict.fromkeys(REASONS, 0))
