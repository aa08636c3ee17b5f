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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from node.dicom.logs import hash_identifier
from node.dicom.refusals import REASONS, RefusalSnapshot, read_refusal_counts
from node.ledger import Event, Job, Ledger, RejectionRecord, Send, Study, Workitem, WorklistAnswer, utcnow
from node.ops.retention import DiskSummary, disk_summary
from node.ops.running import RunningNode, running_node

__all__ = ["CompletenessOutlook", "StatusSnapshot", "StudyDetail", "WORKLIST_WORDS", "completeness_outlook", "state_now",
           "status_snapshot", "study_detail", "study_key", "worklist_context", "WORKITEM_COLUMNS", "workitem_row"]

#: how a study's worklist context is shown, by lookup outcome (node.ledger.WORKLIST_OUTCOMES)
WORKLIST_WORDS: Mapping[str, str] = {"found": "found", "not_found": "not found", "down": "worklist down"}

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
    worklists: tuple[str, ...] = ()  # configured [[worklists]] names
    worklist_by_outcome: Mapping[str, int] | None = None  # studies per lookup outcome (node.ledger.WORKLIST_OUTCOMES)
    worklist_answers: Mapping[str, WorklistAnswer] | None = None  # answers of the listed studies, by study UID
    worklist_down: tuple[WorklistAnswer, ...] = ()  # latest lookups that found the worklists down, newest first
    workitems: tuple[Workitem, ...] = ()  # UPS work items of the node's UPS SCP, newest first (workitem_row shows them)
    workitems_by_state: Mapping[str, int] | None = None  # every UPS state (node.ledger.WORKITEM_STATES); None: none


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


def worklist_context(answer: WorklistAnswer | None) -> str:
    """A study's worklist context in words: ``found``, ``not found``, ``worklist down``, or ``-`` (not looked up)."""
    return "-" if answer is None else WORKLIST_WORDS.get(answer.outcome, answer.outcome)


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
        **_worklist_part(ledger, settings, rows),
        **_workitem_part(ledger, rows),
    )


#: the columns of a UPS work item in `cardionode status` (:func:`workitem_row`): no patient data, no Transaction UID
WORKITEM_COLUMNS = ("work item (UPS)", "state", "progress", "label", "worklist", "priority", "readiness", "performer",
                    "role", "outputs", "note", "updated (UTC)")


def _workitem_part(ledger: Ledger, rows: int) -> dict[str, Any]:
    """The UPS fields of a :class:`StatusSnapshot` (none when the ledger holds no work item)."""
    counts = ledger.workitems.count_by_state()
    if not any(counts.values()):
        return {}
    return {"workitems": tuple(ledger.workitems.find(limit=rows)), "workitems_by_state": counts}


def workitem_row(item: Workitem) -> dict[str, Any]:
    """What `cardionode status` and the web page show of a UPS work item (:data:`WORKITEM_COLUMNS`): its UID,
    state (with "cancel requested"), progress in percent and description, label, worklist label, priority,
    input readiness, the performer's AE (``node`` when the node performs it) and the last change. Never the
    UPS's attributes (patient identification) nor its Transaction UID (the performer's lock)."""
    progress = "" if item.progress is None else f"{item.progress:g} %"
    if item.progress_description:
        progress = f"{progress} {item.progress_description}".strip()
    state = f"{item.state} (cancel requested)" if item.cancel_requested and item.state == "IN PROGRESS" else item.state
    performer = item.performer_ae or ("node" if item.state != "SCHEDULED" and item.role != "performer" else "")
    role = "performer (site's task manager)" if item.role == "performer" else "manager (node's UPS SCP)"
    outputs = _output_count(item.attributes)
    return dict(zip(WORKITEM_COLUMNS, (item.sop_instance_uid, state, progress, item.label, item.worklist_label,
                                        item.priority, item.input_readiness, performer, role,
                                        "" if outputs is None else str(outputs), item.reason,
                                        item.updated_at.isoformat(sep=" ", timespec="seconds")), strict=True))


def _output_count(attributes: Any) -> int | None:
    """The instances the work item's Output Information Sequence lists (UPS in the DICOM JSON model), None when it
    has no UPS Performed Procedure Sequence yet."""
    def values(node: Any, tag: str) -> list[Any]:
        element = node.get(tag) if isinstance(node, dict) else None
        value = element.get("Value") if isinstance(element, dict) else None
        return value if isinstance(value, list) else []

    performed = values(attributes, "00741216")
    if not performed:
        return None
    return sum(len(values(series, "00081199")) for item in performed for series in values(item, "00404033"))


def _worklist_part(ledger: Ledger, settings: Any, rows: int) -> dict[str, Any]:
    """The worklist fields of a :class:`StatusSnapshot` (none when no worklist is configured)."""
    names = tuple(w.name for w in getattr(settings, "worklists", ()) or ())
    if not names:
        return {}
    studies = ledger.studies.find(limit=rows)
    return {"worklists": names, "worklist_by_outcome": ledger.worklist.counts(),
            "worklist_answers": ledger.worklist.of_studies(s.study_uid for s in studies),
            "worklist_down": tuple(ledger.worklist.recent(5, outcomes=("down",)))}


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
    worklist: WorklistAnswer | None = None  # what the modality worklist said (None: not looked up)


