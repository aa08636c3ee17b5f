"""Operator commands on the ledger: ``cardionode status``, ``retry``, ``discard``, ``complete``.

``status`` prints the status model of :mod:`node.ops.status` as plain-text tables.
``status --peer-text`` also prints what destinations said about failed sends (their
Error Comments, with the study's patient identifiers replaced; kept in the ledger's
protected ``sends.peer_text``), and records in the audit log that it was shown: that
text comes from outside the node and may name other patients, so it is never in the
default view nor in any log.

They act on the ledger only (the running node's conductor picks the changes
up), so they work whether or not the node is running. Each change is also
written to the audit log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime

from node.config import ConfigError, Settings, load_settings
from node.dicom.audit import AuditLog
from node.dicom.refusals import REASONS
from node.ledger import Job, Ledger, LedgerError, LedgerSchemaError
from node.ops.status import StatusSnapshot, status_snapshot

__all__ = ["complete_main", "discard_main", "format_status", "format_table", "retry_main", "status_main"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], max_width: int = 60) -> str:
    """A plain-text table: columns padded to their widest cell, cells cut at ``max_width`` characters."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        text = str(value).replace("\n", " ")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _open(args: argparse.Namespace) -> tuple[Settings, Ledger] | None:
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return None
    try:
        return settings, Ledger.from_settings(settings)
    except LedgerSchemaError as exc:  # a ledger at another schema revision: `cardionode db upgrade`
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return None


def _audit(settings: Settings, event: str, **fields: object) -> None:
    try:
        with AuditLog(settings.audit_log_path, durable=settings.durable_writes) as audit:
            audit.record(event, **fields)
    except OSError as exc:
        print(f"warning: cannot write the audit log {settings.audit_log_path}: {exc}", file=sys.stderr)


def format_status(status: StatusSnapshot, peer_text: bool = False) -> str:
    """``status`` as the plain-text tables `cardionode status` prints: studies, jobs, sends, rejections;
    with ``peer_text``, also the destinations' comments (``sends.peer_text``) of the sends listed."""
    parts = [
        f"STUDIES ({len(status.studies)} most recent)",
        format_table(
            ("study", "state", "rule", "pipeline", "run", "instances", "last instance (UTC)", "reason"),
            [
                (s.study_uid, s.state, s.rule, s.pipeline, s.run, s.instance_count, s.last_received_at, s.reason)
                for s in status.studies
            ],
            max_width=64,
        ),
        f"\nJOBS ({len(status.jobs)} most recent)",
        format_table(
            ("job", "study", "pipeline", "run", "state", "attempts", "updated (UTC)", "reason / last error"),
            [
                (j.id, j.study_uid, j.pipeline, j.run, j.state, j.attempts, j.updated_at,
                 f"{j.reason}; {j.last_error}" if j.last_error else j.reason)
                for j in status.jobs
            ],
            max_width=64,
        ),
        f"\nSENDS ({len(status.sends)} most recent)",
        format_table(
            ("send", "job", "destination", "state", "attempts", "next attempt (UTC)", "last status", "last error"),
            [
                (x.id, x.job_id, x.destination, x.state, x.attempts, x.next_attempt_at,
                 f"0x{x.last_status:04X}" if x.last_status is not None else None, x.last_error)
                for x in status.sends
            ],
        ),
        f"\nREJECTIONS ({len(status.rejections)} most recent)",
        format_table(
            ("at (UTC)", "calling AE", "address", "status", "reason"),
            [(r.at, r.calling_ae, r.peer_address, f"0x{r.status:04X}" if r.status else "assoc", r.reason)
             for r in status.rejections],
            max_width=100,
        ),
    ]
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
    return "\n".join(parts)


def status_main(args: argparse.Namespace) -> int:
    """Print studies, jobs, sends and recent rejections with their states and reasons."""
    opened = _open(args)
    if opened is None:
        return 1
    settings, ledger = opened
    try:
        status = status_snapshot(ledger, settings)
    finally:
        ledger.close()
    peer_text = bool(getattr(args, "peer_text", False))
    if peer_text:
        _audit(settings, "admin.peer_text_shown", sends=[x.id for x in status.sends if x.peer_text])
    print(format_status(status, peer_text=peer_text))
    return 0


def _job_id(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        print(f"PROBLEM: job id {text!r} is not a number; see the 'job' column of `cardionode status`", file=sys.stderr)
        return None


def retry_main(args: argparse.Namespace) -> int:
    """Queue a failed/dead/discarded job again, or resend a job's dead-lettered results."""
    return _act_on_job(args, "retry", lambda ledger, job_id: ledger.jobs.retry(job_id))


def discard_main(args: argparse.Namespace) -> int:
    """Mark a job discarded; its unsent results are dead-lettered."""
    return _act_on_job(args, "discard", lambda ledger, job_id: ledger.jobs.discard(job_id))


def _act_on_job(args: argparse.Namespace, action: str, act: Callable[[Ledger, int], Job]) -> int:
    """Run one ledger action on the job named on the command line; print and audit its outcome."""
    job_id = _job_id(args.job)
    opened = _open(args)
    if job_id is None or opened is None:
        return 1
    settings, ledger = opened
    try:
        job = act(ledger, job_id)
    except LedgerError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    _audit(settings, f"admin.{action}", job_id=job.id, study_uid=job.study_uid, state=job.state)
    print(f"job {job.id} is now {job.state}" + (f": {job.reason}" if job.reason else ""))
    return 0


def complete_main(args: argparse.Namespace) -> int:
    """Declare a study complete (rule ``manual``); the node processes what is there."""
    opened = _open(args)
    if opened is None:
        return 1
    settings, ledger = opened
    try:
        study = ledger.studies.complete_manually(args.study)
    except LedgerError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    _audit(settings, "admin.complete", study_uid=study.study_uid)
    print(f"study {study.study_uid} is now complete (rule manual); the node will process it")
    return 0
