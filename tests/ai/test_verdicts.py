"""What the reader gets from a model: names in clinician words, a verdict with an indeterminate band chosen on the
validation cohort by the documented rule, and heat maps titled with probability and threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from node.ai import bundles
from node.ai.inference import HEAT_MAP_UNIT, StudyInputs, predict_studies
from node.ai.training.polar import (
    _KIND,
    POLAR_BUNDLES,
    READER_NAMES,
    reader_outputs_block,
    synthetic_limits,
    synthetic_validation_cohort,
    validation_predictions,
)
from node.ai.verdicts import BAND_SHARE, VERDICTS, indeterminate_band, reader_outputs, verdict
from node.results.templates import load_templates
from node.synth.spect import cohort as cohorts


def test_verdict_is_indeterminate_inside_the_band_and_never_flips_there() -> None:
    band = (0.40, 0.80)
    assert verdict(0.62, band) == "indeterminate"
    assert verdict(0.40, band) == verdict(0.80, band) == "indeterminate"  # the band is closed
    assert verdict(0.3999, band) == "absent" and verdict(0.05, band) == "absent"
    assert verdict(0.8001, band) == "present" and verdict(0.97, band) == "present"
    # a band of zero width is the plain threshold rule
    assert verdict(0.5, (0.5, 0.5)) == "present" and verdict(0.4999, (0.5, 0.5)) == "absent"
    for bad in (-0.1, 1.2, float("nan")):
        with pytest.raises(ValueError, match="probability"):
            verdict(bad, band)
    with pytest.raises(ValueError, match="lower end"):
        verdict(0.5, (0.8, 0.4))


def test_shipped_reader_outputs_give_the_indeterminate_verdict_for_a_probability_inside_the_band() -> None:
    outputs = bundles.load_bundle("cad_polar", device="cpu").reader_outputs()
    patient = outputs["patient"]
    lo, hi = patient.band
    assert lo < patient.threshold < hi
    assert patient.verdict(patient.threshold) == "indeterminate"
    assert patient.verdict((lo + hi) / 2) == "indeterminate"
    assert patient.verdict(max(lo - 0.01, 0.0)) == "absent" and patient.verdict(min(hi + 0.01, 1.0)) == "present"


def test_band_rule_holds_the_least_certain_share_symmetric_in_log_odds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.4).astype(float)
    scores = expit(rng.normal(1.5 * (2 * labels - 1), 1.5))
    threshold = 0.45
    out = indeterminate_band(labels, scores, threshold)
    lo, hi = out["indeterminate_band"]
    msg = f"seed {seed}: {out}"
    assert lo < threshold < hi, msg
    assert logit(threshold) - logit(lo) == pytest.approx(logit(hi) - logit(threshold), rel=1e-9), msg
    # the cases inside are the BAND_SHARE closest to the threshold (ties at the edge: one case)
    inside = (scores >= lo) & (scores <= hi)
    assert abs(inside.sum() - BAND_SHARE * len(scores)) <= 1, msg
    closest = np.argsort(np.abs(logit(scores) - logit(threshold)))[: int(inside.sum())]
    assert inside[closest].all(), msg
    # what the band does there is recorded: fewer errors outside than inside
    v = out["validation"]
    accuracy_outside = np.mean((scores[~inside] >= threshold) == (labels[~inside] == 1))
    assert v["share_in_band"] == pytest.approx(inside.mean()) and v["accuracy_in_band"] < accuracy_outside, msg
    # unlabelled cases are left out; with none at all the band has zero width (the plain threshold rule)
    with_missing = indeterminate_band(np.append(labels, np.nan), np.append(scores, 0.9), threshold)
    assert with_missing["indeterminate_band"] == out["indeterminate_band"]
    empty = indeterminate_band(np.full(3, np.nan), np.full(3, 0.5), threshold)
    assert empty["indeterminate_band"] == [threshold, threshold] and empty["validation"]["n"] == 0


@pytest.mark.parametrize("name", POLAR_BUNDLES)
def test_shipped_bands_are_what_the_rule_gives_on_the_validation_cohort(name: str) -> None:
    """The stored bands are recomputed from the bundle's own validation split (seed and size of its training run)."""
    bundle = bundles.load_bundle(name, device="cpu")
    meta = bundle.metadata
    stored = meta["reader_outputs"]
    n_train = int(meta["training"]["command"].split("--synthetic")[1].split()[0])
    seed = int(meta["training"]["seed"])
    limits = None if name == "crt_response" else synthetic_limits(n_train, seed)
    predictions = validation_predictions(name, bundle.network, synthetic_validation_cohort(_KIND[name], n_train, seed), limits,
                                         meta["evaluation_summary"])
    again = reader_outputs_block(name, predictions)
    assert stored["band_share"] == BAND_SHARE and stored["band_rule"] == again["band_rule"]
    assert set(stored["outputs"]) == set(READER_NAMES[name])
    for key, rec in again["outputs"].items():
        np.testing.assert_allclose(stored["outputs"][key]["indeterminate_band"], rec["indeterminate_band"], rtol=0, atol=1e-6,
                                   err_msg=f"{name} {key}")
        assert stored["outputs"][key]["threshold"] == pytest.approx(rec["threshold"], abs=1e-9)
        assert stored["outputs"][key]["name"] == rec["name"]


