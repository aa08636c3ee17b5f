"""PET MBF outputs: SR, bull's-eyes with contour lines, curve plots, segment table, Parametric Maps, screen, PDF.

A realistic PET report content built by hand (:mod:`tests.support.pet_report`: 17 segments x
rest/stress MBF, MFR, territories, global, haemodynamics, quality flags, two time-activity-curve
plots, one voxel MBF map per state on the grid of small synthetic dynamic PET series) goes
through :func:`node.results.build_outputs` with header-only sources. Every object is checked by
tools not written here (dciodvfy, PixelMed, dsr2html, pdftotext) and read back with highdicom
and pydicom.
"""

from __future__ import annotations

import dataclasses
import io
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node import RESEARCH_USE_NOTICE
from node.quant.mbf import QUALITY_FLAG_CODES
from node.quant.segments import DEFAULT_GRID
from node.results import ContentError, build_outputs, write_preview
from node.results.content import (
    Algorithm,
    Curve,
    CurvePlot,
    Evaluation,
    MapImage,
    Measurement,
    MeasurementGroup,
    ReportContent,
    SourceInstance,
)
from node.results.identity import content_digest
from node.results.outputs import output_names
from node.results.render import render_bullseye, render_curve_plot
from node.results.sr import MAX_GROUP_SOURCE_REFERENCES, build_sr
from node.results.tables import format_value, global_rows, reading_order, segment_table
from node.results.templates import load_templates
from tests.results.test_templates import _codes
from tests.results.test_validators import PIXELMED_KNOWN_WARNINGS
from tests.support.dicom_clients import pynetdicom_store
from tests.support.pet_report import PETReport, pet_report
from tests.support.report import context
from tests.support.tools import assert_dciodvfy_clean, assert_pixelmed_sr_clean, dciodvfy, require_tool

NAMES = ["sr", "sc_stress_mbf", "sc_rest_mbf", "sc_mfr", "sc_rest_tac", "sc_stress_tac", "sc_segment_table",
         "pm_rest_mbf_voxels", "pm_stress_mbf_voxels", "results_screen_1", "screen", "pdf"]
_PM = "1.2.840.10008.5.1.4.1.1.30"


@dataclass
class PetRun:
    report: PETReport
    outputs: list[Dataset]
    files: dict[str, Path]

    @property
    def content(self) -> ReportContent:
        return self.report.content


def _write(outputs: list[Dataset], content: ReportContent, directory: Path) -> dict[str, Path]:
    files = {}
    for ds, name in zip(outputs, output_names(content, outputs)):
        path = directory / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[name] = path
    return files


@pytest.fixture(scope="module")
def pet(tmp_path_factory) -> PetRun:
    seed = random.SystemRandom().randrange(2**31)
    print(f"PET results seed: {seed}")
    report = pet_report(seed)
    assert not any("PixelData" in ds for ds in report.sources)  # headers only, as the report step may get them
    outputs = build_outputs(report.content, report.sources, context(multiframe_screen=True))
    return PetRun(report, outputs, _write(outputs, report.content, tmp_path_factory.mktemp("pet")))


def test_outputs_come_in_the_documented_order(pet):
    assert list(pet.files) == NAMES, f"seed {pet.report.seed}"
    classes = [str(ds.SOPClassUID) for ds in pet.outputs]
    assert classes == ["1.2.840.10008.5.1.4.1.1.88.34", *["1.2.840.10008.5.1.4.1.1.7"] * 6, _PM, _PM,
                       "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4", "1.2.840.10008.5.1.4.1.1.104.1"]
    assert len({ds.SOPInstanceUID for ds in pet.outputs}) == len(pet.outputs)
    assert {ds.StudyInstanceUID for ds in pet.outputs} == {pet.content.study_instance_uid}


@pytest.mark.parametrize("name", NAMES)
def test_dciodvfy_reports_no_error(pet, name):
    iod = {"sr": "Comprehensive3DSR", "screen": "MultiframeTrueColorSCImage", "pdf": "EncapsulatedPDF"}.get(
        name, "ParametricMap" if name.startswith("pm_") else "SCImage")
    assert_dciodvfy_clean(pet.files[name], f"{name} (seed {pet.report.seed})", iod)


