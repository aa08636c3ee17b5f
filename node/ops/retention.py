"""Data lifecycle: what the node keeps on disk, and for how long (``[retention]``).

Without retention every received study (spool), every result (outbox) and what crashed
job attempts left in the artifact store stay forever: about 41 MB per SPECT study, 9.5 MB
received and 31 MB of results (measured in docs/operations.md). A *pass* (:func:`prune`) removes, per finished study:

* its spool files (received instances) once no job of it is queued or running;
* its outbox files (results) once, in addition, none of them waits to be sent (a send
  ``pending``, ``retrying``, or ``dead_letter`` of a job not discarded: `cardionode retry`
  sends those again);

when its last activity is older than ``max_age_days``, or, oldest first, while the spool
(outbox) holds more than ``max_spool_gb`` (``max_outbox_gb``), or while the disk has less
free space than twice ``disk_watermark_mb`` (the listener refuses studies below the
watermark). Studies whose latest job failed (kept for `cardionode retry`) go after the
others. Nothing an unfinished study, an open job or an unsent result needs is touched,
whatever the limits; a limit that cannot be met for that reason is reported.

The ledger keeps every row: a pruned file leaves its instance or output row with the path
:data:`node.ledger.PRUNED_PATH` and the study a ``pruned:`` event
(:mod:`node.ledger.retention`). A pruned study that is sent again is stored and processed
again (its instances count as new), and its new run's report supersedes the earlier one.

Job artifacts of this node (``<data_dir>/artifacts/jobs/<node>-<job>.<attempt>``) whose job
is no longer queued or running are removed ``artifact_grace_h`` hours after they were last
written (the conductor removes them itself when a job ends; these are what crashes left).

``cardionode serve`` runs a pass every ``interval_s`` seconds (:class:`RetentionKeeper`);
``cardionode prune [--dry-run]`` runs one on demand (:func:`prune_main`). :func:`disk_summary`
is the one line that `cardionode status` and the disk check show.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from node.config import ConfigError, Settings, load_settings
from node.dicom.logs import hash_identifier
from node.dicom.spool import write_file_atomic
from node.ledger import Ledger, LedgerSchemaError, StudyRetention, utcnow

__all__ = [
    "AREAS",
    "DiskSummary",
    "PruneReport",
    "Removal",
    "RetentionKeeper",
    "disk_summary",
    "plan",
    "prune",
    "prune_main",
]

_log = logging.getLogger(__name__)

#: where a study's files live: spool (received instances) and outbox (results)
AREAS = ("spool", "outbox")
#: a study that received an instance this recently is never pruned by a size limit (s)
QUIET_S = 60.0
#: least time between two passes started because the disk is below the watermark (s)
LOW_DISK_RETRY_S = 60.0
_GB = 1e9
_MIB = 2**20
_TRASH = ".retention-trash"
_LAST_PASS = Path("retention") / "last_pass.json"


# --------------------------------------------------------------------------- sizes on disk
def _tree_bytes(root: Path, shared: bool = True) -> int:
    """Bytes of the regular files under ``root`` (0 when absent); ``shared=False`` leaves out files
    with other hard links (input artifacts that are links to spool files free nothing)."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    if shared or stat.st_nlink == 1:
                        total += stat.st_size
            except OSError:
                continue
    return total


