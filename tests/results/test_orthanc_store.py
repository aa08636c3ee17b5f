"""End to end with a real PACS (Orthanc): every object accepted, SR found by C-FIND at IMAGE level,
revisions and identical re-runs (Predecessor Documents, deterministic UIDs)."""

from __future__ import annotations

import io

import pydicom
import pytest

from node.results import build_outputs
from tests.support.dicom_clients import findscu_images, pynetdicom_store
from tests.support.report import context, make_content, write_outputs

pytestmark = pytest.mark.network

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def test_orthanc_accepts_every_object_and_finds_the_sr_at_image_level(run, orthanc):
    files = list(run.files.values())
    statuses = pynetdicom_store(orthanc.dicom_port, orthanc.ae_title, files)
    assert statuses == [0] * len(files), dict(zip(run.files, statuses))
    assert len(orthanc.instance_ids()) == len(files), "Orthanc did not keep every object"
    sr = run.outputs[0]
    found = findscu_images(
        orthanc.dicom_port,
        orthanc.ae_title,
        {"StudyInstanceUID": sr.StudyInstanceUID, "SeriesInstanceUID": sr.SeriesInstanceUID, "SOPInstanceUID": sr.SOPInstanceUID},
        ("SOPInstanceUID", "SOPClassUID"),
    )
    assert [f.get("SOPInstanceUID") for f in found] == [sr.SOPInstanceUID], found
    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.instance_id(sr.SOPInstanceUID))))
    assert stored.SOPClassUID == SR_CLASS and stored.ContentSequence == sr.ContentSequence


def _srs_in_study(orthanc, study_uid: str) -> list[dict[str, str]]:
    return findscu_images(
        orthanc.dicom_port,
        orthanc.ae_title,
        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "SOPClassUID": SR_CLASS, "SOPInstanceUID": ""},
        ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID"),
    )


def test_late_series_gives_two_srs_and_an_unchanged_rerun_none_more(run, orthanc, tmp_path):
    """First run; identical re-run (one SR); a late series -> revised run referencing the first SR; its re-run."""
    study_uid = run.content.study_instance_uid
    first = build_outputs(run.content, run.sources, context())
    for attempt in range(2):  # processing the same study twice without change
        files = list(write_outputs(first, run.content, tmp_path / f"first{attempt}").values())
        assert set(pynetdicom_store(orthanc.dicom_port, orthanc.ae_title, files)) <= {0x0000, 0xB000, 0xB007}
        again = build_outputs(run.content, run.sources, context(predecessors=(
            (study_uid, first[0].SeriesInstanceUID, SR_CLASS, first[0].SOPInstanceUID),)))
        first = again  # the node may name the stored SR as predecessor of an unchanged re-run: same UIDs
    assert [f["SOPInstanceUID"] for f in _srs_in_study(orthanc, study_uid)] == [first[0].SOPInstanceUID]

    sources = [*run.sources, *run.gated]  # the gated series arrive late
    revised = make_content(sources, seed=run.seed, lvef=52.0)
    predecessor = (study_uid, first[0].SeriesInstanceUID, SR_CLASS, first[0].SOPInstanceUID)
    second = build_outputs(revised, sources, context(predecessors=(predecessor,)))
    for attempt in range(2):
        files = list(write_outputs(second, revised, tmp_path / f"second{attempt}").values())
        assert set(pynetdicom_store(orthanc.dicom_port, orthanc.ae_title, files)) <= {0x0000, 0xB000, 0xB007}
        second = build_outputs(revised, sources, context(predecessors=(predecessor,)))

    srs = {f["SOPInstanceUID"] for f in _srs_in_study(orthanc, study_uid)}
    assert srs == {first[0].SOPInstanceUID, second[0].SOPInstanceUID}, f"seed {run.seed}"
    stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.instance_id(second[0].SOPInstanceUID))))
    pred = stored.PredecessorDocumentsSequence[0]
    ref = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (pred.StudyInstanceUID, ref.ReferencedSOPInstanceUID) == (study_uid, first[0].SOPInstanceUID)
    assert str(stored.ContentDate) + str(stored.ContentTime) >= str(first[0].ContentDate) + str(first[0].ContentTime)
    assert len(orthanc.instance_ids()) == len(first) + len(second), "an identical re-run left duplicates in the PACS"
