"""Cardiac MR LGE outputs: TID 1500 SR, bull's-eyes, segment table, PDF, DICOM Segmentation and contour overlays.

The builders get what the pipeline would give them, except that the masks are the phantom's truth
(tissue fractions >= 0.5: what a perfect segmentation sees) instead of the segmentation model's: a
full-size synthetic cine + LGE study (:func:`node.synth.cmr.study.build_cmr_study`, ischaemic transmural
infarct with MVO) is read by the node's loader (:func:`node.imaging.mr.load_cmr_study`), quantified by
:func:`node.pipelines.cmr_lge.quantify_cmr` (L's :mod:`node.quant.lge` and :mod:`node.quant.cmr_function`)
and reported by the pipeline's own ``report`` step with header-only sources. Every object is checked by
tools not written here (dciodvfy, PixelMed, dsr2html) and read back with highdicom.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.pipelines import cmr_lge
from node.pipelines.base import source_header
from node.results.seg import SEGMENTATION_STORAGE
from node.synth.cmr.phantom import TISSUES, TissueFractions
from node.synth.cmr.study import CMRStudy, build_cmr_study
from tests.results.test_validators import PIXELMED_KNOWN_WARNINGS
from tests.support.report import context
from tests.support.tools import assert_dciodvfy_clean, assert_pixelmed_sr_clean, require_tool

SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PATTERN = "ischaemic_transmural_mvo"


def truth_labels(fractions: TissueFractions) -> np.ndarray:
    """Labels of the segmentation contract (0 other, 1 LV blood, 2 LV myocardium with scar and MVO, 3 RV blood)
    from the phantom's tissue fractions: the tissue group holding the largest share of each pixel."""
    f = fractions.fractions
    group = [f[TISSUES.index(name)] for name in ("lv_blood", "myocardium", "scar", "mvo", "rv_blood")]
    blood, myo, rv = group[0], group[1] + group[2] + group[3], group[4]
    return np.argmax(np.stack([1.0 - blood - myo - rv, blood, myo, rv]), axis=0).astype(np.uint8)


@dataclass
class CmrRun:
    study: CMRStudy
    result: cmr_lge.CmrLgeResult
    outputs: list[Dataset]
    files: dict[str, Path]


@lru_cache(maxsize=2)
def _truth_result(seed: int, pattern: str, variant: str = "standard") -> tuple[CMRStudy, cmr_lge.CmrLgeResult]:
    study = build_cmr_study(variant, seed, pattern=pattern, small=False)
    loaded = cmr_lge.load_cmr_inputs(study.datasets)  # the analyse step (the loader), without the headers
    assert loaded.lge_stack is not None and loaded.cine_stack is not None and loaded.lge_role == "lge_mag"
    lge_labels = truth_labels(study.lge.fractions)
    # the loader's slice order is the phantom's (apex to base along the written normal): the images agree
    image = loaded.lge_stack.voxels[0]
    gain = float(np.median(image[lge_labels > 0] / np.maximum(study.lge.magnitude[lge_labels > 0], 1e-6)))
    assert np.allclose(image, study.lge.magnitude * gain, rtol=0.02, atol=2.0 * gain)
    cine_labels = np.stack([truth_labels(study.cine.ed_fractions), truth_labels(study.cine.es_fractions)])
    result = cmr_lge.quantify_result(loaded, lge_labels, cine_labels, notes=("truth masks (test)",))
    wanted = set(cmr_lge._individually_referenced(result))
    headers = tuple(source_header(ds) for ds in study.datasets if str(ds.SOPInstanceUID) in wanted)
    return study, replace(result, source_headers=headers)


def _name(ds: Dataset, k: int) -> str:
    sop = str(ds.SOPClassUID)
    if sop == SR:
        return "sr"
    if sop == PDF:
        return "pdf"
    if sop == SEGMENTATION_STORAGE:
        return "seg"
    return f"sc_{int(ds.SeriesNumber)}_{int(ds.InstanceNumber)}"


@pytest.fixture(scope="module")
def cmr(tmp_path_factory) -> CmrRun:
    study, result = _truth_result(3, PATTERN)
    assert not any("PixelData" in ds for ds in result.source_headers)
    outputs = cmr_lge.PIPELINE.report(result, context())
    folder = tmp_path_factory.mktemp("cmr")
    files = {}
    for k, ds in enumerate(outputs):
        path = folder / f"{_name(ds, k)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[path.stem] = path
    return CmrRun(study, result, outputs, files)