def _study_bytes(area_root: Path) -> dict[str, int]:
    """``study_uid -> bytes`` of the study folders in the spool or outbox (dot-folders left out)."""
    try:
        entries = [e for e in os.scandir(area_root) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    except OSError:
        return {}
    return {e.name: _tree_bytes(Path(e.path)) for e in entries}


def _artifact_root(settings: Settings) -> Path | None:
    """The artifact store's folder, or None when it is Redis (whose keys expire by themselves)."""
    spec = settings.effective_artifact_store
    return None if spec.startswith(("redis://", "rediss://")) else Path(spec)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Removal:
    """One study's files in one area, to be removed, and why.

    ``area`` is ``spool`` or ``outbox``; ``size_bytes`` what they hold on disk; ``why`` the rule
    in words (``last activity more than 30 days ago``, ``spool over 50 GB``, ...).
    """

    study_uid: str
    area: str
    size_bytes: int
    why: str


@dataclass(frozen=True)
class PruneReport:
    """What a pass removed (or, ``dry_run``, would remove).

    ``kept_over_limit`` names each limit that the pass could not meet because the rest is needed
    (an unfinished study, an open job, an unsent result), with the bytes still above it.
    """

    at: datetime
    dry_run: bool
    removals: tuple[Removal, ...]
    artifacts_removed: int = 0
    artifacts_bytes: int = 0
    kept_over_limit: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # studies that changed between the plan and their removal

    @property
    def freed_bytes(self) -> int:
        return sum(r.size_bytes for r in self.removals) + self.artifacts_bytes

    @property
    def studies(self) -> int:
        return len({r.study_uid for r in self.removals})

    def describe(self) -> str:
        """One line for the log and `cardionode prune`."""
        verb = "would free" if self.dry_run else "freed"
        text = (f"retention: {verb} {_size(self.freed_bytes)} ({self.studies} studies: "
                + ", ".join(f"{sum(1 for r in self.removals if r.area == a)} {a}" for a in AREAS)
                + f"; {self.artifacts_removed} job artifact folders)")
        if self.kept_over_limit:
            text += "; kept because still needed: " + "; ".join(self.kept_over_limit)
        return text


def _needed(row: StudyRetention, area: str) -> bool:
    return row.spool_needed if area == "spool" else row.outbox_needed


def plan(ledger: Ledger, settings: Settings, now: datetime | None = None) -> tuple[list[Removal], list[str]]:
    """The removals a pass makes now, and the limits it cannot meet (in words).

    Reads the ledger (what each study's files are needed for) and the disk (what they hold);
    changes nothing. Order: age, then each area's size limit, then low disk space; within a
    limit, studies whose latest job failed go after the others, each group oldest first.
    """
    r = settings.retention
    now = now or utcnow()
    rows = ledger.retention.studies()
    sizes = {area: _study_bytes(_area_root(settings, area)) for area in AREAS}
    removals: list[Removal] = []
    planned: set[tuple[str, str]] = set()

    def take(row: StudyRetention, area: str, why: str) -> int:
        size = sizes[area].get(row.study_uid, 0)
        if size == 0 or (row.study_uid, area) in planned or _needed(row, area):
            return 0
        planned.add((row.study_uid, area))
        removals.append(Removal(row.study_uid, area, size, why))
        return size

    if r.max_age_days > 0:
        cutoff = now - timedelta(days=r.max_age_days)
        for row in rows:
            if row.last_activity < cutoff:
                for area in AREAS:
                    take(row, area, f"last activity more than {r.max_age_days:g} days ago")
    quiet = now - timedelta(seconds=QUIET_S)
    by_priority = sorted((row for row in rows if row.last_activity < quiet), key=lambda row: row.retriable)
    unmet: list[str] = []
    for area, limit_gb in (("spool", r.max_spool_gb), ("outbox", r.max_outbox_gb)):
        if limit_gb <= 0:
            continue
        held = sum(sizes[area].values()) - sum(x.size_bytes for x in removals if x.area == area)
        for row in by_priority:
            if held <= limit_gb * _GB:
                break
            held -= take(row, area, f"{area} over {limit_gb:g} GB")
        if held > limit_gb * _GB:
            unmet.append(f"{area} holds {_size(held)}, over its {limit_gb:g} GB")
    watermark = settings.disk_watermark_mb * _MIB
    if watermark > 0:
        lacking = 2 * watermark - _free_bytes(settings.data_dir) - sum(x.size_bytes for x in removals)
        if lacking > 0:
            for area in AREAS:
                for row in by_priority:
                    if lacking <= 0:
                        break
                    lacking -= take(row, area, f"free disk space below twice disk_watermark_mb ({settings.disk_watermark_mb:g} MiB)")
            if lacking > 0:
                unmet.append(f"free disk space stays {_size(lacking)} short of twice the watermark")
    return removals, unmet


# --------------------------------------------------------------------------- the pass
def prune(ledger: Ledger, settings: Settings, dry_run: bool = False, now: datetime | None = None) -> PruneReport:
    """Run one retention pass (see the module docstring); with ``dry_run`` only say what it would remove."""
    now = now or utcnow()
    removals, unmet = plan(ledger, settings, now)
    artifacts = _stale_artifacts(ledger, settings, time.time())
    if dry_run:
        return PruneReport(now, True, tuple(removals), len(artifacts), sum(b for _, b in artifacts), tuple(unmet))
    trash = settings.data_dir / _TRASH
    shutil.rmtree(trash, ignore_errors=True)  # what an interrupted pass left
    done: list[Removal] = []
    skipped: list[str] = []
    quiet = now - timedelta(seconds=QUIET_S)
    for removal in removals:
        source = _area_root(settings, removal.area) / removal.study_uid
        aside = trash / f"{removal.area}-{removal.study_uid}-{secrets.token_hex(4)}"
        reason = f"{removal.area} files ({_size(removal.size_bytes)}) removed by retention: {removal.why}"

        def move_aside(source: Path = source, aside: Path = aside) -> int:
            aside.parent.mkdir(parents=True, exist_ok=True)
            size = _tree_bytes(source)
            if source.exists():
                os.replace(source, aside)
            return size

        if removal.area == "spool":
            freed = ledger.retention.prune_spool(removal.study_uid, reason, min(quiet, now), move_aside)
        else:
            freed = ledger.retention.prune_outbox(removal.study_uid, reason, move_aside)
        if freed is None:
            skipped.append(removal.study_uid)
            continue
        if removal.area == "spool":
            _put_back_fresh(aside, source, quiet)
        else:  # the web page's renderings of these results go with them
            shutil.rmtree(settings.web_cache_dir / removal.study_uid, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
        done.append(Removal(removal.study_uid, removal.area, freed, removal.why))
        _log.info("study %s: %s", hash_identifier(removal.study_uid), reason)
    shutil.rmtree(trash, ignore_errors=True)
    removed_bytes = 0
    for folder, size in artifacts:
        shutil.rmtree(folder, ignore_errors=True)
        removed_bytes += size
    report = PruneReport(now, False, tuple(done), len(artifacts), removed_bytes, tuple(unmet), tuple(skipped))
    _write_last_pass(settings, report)
    return report


def _put_back_fresh(aside: Path, source: Path, quiet: datetime) -> None:
    """Files in ``aside`` written after ``quiet`` (an instance sent again while the pass moved its
    study) go back to their place in the spool; the listener records them as new instances."""
    limit = quiet.replace(tzinfo=UTC).timestamp()  # the ledger's naive UTC as a file time
    for path in aside.rglob("*.dcm") if aside.exists() else ():
        if path.stat().st_mtime > limit:
            target = source / path.relative_to(aside)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            _log.info("a file of study %s arrived while it was pruned; kept", hash_identifier(source.name))


def _stale_artifacts(ledger: Ledger, settings: Settings, now_s: float) -> list[tuple[Path, int]]:
    """This node's job-attempt folders in a directory artifact store whose job is not queued or
    running and that were last written more than ``artifact_grace_h`` hours ago, with their bytes."""
    root = _artifact_root(settings)
    if root is None or not (root / "jobs").is_dir():
        return []
    from node.queue.dispatch import node_tag, parse_task_id  # the job key's one format

    mine = node_tag(settings.effective_device_uid()) + "-"
    open_jobs = ledger.retention.open_job_ids()
    grace_s = settings.retention.artifact_grace_h * 3600
    stale: list[tuple[Path, int]] = []
    for entry in os.scandir(root / "jobs"):
        if not entry.name.startswith(mine) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            job_id, _, _ = parse_task_id(f"cn-{entry.name}-step")
        except ValueError:
            continue
        folder = Path(entry.path)
        if job_id in open_jobs or now_s - _newest_mtime(folder) < grace_s:
            continue
        stale.append((folder, _tree_bytes(folder, shared=False)))
    return stale


def _newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)


def _area_root(settings: Settings, area: str) -> Path:
    return settings.spool_dir if area == "spool" else settings.outbox_dir


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _size(n: float) -> str:
    """Bytes in words, decimal units (``1.3 GB``, ``120 MB``, ``4 kB``, ``0 B``)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}" if abs(n) < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


# --------------------------------------------------------------------------- last pass and summary
@dataclass(frozen=True)
class LastPass:
    """The last pass that removed anything or ran on schedule: when (naive UTC), what it freed."""

    at: datetime
    freed_bytes: int
    studies: int


def _write_last_pass(settings: Settings, report: PruneReport) -> None:
    record = {"at": report.at.isoformat(), "freed_bytes": report.freed_bytes, "studies": report.studies}
    try:
        write_file_atomic(settings.data_dir / _LAST_PASS, json.dumps(record).encode("ascii"), durable=False)
    except OSError as exc:
        _log.warning("retention: cannot record the pass in %s: %s", settings.data_dir / _LAST_PASS, exc)


def _read_last_pass(settings: Settings) -> LastPass | None:
    try:
        data = json.loads((settings.data_dir / _LAST_PASS).read_text(encoding="ascii"))
        return LastPass(datetime.fromisoformat(data["at"]), int(data["freed_bytes"]), int(data["studies"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class DiskSummary:
    """What the node's data hold on disk, against the retention limits (one line in `cardionode status`).

    Sizes in bytes: ``spool_bytes`` (received instances), ``outbox_bytes`` (results),
    ``artifacts_bytes`` (job artifacts that are not links to spool files; None for a Redis store),
    ``logs_bytes``; ``free_bytes`` of the data directory's file system and ``watermark_bytes``
    (``disk_watermark_mb``). Limits as configured (0: none); ``pruned_studies`` counts studies
    whose files retention removed; ``last_pass`` is None before the first pass.
    """

    spool_bytes: int
    outbox_bytes: int
    artifacts_bytes: int | None
    logs_bytes: int
    free_bytes: int
    watermark_bytes: int
    enabled: bool
    max_age_days: float
    max_spool_gb: float
    max_outbox_gb: float
    pruned_studies: int
    last_pass: LastPass | None = None
    problems: tuple[str, ...] = field(default=())

    def line(self) -> str:
        """``disk: ... ; retention: ...`` in one line."""
        def limit(gb: float) -> str:
            return f" (limit {gb:g} GB)" if gb > 0 else ""

        parts = [f"spool {_size(self.spool_bytes)}{limit(self.max_spool_gb)}",
                 f"outbox {_size(self.outbox_bytes)}{limit(self.max_outbox_gb)}"]
        if self.artifacts_bytes is not None:
            parts.append(f"artifacts {_size(self.artifacts_bytes)}")
        parts.append(f"logs {_size(self.logs_bytes)}")
        disk = f"disk: {', '.join(parts)}; {_size(self.free_bytes)} free (watermark {self.watermark_bytes / _MIB:g} MiB)"
        if not self.enabled:
            return f"{disk}; retention: off (data kept until removed by hand)"
        age = f"after {self.max_age_days:g} days" if self.max_age_days > 0 else "no age limit"
        last = ("no pass yet" if self.last_pass is None else
                f"last pass {self.last_pass.at:%Y-%m-%d %H:%M} UTC freed {_size(self.last_pass.freed_bytes)}")
        text = f"{disk}; retention: {age}, {last}, {self.pruned_studies} studies pruned"
        return text + "".join(f"; {p}" for p in self.problems)


def disk_summary(ledger: Ledger, settings: Settings) -> DiskSummary:
    """The :class:`DiskSummary` of the node with this ledger and settings (reads the disk and the ledger)."""
    r = settings.retention
    spool = _tree_bytes(settings.spool_dir)
    outbox = _tree_bytes(settings.outbox_dir)
    problems = []
    for name, held, limit_gb in (("spool", spool, r.max_spool_gb), ("outbox", outbox, r.max_outbox_gb)):
        if r.enabled and limit_gb > 0 and held > limit_gb * _GB:
            problems.append(f"{name} over its limit (the rest is needed, or no pass ran yet)")
    artifacts = _artifact_root(settings)
    return DiskSummary(
        spool_bytes=spool,
        outbox_bytes=outbox,
        artifacts_bytes=None if artifacts is None else _tree_bytes(artifacts, shared=False),
        logs_bytes=_tree_bytes(settings.log_dir),
        free_bytes=_free_bytes(settings.data_dir),
        watermark_bytes=int(settings.disk_watermark_mb * _MIB),
        enabled=r.enabled,
        max_age_days=r.max_age_days,
        max_spool_gb=r.max_spool_gb,
        max_outbox_gb=r.max_outbox_gb,
        pruned_studies=ledger.retention.pruned_studies(),
        last_pass=_read_last_pass(settings),
        problems=tuple(problems),
    )


# --------------------------------------------------------------------------- in the node, and on demand
class RetentionKeeper:
    """The node's periodic pass: :meth:`run_due` (called by ``cardionode serve``'s retention loop)
    runs :func:`prune` every ``retention.interval_s`` seconds, counted from the last pass recorded
    in ``data_dir`` (so at start when none was made for that long), and at once (at most every
    ``LOW_DISK_RETRY_S`` seconds) while free space is below ``disk_watermark_mb``."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger, self.settings = ledger, settings
        last = _read_last_pass(settings)  # a node restarted more often than interval_s still prunes
        since_s = (utcnow() - last.at).total_seconds() if last is not None else settings.retention.interval_s
        self._last = time.monotonic() - min(max(since_s, 0.0), settings.retention.interval_s)
        self._last_low_disk = -LOW_DISK_RETRY_S

    def run_due(self) -> PruneReport | None:
        """Run a pass if one is due; its report, or None."""
        r = self.settings.retention
        if not r.enabled:
            return None
        now = time.monotonic()
        low = _free_bytes(self.settings.data_dir) < self.settings.disk_watermark_mb * _MIB
        if low and now - self._last_low_disk >= LOW_DISK_RETRY_S:
            self._last_low_disk = now
        elif now - self._last < r.interval_s:
            return None
        self._last = now
        report = prune(self.ledger, self.settings)
        if report.removals or report.artifacts_removed or report.kept_over_limit:
            (_log.warning if report.kept_over_limit else _log.info)("%s", report.describe())
        return report


def prune_main(args: argparse.Namespace) -> int:
    """``cardionode prune [--dry-run]``: one retention pass now, whatever ``retention.enabled`` says
    (the limits of ``[retention]`` apply); prints what it removed, or would remove."""
    try:
        settings = load_settings(getattr(args, "config", None))
        ledger = Ledger.from_settings(settings)
    except (ConfigError, LedgerSchemaError) as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    try:
        report = prune(ledger, settings, dry_run=bool(getattr(args, "dry_run", False)))
        summary = disk_summary(ledger, settings)
    finally:
        ledger.close()
    for removal in report.removals:
        print(f"{'would remove' if report.dry_run else 'removed'} {removal.area} {_size(removal.size_bytes):>8}  "
              f"study {removal.study_uid}  ({removal.why})")
    print(report.describe())
    print(summary.line())
    return 0

