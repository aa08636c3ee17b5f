"""Append-only audit log: one JSON object per line, fsync'ed, no patient data.

Each line has ``at`` (UTC, ISO 8601 with microseconds), ``event`` (a short
name such as ``association.accepted``, ``instances.stored``, ``job.sent``) and
the event's fields. Fields carry AE titles, addresses, counts, statuses and
Study Instance UIDs (study level only); SOP Instance UIDs, if a step needs
them, are passed through :func:`node.dicom.logs.hash_identifier`. Field names
that denote patient data are refused, and so are those that would carry a peer's
free text (``peer_text``, ``error_comment``): what a destination says is kept only
in the ledger's protected ``sends.peer_text`` (docs/conformance.md 5.2).

Several processes may append to the same file: each record is written with
one ``write`` on a descriptor opened with ``O_APPEND``.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.dicom.spool import make_directories

__all__ = ["AuditLog", "FORBIDDEN_FIELDS"]

#: field names the audit log refuses (compared lower-case, without "_"): patient data, and peers' free text
FORBIDDEN_FIELDS = frozenset(
    {"patientname", "patientid", "patientbirthdate", "patientsname", "patientsbirthdate", "name", "birthdate", "otherpatientids",
     "peertext", "errorcomment"}
)


class AuditLog:
    """The audit log at ``path`` (``settings.audit_log_path``)."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        make_directories(self.path.parent, durable)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event. Values must be JSON-serialisable (str, numbers, bools, None, lists)."""
        for key in fields:
            if key.lower().replace("_", "") in FORBIDDEN_FIELDS:
                raise ValueError(f"audit field {key!r} would carry patient data; hash it or leave it out")
        entry = {"at": datetime.now(UTC).isoformat(timespec="microseconds"), "event": event, **fields}
        line = (json.dumps(entry, ensure_ascii=True, sort_keys=False, default=str) + "\n").encode("ascii")
        with self._lock:
            os.write(self._fd, line)
            if self.durable:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
