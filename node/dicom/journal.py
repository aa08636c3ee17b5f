"""The spool journal: received instances made durable by one device flush shared by all associations.

Each received instance is appended to the journal, a folder of append-only segment files
(``<spool>/.journal/<number>.journal``), as one record: its ledger record (JSON) and the bytes
of its spool file. :meth:`SpoolJournal.wait_durable` returns once an ``fdatasync`` of the
segment covers the record (**group commit**): the first waiter finding no flush under way
flushes everything appended so far, the others wait for it, and whoever appended during that
flush is covered by the next one. With one association that is one flush per instance; with
eight, about one flush per eight instances.

The spool files themselves are written without ``fsync`` (:meth:`node.dicom.spool.Spool.store`
with ``durable=False``). A background checkpointer (:meth:`SpoolJournal.start`) closes the
current segment every :attr:`SpoolJournal.max_age_s` seconds (or at
:attr:`SpoolJournal.segment_bytes`), waits until every instance in it is settled (laid out in
the spool and recorded in the ledger, :meth:`SpoolJournal.settled`), makes the spool durable
in one call (``sync``, e.g. :func:`node.dicom.spool.sync_file_system`) and only
then deletes the segment. After a crash (kill -9, power loss) the segments left are replayed
(:meth:`SpoolJournal.replay`): each record whose spool file is missing or differs is written
again, and its ledger record recorded again (both idempotent).

Record layout (little endian)::

    magic "CNJ1" | segment number u32 | meta bytes u32 | data bytes u64 | CRC32 meta u32 | CRC32 data u32 |
    CRC32 of the 28 bytes before u32 | meta (UTF-8 JSON object) | data

Appends are sequential, so a crash can tear only the last record of a segment: reading a
segment stops at the first record whose header or CRC32 does not check, whose segment number
is not the file's, or that ends past the end of the file (a torn tail), and ignores the rest.

A checkpointed segment is not deleted but kept as the spare (``spare.journal``, at most one;
deleted when the journal closes or opens), renamed to the next segment's name at the next
rotation and overwritten from its start:
overwriting blocks a file already has changes no file size or allocation, so the
``fdatasync`` has no file-system metadata to commit (on this ext4 disk, appending 33 kB +
``fdatasync`` took 3.7–5.3 ms, overwriting + ``fdatasync`` 0.7–2.8 ms). Its old records carry
another segment number, so they end the reading of the reused segment like a torn tail.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.dicom.spool import FileRange, Part, append_parts, fsync_directory, make_directories, part_size

__all__ = ["JOURNAL_DIR", "JournalError", "JournalRecord", "JournalTicket", "SpoolJournal", "crc32_of_parts"]

_log = logging.getLogger("cardionode.scp")

#: the journal's folder in the spool (never an instance's: no UID starts with a dot)
JOURNAL_DIR = ".journal"
_SUFFIX = ".journal"
_SPARE = "spare.journal"  # a checkpointed segment kept for reuse (its blocks are allocated)
_MAGIC = b"CNJ1"
_FIELDS = struct.Struct("<4sIIQII")  # magic, segment number, meta bytes, data bytes, CRC32 of meta, CRC32 of data
_HEADER_BYTES = _FIELDS.size + 4  # the fields and their own CRC32
_READ_CHUNK = 1 << 20  # bytes per read when checking a CRC32
_MAX_META_BYTES = 1 << 20


class JournalError(OSError):
    """A flush of the journal failed: nothing appended since can be acknowledged (until a restart)."""


def crc32_of_parts(parts: Sequence[Part]) -> int:
    """CRC32 (zlib) of the bytes of ``parts`` one after the other, read in chunks of 1 MiB."""
    crc = 0
    for part in parts:
        if isinstance(part, FileRange):
            crc = _crc32_of_range(part, crc)
        else:
            crc = zlib.crc32(part, crc)
    return crc


def _crc32_of_range(part: FileRange, crc: int = 0) -> int:
    with open(part.path, "rb", buffering=0) as fp:
        fp.seek(part.offset)
        left = part.length
        while left > 0:
            chunk = fp.read(min(left, _READ_CHUNK))
            if not chunk:
                raise OSError(f"{part.path.name} ended {left} bytes before the range")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc


@dataclass(frozen=True)
class JournalRecord:
    """One record read back from a segment: its ``meta`` and where its data bytes are."""

    meta: dict[str, Any]
    data: FileRange
    data_crc32: int

    def matches_file(self, path: Path) -> bool:
        """Whether the file at ``path`` holds exactly this record's data (size and CRC32)."""
        try:
            if path.stat().st_size != self.data.length:
                return False
            return _crc32_of_range(FileRange(path, 0, self.data.length)) == self.data_crc32
        except OSError:
            return False


@dataclass(frozen=True)
class JournalTicket:
    """What :meth:`SpoolJournal.append` hands back: the record's place in the order of appends."""

    sequence: int
    segment: int


@dataclass
class _Segment:
    number: int
    path: Path
    fd: int
    size_bytes: int = 0
    records: int = 0
    last_sequence: int = 0
    unsettled: int = 0
    opened_at: float = field(default_factory=time.monotonic)


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}{_SUFFIX}"


