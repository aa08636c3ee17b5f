"""Issue 21 defect 6, in process: a step that failed with ENOSPC makes the job wait (not fail) while
``data_dir`` is below ``disk_watermark_mb``, and sends the step again when space returns.

The worker's part is played by :mod:`tests.support.worker`; the step's ENOSPC is stored in the result
backend as Celery stores a task's exception (the e2e test tests/e2e/test_disk_full.py causes a real
one on a tmpfs where mounting is permitted)."""

from __future__ import annotations

import errno
from datetime import timedelta
from pathlib import Path

import pytest

from node.config import CompletenessRule, Settings
from node.ledger import Ledger, utcnow
from node.queue.app import QueueSettings
from node.queue.conductor import DISK_RETRY_S, WAITING_FOR_DISK, Conductor
from node.queue.dispatch import JobQueue
from node.workflow.completeness import Assembler
from tests.support.nm import write_nm_study
from tests.support.pipelines import flowtest as flowtest_pipeline  # noqa: F401  (registers the test pipeline)
from tests.support.worker import record_instances, take_step, work_step

pytestmark = pytest.mark.uses_test_pipelines


def test_step_out_of_space_waits_then_runs_again(tmp_path: Path, seed: int) -> None:
    def settings(watermark_mb: float) -> Settings:
        return Settings(data_dir=tmp_path / "data", disk_watermark_mb=watermark_mb,
                        completeness={"default": CompletenessRule(quiet_period_s=5.0, settle_s=1.0)})

    full = settings(1e12)  # more than any disk has: "full"
    ledger = Ledger.from_settings(full)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=32)
    record_instances(ledger, files)
    Assembler(ledger, full).tick(utcnow() + timedelta(seconds=2))
    queue = JobQueue(QueueSettings.from_settings(full), full.effective_device_uid())
    conductor = Conductor(ledger, queue, full)
    try:
        conductor.tick()
        task_id, _ = take_step(queue, "cpu")
        queue.app.backend.mark_as_failure(task_id, OSError(errno.ENOSPC, "No space left on device"))
        for _ in range(3):  # waits, tick after tick
            conductor.tick()
        job = ledger.jobs.find(study_uid=study_uid)[0]
        assert job.state == "running" and job.reason.startswith(WAITING_FOR_DISK), job.reason
        assert "Errno 28" in job.last_error

        conductor.settings = settings(0.0)  # space returned
        conductor.tick()  # not at once: a worker whose own disk is full is not asked again and again
        assert ledger.jobs.get(job.id).reason.startswith(WAITING_FOR_DISK)  # type: ignore[union-attr]
        conductor.tick(now=utcnow() + timedelta(seconds=DISK_RETRY_S + 1))
        resent = ledger.jobs.get(job.id)
        assert resent is not None and "disk space is back" in resent.reason
        for name in ("analyse", "predict", "report"):
            assert work_step(queue, "gpu" if name == "predict" else "cpu").step == name
            conductor.tick()
        done = ledger.jobs.get(job.id)
        assert done is not None and done.state == "reported", done
        assert len(ledger.outputs.of_job(job.id)) == 2
    finally:
        queue.close()
        ledger.close()
