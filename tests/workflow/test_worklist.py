"""The modality worklist context against two independent MWL SCPs: dcmtk ``wlmscpfs`` and Orthanc's
worklists plugin, both on loopback, serving the cardiac worklists of :mod:`tests.support.worklist`
(one-day SPECT MPI: two scheduled steps under one accession; two-day: a rest order and a stress
order on consecutive days).

Studies are recorded in a real ledger (SQLite file) with one header file each (the keys the node
reads); lookups go through :func:`node.workflow.worklist.look_up` and the assembler
(:class:`node.workflow.completeness.Assembler`), as in the node. The last two tests run the full
node (``cardionode serve``) with a worklist configured: Orthanc as PACS and worklist with the shipped
SPECT pipeline, and a worklist that never answers with the flow test pipeline.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.config import CompletenessRule, Settings, Worklist
from node.ledger import InstanceMeta, Ledger, utcnow
from node.ops.admin import format_status, format_study
from node.ops.status import status_snapshot, study_detail
from node.pipelines.clinical import clinical_inputs
from node.workflow.completeness import Assembler
from node.workflow.worklist import choose_steps, look_up, scheduled_step, study_keys
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port
from tests.support.tools import assert_dciodvfy_clean
from tests.support.worklist import WORKLIST_AE, WlmScp, one_day_mpi, two_day_mpi, write_worklist

pytestmark = pytest.mark.network

DAY = date(2026, 12, 7)
NM = "1.2.840.10008.5.1.4.1.1.20"
RECON = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
#: the synthetic identities of the worklist files (tests.support.worklist): never in the ledger
NAMES = ("Wormwood", "Perpetua")
BIRTH_DATES = ("19650312", "19580101")


@pytest.fixture(params=["wlmscpfs", "orthanc"])
def worklist(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Worklist]:
    """A worklist SCP holding the one-day and two-day orders, as the node's ``[[worklists]]`` entry."""
    orders = one_day_mpi(DAY) + two_day_mpi(DAY)
    if request.param == "wlmscpfs":
        scp = WlmScp(tmp_path / "wlm").start()
        write_worklist(scp.folder, orders)
        try:
            yield Worklist(name="wlmscpfs", ae_title=WORKLIST_AE, host="127.0.0.1", port=scp.port, timeout_s=5.0)
        finally:
            scp.stop()
        return
    write_worklist(tmp_path / "orthanc-wl", orders)
    orthanc = Orthanc(tmp_path / "orthanc", ae_title="ORTHANCWL", worklists=tmp_path / "orthanc-wl").start()
    try:
        yield Worklist(name="orthanc", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port,
                       timeout_s=5.0)
    finally:
        orthanc.stop()


def _settings(tmp_path: Path, worklists: list[Worklist], **rule: float) -> Settings:
    values: dict[str, object] = {"quiet_period_s": 60.0, "force_deadline_s": 600.0, "force_action": "process",
                                 "settle_s": 2.0}
    values.update(rule)
    return Settings(data_dir=tmp_path / "var", worklists=worklists,
                    completeness={"default": CompletenessRule(**values)})  # type: ignore[arg-type]


def _receive(ledger: Ledger, folder: Path, study: str, *, state: str, patient_id: str, accession: str = "",
             study_date: date = DAY, issuer: str = "HOSP-A", at: datetime | None = None) -> Path:
    """One NM header (no pixels) of a ``state`` reconstruction, recorded as a received instance."""
    folder.mkdir(parents=True, exist_ok=True)
    series, sop = f"{study}.{1 if state == 'stress' else 2}", f"{study}.{1 if state == 'stress' else 2}.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = NM, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = NM, sop, study, series
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Wormwood^Perpetua", patient_id, issuer
    ds.AccessionNumber, ds.StudyDate, ds.Modality = accession, f"{study_date:%Y%m%d}", "NM"
    ds.SeriesDescription, ds.ImageType = f"{state.upper()} SA", RECON
    path = folder / f"{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    ledger.instances.record(InstanceMeta(sop, NM, study, series, str(path), path.stat().st_size, received_at=at,
                                        routing={"modality": "NM", "sop_class_uid": NM, "image_type": RECON,
                                                 "series_description": f"{state.upper()} SA", "state": state}))
    return path


@pytest.fixture()
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield led
    led.close()


