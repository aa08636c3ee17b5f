"""C-STORE SCU: send result objects to a destination and say what happened to each.

One association per destination and batch. Only the SOP classes being sent are
proposed, each with the transfer syntax the file is encoded in plus the
uncompressed ones. A Comprehensive 3D SR (``1.2.840.10008.5.1.4.1.1.88.34``)
is also proposed as Enhanced SR (``...88.22``) when the caller gives a converter
(``enhanced_sr``; the node passes :func:`node.results.to_enhanced_sr`, since SR
content rules are the results package's, not the network's); when the peer
accepts only the latter, the object is sent re-encoded as Enhanced SR with the
same SOP Instance UID.

Every object gets an :class:`SendOutcome` that tells success from *transient*
failures (worth retrying later: connection refused or timed out, association
rejected transiently, ``0xA7xx`` out of resources, ``0x0110`` processing
failure, a broken association) and *permanent* ones (association rejected
permanently, ``0xA9xx``, ``0xCxxx``, ``0x01xx`` refusals, SOP class not
accepted): the caller retries the first with backoff and dead-letters the second
(:class:`Exporter`).

What the peer says is kept apart from the node's own words. ``SendOutcome.error``
holds only the node's words (status codes, reasons); the destination's Error Comment
goes to ``SendOutcome.comment`` after :func:`node.dicom.logs.clean_peer_text` has
replaced the identifiers of the object's patient (read from the object's own patient
module: names in every spelling, IDs, accession number, birth date) and removed
quoted values; exception texts (which may quote the peer, e.g. its certificate)
pass the same filter. While an association runs, the batch's patient identifiers are
active in the log filter, so pynetdicom's own records are redacted too. The
:class:`Exporter` stores the comment only in the ledger's protected ``sends.peer_text``,
never in a log, the audit log or the default ``cardionode status`` (see
docs/conformance.md, 5.2).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from node.dicom.audit import AuditLog
from node.dicom.logs import PatientIdentifiers, clean_peer_text, silence_pynetdicom
from node.ledger import Ledger, LedgerError, Send, utcnow
from node.telemetry import (
    ASSOCIATIONS,
    ASSOCIATIONS_ABORTED,
    ASSOCIATIONS_ACTIVE,
    EXPORT_ATTEMPTS,
    LAST_IMAGE_TO_RESULT,
)

__all__ = [
    "COMPREHENSIVE_3D_SR",
    "ENHANCED_SR",
    "PEER_TEXT_KEPT",
    "EchoOutcome",
    "EnhancedSRConverter",
    "Target",
    "destination_targets",
    "echo",
    "SendOutcome",
    "classify_status",
    "send_files",
    "RetryPolicy",
    "Exporter",
]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"

#: ``dataset`` (Comprehensive 3D SR) as an Enhanced SR with the same SOP Instance UID;
#: raises ``ValueError`` when the report cannot be expressed as Enhanced SR (3D coordinates)
EnhancedSRConverter = Callable[[Dataset], Dataset]

#: appended to the node's words when the destination said more (kept in the ledger's protected ``peer_text``)
PEER_TEXT_KEPT = "; comment: `status --peer-text`"

_log = logging.getLogger(__name__)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Target:
    """Where to send: the peer's AE title, host and TCP port; ``ssl_context`` for DICOM TLS."""

    name: str
    ae_title: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one object.

    ``status`` is the DIMSE status the peer answered (None when none came:
    no association, lost connection); ``kind`` is ``"sent"``, ``"transient"``
    or ``"permanent"``; ``error`` the node's words for a failure (never the
    peer's text); ``sent_as`` the SOP Class UID actually sent; ``comment`` the
    peer's Error Comment, if any, with the patient's identifiers replaced
    (:func:`node.dicom.logs.clean_peer_text`): free text from outside, not for logs.
    """

    sop_instance_uid: str
    kind: str
    status: int | None
    error: str
    sent_as: str = ""
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "sent"


def classify_status(status: int) -> str:
    """``"sent"``, ``"transient"`` or ``"permanent"`` for a C-STORE response status (PS3.4 B.2.3).

    Success (0x0000) and warnings (0xB000, 0xB006, 0xB007, 0x0001) mean the
    object is stored. 0xA7xx (out of resources) and 0x0110 (processing failure)
    may pass; every other failure will not change by retrying.
    """
    if status == 0x0000 or status == 0x0001 or (status & 0xF000) == 0xB000:
        return "sent"
    if (status & 0xFF00) == 0xA700 or status in (0x0110, 0xFE00):
        return "transient"
    return "permanent"


def _contexts_for(datasets: Sequence[Dataset], fallback: bool) -> list[PresentationContext]:
    """One context per SOP class sent (and Enhanced SR beside 3D SR when ``fallback``)."""
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        own = str(ds.file_meta.TransferSyntaxUID)
        for uid_ in ([sop_class, ENHANCED_SR] if fallback and sop_class == COMPREHENSIVE_3D_SR else [sop_class]):
            wanted = syntaxes.setdefault(uid_, [])
            for ts in (own, *_UNCOMPRESSED):
                if ts not in wanted:
                    wanted.append(ts)
    return [build_context(sop_class, ts) for sop_class, ts in syntaxes.items()]


def _association_failure(assoc: Association) -> tuple[str, str]:
    """(kind, words) for an association that was not established."""
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        source = getattr(primitive, "result_source", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        detail = f"result {result}, source {source}, reason {diagnostic}"
        if result == 0x02:
            return "transient", f"association rejected transiently ({detail})"
        return "permanent", f"association rejected permanently ({detail})"
    if assoc.is_aborted:
        return "transient", "association aborted by the peer or the network before it was established"
    return "transient", "no association: connection refused or timed out"


class _AssociationMeter:
    """Counts one of the node's own associations (role ``scu``) in :mod:`node.telemetry`, from pynetdicom's
    events: the answer to the request (accepted, rejected, or :meth:`unanswered`: failed), the
    association open while it lasts, and an A-ABORT of an accepted one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answered = False
        self._open = False

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_ACCEPTED, self._accepted), (evt.EVT_REJECTED, self._rejected),
                (evt.EVT_ABORTED, self._aborted), (evt.EVT_CONN_CLOSE, self._closed)]

    def _accepted(self, _event: evt.Event) -> None:
        ASSOCIATIONS.labels(role="scu", result="accepted").inc()
        with self._lock:
            self._answered = self._open = True
            ASSOCIATIONS_ACTIVE.labels(role="scu").inc()

    def _rejected(self, _event: evt.Event) -> None:
        self._answered = True
        ASSOCIATIONS.labels(role="scu", result="rejected").inc()

    def _aborted(self, _event: evt.Event) -> None:
        if self._open:
            ASSOCIATIONS_ABORTED.labels(role="scu").inc()

    def _closed(self, _event: evt.Event) -> None:
        with self._lock:
            if self._open:
                self._open = False
                ASSOCIATIONS_ACTIVE.labels(role="scu").dec()

    def unanswered(self) -> None:
        """After the request: count it ``failed`` when the peer neither accepted nor rejected it."""
        if not self._answered:
            ASSOCIATIONS.labels(role="scu", result="failed").inc()