def study_detail(ledger: Ledger, settings: Any, study: str) -> StudyDetail | None:
    """The :class:`StudyDetail` of ``study`` (a Study Instance UID, or the :func:`study_key` the logs show);
    None when the ledger has no such study."""
    found = ledger.studies.get(study) or next((s for s in ledger.studies.find() if study_key(s.study_uid) == study), None)
    if found is None:
        return None
    jobs = tuple(ledger.jobs.find(study_uid=found.study_uid))
    events = [e for entity in ("study", "worklist", "pairing") for e in ledger.events.find(entity, found.study_uid)]
    for job in jobs:
        events += ledger.events.find("job", job.id)
    return StudyDetail(
        study=found,
        jobs=jobs,
        sends=tuple(send for job in jobs for send in ledger.sends.find(job_id=job.id)),
        events=tuple(sorted(events, key=lambda e: (e.at, e.id))),
        node=_running(settings),
        data_dir=str(getattr(settings, "data_dir", "")),
        worklist=ledger.worklist.answer_for(found.study_uid),
    )


def _refusals(settings: Any) -> RefusalSnapshot:
    """The listener's refusal counts; none for settings without ``refusal_counts_path`` (a stand-in)."""
    path = getattr(settings, "refusal_counts_path", None)
    return read_refusal_counts(path) if path is not None else RefusalSnapshot(None, dict.fromkeys(REASONS, 0))


@dataclass(frozen=True)
class CompletenessOutlook:
    """Where a study stands against the completeness rules (:mod:`node.workflow.completeness`).

    ``decided_rule`` and ``decided_at``: the rule that made it complete and when (None while
    undecided); for a ``receiving`` study, ``next_rule``, ``next_action`` (``complete``,
    ``ignore``, ``give_up``) and ``next_at`` (naive UTC): what fires next if no instance comes,
    by :func:`node.workflow.completeness.decide` itself. ``series_received``: series in the
    study; ``series_expected`` and ``series_matched``: required series rules of its pipeline
    and how many a received series matches (None when no pipeline accepts the study);
    ``acceptance``: the pipeline's words on what is there and what is missing (routing's words
    when no pipeline accepts the study).
    """

    pipeline: str | None
    series_received: int
    series_expected: int | None
    series_matched: int | None
    acceptance: str = ""
    decided_rule: str | None = None
    decided_at: datetime | None = None
    next_rule: str | None = None
    next_action: str | None = None
    next_at: datetime | None = None


def completeness_outlook(ledger: Ledger, settings: Any, study: Study, now: datetime | None = None) -> CompletenessOutlook:
    """The :class:`CompletenessOutlook` of ``study`` at ``now`` (naive UTC; default: now).

    The next rule is found by asking :func:`~node.workflow.completeness.decide` at each time a
    rule can fire (last instance + settle or quiet period, first instance + force deadline, for
    the study's pipeline and the default rule), earliest first: the page says what the node will
    do, by the node's own rule. Needs the pipelines of ``settings.pipeline_modules`` registered.
    """
    from node.pipelines import registry
    from node.workflow.completeness import Rule, decide
    from node.workflow.worklist import expectation

    now = now or utcnow()
    scheduled = expectation(ledger.worklist.answer_for(study.study_uid))
    summary = ledger.studies.summary(study.study_uid)
    pipeline, words = registry.route(summary)
    expected = matched = None
    if pipeline is not None:
        required = [rule.name for rule in pipeline.series_rules if rule.required]
        acceptance = pipeline.accept(summary)
        by_rule, words = acceptance.series_by_rule, acceptance.reason
        expected, matched = len(required), sum(1 for name in required if by_rule.get(name))
    outlook = CompletenessOutlook(
        pipeline=study.pipeline or (pipeline.name if pipeline else None), series_received=len(summary.series),
        series_expected=expected, series_matched=matched, acceptance=words, decided_rule=study.rule,
        decided_at=study.decided_at)
    if study.state != "receiving":
        return outlook

    def rule_for(name: str) -> Rule:
        return Rule.from_setting(settings.completeness_for(name))

    rules = [rule_for("default")] + ([rule_for(pipeline.name)] if pipeline is not None else [])
    first, last = study.first_received_at, study.last_received_at
    times = {now}
    for rule in rules:
        times |= {last + timedelta(seconds=rule.settle_s), last + timedelta(seconds=rule.quiet_period_s),
                  first + timedelta(seconds=rule.force_deadline_s)}
    for at in sorted(t for t in times if t >= now):
        decision = decide(summary, first, last, at, rule_for, scheduled)
        if decision.action != "wait":
            fires = decision.rule or ("no pipeline" if decision.action == "ignore" else None)
            return replace(outlook, next_rule=fires, next_action=decision.action, next_at=at)
    return outlook
