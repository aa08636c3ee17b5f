"""Why the listener refused associations and connections: counts by reason, shared with ``cardionode status``.

Every refusal has one reason from :data:`REASONS`. Refusals of an association
request (the policy of :mod:`node.dicom.scp`, and malformed AE titles) are also
recorded one by one in the ledger's ``rejections`` and in the audit log; refusals
of a *connection* (no request, or not one the node will parse: stalled, garbage,
oversized, failed TLS, too many connections waiting) are only counted and logged,
so that a flood of them cannot fill the ledger or the disk.

The listener keeps a :class:`RefusalCounts` since it started and writes it, at
most about once a second, to ``settings.refusal_counts_path`` (a small JSON file
replaced atomically); :func:`read_refusal_counts` reads it back for the status
model (:mod:`node.ops.status`), in another process. This module imports neither
pynetdicom nor the ledger.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from node.dicom.spool import write_file_atomic

__all__ = ["REASONS", "RefusalCounts", "RefusalSnapshot", "read_refusal_counts"]

_log = logging.getLogger("cardionode.scp")

#: every refusal reason (a stable short code, for status and metrics), and what it means
REASONS: dict[str, str] = {
    # association requests (A-ASSOCIATE-RJ; also in the ledger and the audit log)
    "called-ae": "called AE title is not the node's",
    "calling-ae": "calling AE title not among the peers, or not from the peer's host",
    "malformed-ae": "AE title in the request is not a valid AE (empty, NUL, control characters, backslash, non-ASCII)",
    "local-limit": "max_associations associations already open",
    "disk-low": "free space in data_dir below disk_watermark_mb",
    # connections (closed; counted and logged only)
    "pending-limit": "too many connections still waiting for their association request",
    "tls-timeout": "TLS handshake not complete within tls_handshake_timeout_s",
    "tls-failed": "TLS handshake failed (protocol version, certificate, not TLS)",
    "artim-timeout": "association request not complete within acse_timeout_s (ARTIM) of the connection",
    "pdu-timeout": "a PDU not complete within pdu_timeout_s of its first byte",
    "not-dicom": "the first bytes are not an A-ASSOCIATE-RQ",
    "oversized-request": "A-ASSOCIATE-RQ longer than the node reads",
    "oversized-pdu": "PDU longer than the maximum PDU size the node announced",
    "invalid-pdu": "unknown PDU type on an association",
}

#: seconds between two writes of the counts file at most
FLUSH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class RefusalSnapshot:
    """Refusals by reason (every reason of :data:`REASONS`, in that order) since ``since`` (UTC)."""

    since: datetime | None
    counts: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RefusalCounts:
    """Thread-safe refusal counters of one listener run, written to ``path`` (None: kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.since = datetime.now(UTC)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REASONS, 0)
        self._timer: threading.Timer | None = None

    def add(self, reason: str) -> int:
        """Count one refusal for ``reason`` (a key of :data:`REASONS`); returns the new count."""
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}; known: {', '.join(REASONS)}")
        with self._lock:
            self._counts[reason] += 1
            count = self._counts[reason]
            if self.path is not None and self._timer is None:
                self._timer = threading.Timer(FLUSH_INTERVAL_S, self.flush)
                self._timer.daemon = True
                self._timer.start()
        return count

    def snapshot(self) -> RefusalSnapshot:
        with self._lock:
            return RefusalSnapshot(self.since, dict(self._counts))

    def flush(self) -> None:
        """Write the counts to :attr:`path` now (atomically); a failing write is logged, not raised."""
        with self._lock:
            self._timer = None
            data = {"since": self.since.isoformat(), "counts": dict(self._counts)}
        if self.path is None:
            return
        try:
            write_file_atomic(self.path, (json.dumps(data, indent=1) + "\n").encode("ascii"), durable=False)
        except OSError:
            _log.exception("cannot write the refusal counts to %s", self.path)

    def close(self) -> None:
        """Cancel a pending write and write the final counts."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()


def read_refusal_counts(path: Path) -> RefusalSnapshot:
    """The counts a listener wrote to ``path``; all zero with ``since`` None when there is no
    readable file (the listener never ran, or has not refused anything yet)."""
    counts = dict.fromkeys(REASONS, 0)
    try:
        data = json.loads(Path(path).read_text(encoding="ascii"))
        since = datetime.fromisoformat(str(data["since"]))
        for reason, value in dict(data.get("counts", {})).items():
            if reason in counts:
                counts[reason] = int(value)
    except (OSError, ValueError, KeyError, TypeError):
        return RefusalSnapshot(None, counts)
    return RefusalSnapshot(since, counts)
