"""The scaled-out set-up on real components: Redis, PostgreSQL and two remote workers without a shared disk.

``cardionode serve`` with ``workers = []`` (listener, conductor, sender) keeps its ledger
on a fresh PostgreSQL database; broker, result backend and artifact store are Redis; two
``cardionode worker`` processes with their own data directories run every step
(:mod:`tests.support.scaleout`). Checked here:

* a synthetic SPECT study through Orthanc -> node -> the workers -> Orthanc (the shipped
  ``spect_mpi`` pipeline with its models): the SR, the images and the PDF arrive once, each step ran once, the PostgreSQL ledger shows the job sent,
  and the workers' data directories hold nothing but their logs (no spool, no artifacts,
  no ledger);
* a worker killed (SIGKILL to its whole process group) while it holds a step: Redis gives
  the unacknowledged step to the other worker after ``visibility_timeout_s`` and the job
  completes with one set of results;
* export faults: a destination that is down, then up (retried, sent once), and one that
  refuses for good (dead letter after one attempt), with the sends in the PostgreSQL ledger.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import redis
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE

from node.synth.spect import phantom as ph
from node.synth.spect.demo import demo_spec
from node.synth.spect.study import write_study
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for
from tests.support.postgres import server_problem
from tests.support.scaleout import ScaledOutNode, scaled_out

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(server_problem() is not None, reason=str(server_problem())),
]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: the Redis database of each test (tests/e2e/test_pacs_to_pacs.py uses 14, test_crash_safety.py 15,
#: tests/queue 13)
REDIS_DB = {"spect": 12, "crash": 11, "export": 10}
#: seconds after which Redis gives an unacknowledged step to another worker, in the crash test
VISIBILITY_TIMEOUT_S = 4.0


def _destination(orthanc: Orthanc) -> dict[str, object]:
    return {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _job_sent(cluster: ScaledOutNode) -> bool:
    return cluster.ledger_rows("SELECT state FROM jobs") == [("sent",)]


def _steps_run(cluster: ScaledOutNode) -> list[str]:
    """The steps that the workers finished, from their logs (the task's ``job K: step S finished in`` lines)."""
    found: list[str] = []
    for worker in cluster.workers:
        found += re.findall(r"job \S+: step ([a-z_]+) finished in ", worker.output())
    return sorted(found)


def _assert_sent_once(cluster: ScaledOutNode, orthanc: Orthanc, study_uid: str, sources: Sequence[Path],
                      seed: int) -> list[dict[str, object]]:
    """One job, sent, and its study done; every ledger output in Orthanc and sent in one attempt; nothing else in Orthanc's
    study but the ``sources``; no artifact left in Redis; nothing but logs in the workers' data
    directories. Returns Orthanc's instances of the study that are not sources (the results)."""
    time.sleep(2)  # a duplicate send or a second run would show within this time
    assert cluster.ledger_rows("SELECT state, attempts FROM jobs") == [("sent", 1)], f"seed {seed}"
    assert cluster.ledger_rows("SELECT state FROM studies") == [("done",)], f"seed {seed}"
    outputs = {row[0] for row in cluster.ledger_rows("SELECT sop_instance_uid FROM outputs")}
    sends = cluster.ledger_rows("SELECT output_uid, destination, state, attempts FROM sends")
    assert sorted(sends) == sorted((uid, "pacs", "sent", 1) for uid in outputs), f"seed {seed}: {sends}"
    inputs = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in sources}
    results = [i for i in orthanc.study_instances(study_uid) if i["sop_instance_uid"] not in inputs]
    assert sorted(str(r["sop_instance_uid"]) for r in results) == sorted(outputs), f"seed {seed}: {results}"
    store = redis.Redis.from_url(cluster.redis_url)
    try:
        assert store.keys("cardionode:artifacts:*") == [], "the job's artifacts were not deleted from Redis"
    finally:
        store.close()
    for index in range(len(cluster.workers)):
        assert cluster.worker_files(index) == [], f"worker {index} wrote to its own disk"
    assert not (cluster.data_dir / "artifacts").exists(), "the node used a directory artifact store"
    return results