#: PET's coded evaluations are, like SPECT's, outside PixelMed 2022's TID 1501 rows (warnings are acceptable)
PET_PIXELMED_KNOWN_WARNINGS = {
    **PIXELMED_KNOWN_WARNINGS,
    r'CODE \((IMPAIREDMFR|MBFQUALFLAG),99CARDIONODE,"[^"]+"\): Content Item not in template': "PET evaluations",
}


@pytest.mark.slow  # PixelMed's template validation takes 15-60 s per SR depending on the machine's load
def test_pixelmed_sr_validator_reports_no_error(pet):
    assert_pixelmed_sr_clean(pet.files["sr"], "the SR", PET_PIXELMED_KNOWN_WARNINGS)


def test_dsr2html_shows_flow_and_reserve_with_names_units_and_states(pet, tmp_path):
    dsr2html = require_tool("dsr2html")
    html_path = tmp_path / "sr.html"
    proc = subprocess.run([dsr2html, str(pet.files["sr"]), str(html_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    html = html_path.read_text(errors="replace")
    value = float(pet.report.segment_mbf["stress"][6])  # stress MBF of segment 7
    assert re.search(r"Absolute Regional Blood Flow:</b>\s*<br>\s*<span[^>]*>" + re.escape(f"{value:g}")
                     + r"\s*ml/min/g", html), f"seed {pet.report.seed}"
    assert re.search(r"Coronary Flow reserve:</b>\s*<br>\s*<span[^>]*>[\d.]+\s*\{ratio\}", html)
    for text in ("Resting State", "Cardiac Stress State", "left ventricle mid anterior segment",
                 "Left Anterior Descending Coronary Artery", "Heart rate", "Double Product", "Patient motion",
                 "Unstable kinetic fit", "Impaired myocardial flow reserve"):
        assert text in html, text


def test_highdicom_reads_back_every_number_code_unit_site_and_state(pet):
    templates = load_templates()
    report = hd.sr.srread(pet.files["sr"]).content
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(pet.content.groups), f"seed {pet.report.seed}"
    for expected, got in zip(reading_order(pet.content), groups):  # the SR lists the summary first
        assert got.tracking_identifier == expected.label
        assert [s.value.value for s in got.finding_sites] == [templates.site(expected.site)[0].value]
        assert got.finding_type.value == templates.finding(expected.finding).value
        measured = {(m.name.value, m.name.scheme_designator, m.unit.value): m.value for m in got.get_measurements()}
        wanted = {}
        for m in expected.measurements:
            q = templates.quantity(m.quantity, pet.content.pipeline)
            wanted[(q.code.value, q.code.scheme, q.unit)] = m.value
        assert measured.keys() == wanted.keys(), expected.label
        for key, value in wanted.items():
            assert measured[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (expected.label, key)
        evals = {(q.name.value, q.value.value) for q in got.get_qualitative_evaluations()}
        if expected.state is not None:
            assert (templates.state_concept.value, templates.state(expected.state)[0].value) in evals
        for e in expected.evaluations:
            assert (templates.evaluation_concept(e.quantity).value, templates.evaluation_value(e.value).value) in evals
    # the numbers a cardiologist reads, by standard code: segment 7 rest and stress MBF, its MFR
    mid_anterior = report.get_image_measurement_groups(
        finding_site=hd.sr.CodedConcept("264848000", "SCT", "left ventricle mid anterior segment"))
    found = {}
    for group in mid_anterior:
        states = {q.value.meaning for q in group.get_qualitative_evaluations() if q.name.value == "IMGSTATE"}
        for m in group.get_measurements():
            found[(m.name.value, m.unit.value, next(iter(states), None))] = m.value
    assert found == {
        ("126390", "ml/min/g", "Cardiac Stress State"): pytest.approx(float(pet.report.segment_mbf["stress"][6])),
        ("126390", "ml/min/g", "Resting State"): pytest.approx(float(pet.report.segment_mbf["rest"][6])),
        ("122217", "{ratio}", None): pytest.approx(float(pet.report.segment_mfr[6])),
    }


def test_sr_names_the_pet_procedure_and_the_kinetic_model(pet):
    sr = pydicom.dcmread(pet.files["sr"])
    assert [c.CodeValue for c in sr.PerformedProcedureCodeSequence] == ["122793"]
    procedure = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert [p.ConceptCodeSequence[0].CodeValue for p in procedure] == ["44136-0"]
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    parameters = [i.TextValue for i in measurements.ContentSequence[0].ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert "kinetic_model=rb82_lortie" in parameters


def _frames_by_slice(ds: Dataset, sources: dict[str, Dataset], uids: tuple[str, ...]) -> dict[int, int]:
    """Frame index -> slice index of the map, from each frame's source reference; positions must agree."""
    out = {}
    for frame, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in sources[source_uid].ImagePositionPatient], abs=1e-4)
        out[frame] = uids.index(source_uid)
    return out


def test_parametric_maps_read_back_with_the_input_floats_code_unit_and_geometry(pet):
    sources = {str(ds.SOPInstanceUID): ds for ds in pet.report.sources}
    for volume in pet.content.parametric_maps:
        ds = pydicom.dcmread(pet.files[f"pm_{volume.key}"])
        assert ds.SOPClassUID == _PM and ds.BitsAllocated == 32 and "FloatPixelData" in ds
        assert ds.ContentQualification == "RESEARCH" and "Research use only" in ds.ContentDescription
        assert ds.RecognizableVisualFeatures == "NO" and ds.BodyPartExamined == "HEART"
        assert ds.FrameOfReferenceUID == sources[volume.source_sop_instance_uids[0]].FrameOfReferenceUID
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
        assert (quantity.CodeValue, quantity.CodingSchemeDesignator) == ("126390", "DCM")
        assert (mapping.MeasurementUnitsCodeSequence[0].CodeValue, mapping.RealWorldValueSlope,
                mapping.RealWorldValueIntercept) == ("ml/min/g", 1.0, 0.0)
        frames = ds.pixel_array
        assert frames.dtype == np.float32 and frames.shape == volume.values.shape
        order = _frames_by_slice(ds, sources, volume.source_sop_instance_uids)
        assert sorted(order.values()) == list(range(volume.values.shape[0]))
        for frame, slice_index in order.items():
            np.testing.assert_array_equal(frames[frame], volume.values[slice_index])
        # highdicom's reader gives the same voxels at the same patient positions
        read = hd.pm.ParametricMap.from_dataset(ds).get_volume()
        for k in range(read.array.shape[0]):
            position = (read.affine @ np.array([k, 0, 0, 1.0]))[:3]
            slice_index = next(i for i, uid in enumerate(volume.source_sop_instance_uids)
                               if np.allclose([float(v) for v in sources[uid].ImagePositionPatient], position, atol=1e-3))
            np.testing.assert_array_equal(read.array[k].astype(np.float32), volume.values[slice_index])


def test_plot_table_and_screen_objects(pet):
    for name, number in (("sc_rest_tac", 905), ("sc_stress_tac", 905), ("sc_segment_table", 906)):
        ds = pydicom.dcmread(pet.files[name])
        assert (ds.ConversionType, ds.BurnedInAnnotation, ds.BodyPartExamined) == ("WSD", "YES", "HEART")
        assert ds.SeriesNumber == number and "research use" in ds.SeriesDescription
        assert ds.DerivationCodeSequence[0].CodeValue == "129104"
        assert RESEARCH_USE_NOTICE in ds.ImageComments and RESEARCH_USE_NOTICE in ds.DerivationDescription
        assert {s.ReferencedSOPInstanceUID for s in ds.SourceImageSequence} == {s.sop_instance_uid for s in pet.content.sources}
    screen = pydicom.dcmread(pet.files["screen"])
    assert list(screen.FrameLabelVector) == ["STRESS_MBF", "REST_MBF", "MFR", "REST_TAC", "STRESS_TAC", "SEGMENT TABLE",
                                             "GLOBAL RESULTS"]
    assert screen.NumberOfFrames == 7


def test_pdf_has_every_result_the_plots_and_the_notice(pet, tmp_path):
    pdftotext = require_tool("pdftotext")
    ds = pydicom.dcmread(pet.files["pdf"])
    pdf = tmp_path / "summary.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength])
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^Page size:\s+841\.89 x 595\.\d+ pts \(A4\)", info, re.M), info  # landscape A4, as many pages as needed
    images = subprocess.run(["pdfimages", "-list", str(pdf)], capture_output=True, text=True, timeout=60).stdout
    assert len(images.splitlines()) - 2 >= len(pet.content.images) + len(pet.content.plots)
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
    flat = " ".join(text.split())
    assert " ".join(RESEARCH_USE_NOTICE.split()) in flat
    rows = {line.split()[0]: line.split() for line in text.splitlines() if re.match(r"\s*\d{1,2} [a-z]", line)}
    for k in range(17):
        cells = rows[str(k + 1)]
        for value in (pet.report.segment_mbf["stress"][k], pet.report.segment_mbf["rest"][k], pet.report.segment_mfr[k]):
            assert format_value(value, 2) in cells, (k + 1, value, cells, f"seed {pet.report.seed}")
    for label, value, _unit in global_rows(pet.content, load_templates()):
        assert value in flat and label.split(":")[0] in flat, (label, value)
    for note in pet.content.notes:
        assert " ".join(note.split()) in flat


def test_identical_rerun_gives_identical_bytes(pet):
    again = build_outputs(pet.content, pet.report.sources, context(multiframe_screen=True))
    for name, ds in zip(NAMES, again):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert buf.getvalue() == pet.files[name].read_bytes(), f"{name} differs on an identical re-run"


def test_plots_maps_and_contours_enter_the_digest(pet):
    content = pet.content
    digest = content_digest(content)
    plot = content.plots[0]
    curve = dataclasses.replace(plot.curves[0], y=plot.curves[0].y + 0.001)
    changed_plot = dataclasses.replace(plot, curves=(curve, *plot.curves[1:]))
    volume = content.parametric_maps[0]
    values = volume.values.copy()
    values[0, 0, 0] += 0.5
    image = content.images[-1]
    variants = [
        dataclasses.replace(content, plots=(changed_plot, *content.plots[1:])),
        dataclasses.replace(content, parametric_maps=(dataclasses.replace(volume, values=values), *content.parametric_maps[1:])),
        dataclasses.replace(content, images=(*content.images[:-1], dataclasses.replace(image, contour_levels=(2.0,)))),
    ]
    assert len({digest, *(content_digest(v) for v in variants)}) == 4


def test_digest_of_a_report_without_the_pet_content_is_unchanged():
    """The digest (hence every output UID) of a report without plots, maps or contours is the one it had
    before those fields existed (value computed with the code before issue 15)."""
    algo = Algorithm("quant", "1.0", ("a=1",), "none")
    values = np.linspace(0.0, 100.0, DEFAULT_GRID.shape[0] * DEFAULT_GRID.shape[1]).reshape(DEFAULT_GRID.shape)
    content = ReportContent(
        pipeline="spect_mpi", pipeline_version="1.0.0", procedure="nm_myocardial_perfusion", study_instance_uid="1.2.3",
        sources=(SourceInstance("1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.20", "1.2.3.4.5"),),
        groups=(MeasurementGroup("Stress perfusion AHA segment 1", "perfusion_normal", "aha_1", "stress", algo,
                                 (Measurement("relative_uptake", 81.5, "%"),),
                                 (Evaluation("perfusion_category", "normal"),)),),
        images=(MapImage("stress", "Stress perfusion", values, "%", (0.0, 100.0),
                         segment_values=tuple(float(v) for v in range(17)), algorithm=algo),),
        algorithms=(algo,), notes=("a note",))
    assert content_digest(content) == "ecc8bf366e75affc943944fbd93fc4e6f0db42181c09f86a9f49ec23777fca24"


def test_segment_table_has_one_column_per_state_and_quantity(pet):
    templates = load_templates()
    header, rows = segment_table(pet.content, templates)
    assert header == ["Segment", "Stress\nMBF\nmL/min/g", "Rest\nMBF\nmL/min/g", "MFR", "MFR\nimpaired"]
    k = 4  # segment 5
    # 2 decimals by the tables' rule (half away from zero: 3.025 -> "3.03", where "{:.2f}" gives "3.02")
    assert rows[k] == ["5 basal inferolateral", format_value(pet.report.segment_mbf["stress"][k], 2),
                       format_value(pet.report.segment_mbf["rest"][k], 2), format_value(pet.report.segment_mfr[k], 2),
                       "Present" if pet.report.segment_mfr[k] < 2.0 else "Absent"]
    # the quality flag at segment 5 has no number: it is listed with the other results, not dropped
    flags = [row for row in global_rows(pet.content, templates) if row[0].startswith("Quality flag")]
    assert [row[1] for row in flags] == ["unstable fit", "motion"]


def _disc_radius_of_changes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Radii (in units of the bull's-eye disc radius) of the pixels that differ inside the disc."""
    cx, cy, r = 0.41 * 512, 0.51 * 512, 0.37 * 512 / 1.15  # disc centre and radius (see test_images_pdf)
    rows, cols = np.nonzero(np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 60)
    radius = np.hypot(cols - cx, rows - cy) / r
    return radius[radius < 0.97]


def test_contour_lines_follow_their_levels():
    u = DEFAULT_GRID.u_centres
    values = np.repeat((4.0 * u)[:, None], DEFAULT_GRID.n_psi, axis=1)  # 0 at the apex to 4 at the base
    plain = MapImage("m", "test", values, "{ratio}", (0.0, 4.0), colormap="gray")
    lines = render_bullseye(dataclasses.replace(plain, contour_levels=(1.0, 3.0)))
    changed = _disc_radius_of_changes(lines, render_bullseye(plain))
    assert changed.size > 200
    near = np.minimum(np.abs(changed - 0.25), np.abs(changed - 0.75))
    assert np.mean(near < 0.04) > 0.9, np.histogram(changed, bins=10, range=(0, 1))
    inner, outer = np.sum(np.abs(changed - 0.25) < 0.04), np.sum(np.abs(changed - 0.75) < 0.04)
    # 1.0 is dashed (gaps), 3.0 solid: per unit of circumference the solid line changes more pixels
    assert outer / 0.75 > 1.3 * inner / 0.25
    with pytest.raises(ValueError, match="outside value_range"):
        render_bullseye(dataclasses.replace(plain, contour_levels=(5.0,)))


def test_curve_plot_rendering_is_deterministic_and_checks_its_curves(pet):
    plot = pet.content.plots[0]
    first = render_curve_plot(plot)
    assert first.shape == (512, 512, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_curve_plot(plot))
    bad = CurvePlot("p", "t", "x (s)", "y", (Curve("LV", np.arange(3.0), np.arange(4.0)),))
    with pytest.raises(ValueError, match="one length"):
        render_curve_plot(bad)
    with pytest.raises(ValueError, match="style"):
        render_curve_plot(CurvePlot("p", "t", "x (s)", "y", (Curve("LV", np.arange(3.0), np.arange(3.0), "bars"),)))


def test_parametric_map_errors_name_the_problem(pet):
    content, sources = pet.content, pet.report.sources
    volume = content.parametric_maps[0]

    def with_map(**changes) -> ReportContent:
        return dataclasses.replace(content, parametric_maps=(dataclasses.replace(volume, **changes),))

    ctx = context(pdf_summary=False)
    with pytest.raises(ContentError, match="UCUM 'ml/min/g'"):
        build_outputs(with_map(unit="ml/g/min"), sources, ctx)
    with pytest.raises(ContentError, match="source instances"):
        build_outputs(with_map(source_sop_instance_uids=volume.source_sop_instance_uids[:-1]), sources, ctx)
    with pytest.raises(ContentError, match="not passed to build_outputs"):
        build_outputs(with_map(source_sop_instance_uids=(*volume.source_sop_instance_uids[:-1], "1.2.3.999")), sources, ctx)
    nan = volume.values.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ContentError, match="finite"):
        build_outputs(with_map(values=nan), sources, ctx)


def test_preview_writes_plots_table_and_parametric_maps(pet, tmp_path):
    written = {p.name for p in write_preview(pet.outputs, pet.content, tmp_path)}
    for name in NAMES[1:9]:
        assert f"{name}.dcm" in written
    assert {"rest_tac.png", "stress_tac.png", "segment_table.png", "pm_rest_mbf_voxels.png", "mfr.png"} <= written


def test_templates_cover_the_pet_contract():
    templates = load_templates()
    for code in QUALITY_FLAG_CODES:
        templates.evaluation_value(code)
    templates.evaluation_concept("quality_flag")
    templates.evaluation_concept("impaired_flow_reserve")
    for key, (value, scheme, unit) in {
        "mbf": ("126390", "DCM", "ml/min/g"), "mfr": ("122217", "DCM", "{ratio}"),
        "heart_rate": ("8867-4", "LN", "/min"), "systolic_pressure": ("271649006", "SCT", "mm[Hg]"),
        "rate_pressure_product": ("122708", "DCM", "mm[Hg]/min"), "mbf_rpp_corrected": (None, "99CARDIONODE", "ml/min/g"),
        "mfr_rpp_corrected": (None, "99CARDIONODE", "{ratio}"), "blood_fraction": (None, "99CARDIONODE", "1"),
    }.items():
        q = templates.quantity(key, "pet_mbf")
        assert (q.code.scheme, q.unit) == (scheme, unit) and value in (None, q.code.value), key
    assert templates.procedure("pet_myocardial_perfusion")[1].value == "122793"
    for finding in ("myocardial_blood_flow", "myocardial_flow_reserve", "haemodynamics", "mbf_quality"):
        templates.finding(finding)
    numbers = set()
    for kind in ("sr", "sc_map", "sc_heatmap", "sc_plot", "sc_table", "pm", "mf_screen", "pdf"):
        series = templates.series(kind)
        assert len(series["description"]) <= 64 and "research use" in series["description"]
        numbers.add(series["series_number"])
    assert len(numbers) == 8
    meanings = [code for _, code in _codes(templates)]
    assert all(len(code["meaning"]) <= 64 for code in meanings), [c for c in meanings if len(c["meaning"]) > 64]



@pytest.mark.network
def test_orthanc_accepts_every_pet_object(pet, orthanc):
    files = list(pet.files.values())
    statuses = pynetdicom_store(orthanc.dicom_port, orthanc.ae_title, files)
    assert statuses == [0] * len(files), dict(zip(pet.files, statuses))
    assert len(orthanc.instance_ids()) == len(files), "Orthanc did not keep every object"
    for volume in pet.content.parametric_maps:
        sop_uid = pydicom.dcmread(pet.files[f"pm_{volume.key}"], stop_before_pixels=True).SOPInstanceUID
        stored = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.instance_id(sop_uid))))
        assert stored.SOPClassUID == _PM and stored.FloatPixelData == pydicom.dcmread(pet.files[f"pm_{volume.key}"]).FloatPixelData


