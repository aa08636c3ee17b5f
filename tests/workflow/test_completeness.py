"""Completeness decisions against a real ledger (SQLite file), without servers.

Times are moved by passing ``now`` to :meth:`Assembler.tick`; the ledger's
instance times are real.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from node.config import CompletenessRule, Settings
from node.ledger import InstanceMeta, Ledger, utcnow
from node.results.content import ReportContext
from node.workflow.completeness import Assembler
from tests.support.pipelines import flowtest as flowtest_pipeline  # noqa: F401  (registers the test pipeline)

pytestmark = pytest.mark.uses_test_pipelines

NM = "1.2.840.10008.5.1.4.1.1.20"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _settings(tmp_path: Path, **rule: object) -> Settings:
    values = {"quiet_period_s": 10.0, "force_deadline_s": 100.0, "force_action": "process", "settle_s": 2.0}
    values.update(rule)
    return Settings(data_dir=tmp_path, completeness={"default": CompletenessRule(**values)})


def _receive(ledger: Ledger, study: str, series: str, sop: str, modality: str = "NM", sop_class: str = NM,
             at: datetime | None = None) -> None:
    ledger.instances.record(InstanceMeta(sop, sop_class, study, series, f"/spool/{sop}.dcm", 100,
                                        routing={"modality": modality, "sop_class_uid": sop_class}, received_at=at))


def test_rules_recorded_in_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assembler = Assembler(ledger, _settings(tmp_path))
    _receive(ledger, "1.2.1", "1.2.1.1", "1.2.1.1.1")
    _receive(ledger, "1.2.2", "1.2.2.1", "1.2.2.1.1", "CT", CT)
    now = utcnow()
    assert assembler.tick(now) == 0  # nothing is quiet yet
    assert assembler.tick(now + timedelta(seconds=3)) == 1  # NM study: expected series + settle
    nm = ledger.studies.get("1.2.1")
    assert (nm.state, nm.rule, nm.pipeline, nm.run) == ("processing", "expected_series", "flowtest_nm", 1)
    assert [j.state for j in ledger.jobs.find(study_uid="1.2.1")] == ["queued"]
    assert ledger.studies.get("1.2.2").state == "receiving"
    assembler.tick(now + timedelta(seconds=11))
    ct = ledger.studies.get("1.2.2")
    assert ct.state == "ignored" and "modality CT" in ct.reason


def test_force_deadline_give_up_and_manual_complete(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assembler = Assembler(ledger, _settings(tmp_path, force_action="give_up", force_deadline_s=50.0, settle_s=40.0,
                                            quiet_period_s=40.0))
    t0 = utcnow()
    _receive(ledger, "1.3.1", "1.3.1.1", "1.3.1.1.1", at=t0)
    assembler.tick(t0 + timedelta(seconds=30))
    assert ledger.studies.get("1.3.1").state == "receiving"
    # instances keep arriving: never quiet, so the deadline decides
    _receive(ledger, "1.3.1", "1.3.1.1", "1.3.1.1.2", at=t0 + timedelta(seconds=49))
    assembler.tick(t0 + timedelta(seconds=51))
    study = ledger.studies.get("1.3.1")
    assert study.state == "given_up" and "force deadline" in study.reason

    ledger.studies.complete_manually("1.3.1")  # `cardionode complete`
    assert assembler.tick() == 1
    study = ledger.studies.get("1.3.1")
    assert (study.state, study.rule) == ("processing", "manual")


def test_late_instance_starts_a_second_run_with_predecessors(tmp_path: Path) -> None:
    from node.ledger import OutputMeta

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assembler = Assembler(ledger, _settings(tmp_path))
    _receive(ledger, "1.4.1", "1.4.1.1", "1.4.1.1.1")
    assembler.tick(utcnow() + timedelta(seconds=3))
    job = ledger.jobs.find(study_uid="1.4.1")[0]
    ledger.jobs.transition(job.id, "running", "analyse")
    sr = OutputMeta("2.25.1", "1.4.1", "2.25.2", "1.2.840.10008.5.1.4.1.1.88.34", "/outbox/sr.dcm")
    ledger.outputs.record(job.id, "flowtest_nm", sr)
    ledger.jobs.transition(job.id, "reported", "1 object")
    ledger.studies.transition("1.4.1", "done", "run 1", expected_from=("processing",))

    _receive(ledger, "1.4.1", "1.4.1.1", "1.4.1.1.2")  # arrives after the study was processed
    assert ledger.studies.get("1.4.1").state == "receiving"
    assembler.tick(utcnow() + timedelta(seconds=3))
    second = ledger.jobs.find(study_uid="1.4.1")[0]
    assert second.id != job.id and second.run == 2
    context = ReportContext("1.2.3", "node", predecessors=ledger.outputs.predecessors("1.4.1", "flowtest_nm", second.run))
    assert context.predecessors == (("1.4.1", "2.25.2", "1.2.840.10008.5.1.4.1.1.88.34", "2.25.1"),)