def test_outputs_are_sr_bullseyes_table_screen_pdf_seg_and_one_overlay_per_myocardial_slice(cmr):
    classes = [str(ds.SOPClassUID) for ds in cmr.outputs]
    n_overlays = int(cmr.result.myocardium.any(axis=(1, 2)).sum())
    assert classes[0] == SR and classes.count(SEGMENTATION_STORAGE) == 1 and classes.count(PDF) == 1
    overlays = [ds for ds in cmr.outputs if str(ds.SOPClassUID) == SC and int(ds.SeriesNumber) == 909]
    assert len(overlays) == n_overlays >= 6
    maps = [ds.ImageComments.split(".")[0] for ds in cmr.outputs if str(ds.SOPClassUID) == SC
            and int(ds.SeriesNumber) == 901]
    assert maps == ["LGE extent per segment, %", "LGE transmurality per segment, %"]
    assert any(int(ds.SeriesNumber) == 906 for ds in cmr.outputs)  # the segment table
    assert len({ds.SOPInstanceUID for ds in cmr.outputs}) == len(cmr.outputs)
    assert {ds.StudyInstanceUID for ds in cmr.outputs} == {cmr.result.study_instance_uid}


def test_the_report_step_is_deterministic(cmr):
    again = cmr_lge.PIPELINE.report(cmr.result, context())
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in cmr.outputs]


def test_dciodvfy_reports_no_error_on_any_object(cmr):
    for name, path in cmr.files.items():
        iod = {"sr": "Comprehensive3DSR", "pdf": "EncapsulatedPDF", "seg": "Segmentation"}.get(name, "SCImage")
        assert_dciodvfy_clean(path, f"CMR {name}", iod)


def test_segmentation_round_trip_equals_the_masks_on_the_lge_images(cmr):
    seg = hd.seg.segread(cmr.files["seg"])
    uids = list(cmr.result.lge_sop_uids)
    assert {str(i.SeriesInstanceUID) for i in seg.ReferencedSeriesSequence} == set(cmr.result.lge_series_uids)
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2],
                                             assert_missing_frames_are_empty=True)
    assert back.shape == (len(uids), *cmr.result.myocardium.shape[1:], 2)
    np.testing.assert_array_equal(back[..., 0].astype(bool), cmr.result.myocardium)
    assert cmr.result.lge is not None
    np.testing.assert_array_equal(back[..., 1].astype(bool), cmr.result.lge.primary.mask)
    assert cmr.result.lge.primary.mask.any()
    types = [(d.segmented_property_category.value, d.segmented_property_type.value) for d in seg.SegmentSequence]
    assert types == [("91723000", "49848007"), ("49755003", "12402003")]
    assert pydicom.dcmread(cmr.files["seg"]).FrameOfReferenceUID == cmr.study.datasets[0].FrameOfReferenceUID


def test_sr_reads_back_lge_mass_extent_lv_mass_function_and_segments(cmr):
    lge, function = cmr.result.lge, cmr.result.function
    assert lge is not None and function is not None
    doc = hd.sr.srread(cmr.files["sr"]).content
    groups = {g.tracking_identifier: g for g in doc.get_image_measurement_groups()}

    def values(label: str) -> dict[tuple[str, str, str], float]:
        return {(m.name.value, m.name.scheme_designator, m.unit.value): m.value for m in groups[label].get_measurements()}

    whole = values("LGE whole LV (5SD+rim+MVO)")
    assert whole[("118538004", "SCT", "g")] == pytest.approx(lge.primary.lge_mass_g, abs=0.006)
    assert whole[("260858005", "SCT", "%")] == pytest.approx(lge.primary.lge_pct_lv, abs=0.006)
    site = [s.value.value for s in groups["LGE whole LV (5SD+rim+MVO)"].finding_sites]
    assert site == ["49848007"] and groups["LGE whole LV (5SD+rim+MVO)"].finding_type.value == "122113"
    evaluations = {(q.name.value, q.value.value) for q in groups["LGE whole LV (5SD+rim+MVO)"].get_qualitative_evaluations()}
    assert ("LGEGT57", "52101004" if lge.above_cutoff else "272519000") in evaluations
    assert values("LV myocardium (LGE stack)")[("118538004", "SCT", "g")] == pytest.approx(lge.lv_mass_g, abs=0.06)
    cine = values("LV function (cine)")
    assert cine[("8811-2", "LN", "%")] == pytest.approx(function.ef_pct, abs=0.06)
    assert cine[("8821-1", "LN", "ml")] == pytest.approx(function.edv_ml, abs=0.06)
    assert cine[("8823-7", "LN", "ml")] == pytest.approx(function.esv_ml, abs=0.06)
    assert values("LV myocardium (cine, end-diastole)")[("118538004", "SCT", "g")] == pytest.approx(function.lv_mass_g,
                                                                                                       abs=0.06)
    assert cmr.result.segments is not None
    for k in np.flatnonzero(cmr.result.segments.assessed_segments):
        seg = values(f"LGE AHA segment {k + 1}")
        assert seg[("260858005", "SCT", "%")] == pytest.approx(lge.primary.segment_extent_pct[k], abs=0.06)
        assert ("LGETRANSMUR", "99CARDIONODE", "%") in seg
    secondary = [label for label in groups if label.endswith(", secondary)")]
    assert len(secondary) == len(lge.secondary) >= 3