def read_segment(path: Path) -> Iterator[JournalRecord]:
    """The whole records of the segment at ``path`` (named by its number), in order; stops at a
    torn or corrupt record, or one of an earlier use of the file."""
    number = int(path.stem)
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as fp:
        offset = 0
        while offset + _HEADER_BYTES <= size:
            fp.seek(offset)
            header = fp.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                break
            magic, segment, meta_bytes, data_bytes, meta_crc, data_crc = _FIELDS.unpack_from(header)
            (header_crc,) = struct.unpack_from("<I", header, _FIELDS.size)
            if magic != _MAGIC or zlib.crc32(header[: _FIELDS.size]) != header_crc or segment != number:
                break
            if meta_bytes > _MAX_META_BYTES:
                break
            end = offset + _HEADER_BYTES + meta_bytes + data_bytes
            if end > size:
                break
            meta_raw = fp.read(meta_bytes)
            data = FileRange(path, offset + _HEADER_BYTES + meta_bytes, data_bytes)
            if zlib.crc32(meta_raw) != meta_crc or _crc32_of_range(data) != data_crc:
                break
            yield JournalRecord(json.loads(meta_raw), data, data_crc)
            offset = end
        if offset < size:
            _log.info(
                "journal segment %s: %d bytes after the last whole record ignored (a torn tail or an earlier use of the file)",
                path.name,
                size - offset,
            )


