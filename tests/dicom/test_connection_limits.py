"""The listener's connection limits (issue 21, defects 1, 7 and 8): no idle, stalled, garbage or
malformed peer holds the accept loop, a connection or an association slot beyond its time limit,
a burst of max_associations clients is admitted, and every refusal is counted by reason.

Real sockets on loopback, dcmtk and pynetdicom clients; each test stays well under 30 s.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPdu

from node.dicom.refusals import REASONS
from node.dicom.server import (
    ConnectionLimits,
    ConnectionRefusal,
    ConnectionRefused,
    GuardedAssociationServer,
    GuardedSocket,
    PduGuard,
    pending_limit,
    wire_ae_problem,
)
from node.ops.status import status_snapshot
from tests.support.dicom_clients import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    CALLING_AE,
    acknowledged_files,
    associate_rq,
    closed_within,
    echoscu,
    read_pdu,
    storescu,
)
from tests.support.nm import write_nm_study
from tests.support.node import RunningListener
from tests.support.pki import make_pki
from tests.support.ports import wait_for

pytestmark = pytest.mark.network

VERIFICATION = "1.2.840.10008.1.1"


def _refusals(node: RunningListener, reason: str, at_least: int, timeout_s: float = 5.0) -> int:
    """The count of ``reason`` in the status model once it reaches ``at_least`` (the listener writes
    its counts about once a second)."""
    def counted() -> int | None:
        n = status_snapshot(node.ledger, node.listener.settings).refusals.counts[reason]
        return n if n >= at_least else None

    return int(wait_for(counted, timeout_s, f"{at_least} refusals for {reason!r} in status"))


def _connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


# --------------------------------------------------------------------------- defect 1: TLS handshake
def test_idle_tcp_connections_do_not_delay_tls_associations(start_listener: Callable[..., RunningListener], tmp_path: Path) -> None:
    """Three connections that send nothing stalled every TLS client (the handshake ran in the accept loop)."""
    pki = make_pki(tmp_path / "pki")
    handshake_s = 3.0
    node = start_listener(tls={"cert": pki["server.pem"], "key": pki["server.key"], "ca": pki["ca.pem"], "require": True},
                          tls_handshake_timeout_s=handshake_s)
    tls_args = ["+tls", str(pki["client.key"]), str(pki["client.pem"]), "+cf", str(pki["ca.pem"])]
    idle = [_connect(node.port) for _ in range(3)]
    opened = time.monotonic()
    try:
        time.sleep(0.3)  # the accept loop has taken them
        started = time.monotonic()
        try:
            echo = echoscu(node.port, extra=tls_args, timeout_s=handshake_s + 8)
        except subprocess.TimeoutExpired:
            pytest.fail("a TLS C-ECHO did not finish while idle TCP connections were open: the accept loop is blocked")
        took = time.monotonic() - started
        assert echo.returncode == 0, echo.stderr
        assert took < handshake_s, f"the TLS C-ECHO took {took:.1f} s, not less than the handshake timeout {handshake_s} s"
        for sock in idle:  # each idle connection is closed when its handshake time is up
            closed = closed_within(sock, handshake_s + 3)
            assert closed is not None, "an idle connection is still open after the handshake timeout"
        assert time.monotonic() - opened < handshake_s + 2.5
    finally:
        for sock in idle:
            sock.close()
    assert _refusals(node, "tls-timeout", 3) == 3
    assert echoscu(node.port, extra=tls_args).returncode == 0


# --------------------------------------------------------------------------- defect 7: stalled peers
def test_stalled_and_garbage_connections_hold_no_association_slot(
    start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int
) -> None:
    """max_associations stalled half-requests, silent and garbage connections: a real sender is served
    at once, garbage is closed at once, the others at the ARTIM bound; all counted by reason."""
    artim_s = 2.0
    node = start_listener(max_associations=4, acse_timeout_s=artim_s)
    rng = random.Random(seed)
    request = associate_rq()
    # A-ASSOCIATE-RQs that stop: 4 bytes after the header (still read by the server's own thread), right
    # after the AE titles (the server hands it to pynetdicom, whose ARTIM timer ends it), in the rest
    # (pynetdicom reads; the guard's deadline ends it), one byte short
    stalled = [_connect(node.port, request[:cut]) for cut in (10, 42, 50, len(request) - 1)]
    silent = [_connect(node.port) for _ in range(4)]
    opened = time.monotonic()
    garbage = {
        "100 random bytes": bytes([rng.randrange(2, 256)]) + rng.randbytes(99),
        "P-DATA-TF first": struct.pack(">BBI", 4, 0, 1000) + rng.randbytes(94),
        "HTTP": b"GET / HTTP/1.1\r\nHost: cardionode\r\n\r\n",
        "A-ASSOCIATE-RQ of 2 GiB": struct.pack(">BBI", 1, 0, 0x7FFFFFF0) + rng.randbytes(94),
    }
    try:
        started = time.monotonic()
        echo = echoscu(node.port, timeout_s=30)
        took = time.monotonic() - started
        assert echo.returncode == 0, f"C-ECHO refused while stalled connections are open: {echo.stderr}{echo.stdout}"
        assert took < artim_s, f"C-ECHO took {took:.1f} s (ARTIM {artim_s} s)"
        files = write_nm_study(tmp_path / "study", 3, seed).paths
        store = storescu(node.port, files)
        assert store.returncode == 0 and len(acknowledged_files(store.stderr + store.stdout)) == 3, store.stderr
        for name, data in garbage.items():
            with _connect(node.port, data) as sock:
                assert closed_within(sock, 1.0) is not None, f"{name}: still open 1 s after it was sent"
        for sock in stalled + silent:
            assert closed_within(sock, artim_s + 3) is not None, "a stalled connection outlived the ARTIM timer"
        assert time.monotonic() - opened < artim_s + 2.0
    finally:
        for sock in stalled + silent:
            sock.close()
    assert _refusals(node, "artim-timeout", 8) == 8
    assert _refusals(node, "not-dicom", 3) == 3
    assert _refusals(node, "oversized-request", 1) == 1
    assert node.ledger.rejections.find() == []  # connections are counted, not recorded one by one


def test_a_stalled_pdu_is_cut_at_pdu_timeout_not_the_idle_time_between_pdus(start_listener: Callable[..., RunningListener]) -> None:
    pdu_s = 1.5
    node = start_listener(max_associations=1, pdu_timeout_s=pdu_s, network_timeout_s=30)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE")
    assert assoc.is_established
    time.sleep(pdu_s * 1.5)  # idle between PDUs is network_timeout_s's business
    assert assoc.send_c_echo().Status == 0
    assoc.release()

    with _connect(node.port, associate_rq()) as sock:  # holds the only association slot
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == A_ASSOCIATE_AC
        sock.sendall(struct.pack(">BBI", 4, 0, 1000) + b"\x00" * 10)  # a P-DATA-TF that stops after 10 of 1000 bytes
        closed = closed_within(sock, pdu_s + 4)
        assert closed is not None and closed < pdu_s + 1.5, f"the stalled PDU was cut after {closed} s (pdu_timeout_s {pdu_s})"
    wait_for(lambda: echoscu(node.port).returncode == 0, 5, "the association slot to be free again")

    with _connect(node.port, associate_rq()) as sock:
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == A_ASSOCIATE_AC
        sock.sendall(struct.pack(">BBI", 4, 0, 0x7FFFFFF0) + b"\x00" * 64)  # longer than the 1 MiB announced
        assert closed_within(sock, 1.0) is not None
    assert _refusals(node, "pdu-timeout", 1) == 1
    assert _refusals(node, "oversized-pdu", 1) == 1


def test_connections_waiting_for_their_request_are_limited(start_listener: Callable[..., RunningListener]) -> None:
    """Connections that have not sent their request hold no association slot, so they are limited
    apart (max(32, 2 × max_associations)); past the limit a new connection is closed at once."""
    artim_s = 2.0
    node = start_listener(max_associations=2, acse_timeout_s=artim_s)
    limit = pending_limit(2)
    silent = [_connect(node.port) for _ in range(limit)]
    try:
        wait_for(lambda: node.listener._server.pending_connections() == limit, 5, f"{limit} pending connections")
        with _connect(node.port) as extra:
            assert closed_within(extra, 1.0) is not None, "a connection past the pending limit was left open"
        assert _refusals(node, "pending-limit", 1) == 1
        for sock in silent:
            assert closed_within(sock, artim_s + 3) is not None
    finally:
        for sock in silent:
            sock.close()
    assert echoscu(node.port).returncode == 0
    assert _refusals(node, "artim-timeout", limit) == limit


# --------------------------------------------------------------------------- defect 8: a burst of senders
def test_64_simultaneous_senders_against_a_limit_of_64_are_all_admitted(start_listener: Callable[..., RunningListener]) -> None:
    n = 64
    node = start_listener(max_associations=n)

    # the kernel completes a burst of n connections at once (a dropped SYN is retried only after 1 s)
    burst = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", node.port))
        burst.append(sock)
    waiting, connected, started = set(burst), 0, time.monotonic()
    while waiting and time.monotonic() - started < 0.9:
        _, writable, _ = select.select([], list(waiting), [], 0.05)
        for sock in writable:
            connected += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            waiting.discard(sock)
    for sock in burst:
        sock.close()
    assert connected == n, f"{connected} of {n} simultaneous connections completed within 0.9 s (listen backlog too small)"

    # n pynetdicom senders, all associated at once, each C-ECHO while all are open
    results: list[tuple[bool, float]] = []
    lock, go = threading.Lock(), threading.Event()
    ready = threading.Barrier(n, timeout=30)

    def sender() -> None:
        ae = AE(ae_title=CALLING_AE)
        ae.add_requested_context(VERIFICATION)
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            pass
        t0 = time.monotonic()
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE")
        with lock:
            results.append((assoc.is_established, time.monotonic() - t0))
        if assoc.is_established:
            go.wait(60)
            assoc.send_c_echo()
            assoc.release()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) == n, 60, f"{n} association attempts")
        admitted = sum(ok for ok, _ in results)
        assert admitted == n, f"{admitted} of {n} simultaneous senders admitted (max_associations = {n})"
        ae = AE(ae_title=CALLING_AE)  # one more is refused at once, not left waiting
        ae.add_requested_context(VERIFICATION)
        t0 = time.monotonic()
        extra = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE")
        assert extra.is_rejected and time.monotonic() - t0 < 3.0
    finally:
        go.set()
        for t in threads:
            t.join(60)
    assert _refusals(node, "local-limit", 1) == 1
    assert max(took for _, took in results) < 10.0


# --------------------------------------------------------------------------- defect 8: malformed AE titles
MALFORMED_CALLING = {
    "empty": b" " * 16,
    "all NUL": b"\x00" * 16,
    "NUL-padded": b"TESTSCU".ljust(16, b"\x00"),
    "control character": b"TEST\x01SCU".ljust(16),
    "escape sequence": b"\x1b[31mRED".ljust(16),
}


def test_malformed_ae_titles_are_rejected_recorded_and_audited(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(audit=True)
    with _connect(node.port, associate_rq()) as sock:  # a well-formed request, byte for byte the same otherwise
        answer = read_pdu(sock)
        assert answer is not None and answer[0] == A_ASSOCIATE_AC
    cases = [(name, associate_rq(calling=raw), 0x03) for name, raw in MALFORMED_CALLING.items()]
    cases.append(("called AE with a tab", associate_rq(called=b"CARDIO\tNODE".ljust(16)), 0x07))
    for name, request, diagnostic in cases:
        with _connect(node.port, request) as sock:
            answer = read_pdu(sock, 5)
            assert answer is not None, f"{name}: the connection ended without an answer"
            kind, body = answer
            assert kind != A_ABORT, f"{name}: answered A-ABORT, not A-ASSOCIATE-RJ"
            assert kind == A_ASSOCIATE_RJ, f"{name}: answered PDU type {kind}"
            assert tuple(body[1:4]) == (0x01, 0x01, diagnostic), f"{name}: result, source, reason {tuple(body[1:4])}"
    refused = [r for r in node.ledger.rejections.find() if "AE title" in r.reason]
    assert len(refused) == len(cases), [r.reason for r in refused]
    audited = [r for r in node.audit_records() if r["event"] == "association.refused"]
    assert [r["refusal"] for r in audited] == ["malformed-ae"] * len(cases)
    for text in [r.reason for r in refused] + [r.calling_ae for r in refused] + [str(a) for a in audited]:
        assert all(" " <= c <= "~" for c in text), f"a control character reached the ledger or audit log: {text!r}"
    assert any("\\x00" in r.reason for r in refused)  # shown escaped
    assert _refusals(node, "malformed-ae", len(cases)) == len(cases)


# --------------------------------------------------------------------------- what the server relies on
def test_the_server_checks_at_least_what_pynetdicom_cannot_decode(seed: int) -> None:
    """An AE title field the server lets through decodes in pynetdicom (else pynetdicom would A-ABORT);
    the malformed ones do not decode there, which is why the server checks them first."""
    rng = random.Random(seed)
    fields = [b"A" * 15 + bytes([b]) for b in range(256)] + [rng.randbytes(16) for _ in range(200)]
    fields += [b"  PACS 1".ljust(16), b"TESTSCU".ljust(16), b"1234567890123456"]
    for raw in fields + list(MALFORMED_CALLING.values()):
        pdu = AssociateRqPdu()
        try:
            pdu.decode(associate_rq(calling=raw))
            decoded = True
        except (ValueError, TypeError):
            decoded = False
        if wire_ae_problem(raw) is None:
            assert decoded, f"the server lets {raw!r} through but pynetdicom cannot decode it"
    for raw in MALFORMED_CALLING.values():
        assert wire_ae_problem(raw) is not None


def test_the_listener_runs_the_guarded_server(start_listener: Callable[..., RunningListener]) -> None:
    """Pins: AE.make_server builds our server class with our keywords, the server is among the AE's
    servers (AssociationServer.shutdown removes itself from that list), the backlog is sized."""
    node = start_listener(max_associations=4)
    listener = node.listener
    server = listener._server
    assert isinstance(server, GuardedAssociationServer)
    assert server in listener.ae._servers
    assert server.request_queue_size == 4 + pending_limit(4) and server.limits.max_pending == pending_limit(4)
    listener.stop()
    assert server not in listener.ae._servers
    listener._server = None  # already stopped; the fixture's stop is then a no-op
    listener.start()
    assert echoscu(listener.port).returncode == 0


def test_the_guard_follows_the_pdu_framing() -> None:
    """pynetdicom's reader asks for a PDU's 6-byte header, then for its body: the guard keeps count,
    serves pushed-back bytes first, and refuses an unknown PDU type after the request."""
    refusals: list[ConnectionRefusal] = []
    limits = ConnectionLimits(handshake_timeout_s=1, request_timeout_s=2, pdu_timeout_s=2, max_pdu_bytes=1024, max_pending=4)
    ours, theirs = socket.socketpair()
    sock = GuardedSocket(fileno=ours.detach())
    guard = PduGuard(sock, limits, "peer", refusals.append, time.monotonic())
    sock.guard = guard
    try:
        request = associate_rq()
        theirs.sendall(request + struct.pack(">BBI", 5, 0, 4) + b"\x00" * 4)  # then an A-RELEASE-RQ
        head = guard.read_exactly(6)
        assert head == request[:6] and guard.awaiting_request
        guard.push_back(head)
        assert guard.pending() == 6 and sock.pending() == 6

        def read(n: int) -> bytes:
            out = bytearray()
            while len(out) < n:
                out += sock.recv(min(4096, n - len(out)))
            return bytes(out)

        assert read(6) == request[:6]
        assert read(len(request) - 6) == request[6:]
        assert not guard.awaiting_request
        assert read(6)[0] == 5 and read(4) == b"\x00" * 4
        theirs.sendall(b"\x09\x00\x00\x00\x00\x00")
        with pytest.raises(ConnectionRefused):
            sock.recv(6)
        assert [r.reason for r in refusals] == ["invalid-pdu"]
    finally:
        sock.close()
        theirs.close()


def test_every_reason_is_documented() -> None:
    conformance = (Path(__file__).resolve().parents[2] / "docs" / "conformance.md").read_text()
    missing = [reason for reason in REASONS if f"`{reason}`" not in conformance]
    assert not missing, f"refusal reasons missing from docs/conformance.md: {missing}"
