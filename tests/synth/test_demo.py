"""`cardionode demo` sends a synthetic study to a DICOM storage SCP in another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.imaging.nm import group_nm_reconstructions
from node.imaging.pet import load_dynamic_pet
from node.synth.spect.study import synthetic_patient
from tests.support import REPO
from tests.support.ports import free_port, wait_for_port

# A storage SCP in its own process, bound to 127.0.0.1 (dcmtk 3.6.7's storescp cannot bind to one address).
SCP_SCRIPT = """
import sys
from pathlib import Path
from pynetdicom import AE, evt, StoragePresentationContexts
out, port = Path(sys.argv[1]), int(sys.argv[2])
def on_store(event):
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as(out / (ds.SOPInstanceUID + ".dcm"), enforce_file_format=True)
    return 0x0000
ae = AE(ae_title="DEMOPACS")
ae.supported_contexts = StoragePresentationContexts
ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])
"""


@pytest.mark.network
def test_demo_sends_a_loadable_study_and_never_prints_the_identity(seed, tmp_path):
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen([sys.executable, "-c", SCP_SCRIPT, str(received), str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 20, "the storage SCP", process=scp)
        run = subprocess.run(
            [sys.executable, "-m", "node.cli", "demo", "--seed", str(seed), "--defect", "RCA", "--tracer", "tl201",
             "--port", str(port), "--called-aet", "DEMOPACS", "--save", str(tmp_path / "saved")],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    finally:
        scp.terminate()
        scp.wait(timeout=20)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"seed {seed}" in output and "[4/4]" in output and "Research use only" in output
    patient = synthetic_patient("M", 60, f"seed-{seed}")
    for secret in (patient.patient_id, patient.name, patient.name.split("^")[0], patient.birth_date):
        assert secret not in output, f"seed {seed}: identity leaked in demo output"
    files = sorted(received.iterdir())
    assert len(files) == 4, output
    loaded, rejected = group_nm_reconstructions([pydicom.dcmread(p) for p in files])
    assert rejected == [] and len(loaded) == 4
    assert {r.tracer for r in loaded} == {"tl201"} and {r.state for r in loaded} == {"stress", "rest"}
    assert (tmp_path / "saved" / "truth.json").exists()
    assert str(pydicom.dcmread(files[0]).PatientID) == patient.patient_id


def test_demo_reports_a_refused_association(seed, tmp_path):
    port = free_port()  # nothing listens there
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo", "--seed", str(seed), "--defect", "none", "--gates", "0",
         "--port", str(port), "--called-aet", "NOBODY"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no association" in run.stdout


@pytest.mark.network
@pytest.mark.slow  # ~30 s: pynetdicom stores one small instance per ~50 ms (Nagle + delayed ACK on loopback)
def test_pet_demo_sends_a_loadable_rest_stress_study_in_two_studies(seed: int, tmp_path: Path) -> None:
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen([sys.executable, "-c", SCP_SCRIPT, str(received), str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 20, "the storage SCP", process=scp)
        run = subprocess.run(
            [sys.executable, "-m", "node.cli", "demo", "--modality", "pet", "--seed", str(seed), "--defect", "LCx",
             "--vendor", "siemens", "--decay", "NONE", "--two-days", "--shuffle", "--voxel-mm", "8", "--port", str(port),
             "--called-aet", "DEMOPACS", "--save", str(tmp_path / "saved")],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
    finally:
        scp.terminate()
        scp.wait(timeout=20)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert f"seed {seed}" in output and "Research use only" in output and "2 studies" in output
    assert "REST RB-82 CHLORIDE DYNAMIC: 256 instances -> stored" in output and "[512/512]" in output
    patient = synthetic_patient("M", 62, f"seed-{seed}")
    for secret in (patient.patient_id, patient.name, patient.name.split("^")[0], patient.birth_date):
        assert secret not in output, f"seed {seed}: identity leaked in demo output"
    datasets = [pydicom.dcmread(p) for p in received.iterdir()]
    assert len(datasets) == 512, output
    truth = json.loads((tmp_path / "saved" / "truth.json").read_text())
    assert truth["study"]["defect_territory"] == "LCx" and truth["arrangement"] == "two_studies"
    for doc in truth["series"]:
        series = load_dynamic_pet([ds for ds in datasets if ds.SeriesInstanceUID == doc["series_instance_uid"]])
        assert series.state == doc["state"] and series.tracer == "rb82_chloride" and series.timing == "siemens"
        assert series.decay_correction == "NONE" and series.study_uid == doc["study_instance_uid"]
        np.testing.assert_allclose(series.start_s, doc["frame_start_s"], atol=0.5)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2 and {str(ds.PatientID) for ds in datasets} == {
        patient.patient_id}
