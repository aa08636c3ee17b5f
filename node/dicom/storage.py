"""The Storage SCP service: C-STORE validation, spooling, recording and rejections.

One path stores an instance whatever its transport: the C-STORE handler and
:meth:`StorageService.store_file` (used by DICOMweb STOW-RS, :mod:`node.web.stow`, with a Part 10
file per instance) both run ``StorageService._store_offer``, so that both get the same checks, statuses, durability, rejection records, metrics (``source`` ``dimse`` or
``stowrs``) and ``on_instance_stored`` callback; STOW-RS answers each instance's failure with
the DIMSE status below as its Failure Reason.

All storage SOP classes are negotiated so that the node can answer every
instance with a precise status; instances of classes outside
:data:`STORAGE_SOP_CLASSES` are answered 0x0122 (SOP class not supported).

An instance is answered Success (0x0000) only after its bytes and its ledger record are
durable, and it is readable in the spool and recorded in the ledger. With ``durable_writes``
and ``ingest_journal`` (the default) the durable copy is a record of the spool journal
(:mod:`node.dicom.journal`): the record (ledger record and file bytes) is appended, the file
is laid out in the spool without fsync, the handler waits for the group commit that covers
the record (one ``fdatasync`` shared by every association waiting at that moment), then
records the instance in the ledger (one transaction for the instances of all associations
waiting at that moment, :class:`GroupRecorder`) and answers. The ledger row is written only after the
file is in the spool tree, so whatever sees the row (the assembler, a worker) can read the
file. An instance over :data:`JOURNAL_MAX_INSTANCE_BYTES` is spooled as without the journal
(the file and its directory fsync'ed, then the ledger commit). When the listener starts, the
journal segments a crash left are replayed (:meth:`StorageService.prepare`). With
``ingest_journal`` off, every instance takes that second path; with ``durable_writes`` off,
nothing is fsync'ed. Failures:

* 0xA700 out of resources: the node's own resources only: the disk is below the
  watermark, writing failed, or the in-flight memory budget stayed full
  (``max_inflight_mb``, waited ``inflight_wait_s``);
* 0xA900 data set does not match SOP class: SOP Class UID differs from the
  request, an image without Pixel Data, Pixel Data shorter than its header says;
* 0xC000 cannot understand: the data set cannot be parsed or read (truncated,
  lengths past the data, unclosed or too deep sequences, values that do not decode);
* 0xC001 cannot understand: a UID is missing or invalid (it would name a file);
* 0xC002 cannot understand: the data set is larger than this node accepts: over
  ``max_instance_mb`` as received or once inflated, or more than
  ``max_inflight_mb`` of memory to parse;
* 0x0122 SOP class not supported;
* 0xC122 (STOW-RS only) the File Meta names a transfer syntax outside :data:`TRANSFER_SYNTAXES`.

Whatever is wrong with the sender's data is 0xA9xx or 0xCxxx (permanent: a
sender does not retry it), never 0xA700 (transient: retried).

Memory stays bounded whatever arrives (:mod:`node.dicom.intake`): the data set
goes to a file in the spool's incoming folder as it arrives (bytes past
``max_instance_mb`` are dropped), a deflated one is inflated file to file
within ``max_instance_mb``, its encoding is walked before pydicom parses it,
pydicom leaves values over 64 KiB on disk, and the parse waits for its share
of ``max_inflight_mb``. The spool file is written from the received file (the
kernel copies it), so no copy of the instance is ever held in memory.

Each failure response carries an Error Comment and is recorded as a rejection.
The service is offered by :class:`node.dicom.scp.DicomListener` beside
Verification (see :mod:`node.dicom.services`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext

from node.config import Settings
from node.dicom.audit import AuditLog
from node.dicom.intake import (
    BASE_COST,
    DEFER_BYTES,
    BudgetBusy,
    LimitExceeded,
    MemoryBudget,
    Receiver,
    data_set_offset,
    inflate_bounded,
    scan_structure,
)
from node.dicom.journal import JOURNAL_DIR, JournalTicket, SpoolJournal
from node.dicom.logs import hash_identifier, redact
from node.dicom.services import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Peer, Peers, audit_quietly
from node.dicom.spool import FileRange, Part, Spool, StoredFile, append_parts, part_size, write_parts_atomic
from node.ledger import InstanceMeta, Ledger, utcnow
from node.telemetry import INSTANCES_RECEIVED, INSTANCES_REFUSED, RECEIVED_BYTES, dimse_status_label
from node.uids import is_valid_uid

__all__ = [
    "JOURNAL_MAX_INSTANCE_BYTES",
    "SOURCE_DIMSE",
    "SOURCE_STOWRS",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "Describe",
    "GroupRecorder",
    "Status",
    "StorageService",
    "StoreOutcome",
    "StoreRefusedError",
    "disk_space_problem",
    "recover_unrecorded_instances",
]

_log = logging.getLogger("cardionode.scp")

#: the transports an instance arrives by (the ``source`` label of the ingest metrics)
SOURCE_DIMSE = "dimse"
SOURCE_STOWRS = "stowrs"

#: routing attributes of a stored instance (JSON values), given to the ledger with it
Describe = Callable[[Dataset], Mapping[str, Any]]

#: SOP classes stored by the node (UID -> name)
STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
}
#: SOP classes whose instances carry no Pixel Data
_NON_IMAGE_CLASSES = frozenset(uid for uid, name in STORAGE_SOP_CLASSES.items() if " SR " in name or "PDF" in name)

#: transfer syntaxes accepted (UID -> name)
TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (retired)",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction (Process 14 SV1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MiB = 2**20
#: instances larger than this (bytes, as spooled) bypass the spool journal (file and directory fsync'ed)
JOURNAL_MAX_INSTANCE_BYTES = 16 * _MiB
#: bytes pynetdicom's File Meta may take ahead of the data set in a received file (UIDs are at most 64 characters)
_META_ALLOWANCE = 64 * 1024
_PIXEL_TAGS = {"PixelData": 0x7FE00010, "FloatPixelData": 0x7FE00008, "DoubleFloatPixelData": 0x7FE00009}
_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})


class Status:
    """DIMSE status codes the C-STORE SCP answers with (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001
    TOO_LARGE = 0xC002
    #: STOW-RS only (C-STORE negotiates the transfer syntax): PS3.18 Failure Reason "Referenced
    #: Transfer Syntax not supported", in the 0xCxxx "cannot understand" range
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


class StoreRefusedError(Exception):
    """An instance the node will not store; ``status`` is the DIMSE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def disk_space_problem(data_dir: Path, watermark_mb: float) -> str | None:
    """A reason when the free space of the file system holding ``data_dir`` is below
    ``watermark_mb`` MiB, else None."""
    free = shutil.disk_usage(data_dir).free / 2**20
    if free < watermark_mb:
        return f"free disk space in {data_dir} is {free:.0f} MiB, below the watermark of {watermark_mb:.0f} MiB"
    return None


def _failure(status: int, reason: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = reason[:64]  # LO
    return rsp


def _required_uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        raise StoreRefusedError(Status.INVALID_UID, f"{keyword} {tag} is missing")
    value = str(value).rstrip("\x00 ")
    if not is_valid_uid(value):
        raise StoreRefusedError(Status.INVALID_UID, f"{keyword} {tag} is not a valid UID")
    return value


def _value_length(ds: Dataset, tag: int) -> int:
    """Bytes in the value of ``tag`` without reading a value pydicom left on disk."""
    elem = ds.get_item(tag, keep_deferred=True)
    value = elem.value if elem is not None else None
    if isinstance(value, bytes | bytearray):
        return len(value)
    if value is None and isinstance(elem, RawDataElement) and elem.length != 0xFFFFFFFF:
        return int(elem.length)  # deferred: the structure walk checked that all of it arrived
    return 0


def _pixel_data_problem(ds: Dataset, transfer_syntax: UID) -> str | None:
    """Why the pixel data cannot be right, for image SOP classes; None if it may be."""
    keyword = next((k for k in _PIXEL_TAGS if k in ds), None)
    if keyword is None:
        return "image SOP class without Pixel Data (7FE0,0010)"
    if str(transfer_syntax) not in _NATIVE_SYNTAXES or keyword != "PixelData":
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return "Rows, Columns or Bits Allocated missing or not a number"
    expected = (rows * cols * frames * samples * bits + 7) // 8  # bytes; 1-bit images are packed
    actual = _value_length(ds, _PIXEL_TAGS["PixelData"])
    if actual < expected:
        return f"Pixel Data has {actual} bytes; {rows}x{cols}x{frames} frames x {samples} x {bits} bits need {expected}"
    return None


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one instance offered to :meth:`StorageService.store_file` (no patient data).

    ``status`` is the DIMSE status a C-STORE of it is answered with (:class:`Status`):
    Success for a new instance and for a duplicate (``new`` False), else the failure and its
    ``reason``. The UIDs are the data set's once it was read, else those offered (possibly
    empty or invalid on a failure).
    """

    status: int
    reason: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    new: bool

    @property
    def stored(self) -> bool:
        """The instance is in the spool and the ledger (new or a duplicate)."""
        return self.status == Status.SUCCESS


@dataclass(frozen=True)
class _Offer:
    """One instance as its sender presents it, before its data set is read."""

    sop_class: str
    sop_instance: str
    transfer_syntax: UID
    source: str  # SOURCE_DIMSE | SOURCE_STOWRS
    peer: Peer
    claimed_by: str  # what named the UIDs: "request" (C-STORE) | "File Meta" (a Part 10 file)
    study: str | None = None  # the study the instance must belong to (STOW-RS /studies/{study})

    @property
    def instance_uid_name(self) -> str:
        """How the sender's SOP Instance UID is named in a refusal."""
        return "Affected SOP Instance UID" if self.claimed_by == "request" else "Media Storage SOP Instance UID (0002,0003)"


def _offer_uids(offer: _Offer) -> dict[str, str]:
    """The UIDs of an offer as the ledger's rejection record takes them (completed with the study once read)."""
    return {"sop_class_uid": offer.sop_class, "sop_instance_uid": offer.sop_instance}


@dataclass(frozen=True)
class _Part10Head:
    """The File Meta of a Part 10 file: where the data set is (bytes) and what it claims."""

    offset: int
    length: int
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    preamble: bool  # False: the file starts with "DICM"


_META_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})