def _ledger_text(tmp_path: Path) -> str:
    """Every value of every table of the ledger, as text (to look for identifiers)."""
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for t in tables for row in db.execute(f'SELECT * FROM "{t}"'))  # noqa: S608


def test_one_day_protocol_by_accession_chooses_spect_mpi_with_both_states_and_clinical_inputs(
        worklist: Worklist, ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path, [worklist])
    _receive(ledger, tmp_path / "spool", "1.2.3.1", state="stress", patient_id="MPI0001", accession="ACC1D0001")
    answer = look_up(ledger, settings, "1.2.3.1")
    assert answer is not None and (answer.outcome, answer.worklist, answer.matched_by) == ("found", worklist.name,
                                                                                          "accession")
    assert (answer.pipeline, answer.expected_series) == ("spect_mpi", ["stress", "rest"])
    assert [(s["sps_id"], s["date"], s["state"], s["matched"]) for s in answer.steps] == [
        ("SPS1001R", "2026-12-07", "rest", True), ("SPS1001S", "2026-12-07", "stress", True)]
    step = answer.steps[1]
    assert (step["accession_number"], step["requested_procedure_id"], step["tracer"]) == (
        "ACC1D0001", "RP1001", "tc99m_sestamibi")
    assert step["protocol_codes"] == [{"value": "MPI-STRESS", "scheme": "99LOCAL",
                                       "meaning": "Myocardial perfusion stress, pharmacological"}]
    assert "1-day" in step["requested_procedure_description"]
    assert answer.clinical == {"height_m": 1.78, "weight_kg": 92.0, "sex": "M", "age_years": 61.0,
                               "reason": "Chest pain on exertion, rule out ischaemia"}
    assert answer.accession_number == "ACC1D0001" and len(answer.patient_key) == 64
    assert ledger.worklist.clinical_for("1.2.3.1") == answer.clinical
    # no name, no birth date, no patient ID in the ledger; the accession is kept (orders are paired by it)
    text = _ledger_text(tmp_path)
    assert not [v for v in (*NAMES, *BIRTH_DATES, "MPI0001") if v in text]


def test_two_day_protocol_by_patient_matches_the_days_order_and_expects_its_state_only(
        worklist: Worklist, ledger: Ledger, tmp_path: Path) -> None:
    settings = _settings(tmp_path, [worklist])
    # day 1: rest, the images carry no accession number -> patient ID + issuer + modality + date window
    _receive(ledger, tmp_path / "spool", "1.2.4.1", state="rest", patient_id="MPI0002")
    day1 = look_up(ledger, settings, "1.2.4.1")
    assert day1 is not None and (day1.outcome, day1.matched_by) == ("found", "patient")
    assert [(s["sps_id"], s["date"], s["state"], s["accession_number"], s["matched"]) for s in day1.steps] == [
        ("SPS2001R", "2026-12-07", "rest", "ACC2D0001", True),
        ("SPS2002S", "2026-12-08", "stress", "ACC2D0002", False)]
    assert (day1.pipeline, day1.expected_series, day1.accession_number) == ("spect_mpi", ["rest"], "ACC2D0001")
    assert day1.clinical["height_m"] == 1.64 and day1.clinical["weight_kg"] == 71.5 and day1.clinical["sex"] == "F"
    # day 2: stress, the next day's order
    _receive(ledger, tmp_path / "spool", "1.2.4.2", state="stress", patient_id="MPI0002", study_date=DAY + timedelta(1))
    day2 = look_up(ledger, settings, "1.2.4.2")
    assert day2 is not None and day2.expected_series == ["stress"] and day2.accession_number == "ACC2D0002"
    assert [s["sps_id"] for s in day2.steps if s["matched"]] == ["SPS2002S"]
    # both days of one patient are found together (the key that pairs stress with rest next)
    assert {a.study_uid for a in ledger.worklist.with_patient_key(day1.patient_key)} == {"1.2.4.1", "1.2.4.2"}
    # another issuer's patient with the same ID is someone else
    _receive(ledger, tmp_path / "spool", "1.2.4.3", state="rest", patient_id="MPI0002", issuer="HOSP-B")
    other = look_up(ledger, settings, "1.2.4.3")
    assert other is not None and other.outcome == "not_found" and other.patient_key != day1.patient_key


