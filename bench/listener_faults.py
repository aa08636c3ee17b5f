"""Listener fault campaign: stalled, truncated, lying and random-byte connections against ``cardionode listen``,
while a real sender (dcmtk ``echoscu``) keeps calling; the reference is the same sender with no attack, in the
same run.

Per round, against a fresh listener (``max_associations`` 4, ``acse_timeout_s`` ARTIM, default 3 s):

* 50 connections that send 100 random bytes (seeded) and stall;
* 45 A-ASSOCIATE-RQs cut short or lying about their length (15 cut at a random offset, 15 claiming
  more bytes than they send, 15 claiming fewer, the rest following as garbage), each then stalling;
* 20 connections that send nothing;

opened together, while ``echoscu`` runs every 0.25 s. Reported: the sender's successes and
latencies (median, worst) with and without the attack, the C-ECHOs that failed although they began
after the ARTIM bound (0 expected: while the hostile connections live, a sender may be refused with
``pending-limit`` once they fill the pending slots), how many hostile connections the node still holds
open at ARTIM + 2 s, and the node's refusal counts by reason.

    .venv/bin/python -m bench.listener_faults [--rounds 3] [--artim 3] [--seed 21] [--json out.json]

Bounded: 115 connections and about 10 s per round; loopback only. Run it as a module from the
repository root (it uses the tests' harness, :mod:`tests.support`).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.support.config import listener_config
from tests.support.dicom_clients import associate_rq, echoscu
from tests.support.node import NodeProcess


def hostile_payloads(rng: random.Random) -> list[tuple[str, bytes]]:
    """The campaign's 95 payloads that send something (kind, bytes)."""
    out = [("random", rng.randbytes(100)) for _ in range(50)]
    request = associate_rq()
    for _ in range(15):
        out.append(("truncated", request[: rng.randrange(1, len(request))]))
    for _ in range(15):  # claims more than it sends
        body = request[6:]
        out.append(("lying-longer", struct.pack(">BBI", 1, 0, len(body) + rng.randrange(1, 1 << 20)) + body))
    for _ in range(15):  # claims fewer; the rest follows as if it were the next PDU
        body = request[6:]
        out.append(("lying-shorter", struct.pack(">BBI", 1, 0, rng.randrange(0, len(body))) + body + rng.randbytes(20)))
    return out


def _echo_loop(port: int, stop: threading.Event, results: list[tuple[bool, float, float]]) -> None:
    """(succeeded, seconds taken, when it started: time.monotonic()) of each C-ECHO until ``stop``."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            ok = echoscu(port, timeout_s=30).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        results.append((ok, time.monotonic() - started, started))
        stop.wait(0.25)


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def one_round(folder: Path, artim_s: float, seed: int, attack: bool) -> dict[str, Any]:
    config, port = listener_config(folder, max_associations=4, acse_timeout_s=artim_s)
    node = NodeProcess(config, port, mode="listener").start()
    try:
        stop, echoes = threading.Event(), []
        sender = threading.Thread(target=_echo_loop, args=(port, stop, echoes))
        sender.start()
        hostile: list[tuple[str, socket.socket]] = []
        if attack:
            for kind, data in hostile_payloads(random.Random(seed)):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                try:
                    sock.sendall(data)
                except OSError:
                    pass
                hostile.append((kind, sock))
            hostile += [("silent", socket.create_connection(("127.0.0.1", port), timeout=5)) for _ in range(20)]
        attack_opened = time.monotonic()  # the last hostile connection's ARTIM started about now
        time.sleep(artim_s + 2.0)
        open_by_kind: dict[str, int] = {}
        for kind, sock in hostile:
            open_by_kind.setdefault(kind, 0)
            open_by_kind[kind] += _still_open(sock)
            sock.close()
        stop.set()
        sender.join(60)
        refusals_file = folder / "var" / "listener" / "refusals.json"
        refusals = json.loads(refusals_file.read_text())["counts"] if refusals_file.exists() else {}
    finally:
        node.stop()
    latencies = [t for ok, t, _ in echoes if ok]
    late = [ok for ok, _, at in echoes if at > attack_opened + artim_s + 0.5]  # begun once every hostile one expired
    return {
        "attack": attack,
        "echoes": len(echoes),
        "echo_ok": sum(ok for ok, _, _ in echoes),
        "echo_failed_after_artim": late.count(False),
        "echo_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "echo_worst_s": round(max(latencies), 3) if latencies else None,
        "hostile": len(hostile),
        "still_open_after_artim": sum(open_by_kind.values()),
        "still_open_by_kind": open_by_kind,
        "refusals": {k: v for k, v in refusals.items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--artim", type=float, default=3.0, help="acse_timeout_s of the listener (s)")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for attack in (False, True):
                folder = Path(tmp) / f"round{i}-{'attack' if attack else 'reference'}"
                folder.mkdir()
                result = one_round(folder, args.artim, args.seed + i, attack)
                results.append(result)
                print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
