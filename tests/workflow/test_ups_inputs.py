"""The ``ups_inputs`` completeness rule (issue 19, item 4; :func:`node.workflow.completeness.ups_inputs`) against a real
ledger (SQLite file), without servers: a study the node holds a claimed work item for is complete when every instance
of the work item's Input Information Sequence is in the ledger and its Input Readiness State is READY; until then it
waits whatever the quiet period says. Times are moved by passing ``now`` to :meth:`Assembler.tick`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.config import CompletenessRule, Settings
from node.ledger import InstanceMeta, Ledger, utcnow
from node.telemetry import COMPLETENESS_DECISIONS
from node.workflow.completeness import Assembler
from tests.support.pipelines import flowtest as flowtest_pipeline  # noqa: F401  (registers the test pipeline)
from tests.support.ups import dataset_from, input_information, workitem

pytestmark = pytest.mark.uses_test_pipelines

NM = "1.2.840.10008.5.1.4.1.1.20"
STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = f"{STUDY}.1"
LISTED = [f"{SERIES}.{k}" for k in (1, 2, 3)]


def _receive(ledger: Ledger, sop: str) -> None:
    ledger.instances.record(InstanceMeta(sop, NM, STUDY, SERIES, f"/spool/{sop}.dcm", 100,
                                        routing={"modality": "NM", "sop_class_uid": NM}))


def _hold(ledger: Ledger, uid: str, state: str = "IN PROGRESS", readiness: str = "READY") -> None:
    """A work item of a site's task manager the node claimed (role performer, its Transaction UID)."""
    ups = dataset_from(workitem(StudyInstanceUID=STUDY, InputReadinessState=readiness,
                                InputInformationSequence=input_information(STUDY, [(SERIES, NM, s) for s in LISTED])))
    ledger.workitems.create(uid, state=state, role="performer", transaction_uid="2.25.7", performer_ae="CARDIONODE",
                            study_uid=STUDY, input_readiness=readiness, run=1, attributes=ups.to_json_dict())


def _assembler(tmp_path: Path) -> tuple[Ledger, Assembler]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    rule = CompletenessRule(quiet_period_s=10.0, force_deadline_s=1000.0, force_action="process", settle_s=2.0)
    return ledger, Assembler(ledger, Settings(data_dir=tmp_path, completeness={"default": rule}))


def test_a_claimed_work_item_waits_for_every_listed_input_then_decides_by_ups_inputs(tmp_path: Path) -> None:
    ledger, assembler = _assembler(tmp_path)
    _hold(ledger, "2.25.1")
    for sop in LISTED[:2]:
        _receive(ledger, sop)
    now = utcnow()
    assert assembler.tick(now + timedelta(seconds=60)) == 0  # past the quiet period: still waiting for the third
    assert ledger.studies.get(STUDY).state == "receiving"
    before = COMPLETENESS_DECISIONS.labels(rule="ups_inputs")._value.get()
    _receive(ledger, LISTED[2])
    assert assembler.tick(utcnow()) == 1  # at once: no settle time, the contract says what is complete
    study = ledger.studies.get(STUDY)
    assert (study.state, study.rule, study.pipeline, study.run) == ("processing", "ups_inputs", "flowtest_nm", 1)
    assert "every input of work item 2.25.1 in the ledger (3 instances)" in ledger.events.find("study", STUDY)[-2].reason
    assert COMPLETENESS_DECISIONS.labels(rule="ups_inputs")._value.get() == before + 1
    ledger.close()


def test_incomplete_readiness_never_starts_and_an_unlanded_claim_leaves_the_other_rules(tmp_path: Path) -> None:
    ledger, assembler = _assembler(tmp_path)
    _hold(ledger, "2.25.2", readiness="INCOMPLETE")
    for sop in LISTED:
        _receive(ledger, sop)
    assert assembler.tick(utcnow() + timedelta(seconds=60)) == 0  # every input here, but INCOMPLETE: never alone
    assert ledger.studies.get(STUDY).state == "receiving"
    ledger.close()

    other = tmp_path / "other"
    other.mkdir()
    ledger, assembler = _assembler(other)
    _hold(ledger, "2.25.3", state="SCHEDULED")  # the claim is written, not known to have landed: not ours yet
    for sop in LISTED:
        _receive(ledger, sop)
    assert assembler.tick(utcnow() + timedelta(seconds=3)) == 1
    assert ledger.studies.get(STUDY).rule == "expected_series"
    ledger.close()