def _read_part10_meta(path: Path) -> _Part10Head:
    """Read the File Meta Information of the Part 10 file at ``path`` within :data:`_META_ALLOWANCE` bytes.

    The 128-byte preamble may be missing (the file then starts with ``DICM``). Group 0002 is
    walked element by element (Explicit VR Little Endian, PS3.10 7.1) without trusting its
    group length; the data set starts at the first element of another group. Refuses 0xC000
    what is not a Part 10 file, 0xC001 a File Meta without its SOP Class or Instance UID, and
    0xA700 a file the node cannot read.
    """
    try:
        with open(path, "rb") as fp:
            head = fp.read(132 + _META_ALLOWANCE)
            size = fp.seek(0, 2)
    except OSError as exc:  # the node's own file: its trouble, not the sender's
        raise StoreRefusedError(Status.OUT_OF_RESOURCES, f"cannot read the received file: {exc.strerror or exc}") from None
    if head[128:132] == b"DICM":
        pos = 132
    elif head[:4] == b"DICM":
        pos = 4
    else:
        raise StoreRefusedError(Status.CANNOT_UNDERSTAND, "not a DICOM Part 10 file: no DICM prefix")
    values: dict[int, bytes] = {}
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if not (vr.isalpha() and vr.isupper()):
            raise StoreRefusedError(Status.CANNOT_UNDERSTAND, "File Meta Information is not Explicit VR Little Endian")
        long_vr = vr in _META_LONG_VRS
        start = pos + (12 if long_vr else 8)
        length = struct.unpack_from("<I", head, pos + 8)[0] if long_vr and start <= len(head) else 0
        if not long_vr:
            (length,) = struct.unpack_from("<H", head, pos + 6)
        if start + length > len(head):
            what = "truncated" if len(head) == size else f"longer than {_META_ALLOWANCE} bytes"
            raise StoreRefusedError(Status.CANNOT_UNDERSTAND, f"File Meta Information {what}")
        values[element] = head[start : start + length]
        pos = start + length
    else:
        if len(head) < size:
            raise StoreRefusedError(Status.CANNOT_UNDERSTAND, f"File Meta Information longer than {_META_ALLOWANCE} bytes")

    def uid(element: int) -> str:
        return values.get(element, b"").decode("ascii", "replace").rstrip("\x00 ")

    transfer_syntax, sop_class, sop_instance = uid(0x0010), uid(0x0002), uid(0x0003)
    if not transfer_syntax:
        raise StoreRefusedError(Status.CANNOT_UNDERSTAND, "File Meta Information has no Transfer Syntax UID (0002,0010)")
    if not sop_class:
        raise StoreRefusedError(Status.INVALID_UID, "Media Storage SOP Class UID (0002,0002) is missing")
    if not sop_instance:
        raise StoreRefusedError(Status.INVALID_UID, "Media Storage SOP Instance UID (0002,0003) is missing")
    return _Part10Head(pos, size - pos, transfer_syntax, sop_class, sop_instance, head[128:132] == b"DICM")