def test_no_match_is_recorded_as_not_found(worklist: Worklist, ledger: Ledger, tmp_path: Path) -> None:
    _receive(ledger, tmp_path / "spool", "1.2.5.1", state="rest", patient_id="NOBODY", accession="ACC-NONE")
    answer = look_up(ledger, _settings(tmp_path, [worklist]), "1.2.5.1")
    assert answer is not None and answer.outcome == "not_found" and answer.steps == []
    (event,) = ledger.events.find("worklist", "1.2.5.1")
    assert event.to_state == "not_found" and "by accession" in event.reason and "by patient" in event.reason
    assert "NOBODY" not in event.reason and "ACC-NONE" not in event.reason


def test_a_study_matching_the_orders_study_uid_takes_that_order() -> None:
    """An SPS whose Study Instance UID is the study's own decides, whatever the dates (unit of the rule)."""
    def step(sps: str, day: date, uid: str) -> dict[str, object]:
        answer = Dataset()
        answer.StudyInstanceUID, answer.AccessionNumber, answer.RequestedProcedureID = uid, f"A{sps}", f"R{sps}"
        item = Dataset()
        item.ScheduledProcedureStepID, item.ScheduledProcedureStepStartDate = sps, f"{day:%Y%m%d}"
        item.ScheduledProcedureStepStartTime, item.Modality = "080000", "NM"
        item.ScheduledProcedureStepDescription = "Rest"
        answer.ScheduledProcedureStepSequence = [item]
        return scheduled_step(answer)

    from node.workflow.worklist import StudyKeys

    steps = [step("S1", DAY, "1.9.1"), step("S2", DAY + timedelta(5), "1.9.2")]
    chosen, words = choose_steps(steps, StudyKeys("1.9.2", study_date=DAY))
    assert [s["sps_id"] for s in chosen if s["matched"]] == ["S2"] and "own Study Instance UID" in words
    chosen, words = choose_steps(steps, StudyKeys("1.9.9", study_date=DAY + timedelta(1)))
    assert [s["sps_id"] for s in chosen if s["matched"]] == ["S1"] and "closest in date" in words


def test_the_scheduled_protocol_names_the_pipeline_and_its_series() -> None:
    """PET Rb-82 rest/stress -> pet_mbf expecting both; an NM step naming no state -> spect_mpi expecting all
    its required series; a modality no pipeline takes -> no pipeline (unit of the rule, registered pipelines)."""
    from node.workflow.worklist import StudyKeys, interpret

    def step(modality: str, description: str, code_meaning: str = "") -> dict[str, object]:
        answer = Dataset()
        answer.AccessionNumber, answer.RequestedProcedureID = "A1", "R1"
        answer.RequestedProcedureDescription = f"{modality} cardiac"
        item = Dataset()
        item.Modality, item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepID = modality, "20261207", "SPS1"
        item.ScheduledProcedureStepDescription = description
        if code_meaning:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "X", "99LOCAL", code_meaning
            item.ScheduledProtocolCodeSequence = [code]
        answer.ScheduledProcedureStepSequence = [item]
        return {**scheduled_step(answer), "matched": True}

    pet = interpret([step("PT", "Rb-82 rest"), step("PT", "PET perfusion", "Regadenoson stress, rubidium")], [],
                    StudyKeys("1.1", modality="PT"))
    assert (pet.pipeline, pet.expected_series, pet.states, pet.tracer) == (
        "pet_mbf", ("stress", "rest"), ("stress", "rest"), "rb82_chloride")
    nm = interpret([step("NM", "Myocardial perfusion")], [], StudyKeys("1.2", modality="NM"))
    assert (nm.pipeline, nm.expected_series, nm.states) == ("spect_mpi", ("stress", "rest"), ())
    ct = interpret([step("CT", "Calcium score")], [], StudyKeys("1.3", modality="CT"))
    assert ct.pipeline is None and ct.expected_series == () and "no pipeline" in ct.words


