"""Issue 13 item 10: the operator's commands do what they say.

* ``cardionode complete`` on an ignored study says, one line per pipeline, why none can process
  it and leaves it as it is; with ``--pipeline NAME`` that pipeline processes it;
* ``cardionode retry`` of a job already sent says so and changes nothing; ``--force`` processes
  it again, cleans up after itself (artifacts of every attempt, no outbox file written again) and
  sends nothing twice: the PACS (a real Orthanc) holds one copy of each result;
* ``cardionode train`` never writes into the bundles shipped in ``models/`` unless told to.

Real ledger, SQLite broker, artifact directory and conductor in the test's process; the steps run
in process (:mod:`tests.support.worker`), the sender is the node's own :class:`~node.dicom.sender.Exporter`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from node.cli import main as cli_main
from node.config import Settings, load_settings
from node.dicom.sender import Exporter, RetryPolicy, Target
from node.ledger import Job, Ledger, utcnow
from node.pipelines import registry
from node.queue.app import QueueSettings
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.resources import default_models_dir
from node.workflow.completeness import Assembler
from tests.support.config import FLOWTEST_PIPELINE_MODULE, write_config
from tests.support.nm import write_nm_study
from tests.support.orthanc import Orthanc
from tests.support.pipelines import flowtest as flowtest_pipeline
from tests.support.worker import record_instances, work_step

pytestmark = pytest.mark.uses_test_pipelines("flowtest")

QUIET = {"default": {"quiet_period_s": 1.0, "force_deadline_s": 600.0, "force_action": "process", "settle_s": 0.5}}


def _node(tmp_path: Path, **extra: object) -> tuple[Path, Settings, Ledger, JobQueue, Conductor, Assembler]:
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "data", disk_watermark_mb=1,
                          pipeline_modules=[FLOWTEST_PIPELINE_MODULE], completeness=QUIET, **extra)
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    queue = JobQueue(QueueSettings.from_settings(settings), settings.effective_device_uid())
    return config, settings, ledger, queue, Conductor(ledger, queue, settings), Assembler(ledger, settings)


def _run_job(queue: JobQueue, conductor: Conductor) -> None:
    """Dispatch, run every step of the flow test pipeline in process, and collect."""
    conductor.tick()
    for step in flowtest_pipeline.FlowTestPipeline.steps:
        work_step(queue, step.queue)
        conductor.tick()


def _job(ledger: Ledger, job_id: int) -> Job:
    """The job's row now (it must exist)."""
    job = ledger.jobs.get(job_id)
    assert job is not None, f"no job {job_id}"
    return job


def _job_artifacts(queue: JobQueue, job_id: int) -> list[str]:
    return [key for key in queue.store.keys("jobs") if f"-{job_id}." in key]


def test_complete_an_ignored_study_says_why_or_processes_it_with_the_chosen_pipeline(
        tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    config, _, ledger, queue, conductor, assembler = _node(tmp_path)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=16)
    for path in files:  # an "other" modality: no pipeline's rules accept the series
        ds = pydicom.dcmread(path)
        ds.Modality = "OT"
        ds.save_as(path)
    record_instances(ledger, files)
    try:
        assembler.tick(utcnow() + timedelta(seconds=5))
        assert ledger.studies.get(study_uid).state == "ignored"  # type: ignore[union-attr]

        assert cli_main(["--config", str(config), "complete", study_uid]) == 1
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert "no pipeline can process it" in lines[0] and "left ignored" in lines[0], err
        reasons = [line.strip() for line in lines[1:-1]]
        assert sorted(r.split(":")[0] for r in reasons) == sorted(
            p.name for p in registry.all_pipelines()), err
        assert any(r.startswith("flowtest_nm: ") and "modality OT" in r for r in reasons), err
        assert "--pipeline NAME" in lines[-1]
        assert ledger.studies.get(study_uid).state == "ignored"  # type: ignore[union-attr]

        assert cli_main(["--config", str(config), "complete", study_uid, "--pipeline", "no_such_pipeline"]) == 1
        assert "no_such_pipeline" in capsys.readouterr().err

        assert cli_main(["--config", str(config), "complete", study_uid, "--pipeline", "flowtest_nm"]) == 0
        out = capsys.readouterr().out
        assert "flowtest_nm does not accept the study by its rules" in out and "with flowtest_nm" in out, out
        study = ledger.studies.get(study_uid)
        assert study is not None and (study.state, study.rule, study.pipeline) == ("complete", "manual", "flowtest_nm")
        assert assembler.tick() == 1
        (job,) = ledger.jobs.find(study_uid=study_uid)
        assert job.pipeline == "flowtest_nm"
        conductor.tick()
        work_step(queue, "cpu")  # the pipeline runs on every instance of the study, and says what it found
        conductor.tick()
        job = _job(ledger, job.id)
        assert job.state == "failed" and "no NM instance" in job.reason, job.reason
        assert _job_artifacts(queue, job.id) == []
    finally:
        queue.close()
        ledger.close()