@dataclass(frozen=True)
class _Checked:
    """What the checks of one received instance keep for spooling and the ledger (no data set)."""

    sop_class: str
    sop_instance: str
    study: str
    series: str
    routing: Mapping[str, Any]


def _instance_meta(
    checked: _Checked, path: Path, size_bytes: int, transfer_syntax: str, calling_ae: str, received_at: datetime
) -> InstanceMeta:
    """The ledger's view of a validated instance (UIDs, routing attributes; no patient data)."""
    return InstanceMeta(
        sop_instance_uid=checked.sop_instance,
        sop_class_uid=checked.sop_class,
        study_uid=checked.study,
        series_uid=checked.series,
        path=str(path),
        size_bytes=size_bytes,
        transfer_syntax_uid=transfer_syntax,
        routing=checked.routing,
        calling_ae=calling_ae,
        received_at=received_at,
    )


class _Pending:
    """One instance waiting for :class:`GroupRecorder` (its result, or the batch's error)."""

    __slots__ = ("meta", "done", "new", "error")

    def __init__(self, meta: InstanceMeta) -> None:
        self.meta = meta
        self.done = False
        self.new = False
        self.error: Exception | None = None


class GroupRecorder:
    """Records instances in the ledger in one transaction per group of concurrent callers.

    :meth:`record` returns once the caller's instance is committed, as
    :meth:`node.ledger.instances.InstanceStore.record` does; the first caller finding no
    transaction under way commits every instance waiting at that moment
    (:meth:`~node.ledger.instances.InstanceStore.record_many`), the others wait for it (the
    group commit of :mod:`node.dicom.journal`, applied to the ledger). An error of the
    transaction is raised to every caller of its group.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.transactions = 0
        self._waiting: list[_Pending] = []
        self._busy = False
        self._changed = threading.Condition()

    def record(self, meta: InstanceMeta) -> bool:
        """Record ``meta``; False if its SOP Instance UID was already recorded."""
        entry = _Pending(meta)
        with self._changed:
            self._waiting.append(entry)
            while not entry.done:
                if self._busy:
                    self._changed.wait()
                    continue
                self._busy = True
                group, self._waiting = self._waiting, []
                self._changed.release()
                error: Exception | None = None
                results: list[bool] = []
                try:
                    results = self.ledger.instances.record_many([e.meta for e in group])
                except Exception as exc:
                    error = exc
                finally:
                    self._changed.acquire()
                    self._busy = False
                self.transactions += 1
                for k, pending in enumerate(group):
                    pending.error = error
                    pending.new = results[k] if error is None else False
                    pending.done = True
                self._changed.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.new


def _journal_meta(meta: InstanceMeta) -> dict[str, Any]:
    """The JSON object a journal record keeps of ``meta`` (its path follows from the UIDs)."""
    return {
        "sop_instance_uid": meta.sop_instance_uid,
        "sop_class_uid": meta.sop_class_uid,
        "study_uid": meta.study_uid,
        "series_uid": meta.series_uid,
        "size_bytes": meta.size_bytes,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "routing": dict(meta.routing),
        "calling_ae": meta.calling_ae,
        "received_at": meta.received_at.isoformat() if meta.received_at else None,
    }


def _meta_from_journal(record: Mapping[str, Any], spool: Spool) -> InstanceMeta:
    """The :class:`InstanceMeta` of a journal record's JSON object (:func:`_journal_meta`)."""
    received_at = record.get("received_at")
    return InstanceMeta(
        sop_instance_uid=record["sop_instance_uid"],
        sop_class_uid=record["sop_class_uid"],
        study_uid=record["study_uid"],
        series_uid=record["series_uid"],
        path=str(spool.path_for(record["study_uid"], record["series_uid"], record["sop_instance_uid"])),
        size_bytes=int(record["size_bytes"]),
        transfer_syntax_uid=record.get("transfer_syntax_uid", ""),
        routing=record.get("routing") or {},
        calling_ae=record.get("calling_ae", ""),
        received_at=datetime.fromisoformat(received_at) if received_at else None,
    )