def test_every_polar_bundle_names_its_outputs_in_clinician_words() -> None:
    for name in POLAR_BUNDLES:
        outputs = reader_outputs(bundles.load_bundle(name, device="cpu").metadata, name)
        for key, out in outputs.items():
            assert out.name.startswith("Probability of "), (name, key, out.name)
            assert out.model in out.name and len(out.name) <= 64, (name, key, out.name)  # the SR tracking identifier holds 64
            assert not any(word in out.name.lower() for word in ("head", "grad-cam", "attention", "tc99m", "tl201")), out.name
    with pytest.raises(RuntimeError, match="reader_outputs"):
        reader_outputs({"name": "cad_polar"})


def test_templates_code_every_verdict() -> None:
    templates = load_templates()
    codes = {v: templates.evaluation_value(v) for v in VERDICTS}
    assert codes["indeterminate"].value == "82334004" and codes["indeterminate"].meaning == "Indeterminate"
    assert len({c.value for c in codes.values()}) == len(VERDICTS)


def test_predictions_carry_the_names_verdicts_and_titled_heat_maps(seed: int) -> None:
    case = cohorts.single_territory_case("RCA", seed, depth=0.5)
    study = StudyInputs(key="s", tracer="tc99m_sestamibi", age=float(case["age"]), sex_male=float(case["sex_male"]),
                        stress_perfusion=np.asarray(case["stress_perfusion"]), rest_perfusion=np.asarray(case["rest_perfusion"]),
                        stress_motion=np.asarray(case["stress_motion"]), stress_thickening=np.asarray(case["stress_thickening"]),
                        edv=float(case["edv"]), esv=float(case["esv"]), lvef=float(case["lvef"]))
    pred = predict_studies([study])[0]
    cad = bundles.load_bundle("cad_polar", device="cpu").reader_outputs()
    tracer = bundles.load_bundle("tracer_heads", device="cpu").reader_outputs()
    by_label = {g.label: g for g in pred.groups}
    expected = {cad["patient"].name: ("cad", cad["patient"]), tracer["tc99m"].name: ("tc99m_head", tracer["tc99m"])}
    expected |= {cad[f"territory_{t}"].name: (f"cad_{t}", cad[f"territory_{t}"]) for t in ("lad", "lcx", "rca")}
    for label, (prob_key, out) in expected.items():
        group = by_label[label]
        p = pred.probabilities[prob_key]
        assert group.evaluations[0].value == out.verdict(p), f"seed {seed}: {label} p {p}"
    heat = {im.key: im for im in pred.images}
    for key, out, prob_key in (("gradcam_cad", cad["patient"], "cad"), ("gradcam_tc99m", tracer["tc99m"], "tc99m_head")):
        image = heat[key]
        assert f"{pred.probabilities[prob_key]:.2f}" in image.title and f"threshold {out.threshold:.2f}" in image.title, image.title
        assert image.unit == HEAT_MAP_UNIT and "attention" in image.unit and "%" not in image.unit
        assert image.subtitle.startswith(out.verdict(pred.probabilities[prob_key]).capitalize()), image.subtitle
        assert f"{out.band[0]:.2f}-{out.band[1]:.2f}" in image.subtitle and "stress perfusion" in image.subtitle
        assert image.value_range == (0.0, 1.0)
    assert any("indeterminate" in n and "CAD model" in n for n in pred.notes), pred.notes
