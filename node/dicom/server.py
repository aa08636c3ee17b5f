"""The listener's association server: no peer can hold the accept loop, a connection or an association slot
for longer than the time limits allow.

pynetdicom's :class:`~pynetdicom.transport.ThreadedAssociationServer` runs the TLS
handshake in its accept loop (``get_request`` wraps the accepted socket), starts
two threads per connection before a byte has arrived, and reads each PDU with
blocking ``recv`` calls: a connection that sends nothing stalls every TLS client;
one that sends part of a PDU and stalls holds its threads and its association
slot for ever (the ARTIM timer is checked only between reads); the listen backlog
is 5, so a burst of connections waits for SYN retransmissions; and the whole
A-ASSOCIATE-RQ is read, at any announced length, before anything is checked.
:class:`GuardedAssociationServer` (passed to ``AE.make_server`` as ``server_class``)
changes this, using socketserver's and pynetdicom's documented hooks only:

* ``get_request`` accepts and nothing more; the **TLS handshake** runs in the
  connection's own thread, limited to ``handshake_timeout_s`` (failures and time-outs
  are counted and closed);
* the connection's thread then **reads the start of the A-ASSOCIATE-RQ itself**,
  within the ARTIM limit (``request_timeout_s`` from the connection, i.e. after the
  handshake): the first byte must be 0x01, the announced length at least the 68 bytes
  of the fixed fields and at most ``max_request_bytes`` (so a request is never read
  unchecked), and the Called and Calling AE titles must be valid AE values. Only then
  is the connection given to pynetdicom (the 42 bytes read are served again to its
  reader). Garbage, stalled and oversized connections are closed at once by that
  thread, without pynetdicom threads; a malformed AE title is answered
  A-ASSOCIATE-RJ (rejected-permanent, service-user, called/calling-AE-title-not-
  recognized) and reported to ``on_refusal`` so that the listener records and
  audits it like its other refusals;
* the socket given to pynetdicom is a :class:`GuardedSocket` (TCP) or
  :class:`GuardedSSLSocket` (TLS, through the context's ``sslsocket_class``) whose
  ``recv`` follows the PDU framing (:class:`PduGuard`): the rest of the request must
  arrive by the same ARTIM deadline, each later PDU within ``pdu_timeout_s`` of its
  first byte (independently of how long a transfer of many PDUs takes: the idle time
  between PDUs is pynetdicom's ``network_timeout``), a P-DATA-TF may not be longer
  than the maximum PDU size the node announced (``max_pdu_bytes``), and an unknown PDU
  type closes the connection. Sends time out after ``pdu_timeout_s`` as well;
* connections still waiting for their request are limited to ``max_pending``
  (``verify_request``); they do not count against ``max_associations``, which the
  listener's policy applies to associations whose request has arrived;
* the listen backlog (``request_queue_size``) is ``max_associations + max_pending``,
  so a burst of that many clients is accepted by the kernel at once.

Every refusal is reported to ``on_refusal`` with a reason code of
:data:`node.dicom.refusals.REASONS`.

What this relies on in pynetdicom 3.0 (pinned by ``tests/dicom/test_connection_limits.py``):
``AE.make_server`` passes extra keywords to ``server_class``; the request handler wraps
``request`` in an ``AssociationSocket`` and reads each PDU as ``recv(6)`` then ``recv(length)``
(in chunks), only after ``select`` (or, for a TLS socket, ``pending()``) says data is ready
— which is why 42 pushed-back bytes are served through ``recv`` and counted by
``pending()``, and why at least the rest of the request is left in the kernel; and an AE
title field pynetdicom cannot decode makes it answer A-ABORT, so the server checks them first.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.transport import ThreadedAssociationServer

__all__ = [
    "MAX_REQUEST_BYTES",
    "MIN_PENDING",
    "PENDING_PER_ASSOCIATION",
    "ConnectionLimits",
    "ConnectionRefusal",
    "GuardedAssociationServer",
    "GuardedSSLSocket",
    "GuardedSocket",
    "PduGuard",
    "pending_limit",
    "shown_ae",
    "wire_ae_problem",
]

_log = logging.getLogger("cardionode.scp")

#: the longest A-ASSOCIATE-RQ read (bytes after the 6-byte PDU header): 128 presentation contexts with
#: a dozen transfer syntaxes each, extended negotiation and user identity fit with room to spare
MAX_REQUEST_BYTES = 256 * 1024
#: tolerance (bytes) on the length of a P-DATA-TF beyond the maximum PDU size the node announced
PDU_LENGTH_TOLERANCE = 4096

#: connections that may wait for their association request at once: at least this many, and at least
#: PENDING_PER_ASSOCIATION per allowed association (a burst of max_associations clients connects at once)
MIN_PENDING = 32
PENDING_PER_ASSOCIATION = 2

_HEADER = 6  # PDU type, reserved, 4-byte length
_RQ_FIXED = 68  # fixed fields of an A-ASSOCIATE-RQ after the header (PS3.8 9.3.2)
_RQ_PREFIX = 36  # protocol version, reserved, Called AE Title, Calling AE Title
_PDU_TYPES = range(0x01, 0x08)
_P_DATA_TF = 0x04


# --------------------------------------------------------------------------- AE titles on the wire
def wire_ae_problem(raw: bytes) -> str | None:
    """Why the 16 bytes of an AE title field of an A-ASSOCIATE-RQ are not a valid AE value, or None.

    Valid (PS3.5 AE, PS3.8 9.3.2): at most 16 characters of the default repertoire without
    control characters or backslash, leading and trailing spaces not significant, not all spaces.
    """
    if not raw.strip(b" "):
        return "is empty (only spaces)"
    if b"\x00" in raw:
        return "contains NUL bytes"
    if any(b < 0x20 or b == 0x7F for b in raw):
        return "contains control characters"
    if any(b > 0x7F for b in raw):
        return "contains non-ASCII bytes"
    if b"\\" in raw:
        return "contains a backslash"
    return None


def shown_ae(raw: bytes) -> str:
    """An AE title field as received, fit for logs: trailing spaces dropped, anything not printable
    ASCII escaped (``\\x00``, ``\\x1b``), so that no peer can write control sequences into a log."""
    text = raw.rstrip(b" ").decode("latin-1")
    return ascii(text)[1:-1]


# --------------------------------------------------------------------------- limits and refusals
def pending_limit(max_associations: int) -> int:
    """How many connections may wait for their association request at once, for ``max_associations``."""
    return max(MIN_PENDING, PENDING_PER_ASSOCIATION * max_associations)


@dataclass(frozen=True)
class ConnectionLimits:
    """Time and size limits of one connection (seconds, bytes); see the module docstring."""

    handshake_timeout_s: float  # TLS handshake, from the connection's thread start
    request_timeout_s: float  # ARTIM: the whole A-ASSOCIATE-RQ, from the connection (after TLS)
    pdu_timeout_s: float  # one later PDU, from its first byte; also each send
    max_pdu_bytes: int  # longest P-DATA-TF accepted (0: no limit)
    max_pending: int  # connections waiting for their request at once
    max_request_bytes: int = MAX_REQUEST_BYTES

    def backlog(self, max_associations: int) -> int:
        """The listen backlog for ``max_associations`` (the kernel caps it at ``net.core.somaxconn``)."""
        return max_associations + self.max_pending


@dataclass(frozen=True)
class ConnectionRefusal:
    """A connection the server refused: ``reason`` (a key of :data:`node.dicom.refusals.REASONS`),
    ``detail`` in words, the peer's ``address``; for ``malformed-ae`` also the AE title fields as
    received (:func:`shown_ae`) and the A-ASSOCIATE-RJ diagnostic sent."""

    reason: str
    detail: str
    address: str
    called_ae: str = ""
    calling_ae: str = ""
    diagnostic: int = 0


RefusalHandler = Callable[[ConnectionRefusal], None]


class ConnectionRefused(ConnectionAbortedError):
    """Raised by a guarded socket's ``recv`` once it has refused (and shut down) the connection;
    pynetdicom's reader takes it, as any ``OSError``, as the end of the transport connection."""


