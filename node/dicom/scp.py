"""The DICOM listener: C-ECHO and C-STORE SCP (pynetdicom).

Association policy (checked when the A-ASSOCIATE-RQ arrives, each refusal
logged with its reason, audited and recorded in the ledger's ``rejections``):

* Called AE title must be the node's (else rejected permanent, "called AE not recognised").
* Calling AE title must belong to a configured peer, and come from the peer's
  host when one is set (else rejected permanent, "calling AE not recognised").
  With no peers configured any calling AE is accepted.
* At most ``max_associations`` at once (else rejected transient, "local limit exceeded").
* Free space in ``data_dir`` at least ``disk_watermark_mb`` (else rejected
  transient, "temporary congestion").

All storage SOP classes are negotiated so that the node can answer every
instance with a precise status; instances of classes outside
:data:`STORAGE_SOP_CLASSES` are answered 0x0122 (SOP class not supported).

An instance is answered Success (0x0000) only after it is in the spool
(atomic, fsync'ed) and in the ledger. Failures:

* 0xA700 out of resources: the disk is below the watermark, or writing failed;
* 0xA900 data set does not match SOP class: SOP Class UID differs from the
  request, an image without Pixel Data, Pixel Data shorter than its header says;
* 0xC000 cannot understand: the data set cannot be parsed;
* 0xC001 cannot understand: a UID is missing or invalid (it would name a file);
* 0x0122 SOP class not supported.

Each failure response carries an Error Comment and is recorded as a rejection.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import signal
import socket
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import __version__
from node.config import Settings, load_settings
from node.dicom.audit import AuditLog
from node.ledger import InstanceMeta, Ledger, utcnow
from node.dicom.logs import hash_identifier, redact, setup_logging, silence_pynetdicom
from node.dicom.spool import Spool
from node.dicom.tls import server_context
from node.uids import deterministic_uid, is_valid_uid

__all__ = [
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "IMPLEMENTATION_CLASS_UID",
    "Status",
    "StoreRefused",
    "Refusal",
    "AssociationPolicy",
    "DicomListener",
    "recover_unrecorded_instances",
    "main",
]

_log = logging.getLogger("cardionode.scp")

#: Implementation Class UID of CardioNode (derived once from the project name)
IMPLEMENTATION_CLASS_UID = deterministic_uid("CardioNode", "implementation class")
IMPLEMENTATION_VERSION_NAME = f"CARDIONODE_{__version__.replace('.', '')}"[:16]

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
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})


class Status:
    """DIMSE status codes the C-STORE SCP answers with (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    INVALID_UID = 0xC001


class StoreRefused(Exception):
    """An instance the node will not store; ``status`` is the DIMSE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused, with the A-ASSOCIATE-RJ (result, source, diagnostic)."""

    result: int
    source: int
    diagnostic: int
    reason: str


class AssociationPolicy:
    """Decides whether an association request is accepted (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._resolved: dict[str, set[str]] = {}

    def free_disk_mb(self) -> float:
        """Free space of the file system holding ``data_dir``, in MiB."""
        return shutil.disk_usage(self.settings.data_dir).free / 2**20

    def disk_low(self) -> str | None:
        """A reason when free space is below the watermark, else None."""
        free = self.free_disk_mb()
        if free < self.settings.disk_watermark_mb:
            return (
                f"free disk space in {self.settings.data_dir} is {free:.0f} MiB, "
                f"below the watermark of {self.settings.disk_watermark_mb:.0f} MiB"
            )
        return None

    def _addresses_of(self, host: str) -> set[str]:
        if host not in self._resolved:
            try:
                self._resolved[host] = {info[4][0] for info in socket.getaddrinfo(host, None)}
            except OSError:
                self._resolved[host] = {host}
        return self._resolved[host]

    def check(self, calling_ae: str, called_ae: str, address: str, active: int) -> Refusal | None:
        """Return the refusal for this request, or None to accept it.

        ``active``: associations currently open as acceptor, this one included.
        """
        s = self.settings
        if called_ae.strip() != s.ae_title.strip():
            return Refusal(0x01, 0x01, 0x07, f"called AE title {called_ae.strip()!r} is not this node's ({s.ae_title!r})")
        if s.peers:
            peers = [p for p in s.peers if calling_ae.strip() in (ae.strip() for ae in p.ae_titles)]
            if not peers:
                return Refusal(0x01, 0x01, 0x03, f"calling AE title {calling_ae.strip()!r} is not in the allowed peers")
            if not any(p.host is None or address in self._addresses_of(p.host) for p in peers):
                hosts = ", ".join(str(p.host) for p in peers)
                return Refusal(
                    0x01, 0x01, 0x03, f"calling AE title {calling_ae.strip()!r} is allowed only from {hosts}, not {address}"
                )
        if active > s.max_associations:
            return Refusal(0x02, 0x03, 0x02, f"{active - 1} associations already open (max_associations = {s.max_associations})")
        low = self.disk_low()
        if low:
            return Refusal(0x02, 0x03, 0x01, low)
        return None


@dataclass
class _AssociationStats:
    calling_ae: str
    address: str
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    studies: set[str] = field(default_factory=set)


def _failure(status: int, reason: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = reason[:64]  # LO
    return rsp


def _read_dataset(raw: bytes, transfer_syntax: UID) -> Dataset:
    """Parse ``raw`` (a data set encoded in ``transfer_syntax``), raising on any structural problem."""
    if transfer_syntax == "1.2.840.10008.1.2.1.99":
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    fp = io.BytesIO(raw)
    ds = read_dataset(fp, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian)
    if fp.tell() != len(raw):
        raise ValueError(f"parsing stopped at byte {fp.tell()} of {len(raw)}")
    for elem in ds.elements():  # raw elements: pydicom accepts a value shorter than its length
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if isinstance(value, bytes) and length is not None and length != _UNDEFINED_LENGTH and len(value) != length:
            raise ValueError(f"element {elem.tag} claims {length} bytes but only {len(value)} arrived (truncated)")
    return ds


def _required_uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        raise StoreRefused(Status.INVALID_UID, f"{keyword} {tag} is missing")
    value = str(value).rstrip("\x00 ")
    if not is_valid_uid(value):
        raise StoreRefused(Status.INVALID_UID, f"{keyword} {tag} is not a valid UID")
    return value


def _pixel_data_problem(ds: Dataset, transfer_syntax: UID) -> str | None:
    """Why the pixel data cannot be right, for image SOP classes; None if it may be."""
    pixel = None
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            pixel = ds[keyword]
            break
    if pixel is None:
        return "image SOP class without Pixel Data (7FE0,0010)"
    if str(transfer_syntax) not in _NATIVE_SYNTAXES or pixel.keyword != "PixelData":
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return "Rows, Columns or Bits Allocated missing or not a number"
    expected = (rows * cols * frames * samples * bits + 7) // 8  # bytes; 1-bit images are packed
    actual = len(pixel.value or b"")
    if actual < expected:
        return f"Pixel Data has {actual} bytes; {rows}x{cols}x{frames} frames x {samples} x {bits} bits need {expected}"
    return None


def _multi(value: Any) -> tuple[str, ...]:
    """A multi-valued attribute (pydicom MultiValue, list or backslash-joined string) as a tuple."""
    if value is None or value == "":
        return ()
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return tuple(text.split("\\"))
    return tuple(str(v) for v in value)


def _radiopharmaceutical_codes(ds: Dataset) -> tuple[str, ...]:
    codes: list[str] = []
    for info in ds.get("RadiopharmaceuticalInformationSequence") or []:
        for code in info.get("RadiopharmaceuticalCodeSequence") or []:
            value = code.get("CodeValue")
            if value and str(value) not in codes:
                codes.append(str(value))
    return tuple(codes)


def _instance_meta(ds: Dataset, path: Path, size_bytes: int, transfer_syntax: str, calling_ae: str, received_at: datetime) -> InstanceMeta:
    """The ledger's view of a validated instance (UIDs, routing attributes; no patient data)."""
    return InstanceMeta(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        path=str(path),
        size_bytes=size_bytes,
        transfer_syntax_uid=transfer_syntax,
        modality=str(ds.get("Modality") or ""),
        image_type=_multi(ds.get("ImageType")),
        series_description=str(ds.get("SeriesDescription") or ""),
        radiopharmaceutical_codes=_radiopharmaceutical_codes(ds),
        calling_ae=calling_ae,
        received_at=received_at,
    )


def recover_unrecorded_instances(spool: Spool, ledger: Ledger) -> int:
    """Record spooled files the ledger does not know; returns how many.

    Every acknowledged instance was fsync'ed into the spool before its ledger
    commit; the ledger's last commits may be lost on power failure (SQLite WAL,
    ``synchronous=NORMAL``), so the listener calls this before accepting
    associations. Files that cannot be read are left in place and logged.
    """
    known = ledger.instance_uids()
    recovered = 0
    for path in spool.root.glob("*/*/*.dcm"):
        if path.stem in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            meta = _instance_meta(
                ds,
                path,
                path.stat().st_size,
                str(ds.file_meta.TransferSyntaxUID),
                str(ds.file_meta.get("SourceApplicationEntityTitle") or "").strip(),
                datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).replace(tzinfo=None),
            )
            if ledger.record_instance(meta):
                recovered += 1
        except Exception:
            _log.exception("spooled file %s cannot be recorded; left in place", path.name)
    return recovered