def _texts(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            yield str(item.TextValue)
        yield from _texts(item)


def test_sr_names_the_method_and_remote_region_and_the_mr_procedure(cmr):
    sr = pydicom.dcmread(cmr.files["sr"])
    assert [c.CodeValue for c in sr.PerformedProcedureCodeSequence] == ["241620005"]
    texts = list(_texts(sr))
    assert any(t.startswith("method=5SD+rim+MVO") for t in texts)
    assert any(t.startswith("remote=auto-lowest-sector (") for t in texts)
    assert {"rim_rule=on", "mvo=included", "denominator=LGE-stack LV myocardial mass"} <= set(texts)


def test_dsr2html_renders_the_lge_and_function_results(cmr, tmp_path):
    dsr2html = require_tool("dsr2html")
    html_path = tmp_path / "sr.html"
    proc = subprocess.run([dsr2html, str(cmr.files["sr"]), str(html_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    html = html_path.read_text(errors="replace")
    for text in ("Scarred Myocardium", "Left Ventricle Myocardium", "Left ventricular ejection fraction by MR",
                 "LGE above 5.7 % of LV myocardial mass", "LGE transmurality"):
        assert text in html, text
    assert re.search(r"Extent:</b>\s*<br>\s*<span[^>]*>[\d.]+\s*%", html)


def test_overlays_reference_their_slice_and_show_the_lge_in_red(cmr):
    assert cmr.result.lge is not None
    overlays = [ds for ds in cmr.outputs if str(ds.SOPClassUID) == SC and int(ds.SeriesNumber) == 909]
    slices = [s for s in range(cmr.result.myocardium.shape[0]) if cmr.result.myocardium[s].any()]
    for ds, s in zip(overlays, slices):
        assert [i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence] == [cmr.result.lge_sop_uids[s]]
        rgb = ds.pixel_array.astype(int)
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
        green = (rgb[..., 1] > 200) & (rgb[..., 0] < 60)
        assert green.sum() > 200, s
        assert (red.sum() > 50) == bool(cmr.result.lge.primary.mask[s].any()), s


def test_truth_masks_give_the_phantom_lge_burden(cmr):
    """The wiring (slice order, spacing, positions) is right: with perfect masks the LGE burden and LV mass
    agree with the phantom's sampled truth (reference cmr_lge.md 2.5: 5SD + rim rule, LoA about +-1.6 %LV)."""
    truth = cmr.study.truth.lge
    assert cmr.result.lge is not None
    assert cmr.result.lge.primary.lge_pct_lv == pytest.approx(truth.scar_pct_sampled, abs=2.5)
    assert cmr.result.lge.lv_mass_g == pytest.approx(truth.lv_mass_g_sampled, rel=0.05)


def test_a_segmentation_on_enhanced_mr_frames_round_trips_and_validates(tmp_path):
    """Enhanced MR LGE: every slice is a frame of one instance; the Segmentation references its frames."""
    _, result = _truth_result(4, "sarcoid_epicardial", "enhanced")
    assert len(set(result.lge_sop_uids)) == 1 and len(set(result.lge_frame_numbers)) == len(result.lge_sop_uids)
    content = cmr_lge.report_content(result)
    seg_ds = cmr_lge.mask_outputs(result, content, cmr_lge.report_sources(result), context())[0]
    path = tmp_path / "seg.dcm"
    seg_ds.save_as(path, enforce_file_format=True)
    assert_dciodvfy_clean(path, "CMR SEG on Enhanced MR", "Segmentation")
    seg = hd.seg.segread(path)
    assert result.lge is not None
    back = seg.get_pixels_by_source_frame(source_sop_instance_uid=result.lge_sop_uids[0],
                                          source_frame_numbers=list(result.lge_frame_numbers), segment_numbers=[1, 2],
                                          assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(back[..., 0].astype(bool), result.myocardium)
    np.testing.assert_array_equal(back[..., 1].astype(bool), result.lge.primary.mask)


CMR_PIXELMED_KNOWN_WARNINGS = {
    **PIXELMED_KNOWN_WARNINGS,
    r'CODE \((LGEGT57|LGEPATTERN),99CARDIONODE,"[^"]+"\): Content Item not in template': "CMR evaluations",
}


@pytest.mark.slow  # PixelMed's template validation takes 15-60 s per SR
def test_pixelmed_sr_validator_reports_no_error(cmr):
    assert_pixelmed_sr_clean(cmr.files["sr"], "the SR", CMR_PIXELMED_KNOWN_WARNINGS)
