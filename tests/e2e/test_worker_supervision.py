"""Issue 21 defect 5: a job survives the death of the local worker that runs it, without a node restart.

``cardionode serve`` starts its own local worker (SQLite broker); the test kills (SIGKILL) the
worker's main process while a step runs, or its pool process while it is idle between two steps.
The node must restart the worker, notice that the step's owner is gone and send the step again,
so that the job ends ``reported`` once, with one set of outputs in the outbox and the ledger,
within :data:`BOUND_S` seconds of the kill.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network

#: seconds from the kill to the job being reported (the issue measured 150-240 s, and only after a node restart)
BOUND_S = 45.0


def _children(pid: int) -> list[int]:
    """The pids of the children of ``pid`` (from /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _worker_main(node: NodeProcess) -> int | None:
    """The pid of the node's local worker main process (``cardionode worker``), if one runs."""
    assert node.process is not None
    for pid in _children(node.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in cmdline:
            return pid
    return None


def _outcome(data: Path) -> tuple[list[str], int]:
    """(job states, output rows) in the ledger."""
    with sqlite3.connect(data / "ledger.sqlite") as db:
        jobs = [row[0] for row in db.execute("SELECT state FROM jobs")]
        outputs = db.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]
    return jobs, int(outputs)


def _start(tmp_path: Path, seed: int, hold: Path | None) -> tuple[NodeProcess, Path, list[Path]]:
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", **serve_settings(data, port, []))
    env = {"FLOWTEST_HOLD_DIR": str(hold)} if hold is not None else {}
    node = NodeProcess(config, port, tmp_path / "node-stdout.log", mode="serve", env=env)
    node.start()
    _, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=32)
    return node, data, files


def _assert_reported_once(node: NodeProcess, data: Path, killed_at: float) -> float:
    wait_for(lambda: " reported " in node.cli("status").stdout, BOUND_S,
             f"the job to be reported within {BOUND_S:g} s of the kill, without a node restart")
    took = time.monotonic() - killed_at
    time.sleep(2)  # a duplicate collection would happen within this time
    jobs, outputs = _outcome(data)
    assert jobs == ["reported"], jobs
    assert outputs == 2, f"{outputs} output rows in the ledger (one set of 2 expected)"
    assert len(list((data / "outbox").rglob("*.dcm"))) == 2
    assert node.process is not None and node.process.poll() is None, "the node itself must not restart"
    return took


def test_worker_main_killed_mid_step_job_completes_once(tmp_path: Path, seed: int) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    node, data, files = _start(tmp_path, seed, hold)
    try:
        storescu(node.port, files, check=True)
        wait_for(lambda: sorted(hold.glob("started-*")), 60, "the analyse step to start")
        main = _worker_main(node)
        assert main is not None, "no local worker process found"
        os.kill(main, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(3)  # the step is noticed as lost within a tick or two (0.5 s each)
        (hold / "release").write_text("")  # the re-sent step (and a surviving orphan, if any) runs through
        took = _assert_reported_once(node, data, killed_at)
        log = node.output()
        assert "restarting it" in log and "is gone" in log, log[-3000:]
        print(f"worker main killed mid-step: reported {took:.1f} s after the kill")
    finally:
        (hold / "release").write_text("")
        node.stop()


@pytest.mark.slow  # about 37 s: the stall is noticed after step_start_timeout_s (20 s)
def test_pool_process_killed_between_steps_job_completes_once(tmp_path: Path, seed: int) -> None:
    node, data, files = _start(tmp_path, seed, None)
    try:
        main = wait_for(lambda: _worker_main(node), 30, "the local worker to start")
        pool = wait_for(lambda: _children(main), 60, "the worker's pool process")
        time.sleep(3)  # the worker is consuming and idle
        for pid in pool:
            os.kill(pid, signal.SIGKILL)  # between two steps: no task runs
        killed_at = time.monotonic()
        storescu(node.port, files, check=True)
        took = _assert_reported_once(node, data, killed_at)
        print(f"pool process killed while idle: reported {took:.1f} s after the kill")
    finally:
        node.stop()