def test_unreachable_refusing_and_silent_worklists_are_down_and_quick(ledger: Ledger, tmp_path: Path) -> None:
    _receive(ledger, tmp_path / "spool", "1.2.6.1", state="rest", patient_id="MPI0001", accession="ACC1D0001")
    closed = Worklist(name="closed", ae_title=WORKLIST_AE, host="127.0.0.1", port=free_port(), timeout_s=2.0)
    started = time.monotonic()
    answer = look_up(ledger, _settings(tmp_path, [closed]), "1.2.6.1")
    assert answer is not None and answer.outcome == "down" and "unreachable" in answer.error
    assert time.monotonic() - started < 2.0  # refused connection: no wait for the timeout
    # wlmscpfs refuses an association called with an AE title it has no worklist folder for
    scp = WlmScp(tmp_path / "wlm").start()
    try:
        wrong_ae = Worklist(name="wrong-ae", ae_title="NOSUCHAE", host="127.0.0.1", port=scp.port, timeout_s=2.0)
        answer = look_up(ledger, _settings(tmp_path, [wrong_ae]), "1.2.6.1")
        assert answer is not None and answer.outcome == "down" and "refused" in answer.error, answer.error
    finally:
        scp.stop()
    # a peer that accepts the connection and never answers: bounded by the timeout
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = Worklist(name="mute", ae_title=WORKLIST_AE, host="127.0.0.1", port=silent.getsockname()[1], timeout_s=1.0)
        started = time.monotonic()
        answer = look_up(ledger, _settings(tmp_path, [mute]), "1.2.6.1")
        elapsed = time.monotonic() - started
    assert answer is not None and answer.outcome == "down" and answer.attempts == 3
    assert elapsed < 1.0 * 2 + 1.5, elapsed  # connect + association negotiation, each bounded by timeout_s
    assert "ACC1D0001" not in answer.error and "MPI0001" not in answer.error


def test_worklist_expected_series_completes_a_two_day_rest_study_before_the_quiet_period(
        worklist: Worklist, ledger: Ledger, tmp_path: Path) -> None:
    """Day 1 of a two-day protocol brings only rest: with the worklist the study completes by
    ``expected_series`` after the settle time; without it, it waits out the quiet period."""
    t0 = utcnow()
    settings = _settings(tmp_path, [worklist], quiet_period_s=60.0, settle_s=2.0)
    assembler = Assembler(ledger, settings)
    _receive(ledger, tmp_path / "spool", "1.2.7.1", state="rest", patient_id="MPI0002", at=t0)
    assert assembler.tick(t0) == 0  # starts the lookup, does not wait for it
    assembler.worklist.wait(10)
    assert assembler.tick(t0 + timedelta(seconds=3)) == 1
    study = ledger.studies.get("1.2.7.1")
    assert study is not None and (study.state, study.rule, study.pipeline) == ("processing", "expected_series",
                                                                              "spect_mpi")
    complete = next(e for e in ledger.events.find("study", "1.2.7.1") if e.to_state == "complete")
    assert "rest present as the worklist schedules rest" in complete.reason
    # the same study without a worklist: still waiting at 3 s, complete by the quiet period
    plain = Assembler(ledger, _settings(tmp_path, [], quiet_period_s=60.0, settle_s=2.0))
    _receive(ledger, tmp_path / "spool", "1.2.7.2", state="rest", patient_id="MPI0002", at=t0)
    plain.tick(t0 + timedelta(seconds=3))
    assert ledger.studies.get("1.2.7.2").state == "receiving"
    plain.tick(t0 + timedelta(seconds=61))
    assert ledger.studies.get("1.2.7.2").rule == "quiet_period"


