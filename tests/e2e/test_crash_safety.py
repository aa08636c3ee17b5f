"""Crash safety: SIGKILL of the node mid-transfer, SIGKILL of the node while concurrent senders
wait for the spool journal's group commit, SIGKILL of a worker mid-job.

The spool side (every acknowledged instance is on disk) is tested by the listener tests in
tests/dicom/test_durability.py; here: after a restart the study completes and the destination
(Orthanc) ends with exactly one set of results, and a job whose worker process
dies is redelivered and completes once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.support import PYTHON, REPO
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import DCMTK_ENV, acknowledged_files, storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess, assert_acknowledged_kept, node_env
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network


def _destination(orthanc: Orthanc) -> dict[str, object]:
    return {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _spooled(data_dir: Path) -> int:
    return sum(1 for _ in (data_dir / "spool").rglob("*.dcm")) if (data_dir / "spool").exists() else 0


def test_node_killed_mid_transfer_ends_with_one_result_set(tmp_path: Path, seed: int) -> None:
    study_uid, _, files = write_nm_study(tmp_path / "study", 200, seed, frames=1, size=64)
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node_port = free_port()
    data = tmp_path / "data"
    # a settle time longer than a restart, so that the half study is not processed before the re-send
    settings = serve_settings(data, node_port, [_destination(orthanc)], completeness={
        "default": {"quiet_period_s": 30.0, "force_deadline_s": 600.0, "force_action": "process", "settle_s": 8.0}})
    config = write_config(tmp_path / "node.toml", **settings)
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    sender: subprocess.Popen[bytes] | None = None
    try:
        node.start()
        sender = subprocess.Popen(["storescu", "-aec", "CARDIONODE", "-aet", "FLOWTEST", "127.0.0.1",
                                   str(node_port), *map(str, files)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _spooled(data) >= 60, 60, "60 instances in the spool")
        node.kill()
        sender.wait(timeout=60)
        before = _spooled(data)
        assert before < 200, f"seed {seed}: the transfer finished before the kill"
        node.start()
        storescu(node_port, files, check=True)  # the PACS sends the study again
        results = wait_for(lambda: len(orthanc.results(study_uid)) >= 2 and orthanc.results(study_uid), 90,
                           f"results in Orthanc (seed {seed})")
        wait_for(lambda: " sent " in node.cli("status").stdout, 30, "the job to be sent")
        time.sleep(3)  # a duplicate run would send within this time
        results = orthanc.results(study_uid)
        assert sorted(r["modality"] for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
        status = node.cli("status").stdout
        assert status.count("flowtest_nm") >= 1
        print(f"killed with {before} of 200 instances spooled; one result set in Orthanc")
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        node.stop()
        orthanc.stop()


def _sender(port: int, calling: str, files: list[Path]) -> subprocess.Popen[str]:
    """dcmtk storescu, verbose (for :func:`acknowledged_files`), TCP_NODELAY, the given files."""
    return subprocess.Popen(["storescu", "-v", "-R", "-aet", calling, "-aec", "CARDIONODE", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=DCMTK_ENV)


def test_node_killed_during_group_commit_of_concurrent_senders(tmp_path: Path, seed: int) -> None:
    """Six associations at once (three studies, two senders each) share the spool journal's
    flushes; the node is killed with SIGKILL while stores are in flight. After the restart every
    instance any sender got Success for is in the ledger and readable in the spool with the bytes
    sent; the senders send everything again, and each study ends with one set of results."""
    studies = [write_nm_study(tmp_path / f"study{k}", 60, seed + k, frames=1, size=64) for k in range(3)]
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node_port = free_port()
    data = tmp_path / "data"
    settings = serve_settings(data, node_port, [_destination(orthanc)], completeness={
        "default": {"quiet_period_s": 30.0, "force_deadline_s": 600.0, "force_action": "process", "settle_s": 8.0}})
    node = NodeProcess(write_config(tmp_path / "node.toml", **settings), node_port, tmp_path / "node-stdout.log",
                       mode="serve")
    halves = [(f"FLOWTEST{k}{h}", study.paths[h::2]) for k, study in enumerate(studies) for h in range(2)]
    outputs: dict[str, list[str]] = {calling: [] for calling, _ in halves}
    acked = [0]
    lock = threading.Lock()
    go_kill = threading.Event()

    def follow(calling: str, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            outputs[calling].append(line)
            if "Received Store Response (Success)" in line:
                with lock:
                    acked[0] += 1
                    if acked[0] >= 90:
                        go_kill.set()

    senders: list[subprocess.Popen[str]] = []
    try:
        node.start()
        senders = [_sender(node_port, calling, files) for calling, files in halves]
        readers = [threading.Thread(target=follow, args=(c, p)) for (c, _), p in zip(halves, senders, strict=True)]
        for reader in readers:
            reader.start()
        assert go_kill.wait(120), f"seed {seed}: fewer than 90 acknowledgements: {acked[0]}"
        node.kill()
        for sender in senders:
            sender.wait(timeout=60)
        for reader in readers:
            reader.join(30)
        texts = {calling: "".join(lines) for calling, lines in outputs.items()}
        acknowledged = [Path(f) for text in texts.values() for f in acknowledged_files(text)]
        in_flight = sum(t.count("Sending Store Request") - t.count("Received Store Response") for t in texts.values())
        assert 90 <= len(acknowledged) < 180, f"seed {seed}: {len(acknowledged)} acknowledged"
        assert in_flight >= 2, f"seed {seed}: the kill did not land while stores waited ({in_flight} in flight)"

        node.start()
        assert_acknowledged_kept(data, acknowledged, seed)
        for calling, files in halves:  # the PACS sends everything again
            storescu(node_port, files, calling=calling, check=True)
        wait_for(lambda: all(len(orthanc.results(s.study_uid)) >= 2 for s in studies), 150,
                 f"results of every study (seed {seed})")
        time.sleep(3)  # a duplicate run would send within this time
        for study in studies:
            results = orthanc.results(study.study_uid)
            assert sorted(r["modality"] for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
        replayed = re.findall(r"replayed (\d+) instance\(s\) from the spool journal", (tmp_path / "node-stdout.log").read_text())
        assert replayed, f"seed {seed}: the restart replayed no journal segment (the kill missed the journal's window)"
        print(f"killed with {len(acknowledged)} of 180 acknowledged, {in_flight} stores in flight; "
              f"{replayed[0]} instance(s) replayed from the journal; one result set per study")
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
        node.stop()
        orthanc.stop()


def test_worker_killed_mid_job_is_redelivered_and_completes_once(tmp_path: Path, seed: int) -> None:
    """Kill the pool process running ``analyse``: the task is delivered again. Then kill the whole
    node (and with it its workers) during the second delivery: after a restart the job resumes
    from the ledger and completes; the destination receives one set of results."""
    hold = tmp_path / "hold"
    hold.mkdir()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node_port = free_port()
    config = write_config(tmp_path / "node.toml",
                          **serve_settings(tmp_path / "data", node_port, [_destination(orthanc)]))
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve", env={"FLOWTEST_HOLD_DIR": str(hold)})

    def started() -> list[Path]:
        return sorted(hold.glob("started-*"), key=lambda p: p.stat().st_mtime_ns)

    try:
        node.start()
        study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
        storescu(node_port, files, check=True)
        first = wait_for(started, 60, "the analyse step to start")[0]
        os.kill(int(first.name.split("-")[1]), signal.SIGKILL)  # the pool process running the job dies
        wait_for(lambda: len(started()) >= 2, 60, "the task to be delivered again after its worker died")
        log = (tmp_path / "node-stdout.log").read_text()
        assert "signal 9" in log or "WorkerLostError" in log

        node.kill()  # now the node and its workers die during the second delivery
        node.start()
        wait_for(lambda: len(started()) >= 3, 60, "the job to resume after the node restarted")
        (hold / "release").write_text("")
        wait_for(lambda: len(orthanc.results(study_uid)) >= 2, 60, f"results in Orthanc (seed {seed})")
        wait_for(lambda: " sent " in node.cli("status").stdout, 30, "the job to be sent")
        time.sleep(2)  # a duplicate would arrive within this time
        results = orthanc.results(study_uid)
        assert sorted(r["modality"] for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
        assert "restored 1 task message" in (tmp_path / "node-stdout.log").read_text()
        assert len(started()) == 3
    finally:
        (hold / "release").write_text("")
        node.stop()
        orthanc.stop()


def test_remote_worker_killed_redis_broker_redelivers_to_another(tmp_path: Path, seed: int) -> None:
    """Scaled out (Redis broker, worker in its own process tree): the whole worker is killed
    mid-job; after the visibility timeout a second worker gets the task and the job completes once."""
    url = "redis://127.0.0.1:6379/15"
    redis.Redis.from_url(url).flushdb()
    hold = tmp_path / "hold"
    hold.mkdir()
    node_port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", **serve_settings(
        data, node_port, [], broker_url=url, workers=[], visibility_timeout_s=4.0))
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker(name: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [PYTHON, "-m", "node.cli", "--config", str(config), "worker", "--queues", "cpu,gpu,io"],
            cwd=REPO, env=node_env({"FLOWTEST_HOLD_DIR": str(hold)}),
            stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
        )
        workers.append(process)
        return process

    try:
        node.start()
        first_worker = start_worker("worker-1")
        study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
        storescu(node_port, files, check=True)
        first = wait_for(lambda: sorted(hold.glob("started-*")), 60, "the analyse step to start")[0]
        os.kill(int(first.name.split("-")[1]), signal.SIGKILL)  # the pool process ...
        first_worker.kill()  # ... and the worker's main process: nobody will reject or ack the task
        first_worker.wait()
        (hold / "release").write_text("")
        start_worker("worker-2")
        wait_for(lambda: " reported " in node.cli("status").stdout, 90,
                 f"the job to be redelivered and reported (seed {seed})")
        outputs = sorted((data / "outbox").rglob("*.dcm"))
        assert len(outputs) == 2, f"seed {seed}: {outputs}"
        assert len(list(hold.glob("started-*"))) == 2
        assert re.search(r"job \S+: \S+ \S+ step ", (tmp_path / "worker-2.log").read_text()), "worker-2 ran no step"
    finally:
        (hold / "release").write_text("")
        node.stop()
        for process in workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
