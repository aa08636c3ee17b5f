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

Text that peers send (a destination's Error Comment, anything a remote AE says) may
echo the patient in free text, where no keyword announces it. :class:`PatientIdentifiers`
holds one study's identifiers, taken from a dataset that carries the patient module
(names in every spelling peers use, IDs, accession number, birth date in DICOM and
common civil formats), and replaces every occurrence; :func:`clean_peer_text` makes a
peer's words fit to keep (identifiers replaced, quoted values and control characters
removed, length bounded). While a sender works on a study it makes that study's
identifiers *active* (:meth:`PatientIdentifiers.active`): :class:`RedactingFilter`
then replaces them in every log record as well, library records included.

Log files rotate by size (:class:`LogOptions`: ``log_max_mb``, ``log_backups``): at
``<component>.log`` reaching the limit it becomes ``<component>.log.1`` (older ones shift,
the oldest goes). Several processes may write one file (a Celery worker and its pool
processes): each notices a rotation made by another and reopens the file, and one rotates
at a time (a lock file beside the log).

Libraries speak at ``log_level_libraries`` (default WARNING): Celery's per-task lines,
highdicom's INFO per object, alembic's start-up lines and the Celery worker banner stay out
of the node's logs unless asked for (the worker's start and "ready" lines stay). A
destination that refuses the connection is logged once per attempt by the sender, with its
host and port (:mod:`node.dicom.sender`); pynetdicom's own two ERROR lines about it, which
name neither, are dropped.

The filter sits on the root handlers that :func:`setup_logging` installs and also,
through :func:`silence_pynetdicom`, on the pydicom and pynetdicom loggers themselves,
so that their records (e.g. pynetdicom's ERROR lines and tracebacks for exceptions
in notification handlers) are redacted whichever handler finally writes them, also
in a process that never called :func:`setup_logging`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import logging.handlers
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LIBRARY_LOGGERS",
    "LogOptions",
    "PEER_TEXT_LIMIT",
    "PatientIdentifiers",
    "RedactingFilter",
    "clean_peer_text",
    "hash_identifier",
    "redact",
    "setup_logging",
    "silence_pynetdicom",
]

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

#: what replaces a patient's identifier found in free text, by kind
#: (hyphenated: the keyword rule of :func:`redact` must not take them for "patient name: value")
NAME_MARK, ID_MARK, DATE_MARK = "<patient-name>", "<patient-id>", "<birth-date>"
#: characters of a peer's text kept (:func:`clean_peer_text`); a DICOM Error Comment (LO) holds 64
PEER_TEXT_LIMIT = 1024
#: shortest name word or ID replaced in free text (one character would erase every "a" or "1")
_SHORTEST = 2
# data elements whose values identify the patient in free text
_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName")
_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "AdmissionID")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_NAME_RUN = re.compile(re.escape(NAME_MARK) + r"(?:[\s^,.=\-']*" + re.escape(NAME_MARK) + r")+")


def hash_identifier(value: str, length: int = 12) -> str:
    """A short SHA-256 digest of ``value`` (hex, ``length`` characters) for correlating log lines."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:length]


def redact(text: str, quoted: bool = False) -> str:
    """``text`` with patient identifier values removed (and every quoted value when ``quoted``)."""
    text = _IDENTIFIER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(4)}{_REDACTED}", text)
    if quoted:
        text = _QUOTED.sub(_REDACTED, text)
    return text


def _values(value: Any) -> list[str]:
    """A data element value (single, multi-valued or None) as non-empty strings."""
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _folded(text: str) -> str:
    """``text`` without diacritics (Müller -> Muller), as peers that speak ASCII write it."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _date_spellings(value: str) -> list[str]:
    """A DICOM DA ``YYYYMMDD`` and the civil spellings of it peers write (ISO, European, US)."""
    if not re.fullmatch(r"\d{8}", value):
        return [value] if len(value) >= _SHORTEST else []
    y, m, d = value[:4], value[4:6], value[6:]
    return [value, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}",
            f"{d}-{m}-{y}", f"{m}/{d}/{y}", f"{m}-{d}-{y}"]


