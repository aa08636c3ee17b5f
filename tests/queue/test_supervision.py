"""Step ownership (issue 21, defect 5): the conductor tells a step whose local worker is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from node.queue.supervision import RECEIVED, owner_of, owner_problem

HOST = socket.gethostname()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_owner_is_parsed_from_the_worker_node_name() -> None:
    owner = owner_of("STARTED", {"pid": 42, "hostname": f"cardionode-cpu-gpu-io-4711@{HOST}"})
    assert owner is not None and (owner.main_pid, owner.pool_pid, owner.host) == (4711, 42, HOST)
    assert owner_of("PENDING", None) is None
    assert owner_of("STARTED", {"pid": 42, "hostname": "celery@elsewhere"}) is None  # not a node worker


def test_live_owner_is_left_alone_and_dead_ones_are_reported() -> None:
    me = f"cardionode-cpu-{os.getpid()}@{HOST}"
    now = 1000.0
    assert owner_problem(owner_of("STARTED", {"pid": os.getpid(), "hostname": me}), now, 20.0) is None
    assert owner_problem(owner_of(RECEIVED, {"pid": os.getpid(), "hostname": me, "at": now - 5}), now, 20.0) is None
    dead = _dead_pid()
    gone = owner_problem(owner_of("STARTED", {"pid": os.getpid(), "hostname": f"cardionode-cpu-{dead}@{HOST}"}), now, 20.0)
    assert gone is not None and "main process" in gone[0] and gone[1] is None
    # a dead pool process under a live main process: Celery puts the message back itself
    assert owner_problem(owner_of("STARTED", {"pid": dead, "hostname": me}), now, 20.0) is None


def test_a_step_taken_but_not_started_names_the_worker_to_restart() -> None:
    me = f"cardionode-cpu-{os.getpid()}@{HOST}"
    problem = owner_problem(owner_of(RECEIVED, {"pid": os.getpid(), "hostname": me, "at": 100.0}), 130.0, 20.0)
    assert problem is not None and problem[1] == os.getpid() and "did not start" in problem[0]


def test_a_remote_worker_is_left_to_the_broker() -> None:
    dead = _dead_pid()
    owner = owner_of("STARTED", {"pid": dead, "hostname": f"cardionode-gpu-{dead}@another-host"})
    assert owner_problem(owner, 0.0, 20.0) is None
