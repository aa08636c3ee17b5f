"""Inference: Grad-CAM localisation, determinism, batching, provenance, missing inputs and unknown tracers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import node.ai as ai
from node.ai.explain import summarise_attention
from node.ai.inference import StudyInputs, predict_studies
from node.ai.verdicts import VERDICTS
from node.results.content import MapImage, MeasurementGroup
from node.synth.spect import cohort as cohorts

_LIMITS: dict[int, cohorts.CohortLimits] = {}


def _limits(seed: int) -> cohorts.CohortLimits:
    """Normal limits of the synthetic normal database (the models' training domain)."""
    if seed not in _LIMITS:
        _LIMITS[seed] = cohorts.normal_limits(seed % 1000, n_per_group=40)
    return _LIMITS[seed]


def _study(key: str, case: dict, tracer: str | None = "tc99m_sestamibi", limits: cohorts.CohortLimits | None = None,
           **extra) -> StudyInputs:
    """StudyInputs of a synthetic case; with ``limits`` the deficit maps come from the cohort's normal database,
    without them inference scores the maps against the node's own limits."""
    quant: dict = {}
    if limits is not None:
        tr = "tl201" if tracer == "tl201" else "tc99m"
        d, sev, _ = cohorts.quantitative_maps(case["stress_perfusion"][None], [tr], [case["sex_male"]], limits)
        rd = cohorts.quantitative_maps(case["rest_perfusion"][None], [tr], [case["sex_male"]], limits)[0]
        quant = {"stress_deficit": d[0], "stress_severity": sev[0], "rest_deficit": rd[0]}
    return StudyInputs(
        key=key, tracer=tracer, age=case["age"], sex_male=case["sex_male"],
        stress_perfusion=case["stress_perfusion"], rest_perfusion=case["rest_perfusion"],
        stress_motion=case["stress_motion"], stress_thickening=case["stress_thickening"],
        edv=case["edv"], esv=case["esv"], lvef=case["lvef"], **quant, **extra,
    )


@pytest.mark.parametrize("territory", ["LAD", "LCx", "RCA"])
def test_gradcam_mass_sits_in_the_defect_territory(territory: str, seed: int) -> None:
    case = cohorts.single_territory_case(territory, seed, depth=0.5)
    pred = predict_studies([_study("s", case, limits=_limits(seed))], models=("cad_polar",))[0]
    heat = [im for im in pred.images if im.key == "gradcam_cad"]
    assert heat and heat[0].derivation == "gradcam" and heat[0].overlay_on == "stress_perfusion"
    share = summarise_attention(heat[0].values).territory_share
    msg = f"seed {seed}: {territory} defect, Grad-CAM shares {share}, p(CAD) {pred.probabilities['cad']}"
    assert share[territory] >= 0.60, msg


def _crt_case(seed: int) -> dict:
    c = cohorts.make_crt_cohort(1, "test", seed)
    return {k: v[0] for k, v in c.maps.items()} | {k: float(v[0]) for k, v in c.features.items()}


def test_inference_is_deterministic_and_independent_of_batch(seed: int) -> None:
    cases = [cohorts.single_territory_case(t, seed + k) for k, t in enumerate(["LAD", "RCA", "LCx"])]
    crt = _crt_case(seed)
    studies = [_study(f"s{k}", c) for k, c in enumerate(cases)]
    studies[1].tracer = "tl201"
    studies[2].rest_phase, studies[2].rest_thickening, studies[2].rest_lvef = crt["rest_phase"], crt["rest_thickening"], 25.0
    studies[2].rest_perfusion = crt["rest_perfusion"]
    first = predict_studies(studies)
    again = predict_studies(studies)
    alone = [predict_studies([s])[0] for s in studies]
    for a, b, c in zip(first, again, alone):
        assert a.probabilities == b.probabilities == c.probabilities, f"seed {seed}"
        for ia, ib, ic in zip(a.images, b.images, c.images):
            assert np.array_equal(ia.values, ib.values) and np.array_equal(ia.values, ic.values), f"seed {seed}"
    assert "crt_response" in first[2].probabilities
    assert "tl201_head" in first[1].probabilities and "tc99m_head" in first[0].probabilities


def test_predictions_are_report_content_with_provenance(seed: int) -> None:
    case = cohorts.single_territory_case("LAD", seed)
    pred = predict_studies([_study("s", case)])[0]
    assert all(isinstance(g, MeasurementGroup) for g in pred.groups)
    assert all(isinstance(i, MapImage) for i in pred.images)
    findings = {(g.finding, g.site) for g in pred.groups}
    assert ("obstructive_cad", "heart") in findings and ("obstructive_cad", "territory_lad") in findings
    assert ("abnormal_perfusion", "heart") in findings
    keys = {i.key for i in pred.images}
    for g in pred.groups:
        assert g.measurements[0].quantity == "probability" and g.measurements[0].unit == "1"
        assert 0.0 <= g.measurements[0].value <= 1.0
        assert g.evaluations[0].quantity == "classification" and g.evaluations[0].value in VERDICTS
        assert g.explanation_image is None or g.explanation_image in keys
        assert any(p.startswith("weights=sha256:") for p in g.algorithm.parameters)
        assert "trained on synthetic phantoms" in g.algorithm.intended_use
    assert any("CRT response model not applied" in n for n in pred.notes)


def test_unknown_tracer_gets_no_tracer_prediction_and_a_reason(seed: int) -> None:
    case = cohorts.single_territory_case("RCA", seed)
    pred = predict_studies([_study("s", case, tracer=None)])[0]
    assert not any(g.finding in ("abnormal_perfusion", "high_risk") for g in pred.groups)
    assert any("tracer" in n and "unknown" in n for n in pred.notes)
    assert any(g.finding == "obstructive_cad" for g in pred.groups)


def test_predict_spect_reads_the_pipeline_result_and_clinical_file(seed: int, tmp_path) -> None:
    case = cohorts.single_territory_case("LCx", seed)
    crt = _crt_case(seed)
    csv = tmp_path / "clinical.csv"
    csv.write_text("accession_number,qrs_ms,lbbb,nyha\nACC1,168,yes,3\n")
    fn = SimpleNamespace
    stress = fn(relative_pct=case["stress_perfusion"], function=fn(wall_motion_mm=case["stress_motion"], thickening_pct=case["stress_thickening"],
                                                                    edv_ml=180.0, esv_ml=130.0, lvef_pct=28.0))
    rest = fn(relative_pct=crt["rest_perfusion"], function=fn(thickening_pct=crt["rest_thickening"], lvef_pct=27.0, esv_ml=140.0),
              phase=fn(phase_map=crt["rest_phase"], statistics=fn(psd_deg=35.0, bandwidth_deg=120.0)))
    result = fn(study_instance_uid="1.2.3", age=70, sex="F", tracer="tc99m_tetrofosmin", accession_number="ACC1", stress=stress, rest=rest)
    groups, images, notes = ai.predict_spect(result, clinical_csv=csv)
    assert notes[0] == ai.AI_NOTICE
    crt_groups = [g for g in groups if g.finding == "crt_response"]
    assert len(crt_groups) == 1
    params = "|".join(crt_groups[0].algorithm.parameters)
    assert "qrs" in params.split("features_used=")[1].split("|")[0], params
    assert "features_imputed=none" in params
    assert any(i.key == "gradcam_cad" for i in images)
    bad = fn(**{**result.__dict__, "stress": fn(relative_pct=np.zeros((10, 10)))})
    with pytest.raises(ValueError, match="expected"):
        ai.predict_spect(bad)
