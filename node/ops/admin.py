"""Operator commands on the ledger: ``cardionode status``, ``retry``, ``discard``, ``complete``.

``status`` prints the status model of :mod:`node.ops.status` as plain-text tables, headed
by whether a node runs; reasons are cut at ``REASON_WIDTH`` characters unless ``--wide``;
``status --study UID`` (or the study key of the logs) prints one study in full, and
``--json`` the same data as JSON.
``status --peer-text`` also prints what destinations said about failed sends (their
Error Comments, with the study's patient identifiers replaced; kept in the ledger's
protected ``sends.peer_text``), and records in the audit log that it was shown: that
text comes from outside the node and may name other patients, so it is never in the
default view nor in any log.

They act on the ledger only (the running node's conductor picks the changes
up), so they work whether or not the node is running. Each change is also
written to the audit log. The actions themselves are :func:`retry_job`,
:func:`discard_job` and :func:`complete_study`, which the operator web page
(:mod:`node.web.pages`) calls too: one way to do each thing, audited as
``admin.retry``, ``admin.discard`` and ``admin.complete`` with ``actor`` ``cli`` or
``web``, answering an :class:`ActionResult` in plain words.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from node.config import ConfigError, Settings, load_settings
from node.dicom.audit import AuditLog
from node.dicom.refusals import REASONS
from node.ledger import Job, Ledger, LedgerError, LedgerSchemaError, Study
from node.ledger.jobs import NothingToRetry
from node.ops.running import RunningNode
from node.ops.status import (
    WORKITEM_COLUMNS,
    StatusSnapshot,
    StudyDetail,
    state_now,
    status_snapshot,
    study_detail,
    study_key,
    workitem_row,
    worklist_context,
)

__all__ = ["ActionResult", "complete_main", "complete_study", "discard_job", "discard_main", "format_status", "record_audit",
           "format_study", "format_table", "retry_job", "retry_main", "status_json", "status_main"]

#: characters of a reason shown in the status tables (``--wide``: all)
REASON_WIDTH = 64


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], max_width: int | None = 60) -> str:
    """A plain-text table: columns padded to their widest cell, cells cut at ``max_width`` characters (None: never).

    A cut cell keeps its beginning and its end around an ellipsis: a reason names its cause
    last (``step analyse failed: ValueError: ...``), and the cause must stay in sight.
    """

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        text = str(value).replace("\n", " ")
        if max_width is None or len(text) <= max_width:
            return text
        head = (max_width - 1) * 2 // 5
        return text[:head] + "…" + text[len(text) - (max_width - 1 - head):]

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _open(args: argparse.Namespace) -> tuple[Settings, Ledger] | None:
    """The settings and the ledger of ``--config``; None after saying why not (never creates a ledger:
    a SQLite ledger that does not exist means a wrong ``--config`` or ``data_dir``, or a node never started)."""
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return None
    url = settings.effective_ledger_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        source = getattr(args, "config", None) or "the embedded defaults"
        print(f"PROBLEM: no ledger at {url.removeprefix('sqlite:///')}: no node has run with data_dir "
              f"{settings.data_dir} (from {source}); check --config and data_dir", file=sys.stderr)
        return None
    try:
        return settings, Ledger.from_settings(settings)
    except LedgerSchemaError as exc:  # a ledger at another schema revision: `cardionode db upgrade`
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return None


def _node_line(node: RunningNode | None, data_dir: str) -> str:
    """Whether a node runs with this data directory, in one line."""
    if node is None:
        return (f"node: NOT RUNNING (no `cardionode serve` or `listen` holds {Path(data_dir) / 'node.pid'}); "
                "nothing moves until it starts")
    return f"node: running ({node.describe()})"


def _job_reason(job: Job) -> str:
    return f"{job.reason}; {job.last_error}" if job.last_error else job.reason


def format_status(status: StatusSnapshot, peer_text: bool = False, wide: bool = False) -> str:
    """``status`` as the plain-text text `cardionode status` prints: whether a node runs, then the tables
    of studies (with the key the logs use), jobs, sends, rejections; reasons cut at ``REASON_WIDTH``
    characters unless ``wide``; with ``peer_text``, also the destinations' comments (``sends.peer_text``)."""
    width = None if wide else REASON_WIDTH
    reasons = [s.reason for s in status.studies] + [_job_reason(j) for j in status.jobs] + [x.last_error for x in status.sends]
    parts = [
        _node_line(status.node, status.data_dir),
        *([status.disk.line()] if status.disk else []),
        f"\nSTUDIES ({len(status.studies)} most recent)",
        format_table(
            ("study", "key (logs)", "state", "rule", "pipeline", "run", "instances", "last instance (UTC)", "reason"),
            [
                (s.study_uid, study_key(s.study_uid), state_now("study", s.state, status.node), s.rule, s.pipeline,
                 s.run, s.instance_count, s.last_received_at, s.reason)
                for s in status.studies
            ],
            max_width=width,
        ),
        f"\nJOBS ({len(status.jobs)} most recent)",
        format_table(
            ("job", "study key", "pipeline", "run", "state", "attempts", "updated (UTC)", "reason / last error"),
            [
                (j.id, study_key(j.study_uid), j.pipeline, j.run, state_now("job", j.state, status.node), j.attempts,
                 j.updated_at, _job_reason(j))
                for j in status.jobs
            ],
            max_width=width,
        ),
        f"\nSENDS ({len(status.sends)} most recent)",
        format_table(
            ("send", "job", "destination", "state", "attempts", "next attempt (UTC)", "last status", "last error"),
            [
                (x.id, x.job_id, x.destination, state_now("send", x.state, status.node), x.attempts, x.next_attempt_at,
                 f"0x{x.last_status:04X}" if x.last_status is not None else None, x.last_error)
                for x in status.sends
            ],
            max_width=width,
        ),
        f"\nREJECTIONS ({len(status.rejections)} most recent)",
        format_table(
            ("at (UTC)", "calling AE", "address", "status", "reason"),
            [(r.at, r.calling_ae, r.peer_address, f"0x{r.status:04X}" if r.status else "assoc", r.reason)
             for r in status.rejections],
            max_width=100,
        ),
    ]
    if status.worklists:  # the worklist context of the listed studies (node.workflow.worklist)
        parts += _worklist_lines(status, width)
    if status.workitems_by_state:  # UPS work items of the node's UPS SCP (node.dicom.ups_scp)
        counts = ", ".join(f"{n} {state}" for state, n in status.workitems_by_state.items())
        parts += [f"\nWORK ITEMS (UPS; {counts}; {len(status.workitems)} most recent)",
                  format_table(WORKITEM_COLUMNS, [tuple(workitem_row(w).values()) for w in status.workitems],
                               max_width=width)]
    if status.refusals.since is not None:  # the listener's refusals by reason (node.dicom.refusals)
        parts += [
            f"\nLISTENER REFUSALS ({status.refusals.total} since {status.refusals.since:%Y-%m-%d %H:%M:%S} UTC)",
            format_table(("reason", "count", "meaning"),
                         [(reason, n, REASONS[reason]) for reason, n in status.refusals.counts.items() if n], max_width=110),
        ]
    commented = [x for x in status.sends if x.peer_text]
    if peer_text:
        parts += [
            f"\nDESTINATIONS' COMMENTS ({len(commented)} of the sends above; patient identifiers replaced)",
            format_table(
                ("send", "destination", "last status", "comment"),
                [(x.id, x.destination, f"0x{x.last_status:04X}" if x.last_status is not None else None, x.peer_text)
                 for x in commented],
                max_width=200,
            ),
        ]
    elif commented:
        parts.append(f"\n{len(commented)} send(s) carry a comment of the destination: `cardionode status --peer-text`")
    if width is not None and any(len(r) > width for r in reasons):
        parts.append(f"\nreasons longer than {width} characters are cut (…): whole ones with `cardionode status --wide`, "
                     "`--study UID` or `--json`")
    return "\n".join(parts)


