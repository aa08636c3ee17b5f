"""Logging without patient data.

:func:`setup_logging` sends the node's log records to ``<data_dir>/logs/<component>.log``
and to standard error, through :class:`RedactingFilter`, which removes what looks
like patient identifiers from every record (DICOM group 0010 values, keyword or
tag followed by a value, quoted values in pydicom/pynetdicom warnings, which may
echo element values). pynetdicom's own dataset and identifier logging is
switched off and its loggers are kept at WARNING.

The node's code never logs names, patient IDs or birth dates in the first place;
where a log line must correlate something patient-related it logs
:func:`hash_identifier` of it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["hash_identifier", "RedactingFilter", "setup_logging", "silence_pynetdicom"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
_REDACTED = "<redacted>"

# keyword or tag of a patient identifier, then a separator, then the value up to the end of the field
_IDENTIFIER_VALUE = re.compile(
    r"(?i)(\(0010,[0-9a-f]{4}\)|\b0010[0-9a-f]{4}\b|patient'?s?[ _]?(name|id|birth[ _]?date|address)"
    r"|other[ _]?patient[ _]?(ids|names))"
    r"([^A-Za-z0-9\n]{0,20}(PN|LO|DA|LT|SQ)?[:=\s]*)([^\n,;]*)"
)
_QUOTED = re.compile(r"('[^'\n]*'|\"[^\"\n]*\")")
_CHATTY_LIBRARIES = ("pydicom", "pynetdicom", "py.warnings")


def hash_identifier(value: str, length: int = 12) -> str:
    """A short SHA-256 digest of ``value`` (hex, ``length`` characters) for correlating log lines."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:length]


def redact(text: str, quoted: bool = False) -> str:
    """``text`` with patient identifier values removed (and every quoted value when ``quoted``)."""
    text = _IDENTIFIER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(4)}{_REDACTED}", text)
    if quoted:
        text = _QUOTED.sub(_REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites every record's message so that it carries no patient identifiers."""

    def filter(self, record: logging.LogRecord) -> bool:
        quoted = record.name.startswith(_CHATTY_LIBRARIES)
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message, quoted), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, True)
        record.exc_info = None if record.exc_text else record.exc_info
        return True


def silence_pynetdicom() -> None:
    """Stop pynetdicom from logging datasets, identifiers and PDU dumps."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom has no switch for the exceptions of notification handlers (events.trigger logs them at
    # ERROR); those records go through RedactingFilter like every other one
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)


def setup_logging(log_dir: Path | None, component: str, level: int | str = logging.INFO, stream: Any = sys.stderr) -> Path | None:
    """Configure the root logger for ``component`` (e.g. ``"node"``, ``"worker"``).

    Writes to ``log_dir/<component>.log`` (created) when ``log_dir`` is given, and to
    ``stream``; every handler redacts. Returns the log file path.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cardionode", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = []
    path: Path | None = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / f"{component}.log"
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(RedactingFilter())
        handler._cardionode = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    silence_pynetdicom()
    return path