def test_a_worklist_that_is_down_does_not_delay_the_study_and_status_says_so(ledger: Ledger, tmp_path: Path) -> None:
    """The study completes by its own rule at the same tick as without a worklist; the lookups run
    beside it (each tick returns at once), and `cardionode status` shows the worklist down."""
    with socket.socket() as silent:  # accepts connections, never answers: the slowest failure
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = Worklist(name="ris", ae_title=WORKLIST_AE, host="127.0.0.1", port=silent.getsockname()[1], timeout_s=3.0)
        settings = _settings(tmp_path, [mute], quiet_period_s=5.0, settle_s=2.0)
        assembler = Assembler(ledger, settings)
        t0 = utcnow()
        _receive(ledger, tmp_path / "spool", "1.2.8.1", state="rest", patient_id="MPI0001", accession="ACC1D0001",
                 at=t0)
        ticks = []
        for offset in (0.0, 1.0, 4.9, 5.0):
            started = time.monotonic()
            assembler.tick(t0 + timedelta(seconds=offset))
            ticks.append(time.monotonic() - started)
            if offset == 4.9:
                assert ledger.studies.get("1.2.8.1").state == "receiving"
        assert max(ticks) < 1.0, ticks  # the lookup (3 s timeouts) never holds a tick
        study = ledger.studies.get("1.2.8.1")
        assert study is not None and (study.state, study.rule) == ("processing", "quiet_period")
        assembler.worklist.wait(15)
    answer = ledger.worklist.answer_for("1.2.8.1")
    assert answer is not None and answer.outcome == "down" and "timeout" in answer.error
    text = format_status(status_snapshot(ledger, settings))
    assert "WORKLIST (ris): context found for 0 studies, not found for 0, worklist down for 1" in text
    assert "worklist down" in text.split("WORKLIST (ris)")[1]
    detail = study_detail(ledger, settings, "1.2.8.1")
    assert detail is not None and "worklist context: worklist down (ris, 1 lookup(s)" in format_study(detail)


def test_the_pipeline_takes_clinical_inputs_from_the_worklist_where_the_images_lack_them() -> None:
    header = Dataset()
    header.PatientSex, header.PatientAge = "F", "058Y"
    given = {"height_m": 1.64, "weight_kg": 71.5, "sex": "M", "age_years": 60.0, "reason": "Dyspnoea"}
    inputs = clinical_inputs([header], given)
    assert (inputs.height_m, inputs.weight_kg, inputs.sex, inputs.age_years) == (1.64, 71.5, "F", 58.0)
    assert inputs.sources == {"height_m": "worklist", "weight_kg": "worklist", "sex": "images", "age_years": "images",
                              "reason": "worklist"}
    assert inputs.words() == ("Clinical inputs: height 1.64 m (worklist), weight 71.5 kg (worklist), BMI 26.6 kg/m2, "
                              "sex F (images), age 58 y (images), reason for the examination: Dyspnoea (worklist)")
    header.PatientSize, header.PatientWeight = "1.80", "0"  # 0: a modality's empty default, not a weight
    inputs = clinical_inputs([header], given)
    assert (inputs.height_m, inputs.weight_kg, inputs.sources["weight_kg"]) == (1.80, 71.5, "worklist")
    assert clinical_inputs([header], {}).from_worklist is False


def test_keys_are_read_from_a_received_instance(ledger: Ledger, tmp_path: Path) -> None:
    path = _receive(ledger, tmp_path / "spool", "1.2.9.1", state="rest", patient_id="MPI0009", accession="A9")
    keys = study_keys(ledger, "1.2.9.1")
    assert keys is not None and (keys.accession_number, keys.patient_id, keys.issuer_of_patient_id, keys.modality,
                                 keys.study_date) == ("A9", "MPI0009", "HOSP-A", "NM", DAY)
    assert pydicom.dcmread(path).PatientID == "MPI0009"
    assert study_keys(ledger, "9.9.9") is None


# ----------------------------------------------------------------------------- the full node