class DicomListener:
    """C-ECHO/C-STORE SCP for ``settings``, storing into the spool and ``ledger``.

    ``on_instance_stored(meta)`` is called, in the association's thread, after
    each *new* instance is spooled and recorded (not for duplicates); an
    exception in it is logged and does not change the answer to the peer.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        audit: AuditLog | None = None,
        on_instance_stored: Callable[[InstanceMeta], None] | None = None,
    ) -> None:
        silence_pynetdicom()  # whether or not the caller set up logging, no data sets in the logs
        self.settings = settings
        self.ledger = ledger
        self.audit = audit
        self.on_instance_stored = on_instance_stored
        self.policy = AssociationPolicy(settings)
        self.spool = Spool(settings.spool_dir, durable=settings.durable_writes)
        self._server: Any = None
        self._stats: dict[int, _AssociationStats] = {}
        self._lock = threading.Lock()
        self.ae = self._make_ae()

    # ------------------------------------------------------------------ set-up
    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.require_called_aet = False  # the policy checks it, with a logged reason
        ae.maximum_associations = s.max_associations + 1  # the policy decides first
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = 1 << 20  # bytes; larger PDUs mean fewer round trips
        syntaxes = list(TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        known = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
        for uid in STORAGE_SOP_CLASSES:
            if uid not in known:
                ae.add_supported_context(uid, syntaxes)
        return ae

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port = 0``)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start listening in background threads; returns once the socket is bound."""
        removed = self.spool.remove_partial_files()
        if removed:
            _log.info("removed %d partial spool file(s) left by an interrupted write", removed)
        recovered = recover_unrecorded_instances(self.spool, self.ledger)
        if recovered:
            _log.warning("recorded %d spooled instance(s) missing from the ledger (after a crash)", recovered)
            self._audit("spool.recovered", instances=recovered)
        s = self.settings
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        ssl_context = server_context(s.tls) if s.tls.enabled else None
        self._server = self.ae.start_server(
            (s.bind_address, s.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        _log.info(
            "listening as %s on %s:%d (%s), spool %s",
            s.ae_title,
            s.bind_address,
            self.port,
            "TLS" if ssl_context else "plain TCP",
            self.spool.root,
        )
        self._audit("listener.started", ae_title=s.ae_title, address=s.bind_address, port=self.port, tls=bool(ssl_context))

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            self._audit("listener.stopped", ae_title=self.settings.ae_title)

    def serve_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        stop.wait()
        self.stop()

    # ------------------------------------------------------------------ helpers
    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            try:
                self.audit.record(event, **fields)
            except OSError:
                _log.exception("cannot write the audit log")

    def _reject_instance(self, stats: _AssociationStats | None, refusal: StoreRefused, **uids: str) -> Dataset:
        calling = stats.calling_ae if stats else ""
        address = stats.address if stats else ""
        if stats:
            stats.failed += 1
        _log.warning(
            "refused instance %s from %s (%s): 0x%04X %s",
            hash_identifier(uids.get("sop_instance_uid", "")),
            calling,
            address,
            refusal.status,
            refusal.reason,
        )
        try:
            self.ledger.record_rejection(
                refusal.reason, refusal.status, calling_ae=calling, peer_address=address, **uids
            )
        except Exception:  # the answer to the peer must not depend on the ledger being writable
            _log.exception("cannot record the rejection in the ledger")
        self._audit(
            "instance.refused",
            calling_ae=calling,
            address=address,
            status=refusal.status,
            reason=refusal.reason,
            study_uid=uids.get("study_uid", "") if is_valid_uid(uids.get("study_uid", "")) else "",
        )
        return _failure(refusal.status, refusal.reason)

    # ------------------------------------------------------------------ events
    def _on_connection(self, event: evt.Event) -> None:
        """Send each PDU at once (no Nagle delay): a C-STORE response must not wait for the peer's delayed ACK."""
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        address = str(assoc.requestor.address)
        active = len([a for a in self.ae.active_associations if a.is_acceptor])
        refusal = self.policy.check(calling, called, address, active)
        if refusal is None:
            with self._lock:
                self._stats[id(assoc)] = _AssociationStats(calling, address)
            return
        _log.warning("refused association from %s (%s) to %s: %s", calling, address, called, refusal.reason)
        try:
            self.ledger.record_rejection(f"association refused: {refusal.reason}", 0, calling_ae=calling, peer_address=address)
        except Exception:
            _log.exception("cannot record the association refusal in the ledger")
        self._audit("association.refused", calling_ae=calling, address=address, reason=refusal.reason)
        assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
        assoc.kill()  # as pynetdicom does after its own rejections: waits until the A-ASSOCIATE-RJ is sent

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        stats = self._stats.get(id(assoc))
        calling = stats.calling_ae if stats else str(assoc.requestor.ae_title).strip()
        address = stats.address if stats else ""
        for cx in assoc.rejected_contexts:
            reason = f"presentation context rejected: {cx.abstract_syntax} with {', '.join(cx.transfer_syntax)[:200]} not supported"
            _log.warning("association from %s (%s): %s", calling, address, reason)
            try:
                self.ledger.record_rejection(reason, 0, calling_ae=calling, peer_address=address, sop_class_uid=str(cx.abstract_syntax))
            except Exception:
                _log.exception("cannot record the rejected context in the ledger")
        _log.info("association accepted from %s (%s)", calling, address)
        self._audit("association.accepted", calling_ae=calling, address=address)

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        _log.info(
            "association from %s (%s) %s: %d stored, %d duplicates, %d refused",
            stats.calling_ae,
            stats.address,
            how,
            stats.stored,
            stats.duplicates,
            stats.failed,
        )
        self._audit(
            f"association.{how}",
            calling_ae=stats.calling_ae,
            address=stats.address,
            stored=stats.stored,
            duplicates=stats.duplicates,
            refused=stats.failed,
            study_uids=sorted(stats.studies),
        )

    def _on_echo(self, event: evt.Event) -> int:
        return Status.SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        stats = self._stats.get(id(event.assoc))
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        uids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_instance}
        try:
            meta = self._store(event, stats, sop_class, sop_instance, uids)
        except StoreRefused as refusal:
            return self._reject_instance(stats, refusal, **uids)
        except Exception as exc:  # never let one instance take the association down
            _log.exception("unexpected error storing instance %s", hash_identifier(sop_instance))
            return self._reject_instance(
                stats, StoreRefused(Status.OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}"), **uids
            )
        if meta is not None and self.on_instance_stored is not None:
            try:
                self.on_instance_stored(meta)
            except Exception:
                _log.exception("on_instance_stored callback failed")
        return Status.SUCCESS

    def _store(
        self, event: evt.Event, stats: _AssociationStats | None, sop_class: str, sop_instance: str, uids: dict[str, str]
    ) -> InstanceMeta | None:
        """Validate, spool and record one instance; the new instance's meta, or None for a duplicate."""
        if sop_class not in STORAGE_SOP_CLASSES:
            raise StoreRefused(Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class[:64]} is not stored by this node")
        low = self.policy.disk_low()
        if low:
            raise StoreRefused(Status.OUT_OF_RESOURCES, low)
        if not is_valid_uid(sop_instance):
            raise StoreRefused(Status.INVALID_UID, "Affected SOP Instance UID is not a valid UID")
        transfer_syntax = UID(str(event.context.transfer_syntax))
        raw = event.request.DataSet.getvalue() if event.request.DataSet is not None else b""
        try:
            ds = _read_dataset(raw, transfer_syntax)
        except Exception as exc:  # includes RecursionError from nesting bombs
            raise StoreRefused(
                Status.CANNOT_UNDERSTAND, f"data set cannot be parsed: {redact(str(exc), quoted=True)[:200]}"
            ) from None
        try:
            return self._store_parsed(ds, raw, transfer_syntax, stats, sop_class, sop_instance, uids)
        except StoreRefused:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise StoreRefused(
                Status.CANNOT_UNDERSTAND, f"data set cannot be read: {redact(str(exc), quoted=True)[:200]}"
            ) from None

    def _store_parsed(
        self,
        ds: Dataset,
        raw: bytes,
        transfer_syntax: UID,
        stats: _AssociationStats | None,
        sop_class: str,
        sop_instance: str,
        uids: dict[str, str],
    ) -> InstanceMeta | None:
        study_value = ds.get("StudyInstanceUID")
        if study_value:
            uids["study_uid"] = str(study_value)[:80]
        ds_class = _required_uid(ds, "SOPClassUID", "(0008,0016)")
        ds_instance = _required_uid(ds, "SOPInstanceUID", "(0008,0018)")
        if ds_class != sop_class:
            raise StoreRefused(Status.DATASET_DOES_NOT_MATCH, f"SOP Class UID in the data set is {ds_class}, request says {sop_class}")
        if ds_instance != sop_instance:
            raise StoreRefused(Status.INVALID_UID, "SOP Instance UID in the data set differs from the request")
        study = _required_uid(ds, "StudyInstanceUID", "(0020,000D)")
        series = _required_uid(ds, "SeriesInstanceUID", "(0020,000E)")
        if sop_class not in _NON_IMAGE_CLASSES:
            problem = _pixel_data_problem(ds, transfer_syntax)
            if problem:
                raise StoreRefused(Status.DATASET_DOES_NOT_MATCH, problem)

        calling = stats.calling_ae if stats else ""
        file_bytes = self._part10(raw, sop_class, sop_instance, transfer_syntax, calling)
        try:
            stored = self.spool.store(study, series, sop_instance, file_bytes)
        except OSError as exc:
            raise StoreRefused(Status.OUT_OF_RESOURCES, f"cannot write to the spool: {exc.strerror or exc}") from None
        meta = _instance_meta(ds, stored.path, stored.size_bytes, str(transfer_syntax), calling, utcnow())
        try:
            new = self.ledger.record_instance(meta)
        except Exception as exc:
            _log.exception("cannot record instance %s in the ledger", hash_identifier(sop_instance))
            raise StoreRefused(Status.OUT_OF_RESOURCES, f"cannot record in the ledger: {type(exc).__name__}") from None
        if stats:
            stats.studies.add(study)
            if new:
                stats.stored += 1
            else:
                stats.duplicates += 1
        return meta if new else None

    def _part10(self, raw: bytes, sop_class: str, sop_instance: str, transfer_syntax: UID, calling_ae: str) -> bytes:
        """The instance as a DICOM Part 10 file: preamble, File Meta Information, data set as received."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_instance
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if calling_ae:
            meta.SourceApplicationEntityTitle = calling_ae
        buffer = io.BytesIO()
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, meta, enforce_standard=True)
        buffer.write(raw)
        return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Run the listener alone (no queue, no processing): ``python -m node.dicom.scp [--config FILE]``.

    Used by the tests and the ingest benchmark; ``cardionode serve`` runs it with
    everything else.
    """
    parser = argparse.ArgumentParser(prog="python -m node.dicom.scp", description=main.__doc__)
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    problems = settings.problems()
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        return 1
    setup_logging(settings.log_dir, "listener")
    ledger = Ledger.from_settings(settings)
    with AuditLog(settings.audit_log_path, durable=settings.durable_writes) as audit:
        listener = DicomListener(settings, ledger, audit=audit)
        listener.serve_forever()
    ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