def test_an_sr_of_every_dynamic_frame_lists_the_instances_once(pet, tmp_path):
    """With every frame's instances as sources (96 here, thousands in a clinical study) the groups do not
    repeat them: the Image Library describes each series once and the evidence lists every instance."""
    sources = pet.report.sources
    assert len(sources) > MAX_GROUP_SOURCE_REFERENCES
    content = dataclasses.replace(pet.content, sources=tuple(
        SourceInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID) for ds in sources))
    sr = build_sr(content, sources, context())
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert not [line for line in dciodvfy(path) if line.startswith("Error")]
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {str(ds.SOPInstanceUID) for ds in sources}
    library = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    listed = [img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for img in library.ContentSequence[0].ContentSequence]
    assert len(listed) == len({ds.SeriesInstanceUID for ds in sources}) == 2
    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    assert len(groups) == len(content.groups)
    assert not [i for g in groups for i in g[0].ContentSequence if i.ValueType == "IMAGE"]  # no Source of Measurement


def test_long_global_tables_continue_on_further_screen_frames(pet):
    extra = tuple(
        MeasurementGroup(label=f"Rest haemodynamics repeat {k}", finding="haemodynamics", site="heart", state="rest",
                         algorithm=pet.content.groups[0].algorithm, measurements=(Measurement("heart_rate", 60.0 + k, "/min"),))
        for k in range(40)
    )
    content = dataclasses.replace(pet.content, groups=pet.content.groups + extra, parametric_maps=())
    rows = global_rows(content, load_templates())
    screen = build_outputs(content, pet.report.sources, context(multiframe_screen=True, pdf_summary=False))[-1]
    labels = [str(label) for label in screen.FrameLabelVector if str(label).startswith("GLOBAL RESULTS")]
    assert len(labels) == -(-len(rows) // 34) >= 2 and labels[0] == "GLOBAL RESULTS 1"
