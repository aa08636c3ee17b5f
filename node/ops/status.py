"""The operator's status model: one snapshot of the ledger, for `cardionode status` and the web page.

:func:`status_snapshot` reads the ledger once per table and returns a
:class:`StatusSnapshot`: counts by state (studies, jobs, sends), the most
recent studies, jobs, sends, rejections and state changes (ledger rows:
detached snapshots with their states and reasons), the listener's refusals by
reason since it started (:mod:`node.dicom.refusals`: association requests refused
by the policy and connections refused before a request, which the ledger does not
keep one by one), who the node is, and whether it runs (:mod:`node.ops.running`:
the lock ``serve`` and ``listen`` hold). The
CLI (:func:`node.ops.admin.status_main`) prints it as tables; the web page
renders the same object. Nothing here writes.

The ledger keeps the state a node last wrote; with no node running nothing moves,
so :func:`state_now` shows a job left ``running`` as ``interrupted (node not
running)`` (and ``queued``, ``pending``, ... with the same remark). Studies are named
by their Study Instance UID and by :func:`study_key`, the hash the node's logs use
(:func:`node.dicom.logs.hash_identifier`), never by a patient identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.dicom.logs import hash_identifier
from node.dicom.refusals import REASONS, RefusalSnapshot, read_refusal_counts
from node.ledger import Event, Job, Ledger, RejectionRecord, Send, Study, utcnow
from node.ops.retention import DiskSummary, disk_summary
from node.ops.running import RunningNode, running_node

__all__ = ["StatusSnapshot", "StudyDetail", "state_now", "status_snapshot", "study_detail", "study_key"]

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
    node: RunningNode | None = None  # the process holding data_dir's node lock; None: no node runs here
    data_dir: str = ""  # where the node keeps its data (the lock, the SQLite ledger)
    disk: DiskSummary | None = None  # what the data hold on disk against [retention] (node.ops.retention)


#: the states in which an entity waits for the node (``serve``) to move it on
WAITING_FOR_NODE: Mapping[str, tuple[str, ...]] = {
    "study": ("complete", "processing"),
    "job": ("queued", "running"),
    "send": ("pending", "retrying"),
}


def state_now(entity: str, state: str, node: RunningNode | None) -> str:
    """The state of a ``study``, ``job`` or ``send`` as it stands: the ledger's ``state``, or, when no
    ``serve`` runs to move it on, ``interrupted (node not running)`` for a running job and
    ``<state> (node not running)`` for the other waiting states (``only a listener runs`` under ``listen``)."""
    if state not in WAITING_FOR_NODE.get(entity, ()) or (node is not None and node.command == "serve"):
        return state
    why = "node not running" if node is None else "only a listener runs"
    return f"interrupted ({why})" if state == "running" else f"{state} ({why})"


def study_key(study_uid: str) -> str:
    """The key that names a study in the node's logs (a hash of its Study Instance UID)."""
    return hash_identifier(study_uid)


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
        node=_running(settings),
        data_dir=str(getattr(settings, "data_dir", "")),
        disk=disk_summary(ledger, settings) if hasattr(settings, "retention") else None,
    )


def _running(settings: Any) -> RunningNode | None:
    """The node holding the lock of ``settings``' data directory; None for settings without one (a stand-in)."""
    path = getattr(settings, "node_lock_path", None)
    return running_node(path) if path is not None else None


@dataclass(frozen=True)
class StudyDetail:
    """One study with everything the ledger holds about it: its jobs and their sends (newest first),
    and the state changes of the study and its jobs (oldest first)."""

    study: Study
    jobs: tuple[Job, ...]
    sends: tuple[Send, ...]
    events: tuple[Event, ...]
    node: RunningNode | None
    data_dir: str = ""


def study_detail(ledger: Ledger, settings: Any, study: str) -> StudyDetail | None:
    """The :class:`StudyDetail` of ``study`` (a Study Instance UID, or the :func:`study_key` the logs show);
    None when the ledger has no such study."""
    found = ledger.studies.get(study) or next((s for s in ledger.studies.find() if study_key(s.study_uid) == study), None)
    if found is None:
        return None
    jobs = tuple(ledger.jobs.find(study_uid=found.study_uid))
    events = list(ledger.events.find("study", found.study_uid))
    for job in jobs:
        events += ledger.events.find("job", job.id)
    return StudyDetail(
        study=found,
        jobs=jobs,
        sends=tuple(send for job in jobs for send in ledger.sends.find(job_id=job.id)),
        events=tuple(sorted(events, key=lambda e: (e.at, e.id))),
        node=_running(settings),
        data_dir=str(getattr(settings, "data_dir", "")),
    )


def _refusals(settings: Any) -> RefusalSnapshot:
    """The listener's refusal counts; none for settings without ``refusal_counts_path`` (a stand-in)."""
    path = getattr(settings, "refusal_counts_path", None)
    return read_refusal_counts(path) if path is not None else RefusalSnapshot(None, dict.fromkeys(REASONS, 0))