def test_spect_study_through_redis_postgresql_and_two_workers(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    study = ph.make_study(demo_spec("LAD", "tc99m_sestamibi"), rng, orientation="transaxial")
    files = write_study(study, tmp_path / "study", seed=seed % 10000)
    images = [p for p in files.paths if p.suffix == ".dcm"]
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    try:
        with scaled_out(tmp_path, [_destination(orthanc)], REDIS_DB["spect"], port=node_port,
                        pipeline_modules=[]) as cluster:  # the shipped spect_mpi pipeline, models on
            started = time.monotonic()
            storescu(orthanc.dicom_port, images, called=orthanc.ae_title, check=True)
            wait_for(lambda: [i for i in orthanc.results(files.study_uid) if i["sop_class"] == SR_CLASS], 180,
                     f"the SPECT report in Orthanc (seed {seed}); logs under {tmp_path}", 1.0)
            wait_for(lambda: _job_sent(cluster), 60, f"the job to be sent (seed {seed})")
            took = time.monotonic() - started
            results = _assert_sent_once(cluster, orthanc, files.study_uid, images, seed)
            assert _steps_run(cluster) == ["analyse", "predict", "report"], f"seed {seed}: {_steps_run(cluster)}"
            assert [r for r in results if r["sop_class"] == SR_CLASS] and len(results) >= 2, f"seed {seed}: {results}"
            assert (cluster.data_dir / "spool").exists(), "the node spooled nothing: the study did not pass it"
            assert "worker started" not in cluster.node.output(), "serve started a local worker"
            print(f"SPECT study sent to Orthanc, results back {took:.1f} s later ({len(results)} objects), seed {seed}")
    finally:
        orthanc.stop()


def test_worker_killed_holding_a_step_the_other_worker_completes_once(tmp_path: Path, seed: int) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        with scaled_out(tmp_path, [_destination(orthanc)], REDIS_DB["crash"], env={"FLOWTEST_HOLD_DIR": str(hold)},
                        visibility_timeout_s=VISIBILITY_TIMEOUT_S) as cluster:
            study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
            storescu(cluster.node.port, files, check=True)
            first = wait_for(lambda: sorted(hold.glob("started-*")), 60, "the analyse step to start")[0]
            holder = cluster.worker_of_pid(int(first.name.split("-")[1]))
            cluster.workers[holder].kill()  # main and pool process: nobody acknowledges or rejects the step
            killed_at = time.monotonic()
            (hold / "release").write_text("")
            wait_for(lambda: _job_sent(cluster), 90, f"the job to be redelivered, run and sent (seed {seed})")
            took = time.monotonic() - killed_at
            results = _assert_sent_once(cluster, orthanc, study_uid, files, seed)
            assert sorted(str(r["modality"]) for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
            starts = sorted(hold.glob("started-*"), key=lambda p: p.stat().st_mtime_ns)
            assert len(starts) == 2, f"seed {seed}: {starts}"
            other = cluster.worker_of_pid(int(starts[1].name.split("-")[1]))
            assert other != holder
            assert _steps_run(cluster) == ["analyse", "predict", "report"], f"seed {seed}: {_steps_run(cluster)}"
            assert re.search(r"job \S+: step analyse finished in ", cluster.workers[other].output())
            gap = (starts[1].stat().st_mtime_ns - starts[0].stat().st_mtime_ns) / 1e9
            print(f"worker {holder} killed holding analyse; worker {other} started it {gap:.1f} s after the first start "
                  f"(visibility timeout {VISIBILITY_TIMEOUT_S:g} s), job sent {took:.1f} s after the kill")
    finally:
        (hold / "release").write_text("")
        orthanc.stop()


def test_export_faults_down_then_up_and_permanent_refusal(tmp_path: Path, seed: int) -> None:
    refused: list[str] = []

    def refuse(event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE)
        refused.append(str(request.AffectedSOPInstanceUID))
        return 0xA900

    rejecter = AE(ae_title="REJECTER")
    rejecter.supported_contexts = AllStoragePresentationContexts
    rejecter_port = free_port()
    server = rejecter.start_server(("127.0.0.1", rejecter_port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    assert server is not None
    orthanc = Orthanc(tmp_path / "orthanc")  # ports chosen, not started: the destination is down
    destinations = [_destination(orthanc), {"name": "rejecter", "ae_title": "REJECTER", "host": "127.0.0.1",
                                            "port": rejecter_port}]
    try:
        with scaled_out(tmp_path, destinations, REDIS_DB["export"],
                        send_retry={"initial_s": 1.0, "max_s": 2.0, "max_attempts": 100}) as cluster:
            study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
            storescu(cluster.node.port, files, check=True)

            def sends(destination: str) -> list[tuple[object, ...]]:
                return cluster.ledger_rows(
                    f"SELECT state, attempts, last_status FROM sends WHERE destination = '{destination}'")

            wait_for(lambda: len(sends("rejecter")) == 2 and all(s[0] == "dead_letter" for s in sends("rejecter"))
                     and any(s[0] == "retrying" for s in sends("pacs")), 60,
                     "a retrying send (pacs down) and two dead letters (rejecter)")
            time.sleep(4)  # several retry periods: dead letters are not retried
            assert len(refused) == 2, f"seed {seed}: the rejecter got {len(refused)} attempts for 2 objects"
            assert sends("rejecter") == [("dead_letter", 1, 0xA900)] * 2
            orthanc.start()  # the destination comes back
            wait_for(lambda: sorted(str(s[0]) for s in sends("pacs")) == ["sent", "sent"], 30,
                     f"the pacs sends to be sent after Orthanc came back (seed {seed})")
            results = orthanc.results(study_uid)
            assert sorted(str(r["modality"]) for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
            outputs = {row[0] for row in cluster.ledger_rows("SELECT sop_instance_uid FROM outputs")}
            assert {str(r["sop_instance_uid"]) for r in results} == outputs and len(outputs) == 2
            assert len(refused) == 2
    finally:
        orthanc.stop()
        server.shutdown()