def _associate(
    target: Target,
    calling_ae: str,
    timeout_s: float,
    contexts: list[PresentationContext],
    patients: PatientIdentifiers,
) -> tuple[Association | None, tuple[str, str]]:
    """An association with ``target`` proposing ``contexts`` (``timeout_s`` bounds connecting, negotiation and
    each response), or (None, (kind, words)) when none was established; ``patients``' identifiers are
    replaced in the words of a connection error."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.requested_contexts = contexts
    tls_args = (target.ssl_context, target.host) if target.ssl_context is not None else None
    connected: list[bool] = []  # EVT_CONN_OPEN fires once the TCP connection is made
    meter = _AssociationMeter()
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True)), *meter.handlers()])
    except (OSError, ssl.SSLError) as exc:
        meter.unanswered()
        return None, ("transient", f"cannot connect: {clean_peer_text(str(exc), patients, quoted=False)}")
    meter.unanswered()
    if not assoc.is_established and not connected:
        return None, ("transient", f"cannot connect to {target.host}:{target.port} "
                                   "(connection refused, host unreachable or timed out)")
    if not assoc.is_established:
        return None, _association_failure(assoc)
    return assoc, ("", "")


def destination_targets(settings: Any) -> dict[str, Target]:
    """The ``destinations`` of ``settings`` (a :class:`node.config.Settings`) as targets by name; those with
    ``tls`` use the client context of ``settings.tls`` (:func:`node.dicom.tls.client_context`)."""
    from node.dicom.tls import client_context

    return {
        d.name: Target(d.name, d.ae_title, d.host, d.port, client_context(settings.tls) if d.tls else None)
        for d in settings.destinations
    }


@dataclass(frozen=True)
class EchoOutcome:
    """What a C-ECHO to ``target`` gave: ``ok`` when the peer answered Success; ``words`` say what
    happened (the node's words, never the peer's text); ``elapsed_s`` from connecting to the answer."""

    target: Target
    ok: bool
    words: str
    elapsed_s: float

    def describe(self) -> str:
        """``C-ECHO to ORTHANC@127.0.0.1:4242: Success in 12 ms`` or ``...: failed: <why>``."""
        where = f"C-ECHO to {self.target.ae_title}@{self.target.host}:{self.target.port}"
        if self.ok:
            return f"{where}: {self.words} in {self.elapsed_s * 1000:.0f} ms"
        return f"{where} failed: {self.words}"


def echo(target: Target, *, calling_ae: str, timeout_s: float = 10.0) -> EchoOutcome:
    """Verify ``target`` with a C-ECHO (Verification SOP Class) over a new association, as results are sent
    (same AE titles, TLS, timeouts of ``timeout_s`` seconds); never raises for network or peer problems."""
    import time

    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    started = time.monotonic()
    assoc, (_, words) = _associate(target, calling_ae, timeout_s, [build_context(Verification)], PatientIdentifiers())
    if assoc is None:
        return EchoOutcome(target, False, words, time.monotonic() - started)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    elapsed = time.monotonic() - started
    if code is None:
        return EchoOutcome(target, False, "no answer: timed out or association aborted", elapsed)
    if code != 0x0000:
        return EchoOutcome(target, False, f"answered status 0x{int(code):04X}", elapsed)
    return EchoOutcome(target, True, "Success", elapsed)


def send_files(
    target: Target,
    paths: Sequence[Path],
    *,
    calling_ae: str,
    timeout_s: float = 30.0,
    enhanced_sr: EnhancedSRConverter | None = None,
) -> list[SendOutcome]:
    """Send the DICOM files at ``paths`` to ``target`` over one association.

    ``timeout_s`` bounds connecting, association negotiation and each
    C-STORE response (seconds). ``enhanced_sr`` re-encodes a Comprehensive 3D
    SR for a peer that accepts only Enhanced SR (without it, Enhanced SR is not
    proposed). Returns one outcome per path, in order; never raises for network
    or peer problems.
    """
    datasets = [pydicom.dcmread(str(p)) for p in paths]
    if not datasets:
        return []
    patients = [PatientIdentifiers.from_dataset(ds) for ds in datasets]
    everyone = PatientIdentifiers.union(patients)
    with everyone.active():  # pynetdicom's records during this association lose these identifiers too
        return _send_datasets(target, datasets, patients, everyone, calling_ae, timeout_s, enhanced_sr)


def _send_datasets(
    target: Target,
    datasets: Sequence[Dataset],
    patients: Sequence[PatientIdentifiers],
    everyone: PatientIdentifiers,
    calling_ae: str,
    timeout_s: float,
    enhanced_sr: EnhancedSRConverter | None,
) -> list[SendOutcome]:
    """:func:`send_files` on read datasets; ``patients[i]`` are the identifiers of ``datasets[i]``,
    ``everyone`` those of the whole batch (for texts that concern the association)."""
    assoc, failure = _associate(target, calling_ae, timeout_s, _contexts_for(datasets, enhanced_sr is not None), everyone)
    if assoc is None:
        kind, words = failure
        return [SendOutcome(str(ds.SOPInstanceUID), kind, None, words) for ds in datasets]

    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    outcomes: list[SendOutcome] = []
    try:
        for ds, patient in zip(datasets, patients):
            outcomes.append(_store_one(assoc, ds, accepted, enhanced_sr, patient))
            if not assoc.is_established:  # aborted mid-batch: the rest waits for the next attempt
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for ds in datasets[len(outcomes) :]:
        outcomes.append(SendOutcome(str(ds.SOPInstanceUID), "transient", None, "association lost before sending"))
    return outcomes


def _store_one(
    assoc: Association,
    ds: Dataset,
    accepted: set[str],
    enhanced_sr: EnhancedSRConverter | None,
    patient: PatientIdentifiers,
) -> SendOutcome:
    uid_ = str(ds.SOPInstanceUID)
    sop_class = str(ds.SOPClassUID)
    if (
        enhanced_sr is not None
        and sop_class not in accepted
        and sop_class == COMPREHENSIVE_3D_SR
        and ENHANCED_SR in accepted
    ):
        try:
            ds = enhanced_sr(ds)
        except ValueError as exc:
            return SendOutcome(uid_, "permanent", None,
                               f"the destination refuses 3D SR and {clean_peer_text(str(exc), patient, quoted=False)}")
        sop_class = ENHANCED_SR
    if sop_class not in accepted:
        return SendOutcome(uid_, "permanent", None, f"the destination does not accept SOP class {sop_class}")
    try:
        status_ds = assoc.send_c_store(ds)
    except (ValueError, RuntimeError) as exc:  # e.g. no context with a usable transfer syntax
        return SendOutcome(uid_, "permanent", None, f"cannot send: {clean_peer_text(str(exc), patient, quoted=False)}",
                           sop_class)
    status = getattr(status_ds, "Status", None) if status_ds is not None else None
    if status is None:
        return SendOutcome(uid_, "transient", None, "no response (timeout or connection lost)", sop_class)
    status = int(status)
    kind = classify_status(status)
    error = "" if kind == "sent" else f"destination answered 0x{status:04X}"
    # the peer's words: the patient's identifiers out before the text goes anywhere
    comment = clean_peer_text(getattr(status_ds, "ErrorComment", None), patient)
    return SendOutcome(uid_, kind, status, error, sop_class, comment)



# ---------------------------------------------------------------------------
# The export loop: ledger sends -> associations -> recorded outcomes


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient failures: ``initial_s`` doubling up to ``max_s`` seconds;
    after ``max_attempts`` attempts a send goes to ``dead_letter`` whatever the cause."""

    initial_s: float = 5.0
    max_s: float = 300.0
    max_attempts: int = 10

    def delay_s(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return float(min(self.max_s, self.initial_s * (2 ** max(0, attempts - 1))))

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """The ``send_retry`` setting of a :class:`node.config.Settings`."""
        r = settings.send_retry
        return cls(float(r.initial_s), float(r.max_s), int(r.max_attempts))


class Exporter:
    """Sends the ledger's due sends, one association per destination and batch.

    ``targets`` maps destination names (as in the ledger) to :class:`Target`;
    ``enhanced_sr`` is the Enhanced SR fallback given to :func:`send_files`.
    Outcomes are recorded per send: ``sent``; ``retrying`` with the next
    attempt time; ``dead_letter`` for permanent failures, for destinations no
    longer configured, and after ``retry.max_attempts`` attempts. A job whose
    sends are all ``sent`` becomes ``sent``; one whose sends are all finished
    with some dead-lettered becomes ``dead``.

    The destination's comment (:attr:`SendOutcome.comment`, already cleaned of the
    patient's identifiers) goes only to the send's protected ``peer_text`` in the
    ledger; the ledger's ``last_error``, the log and the audit log get the node's
    words and say that a comment was kept (``cardionode status --peer-text`` shows it).
    """

    def __init__(
        self,
        ledger: Ledger,
        targets: dict[str, Target],
        *,
        calling_ae: str,
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = 30.0,
        batch_size: int = 50,
        audit: AuditLog | None = None,
        enhanced_sr: EnhancedSRConverter | None = None,
    ) -> None:
        self.ledger = ledger
        self.targets = targets
        self.calling_ae = calling_ae
        self.retry = retry
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.audit = audit
        self.enhanced_sr = enhanced_sr
        silence_pynetdicom()  # pynetdicom's loggers redact, with or without setup_logging

    def run_once(self) -> int:
        """Attempt every due send once; returns the number of attempts made."""
        due = self.ledger.sends.due()
        by_destination: dict[str, list[Send]] = {}
        for send in due:
            by_destination.setdefault(send.destination, []).append(send)
        jobs: set[int] = set()
        attempts = 0
        for name, sends in by_destination.items():
            target = self.targets.get(name)
            for start in range(0, len(sends), self.batch_size):
                batch = sends[start : start + self.batch_size]
                jobs.update(s.job_id for s in batch)
                attempts += len(batch)
                if target is None:
                    for send in batch:
                        self.ledger.sends.record_attempt(
                            send.id, "dead_letter", error=f"destination {name!r} is no longer configured"
                        )
                    continue
                self._send_batch(target, batch, utcnow())
        for job_id in jobs:
            self._settle_job(job_id)
        return attempts

    def _send_batch(self, target: Target, sends: list[Send], now: datetime) -> None:
        paths: list[Path] = []
        ready: list[Send] = []
        for send in sends:
            output = self.ledger.outputs.get(send.output_uid)
            if output is None or not Path(output.path).is_file():
                self.ledger.sends.record_attempt(
                    send.id, "dead_letter", error="the result object is missing from the outbox"
                )
                continue
            paths.append(Path(output.path))
            ready.append(send)
        if not ready:
            return
        outcomes = send_files(
            target, paths, calling_ae=self.calling_ae, timeout_s=self.timeout_s, enhanced_sr=self.enhanced_sr
        )
        sent = 0
        failures: dict[tuple[int, str], list[int]] = {}  # (log level, words) -> send ids: one line per attempt
        for send, outcome in zip(ready, outcomes):
            EXPORT_ATTEMPTS.labels(destination=target.name, outcome="success" if outcome.ok else outcome.kind).inc()
            if outcome.ok:
                self.ledger.sends.record_attempt(send.id, "sent", status=outcome.status, peer_text=outcome.comment)
                sent += 1
                continue
            attempt = send.attempts + 1
            error = outcome.error + (PEER_TEXT_KEPT if outcome.comment else "")
            if outcome.kind == "permanent" or attempt >= self.retry.max_attempts:
                why = error if outcome.kind == "permanent" else f"{error}; gave up after {attempt} attempts"
                self.ledger.sends.record_attempt(
                    send.id, "dead_letter", status=outcome.status, error=why, peer_text=outcome.comment
                )
                failures.setdefault((logging.WARNING, f"dead-lettered: {why}"), []).append(send.id)
                self._audit("send.dead_letter", send, target, error=why, peer_comment=bool(outcome.comment))
            else:
                delay = self.retry.delay_s(attempt)
                self.ledger.sends.record_attempt(
                    send.id, "retrying", status=outcome.status, error=error, peer_text=outcome.comment,
                    next_attempt_at=now + timedelta(seconds=delay),
                )
                failures.setdefault((logging.INFO, f"failed ({error}); retry in {delay:.0f} s"), []).append(send.id)
        for (level, words), ids in failures.items():
            _log.log(level, "send%s %s to %s (%s:%d) %s", "s" if len(ids) > 1 else "", ", ".join(map(str, ids)),
                     target.name, target.host, target.port, words)
        if sent:
            _log.info("sent %d of %d objects to %s", sent, len(ready), target.name)
            self._audit_batch(target, sent)

    def _settle_job(self, job_id: int) -> None:
        sends = self.ledger.sends.find(job_id=job_id)
        states = {s.state for s in sends}
        if not sends or states & {"pending", "retrying"}:
            return
        try:
            if states == {"sent"}:
                job = self.ledger.jobs.transition(job_id, "sent", f"{len(sends)} sends done", expected_from=("reported",))
                self._observe_result_time(job.study_uid, job.pipeline)
            else:
                dead = sum(1 for s in sends if s.state == "dead_letter")
                self.ledger.jobs.transition(
                    job_id, "dead", f"{dead} of {len(sends)} sends dead-lettered; see `cardionode status`",
                    expected_from=("reported", "sent"),
                )
        except LedgerError as exc:
            _log.info("job %d not settled: %s", job_id, exc)

    def _observe_result_time(self, study_uid: str, pipeline: str) -> None:
        """Observe the seconds from the study's last received instance to now, when the destinations have
        acknowledged every result of its job (``cardionode_last_image_to_result_seconds``)."""
        last = self.ledger.studies.last_instance_time(study_uid)
        if last is not None and (seconds := (utcnow() - last).total_seconds()) >= 0:
            LAST_IMAGE_TO_RESULT.labels(pipeline=pipeline).observe(seconds)

    def _audit(self, event: str, send: Send, target: Target, **fields: object) -> None:
        if self.audit is not None:
            self.audit.record(event, send=send.id, job=send.job_id, destination=target.name, **fields)

    def _audit_batch(self, target: Target, sent: int) -> None:
        if self.audit is not None:
            self.audit.record("send.sent", destination=target.name, objects=sent)
