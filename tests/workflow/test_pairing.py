"""Stress-rest pairing across studies (two-day SPECT MPI protocols, :mod:`node.workflow.pairing`).

The decision is tested as a rule on scheduled steps; the whole path with the full node
(``cardionode serve``), Orthanc as PACS and as modality worklist (the two-day orders of
:mod:`tests.support.worklist`), and the shipped SPECT pipeline (models off): today's stress study
goes to the node, yesterday's rest study is only in Orthanc; the node fetches it (C-MOVE), runs one
job on both, and the SR that reaches Orthanc is today's, with stress and rest results and the rest
images as Pertinent Other Evidence. A second patient's rest study is nowhere: their stress study is
processed alone, by its worklist's expected series, with the pairing recorded ``alone``.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.ledger import WorklistAnswer
from node.workflow.pairing import earlier_part, missing_states
from tests.support.worklist import Order, Step, two_day_mpi, write_worklist

pytestmark = pytest.mark.network

DAY = date(2026, 12, 7)
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def _step(sps: str, day: date, state: str, accession: str, matched: bool, modality: str = "NM") -> dict[str, Any]:
    return {"sps_id": sps, "date": day.isoformat(), "time": "090000", "modality": modality, "state": state,
            "accession_number": accession, "requested_procedure_id": "RP" + sps, "study_uid": f"1.2.9.{sps[-1]}",
            "matched": matched}


def _answer(*steps: dict[str, Any]) -> WorklistAnswer:
    return WorklistAnswer(study_uid="1.2.3", outcome="found", pipeline="spect_mpi", expected_series=["stress"],
                          steps=list(steps))


def test_the_pairing_rule_takes_the_latest_earlier_step_of_the_missing_state() -> None:
    import node.pipelines.spect_mpi  # noqa: F401  (registers spect_mpi)

    today = _step("S2", DAY + timedelta(1), "stress", "ACC2", True)
    rest = _step("R1", DAY, "rest", "ACC1", False)
    older = _step("R0", DAY - timedelta(3), "rest", "ACC0", False)
    answer = _answer(today)
    assert missing_states(answer) == ("rest",)
    partner = earlier_part(answer, [today, older, rest], within_days=7)
    assert partner is not None and (partner.step["sps_id"], partner.states, partner.date) == ("R1", ("rest",),
                                                                                              "2026-12-07")
    # too long ago, on the same day, later, of the state today has, of another modality: nothing to pair
    assert earlier_part(answer, [today, older], within_days=2) is None
    assert earlier_part(answer, [today, _step("R3", DAY + timedelta(1), "rest", "ACC3", False)], 7) is None
    assert earlier_part(answer, [today, _step("R4", DAY + timedelta(2), "rest", "ACC4", False)], 7) is None
    assert earlier_part(answer, [today, _step("S5", DAY, "stress", "ACC5", False)], 7) is None
    assert earlier_part(answer, [today, _step("R6", DAY, "rest", "ACC6", False, "PT")], 7) is None
    # a one-day protocol (both states today) needs no pairing
    one_day = _answer(today, _step("R7", DAY + timedelta(1), "rest", "ACC2", True))
    assert missing_states(one_day) == () and earlier_part(one_day, [rest], 7) is None


def _split_study(folder: Path, seed: int, patient_id: str, rest: tuple[str, str, date],
                 stress: tuple[str, str, date]) -> tuple[list[Path], list[Path]]:
    """A synthetic SPECT MPI study (node.synth) split into a rest study and a stress study of one patient:
    ``(study UID, accession, date)`` each; the images carry no height and no weight."""
    import numpy as np

    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import write_study

    study = ph.make_study(demo_spec("LAD", "tc99m_sestamibi"), np.random.default_rng(seed), orientation="transaxial")
    files = write_study(study, folder, seed=seed % 10000, when=datetime(2026, 12, 7, 10, 30))
    parts: dict[str, list[Path]] = {"rest": [], "stress": []}
    for path in (p for p in files.paths if p.suffix == ".dcm"):
        ds = pydicom.dcmread(path)
        state = "rest" if str(ds.SeriesDescription).upper().startswith("REST") else "stress"
        uid, accession, day = rest if state == "rest" else stress
        ds.StudyInstanceUID, ds.AccessionNumber, ds.StudyDate = uid, accession, f"{day:%Y%m%d}"
        ds.PatientID, ds.IssuerOfPatientID = patient_id, "HOSP-A"
        for keyword in ("PatientSize", "PatientWeight"):
            if keyword in ds:
                delattr(ds, keyword)
        target = folder / state / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        parts[state].append(target)
    return parts["rest"], parts["stress"]


def _dump(path: Path) -> str:
    import subprocess

    return subprocess.run(["dsrdump", "-Ph", str(path)], capture_output=True, text=True, timeout=60, check=True).stdout


def _pdf_text(data: bytes, folder: Path) -> str:
    """The text of the Encapsulated PDF summary ``data`` (a DICOM file), by poppler's pdftotext."""
    import io
    import subprocess

    pdf = folder / f"{abs(hash(data))}.pdf"
    pdf.write_bytes(pydicom.dcmread(io.BytesIO(data)).EncapsulatedDocument)
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.slow
def test_a_two_day_pair_is_analysed_together_with_the_rest_study_fetched_from_orthanc(tmp_path: Path,
                                                                                      seed: int) -> None:
    from tests.support.config import serve_settings, write_config
    from tests.support.dicom_clients import storescu
    from tests.support.node import ServeProcess
    from tests.support.orthanc import Orthanc
    from tests.support.ports import free_port, wait_for
    from tests.support.tools import assert_dciodvfy_clean

    day2 = DAY + timedelta(1)
    # patient MPI0002: the two-day orders of tests.support.worklist; the modality used the stress order's
    # Study Instance UID, and gave the rest study its own (found at the PACS by the rest order's accession)
    orders = two_day_mpi(DAY)
    rest_uid, stress_uid = "1.2.826.0.1.3680043.10.1234.7001", orders[1].study_uid
    rest, stress = _split_study(tmp_path / "a", seed, "MPI0002", (rest_uid, "ACC2D0001", DAY),
                                (stress_uid, "ACC2D0002", day2))
    # patient MPI0003: the same protocol, but the rest study never reached the PACS
    lonely = [Order("ACC3D0001", "RP3001", "1.2.826.0.1.3680043.10.1234.3001", "MPI0003", (
        Step("SPS3001R", DAY, "090000", "Rest Tc99m tetrofosmin (day 1 of 2)", "MPI-REST", "Myocardial perfusion rest"),
    ), procedure="NM MPI SPECT 2-day rest Tc99m tetrofosmin", procedure_code="MPI-SR-2D"),
        Order("ACC3D0002", "RP3002", "1.2.826.0.1.3680043.10.1234.3002", "MPI0003", (
            Step("SPS3002S", day2, "100000", "Exercise stress Tc99m tetrofosmin (day 2 of 2)", "MPI-STRESS",
                 "Myocardial perfusion stress, exercise"),
        ), procedure="NM MPI SPECT 2-day stress Tc99m tetrofosmin", procedure_code="MPI-SR-2D")]
    _, alone = _split_study(tmp_path / "b", seed + 1, "MPI0003", ("1.2.826.0.1.3680043.10.1234.7002", "ACC3D0001",
                                                                 DAY), (lonely[1].study_uid, "ACC3D0002", day2))
    write_worklist(tmp_path / "wl", orders + lonely)
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port, worklists=tmp_path / "wl").start()
    pacs = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", node_port, [pacs], pipeline_modules=[],
        worklists=[{**pacs, "name": "ris", "timeout_s": 5.0}], retrieve_from=[{**pacs, "timeout_s": 20.0}],
        pipelines={"spect_mpi": {"models": False}},
        # a long quiet period: only the worklist's expected series (+ 1 s settle) can make these studies complete
        completeness={"default": {"quiet_period_s": 120.0, "force_deadline_s": 600.0, "force_action": "process",
                                  "settle_s": 1.0}}))
    node = ServeProcess(config, node_port, tmp_path / "node.log")
    try:
        orthanc.upload(rest)  # yesterday's rest study: in the PACS, never sent to the node
        node.start()
        storescu(node_port, stress + alone, check=True)

        def sr_of(study_uid: str) -> list[dict[str, Any]]:
            return [i for i in orthanc.results(study_uid) if i["sop_class"] == SR_CLASS]

        srs = wait_for(lambda: sr_of(stress_uid), 400, f"the paired SR in Orthanc (seed {seed}); log {tmp_path}", 1.0)
        (tmp_path / "paired.dcm").write_bytes(orthanc.instance_file(srs[0]["id"]))
        lone = wait_for(lambda: sr_of(lonely[1].study_uid), 400, "the unpaired SR in Orthanc", 1.0)
        (tmp_path / "alone.dcm").write_bytes(orthanc.instance_file(lone[0]["id"]))
        assert sr_of(rest_uid) == []  # the fetched rest study is not processed on its own
        pdfs = {}
        for uid in (stress_uid, lonely[1].study_uid):
            (pdf,) = wait_for(lambda uid=uid: [i for i in orthanc.study_instances(uid) if i["sop_class"] == PDF_CLASS],
                              120, "the PDF summary in Orthanc", 1.0)
            pdfs[uid] = _pdf_text(orthanc.instance_file(pdf["id"]), tmp_path)

        def status(study_uid: str) -> dict[str, Any]:
            shown = node.cli("status", "--study", study_uid, "--json")
            assert shown.returncode == 0, shown.stdout + shown.stderr
            return dict(json.loads(shown.stdout)["study"])

        assert status(stress_uid)["state"] == "done"
        shown = node.cli("status", "--study", stress_uid).stdout
        assert "-> paired: rest from the study of 2026-12-07: fetched from pacs (the step's accession number" in shown
        fetched = status(rest_uid)
        assert fetched["state"] == "ignored" and "fetched as the earlier part (rest)" in fetched["reason"], fetched
        lonely_detail = status(lonely[1].study_uid)
        waited = (datetime.fromisoformat(lonely_detail["decided_at"])
                  - datetime.fromisoformat(lonely_detail["last_received_at"])).total_seconds()
        assert lonely_detail["rule"] == "expected_series" and waited < 15.0, lonely_detail  # not the 120 s quiet period
    finally:
        node.stop()
        orthanc.stop()

    paired = pydicom.dcmread(tmp_path / "paired.dcm")
    assert paired.StudyInstanceUID == stress_uid and paired.AccessionNumber == "ACC2D0002"
    current = {r.ReferencedSOPInstanceUID for study in paired.CurrentRequestedProcedureEvidenceSequence
               for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    other = {(study.StudyInstanceUID, r.ReferencedSOPInstanceUID) for study in paired.PertinentOtherEvidenceSequence
             for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert current == {str(pydicom.dcmread(p).SOPInstanceUID) for p in stress}
    assert other == {(rest_uid, str(pydicom.dcmread(p).SOPInstanceUID)) for p in rest}
    # the report (PDF summary; the results screen shows the same notes) says where rest came from
    assert "rest from the study of 2026-12-07 (two-day protocol, paired by the modality worklist)" in pdfs[stress_uid]
    assert "no rest series: rest results omitted" in pdfs[lonely[1].study_uid]
    text = _dump(tmp_path / "paired.dcm")
    for words in ("Summed rest score", "Summed difference score", "Total perfusion deficit at stress",
                  "Total perfusion deficit at rest"):
        assert words in text, words
    assert_dciodvfy_clean(tmp_path / "paired.dcm", f"the paired SR (seed {seed})", "Comprehensive3DSR")

    unpaired = pydicom.dcmread(tmp_path / "alone.dcm")
    assert "PertinentOtherEvidenceSequence" not in unpaired
    text = _dump(tmp_path / "alone.dcm")
    assert "Total perfusion deficit at stress" in text
    assert "Summed difference score" not in text and "Total perfusion deficit at rest" not in text
    log = (tmp_path / "node.log").read_text(errors="replace")
    assert "pairing: rest from the study of 2026-12-07: fetched from pacs" in log
    assert "pairing: rest of 2026-12-07 not found (pacs: no study of the patient that day); processed alone" in log
    assert "MPI0002" not in log and "MPI0003" not in log and "ACC2D0001" not in log


def _header(ledger: Any, folder: Path, study: str, state: str, patient_id: str, accession: str, day: date) -> None:
    """One NM reconstruction header (no pixels) of ``state``, recorded as a received instance."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from node.ledger import InstanceMeta

    nm, recon = "1.2.840.10008.5.1.4.1.1.20", ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    series, sop = f"{study}.1", f"{study}.1.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = nm, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = nm, sop, study, series
    ds.PatientID, ds.IssuerOfPatientID, ds.AccessionNumber = patient_id, "HOSP-A", accession
    ds.StudyDate, ds.Modality, ds.SeriesDescription, ds.ImageType = f"{day:%Y%m%d}", "NM", f"{state.upper()} SA", recon
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop}.dcm"
    ds.save_as(path, enforce_file_format=True)
    ledger.instances.record(InstanceMeta(sop, nm, study, series, str(path), path.stat().st_size,
                                         routing={"modality": "NM", "sop_class_uid": nm, "image_type": recon,
                                                  "series_description": f"{state.upper()} SA", "state": state}))


def test_the_earlier_study_in_the_ledger_is_paired_and_a_missing_one_leaves_the_study_alone(tmp_path: Path) -> None:
    """dcmtk wlmscpfs as worklist, no Q/R source: day 1 (rest) was received and looked up; day 2 (stress)
    pairs with it from the ledger, and its job takes both; another patient's day 2 finds nothing and is
    recorded alone, quickly."""
    import time

    from node.config import Settings, Worklist
    from node.ledger import Ledger
    from node.workflow.pairing import pair, paired_study, series_of_states
    from node.workflow.worklist import look_up
    from tests.support.worklist import WORKLIST_AE, WlmScp

    day2 = DAY + timedelta(1)
    scp = WlmScp(tmp_path / "wlm").start()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        lonely = [Order("ACC3D0002", "RP3002", "1.2.826.0.1.3680043.10.1234.3002", "MPI0003", (
            Step("SPS3001R", DAY, "090000", "Rest (day 1 of 2)", "MPI-REST", "Myocardial perfusion rest"),
            Step("SPS3002S", day2, "100000", "Exercise stress (day 2 of 2)", "MPI-STRESS", "Myocardial perfusion stress"),
        ))]  # one order, two days: the rest day's images never came
        write_worklist(scp.folder, two_day_mpi(DAY) + lonely)
        settings = Settings(data_dir=tmp_path / "var", worklists=[
            Worklist(name="wlm", ae_title=WORKLIST_AE, host="127.0.0.1", port=scp.port, timeout_s=5.0)])
        _header(ledger, tmp_path / "spool", "1.2.5.1", "rest", "MPI0002", "", DAY)
        _header(ledger, tmp_path / "spool", "1.2.5.2", "stress", "MPI0002", "ACC2D0002", day2)
        _header(ledger, tmp_path / "spool", "1.2.5.3", "stress", "MPI0003", "ACC3D0002", day2)
        for uid in ("1.2.5.1", "1.2.5.2", "1.2.5.3"):
            answer = look_up(ledger, settings, uid)
            assert answer is not None and answer.outcome == "found", uid
        assert pair(ledger, settings, "1.2.5.1") is None  # day 1: rest, nothing earlier to pair with
        record = pair(ledger, settings, "1.2.5.2")
        assert record is not None and (record["outcome"], record["study_uid"], record["states"], record["date"],
                                       record["source"]) == ("paired", "1.2.5.1", ["rest"], "2026-12-07", "ledger")
        assert record["step"]["sps_id"] == "SPS2001R"
        paired = paired_study(ledger, "1.2.5.2")
        assert paired is not None and paired.run_pairing() == {
            "study_uid": "1.2.5.2", "earlier_study_uid": "1.2.5.1", "date": "2026-12-07", "states": ["rest"]}
        assert series_of_states(ledger, "spect_mpi", "1.2.5.1", ["rest"]) == ["1.2.5.1.1"]
        (event,) = ledger.events.find("pairing", "1.2.5.2")
        assert event.to_state == "paired" and event.reason == "rest from the study of 2026-12-07 (in the ledger)"
        started = time.monotonic()
        record = pair(ledger, settings, "1.2.5.3")
        assert record is not None and (record["outcome"], record["study_uid"]) == ("alone", "")
        assert time.monotonic() - started < 5.0
        (event,) = ledger.events.find("pairing", "1.2.5.3")
        assert event.reason == ("rest of 2026-12-07 not found (not in the ledger and no [[retrieve_from]] source "
                                "configured); processed alone")
        assert paired_study(ledger, "1.2.5.3") is None
        # a Q/R source that does not answer: alone too, at once (connection refused), with its words
        from node.config import RetrieveSource
        from tests.support.ports import free_port

        _header(ledger, tmp_path / "spool", "1.2.5.4", "stress", "MPI0003", "ACC3D0002", day2)
        assert look_up(ledger, settings, "1.2.5.4") is not None
        closed = settings.model_copy(update={"retrieve_from": [
            RetrieveSource(name="pacs", ae_title="NOPACS", host="127.0.0.1", port=free_port(), timeout_s=5.0)]})
        started = time.monotonic()
        record = pair(ledger, closed, "1.2.5.4")
        assert record is not None and record["outcome"] == "alone" and time.monotonic() - started < 3.0
        (event,) = ledger.events.find("pairing", "1.2.5.4")
        assert event.reason.startswith("rest of 2026-12-07 not found (pacs: C-FIND unreachable: Q/R NOPACS@127.0.0.1:")
        assert "MPI000" not in repr([e.reason for e in ledger.events.find("pairing")])
    finally:
        ledger.close()
        scp.stop()
