"""Baselines and the evaluation report of the PET flow-reserve model (node.ai.training.pet_mfr_eval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from node.ai.metrics import auc, bootstrap_auc_ci
from node.ai.training import pet_mfr_eval as E
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.pet.cohort import TERRITORIES, TRAITS, PetCohort


def _cohort(n: int, rng: np.random.Generator, split: str) -> PetCohort:
    """A cohort of the real container with known structure (no phantoms): segment values and maps agree."""
    rest = rng.uniform(0.6, 1.4, (n, 1)) * rng.uniform(0.9, 1.1, (n, 17))
    mfr = rng.uniform(1.4, 3.4, (n, 1)) * rng.uniform(0.9, 1.1, (n, 17))
    traits = (rng.random((n, 5)) < 0.4).astype(np.int8)
    rest[traits[:, 0] == 1] *= 1.3  # "female": a segment-level signature a linear model sees
    stress = rest * mfr
    ids = DEFAULT_GRID.segment_ids() - 1
    maps = np.stack([np.stack([rest[i][ids], stress[i][ids], mfr[i][ids]]) for i in range(n)]).astype(np.float32)
    territory = np.stack([(mfr[:, [s - 1 for s in TERRITORY_SEGMENTS[t]]].mean(axis=1) < 2.0) for t in TERRITORIES], axis=1)
    return PetCohort(
        maps=maps, map_valid=np.ones((n, 40, 72), bool), segment_rest=rest.astype(np.float32),
        segment_stress=stress.astype(np.float32), segment_mfr=mfr.astype(np.float32),
        true_segment_mfr=mfr.astype(np.float32), impaired=(mfr.min(axis=1) < 2.0).astype(np.int8),
        true_impaired=(mfr.min(axis=1) < 2.0).astype(np.int8), territory_impaired=territory.astype(np.int8),
        traits=traits, true_traits=traits.copy(), defect_territory=np.array([""] * n, dtype="<U4"),
        disease=np.array(["none"] * n, dtype="<U16"), planted_mask=np.zeros((n, 40, 72), bool),
        trait_mask=np.zeros((n, 40, 72), bool), phantom_fwhm_mm=np.full(n, 9.0, np.float32),
        seed=np.arange(n, dtype=np.int64), split=np.array([split] * n, dtype="<U11"))


def test_logistic_regression_recovers_a_known_model(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5]
    w_true = np.array([1.5, -0.5, 2.0])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.3 + x @ w_true)))).astype(int)
    model = E.L2LogisticRegression(l2=1e-6).fit(x, y)
    w = model.coef[1:] / model.scale  # back on the raw scale
    np.testing.assert_allclose(w, w_true, atol=0.25)
    assert model.coef[0] - np.sum(model.coef[1:] * model.mean / model.scale) == pytest.approx(0.3, abs=0.2)
    # separable: perfect ranking, and a stronger penalty shrinks the weights
    ys = (x @ w_true > 0).astype(int)
    sep = E.L2LogisticRegression(l2=1e-3).fit(x, ys)
    assert auc(ys, sep.predict_proba(x)) > 0.999
    assert np.mean((sep.predict_proba(x) > 0.5) == ys) > 0.98
    strong = E.L2LogisticRegression(l2=1.0).fit(x, ys)
    assert np.linalg.norm(strong.coef[1:]) < np.linalg.norm(sep.coef[1:])
    assert E.choose_l2(x[:500], y[:500]) in E.L2_GRID


def test_bootstrap_ci_covers_the_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.4).astype(int)
    score = rng.normal(size=400) + 1.0 * y  # true AUC = Phi(1 / sqrt(2)) = 0.760
    a, lo, hi = E.bootstrap_auc(y, score, n=800, seed=seed)
    assert lo < a < hi and hi - lo < 0.15
    assert lo - 0.03 < norm.cdf(1 / np.sqrt(2)) < hi + 0.03
    # the vectorised bootstrap is the statistic of node.ai.metrics (ties included), on another random stream
    tied = np.round(score, 1)
    weights = np.vstack([np.ones(400), E._bootstrap_weights(400, 3, seed)])
    idx = np.repeat(np.arange(400), weights[1].astype(int))
    np.testing.assert_allclose(E._weighted_auc(y, tied, weights)[:2], [auc(y, tied), auc(y[idx], tied[idx])])
    ref_lo, ref_hi = bootstrap_auc_ci(y, score, n_boot=800, seed=seed)
    assert abs(ref_lo - lo) < 0.02 and abs(ref_hi - hi) < 0.02
    d, dlo, dhi = E.paired_auc_difference(y, score, score, n=200)
    assert d == 0.0 and dlo == 0.0 and dhi == 0.0
    d, dlo, dhi = E.paired_auc_difference(y, score + 3.0 * y, score, n=200)
    assert d > 0.1 and dlo > 0.0


def test_rules_read_the_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cohort = _cohort(40, rng, "test")
    rules = E.rule_scores(cohort, "impaired")
    np.testing.assert_allclose(-rules["lowest segment MFR < 2.0"], cohort.segment_mfr.min(axis=1), rtol=1e-5)
    glob = cohort.segment_stress.mean(axis=1) / cohort.segment_rest.mean(axis=1)
    np.testing.assert_allclose(-rules["global MFR < 2.0"], glob, rtol=1e-5)
    assert auc(cohort.impaired, rules["lowest segment MFR < 2.0"]) == 1.0
    lad = E.rule_scores(cohort, "LAD")["global MFR < 2.0"]
    segs = [s - 1 for s in TERRITORY_SEGMENTS["LAD"]]
    np.testing.assert_allclose(-lad, cohort.segment_stress[:, segs].mean(1) / cohort.segment_rest[:, segs].mean(1), rtol=1e-5)
    assert E.rule_scores(cohort, "female") == {}
    assert E.segment_features(cohort, "stacked").shape == (40, 51)
    with pytest.raises(ValueError):
        E.segment_features(cohort, "rgb")


def test_report_has_every_row_and_says_where_the_network_adds_value(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cohorts = {"development": _cohort(300, rng, "development"), "test": _cohort(200, rng, "test"),
               "external": _cohort(200, rng, "external")}
    scores = {}
    for split in ("test", "external"):
        c = cohorts[split]
        female = c.traits[:, 0].astype(float)
        smoking = c.traits[:, 4].astype(float)
        scores[split] = {
            "impaired": {"mfr": np.clip(0.5 + 0.3 * (2.0 - c.segment_mfr.min(axis=1)) + rng.normal(0, 0.3, len(c)), 0, 1)},
            "territory": {"LAD": {"stacked": rng.random(len(c))}},
            "traits": {"smoking": {"stacked": np.clip(0.2 + 0.6 * smoking + rng.normal(0, 0.1, len(c)), 0, 1)},
                       "female": {"rest": np.clip(0.5 * female + rng.random(len(c)) * 0.5, 0, 1)}},
        }
    report = E.evaluation_report(cohorts, scores, n_boot=100, seed=seed)
    rows = {(r["split"], r["task"], r["method"], r["input"]) for r in report["rows"]}
    for split in ("test", "external"):
        for task in E.TASKS:
            for inp in E.INPUTS:
                name = "logistic regression (51 segment values)" if inp == "stacked" else "logistic regression (17 segments)"
                assert (split, task, name, inp) in rows, (split, task, inp)
            if task not in TRAITS:
                assert (split, task, "lowest segment MFR < 2.0", "mfr") in rows
                assert (split, task, "global MFR < 2.0", "mfr") in rows
        assert (split, "impaired", "network", "mfr") in rows and (split, "smoking", "network", "stacked") in rows
        assert (split, "LAD", "network", "stacked") in rows and (split, "female", "network", "rest") in rows
    assert not any(r["split"] == "development" for r in report["rows"])
    for r in report["rows"]:
        assert r["auc_lo"] <= r["auc"] <= r["auc_hi"] and r["n"] == 200
        if r["method"] != "network" and not r["method"].startswith("logistic"):
            assert r["brier"] is None
    text = "\n".join(report["verdicts"])
    assert "test / smoking: the network ADDS VALUE" in text
    assert "test / LAD: the network is WORSE" in text
    assert "test / impaired: the network is WORSE" in text  # the rule reproduces its own label
    jp, mp = E.write_report(report, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads(jp.read_text())["cohort_version"] == report["cohort_version"]
    md = mp.read_text()
    assert md.count("\n| test |") == sum(r["split"] == "test" for r in report["rows"]) + sum(
        c["split"] == "test" for c in report["comparisons"])
    assert "Research use only" in md and "Yeung" in md
    with pytest.raises(ValueError, match="development"):
        E.evaluation_report({"test": cohorts["test"]}, n_boot=10)
