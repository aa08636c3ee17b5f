"""The conductor in process, with a real ledger, SQLite broker and artifact directory, but no worker:
a job is dispatched with its instances in the artifact store, and a step that nobody runs fails the job
with a reason after ``job_timeout_s`` instead of waiting for ever."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.config import CompletenessRule, Settings
from node.ledger import Ledger, utcnow
from node.queue.app import QueueSettings
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.workflow.completeness import Assembler
from tests.support.nm import write_nm_study
from tests.support.pipelines import flowtest as flowtest_pipeline  # noqa: F401  (registers the test pipeline)
from tests.support.worker import record_instances

pytestmark = pytest.mark.uses_test_pipelines


def test_dispatch_then_timeout_without_workers(tmp_path: Path, seed: int) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_timeout_s=1.0,
                        completeness={"default": CompletenessRule(quiet_period_s=5.0, settle_s=1.0)})
    ledger = Ledger.from_settings(settings)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
    record_instances(ledger, files)
    Assembler(ledger, settings).tick(utcnow() + timedelta(seconds=2))
    queue = JobQueue(QueueSettings.from_settings(settings), settings.effective_device_uid())
    conductor = Conductor(ledger, queue, settings, job_timeout_s=settings.job_timeout_s)
    try:
        conductor.tick()
        job = ledger.jobs.find(study_uid=study_uid)[0]
        assert job.state == "running" and job.attempts == 1 and job.task_id.endswith("-analyse"), job.reason
        prefix = f"jobs/{job.task_id.removeprefix('cn-').removesuffix('-analyse')}/inputs"
        assert len(list(queue.store.keys(prefix))) == 2

        conductor.tick(now=utcnow() + timedelta(seconds=5))
        job = ledger.jobs.get(job.id)
        assert job.state == "failed" and "did not finish within 1 s" in job.reason, job.reason
        assert ledger.studies.get(study_uid).state == "failed"
        assert list(queue.store.keys(prefix)) == []  # artifacts of the failed attempt are removed
    finally:
        queue.close()
        ledger.close()