@dataclass(frozen=True)
class PatientIdentifiers:
    """One study's patient identifiers, to find and replace in free text (lower-case spellings).

    ``names``: each name component (family, given, middle) of the patient's names, whole
    and word by word, with and without diacritics; ``ids``: patient ID, other IDs,
    accession and admission numbers; ``dates``: the birth date in DICOM and civil
    spellings. Matching ignores case and needs a non-alphanumeric character (or the end
    of the text) on both sides, so "SMITH^JOHN", "Smith, John", "JOHN SMITH" and
    "smith_john" all lose both words, but "Smithson" keeps its own. Words and IDs
    shorter than two characters are not replaced.
    """

    names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()

    @classmethod
    def from_dataset(cls, ds: Any) -> PatientIdentifiers:
        """The identifiers of the patient module of ``ds`` (a pydicom Dataset; missing elements are skipped)."""
        names: set[str] = set()
        for keyword in _NAME_KEYWORDS:
            for value in _values(ds.get(keyword)):
                for group in value.split("="):  # alphabetic, ideographic, phonetic
                    for component in group.split("^")[:3]:  # family, given, middle (not prefix or suffix)
                        for spelling in {component, _folded(component)}:
                            names.add(spelling.strip())
                            names.update(w for w in re.split(r"[\s\-.,']+", spelling) if w)
        ids = {v for keyword in _ID_KEYWORDS for v in _values(ds.get(keyword))}
        for item in ds.get("OtherPatientIDsSequence") or []:
            ids.update(_values(item.get("PatientID")))
        dates = {spelling for v in _values(ds.get("PatientBirthDate")) for spelling in _date_spellings(v)}
        return cls(*(frozenset(x.lower() for x in group if len(x) >= _SHORTEST) for group in (names, ids, dates)))

    @classmethod
    def union(cls, identifiers: Iterable[PatientIdentifiers]) -> PatientIdentifiers:
        """All of ``identifiers`` in one (e.g. the studies of one batch of sends)."""
        items = list(identifiers)
        return cls(frozenset().union(*(i.names for i in items)), frozenset().union(*(i.ids for i in items)),
                   frozenset().union(*(i.dates for i in items)))

    def __bool__(self) -> bool:
        return bool(self.names or self.ids or self.dates)

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of these identifiers replaced by ``<patient-name>``,
        ``<patient-id>`` or ``<birth-date>`` (a run of name words becomes one ``<patient-name>``)."""
        if not self or not text:
            return text
        pattern, marks = _compiled(self)
        text = pattern.sub(lambda m: marks.get(m.group(0).lower(), NAME_MARK), text)
        return _NAME_RUN.sub(NAME_MARK, text)

    @contextmanager
    def active(self) -> Iterator[None]:
        """While the block runs, :class:`RedactingFilter` replaces these identifiers in every log record."""
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        try:
            yield
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.remove(self)


_ACTIVE: list[PatientIdentifiers] = []  # identifiers of the studies being worked on now (any thread)
_ACTIVE_LOCK = threading.Lock()
_PATTERNS: dict[PatientIdentifiers, tuple[re.Pattern[str], dict[str, str]]] = {}
_PATTERNS_LOCK = threading.Lock()


def _compiled(ids: PatientIdentifiers) -> tuple[re.Pattern[str], dict[str, str]]:
    """One regular expression matching every spelling of ``ids`` (longest first), and the mark that replaces each."""
    with _PATTERNS_LOCK:
        found = _PATTERNS.get(ids)
        if found is None:
            marks = {**{n: NAME_MARK for n in ids.names}, **{d: DATE_MARK for d in ids.dates},
                            **{i: ID_MARK for i in ids.ids}}
            alternatives = "|".join(re.escape(s) for s in sorted(marks, key=len, reverse=True))
            found = (re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE), marks)
            if len(_PATTERNS) > 256:  # a long-running node sees many studies: keep the cache small
                _PATTERNS.clear()
            _PATTERNS[ids] = found
        return found


def _redact_active(text: str) -> str:
    with _ACTIVE_LOCK:
        active = tuple(_ACTIVE)
    for ids in active:
        text = ids.redact(text)
    return text


def clean_peer_text(
    text: str | bytes | None, identifiers: PatientIdentifiers, limit: int = PEER_TEXT_LIMIT, quoted: bool = True
) -> str:
    """What a peer said (e.g. a C-STORE Error Comment), fit to keep: control characters and runs of
    blanks made one space, values after patient keywords and (with ``quoted``) quoted values removed
    (:func:`redact`), ``identifiers`` replaced (:meth:`PatientIdentifiers.redact`), at most ``limit``
    characters. ``quoted=False`` suits the node's own exception texts, which quote names of SOP classes
    and hosts.

    Still free text from outside: keep it out of logs and the audit log (see docs/conformance.md 5.2).
    """
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(_CONTROL.sub(" ", str(text)).split())
    text = identifiers.redact(redact(text, quoted=quoted))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RedactingFilter(logging.Filter):
    """Rewrites every record's message (and traceback) so that it carries no patient identifiers:
    values after patient keywords (:func:`redact`), quoted values in library records, and the
    identifiers of the studies being worked on (:meth:`PatientIdentifiers.active`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        quoted = record.name.startswith(_CHATTY_LIBRARIES)
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = _redact_active(redact(message, quoted)), None
        if record.exc_text:
            record.exc_text = _redact_active(redact(record.exc_text, True))
        record.exc_info = None if record.exc_text else record.exc_info
        return True


def silence_pynetdicom() -> None:
    """Stop pynetdicom from logging datasets, identifiers and PDU dumps, and redact what it still logs.

    pynetdicom has no switch for the exceptions of notification handlers (``events.trigger``
    logs them at ERROR with a traceback): every pydicom and pynetdicom logger gets a
    :class:`RedactingFilter` of its own, so those records are redacted before any handler
    sees them, whether or not :func:`setup_logging` configured the handlers. pynetdicom's two
    records about a connection it could not make are dropped (the caller says it, with host and
    port). Idempotent.
    """
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.WARNING)
    transport = logging.getLogger("pynetdicom.transport")
    if not any(isinstance(f, _DropConnectionFailures) for f in transport.filters):
        transport.addFilter(_DropConnectionFailures())
    _filter_library_loggers()