def _spect_study(folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A synthetic one-day SPECT MPI study (stress and rest, gated) of the one-day order's patient and
    accession, whose images carry no height and no weight (the modality did not record them)."""
    import numpy as np

    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import write_study

    study = ph.make_study(demo_spec("LAD", "tc99m_sestamibi"), np.random.default_rng(seed), orientation="transaxial")
    files = write_study(study, folder, seed=seed % 10000, when=datetime(2026, 12, 7, 10, 30))
    paths = [p for p in files.paths if p.suffix == ".dcm"]
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.AccessionNumber = "MPI0001", "ACC1D0001"
        del ds.PatientSize, ds.PatientWeight
        ds.save_as(path, enforce_file_format=True)
    return files.study_uid, paths


@pytest.mark.slow
def test_the_node_processes_a_one_day_study_with_the_worklists_height_and_weight(tmp_path: Path, seed: int) -> None:
    """``cardionode serve`` with Orthanc as PACS and as worklist: the SR that reaches Orthanc carries the
    worklist's height and weight (the images had none), and `cardionode status` shows the context."""
    import json

    from tests.support.config import serve_settings, write_config
    from tests.support.dicom_clients import storescu
    from tests.support.node import ServeProcess
    from tests.support.ports import wait_for

    study_uid, images = _spect_study(tmp_path / "study", seed)
    write_worklist(tmp_path / "wl", one_day_mpi(DAY))
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port, worklists=tmp_path / "wl").start()
    destination = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    worklist = {"name": "ris", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port,
                "timeout_s": 5.0}
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", node_port, [destination], pipeline_modules=[], worklists=[worklist],
        pipelines={"spect_mpi": {"models": False}}))
    node = ServeProcess(config, node_port, tmp_path / "node.log")
    try:
        node.start()
        storescu(node_port, images, check=True)
        srs = wait_for(lambda: [i for i in orthanc.results(study_uid) if i["sop_class"] == "1.2.840.10008.5.1.4.1.1.88.34"],
                       400, f"the SPECT report in Orthanc (seed {seed}); node log {tmp_path / 'node.log'}", 1.0)
        tags = orthanc.tags(srs[0]["id"])
        assert (tags.get("PatientSize"), tags.get("PatientWeight")) == ("1.78", "92.0"), tags
        (tmp_path / "sr.dcm").write_bytes(orthanc.instance_file(srs[0]["id"]))
        shown = node.cli("status", "--study", study_uid)
        assert "worklist context: found (ris by accession" in shown.stdout, shown.stdout + shown.stderr
        assert "expected series: stress, rest" in shown.stdout and "height_m 1.78, weight_kg 92.0" in shown.stdout
        data = json.loads(node.cli("status", "--json").stdout)
        assert data["worklists"]["by_outcome"] == {"found": 1, "not_found": 0, "down": 0}
        assert "ACC1D0001" not in json.dumps(data["worklists"]) and "MPI0001" not in shown.stdout
    finally:
        node.stop()
        orthanc.stop()
    assert_dciodvfy_clean(tmp_path / "sr.dcm", f"the SR with the worklist's height and weight (seed {seed})",
                          "Comprehensive3DSR")
    log = (tmp_path / "node.log").read_text(errors="replace")
    assert "MPI0001" not in log and "ACC1D0001" not in log and "Wormwood" not in log


@pytest.mark.slow
def test_the_node_with_its_worklist_down_completes_by_its_rule_and_shows_the_worklist_down(tmp_path: Path) -> None:
    """A worklist that accepts connections and never answers (8 s timeout): the study is decided by its
    rule (expected series + 1 s settle) as without a worklist, and status says the worklist is down."""
    import json

    from tests.support.config import serve_settings, write_config
    from tests.support.dicom_clients import storescu
    from tests.support.nm import write_nm_study
    from tests.support.node import ServeProcess
    from tests.support.pipelines.flowtest import NAME
    from tests.support.ports import wait_for

    study = write_nm_study(tmp_path / "study", 3, seed=4711)
    node_port = free_port()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        worklist = {"name": "ris", "ae_title": WORKLIST_AE, "host": "127.0.0.1", "port": silent.getsockname()[1],
                    "timeout_s": 8.0}
        config = write_config(tmp_path / "node.toml", **serve_settings(tmp_path / "data", node_port, [],
                                                                       worklists=[worklist]))
        node = ServeProcess(config, node_port, tmp_path / "node.log")
        try:
            node.start()
            storescu(node_port, study.paths, check=True)

            def decided() -> dict[str, object] | None:
                found = json.loads(node.cli("status", "--study", study.study_uid, "--json").stdout or "{}")
                return found if (found.get("study") or {}).get("decided_at") else None

            data = wait_for(decided, 60, "the completeness decision", 0.5)
            study_row = data["study"]
            assert study_row["rule"] == "expected_series" and study_row["pipeline"] == NAME
            waited = (datetime.fromisoformat(study_row["decided_at"])
                      - datetime.fromisoformat(study_row["last_received_at"])).total_seconds()
            assert 1.0 <= waited < 4.0, waited  # settle 1 s + a conductor tick; not the worklist's 8 s
            down = wait_for(lambda: (w := json.loads(node.cli("status", "--study", study.study_uid, "--json").stdout)
                                     .get("worklist")) and w["context"] == "worklist down" and w, 30,
                            "the worklist recorded down", 0.5)
            assert "timeout" in down["error"]
            assert "worklist down for 1" in node.cli("status").stdout
        finally:
            node.stop()