def _worklist_lines(status: StatusSnapshot, width: int | None) -> list[str]:
    """The WORKLIST section of `cardionode status`: lookups by outcome, each listed study's context, the
    latest lookups that found the worklists down (the node's words; no identifier)."""
    counts = dict(status.worklist_by_outcome or {})
    answers = status.worklist_answers or {}
    lines = [f"\nWORKLIST ({', '.join(status.worklists)}): context found for {counts.get('found', 0)} "
             f"stud{'y' if counts.get('found', 0) == 1 else 'ies'}, not found for {counts.get('not_found', 0)}, "
             f"worklist down for {counts.get('down', 0)}",
             format_table(("study key", "worklist context", "pipeline", "expected series", "lookups", "at (UTC)"),
                          [(study_key(s.study_uid), worklist_context(answers.get(s.study_uid)),
                            getattr(answers.get(s.study_uid), "pipeline", None),
                            ", ".join(getattr(answers.get(s.study_uid), "expected_series", None) or []) or None,
                            getattr(answers.get(s.study_uid), "attempts", None),
                            getattr(answers.get(s.study_uid), "queried_at", None)) for s in status.studies],
                          max_width=width)]
    if status.worklist_down:
        lines.append("worklist down (latest): " + " | ".join(
            f"{a.queried_at:%Y-%m-%d %H:%M:%S} {study_key(a.study_uid)}: {a.error}" for a in status.worklist_down))
    return lines