def replay_journal(journal: SpoolJournal, spool: Spool, ledger: Ledger) -> int:
    """Lay out and record every instance of the journal segments a crash left; returns how many.

    Idempotent: a spool file that holds the record's bytes is kept, a missing or different one
    is written again; the spool is made durable (one sync) before the ledger records, and the
    segments are deleted only after both.
    """
    metas: list[InstanceMeta] = []
    for record in journal.replay():
        meta = _meta_from_journal(record.meta, spool)
        path = Path(meta.path)
        if not record.matches_file(path):
            write_parts_atomic(path, [record.data], durable=False)
        metas.append(meta)
    if metas:
        spool.sync()
        ledger.instances.record_many(metas)
    journal.forget_replayed()
    return len(metas)


def recover_unrecorded_instances(spool: Spool, ledger: Ledger, describe: Describe) -> int:
    """Record spooled files the ledger does not know; returns how many.

    Every acknowledged instance was fsync'ed into the spool before its ledger
    commit; the ledger's last commits may be lost on power failure (SQLite WAL,
    ``synchronous=NORMAL``), so the storage service calls this before the
    listener accepts associations. Files that cannot be read are left in place
    and logged.
    """
    known = ledger.instances.uids()
    recovered = 0
    for path in spool.root.glob("*/*/*.dcm"):
        if path.stem in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            checked = _Checked(
                str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), describe(ds)
            )
            meta = _instance_meta(
                checked,
                path,
                path.stat().st_size,
                str(ds.file_meta.TransferSyntaxUID),
                str(ds.file_meta.get("SourceApplicationEntityTitle") or "").strip(),
                datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None),
            )
            if ledger.instances.record(meta):
                recovered += 1
        except Exception:
            _log.exception("spooled file %s cannot be recorded; left in place", path.name)
    return recovered


