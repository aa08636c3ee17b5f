"""Receiving a C-STORE data set within bounds: on disk as it arrives, inflated within a limit,
its encoding checked before it is parsed, and the memory of parsing budgeted across associations.

The storage service (:mod:`node.dicom.storage`) uses four pieces:

* :class:`Receiver`: pynetdicom's chunked receive (``_config.STORE_RECV_CHUNKED_DATASET``)
  writes each C-STORE data set to a :class:`ReceivedFile` in the spool's incoming folder
  as its P-DATA fragments arrive, so memory holds one PDU at a time, never the instance.
  Bytes beyond the size limit are counted and dropped (the file stops growing), so an
  oversized instance costs neither memory nor disk, and the sender still gets a status.
* :func:`inflate_bounded`: Deflated Explicit VR Little Endian is inflated from file to
  file in chunks of :data:`INFLATE_CHUNK_BYTES`, stopping as soon as the output passes
  the limit (a deflate bomb costs the limit in disk, briefly, and a few MiB of memory).
* :func:`scan_structure`: the data set's element and item headers are walked without
  reading values and without recursion: every length must fit in its container, every
  sequence and item must be closed, nesting is limited to :data:`MAX_SEQUENCE_DEPTH`,
  and the memory pydicom will need to parse it is estimated (:class:`Structure`);
  the walk stops as soon as that estimate passes the allowed maximum.
* :class:`MemoryBudget`: the estimates of the instances being parsed at once, across
  all associations, stay within ``max_inflight_mb``; an instance waits for its share.

Problems of the sender's data raise :class:`DataSetProblem`; data beyond a configured
limit raises :class:`LimitExceeded`; a budget that stays full raises :class:`BudgetBusy`.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.datadict import dictionary_VR
from pynetdicom import _config, dimse_messages

__all__ = [
    "DEFER_BYTES",
    "INFLATE_CHUNK_BYTES",
    "MAX_SEQUENCE_DEPTH",
    "BudgetBusy",
    "DataSetProblem",
    "LimitExceeded",
    "MemoryBudget",
    "ReceivedFile",
    "Receiver",
    "Structure",
    "data_set_offset",
    "inflate_bounded",
    "scan_structure",
]

_log = logging.getLogger("cardionode.scp")

MiB = 2**20
#: values larger than this (bytes) at the top level of a data set are left on disk by the parser
DEFER_BYTES = 64 * 1024
#: inflation works in chunks of this many bytes (input read and output produced per step)
INFLATE_CHUNK_BYTES = 1 * MiB
#: deepest sequence nesting accepted (TID 1500 reports nest about 6 deep; pydicom recurses per level)
MAX_SEQUENCE_DEPTH = 64
#: memory pydicom 3 needs per parsed element and per sequence item, in bytes, besides the value
#: itself (measured with tracemalloc: about 350 and 670; rounded up for the interpreter's overhead)
ELEMENT_COST = 512
ITEM_COST = 1024
#: memory of one instance besides its parse (copy and inflate buffers, the parsed request), bytes
BASE_COST = 2 * MiB

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})


class DataSetProblem(ValueError):
    """The data set is not a well-formed encoding (the sender's problem: 0xC000 cannot understand)."""


class LimitExceeded(Exception):
    """The data set is larger (as received, inflated, or to parse) than a configured limit allows."""


class BudgetBusy(Exception):
    """The in-flight memory budget stayed full for the whole wait (the node's own limit: transient)."""


# --------------------------------------------------------------------------- receiving to disk
class ReceivedFile:
    """The file pynetdicom writes one C-STORE data set to, as its fragments arrive.

    pynetdicom (chunked receive) writes the 128-byte preamble, ``DICM`` and its own File
    Meta Information, then every data set fragment, calls ``file.flush()`` after each,
    and ``close()`` and unlinks ``name`` after the C-STORE handler returned. Bytes are
    written to disk up to ``limit_bytes`` in all; beyond that they are counted in
    ``received_bytes`` and dropped (``overflow``). A write error is kept in ``error``
    (the handler answers it) instead of ending the association in pynetdicom's thread.
    """

    def __init__(self, path: Path, limit_bytes: int) -> None:
        self.path = path
        self.name = str(path)
        self.limit_bytes = limit_bytes
        self.received_bytes = 0
        self.overflow = False
        self.error: OSError | None = None
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)

    @property
    def file(self) -> ReceivedFile:
        """pynetdicom flushes ``file`` after each fragment; writes here are unbuffered."""
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        self.received_bytes += size
        if self.overflow or self.error is not None or self._fd is None:
            return size
        if self.received_bytes > self.limit_bytes:
            self.overflow = True  # the instance will be refused: keep no more of it
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                self.error = exc
            return size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.error = exc
        return size

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Close and delete the file."""
        self.close()
        self.path.unlink(missing_ok=True)


class Receiver:
    """Routes pynetdicom's chunked receive of the associations ``claims(assoc)`` accepts to
    :class:`ReceivedFile` objects in ``directory``, each kept to ``limit_bytes``.

    :meth:`install` switches pynetdicom to chunked receive (a process-wide setting) and
    puts the router in place of the ``NamedTemporaryFile`` pynetdicom opens per C-STORE
    data set; associations no receiver claims (another AE in the process) get pynetdicom's
    ordinary temporary file. :meth:`take` hands the handler the file of its event;
    :meth:`discard` deletes what an association left half received when it closes.
    """

    _receivers: weakref.WeakSet[Receiver] = weakref.WeakSet()
    _lock = threading.Lock()

    def __init__(self, directory: Path, limit_bytes: int, claims: Callable[[Any], bool]) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.claims = claims
        self._files: dict[str, tuple[ReceivedFile, int]] = {}  # name -> (file, id of its association)
        self._files_lock = threading.Lock()

    def install(self) -> None:
        """Route chunked receives of claimed associations here (idempotent)."""
        with Receiver._lock:
            Receiver._receivers.add(self)
            _config.STORE_RECV_CHUNKED_DATASET = True
            if not isinstance(getattr(dimse_messages, "NamedTemporaryFile", None), _Router):
                if not hasattr(dimse_messages, "NamedTemporaryFile"):
                    _log.warning(
                        "this pynetdicom has no dimse_messages.NamedTemporaryFile: received data sets go to its own "
                        "temporary files, without the max_instance_mb bound while they arrive"
                    )
                    return
                dimse_messages.NamedTemporaryFile = _Router(dimse_messages.NamedTemporaryFile)

    @classmethod
    def _open_for(cls, assoc: Any) -> ReceivedFile | None:
        with cls._lock:
            receivers = list(cls._receivers)
        for receiver in receivers:
            if assoc is not None and receiver.claims(assoc):
                return receiver._open(assoc)
        return None

    def _open(self, assoc: Any) -> ReceivedFile:
        path = self.directory / f"{secrets.token_hex(8)}.received"
        received = ReceivedFile(path, self.limit_bytes)
        with self._files_lock:
            self._files[received.name] = (received, id(assoc))
        return received

    def take(self, path: Path | str) -> ReceivedFile | None:
        """The :class:`ReceivedFile` written at ``path`` (the event's ``dataset_path``), now the
        caller's; None when pynetdicom wrote it itself."""
        with self._files_lock:
            entry = self._files.pop(str(path), None)
        return entry[0] if entry is not None else None

    def discard(self, assoc: Any) -> int:
        """Delete the files of ``assoc`` that no handler took (its connection closed mid-transfer);
        returns how many."""
        with self._files_lock:
            left = [name for name, (_, owner) in self._files.items() if owner == id(assoc)]
            files = [self._files.pop(name)[0] for name in left]
        for received in files:
            received.remove()
        return len(files)


class _Router:
    """Stands in for ``tempfile.NamedTemporaryFile`` in ``pynetdicom.dimse_messages``."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assoc = getattr(threading.current_thread(), "assoc", None)  # pynetdicom decodes in the DUL thread
        try:
            received = Receiver._open_for(assoc)
        except OSError:  # e.g. the spool's file system is full: the handler will answer 0xA700
            _log.exception("cannot open a file in the spool's incoming folder; using a temporary file")
            received = None
        return received if received is not None else self.original(*args, **kwargs)


def data_set_offset(fp: BinaryIO) -> int:
    """Where the data set starts in a Part 10 file (after preamble, ``DICM`` and File Meta), bytes."""
    fp.seek(0)
    head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise DataSetProblem("the received file has no File Meta Information group length")
    (group_length,) = struct.unpack("<I", head[140:144])
    return 144 + group_length


# --------------------------------------------------------------------------- inflating
def inflate_bounded(source: BinaryIO, offset: int, target: BinaryIO, limit_bytes: int) -> int:
    """Inflate the raw deflate stream in ``source`` from ``offset`` into ``target``; bytes written.

    Works in chunks of :data:`INFLATE_CHUNK_BYTES` (never more output at once), raises
    :class:`LimitExceeded` as soon as the output passes ``limit_bytes`` and
    :class:`DataSetProblem` for a corrupt or truncated stream. Bytes after the end of the
    stream (PS3.5 A.5 allows a padding byte) are ignored.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    source.seek(offset)
    written = 0

    def emit(chunk: bytes) -> None:
        nonlocal written
        written += len(chunk)
        if written > limit_bytes:
            raise LimitExceeded(f"inflates to more than {limit_bytes / MiB:.0f} MiB")
        target.write(chunk)

    try:
        while not inflater.eof:
            data = source.read(INFLATE_CHUNK_BYTES)
            if not data:
                break
            emit(inflater.decompress(data, INFLATE_CHUNK_BYTES))
            while inflater.unconsumed_tail and not inflater.eof:
                emit(inflater.decompress(inflater.unconsumed_tail, INFLATE_CHUNK_BYTES))
    except zlib.error as exc:
        raise DataSetProblem(f"the deflated data set is corrupt ({exc})") from None
    if not inflater.eof:
        raise DataSetProblem(f"the deflated data set is truncated (stream not finished after {written} bytes)")
    return written


# --------------------------------------------------------------------------- structure
@dataclass
class Structure:
    """What :func:`scan_structure` found: counts, nesting, and where the bytes are."""

    elements: int = 0
    items: int = 0
    depth: int = 0  # deepest sequence nesting
    resident_bytes: int = 0  # values the parser may hold in memory
    bulk_bytes: int = 0  # top-level values above DEFER_BYTES, left on disk

    @property
    def parse_memory_bytes(self) -> int:
        """Estimated memory pydicom needs to parse the data set (bulk values deferred), bytes."""
        return self.elements * ELEMENT_COST + self.items * ITEM_COST + self.resident_bytes


_WORDS = {"dataset": "data set", "sequence": "sequence", "item": "item", "fragments": "encapsulated value"}


@dataclass
class _Frame:
    kind: str  # "dataset", "sequence", "item" or "fragments"
    end: int | None  # offset just after it; None: undefined length (closed by a delimiter)
    bound: int  # offset it cannot pass (its own end or the nearest defined end around it)
    implicit: bool
    little: bool
    sequences: int = 0  # sequence frames around and including this one


def _sequence_vr(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def scan_structure(
    fp: BinaryIO, start: int, end: int, implicit_vr: bool, little_endian: bool, memory_limit_bytes: int
) -> Structure:
    """Walk the element and item headers of the data set in ``fp`` between ``start`` and ``end``.

    Reads headers only, skips values, keeps its own stack (no recursion). Raises
    :class:`DataSetProblem` when a length passes the end of its container or of the data,
    a sequence or item of undefined length is not closed, an item or delimiter appears
    where none may, or sequences nest deeper than :data:`MAX_SEQUENCE_DEPTH`; raises
    :class:`LimitExceeded` as soon as :attr:`Structure.parse_memory_bytes` passes
    ``memory_limit_bytes``. Sequences are recognised as pydicom recognises them (VR SQ,
    undefined-length UN, the data dictionary in implicit VR), so that what passes here is
    what pydicom will parse.
    """
    out = Structure()
    stack = [_Frame("dataset", end, end, implicit_vr, little_endian)]
    fp.seek(start)
    pos = start
    read = fp.read

    def problem(text: str) -> DataSetProblem:
        return DataSetProblem(f"{text} (at byte {pos - start} of the data set)")

    def push(kind: str, length: int, at: int, implicit: bool, little: bool) -> None:
        parent = stack[-1]
        sequences = parent.sequences + (kind == "sequence")
        if sequences > MAX_SEQUENCE_DEPTH:
            raise problem(f"sequences nest deeper than {MAX_SEQUENCE_DEPTH} levels")
        out.depth = max(out.depth, sequences)
        if length == _UNDEFINED:
            stack.append(_Frame(kind, None, parent.bound, implicit, little, sequences))
        else:
            stack.append(_Frame(kind, at + length, at + length, implicit, little, sequences))

    while True:
        frame = stack[-1]
        if frame.end is not None and pos >= frame.end:
            if pos > frame.end:
                raise problem(f"contents overrun the {_WORDS[frame.kind]} they are in by {pos - frame.end} bytes")
            if frame.kind == "dataset":
                return out
            stack.pop()
            continue
        if pos + 8 > frame.bound:
            if frame.end is None and pos == frame.bound:
                raise problem(f"{_WORDS[frame.kind]} of undefined length not closed before the data ends")
            raise problem(f"the data ends inside an element header ({frame.bound - pos} of 8 bytes)")
        header = read(8)
        if len(header) < 8:
            raise problem("the data ends inside an element header")
        endian = "<" if frame.little else ">"
        group, elem = struct.unpack(f"{endian}HH", header[:4])
        tag = group << 16 | elem
        if frame.kind in ("sequence", "fragments"):
            (length,) = struct.unpack(f"{endian}I", header[4:])
            pos += 8
            if tag == _SEQUENCE_END:  # in a sequence of defined length pydicom stops there too
                if frame.end is not None:
                    pos = frame.end
                    fp.seek(pos)
                stack.pop()
                continue
            if tag != _ITEM:
                raise problem(f"({group:04X},{elem:04X}) where a {_WORDS[frame.kind]} needs an item or its delimiter")
            if length != _UNDEFINED and pos + length > frame.bound:
                raise problem(f"an item claims {length} bytes but only {frame.bound - pos} remain")
            if frame.kind == "fragments":
                if length == _UNDEFINED:
                    raise problem("an encapsulated fragment of undefined length")
                if frame.sequences == 0 and length > DEFER_BYTES:
                    out.bulk_bytes += length
                else:
                    out.resident_bytes += length
                pos += length
                fp.seek(pos)
                continue
            out.items += 1
            push("item", length, pos, frame.implicit, frame.little)
        else:
            if tag == _ITEM_END:
                if frame.kind == "item" and frame.end is None:
                    pos += 8
                    stack.pop()
                    continue
                raise problem("an item delimiter outside an item of undefined length")
            if group == 0xFFFE:
                raise problem(f"item tag ({group:04X},{elem:04X}) outside a sequence")
            vr: bytes | None
            if frame.implicit:
                vr = None
                (length,) = struct.unpack(f"{endian}I", header[4:])
                pos += 8
            else:
                vr = header[4:6]
                if vr in _LONG_VRS:
                    extra = read(4)
                    if len(extra) < 4 or pos + 12 > frame.bound:
                        raise problem("the data ends inside an element header")
                    (length,) = struct.unpack(f"{endian}I", extra)
                    pos += 12
                elif b"AA" <= vr <= b"ZZ":
                    (length,) = struct.unpack(f"{endian}H", header[6:])
                    pos += 8
                else:  # pydicom reads an element without a VR as implicit VR
                    vr = None
                    (length,) = struct.unpack(f"{endian}I", header[4:])
                    pos += 8
            out.elements += 1
            if length == _UNDEFINED:
                if vr in (b"SQ", b"UN") or (vr is None and _sequence_vr(tag)):
                    push("sequence", length, pos, frame.implicit, frame.little)
                elif vr is None and not _known(tag) and _peek_item(fp, frame.little):
                    push("sequence", length, pos, frame.implicit, frame.little)
                else:
                    push("fragments", length, pos, frame.implicit, frame.little)
            else:
                if pos + length > frame.bound:
                    raise problem(f"element ({group:04X},{elem:04X}) claims {length} bytes but only {frame.bound - pos} remain")
                if vr == b"SQ" or (vr is None and _sequence_vr(tag)):
                    push("sequence", length, pos, frame.implicit, frame.little)
                elif vr == b"UN" and _sequence_vr(tag):  # pydicom reads it as an implicit VR LE sequence
                    push("sequence", length, pos, True, True)
                else:
                    if frame.sequences == 0 and length > DEFER_BYTES:
                        out.bulk_bytes += length
                    else:
                        out.resident_bytes += length
                    pos += length
                    fp.seek(pos)
        if out.parse_memory_bytes > memory_limit_bytes:
            raise LimitExceeded(
                f"needs more than {memory_limit_bytes / MiB:.0f} MiB to parse "
                f"({out.elements} elements, {out.items} items so far)"
            )


def _peek_item(fp: BinaryIO, little: bool) -> bool:
    here = fp.tell()
    head = fp.read(4)
    fp.seek(here)
    return len(head) == 4 and struct.unpack("<HH" if little else ">HH", head) == (0xFFFE, 0xE000)


# --------------------------------------------------------------------------- memory budget
class MemoryBudget:
    """Bytes of memory the instances being parsed at once, across associations, may use.

    :meth:`reserve` waits until the share fits (first come, first served among those that
    fit), raising :class:`BudgetBusy` after ``timeout_s`` and :class:`LimitExceeded` at once
    for a share larger than the whole budget.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._used = 0
        self._peak = 0
        self._changed = threading.Condition()

    @property
    def used_bytes(self) -> int:
        """Bytes reserved now."""
        with self._changed:
            return self._used

    @property
    def peak_bytes(self) -> int:
        """Most bytes reserved at once since the start."""
        with self._changed:
            return self._peak

    @contextmanager
    def reserve(self, nbytes: int, timeout_s: float) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block."""
        if nbytes > self.capacity_bytes:
            raise LimitExceeded(f"needs about {nbytes / MiB:.0f} MiB to parse, more than the whole budget")
        with self._changed:
            if not self._changed.wait_for(lambda: self._used + nbytes <= self.capacity_bytes, timeout_s):
                raise BudgetBusy(
                    f"{self._used / MiB:.0f} of {self.capacity_bytes / MiB:.0f} MiB in use by other instances "
                    f"for {timeout_s:g} s"
                )
            self._used += nbytes
            self._peak = max(self._peak, self._used)
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()