def _worklist_study_lines(answer: object) -> list[str]:
    """What the worklist said about one study (`status --study`): outcome, pipeline, expected series, the
    scheduled steps (date, time, modality, state, description) and the clinical facts; no identifier."""
    from node.ledger import WorklistAnswer

    if not isinstance(answer, WorklistAnswer):
        return ["  worklist context: - (not looked up)"]
    lines = [f"  worklist context: {worklist_context(answer)} ({answer.worklist}"
             + (f" by {answer.matched_by}" if answer.matched_by else "") + f", {answer.attempts} lookup(s), "
             f"last {answer.queried_at:%Y-%m-%d %H:%M:%S} UTC)"]
    if answer.error:
        lines.append(f"    error: {answer.error}")
    if answer.outcome == "found":
        lines.append(f"    pipeline: {answer.pipeline or '-'}, expected series: {', '.join(answer.expected_series) or '-'}")
        for step in answer.steps or []:
            lines.append(f"    {'*' if step.get('matched') else ' '} {step.get('date')} {step.get('time')} "
                         f"{step.get('modality')} {step.get('state')}: {step.get('description')}")
        facts = ", ".join(f"{k} {v}" for k, v in (answer.clinical or {}).items())
        lines.append(f"    clinical inputs: {facts or '-'}")
    return lines


def format_study(detail: StudyDetail, peer_text: bool = False) -> str:
    """One study in full (`cardionode status --study UID`): the study, each job and send with its whole
    reason, and every state change; with ``peer_text``, the destinations' comments too."""
    s = detail.study
    lines = [
        _node_line(detail.node, detail.data_dir),
        f"study {s.study_uid}",
        f"  key (logs): {study_key(s.study_uid)}",
        f"  state: {state_now('study', s.state, detail.node)}" + (f" (rule {s.rule})" if s.rule else ""),
        f"  pipeline: {s.pipeline or '-'}, run {s.run}, {s.instance_count} instance(s), "
        f"first {s.first_received_at:%Y-%m-%d %H:%M:%S}, last {s.last_received_at:%Y-%m-%d %H:%M:%S} UTC",
        f"  reason: {s.reason or '-'}",
        *_worklist_study_lines(detail.worklist),
    ]
    for j in detail.jobs:
        lines += [
            f"job {j.id}: {j.pipeline} run {j.run}, {state_now('job', j.state, detail.node)}, {j.attempts} attempt(s), "
            f"updated {j.updated_at:%Y-%m-%d %H:%M:%S} UTC",
            f"  reason: {j.reason or '-'}",
        ]
        if j.last_error:
            lines.append(f"  last error: {j.last_error}")
    for x in detail.sends:
        status = f", last status 0x{x.last_status:04X}" if x.last_status is not None else ""
        lines.append(f"send {x.id} (job {x.job_id}) to {x.destination}: {state_now('send', x.state, detail.node)}, "
                     f"{x.attempts} attempt(s){status}" + (f"; {x.last_error}" if x.last_error else ""))
        if peer_text and x.peer_text:
            lines.append(f"  destination's comment (patient identifiers replaced): {x.peer_text}")
    lines.append("state changes (UTC):")
    lines += [f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.entity} {e.entity_id}: {e.from_state or '-'} -> {e.to_state}"
              + (f" (rule {e.rule})" if e.rule else "") + (f": {e.reason}" if e.reason else "") for e in detail.events]
    return "\n".join(lines)


