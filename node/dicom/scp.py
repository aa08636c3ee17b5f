"""The DICOM listener: association policy, the AE, and the DICOM services it offers (pynetdicom).

Association policy (checked when the A-ASSOCIATE-RQ arrives, each refusal
logged with its reason, audited and recorded in the ledger's ``rejections``):

* Called AE title must be the node's (else rejected permanent, "called AE not recognised").
* Calling AE title must belong to a configured peer, and come from the peer's
  host when one is set (else rejected permanent, "calling AE not recognised").
  With no peers configured any calling AE is accepted.
* At most ``max_associations`` at once (else rejected transient, "local limit exceeded"),
  counting the associations whose request has arrived: a connection that has not
  sent its A-ASSOCIATE-RQ yet holds no association slot.
* Free space in ``data_dir`` at least ``disk_watermark_mb`` (else rejected
  transient, "temporary congestion").

Before any of this, the association server (:mod:`node.dicom.server`) limits
each connection: the TLS handshake (``tls_handshake_timeout_s``, in the
connection's own thread, never in the accept loop), the time to the whole
request (``acse_timeout_s``, ARTIM) and to each later PDU (``pdu_timeout_s``), the
request's size, the number of connections still waiting for their request, and
the AE titles' bytes (a malformed one is rejected, recorded and audited like the
policy's refusals). Every refusal is counted by reason
(:class:`node.dicom.refusals.RefusalCounts`, shown by ``cardionode status``).

Presentation contexts the peer proposes and the node does not accept are
logged and recorded as rejections. The services on an accepted association are
registered per DICOM service, the pynetdicom way (:mod:`node.dicom.services`):
Verification (C-ECHO), Storage (C-STORE, :mod:`node.dicom.storage`, whose
statuses and checks are documented there), and whatever ``services`` the
caller adds (e.g. a UPS Push SCP). When an association is released or
aborted, its peer and the services' counts (stored, duplicates, refused, ...)
are logged and audited.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from pynetdicom import AE, evt

from node.config import Settings
from node.dicom.audit import AuditLog
from node.dicom.logs import silence_pynetdicom
from node.dicom.refusals import RefusalCounts
from node.dicom.server import ConnectionLimits, ConnectionRefusal, GuardedAssociationServer, pending_limit
from node.dicom.services import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    DicomService,
    Peers,
    VerificationService,
    audit_quietly,
)
from node.dicom.storage import Describe, StorageService, disk_space_problem
from node.dicom.tls import server_context
from node.ledger import InstanceMeta, Ledger
from node.telemetry import ASSOCIATIONS, ASSOCIATIONS_ABORTED, ASSOCIATIONS_ACTIVE

__all__ = ["MAXIMUM_PDU_BYTES", "AssociationPolicy", "DicomListener", "Refusal"]

_log = logging.getLogger("cardionode.scp")

#: the Maximum Length the node announces for the P-DATA-TF PDUs it receives (bytes); longer ones are refused
MAXIMUM_PDU_BYTES = 1 << 20


@dataclass(frozen=True)
class Refusal:
    """Why an association is refused, with the A-ASSOCIATE-RJ (result, source, diagnostic) and the
    reason's code (a key of :data:`node.dicom.refusals.REASONS`)."""

    result: int
    source: int
    diagnostic: int
    reason: str
    code: str