def _part10_header(sop_class: str, sop_instance: str, transfer_syntax: UID, calling_ae: str) -> bytes:
    """The start of the instance's DICOM Part 10 file: preamble and File Meta Information (the
    data set as received follows)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def _c_store_request(event: evt.Event) -> C_STORE:
    """The request of an EVT_C_STORE event."""
    request = event.request
    if not isinstance(request, C_STORE):
        raise RuntimeError(f"C-STORE handler called for a {type(request).__name__} request")
    return request


class StorageService:
    """Storage SCP for ``settings``: validates each C-STORE, spools it and records it in ``ledger``.

    ``describe(ds)`` gives the routing attributes the ledger keeps for each
    stored instance (the node passes :func:`node.pipelines.routing.routing_attributes`;
    this package itself knows no medicine).
    ``on_instance_stored(meta)`` is called, in the association's thread, after
    each *new* instance is spooled and recorded (not for duplicates); an
    exception in it is logged and does not change the answer to the peer.
    Counts per association: ``stored``, ``duplicates``, ``refused``. Instances that come by
    another transport (STOW-RS) go through :meth:`store_file`, as C-STOREs do.

    ``budget`` (:class:`node.dicom.intake.MemoryBudget`) is the memory the instances
    being parsed share across associations (``max_inflight_mb``); ``receiver``
    (:class:`node.dicom.intake.Receiver`) puts data sets in the spool's incoming
    folder as they arrive.
    """

    counters: tuple[str, ...] = ("stored", "duplicates", "refused")

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        describe: Describe,
        *,
        audit: AuditLog | None = None,
        on_instance_stored: Callable[[InstanceMeta], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.describe = describe
        self.audit = audit
        self.on_instance_stored = on_instance_stored
        self.spool = Spool(settings.spool_dir, durable=settings.durable_writes)
        #: the spool journal, opened by :meth:`prepare` when ``durable_writes`` and ``ingest_journal`` are on
        self.journal: SpoolJournal | None = None
        self.recorder = GroupRecorder(ledger)
        self._peers = Peers()
        self.max_instance_bytes = int(settings.max_instance_mb * _MiB)
        self.budget = MemoryBudget(int(settings.max_inflight_mb * _MiB))
        self.receiver = Receiver(
            self.spool.incoming_dir, self.max_instance_bytes + _META_ALLOWANCE, lambda assoc: self._peers.get(assoc) is not None
        )

    # ------------------------------------------------------------------ the service contract
    def contexts(self) -> list[PresentationContext]:
        """Every storage SOP class pynetdicom knows plus :data:`STORAGE_SOP_CLASSES`, with
        :data:`TRANSFER_SYNTAXES`."""
        syntaxes = list(TRANSFER_SYNTAXES)
        known = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        extra = [uid for uid in STORAGE_SOP_CLASSES if uid not in known]
        return [build_context(uid, syntaxes) for uid in known + extra]

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        self._peers = peers
        self.receiver.install()  # data sets of these peers' associations go to the spool as they arrive
        return [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_connection_closed)]

    def _on_connection_closed(self, event: evt.Event) -> None:
        """Delete what a connection closed mid-transfer left half received."""
        left = self.receiver.discard(event.assoc)
        if left:
            _log.info("removed %d data set(s) left half received by a closed connection", left)

    def prepare(self) -> None:
        """Remove partial spool files, replay the journal segments a crash left, record spooled
        instances the ledger lacks (after a crash), and start the journal's checkpointer."""
        removed = self.spool.remove_partial_files()
        if removed:
            _log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        if self.settings.durable_writes and self.settings.ingest_journal and self.journal is None:
            journal = SpoolJournal(self.spool.root / JOURNAL_DIR)
            replayed = replay_journal(journal, self.spool, self.ledger)
            if replayed:
                _log.warning("replayed %d instance(s) from the spool journal (after a crash)", replayed)
                audit_quietly(self.audit, "spool.journal_replayed", instances=replayed)
            journal.start(self.spool.sync)
            self.journal = journal
        recovered = recover_unrecorded_instances(self.spool, self.ledger, self.describe)
        if recovered:
            _log.warning("recorded %d spooled instance(s) missing from the ledger (after a crash)", recovered)
            audit_quietly(self.audit, "spool.recovered", instances=recovered)

    def close(self) -> None:
        """Checkpoint and close the spool journal (the listener stopped)."""
        journal, self.journal = self.journal, None
        if journal is not None:
            _log.info(
                "spool journal: %d instance(s) made durable by %d fdatasync(s)", journal.records, journal.flushes
            )
            journal.close()

    # ------------------------------------------------------------------ C-STORE
    def _on_store(self, event: evt.Event) -> int | Dataset:
        peer = self._peers.get(event.assoc)
        request = _c_store_request(event)
        offer = _Offer(
            sop_class=str(request.AffectedSOPClassUID or ""),
            sop_instance=str(request.AffectedSOPInstanceUID or ""),
            transfer_syntax=UID(str(event.context.transfer_syntax)),
            source=SOURCE_DIMSE,
            peer=peer if peer is not None else Peer("", ""),
            claimed_by="request",
        )
        outcome = self._store_offer(
            offer, lambda: self._received(event, offer.sop_class, offer.sop_instance, offer.transfer_syntax)
        )
        return Status.SUCCESS if outcome.stored else _failure(outcome.status, outcome.reason)

    # ------------------------------------------------------------------ any transport
    def store_file(
        self,
        file: Path | FileRange,
        transfer_syntax: str | None = None,
        *,
        source: str,
        peer: Peer,
        study_uid: str | None = None,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> StoreOutcome:
        """Check, spool and record one instance held in a file, as a C-STORE of it would be.

        The path of every instance whatever its transport (the C-STORE handler runs the same
        steps, ``_store_offer``, on the data set it received): the same checks (SOP class stored, disk watermark, UIDs, the parse
        within the memory budget, pixel data), the same durability (the outcome is Success
        only once the instance is in the spool, fsync'ed or in a flushed journal record, and
        recorded in the ledger), the same rejection records (ledger and audit log), the same
        ``on_instance_stored`` callback and the same metrics (labelled ``source``). Blocks:
        call it from a worker thread in an event loop.

        Parameters
        ----------
        file
            A DICOM Part 10 file (a :class:`~pathlib.Path`; the 128-byte preamble may be
            missing), whose File Meta gives the transfer syntax and the SOP Class and SOP
            Instance UIDs the data set must carry; or a :class:`~node.dicom.spool.FileRange`
            holding the data set alone (then ``transfer_syntax``, ``sop_class_uid`` and
            ``sop_instance_uid`` are required). The caller keeps and deletes the file.
        transfer_syntax
            Overrides the File Meta's Transfer Syntax UID.
        source
            The transport, a metric label: :data:`SOURCE_DIMSE` or :data:`SOURCE_STOWRS`.
        peer
            Who sent it: ``calling_ae`` (kept in the ledger, at most 16 characters, e.g.
            ``STOW-RS``) and ``address``; the outcome is counted on it (``stored``,
            ``duplicates``, ``refused``) and the study added to its ``study_uids``.
        study_uid
            The study the instance must belong to (STOW-RS ``/studies/{study}``); an instance
            of another study is refused 0xA900.
        sop_class_uid, sop_instance_uid
            What the sender claims; the data set must match.

        Returns
        -------
        StoreOutcome
            Success (a duplicate too) or the DIMSE failure status and its reason.
        """
        offered_by = "File Meta"
        length = 0
        offset = 0
        preamble = True
        if isinstance(file, Path):
            try:
                head = _read_part10_meta(file)
            except StoreRefusedError as refusal:
                offer = _Offer(sop_class_uid or "", sop_instance_uid or "", UID(transfer_syntax or ""), source, peer,
                               offered_by, study_uid)
                return self._refused(offer, refusal, _offer_uids(offer))
            offset, length, preamble = head.offset, head.length, head.preamble
            transfer_syntax = transfer_syntax or head.transfer_syntax
            sop_class_uid = sop_class_uid or head.sop_class
            sop_instance_uid = sop_instance_uid or head.sop_instance
        else:
            offered_by = "request"
            if not (transfer_syntax and sop_class_uid and sop_instance_uid):
                raise ValueError("a FileRange needs transfer_syntax, sop_class_uid and sop_instance_uid")
        offer = _Offer(
            sop_class_uid or "", sop_instance_uid or "", UID(transfer_syntax or ""), source, peer, offered_by, study_uid
        )
        held = file if isinstance(file, FileRange) else FileRange(file, offset, length)
        if not preamble:  # the parser wants the preamble: a Part 10 copy (the data set copied by the kernel)
            return self._store_offer(offer, lambda: self._as_part10(held, offer))
        return self._store_offer(offer, lambda: nullcontext(held))

    @contextmanager
    def _as_part10(self, data_set: FileRange, offer: _Offer) -> Iterator[FileRange]:
        """The data set in a Part 10 file of the incoming folder with the node's File Meta (deleted afterwards)."""
        target = self._incoming_path(".part10")
        try:
            header = _part10_header(offer.sop_class, offer.sop_instance, offer.transfer_syntax, "")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                append_parts(fd, [header, data_set])
            finally:
                os.close(fd)
            yield FileRange(target, len(header), data_set.length)
        finally:
            target.unlink(missing_ok=True)

    def _store_offer(self, offer: _Offer, opener: Callable[[], AbstractContextManager[FileRange]]) -> StoreOutcome:
        """The one path of an instance: admit, open its data set (``opener``), check, spool,
        record; refusals recorded; metrics; the callback for a new instance."""
        uids = _offer_uids(offer)
        try:
            self._admit(offer)
            with opener() as received:
                checked = self._check(received, offer, uids)
                meta, new = self._spool_and_record(checked, received, offer)
        except StoreRefusedError as refusal:
            return self._refused(offer, refusal, uids)
        except Exception as exc:  # never let one instance take the association (or the request) down
            _log.exception("unexpected error storing instance %s", hash_identifier(offer.sop_instance))
            return self._refused(
                offer, StoreRefusedError(Status.OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}"), uids
            )
        if new:
            INSTANCES_RECEIVED.labels(source=offer.source).inc()
            RECEIVED_BYTES.labels(source=offer.source).inc(meta.size_bytes)
            if self.on_instance_stored is not None:
                try:
                    self.on_instance_stored(meta)
                except Exception:
                    _log.exception("on_instance_stored callback failed")
        return StoreOutcome(Status.SUCCESS, "", checked.sop_class, checked.sop_instance, checked.study, new)

    def _refused(self, offer: _Offer, refusal: StoreRefusedError, uids: dict[str, str]) -> StoreOutcome:
        """Count, log, record in the ledger and audit a refused instance; its outcome."""
        peer = offer.peer
        peer.count("refused")
        INSTANCES_REFUSED.labels(source=offer.source, status=dimse_status_label(refusal.status)).inc()
        _log.warning(
            "refused instance %s from %s (%s, %s): 0x%04X %s",
            hash_identifier(uids.get("sop_instance_uid", "")),
            peer.calling_ae,
            peer.address,
            offer.source,
            refusal.status,
            refusal.reason,
        )
        try:
            self.ledger.rejections.record(
                refusal.reason, refusal.status, calling_ae=peer.calling_ae, peer_address=peer.address, **uids
            )
        except Exception:  # the answer to the peer must not depend on the ledger being writable
            _log.exception("cannot record the rejection in the ledger")
        study = uids.get("study_uid", "")
        audit_quietly(
            self.audit,
            "instance.refused",
            calling_ae=peer.calling_ae,
            address=peer.address,
            source=offer.source,
            status=refusal.status,
            reason=refusal.reason,
            study_uid=study if is_valid_uid(study) else "",
        )
        return StoreOutcome(
            refusal.status,
            refusal.reason,
            uids.get("sop_class_uid", ""),
            uids.get("sop_instance_uid", ""),
            study,
            False,
        )

    def _admit(self, offer: _Offer) -> None:
        """The checks before the data set is looked at: SOP class, disk space, instance UID, transfer syntax."""
        if offer.sop_class not in STORAGE_SOP_CLASSES:
            raise StoreRefusedError(
                Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {offer.sop_class[:64]} is not stored by this node"
            )
        low = disk_space_problem(self.settings.data_dir, self.settings.disk_watermark_mb)
        if low:
            raise StoreRefusedError(Status.OUT_OF_RESOURCES, low)
        if not is_valid_uid(offer.sop_instance):
            raise StoreRefusedError(Status.INVALID_UID, f"{offer.instance_uid_name} is not a valid UID")
        if str(offer.transfer_syntax) not in TRANSFER_SYNTAXES:
            raise StoreRefusedError(
                Status.TRANSFER_SYNTAX_NOT_SUPPORTED,
                f"transfer syntax {str(offer.transfer_syntax)[:64]} is not accepted by this node",
            )

    # ------------------------------------------------------------------ the steps of one instance
    def _too_large(self, size_bytes: int) -> StoreRefusedError:
        limit = self.settings.max_instance_mb
        return StoreRefusedError(
            Status.TOO_LARGE, f"data set of {size_bytes / _MiB:.0f} MiB exceeds max_instance_mb ({limit:g} MiB)"
        )

    def _incoming_path(self, suffix: str) -> Path:
        return self.spool.incoming_dir / f"{secrets.token_hex(8)}{suffix}"

    @contextmanager
    def _received(self, event: evt.Event, sop_class: str, sop_instance: str, transfer_syntax: UID) -> Iterator[FileRange]:
        """The received data set, as a range of a file (deleted afterwards).

        Normally the :class:`~node.dicom.intake.ReceivedFile` the receiver gave pynetdicom;
        pynetdicom's own temporary file for an association the receiver did not claim; a
        file written here when chunked receive is off (the data set then came in memory).
        """
        try:
            path = event.dataset_path
        except AttributeError:
            path = None
        received = self.receiver.take(path) if path else None
        written: Path | None = None
        try:
            if received is not None:
                received.close()
                if received.error is not None:
                    raise StoreRefusedError(
                        Status.OUT_OF_RESOURCES, f"cannot write the received data set: {received.error.strerror or received.error}"
                    )
                if received.overflow:
                    raise self._too_large(received.received_bytes)
                file = received.path
            elif path:
                file = Path(path)
            else:
                request = _c_store_request(event)
                raw = request.DataSet.getvalue() if request.DataSet is not None else b""
                written = file = self._incoming_path(".received")
                with open(file, "xb") as out:
                    out.write(_part10_header(sop_class, sop_instance, transfer_syntax, ""))
                    out.write(raw)
                del raw
            with open(file, "rb") as fp:
                offset = data_set_offset(fp)
                size = fp.seek(0, 2) - offset
            yield FileRange(file, offset, size)
        finally:
            if received is not None:
                received.remove()
            if written is not None:
                written.unlink(missing_ok=True)

    def _check(self, received: FileRange, offer: _Offer, uids: dict[str, str]) -> _Checked:
        """Check the received data set within the memory budget; what spooling and the ledger need.

        Whatever is wrong with the data is a 0xCxxx or 0xA9xx refusal; only the node's own
        trouble (its disk, its memory, a budget that stays full) is 0xA700.
        """
        if received.length > self.max_instance_bytes:
            raise self._too_large(received.length)
        transfer_syntax, sop_class, sop_instance = offer.transfer_syntax, offer.sop_class, offer.sop_instance
        inflated: Path | None = None
        try:
            try:
                parsed = received
                implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
                if transfer_syntax == _DEFLATED:
                    inflated = self._incoming_path(".inflated")
                    parsed = self._inflate(received, inflated, sop_class, sop_instance)
                    implicit, little = False, True
                with open(parsed.path, "rb", buffering=_MiB) as fp:
                    structure = scan_structure(
                        fp, parsed.offset, parsed.offset + parsed.length, implicit, little, self.budget.capacity_bytes - BASE_COST
                    )
                with self.budget.reserve(BASE_COST + structure.parse_memory_bytes, self.settings.inflight_wait_s):
                    ds = dcmread(parsed.path, defer_size=DEFER_BYTES)
                    return self._checked(ds, offer, uids)
            except (StoreRefusedError, LimitExceeded, BudgetBusy, OSError, MemoryError):
                raise
            except _ReadError as exc:
                raise StoreRefusedError(
                    Status.CANNOT_UNDERSTAND, f"data set cannot be read: {redact(str(exc.__cause__), quoted=True)[:200]}"
                ) from None
            except Exception as exc:  # DataSetProblem, pydicom's errors, RecursionError, zlib, struct ...
                raise StoreRefusedError(
                    Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {redact(str(exc), quoted=True)[:200]}"
                ) from None
        except LimitExceeded as exc:
            raise StoreRefusedError(
                Status.TOO_LARGE, f"data set too complex for max_inflight_mb ({self.settings.max_inflight_mb:g} MiB): {exc}"
            ) from None
        except BudgetBusy as exc:
            raise StoreRefusedError(Status.OUT_OF_RESOURCES, f"node busy, in-flight memory budget full: {exc}") from None
        except (OSError, MemoryError) as exc:
            _log.exception("cannot check instance %s", hash_identifier(sop_instance))
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise StoreRefusedError(Status.OUT_OF_RESOURCES, f"cannot check the data set: {detail}") from None
        finally:
            if inflated is not None:
                inflated.unlink(missing_ok=True)

    def _inflate(self, received: FileRange, target: Path, sop_class: str, sop_instance: str) -> FileRange:
        """Inflate a Deflated Explicit VR Little Endian data set into ``target`` (a Part 10 file
        in Explicit VR Little Endian, for parsing), within ``max_instance_mb``."""
        with open(received.path, "rb") as source, open(target, "xb") as out:
            out.write(_part10_header(sop_class, sop_instance, UID(ExplicitVRLittleEndian), ""))
            start = out.tell()
            try:
                size = inflate_bounded(source, received.offset, out, self.max_instance_bytes)
            except LimitExceeded:
                raise StoreRefusedError(
                    Status.TOO_LARGE, f"deflated data set inflates past max_instance_mb ({self.settings.max_instance_mb:g} MiB)"
                ) from None
        return FileRange(target, start, size)

    def _checked(self, ds: Dataset, offer: _Offer, uids: dict[str, str]) -> _Checked:
        """The checks of a parsed data set (bulk values still on disk); errors reading its
        values are raised as :class:`_ReadError`."""
        sop_class, sop_instance = offer.sop_class, offer.sop_instance
        try:
            study_value = ds.get("StudyInstanceUID")
            if study_value:
                uids["study_uid"] = str(study_value)[:80]
            ds_class = _required_uid(ds, "SOPClassUID", "(0008,0016)")
            ds_instance = _required_uid(ds, "SOPInstanceUID", "(0008,0018)")
            if ds_class != sop_class:
                raise StoreRefusedError(
                    Status.DATASET_DOES_NOT_MATCH,
                    f"SOP Class UID in the data set is {ds_class}, {offer.claimed_by} says {sop_class}",
                )
            if ds_instance != sop_instance:
                raise StoreRefusedError(Status.INVALID_UID, f"SOP Instance UID in the data set differs from the {offer.claimed_by}")
            study = _required_uid(ds, "StudyInstanceUID", "(0020,000D)")
            if offer.study is not None and study != offer.study:
                raise StoreRefusedError(
                    Status.DATASET_DOES_NOT_MATCH, f"Study Instance UID {study} differs from the request's study {offer.study[:64]}"
                )
            series = _required_uid(ds, "SeriesInstanceUID", "(0020,000E)")
            if sop_class not in _NON_IMAGE_CLASSES:
                problem = _pixel_data_problem(ds, offer.transfer_syntax)
                if problem:
                    raise StoreRefusedError(Status.DATASET_DOES_NOT_MATCH, problem)
            return _Checked(sop_class, sop_instance, study, series, dict(self.describe(ds)))
        except (StoreRefusedError, OSError, MemoryError):
            raise
        except Exception as exc:  # a value that does not decode (e.g. a US of 3 bytes), in our checks or describe
            raise _ReadError() from exc

    def _spool_and_record(self, checked: _Checked, received: FileRange, offer: _Offer) -> tuple[InstanceMeta, bool]:
        """Spool the instance (File Meta, then the data set as received, copied from its file) and
        record it; its meta, and whether it is new (False: a duplicate)."""
        peer, transfer_syntax = offer.peer, offer.transfer_syntax
        calling = peer.calling_ae
        header = _part10_header(checked.sop_class, checked.sop_instance, transfer_syntax, calling)
        parts: list[Part] = [header, received]
        journal = self.journal
        received_at = utcnow()
        ticket: JournalTicket | None = None
        try:
            if journal is not None and len(header) + received.length <= JOURNAL_MAX_INSTANCE_BYTES:
                stored, ticket = self._journal_and_lay_out(journal, checked, parts, str(transfer_syntax), calling, received_at)
            else:
                stored = self.spool.store(checked.study, checked.series, checked.sop_instance, parts)
        except OSError as exc:
            raise StoreRefusedError(Status.OUT_OF_RESOURCES, f"cannot write to the spool: {exc.strerror or exc}") from None
        meta = _instance_meta(checked, stored.path, stored.size_bytes, str(transfer_syntax), calling, received_at)
        try:
            new = self.recorder.record(meta)
        except Exception as exc:
            _log.exception("cannot record instance %s in the ledger", hash_identifier(checked.sop_instance))
            raise StoreRefusedError(Status.OUT_OF_RESOURCES, f"cannot record in the ledger: {type(exc).__name__}") from None
        finally:
            if journal is not None and ticket is not None:
                journal.settled(ticket)
        peer.study_uids.add(checked.study)
        peer.count("stored" if new else "duplicates")
        return meta, new

    def _journal_and_lay_out(
        self,
        journal: SpoolJournal,
        checked: _Checked,
        parts: list[Part],
        transfer_syntax: str,
        calling: str,
        received_at: datetime,
    ) -> tuple[StoredFile, JournalTicket | None]:
        """Append the instance to the journal, lay out its spool file (no fsync) and wait for the
        group commit covering the record; the caller calls :meth:`SpoolJournal.settled` with the
        ticket once the instance is recorded in the ledger. An instance already in the spool
        waits for the flush of whatever the journal holds (its record may be in it) and is not
        appended again (no ticket)."""
        path = self.spool.path_for(checked.study, checked.series, checked.sop_instance)
        if path.is_file():
            journal.wait_durable(journal.last_ticket())
            return StoredFile(path, path.stat().st_size, False), None
        meta = _instance_meta(checked, path, sum(part_size(p) for p in parts), transfer_syntax, calling, received_at)
        ticket = journal.append(_journal_meta(meta), parts)
        try:
            stored = self.spool.store(checked.study, checked.series, checked.sop_instance, parts, durable=False)
            journal.wait_durable(ticket)
        except BaseException:
            journal.settled(ticket)
            raise
        return stored, ticket


class _ReadError(Exception):
    """A value of the data set could not be read (its cause is the library's error)."""
