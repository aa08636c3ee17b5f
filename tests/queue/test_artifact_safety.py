"""Nothing in the artifact store can make a worker or the node run code (issue 21, defect 2).

Whoever can write to the store (a Redis without a password on a hospital network) plants a
pickle that would create a file when loaded: at a job's stored step result, at a key a forged
step message names, at a key a forged task result names. Each is refused, the job fails with
the reason in the ledger, the file is never created and nothing reaches the outbox. The jobs run
through the real conductor, SQLite broker and the Redis artifact store on 127.0.0.1:6379, with
this test in the worker's place (:mod:`tests.support.worker`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from celery import states

from node.config import CompletenessRule, Settings
from node.ledger import Job, Ledger, utcnow
from node.queue.app import QueueSettings
from node.queue.codec import CodecError
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.queue.steps import StepMessage, StepMessageError, input_key, result_key, run_step
from node.workflow.completeness import Assembler
from tests.support.nm import write_nm_study
from tests.support.payloads import malicious_pickle
from tests.support.pipelines import flowtest
from tests.support.worker import record_instances, run_taken_step, take_step, work_step

pytestmark = pytest.mark.uses_test_pipelines

REDIS = "redis://127.0.0.1:6379/13"


@dataclass
class Node:
    settings: Settings
    ledger: Ledger
    queue: JobQueue
    conductor: Conductor
    study_uid: str

    def job(self) -> Job:
        return self.ledger.jobs.find(study_uid=self.study_uid)[0]

    def outbox(self) -> list[Path]:
        return sorted(self.settings.outbox_dir.rglob("*")) if self.settings.outbox_dir.exists() else []


@pytest.fixture
def node(tmp_path: Path, seed: int) -> Iterator[Node]:
    """A flowtest job, dispatched (its analyse message on ``cpu``), artifacts in Redis."""
    settings = Settings(data_dir=tmp_path / "data", artifact_store=REDIS,
                        completeness={"default": CompletenessRule(quiet_period_s=5.0, settle_s=1.0)})
    ledger = Ledger.from_settings(settings)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
    record_instances(ledger, files)
    Assembler(ledger, settings).tick(utcnow() + timedelta(seconds=2))
    queue = JobQueue(QueueSettings.from_settings(settings), settings.effective_device_uid())
    conductor = Conductor(ledger, queue, settings)
    conductor.tick()
    try:
        yield Node(settings, ledger, queue, conductor, study_uid)
    finally:
        for job in ledger.jobs.find(study_uid=study_uid):
            queue.cleanup(job.id, max(job.attempts, 1))
        queue.close()
        ledger.close()


def test_a_pickle_planted_at_a_jobs_stored_result_is_refused(node: Node, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    task_id, analyse = take_step(node.queue, "cpu")
    outcome = run_taken_step(node.queue, task_id, analyse)
    assert isinstance(outcome, dict), outcome
    key = outcome["result"]  # the key the task names for its result; the next step reads it
    assert key == result_key(analyse.job_key, "analyse")
    node.queue.store.put(key, malicious_pickle(marker))  # an attacker with write access to Redis

    node.conductor.tick()  # analyse done -> predict
    task_id, predict = take_step(node.queue, "gpu")
    refused = run_taken_step(node.queue, task_id, predict)
    assert isinstance(refused, CodecError) and "pickle" in str(refused) and key in str(refused), refused
    assert not marker.exists()  # the payload never ran

    node.conductor.tick()  # the failure reaches the ledger; nothing is retried
    job = node.job()
    assert job.state == "failed", job.reason
    assert job.reason.startswith("predict failed: CodecError:") and key in job.reason and "pickle" in job.reason, job.reason
    assert node.ledger.studies.get(node.study_uid).state == "failed"
    assert node.outbox() == [] and not marker.exists()
    assert list(node.queue.store.keys(f"jobs/{analyse.job_key}")) == []  # the attempt's artifacts are removed


def test_keys_named_by_a_forged_step_message_are_never_loaded(node: Node, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    forged_key = f"{uuid.uuid4().hex[:12]}-1.1"  # another job key, where the attacker planted pickles
    for key in (result_key(forged_key, "analyse"), f"jobs/{forged_key}/analyse.pkl"):
        node.queue.store.put(key, malicious_pickle(marker))
    message = StepMessage(job_key=forged_key, pipeline=flowtest.NAME, pipeline_version=flowtest.VERSION,
                          step="predict", previous="analyse")
    try:
        with pytest.raises(CodecError, match="pickle"):
            run_step(node.queue.store, message)
        # a message cannot name another key to read: `previous` must be the step before, the job key well-formed
        for previous in ("../inputs", "analyse.pkl", "report", ""):
            with pytest.raises(StepMessageError):
                run_step(node.queue.store, StepMessage(**{**message.to_dict(), "previous": previous}))
        for job_key in ("../x", f"{forged_key}/inputs", "x/../../y"):
            with pytest.raises(StepMessageError):
                run_step(node.queue.store, StepMessage(**{**message.to_dict(), "job_key": job_key}))
        with pytest.raises(StepMessageError):
            run_step(node.queue.store, StepMessage(**{**message.to_dict(), "step": "exec"}))
    finally:
        node.queue.store.delete_prefix(f"jobs/{forged_key}")
    assert not marker.exists()


@pytest.mark.parametrize("target", ["input", "pickle"])
def test_output_keys_named_by_a_forged_task_result_are_refused(node: Node, tmp_path: Path, target: str) -> None:
    marker = tmp_path / "pwned"
    work_step(node.queue, "cpu")  # analyse
    node.conductor.tick()
    work_step(node.queue, "gpu")  # predict
    node.conductor.tick()
    task_id, report = take_step(node.queue, "cpu")
    assert report.step == "report"
    if target == "input":  # the study's own instance, which must never be sent back as a "result"
        key = input_key(report.job_key, 0)
        expected = "not one of this job's outputs"
    else:  # a key in the job's outputs, holding a pickle instead of a DICOM object
        key = f"jobs/{report.job_key}/outputs/1.2.3.4.dcm"
        node.queue.store.put(key, malicious_pickle(marker))
        expected = "is not a DICOM object"
    assert node.queue.store.exists(key)
    node.queue.app.backend.store_result(task_id, {"outputs": [key], "sop_instance_uids": ["1.2.3.4"]}, states.SUCCESS)

    node.conductor.tick()
    job = node.job()
    assert job.state == "failed" and expected in job.reason and "refused" in job.reason, job.reason
    assert node.outbox() == [] and node.ledger.outputs.of_job(job.id) == []
    assert not marker.exists()


def test_a_clean_job_still_reports(node: Node) -> None:
    """The same set-up without an attacker: the stored results pass and the objects reach the outbox."""
    for queue_name in ("cpu", "gpu", "cpu"):
        work_step(node.queue, queue_name)
        node.conductor.tick()
    job = node.job()
    assert job.state == "reported", job.reason
    files = [p for p in node.outbox() if p.suffix == ".dcm"]
    assert len(files) == 2
    assert {str(pydicom.dcmread(p).SOPClassUID) for p in files} == {flowtest.SC_CLASS, flowtest.SR_CLASS}