# --------------------------------------------------------------------------- the PDU framing guard
class PduGuard:
    """Follows the PDU framing of what a guarded socket returns, enforcing the limits.

    ``sock``: the guarded socket; ``started``: :func:`time.monotonic` when the request's ARTIM
    started (the connection, after TLS); ``on_refusal`` is told of every refusal.
    """

    def __init__(
        self, sock: socket.socket, limits: ConnectionLimits, address: str, on_refusal: RefusalHandler, started: float
    ) -> None:
        self.sock = sock
        self.limits = limits
        self.address = address
        self.on_refusal = on_refusal
        self.request_deadline = started + limits.request_timeout_s
        self.awaiting_request = True  # the A-ASSOCIATE-RQ has not arrived whole (and nothing ended the connection)
        self.stopping = False  # set by the server when it closes the connection on shutdown
        self._lock = threading.Lock()
        self._refused = False
        self._pushback = bytearray()  # bytes read by the server already, served again to pynetdicom first
        self._header = bytearray()  # header bytes of the current PDU read so far
        self._left = 0  # body bytes of the current PDU still to come
        self._in_body = False
        self._deadline: float | None = None  # of the current PDU
        self._first = True  # the current (or next) PDU is the request

    # ------------------------------------------------------------------ reading
    def pending(self) -> int:
        """Bytes to be served before the socket is read again."""
        return len(self._pushback)

    def push_back(self, data: bytes) -> None:
        """Serve ``data`` (already counted in the framing) before reading the socket again."""
        self._pushback[:0] = data

    def recv(self, read: Callable[[int], bytes], bufsize: int) -> bytes:
        """At most ``bufsize`` bytes, never past the current PDU's header or body, by ``read``
        (the socket's own ``recv``) within the current deadline; refuses and raises
        :class:`ConnectionRefused` when a limit is passed."""
        if self._refused:
            raise ConnectionRefused("the connection was refused")
        if self._pushback:
            data = bytes(self._pushback[:bufsize])
            del self._pushback[: len(data)]
            return data
        want = min(bufsize, _HEADER - len(self._header)) if not self._in_body else min(bufsize, self._left)
        if want <= 0:
            return b""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = self.request_deadline if self._first else now + self.limits.pdu_timeout_s
        remaining = self._deadline - now
        if remaining <= 0:
            self._timed_out()
        try:
            self.sock.settimeout(remaining)  # back to pdu_timeout_s (for sends) when the PDU is complete
            data = read(want)
        except TimeoutError:
            self._timed_out()
        if not data:
            self.awaiting_request = False  # the peer closed
            return data
        self._feed(data)
        return data

    def read_exactly(self, n: int) -> bytes | None:
        """``n`` bytes through :meth:`recv` (the socket's ``recv``), or None if the peer closed first."""
        chunks = bytearray()
        while len(chunks) < n:
            data = self.sock.recv(n - len(chunks))
            if not data:
                return None
            chunks += data
        return bytes(chunks)

    def skip_request(self) -> None:
        """Read and drop the rest of the request (within its deadline and size limit)."""
        while self._first and self._in_body and self._left > 0:
            if self.read_exactly(min(self._left, 65536)) is None:
                return

    def _feed(self, data: bytes) -> None:
        if not self._in_body:
            self._header += data
            kind = self._header[0]
            if self._first and kind != 0x01:
                self.refuse("not-dicom", f"first byte 0x{kind:02X} is not an A-ASSOCIATE-RQ")
            if kind not in _PDU_TYPES:
                self.refuse("invalid-pdu", f"unknown PDU type 0x{kind:02X}")
            if len(self._header) < _HEADER:
                return
            (length,) = struct.unpack(">I", self._header[2:6])
            self._check_length(kind, length)
            self._left, self._in_body = length, True
        else:
            self._left -= len(data)
        if self._left == 0:
            self._pdu_complete()

    def _check_length(self, kind: int, length: int) -> None:
        limits = self.limits
        if self._first:
            if length < _RQ_FIXED:
                self.refuse("not-dicom", f"A-ASSOCIATE-RQ of {length} bytes, shorter than its fixed fields")
            if length > limits.max_request_bytes:
                self.refuse(
                    "oversized-request", f"A-ASSOCIATE-RQ of {length} bytes (the node reads at most {limits.max_request_bytes})"
                )
        elif kind == _P_DATA_TF:
            if limits.max_pdu_bytes and length > limits.max_pdu_bytes + PDU_LENGTH_TOLERANCE:
                self.refuse("oversized-pdu", f"P-DATA-TF of {length} bytes (maximum announced {limits.max_pdu_bytes})")
        elif length > limits.max_request_bytes:
            self.refuse("oversized-pdu", f"PDU type 0x{kind:02X} of {length} bytes")

    def _pdu_complete(self) -> None:
        self._header.clear()
        self._in_body = False
        self._deadline = None
        self.sock.settimeout(self.limits.pdu_timeout_s)
        if self._first:
            self._first = False
            self.awaiting_request = False

    def _timed_out(self) -> None:
        if self._first:
            self.refuse("artim-timeout", f"association request not complete within {self.limits.request_timeout_s:g} s")
        self.refuse("pdu-timeout", f"PDU not complete within {self.limits.pdu_timeout_s:g} s of its first byte")

    # ------------------------------------------------------------------ ending
    def refuse(self, reason: str, detail: str, *, raise_: bool = True, shutdown: bool = True, **fields: Any) -> None:
        """Shut the connection down (unless ``shutdown`` is false: the caller answers first), tell
        ``on_refusal`` (once), and raise :class:`ConnectionRefused` (unless ``raise_`` is false)."""
        with self._lock:
            first_time = not self._refused
            self._refused = True
            self.awaiting_request = False
        if first_time:
            if shutdown:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.on_refusal(ConnectionRefusal(reason, detail, self.address, **fields))
        if raise_:
            raise ConnectionRefused(detail)

    def closing(self) -> None:
        """The socket is being closed (by pynetdicom, the server or the peer's end): a request still
        awaited past its deadline was ended by pynetdicom's ARTIM timer, which is counted."""
        with self._lock:
            awaited = self.awaiting_request and not self._refused and not self.stopping
            self.awaiting_request = False
            self._refused = True
        if awaited and time.monotonic() >= self.request_deadline - 0.05:
            self.on_refusal(
                ConnectionRefusal(
                    "artim-timeout", f"association request not complete within {self.limits.request_timeout_s:g} s", self.address
                )
            )

    def waiting(self, now: float) -> bool:
        """Whether this connection still waits for its request (a slot of ``max_pending``)."""
        return self.awaiting_request and now < self.request_deadline + 1.0