def test_retry_of_a_sent_job_says_so_and_a_forced_one_sends_nothing_twice(
        tmp_path: Path, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    destination = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config, settings, ledger, queue, conductor, assembler = _node(tmp_path, destinations=[destination])
    exporter = Exporter(ledger, {"pacs": Target("pacs", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, None)},
                        calling_ae=settings.ae_title, retry=RetryPolicy.from_settings(settings), timeout_s=10.0)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=16)
    record_instances(ledger, files)
    admin = ["--config", str(config)]
    try:
        assembler.tick(utcnow() + timedelta(seconds=5))
        conductor.tick()
        work_step(queue, "cpu")  # analyse ran; the operator discards the job and then retries it
        (job,) = ledger.jobs.find(study_uid=study_uid)
        assert cli_main([*admin, "discard", str(job.id)]) == 0
        assert _job_artifacts(queue, job.id), "the discarded attempt left its artifacts"
        assert cli_main([*admin, "retry", str(job.id)]) == 0
        assert ledger.studies.get(study_uid).state == "processing"  # type: ignore[union-attr]
        _run_job(queue, conductor)
        exporter.run_once()
        job = _job(ledger, job.id)
        assert job.state == "sent" and job.attempts == 2, job.reason
        assert ledger.studies.get(study_uid).state == "done"  # type: ignore[union-attr]
        assert _job_artifacts(queue, job.id) == [], "artifacts of the first or second attempt left behind"
        in_pacs = sorted(r["modality"] for r in orthanc.results(study_uid))
        assert in_pacs == ["OT", "SR"], in_pacs
        outbox = {path: path.stat().st_mtime_ns for path in (settings.outbox_dir).rglob("*.dcm")}
        assert len(outbox) == 2
        events = len(ledger.events.find("job", job.id))
        capsys.readouterr()

        # already done: said so, nothing changes
        assert cli_main([*admin, "retry", str(job.id)]) == 0
        out = capsys.readouterr().out
        assert f"job {job.id} is already done (sent: all 2 sends done)" in out and "--force" in out, out
        assert ledger.jobs.get(job.id).state == "sent" and len(ledger.events.find("job", job.id)) == events  # type: ignore[union-attr]

        # forced: processed again, nothing written or sent twice, everything cleaned up
        assert cli_main([*admin, "retry", str(job.id), "--force"]) == 0
        assert "queued again (operator retry, forced)" in capsys.readouterr().out
        _run_job(queue, conductor)
        exporter.run_once()
        job = _job(ledger, job.id)
        assert job.state == "sent" and job.attempts == 3 and "nothing new to send" in job.reason, \
            job.reason
        assert ledger.studies.get(study_uid).state == "done"  # type: ignore[union-attr]
        assert _job_artifacts(queue, job.id) == []
        assert {path: path.stat().st_mtime_ns for path in settings.outbox_dir.rglob("*.dcm")} == outbox
        sends = ledger.sends.find(job_id=job.id)
        assert len(sends) == 2 and {s.state for s in sends} == {"sent"} and {s.attempts for s in sends} == {1}
        assert len(ledger.outputs.of_job(job.id)) == 2
        assert sorted(r["modality"] for r in orthanc.results(study_uid)) == ["OT", "SR"]
    finally:
        queue.close()
        ledger.close()
        orthanc.stop()


def test_train_never_writes_into_the_shipped_bundles_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "data")
    shipped = default_models_dir() / "cad_polar"
    before = {path: path.stat().st_mtime_ns for path in shipped.rglob("*") if path.is_file()}
    assert before, f"no shipped bundle in {shipped}"
    for out in (shipped, default_models_dir()):
        assert cli_main(["--config", str(config), "train", "cad_polar", "--synthetic", "8", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "shipped with CardioNode" in err and "--overwrite-shipped" in err, err
    assert {path: path.stat().st_mtime_ns for path in shipped.rglob("*") if path.is_file()} == before