class SpoolJournal:
    """The append-only journal in ``directory`` (see the module docstring).

    Segments found when it opens are the ones a crash left: :meth:`replay` reads them,
    :meth:`forget_replayed` deletes them once what they hold is durable elsewhere. New
    records go to a new segment.

    Attributes
    ----------
    records : int
        Records appended since the journal opened.
    flushes : int
        ``fdatasync`` calls of the group commit since the journal opened (``flushes / records``
        is the device flushes per acknowledged instance).
    segment_bytes : int
        Size (bytes) past which the checkpointer closes the current segment.
    max_age_s : float
        Seconds after which the checkpointer closes a segment holding records.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20, max_age_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_age_s = max_age_s
        self.records = 0
        self.flushes = 0
        make_directories(self.directory, durable=True)
        # a spare left by a crash is not reused: its old records' numbers are not known to be below the next one
        (self.directory / _SPARE).unlink(missing_ok=True)
        numbers = sorted(int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._left_by_crash = [_segment_path(self.directory, n) for n in numbers]
        self._append_lock = threading.Lock()  # one writer of the current segment at a time
        self._state = threading.Condition()  # sequences, flush under way, unsettled records
        self._appended = 0  # sequence of the last record written whole
        self._durable = 0  # sequence of the last record a finished flush covered
        self._flushing = False
        self._failed: OSError | None = None
        self._dirty: dict[int, _Segment] = {}  # segments written since the last flush
        self._segments: dict[int, _Segment] = {}  # open segments (the current one and those being checkpointed)
        self._current = self._open_segment((numbers[-1] if numbers else 0) + 1)
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync: Callable[[], None] | None = None

    # ------------------------------------------------------------------ segments
    def _open_segment(self, number: int) -> _Segment:
        """Segment ``number``: the spare renamed when there is one, else a new empty file."""
        path = _segment_path(self.directory, number)
        spare = self.directory / _SPARE
        try:
            os.rename(spare, path)
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        fsync_directory(self.directory)  # the segment's name is durable before any record counts on it
        segment = _Segment(number, path, fd)
        with self._state:
            self._segments[number] = segment
        return segment

    # ------------------------------------------------------------------ appending and group commit
    def append(self, meta: Mapping[str, Any], parts: Sequence[Part]) -> JournalTicket:
        """Append one record (``meta``: a JSON object; data: ``parts`` one after the other).

        Returns at once, before the record is durable (:meth:`wait_durable`). The record keeps
        its segment from being checkpointed until :meth:`settled` is called with its ticket.
        """
        meta_raw = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
        if len(meta_raw) > _MAX_META_BYTES:
            raise ValueError(f"journal meta of {len(meta_raw)} bytes, more than {_MAX_META_BYTES}")
        data_bytes = sum(part_size(p) for p in parts)
        meta_crc, data_crc = zlib.crc32(meta_raw), crc32_of_parts(parts)
        with self._append_lock:
            self._raise_if_failed()
            segment = self._current
            fields = _FIELDS.pack(_MAGIC, segment.number, len(meta_raw), data_bytes, meta_crc, data_crc)
            head = fields + struct.pack("<I", zlib.crc32(fields)) + meta_raw
            try:
                append_parts(segment.fd, [head, *parts])
            except BaseException:
                # a partial record would hide every later one of this segment: cut it off
                os.ftruncate(segment.fd, segment.size_bytes)
                os.lseek(segment.fd, segment.size_bytes, os.SEEK_SET)
                raise
            segment.size_bytes += len(head) + data_bytes
            with self._state:
                self._appended += 1
                self.records += 1
                segment.records += 1
                segment.last_sequence = self._appended
                segment.unsettled += 1
                self._dirty[segment.number] = segment
                return JournalTicket(self._appended, segment.number)

    def settled(self, ticket: JournalTicket) -> None:
        """The instance of ``ticket``'s record is laid out in the spool tree and recorded in the
        ledger (or never will be: its handler failed): its segment may be checkpointed."""
        with self._state:
            segment = self._segments.get(ticket.segment)
            if segment is not None:
                segment.unsettled -= 1
                self._state.notify_all()

    def last_ticket(self) -> JournalTicket:
        """A ticket covering every record appended so far (for an instance already in the spool)."""
        with self._state:
            return JournalTicket(self._appended, self._current.number)

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise JournalError(f"the spool journal could not be flushed: {self._failed.strerror or self._failed}")

    def wait_durable(self, ticket: JournalTicket) -> None:
        """Return once a flush covers the record of ``ticket`` (joining or leading a group commit).

        Raises :class:`JournalError` when a flush failed (then no later record is acknowledged).
        """
        with self._state:
            while self._durable < ticket.sequence:
                self._raise_if_failed()
                if self._flushing:
                    self._state.wait()
                    continue
                self._flushing = True
                covered = self._appended
                segments = list(self._dirty.values())
                self._dirty.clear()
                self._state.release()
                try:
                    for segment in segments:
                        os.fdatasync(segment.fd)
                except OSError as exc:
                    self._failed = exc  # after a failed fsync the page cache cannot be trusted: stop acknowledging
                    _log.critical("fdatasync of the spool journal failed (%s): no instance is acknowledged until a restart", exc)
                finally:
                    self._state.acquire()
                    self._flushing = False
                    self._state.notify_all()
                if self._failed is None:
                    self.flushes += 1
                    self._durable = max(self._durable, covered)
            self._raise_if_failed()

    # ------------------------------------------------------------------ checkpoints
    def start(self, sync: Callable[[], None], interval_s: float = 0.5) -> None:
        """Start the checkpointer thread: every ``interval_s`` s it checkpoints a segment that is
        full or older than :attr:`max_age_s`; ``sync()`` makes the laid-out spool files durable."""
        self._sync = sync
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(interval_s,), name="spool-journal-checkpointer", daemon=True)
            self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            segment = self._current
            if segment.records and (segment.size_bytes >= self.segment_bytes or time.monotonic() - segment.opened_at >= self.max_age_s):
                try:
                    self.checkpoint()
                except Exception:
                    _log.exception("spool journal checkpoint failed; the segment is kept and tried again")

    def checkpoint(self) -> int:
        """Close the current segment (when it holds records) and retire every closed one (kept as
        the spare or deleted) once its records are settled and ``sync()`` made the spool durable;
        returns how many were retired."""
        if self._sync is None:
            raise RuntimeError("checkpoint before start(sync)")
        with self._checkpoint_lock:
            if self._current.records:
                fresh = self._open_segment(self._current.number + 1)
                with self._append_lock:
                    self._current, closed = fresh, self._current
                fresh.opened_at = time.monotonic()
                _log.debug("spool journal segment %s closed with %d records", closed.path.name, closed.records)
            with self._state:
                closed_segments = [s for n, s in sorted(self._segments.items()) if n != self._current.number]
            if not closed_segments:
                return 0
            self.wait_durable(JournalTicket(max(s.last_sequence for s in closed_segments), closed_segments[-1].number))
            with self._state:
                self._state.wait_for(lambda: all(s.unsettled <= 0 for s in closed_segments))
            self._sync()
            for segment in closed_segments:
                with self._state:
                    del self._segments[segment.number]
                os.close(segment.fd)
                self._retire(segment.path)
            return len(closed_segments)

    def _retire(self, path: Path) -> None:
        """A checkpointed segment becomes the spare when there is none (the rename made durable,
        so that its records are not replayed after a power loss), else it is deleted."""
        spare = self.directory / _SPARE
        if spare.exists():
            path.unlink(missing_ok=True)
            return
        os.rename(path, spare)
        fsync_directory(self.directory)

    def close(self) -> None:
        """Stop the checkpointer, checkpoint what is left (when started) and close the current segment."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sync is not None and self._failed is None:
            self.checkpoint()
        with self._state:
            segments = list(self._segments.values())
            self._segments.clear()
        for segment in segments:
            os.close(segment.fd)
            if not segment.records:
                segment.path.unlink(missing_ok=True)
        (self.directory / _SPARE).unlink(missing_ok=True)

    # ------------------------------------------------------------------ recovery
    def replay(self) -> Iterator[JournalRecord]:
        """The whole records of the segments a crash left, oldest first."""
        for path in self._left_by_crash:
            yield from read_segment(path)

    def forget_replayed(self) -> int:
        """Delete the segments a crash left (call once their records are durable elsewhere); how many."""
        for path in self._left_by_crash:
            path.unlink(missing_ok=True)
        count = len(self._left_by_crash)
        self._left_by_crash = []
        return count