def _filter_library_loggers() -> None:
    """A :class:`RedactingFilter` on every existing pydicom/pynetdicom logger that has none (a logger's
    filters apply to the records logged on it, not to those of its children: hence each one)."""
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.startswith(_CHATTY_LIBRARIES)]
    for name in {*names, "pydicom", "pynetdicom", "py.warnings"}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


#: loggers of the libraries whose records follow ``log_level_libraries`` (pydicom and pynetdicom never below WARNING)
LIBRARY_LOGGERS = ("celery", "kombu", "amqp", "highdicom", "alembic", "matplotlib", "PIL", "urllib3", "monai",
                   "torch", "filelock", "fsspec", "pydicom", "pynetdicom")
#: library loggers kept at INFO whatever the setting: the Celery worker's start and "ready" lines
_KEPT_AT_INFO = ("celery.apps.worker",)
#: pynetdicom's records about a connection it could not make (the sender logs it once, with host and port)
_CONNECTION_FAILED = ("Association request failed: unable to connect to remote", "TCP Initialisation Error:")


@dataclass(frozen=True)
class LogOptions:
    """How the node's log files behave: rotated at ``max_bytes`` keeping ``backups`` older files,
    libraries at ``library_level`` (a :mod:`logging` level name)."""

    max_bytes: int = 10 * 2**20
    backups: int = 5
    library_level: str = "WARNING"

    @classmethod
    def from_settings(cls, settings: Any) -> LogOptions:
        """``log_max_mb``, ``log_backups`` and ``log_level_libraries`` of a :class:`node.config.Settings`."""
        return cls(int(settings.log_max_mb * 2**20), int(settings.log_backups), str(settings.log_level_libraries))

    @property
    def library_banners(self) -> bool:
        """Whether libraries may print their start-up banners (the Celery worker's): at INFO or below."""
        return logging.getLevelName(self.library_level) <= logging.INFO


class _SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotated log file that several processes write: before each record it reopens the file
    when another process rotated it, and it rotates under an exclusive lock on ``<file>.lock``,
    after checking the size of the file on disk (not of its own stream)."""

    def shouldRollover(self, record: logging.LogRecord) -> int:  # noqa: N802 (logging's name)
        try:
            on_disk = os.stat(self.baseFilename)
        except OSError:
            on_disk = None
        if self.stream is not None and (on_disk is None or os.fstat(self.stream.fileno()).st_ino != on_disk.st_ino):
            self.stream.close()
            self.stream = self._open()  # another process rotated (or removed) the file
            on_disk = os.stat(self.baseFilename)
        return int(self.maxBytes > 0 and on_disk is not None and on_disk.st_size >= self.maxBytes)

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        with open(self.baseFilename + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.path.exists(self.baseFilename) and os.stat(self.baseFilename).st_size >= self.maxBytes:
                    super().doRollover()
                elif self.stream is not None:  # another process rotated meanwhile
                    self.stream.close()
                    self.stream = self._open()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _DropConnectionFailures(logging.Filter):
    """Drops pynetdicom's records about a connection that could not be made (they name no host)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CONNECTION_FAILED)


def _set_library_levels(options: LogOptions) -> None:
    level = logging.getLevelName(options.library_level)
    for name in LIBRARY_LOGGERS:
        floor = logging.WARNING if name in ("pydicom", "pynetdicom") else logging.NOTSET
        logging.getLogger(name).setLevel(max(level, floor))
    for name in _KEPT_AT_INFO:
        logging.getLogger(name).setLevel(min(level, logging.INFO))


def setup_logging(log_dir: Path | None, component: str, level: int | str = logging.INFO, stream: Any = sys.stderr,
                  options: LogOptions | None = None) -> Path | None:
    """Configure the root logger for ``component`` (e.g. ``"node"``, ``"worker"``).

    Writes to ``log_dir/<component>.log`` (created; rotated by size as ``options`` say) when
    ``log_dir`` is given, and to ``stream``; every handler redacts; library loggers are set to
    ``options.library_level``. Returns the log file path.
    """
    options = options or LogOptions()
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
        handlers.append(_SharedRotatingFileHandler(path, maxBytes=options.max_bytes, backupCount=options.backups,
                                                   encoding="utf-8"))
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
    _set_library_levels(options)
    return path
