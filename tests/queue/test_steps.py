"""Processing settings reach the workers: a SPECT job through the real conductor, SQLite broker and artifact
store, with this test in the worker's place (it takes each step message off the broker, runs it with
:func:`node.queue.steps.run_step` and stores the result as a worker would). The messages must carry the
``[pipelines.spect_mpi]`` options and the ``[outputs]`` flags, and the worker must honour them; ``cardionode
process`` with the same settings must give the same objects (same UIDs, same device identity)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom

from node.config import CompletenessRule, OutputOptions, Settings
from node.ledger import Ledger, utcnow
from node.pipelines.process import process_folder
from node.pipelines.spect_mpi import SpectMpiResult
from node.queue.app import QueueSettings
from node.queue.codec import decode, schema_for
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.queue.steps import result_key
from node.resources import default_templates_dir
from node.synth.spect.phantom import PhantomSpec, make_study
from node.synth.spect.study import write_study
from node.workflow.completeness import Assembler
from tests.support.worker import record_instances, run_taken_step, take_step, work_step

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


def _device_observer_uids(sr: pydicom.Dataset) -> list[str]:
    """Device Observer UID (121012, DCM) items of an SR's observation context."""
    return [str(item.UID) for item in sr.ContentSequence
            if "UID" in item and item.ConceptNameCodeSequence[0].CodeValue == "121012"]


def test_step_messages_carry_pipeline_options_and_output_flags(tmp_path: Path, seed: int) -> None:
    study = make_study(PhantomSpec(n_gates=0), np.random.default_rng(seed), orientation="short_axis")
    folder = tmp_path / "study"
    write_study(study, folder, seed=seed)
    files = sorted(folder.glob("*.dcm"))
    settings = Settings(
        data_dir=tmp_path / "data",
        completeness={"default": CompletenessRule(quiet_period_s=5.0, settle_s=1.0)},
        pipelines={"spect_mpi": {"normal_limits_version": 1, "models": False}},
        outputs=OutputOptions(pdf_summary=False, multiframe_screen=True),
        templates_dir=default_templates_dir(),
        institution="Test Hospital",
    )
    ledger = Ledger.from_settings(settings)
    record_instances(ledger, files)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    Assembler(ledger, settings).tick(utcnow() + timedelta(seconds=2))
    queue = JobQueue(QueueSettings.from_settings(settings), settings.effective_device_uid())
    conductor = Conductor(ledger, queue, settings)
    try:
        conductor.tick()
        analyse = work_step(queue, "cpu")
        assert analyse.step == "analyse"
        assert analyse.config["options"] == {"normal_limits_version": 1, "models": False}
        assert analyse.config["models_dir"] is None and analyse.config["clinical_csv"] is None
        schema = schema_for(SpectMpiResult)  # the stored results are JSON + .npy (node.queue.codec), never pickles
        analysed = decode(queue.store.get(result_key(analyse.job_key, "analyse")), schema)
        assert isinstance(analysed, SpectMpiResult)
        assert all("normal limits tc99m" in s.scores.limits and " v1 " in s.scores.limits for s in analysed.states), [
            s.scores.limits for s in analysed.states
        ]
        conductor.tick()
        predict = work_step(queue, "gpu")
        assert predict.step == "predict" and predict.config == analyse.config
        predicted = decode(queue.store.get(result_key(predict.job_key, "predict")), schema)
        assert isinstance(predicted, SpectMpiResult)
        assert predicted.predictions == ((), (), ()) and predicted.notes == analysed.notes  # models = false
        conductor.tick()
        task_id, report = take_step(queue, "cpu")
        assert report.step == "report" and report.config == analyse.config
        assert report.context["pdf_summary"] is False and report.context["multiframe_screen"] is True
        assert report.context["templates_dir"] == str(default_templates_dir().resolve())
        assert report.context["device_uid"] == settings.effective_device_uid()
        run_taken_step(queue, task_id, report)
        conductor.tick()

        job = ledger.jobs.find(study_uid=study_uid)[0]
        assert job.state == "reported", job.reason
        outbox = sorted(settings.outbox_dir.rglob("*.dcm"))
        node_objects = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in outbox)}
        sop_classes = [str(ds.SOPClassUID) for ds in node_objects.values()]
        assert ENCAPSULATED_PDF not in sop_classes and MULTIFRAME_TRUE_COLOR_SC in sop_classes, sop_classes
    finally:
        queue.close()
        ledger.close()
    sr = next(ds for ds in node_objects.values() if ds.Modality == "SR")

    # cardionode process with the same settings: the same objects, UIDs and device identity
    out = tmp_path / "process-out"
    outcome = process_folder(folder, out, settings=settings, progress=lambda _line: None)[0]
    assert outcome.error is None, outcome.error
    written = [pydicom.dcmread(p) for p in outcome.written if p.suffix == ".dcm"]
    assert {str(ds.SOPInstanceUID) for ds in written} == set(node_objects)
    assert not (out / "summary.pdf").exists()
    process_sr = next(ds for ds in written if ds.Modality == "SR")
    assert process_sr.InstitutionName == "Test Hospital"
    assert _device_observer_uids(process_sr) == _device_observer_uids(sr) == [settings.effective_device_uid()]
