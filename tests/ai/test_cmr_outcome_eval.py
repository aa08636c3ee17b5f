"""Baselines and the evaluation report of the CMR outcome models (issue 18).

The cohorts here come from the cohort module's population and event process without rendering phantoms
(measured values = truth + the node's typical error), so the report's logic is checked in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node.ai.metrics import LogisticRegression
from node.ai.training.cmr_outcome_eval import (
    SEED_AUC,
    Logistic,
    bootstrap_auc,
    cv_folds,
    evaluation_report,
    load_network_scores,
    main,
    paired_difference,
    report_markdown,
    write_report,
)
from node.synth.cmr.cohort import (
    COHORT_KEYS,
    LGE_CUTOFF_PCT,
    CmrCohort,
    draw_covariates,
    draw_events,
    event_probability,
    pattern_flags,
)
from node.synth.cmr.phantom import draw_pattern


def _cohort(n: int, seed: int, name: str) -> CmrCohort:
    """A cohort of ``n`` covariate draws (no phantoms): measured LGE = truth + N(0.3, 1.0), EF + N(0.1, 1.45)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        cov = draw_covariates(rng)
        rows.append((cov.target_lge_pct, *pattern_flags(draw_pattern(cov.pattern, rng)), cov.ef_pct, cov.follow_up_y))
    a = np.asarray(rows)
    lge, rv, septal, mf, ef, fu = (a[:, k] for k in range(6))
    event, t = draw_events(lge, rv, septal, mf, ef, fu, rng)
    measured = np.clip(lge + rng.normal(0.3, 1.0, n), 0, None)
    measured[0] = np.nan  # one failed measurement
    arrays: dict[str, np.ndarray] = {}
    f = 4
    values = {
        "frames": np.zeros((n, 1, f, f)), "lge_mask": np.zeros((n, f, f)), "myocardium_mask": np.zeros((n, f, f)),
        "frame_slice": np.full(n, 7), "frame_ok": np.ones(n), "true_lge_pct": lge, "true_lge_pct_sampled": lge,
        "target_lge_pct": lge, "measured_lge_pct": measured,
        "measured_basal_lge_pct": np.clip(lge + rng.normal(0, 3.0, n), 0, None), "true_basal_lge_pct": lge,
        "true_ef": ef, "measured_ef": ef + rng.normal(0.1, 1.45, n), "lge_above": lge > LGE_CUTOFF_PCT,
        "event": event, "event_probability": event_probability(lge, rv, septal, mf, ef, fu), "event_time_y": t,
        "follow_up_y": fu, "pattern": np.full(n, "scar_free"), "lge_class": np.full(n, "none"), "rv_involvement": rv,
        "septal": septal, "multifocal": mf, "segmentation_ok": np.ones(n), "pixel_mm": np.full(n, 1.6),
        "snr_scar": np.full(n, 20.0), "seed": np.arange(n) + seed * 10_000, "cohort": np.full(n, name),
    }
    for key, dtype in COHORT_KEYS.items():
        arrays[key] = np.asarray(values[key]).astype(dtype)
    return CmrCohort(**arrays, meta={"version": "test", "segmentation_bundle": "cmr_segmentation",
                                     "segmentation_version": "1.0.0", "cohort": name})


@pytest.fixture(scope="module")
def cohorts() -> dict[str, CmrCohort]:
    return {"small": _cohort(116, 1, "small"), "large": _cohort(600, 2, "large"), "test": _cohort(300, 3, "test")}


def test_folds_are_stratified_deterministic_and_differ_between_repeats() -> None:
    y = (np.arange(117) % 5 == 0).astype(int)
    folds = cv_folds(y, k=4, repeats=3, seed=0)
    assert folds.shape == (3, 117) and set(np.unique(folds)) == {0, 1, 2, 3}
    for row in folds:
        for cls in (0, 1):
            counts = np.bincount(row[y == cls], minlength=4)
            assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, cv_folds(y, k=4, repeats=3, seed=0))
    assert not np.array_equal(folds[0], folds[1])


