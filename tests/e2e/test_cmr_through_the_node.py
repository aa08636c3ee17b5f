"""A synthetic cine + LGE cardiac MR study through the whole node: PACS -> node (cmr_lge) -> PACS.

dcmtk ``storescu`` sends a full-size synthetic study (:mod:`node.synth.cmr`, Siemens layout: one cine
series per slice, LGE magnitude and PSIR) to Orthanc, which routes MR to ``cardionode serve``. The node
segments it with the shipped ``cmr_segmentation`` model and quantifies it; the results must come back
into Orthanc: a TID 1500 SR (LGE mass and extent at the LV myocardium, MR LVEF LOINC 8811-2), the
bull's-eyes, segment table, contour overlays as Secondary Capture, the DICOM Segmentation of the LV
myocardium and the LGE on the LGE images, and the PDF. Every object passes dciodvfy; the Segmentation
reads back with highdicom onto the LGE images. The outcome model (issue 18) adds two SR prediction groups
(probability of LGE > 5.7 % and of a clinical event, naming the basal LGE frame by SOP Instance UID) whose
IMAGE items reference the two Grad-CAM Secondary Captures that arrive too; the SR passes PixelMed's validator.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests

from node.synth.cmr.study import build_cmr_study, save_cmr_study
from tests.results.test_cmr_outputs import CMR_PIXELMED_KNOWN_WARNINGS
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for
from tests.support.tools import assert_dciodvfy_clean, assert_pixelmed_sr_clean

pytestmark = [pytest.mark.network, pytest.mark.slow]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
IODS = {SR_CLASS: "Comprehensive3DSR", SC_CLASS: "SCImage", SEG_CLASS: "Segmentation", PDF_CLASS: "EncapsulatedPDF"}


def test_a_cine_and_lge_study_comes_back_as_validated_sr_seg_and_images(tmp_path, seed):
    study = build_cmr_study("siemens", seed % 1000, pattern="sarcoid_multifocal_rv", small=False)
    paths = save_cmr_study(study, tmp_path / "study")
    study_uid = str(study.datasets[0].StudyInstanceUID)
    lge_uids = {str(ds.SOPInstanceUID) for ds in study.datasets if "LGE" in str(ds.SeriesDescription).upper()
                or "PSIR" in str(ds.SeriesDescription).upper()}

    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    destination = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", node_port, [destination], pipeline_modules=[]))
    node = NodeProcess(config, node_port, tmp_path / "node.log", mode="serve")
    # 2 bull's-eyes, table, screen, >= 4 overlays, 2 Grad-CAM heat maps of the outcome model
    expected = {SR_CLASS: 1, SEG_CLASS: 1, PDF_CLASS: 1, SC_CLASS: 10}
    try:
        node.start()
        storescu(orthanc.dicom_port, list(paths), called=orthanc.ae_title, check=True)

        def arrived() -> list[dict] | None:
            found = [i for i in orthanc.study_instances(study_uid) if i["sop_class"] in expected]
            counts = {c: sum(1 for i in found if i["sop_class"] == c) for c in expected}
            return found if all(counts[c] >= n for c, n in expected.items()) else None

        results = wait_for(arrived, 900, f"the CMR results in Orthanc (seed {seed}); node log: {tmp_path / 'node.log'}",
                           3.0)
        files: dict[str, list[Path]] = {}
        for n, instance in enumerate(results):
            path = tmp_path / f"result_{n}.dcm"
            response = requests.get(f"{orthanc.url}/instances/{instance['id']}/file", timeout=30)
            response.raise_for_status()
            path.write_bytes(response.content)
            files.setdefault(instance["sop_class"], []).append(path)
    finally:
        node.stop()
        orthanc.stop()

    for sop_class, group in files.items():
        for path in group:
            assert_dciodvfy_clean(path, f"{path.name} (seed {seed})", IODS[sop_class])

    report = hd.sr.srread(files[SR_CLASS][0]).content
    codes = {(m.name.value, m.unit.value) for g in report.get_image_measurement_groups() for m in g.get_measurements()}
    assert {("118538004", "g"), ("260858005", "%"), ("8811-2", "%"), ("8821-1", "ml"), ("8823-7", "ml")} <= codes

    seg = hd.seg.segread(files[SEG_CLASS][0])
    referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced and referenced <= lge_uids
    assert [d.segmented_property_type.value for d in seg.SegmentSequence] == ["49848007", "12402003"]
    source = sorted(referenced)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=source, segment_numbers=[1],
                                            assert_missing_frames_are_empty=True)
    assert pixels.sum() > 0

    # the outcome model: two prediction groups, each referencing a Grad-CAM SC that arrived, on the basal LGE frame
    # (in the SR of the run that had the LGE stack: a slow sender can trigger earlier runs on part of the study)
    def ai_groups(path: Path) -> list:
        groups = hd.sr.srread(path).content.get_image_measurement_groups()
        return [g for g in groups if str(g.tracking_identifier).startswith("AI:")]

    final = next((p for p in files[SR_CLASS] if ai_groups(p)), files[SR_CLASS][0])
    assert_pixelmed_sr_clean(final, f"the SR (seed {seed})", CMR_PIXELMED_KNOWN_WARNINGS)
    ai = ai_groups(final)
    assert len(ai) == 2
    assert all(m.name.value == "AIPROB" and 0.0 <= float(m.value) <= 1.0 for g in ai for m in g.get_measurements())
    heat = {}
    for path in files[SC_CLASS]:
        ds = pydicom.dcmread(path)
        if "Grad-CAM" in str(ds.SeriesDescription):
            heat[str(ds.SOPInstanceUID)] = ds
    assert len(heat) == 2
    referenced_heat = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                       for g in ai for item in g[0].ContentSequence if item.ValueType == "IMAGE"}
    assert referenced_heat == set(heat)
    basal = {str(i.ReferencedSOPInstanceUID) for ds in heat.values() for i in ds.SourceImageSequence}
    assert len(basal) == 1 and basal <= lge_uids
    texts = []
    stack = list(pydicom.dcmread(final).ContentSequence)
    while stack:
        item = stack.pop()
        texts.append(str(item.get("TextValue", "")))
        stack.extend(item.get("ContentSequence", []))
    assert f"basal_frame_sop_instance_uid={basal.pop()}" in texts
    assert pydicom.dcmread(files[SEG_CLASS][0]).FrameOfReferenceUID == study.datasets[0].FrameOfReferenceUID
