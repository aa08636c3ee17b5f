"""`cardionode status` tells the truth: whether a node runs, what is really moving, whole reasons.

A real listener (``cardionode listen``) receives a real NM study from dcmtk ``storescu``
and holds the data directory's node lock while it runs; the job the conductor would
record is written through the ledger's own API. Every check runs the ``cardionode``
command as an operator would, in its own process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from node.config import load_settings
from node.dicom.logs import hash_identifier
from node.ledger import Ledger
from tests.support import PYTHON, REPO
from tests.support.config import listener_config, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import PATIENT_ID, write_nm_study
from tests.support.node import NodeProcess, node_env

pytestmark = pytest.mark.network

#: the cause at the end of a long reason: what `status` must not cut away (except in its narrow table)
CAUSE = "ValueError: the stress series has 0 slices after reorientation (cause at the end)"
LONG_REASON = "step analyse failed after 3 attempts on worker cpu-1 while loading the study's NM series; " + CAUSE


def _cardionode(config: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "node.cli", "--config", str(config), *args], cwd=cwd, env=node_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def received(tmp_path: Path) -> tuple[Path, str, int]:
    """A listener's data directory holding one received NM study with a job left ``running`` (a node
    that died mid-step): (config, study UID, job id). The listener is stopped again."""
    config, port = listener_config(tmp_path)
    study = write_nm_study(tmp_path / "study", 2, seed=13)
    with NodeProcess(config, port, mode="listener") as node:
        assert node.process is not None
        running = _cardionode(config, "status")
        assert running.returncode == 0, running.stderr
        assert f"node: running (listen, pid {node.process.pid}, listening on 127.0.0.1:{port}" in running.stdout
        storescu(port, study.paths, check=True)
    ledger = Ledger.from_settings(load_settings(config))
    try:
        ledger.studies.transition(study.study_uid, "complete", "all series", rule="manual")
        ledger.studies.transition(study.study_uid, "processing", "job 1")
        job = ledger.jobs.create(study.study_uid, "spect_mpi")
        ledger.jobs.transition(job.id, "running", LONG_REASON, error="Traceback line; " + CAUSE, task_id="t-1")
    finally:
        ledger.close()
    return config, study.study_uid, job.id


def test_status_with_the_node_stopped_says_so_and_shows_no_job_running(received: tuple[Path, str, int]) -> None:
    config, study_uid, job_id = received
    result = _cardionode(config, "status")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    assert out.splitlines()[0].startswith("node: NOT RUNNING"), out
    job_row = next(line for line in out.splitlines() if line.startswith(f"{job_id} "))
    assert "interrupted (node not running)" in job_row and " running " not in job_row, job_row
    assert "processing (node not running)" in out
    key = hash_identifier(study_uid)
    assert key in job_row and key in out.split("JOBS")[0]  # the study key the logs use, in both tables
    assert PATIENT_ID not in out
    # the narrow table cuts a long reason in its middle, keeps the cause's end in sight, and says where the rest is
    assert CAUSE not in out and "(cause at the end)" in job_row and "--wide" in out


def test_whole_reasons_in_wide_study_and_json_output(received: tuple[Path, str, int]) -> None:
    config, study_uid, job_id = received
    wide = _cardionode(config, "status", "--wide")
    assert wide.returncode == 0 and CAUSE in wide.stdout and "Traceback line; " + CAUSE in wide.stdout

    key = hash_identifier(study_uid)
    for name in (study_uid, key):  # a study is found by its UID or by the key the logs show
        detail = _cardionode(config, "status", "--study", name)
        assert detail.returncode == 0, detail.stderr
        assert f"study {study_uid}" in detail.stdout and f"key (logs): {key}" in detail.stdout
        assert f"job {job_id}: spect_mpi run 1, interrupted (node not running)" in detail.stdout
        assert f"reason: {LONG_REASON}" in detail.stdout and f"last error: Traceback line; {CAUSE}" in detail.stdout
        assert "queued -> running" in detail.stdout  # the state changes, oldest first
    missing = _cardionode(config, "status", "--study", "1.2.3.4")
    assert missing.returncode == 1 and "no study '1.2.3.4'" in missing.stderr

    data = json.loads(_cardionode(config, "status", "--json").stdout)
    assert data["node"] == {"running": False}
    job = next(j for j in data["jobs"] if j["id"] == job_id)
    assert (job["state"], job["state_now"], job["reason"]) == ("running", "interrupted (node not running)", LONG_REASON)
    assert job["study_key"] == key and data["studies"][0]["study_key"] == key
    assert all("peer_text" not in send for send in data["sends"])
    one = json.loads(_cardionode(config, "status", "--study", study_uid, "--json").stdout)
    assert one["study"]["study_uid"] == study_uid and one["jobs"][0]["last_error"].endswith(CAUSE)


def test_status_piped_to_head_ends_quietly(received: tuple[Path, str, int]) -> None:
    config, study_uid, job_id = received
    ledger = Ledger.from_settings(load_settings(config))
    try:  # 300 state changes of ~400 characters: the output outgrows the pipe's buffer (64 KiB)
        for i in range(300):
            ledger.jobs.transition(job_id, "running", f"step {i} redelivered; " + LONG_REASON * 3, task_id=f"t-{i}")
    finally:
        ledger.close()
    command = f"{PYTHON} -m node.cli --config {config} status --study {study_uid} | head -n 2"
    result = subprocess.run(["bash", "-c", command], cwd=REPO, env=node_env(), capture_output=True, text=True,
                            timeout=120)
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == "", result.stderr  # no traceback, no "Exception ignored" at exit


def test_missing_ledger_is_a_problem_and_data_dir_is_relative_to_the_config(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wrong = write_config(tmp_path / "wrong.toml", data_dir="no-such-var")
    result = _cardionode(wrong, "status", cwd=elsewhere)
    assert result.returncode == 1 and f"no ledger at {tmp_path / 'no-such-var' / 'ledger.sqlite'}" in result.stderr
    assert not (tmp_path / "no-such-var" / "ledger.sqlite").exists() and not (elsewhere / "no-such-var").exists()

    (tmp_path / "site").mkdir()
    config, port = listener_config(tmp_path / "site", data_dir="var")  # relative: next to the config file
    with NodeProcess(config, port, mode="listener"):
        pass
    assert (tmp_path / "site" / "var" / "ledger.sqlite").is_file()
    found = _cardionode(config, "status", cwd=elsewhere)
    assert found.returncode == 0 and found.stdout.startswith("node: NOT RUNNING"), found.stderr
