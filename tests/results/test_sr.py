"""The measurement report: read back with highdicom, structure, deterministic identity, revisions."""

from __future__ import annotations

import dataclasses
import io

import highdicom as hd
import pydicom
import pytest
from highdicom.sr import CodedConcept

from node.results import ContentError, TemplateError, build_outputs, to_enhanced_sr
from node.results.content import Algorithm, Measurement
from node.results.tables import reading_order
from node.results.templates import load_templates
from tests.support.report import MODEL, context, make_content, write_outputs
from tests.support.tools import dciodvfy


def _text_items(group, code_value):
    return [i.TextValue for i in group[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == code_value]


def test_highdicom_reads_every_group_back_with_site_value_and_unit(run):
    templates = load_templates()
    report = hd.sr.srread(run.files["sr"]).content
    groups = report.get_image_measurement_groups()
    assert len(groups) == len(run.content.groups), f"seed {run.seed}"
    for expected, got in zip(reading_order(run.content), groups):  # the SR lists the summary first
        site, _ = templates.site(expected.site)
        assert got.tracking_identifier == expected.label
        assert [s.value.value for s in got.finding_sites] == [site.value]
        assert got.finding_type.value == templates.finding(expected.finding).value
        measured = {(m.name.value, m.unit.value): m.value for m in got.get_measurements()}
        wanted = {}
        for m in expected.measurements:
            q = templates.quantity(m.quantity, run.content.pipeline)
            wanted[(q.code.value, q.unit)] = m.value
        assert measured.keys() == wanted.keys(), expected.label
        for key, value in wanted.items():
            assert measured[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (expected.label, key, f"seed {run.seed}")
        evals = {(q.name.value, q.value.value) for q in got.get_qualitative_evaluations()}
        for e in expected.evaluations:
            assert (templates.evaluation_concept(e.quantity).value, templates.evaluation_value(e.value).value) in evals
        if expected.state:
            assert (templates.state_concept.value, templates.state(expected.state)[0].value) in evals
        # TID 4019 in every group (highdicom has no accessor: walk the TEXT items, pitfall 5)
        assert _text_items(got, "111001") == [expected.algorithm.name]
        assert _text_items(got, "111003") == [expected.algorithm.version]
        assert _text_items(got, "111002") == list(expected.algorithm.parameters)
    apex = report.get_image_measurement_groups(finding_site=CodedConcept("128564006", "SCT", "Apex of left ventricle"))
    assert len(apex) == 3  # stress, rest, difference


def test_document_header_and_structure(run):
    sr = pydicom.dcmread(run.files["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert [c.CodeValue for c in sr.PerformedProcedureCodeSequence] == ["252432008"]
    assert 900 <= sr.SeriesNumber and "research use" in sr.SeriesDescription
    assert {s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence} >= {"99CARDIONODE", "99IHE"}
    procedure = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert [p.ConceptCodeSequence[0].CodeValue for p in procedure] == ["49118-3"]
    observer = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence}
    assert observer["121012"].UID == run.context.device_uid

    containers = []

    def walk(items):
        for item in items:
            if item.ValueType == "CONTAINER":
                containers.append(item.ContinuityOfContent)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert sr.ContinuityOfContent == "SEPARATE" and containers and set(containers) == {"SEPARATE"}
    # Image Library lists every source image; evidence lists sources and the heat map
    library = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    listed = {img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for img in library.ContentSequence[0].ContentSequence}
    assert listed == {s.sop_instance_uid for s in run.content.sources}
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    heat = next(d for d in run.outputs if d.get("DerivationCodeSequence") and d.DerivationCodeSequence[0].CodeValue == "130403")
    assert evidence == listed | {heat.SOPInstanceUID}
    # the AI group references its heat map as (130401, DCM, "Visual explanation")
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    ai_group = next(g for g in measurements.ContentSequence if any(
        i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "130401" for i in g.ContentSequence))
    refs = [i for i in ai_group.ContentSequence if i.ValueType == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "130401"]
    assert [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in refs] == [heat.SOPInstanceUID]
    assert not [i for i in ai_group.ContentSequence if i.ValueType == "CODE" and i.RelationshipType == "CONTAINS"
                and i.ConceptNameCodeSequence[0].CodeValue == "121071" and i.ConceptCodeSequence[0].CodeValue == "52101004"]
    # IHE AIR Contributing Equipment: one "Processing Algorithm" item per algorithm, with Device UID
    algo_items = [e for e in sr.ContributingEquipmentSequence if e.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"]
    assert sorted(e.ManufacturerModelName for e in algo_items) == sorted(a.name for a in run.content.algorithms)
    assert all(e.DeviceUID and e.SoftwareVersions for e in algo_items)


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_identical_rerun_gives_identical_bytes_and_uids(run, tmp_path):
    again = build_outputs(run.content, run.sources, run.context)
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in run.outputs]
    assert [d.SeriesInstanceUID for d in again] == [d.SeriesInstanceUID for d in run.outputs]
    files = write_outputs(again, run.content, tmp_path)
    assert files.keys() == run.files.keys()
    for kind, path in files.items():
        assert path.read_bytes() == run.files[kind].read_bytes(), f"{kind} differs on an identical re-run (seed {run.seed})"
    # the node passing the identical SR as "predecessor" of itself changes nothing
    sr = run.outputs[0]
    ctx = context(multiframe_screen=True, predecessors=((sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.SOPClassUID, sr.SOPInstanceUID),))
    same = build_outputs(run.content, run.sources, ctx)[0]
    assert _bytes(same) == run.files["sr"].read_bytes() and "PredecessorDocumentsSequence" not in same


def test_revised_run_gets_new_uids_and_references_its_predecessor(run):
    old = run.outputs[0]
    revised = make_content(run.sources, seed=run.seed, lvef=41.0)
    reference = (old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPClassUID, old.SOPInstanceUID)
    ctx = context(predecessors=(reference, reference))  # the ledger may list the same SR for two earlier runs
    new = build_outputs(revised, run.sources, ctx)
    assert len(new[0].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 1
    assert new[0].SOPInstanceUID != old.SOPInstanceUID
    assert not {d.SOPInstanceUID for d in new} & {d.SOPInstanceUID for d in run.outputs}
    pred = new[0].PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == old.StudyInstanceUID
    assert pred.ReferencedSeriesSequence[0].SeriesInstanceUID == old.SeriesInstanceUID
    ref = pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (old.SOPClassUID, old.SOPInstanceUID)
    assert new[0].ContentDate == old.ContentDate  # from the sources, never the wall clock


def test_new_model_weights_change_uids_and_device_uid(run):
    new_model = Algorithm(MODEL.name, MODEL.version, ("weights=sha256:ffffffffffff", "threshold=0.50"), MODEL.training_data)
    groups = tuple(dataclasses.replace(g, algorithm=new_model) if g.algorithm == MODEL else g for g in run.content.groups)
    images = tuple(dataclasses.replace(i, algorithm=new_model) if i.algorithm == MODEL else i for i in run.content.images)
    content = dataclasses.replace(run.content, groups=groups, images=images,
                                  algorithms=tuple(new_model if a == MODEL else a for a in run.content.algorithms))
    sr = build_outputs(content, run.sources, context(pdf_summary=False))[0]
    old = run.outputs[0]
    assert sr.SOPInstanceUID != old.SOPInstanceUID

    def device(ds):
        return {e.ManufacturerModelName: e.DeviceUID for e in ds.ContributingEquipmentSequence if "DeviceUID" in e}

    assert device(sr)[MODEL.name] != device(old)[MODEL.name]
    quant = next(a.name for a in run.content.algorithms if a != MODEL)
    assert device(sr)[quant] == device(old)[quant]


def test_enhanced_sr_fallback_validates(run, tmp_path):
    enhanced = to_enhanced_sr(run.outputs[0])
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    lines = dciodvfy(path)
    assert "EnhancedSR" in lines and not [line for line in lines if line.startswith("Error")], lines[:10]
    assert enhanced.SOPInstanceUID == run.outputs[0].SOPInstanceUID


def test_content_errors_name_the_problem(run):
    group = run.content.groups[0]
    wrong_unit = dataclasses.replace(group, measurements=(Measurement("relative_uptake", 50.0, "1"),))
    with pytest.raises(ContentError, match="UCUM '%'"):
        build_outputs(dataclasses.replace(run.content, groups=(wrong_unit,)), run.sources, run.context)
    nan = dataclasses.replace(group, measurements=(Measurement("relative_uptake", float("nan"), "%"),))
    with pytest.raises(ContentError, match="finite"):
        build_outputs(dataclasses.replace(run.content, groups=(nan,)), run.sources, run.context)
    unknown = dataclasses.replace(group, site="aha_18")
    with pytest.raises(TemplateError, match="sites.toml"):
        build_outputs(dataclasses.replace(run.content, groups=(unknown,)), run.sources, run.context)
    with pytest.raises(ContentError, match="dataset was not passed|datasets missing"):
        build_outputs(run.content, run.sources[:1], run.context)
