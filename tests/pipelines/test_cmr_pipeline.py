"""The CMR LGE pipeline: routing on ``mr_series_role``, completeness (cine and LGE expected), options,
the queue's codec on its result, and ``analyse`` with the real segmentation model.

Studies come from the CMR harness (:mod:`tests.support.cmr`: small synthetic cine + LGE studies in
vendor layouts) and, for the quantitative check, a full-size study of :mod:`node.synth.cmr`.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset

from node.pipelines import cmr_lge, registry
from node.pipelines.routing import StudySummary
from node.queue.codec import decode, encode, schema_for
from node.synth.cmr.study import build_cmr_study
from tests.results.test_cmr_outputs import PATTERN, _truth_result, truth_labels
from tests.support.cmr import VARIANTS, cmr_study
from tests.support.report import context


def _route(datasets: list[Dataset]) -> tuple[str | None, str, bool]:
    summary = StudySummary.from_datasets(datasets)
    pipeline, reason = registry.route(summary)
    complete = pipeline.accept(summary).complete if pipeline is not None else False
    return (pipeline.name if pipeline is not None else None), reason, complete


def _roles(datasets: list[Dataset]) -> set[str]:
    return {s.mr_series_role for s in StudySummary.from_datasets(datasets).series}


def test_the_pipeline_is_shipped_and_registered():
    assert "node.pipelines.cmr_lge" in registry.KNOWN_MODULES
    assert registry.get("cmr_lge") is cmr_lge.PIPELINE


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_cine_and_lge_study_is_complete_for_cmr_lge_in_every_layout(variant):
    datasets = cmr_study(variant, 0).datasets
    assert {"cine_sax", "lge_mag"} <= _roles(datasets)
    name, reason, complete = _route(datasets)
    assert name == "cmr_lge", reason
    assert complete, reason


@pytest.mark.parametrize("missing", ["cine", "lge"])
def test_a_study_without_cine_or_lge_is_accepted_but_waits_for_it(missing):
    drop = {"cine": {"cine_sax"}, "lge": {"lge_mag", "lge_psir"}}[missing]
    study = cmr_study("standard", 0)
    roles = {s.series_instance_uid: s.mr_series_role for s in StudySummary.from_datasets(study.datasets).series}
    kept = [ds for ds in study.datasets if roles[str(ds.SeriesInstanceUID)] not in drop]
    acceptance = cmr_lge.PIPELINE.accept(StudySummary.from_datasets(kept))
    assert acceptance.accepted and not acceptance.complete
    assert f"no series for '{missing}'" in acceptance.reason
    assert "MR series role is" in acceptance.reason


def test_the_rule_names_the_mr_role_when_a_series_does_not_match():
    rule = cmr_lge.PIPELINE.series_rules[0]
    summary = StudySummary.from_datasets(cmr_study("standard", 0).datasets)
    cine = next(s for s in summary.series if s.mr_series_role == "cine_sax")
    assert rule.mismatch(cine) == ("MR series role is cine_sax (node.imaging.mr.mr_series_role), not lge_mag/lge_psir")


def test_options_are_validated():
    assert cmr_lge.PIPELINE.option_problems({}) == []
    assert cmr_lge.PIPELINE.option_problems({"n_sd": 3, "lge_input": "psir"}) == []
    assert cmr_lge.PIPELINE.option_problems({"n_sd": -1})
    assert cmr_lge.PIPELINE.option_problems({"lge_input": "phase"})


def test_the_result_travels_through_the_queue_codec_unchanged():
    _, result = _truth_result(3, PATTERN)
    schema = schema_for(cmr_lge.PIPELINE.result_type)
    back = decode(encode(result, schema), schema)
    assert back.lge is not None and result.lge is not None
    assert back.lge.primary.lge_pct_lv == result.lge.primary.lge_pct_lv
    np.testing.assert_array_equal(back.lge.primary.mask, result.lge.primary.mask)
    np.testing.assert_array_equal(back.myocardium, result.myocardium)
    assert back.lge_sop_uids == result.lge_sop_uids and back.sources == result.sources
    assert len(back.source_headers) == len(result.source_headers)


def test_analyse_reads_the_stacks_and_drops_nothing_the_report_needs():
    study = cmr_study("enhanced", 0)
    result = cmr_lge.PIPELINE.analyse(study.datasets)
    assert result.lge_stack is not None and result.cine_stack is not None
    assert result.lge_stack.voxels.dtype == np.float32 and result.cine_stack.voxels.shape[0] == 12
    assert result.lge is None and result.function is None  # predict quantifies
    kept = {str(ds.SOPInstanceUID) for ds in result.source_headers}
    assert set(result.lge_sop_uids) <= kept and not any("PixelData" in ds for ds in result.source_headers)
    assert [s.name for s in cmr_lge.PIPELINE.steps] == ["analyse", "predict", "report"]


def test_predict_segments_and_quantifies_a_study_with_the_shipped_model():
    """The real path: loader, segmentation model, quantification; against the phantom's sampled truth with
    population-wide tolerances (one study; reference cmr_lge.md 8.2)."""
    study = build_cmr_study("standard", 5, pattern="sarcoid_midwall_septal", small=False)
    result = cmr_lge.PIPELINE.predict(cmr_lge.PIPELINE.analyse(study.datasets))
    assert result.lge is not None and result.function is not None
    assert result.lge_stack is None and result.cine_stack is None
    truth = study.truth
    assert result.lge.primary.lge_pct_lv == pytest.approx(truth.lge.scar_pct_sampled, abs=5.0)
    assert result.lge.lv_mass_g == pytest.approx(truth.lge.lv_mass_g_sampled, rel=0.15)
    assert result.function.ef_pct == pytest.approx(truth.cine.ef_pct_sampled, abs=10.0)
    assert {a.name for a in result.segmentation} == {"CardioNode cmr_segmentation"}
    assert len(result.lge_sop_uids) == result.myocardium.shape[0]


@pytest.mark.parametrize("missing", ["cine", "lge"])
def test_a_study_with_only_lge_or_only_cine_is_reported_with_what_it_has(missing):
    """When the completeness rules process an incomplete study (quiet period, force deadline): what is there is
    reported, with a note on what is not. Masks: the phantom's truth (the report step is what is tested)."""
    study = cmr_study("standard", 1, "sarcoid_multifocal_rv")
    roles = {s.series_instance_uid: s.mr_series_role for s in StudySummary.from_datasets(study.datasets).series}
    drop = {"cine": {"cine_sax"}, "lge": {"lge_mag", "lge_psir"}}[missing]
    kept = [ds for ds in study.datasets if roles[str(ds.SeriesInstanceUID)] not in drop]
    result = cmr_lge.PIPELINE.analyse(kept)
    assert (result.cine_stack is None) == (missing == "cine") and (result.lge_stack is None) == (missing == "lge")
    lge_labels = truth_labels(study.lge.fractions) if missing == "cine" else None
    cine_labels = (np.stack([truth_labels(study.cine.ed_fractions), truth_labels(study.cine.es_fractions)])
                   if missing == "lge" else None)
    result = cmr_lge.quantify_result(result, lge_labels, cine_labels)
    outputs = cmr_lge.PIPELINE.report(result, context())
    classes = [str(ds.SOPClassUID) for ds in outputs]
    text = " ".join(result.notes)
    if missing == "cine":
        assert "no cine short-axis stack" in text and result.function is None and result.lge is not None
        assert classes.count("1.2.840.10008.5.1.4.1.1.66.4") == 1
    else:
        assert "no LGE short-axis stack" in text and result.lge is None and result.function is not None
        assert "1.2.840.10008.5.1.4.1.1.66.4" not in classes
    assert classes[0] == "1.2.840.10008.5.1.4.1.1.88.34" and "1.2.840.10008.5.1.4.1.1.104.1" in classes