def _row(record: object, entity: str | None, node: RunningNode | None, peer_text: bool) -> dict[str, object]:
    """A ledger row as JSON data: its columns (``peer_text`` only when asked), ``state_now`` beside ``state``,
    and ``study_key`` beside a ``study_uid``."""
    table = record.__table__  # type: ignore[attr-defined]
    data: dict[str, object] = {}
    for column in table.columns:
        if column.key == "peer_text" and not peer_text:
            continue
        value = getattr(record, column.key)
        data[column.key] = value.isoformat() if isinstance(value, datetime) else value
    if entity is not None:
        data["state_now"] = state_now(entity, str(data["state"]), node)
    if "study_uid" in data:
        data["study_key"] = study_key(str(data["study_uid"]))
    return data


def status_json(status: StatusSnapshot | StudyDetail, peer_text: bool = False) -> dict[str, object]:
    """``status --json`` (a :class:`StatusSnapshot`) or ``status --study UID --json`` (a :class:`StudyDetail`)
    as JSON data: whole reasons, times in ISO 8601 UTC, the destinations' comments only with ``peer_text``."""
    node = status.node
    out: dict[str, object] = {"node": {"running": node is not None, **(asdict(node) if node else {})}}
    if isinstance(status, StudyDetail):
        out["study"] = _row(status.study, "study", node, peer_text)
        out["worklist"] = _worklist_json(status.worklist)
    else:
        out.update(
            taken_at=status.taken_at.isoformat(), ae_title=status.ae_title, data_dir=status.data_dir,
            destinations=list(status.destinations), instances=status.instances,
            studies_by_state=dict(status.studies_by_state), jobs_by_state=dict(status.jobs_by_state),
            sends_by_state=dict(status.sends_by_state),
            studies=[_row(s, "study", node, peer_text) for s in status.studies],
            rejections=[_row(r, None, node, peer_text) for r in status.rejections],
            refusals={"since": status.refusals.since.isoformat() if status.refusals.since else None,
                      "counts": dict(status.refusals.counts)},
            disk=asdict(status.disk) if status.disk is not None else None,
        )
        if status.workitems_by_state:
            out["workitems"] = {"by_state": dict(status.workitems_by_state),
                                "items": [workitem_row(w) for w in status.workitems]}
        if status.worklists:
            out["worklists"] = {"configured": list(status.worklists), "by_outcome": dict(status.worklist_by_outcome or {}),
                                "studies": {uid: _worklist_json(a) for uid, a in (status.worklist_answers or {}).items()}}
    out["jobs"] = [_row(j, "job", node, peer_text) for j in status.jobs]
    out["sends"] = [_row(x, "send", node, peer_text) for x in status.sends]
    out["events"] = [_row(e, None, node, peer_text) for e in status.events]
    return out


def _worklist_json(answer: object) -> dict[str, object] | None:
    """A worklist answer as JSON data without identifiers (no accession number, no patient key)."""
    from node.ledger import WorklistAnswer

    if not isinstance(answer, WorklistAnswer):
        return None
    steps = [{k: v for k, v in step.items() if k != "accession_number"} for step in answer.steps or []]
    return {"context": worklist_context(answer), "outcome": answer.outcome, "worklist": answer.worklist,
            "matched_by": answer.matched_by, "attempts": answer.attempts, "error": answer.error,
            "pipeline": answer.pipeline, "expected_series": list(answer.expected_series or []),
            "clinical": dict(answer.clinical or {}), "steps": steps, "queried_at": answer.queried_at.isoformat()}


def status_main(args: argparse.Namespace) -> int:
    """Print whether a node runs, then studies, jobs, sends and recent rejections with their states and reasons
    (``--study UID``: one study in full; ``--json``: as JSON; ``--wide``: reasons not cut); 1 when the
    ledger or the study does not exist."""
    opened = _open(args)
    if opened is None:
        return 1
    settings, ledger = opened
    study = getattr(args, "study", None)
    results_text = None
    try:
        status: StatusSnapshot | StudyDetail | None = (
            study_detail(ledger, settings, study) if study else status_snapshot(ledger, settings))
        if getattr(args, "results", False) and isinstance(status, StudyDetail):
            from node.ops.results import format_results, study_results  # reads the outbox: loaded only when asked

            results_text = format_results(study_results(settings, ledger, status.study.study_uid))
    finally:
        ledger.close()
    if status is None:
        print(f"PROBLEM: the ledger has no study {study!r} (give a Study Instance UID or the key the logs show)",
              file=sys.stderr)
        return 1
    peer_text = bool(getattr(args, "peer_text", False))
    if peer_text:
        for warning in record_audit(settings, None, "admin.peer_text_shown", sends=[x.id for x in status.sends if x.peer_text]):
            print(warning, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(status_json(status, peer_text), indent=2, default=str))  # default: times, paths of `disk`
    elif isinstance(status, StudyDetail):
        print(format_study(status, peer_text))
        if results_text is not None:
            print(f"\n{results_text}")
    else:
        print(format_status(status, peer_text=peer_text, wide=bool(getattr(args, "wide", False))))
    return 0