def test_numpy_logistic_regression_equals_the_node_one() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)) * [3.0, 10.0] + [1.0, 55.0]
    y = (rng.random(400) < 1 / (1 + np.exp(-(1.2 * (x[:, 0] - 1) / 3 - 0.5 * (x[:, 1] - 55) / 10)))).astype(float)
    ours = Logistic(l2=1e-3).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, LogisticRegression(l2=1e-3).fit(x, y).predict_proba(x), atol=1e-5)


def test_bootstrap_auc_and_paired_difference() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    assert bootstrap_auc(y, y.astype(float), n_boot=200) == (1.0, 1.0, 1.0)
    value, lo, hi = bootstrap_auc(y, rng.normal(size=300), n_boot=400)
    assert lo < value < hi and abs(value - 0.5) < 0.1
    assert 0.08 < hi - lo < 0.16  # about 2 x 1.96 x the Hanley-McNeil SE (0.033 at 150/150)
    good = y + rng.normal(0, 0.8, 300)
    delta, lo, hi = paired_difference(y, good, rng.normal(size=(3, 300)), n_boot=400)
    assert delta > 0.2 and lo > 0 and lo < delta < hi


def test_report_rows_baselines_oracle_and_winner(cohorts: dict[str, CmrCohort], tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    large, test = cohorts["large"], cohorts["test"]
    nets = {  # a network that knows the labels wins; a random one loses
        "large": {"perfect": {"lge": np.stack([large.lge_above + rng.normal(0, 0.01, len(large))] * 5)},
                  "random": {"event": rng.random((5, len(large)))}},
        "test": {"random": {"lge": rng.random(len(test)), "event": rng.random(len(test))}},
    }
    report = evaluation_report(cohorts, nets, repeats=5, n_boot=150)
    small = report["cohorts"]["small"]["tasks"]
    assert set(small["lge"]["rows"]) == {"measured_lge_rule", "measured_lge_pct", "measured_basal_lge_pct"}
    assert set(small["event"]["rows"]) == {"logistic_lge_ef", "measured_lge_rule", "true_lge_pct", "oracle"}
    assert small["event"]["rows"]["true_lge_pct"]["kind"] == "truth"  # a reference, never the best baseline
    for task in ("lge", "event"):
        for c in report["cohorts"].values():
            for row in c["tasks"][task]["rows"].values():
                lo, hi = row["ci"]
                assert 0.0 <= lo <= row["auc"] <= hi <= 1.0
    ev = report["cohorts"]["large"]["tasks"]["event"]
    assert ev["rows"]["oracle"]["kind"] == "oracle" and ev["rows"]["logistic_lge_ef"]["repeats"] == 5
    assert ev["rows"]["oracle"]["auc"] >= ev["rows"]["logistic_lge_ef"]["auc"]  # the ceiling
    assert ev["rows"]["logistic_lge_ef"]["auc"] > 0.7
    assert report["cohorts"]["large"]["tasks"]["lge"]["winner"] == "perfect"
    assert ev["winner"] == ev["best_baseline"] == "logistic_lge_ef" and "random" in ev["statement"]
    assert report["cohorts"]["test"]["tasks"]["event"]["rows"]["logistic_lge_ef"]["repeats"] == 1  # fitted on large
    md = report_markdown(report)
    assert "| event (prevalence" in md and "| oracle | oracle |" in md and f"{SEED_AUC['event']:.2f}" in md
    assert "perfect beats measured_lge_pct" in md or "perfect beats measured_lge_rule" in md
    js, mdp = write_report(report, tmp_path)
    assert js.is_file() and mdp.read_text() == md


def test_command_line_reads_cohorts_and_network_scores(cohorts: dict[str, CmrCohort], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    scores = tmp_path / "scores.npz"
    arrays: dict[str, np.ndarray] = {"test/net/lge": np.linspace(0, 1, len(cohorts["test"]))}
    np.savez(scores, allow_pickle=False, **arrays)
    assert load_network_scores(scores)["test"]["net"]["lge"].shape == (len(cohorts["test"]),)
    folder = tmp_path / "cohorts"
    assert main(["--cohorts", "large,test", "--folder", str(folder), "--scores", str(scores), "--out", str(tmp_path),
                 "--repeats", "2", "--n-boot", "100"], loader=lambda p: cohorts[p.stem]) == 0
    assert "**test** (n = 300" in capsys.readouterr().out
    assert (tmp_path / "cmr_outcome_evaluation.json").is_file()
