"""PACS to PACS on real components.

dcmtk ``storescu`` sends a synthetic NM study to Orthanc; Orthanc's Lua routing
forwards it to ``cardionode serve`` (a subprocess); the node's Celery worker
processes it with the test pipeline (tests.support.pipelines.flowtest); the node sends an SC and an SR back
to Orthanc, where the test finds them through the REST API.

Run once with the default SQLite broker (workers started by the node) and once
with Redis as broker and artifact store and a worker started separately with
``cardionode worker``. The first run also checks that neither the logs nor the
audit log contain the synthetic patient's name, ID or birth date.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.support import PYTHON, REPO
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, add_nm_instance, write_nm_study
from tests.support.node import NodeProcess, node_env
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network

SETTLE_S = 1.0  # completeness settle time configured for these tests (s)
REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own for these tests


def _destination(orthanc: Orthanc) -> dict[str, object]:
    return {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _send_and_wait(tmp_path: Path, orthanc: Orthanc, seed: int) -> tuple[str, list[dict[str, object]], float]:
    study_uid, _, files = write_nm_study(tmp_path / "study", 3, seed, frames=4)
    storescu(orthanc.dicom_port, files, called=orthanc.ae_title, check=True)
    sent_at = time.monotonic()
    results = wait_for(lambda: len(orthanc.results(study_uid)) >= 2 and orthanc.results(study_uid),
                       30 + SETTLE_S + 15, f"the node's results in Orthanc (seed {seed})", interval_s=0.3)
    elapsed = time.monotonic() - sent_at
    return study_uid, results, elapsed


def _assert_one_result_set(results: list[dict[str, object]], seed: int) -> None:
    assert sorted(r["modality"] for r in results) == ["OT", "SR"], f"seed {seed}: {results}"
    assert len({r["sop_instance_uid"] for r in results}) == 2


def _no_patient_data(paths: list[Path]) -> None:
    needles = [*PATIENT_NAME.split("^"), PATIENT_ID, PATIENT_BIRTH_DATE]
    assert paths, "no log files to check"
    for path in paths:
        text = path.read_text(errors="replace")
        for needle in needles:
            assert needle not in text, f"{needle!r} found in {path}"


def test_pacs_to_pacs_with_sqlite_broker(tmp_path: Path, seed: int) -> None:
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    config = write_config(tmp_path / "node.toml",
                          **serve_settings(tmp_path / "data", node_port, [_destination(orthanc)]))
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    try:
        node.start()
        study_uid, results, elapsed = _send_and_wait(tmp_path, orthanc, seed)
        print(f"results in Orthanc {elapsed:.1f} s after the last image (settle {SETTLE_S} s), seed {seed}")
        assert elapsed <= 30 + SETTLE_S + 2, f"seed {seed}: {elapsed:.1f} s"  # +2: Orthanc's own forwarding
        _assert_one_result_set(results, seed)
        status = wait_for(lambda: (out := node.cli("status").stdout) and " sent " in out and out, 20,
                          "the job to be marked sent")
        assert "expected_series" in status and study_uid in status

        # a late instance: the study runs again and the new report supersedes the first
        first_sr = next(r for r in results if r["modality"] == "SR")
        late = add_nm_instance(next((tmp_path / "study").glob("*.dcm")), tmp_path / "late", seed + 1)
        storescu(orthanc.dicom_port, [late], called=orthanc.ae_title, check=True)
        rerun = wait_for(lambda: len(orthanc.results(study_uid)) >= 4 and orthanc.results(study_uid),
                         30 + SETTLE_S + 15, f"the re-run's results in Orthanc (seed {seed})", interval_s=0.3)
        new_sr = [r for r in rerun if r["modality"] == "SR" and r["sop_instance_uid"] != first_sr["sop_instance_uid"]]
        assert len(new_sr) == 1 and len(rerun) == 4, f"seed {seed}: {rerun}"
        predecessors = orthanc.tags(str(new_sr[0]["id"]))["PredecessorDocumentsSequence"]
        referenced = predecessors[0]["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
        assert referenced["ReferencedSOPInstanceUID"] == first_sr["sop_instance_uid"]
        assert node.stop() == 0  # SIGTERM: a clean stop
    finally:
        node.stop()
        orthanc.stop()
    data = tmp_path / "data"
    logs = [tmp_path / "node-stdout.log", *sorted((data / "logs").glob("*.log")), *sorted((data / "audit").glob("*"))]
    _no_patient_data(logs)


def test_pacs_to_pacs_with_redis_and_a_separate_worker(tmp_path: Path, seed: int) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    settings = serve_settings(tmp_path / "data", node_port, [_destination(orthanc)],
                             broker_url=REDIS_URL, workers=[])
    config = write_config(tmp_path / "node.toml", **settings)
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    worker = subprocess.Popen(
        [PYTHON, "-m", "node.cli", "--config", str(config), "worker", "--queues", "cpu,gpu,io", "--concurrency", "1"],
        cwd=REPO, env=node_env(), stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        node.start()
        study_uid, results, elapsed = _send_and_wait(tmp_path, orthanc, seed)
        print(f"redis: results in Orthanc {elapsed:.1f} s after the last image, seed {seed}")
        _assert_one_result_set(results, seed)
        worker_log = (tmp_path / "worker.log").read_text()
        assert re.search(r"job \S+: \S+ \S+ step ", worker_log), "the separate worker ran no step"
        # the node's own process started no worker
        assert "worker started" not in (tmp_path / "node-stdout.log").read_text()
    finally:
        node.stop()
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        orthanc.stop()