class _Guarded:
    """What :class:`GuardedSocket` and :class:`GuardedSSLSocket` add to their socket class."""

    guard: PduGuard | None = None

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        guard = self.guard
        if guard is None or flags:
            return super().recv(bufsize, flags)  # type: ignore[misc]
        return guard.recv(super().recv, bufsize)  # type: ignore[misc]

    def pending(self) -> int:
        guard = self.guard
        inner = super().pending() if hasattr(super(), "pending") else 0  # type: ignore[misc]
        return (guard.pending() if guard is not None else 0) + int(inner)

    def close(self) -> None:
        guard = self.guard
        if guard is not None:
            guard.closing()
        super().close()  # type: ignore[misc]


class GuardedSocket(_Guarded, socket.socket):
    """A TCP socket whose ``recv`` is limited by its :class:`PduGuard` (``guard``)."""


class GuardedSSLSocket(_Guarded, ssl.SSLSocket):  # type: ignore[misc]  # recv(buflen=) there, recv(bufsize=) here
    """A TLS socket whose ``recv`` is limited by its :class:`PduGuard` (``guard``); the server sets
    it as its context's ``sslsocket_class``."""


# --------------------------------------------------------------------------- the server
class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the limits of :class:`ConnectionLimits`
    (see the module docstring). Made by ``AE.make_server(..., server_class=GuardedAssociationServer,
    limits=..., max_associations=..., on_refusal=...)``; ``ssl_context`` (optional) is used for
    the handshake in each connection's thread, and its ``sslsocket_class`` is set to
    :class:`GuardedSSLSocket`.
    """

    # a connection's thread ends by its own deadlines: stopping the server does not wait for it
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[evt.EventHandlerType] | None = None,
        request_handler: Any = None,
        *,
        limits: ConnectionLimits,
        max_associations: int,
        on_refusal: RefusalHandler,
    ) -> None:
        self.limits = limits
        self.on_refusal = on_refusal
        self.request_queue_size = limits.backlog(max_associations)  # read by listen() in the base __init__
        self._lock = threading.Lock()
        self._admitting = 0  # connections accepted whose guard is not registered yet (TLS handshake included)
        self._closing = False
        self._guards: weakref.WeakSet[PduGuard] = weakref.WeakSet()
        if ssl_context is not None:
            ssl_context.sslsocket_class = GuardedSSLSocket
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers=evt_handlers, request_handler=request_handler)
        self.bind(evt.EVT_CONN_OPEN, self._artim_from_connection)

    # ------------------------------------------------------------------ accept loop (must never block)
    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept the connection; no TLS here (the handshake runs in the connection's thread)."""
        return socketserver.TCPServer.get_request(self)

    def pending_connections(self) -> int:
        """Connections accepted (in their TLS handshake, say) or still waiting for their association request."""
        now = time.monotonic()
        with self._lock:
            return self._admitting + sum(1 for guard in list(self._guards) if guard.waiting(now))

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) the connection when ``max_pending`` connections already wait for their request;
        else count it as pending from now on (until its guard counts it, or it ends)."""
        if self.pending_connections() < self.limits.max_pending:
            with self._lock:
                self._admitting += 1
            return True
        self.on_refusal(
            ConnectionRefusal(
                "pending-limit",
                f"{self.limits.max_pending} connections already wait for their association request",
                str(client_address[0]),
            )
        )
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread (socketserver's ThreadingMixIn)."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._admitted(None)  # no thread: nothing will count it down
            raise

    def _admitted(self, guard: PduGuard | None) -> None:
        """The connection stops counting as admitting: its ``guard`` (if any) counts it from now on."""
        with self._lock:
            self._admitting -= 1
            if guard is not None:
                self._guards.add(guard)

    # ------------------------------------------------------------------ the connection's thread
    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """TLS handshake and the start of the request (:meth:`admit`), then pynetdicom's request handler."""
        sock = self.admit(request, str(client_address[0]))
        if sock is None:
            return
        if self._closing:  # stopped while this connection was admitted
            self._close(sock)
            return
        try:
            self.finish_request(sock, client_address)
        except Exception:
            self.handle_error(sock, client_address)
            self.shutdown_request(sock)

    def admit(self, request: socket.socket, address: str) -> socket.socket | None:
        """The guarded socket of a connection whose request started well, or None (refused or closed)."""
        sock: GuardedSocket | GuardedSSLSocket | None = None
        guard: PduGuard | None = None
        try:
            try:
                sock = self._handshake(request, address) if self.ssl_context is not None else GuardedSocket(fileno=request.detach())
                if sock is None:
                    return None
                guard = PduGuard(sock, self.limits, address, self.on_refusal, time.monotonic())
                sock.guard = guard
            finally:
                self._admitted(guard)
            sock.settimeout(self.limits.pdu_timeout_s)
            if self._request_starts_well(guard):
                return sock
        except ConnectionRefused:
            pass  # the guard has reported it
        except OSError as exc:
            _log.debug("connection from %s ended before its request: %s", address, exc)
        except Exception:
            _log.exception("cannot admit the connection from %s", address)
        for item in (sock, request):  # request is detached (a no-op to close) once wrapped
            if item is not None:
                self._close(item)
        return None

    def _handshake(self, request: socket.socket, address: str) -> GuardedSSLSocket | None:
        context = self.ssl_context
        assert context is not None
        limit = self.limits.handshake_timeout_s
        try:
            request.settimeout(limit)  # CPython bounds the whole handshake by the socket's timeout
            wrapped = context.wrap_socket(request, server_side=True)
            assert isinstance(wrapped, GuardedSSLSocket)  # the context's sslsocket_class
            return wrapped
        except TimeoutError:
            self.on_refusal(ConnectionRefusal("tls-timeout", f"TLS handshake not complete within {limit:g} s", address))
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.on_refusal(ConnectionRefusal("tls-failed", f"TLS handshake failed: {_ssl_reason(exc)}", address))
        return None

    def _request_starts_well(self, guard: PduGuard) -> bool:
        """Read the header and the AE titles of the request; False when the peer closed or was refused."""
        head = guard.read_exactly(_HEADER)  # the guard checks type and length
        if head is None:
            return False
        prefix = guard.read_exactly(_RQ_PREFIX)
        if prefix is None:
            return False
        called, calling = prefix[4:20], prefix[20:36]
        for raw, which, diagnostic in ((called, "called", 0x07), (calling, "calling", 0x03)):
            problem = wire_ae_problem(raw)
            if problem:
                self._reject_malformed(guard, f"{which} AE title {shown_ae(raw)!r} {problem}", called, calling, diagnostic)
                return False
        guard.push_back(head + prefix)
        return True

    def _reject_malformed(self, guard: PduGuard, detail: str, called: bytes, calling: bytes, diagnostic: int) -> None:
        """Read the rest of the request (bounded by the guard), report the refusal (so that it is
        recorded before the peer hears of it), answer A-ASSOCIATE-RJ rejected-permanent, service-user,
        ``diagnostic``, and close."""
        guard.skip_request()  # a peer that stalls now is refused by the guard (artim-timeout)
        guard.refuse(
            "malformed-ae",
            detail,
            raise_=False,
            shutdown=False,
            called_ae=shown_ae(called),
            calling_ae=shown_ae(calling),
            diagnostic=diagnostic,
        )
        rj = A_ASSOCIATE_RJ()
        rj.result, rj.source, rj.reason_diagnostic = 0x01, 0x01, diagnostic
        try:
            guard.sock.sendall(rj.encode())
            guard.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer went away

    def _artim_from_connection(self, event: evt.Event) -> None:
        """pynetdicom's ARTIM timer (and its wait for the request) get the time left of the guard's
        deadline, so that the request is bounded from the connection, not from the hand-over."""
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        guard = getattr(sock, "guard", None)
        if isinstance(guard, PduGuard):
            event.assoc.acse_timeout = max(0.1, guard.request_deadline - time.monotonic())

    # ------------------------------------------------------------------ closing
    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def server_close(self) -> None:
        """Close the listening socket and the connections still waiting for their request."""
        with self._lock:
            self._closing = True
            guards = list(self._guards)
        super().server_close()
        for guard in guards:
            if guard.awaiting_request:
                guard.stopping = True
                try:
                    guard.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else type(exc).__name__