def _job_id(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        print(f"PROBLEM: job id {text!r} is not a number; see the 'job' column of `cardionode status`", file=sys.stderr)
        return None


@dataclass(frozen=True)
class ActionResult:
    """What an operator action did, in plain words, for the CLI and the web page alike.

    ``ok``: False when the action was refused (nothing changed; ``message`` says why);
    ``changed``: whether the ledger changed (an action already done is ``ok`` and unchanged);
    ``notes``: further lines for the operator (a pipeline's reasons); ``warnings``: what went
    wrong beside the action (the audit log could not be written).
    """

    ok: bool
    message: str
    changed: bool = False
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def record_audit(settings: Settings, audit: AuditLog | None, event: str, **fields: object) -> tuple[str, ...]:
    """Write ``event`` to ``audit`` (else to the audit log of ``settings``, opened for it); the warning
    when it cannot be written (the action itself stands)."""
    try:
        if audit is not None:
            audit.record(event, **fields)
        else:
            with AuditLog(settings.audit_log_path, durable=settings.durable_writes) as log:
                log.record(event, **fields)
    except OSError as exc:
        return (f"warning: cannot write the audit log {settings.audit_log_path}: {exc}",)
    return ()


def retry_job(settings: Settings, ledger: Ledger, job_id: int, *, force: bool = False, actor: str = "cli",
              audit: AuditLog | None = None) -> ActionResult:
    """Queue a failed/dead/discarded job again, or resend a job's dead-lettered results (audited ``admin.retry``).

    A job already done (sent, or in the outbox without destinations) is left as it is and the
    result says so (``ok``, not ``changed``), unless ``force``: then it is processed again; its
    objects keep their deterministic UIDs, so those already recorded are neither written nor sent
    again. ``actor``: who asked (``cli`` or ``web``), written to the audit log.
    """
    return _act_on_job(settings, ledger, job_id, "retry", lambda: ledger.jobs.retry(job_id, force=force),
                       actor=actor, audit=audit, force=force)


def discard_job(settings: Settings, ledger: Ledger, job_id: int, *, actor: str = "cli",
                audit: AuditLog | None = None) -> ActionResult:
    """Mark a job discarded; its unsent results are dead-lettered (audited ``admin.discard``)."""
    return _act_on_job(settings, ledger, job_id, "discard", lambda: ledger.jobs.discard(job_id), actor=actor, audit=audit)


def _act_on_job(settings: Settings, ledger: Ledger, job_id: int, action: str, act: Callable[[], Job], *,
                actor: str, audit: AuditLog | None, **extra: object) -> ActionResult:
    """Run one ledger action on job ``job_id``; audit and describe its outcome."""
    try:
        job = act()
    except NothingToRetry as exc:  # not a problem: what the operator asked for is done
        return ActionResult(True, str(exc))
    except LedgerError as exc:
        return ActionResult(False, str(exc))
    fields = {k: v for k, v in extra.items() if v}
    warnings = record_audit(settings, audit, f"admin.{action}", job_id=job.id, study_uid=job.study_uid, state=job.state,
                      actor=actor, **fields)
    return ActionResult(True, f"job {job.id} is now {job.state}" + (f": {job.reason}" if job.reason else ""),
                        changed=True, warnings=warnings)


def complete_study(settings: Settings, ledger: Ledger, study_uid: str, *, pipeline: str | None = None,
                   actor: str = "cli", audit: AuditLog | None = None) -> ActionResult:
    """Declare a study complete (rule ``manual``) so that the node processes what is there (audited ``admin.complete``).

    ``pipeline``: that pipeline processes it (every instance of the study when none of its
    series rules matches). Otherwise the study's pipeline, or the first that accepts the study;
    when none accepts it, the study is left as it is and the result says why, one note per
    pipeline (not ``ok``).
    """
    try:
        study = ledger.studies.get(study_uid)
        if study is None:
            raise LedgerError(f"no study {study_uid} in the ledger; check the Study Instance UID with `cardionode status`")
        chosen, notes = _pipeline_for(settings, ledger, study, pipeline)
        if chosen is None:
            return ActionResult(False, f"study {study.study_uid} left {study.state}: no pipeline can process it",
                                notes=tuple(notes))
        study = ledger.studies.complete_manually(study_uid, pipeline=chosen)
    except LedgerError as exc:
        return ActionResult(False, str(exc))
    warnings = record_audit(settings, audit, "admin.complete", study_uid=study.study_uid, pipeline=chosen, actor=actor)
    return ActionResult(True, f"study {study.study_uid} is now complete (rule manual); the node will process it with {chosen}",
                        changed=True, notes=tuple(notes), warnings=warnings)


def _print_result(result: ActionResult, notes_first: bool = False) -> int:
    """Print an action's outcome as the CLI does (problems and warnings on standard error); its exit status."""
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if not result.ok:
        print(f"PROBLEM: {result.message}", file=sys.stderr)
        for line in result.notes:
            print(f"  {line}", file=sys.stderr)
        return 1
    lines = [*result.notes, result.message] if notes_first else [result.message, *result.notes]
    for line in lines:
        print(line)
    return 0


def retry_main(args: argparse.Namespace) -> int:
    """``cardionode retry JOB [--force]``: :func:`retry_job` on the ledger of ``--config``."""
    job_id = _job_id(args.job)
    opened = _open(args)
    if job_id is None or opened is None:
        return 1
    settings, ledger = opened
    try:
        return _print_result(retry_job(settings, ledger, job_id, force=bool(getattr(args, "force", False))))
    finally:
        ledger.close()


def discard_main(args: argparse.Namespace) -> int:
    """``cardionode discard JOB``: :func:`discard_job` on the ledger of ``--config``."""
    job_id = _job_id(args.job)
    opened = _open(args)
    if job_id is None or opened is None:
        return 1
    settings, ledger = opened
    try:
        return _print_result(discard_job(settings, ledger, job_id))
    finally:
        ledger.close()


def complete_main(args: argparse.Namespace) -> int:
    """``cardionode complete STUDY [--pipeline NAME]``: :func:`complete_study` on the ledger of ``--config``;
    when no pipeline accepts the study, says why, one line per pipeline, and how to choose one (exit 1)."""
    opened = _open(args)
    if opened is None:
        return 1
    settings, ledger = opened
    try:
        result = complete_study(settings, ledger, args.study, pipeline=getattr(args, "pipeline", None))
    finally:
        ledger.close()
    code = _print_result(result, notes_first=True)
    if not result.ok and result.notes:
        print(f"`cardionode complete {args.study} --pipeline NAME` processes it with one of them anyway", file=sys.stderr)
    return code


def _pipeline_for(settings: Settings, ledger: Ledger, study: Study, requested: str | None) -> tuple[str | None, list[str]]:
    """The pipeline `cardionode complete` gives ``study`` and what to tell the operator about it.

    Returns ``(name, notes)``; ``(None, reasons)`` when no pipeline accepts the study, one reason per
    registered pipeline. Raises :class:`LedgerError` for a ``requested`` name no pipeline carries.
    """
    from node.pipelines import registry

    notes = [f"pipeline module {module} not loaded: {error}"
             for module, error in registry.load_modules(settings.pipeline_modules).items()]
    summary = ledger.studies.summary(study.study_uid)
    if requested:
        try:
            chosen = registry.get(requested)
        except registry.UnknownPipelineError as exc:
            raise LedgerError(str(exc)) from None
        acceptance = chosen.accept(summary)
        if not acceptance.accepted:
            notes.append(f"{chosen.name} does not accept the study by its rules ({_reason(chosen.name, acceptance.reason)}); "
                         "it gets every instance of the study")
        return chosen.name, notes
    if study.pipeline:
        return study.pipeline, notes
    decisions = registry.acceptance(summary)
    for pipeline, decision in decisions:
        if decision.accepted:
            return pipeline.name, notes
    if not decisions:
        return None, [*notes, "no pipeline is registered (setting pipeline_modules)"]
    return None, [*notes, *(f"{pipeline.name}: {_reason(pipeline.name, decision.reason)}" for pipeline, decision in decisions)]


def _reason(pipeline: str, reason: str) -> str:
    """A pipeline's acceptance reason without the pipeline's name in front."""
    return reason.removeprefix(f"{pipeline}: ")