class AssociationPolicy:
    """Decides whether an association request is accepted (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._resolved: dict[str, set[str]] = {}

    def disk_low(self) -> str | None:
        """A reason when free space is below the watermark, else None."""
        return disk_space_problem(self.settings.data_dir, self.settings.disk_watermark_mb)

    def _addresses_of(self, host: str) -> set[str]:
        if host not in self._resolved:
            try:
                self._resolved[host] = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
            except OSError:
                self._resolved[host] = {host}
        return self._resolved[host]

    def check(self, calling_ae: str, called_ae: str, address: str, active: int) -> Refusal | None:
        """Return the refusal for this request, or None to accept it.

        ``active``: associations open as acceptor whose request has arrived, this one included.
        """
        s = self.settings
        if called_ae.strip() != s.ae_title.strip():
            return Refusal(
                0x01, 0x01, 0x07, f"called AE title {called_ae.strip()!r} is not this node's ({s.ae_title!r})", "called-ae"
            )
        if s.peers:
            peers = [p for p in s.peers if calling_ae.strip() in (ae.strip() for ae in p.ae_titles)]
            if not peers:
                return Refusal(
                    0x01, 0x01, 0x03, f"calling AE title {calling_ae.strip()!r} is not in the allowed peers", "calling-ae"
                )
            if not any(p.host is None or address in self._addresses_of(p.host) for p in peers):
                hosts = ", ".join(str(p.host) for p in peers)
                return Refusal(
                    0x01,
                    0x01,
                    0x03,
                    f"calling AE title {calling_ae.strip()!r} is allowed only from {hosts}, not {address}",
                    "calling-ae",
                )
        if active > s.max_associations:
            return Refusal(
                0x02,
                0x03,
                0x02,
                f"{active - 1} associations already open (max_associations = {s.max_associations})",
                "local-limit",
            )
        low = self.disk_low()
        if low:
            return Refusal(0x02, 0x03, 0x01, low, "disk-low")
        return None


class DicomListener:
    """The node's DICOM listener for ``settings``: Verification, Storage into the spool and
    ``ledger``, and any further ``services``.

    ``describe`` and ``on_instance_stored`` configure the storage service
    (:class:`node.dicom.storage.StorageService`, also :attr:`storage`):
    ``describe(ds)`` gives the routing attributes the ledger keeps for each
    stored instance (the node passes :func:`node.pipelines.routing.routing_attributes`;
    the listener itself knows no medicine), and ``on_instance_stored(meta)`` is
    called after each *new* instance is spooled and recorded. ``services`` are
    offered beside them (:class:`node.dicom.services.DicomService`: presentation
    contexts and ``(event, handler)`` pairs), e.g. a UPS Push SCP.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        describe: Describe,
        *,
        audit: AuditLog | None = None,
        on_instance_stored: Callable[[InstanceMeta], None] | None = None,
        services: Sequence[DicomService] = (),
    ) -> None:
        silence_pynetdicom()  # whether or not the caller set up logging, no data sets in the logs
        self.settings = settings
        self.ledger = ledger
        self.audit = audit
        self.policy = AssociationPolicy(settings)
        self.storage = StorageService(settings, ledger, describe, audit=audit, on_instance_stored=on_instance_stored)
        self.services: list[DicomService] = [VerificationService(), self.storage, *services]
        self.peers = Peers([counter for service in self.services for counter in service.counters])
        self.refusals = RefusalCounts(settings.refusal_counts_path)
        self.limits = ConnectionLimits(
            handshake_timeout_s=settings.tls_handshake_timeout_s,
            request_timeout_s=settings.acse_timeout_s,
            pdu_timeout_s=settings.pdu_timeout_s,
            max_pdu_bytes=MAXIMUM_PDU_BYTES,
            max_pending=pending_limit(settings.max_associations),
        )
        self._server: GuardedAssociationServer | None = None
        self.ae = self._make_ae()

    # ------------------------------------------------------------------ set-up
    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.require_called_aet = False  # the policy checks it, with a logged reason
        # the policy and the server's pending limit decide first (pynetdicom counts every connection)
        ae.maximum_associations = s.max_associations + self.limits.max_pending + 1
        ae.acse_timeout = s.acse_timeout_s  # the ARTIM timer; the server starts it at the connection
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
        for service in self.services:
            for context in service.contexts():
                ae.add_supported_context(str(context.abstract_syntax), context.transfer_syntax)
        return ae

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``port = 0``)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Prepare the services, then listen in background threads; returns once the socket is bound."""
        for service in self.services:
            service.prepare()
        s = self.settings
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        for service in self.services:
            handlers += service.handlers(self.peers)
        ssl_context = server_context(s.tls) if s.tls.enabled else None
        self.refusals.flush()  # status shows the counts since this start, zero until something is refused
        server = cast(GuardedAssociationServer, self.ae.make_server(
            (s.bind_address, s.port),
            evt_handlers=handlers,
            ssl_context=ssl_context,
            server_class=GuardedAssociationServer,
            limits=self.limits,
            max_associations=s.max_associations,
            on_refusal=self._on_connection_refused,
        ))
        # as AE.start_server(block=False) does: serve in a daemon thread, and be one of the AE's
        # servers (AssociationServer.shutdown removes itself from that list)
        self.ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="AcceptorServer@listener", daemon=True).start()
        self._server = server
        ASSOCIATIONS_ACTIVE.labels(role="scp").set_function(self.open_associations)
        _log.info(
            "listening as %s on %s:%d (%s), spool %s",
            s.ae_title,
            s.bind_address,
            self.port,
            "TLS" if ssl_context else "plain TCP",
            self.storage.spool.root,
        )
        audit_quietly(
            self.audit, "listener.started", ae_title=s.ae_title, address=s.bind_address, port=self.port, tls=bool(ssl_context)
        )

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            ASSOCIATIONS_ACTIVE.labels(role="scp").set_function(lambda: 0.0)
            self.storage.close()
            self.refusals.close()
            audit_quietly(self.audit, "listener.stopped", ae_title=self.settings.ae_title)

    def serve_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        stop.wait()
        self.stop()

    # ------------------------------------------------------------------ association events
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
        if rq is None:  # pynetdicom sets it before EVT_REQUESTED
            raise RuntimeError("association request event without the A-ASSOCIATE request primitive")
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        address = str(assoc.requestor.address)
        refusal = self.policy.check(calling, called, address, self.open_associations())
        if refusal is None:
            self.peers.open(assoc, calling, address)
            return
        self._record_refusal(refusal.code, refusal.reason, calling, called, address)
        assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
        assoc.kill()  # as pynetdicom does after its own rejections: waits until the A-ASSOCIATE-RJ is sent

    def open_associations(self) -> int:
        """Associations open as acceptor whose A-ASSOCIATE-RQ has arrived (what ``max_associations`` limits)."""
        server = self._server
        if server is None:
            return 0
        return len([a for a in server.active_associations if a.is_acceptor and a.requestor.primitive is not None])

    def _record_refusal(self, code: str, reason: str, calling: str, called: str, address: str) -> None:
        """Count, log, record in the ledger and audit the refusal of an association request."""
        self.refusals.add(code)
        ASSOCIATIONS.labels(role="scp", result="rejected").inc()
        _log.warning("refused association from %s (%s) to %s: %s", calling, address, called, reason)
        try:
            self.ledger.rejections.record(f"association refused: {reason}", 0, calling_ae=calling, peer_address=address)
        except Exception:
            _log.exception("cannot record the association refusal in the ledger")
        audit_quietly(self.audit, "association.refused", calling_ae=calling, address=address, reason=reason, refusal=code)

    def _on_connection_refused(self, refusal: ConnectionRefusal) -> None:
        """A refusal of the association server: a malformed AE title is an association refusal (recorded
        and audited); the others are counted and logged (the 10 first of each reason, then at every
        doubling), never recorded one by one, so that a flood cannot fill the ledger."""
        if refusal.reason == "malformed-ae":
            self._record_refusal(refusal.reason, refusal.detail, refusal.calling_ae, refusal.called_ae, refusal.address)
            return
        count = self.refusals.add(refusal.reason)
        if count <= 10 or count & (count - 1) == 0:
            _log.warning("refused connection from %s (%s): %s [%d so far]", refusal.address, refusal.reason, refusal.detail, count)

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        peer = self.peers.get(assoc)
        calling = peer.calling_ae if peer else str(assoc.requestor.ae_title).strip()
        address = peer.address if peer else ""
        for cx in assoc.rejected_contexts:
            syntaxes = ", ".join(cx.transfer_syntax)[:200]
            reason = f"presentation context rejected: {cx.abstract_syntax} with {syntaxes} not supported"
            _log.warning("association from %s (%s): %s", calling, address, reason)
            try:
                self.ledger.rejections.record(
                    reason, 0, calling_ae=calling, peer_address=address, sop_class_uid=str(cx.abstract_syntax)
                )
            except Exception:
                _log.exception("cannot record the rejected context in the ledger")
        ASSOCIATIONS.labels(role="scp", result="accepted").inc()
        _log.info("association accepted from %s (%s)", calling, address)
        audit_quietly(self.audit, "association.accepted", calling_ae=calling, address=address)

    def _on_closed(self, event: evt.Event) -> None:
        peer = self.peers.close(event.assoc)
        if peer is None:
            return
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if how == "aborted":
            ASSOCIATIONS_ABORTED.labels(role="scp").inc()
        counted = ", ".join(f"{n} {counter}" for counter, n in peer.counts.items()) or "nothing counted"
        _log.info("association from %s (%s) %s: %s", peer.calling_ae, peer.address, how, counted)
        audit_quietly(
            self.audit,
            f"association.{how}",
            calling_ae=peer.calling_ae,
            address=peer.address,
            **peer.counts,
            study_uids=sorted(peer.study_uids),
        )
