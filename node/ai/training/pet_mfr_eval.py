"""Baselines and the evaluation report of the PET flow-reserve model (issue 16). Research use only.

Everything is evaluated on the synthetic cohort of :mod:`node.synth.pet.cohort` (phantoms, not
patients). Tasks (labels from the cohort):

* ``impaired``: the seed's label, any of the node's measured 17 segment MFRs < 2.0;
  ``true_impaired``: the same rule on the phantom truth (what the measurement should find);
* ``LAD``, ``LCx``, ``RCA``: the node's territory rule (territory MFR < 2.0), measured;
* the five traits of :data:`node.synth.pet.cohort.TRAITS` (recorded labels, with their label noise).

Baselines (scores larger = more likely positive):

* rule **"lowest segment MFR < 2.0"** on the measured MFR polar map (the segment means of its
  valid cells, :meth:`node.quant.segments.PolarGrid.segment_means`): score ``-min``, positive when
  the minimum is below 2.0 (for a territory: its segments only);
* rule **"global MFR < 2.0"**: the mean of the measured segment stress MBF over the mean of the
  rest MBF (the node's global MFR), score ``-global``; for a territory its own ratio;
* **L2 logistic regression** (:class:`L2LogisticRegression`, Newton/IRLS in numpy) on the 17
  measured segment values of one map (rest MBF, stress MBF or MFR) and on the three stacked (51),
  standardised on the development split, ``l2`` chosen from :data:`L2_GRID` by 5-fold
  cross-validated log-loss on development, fitted on all of development (the seed's baseline).

Metrics per score (:func:`binary_metrics`): AUC with a percentile bootstrap 95 % CI (4,000
resamples by default, the seed's; :func:`bootstrap_auc`, the statistic of
:func:`node.ai.metrics.bootstrap_auc_ci` vectorised), accuracy, sensitivity and specificity at the rule's
threshold or probability 0.5, and for probabilities the Brier score, the expected calibration
error (10 bins) and the calibration slope and intercept. The network's scores (P2's model)
enter through ``network_scores``; each network input is compared with the best baseline of the
same task by a paired bootstrap of the AUC difference (:func:`paired_auc_difference`), and the
report says in words on which tasks the network adds value (:func:`verdicts`). The seed's own
figures (:data:`SEED_FIGURES`) are quoted for comparison only: they come from patients, ours from
phantoms.

Command (baselines only, or with a network's scores ``.npz`` whose keys are
``<split>/<task>/<input>``)::

    .venv/bin/python -m node.ai.training.pet_mfr_eval --json report.json --markdown report.md \\
        [--cohort-dir DIR] [--network-scores scores.npz] [--n-boot 4000]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from node.ai.metrics import auc
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, TERRITORY_SEGMENTS
from node.synth.pet.cohort import PET_COHORT_VERSION, TERRITORIES, TRAITS, PetCohort, cohort_path, load_cohort

__all__ = [
    "INPUTS",
    "TASKS",
    "L2_GRID",
    "SEED_FIGURES",
    "RESEARCH_NOTICE",
    "L2LogisticRegression",
    "bootstrap_auc",
    "binary_metrics",
    "choose_l2",
    "segment_features",
    "task_labels",
    "rule_scores",
    "fit_baselines",
    "paired_auc_difference",
    "evaluation_report",
    "verdicts",
    "markdown_table",
    "write_report",
    "main",
]

RESEARCH_NOTICE = "Research use only: synthetic phantoms, not clinically validated."
INPUTS: tuple[str, ...] = ("rest", "stress", "mfr", "stacked")
TASKS: tuple[str, ...] = ("impaired", "true_impaired", *TERRITORIES, *TRAITS)
L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
_PROB_THRESHOLD = 0.5
_MFR_THRESHOLD = 2.0

#: Yeung et al. 2022, test set n = 93 (reference pet_mbf.md 1.3): AUC of DL and logistic regression per input
SEED_FIGURES: dict[str, dict[str, dict[str, float]]] = {
    "impaired": {"network": {"rest": 0.68, "stress": 0.68, "mfr": 0.94, "stacked": 0.90},
                 "logistic": {"rest": 0.70, "stress": 0.82, "mfr": 0.94, "stacked": 0.98}},
    "LAD": {"network": {"rest": 0.54, "stress": 0.76, "mfr": 0.89, "stacked": 0.90}},
    "RCA": {"network": {"rest": 0.61, "stress": 0.73, "mfr": 0.87, "stacked": 0.91}},
    "LCx": {"network": {"rest": 0.63, "stress": 0.70, "mfr": 0.92, "stacked": 0.92}},
    "female": {"network": {"rest": 0.81, "stress": 0.65, "mfr": 0.65, "stacked": 0.66},
               "logistic": {"rest": 0.85, "stress": 0.65, "mfr": 0.57, "stacked": 0.79}},
    "smoking": {"network": {"rest": 0.71, "stress": 0.47, "mfr": 0.49, "stacked": 0.50},
                "logistic": {"rest": 0.44, "stress": 0.43, "mfr": 0.56, "stacked": 0.48}},
    "diabetes": {"network": {"rest": 0.62, "stress": 0.62, "mfr": 0.65, "stacked": 0.52},
                 "logistic": {"rest": 0.60, "stress": 0.50, "mfr": 0.61, "stacked": 0.58}},
    "hypertension": {"network": {"rest": 0.47, "stress": 0.60, "mfr": 0.60, "stacked": 0.59},
                     "logistic": {"rest": 0.52, "stress": 0.57, "mfr": 0.54, "stacked": 0.53}},
    "dyslipidaemia": {"network": {"rest": 0.52, "stress": 0.46, "mfr": 0.54, "stacked": 0.58},
                      "logistic": {"rest": 0.55, "stress": 0.45, "mfr": 0.44, "stacked": 0.50}},
}


class L2LogisticRegression:
    """L2-penalised logistic regression on standardised inputs, fitted by Newton's method (IRLS), numpy only.

    Minimises ``mean(log-loss) + l2 * |w|^2`` (the intercept is not penalised); inputs are
    standardised by the training mean and SD (constant columns left unscaled).
    """

    def __init__(self, l2: float = 1e-2, max_iter: int = 100, tol: float = 1e-10) -> None:
        self.l2 = float(l2)
        self.max_iter = max_iter
        self.tol = tol
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.coef = np.zeros(0)  # [intercept, w...] on the standardised inputs

    def fit(self, x: np.ndarray, y: np.ndarray) -> L2LogisticRegression:
        """Fit on ``x`` [n, d] and 0/1 labels ``y`` [n]."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self.mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self.scale = np.where(sd > 1e-12, sd, 1.0)
        z = np.hstack([np.ones((len(x), 1)), (x - self.mean) / self.scale])
        n, d = z.shape
        penalty = np.full(d, 2.0 * self.l2 * n)
        penalty[0] = 0.0
        beta = np.zeros(d)
        for _ in range(self.max_iter):
            p = expit(z @ beta)
            grad = z.T @ (p - y) + penalty * beta
            hess = (z * (p * (1.0 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(d)
            step = np.linalg.solve(hess, grad)
            beta = beta - step
            if float(np.max(np.abs(step))) < self.tol:
                break
        self.coef = beta
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Log-odds ``[n]``."""
        z = (np.asarray(x, dtype=float) - self.mean) / self.scale
        return np.asarray(self.coef[0] + z @ self.coef[1:], dtype=float)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of the positive class ``[n]``."""
        return np.asarray(expit(self.decision_function(x)), dtype=float)


def _bootstrap_weights(n_cases: int, n: int, seed: int) -> np.ndarray:
    """Case counts ``[n, n_cases]`` of ``n`` bootstrap resamples (with replacement), in blocks of the same stream."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, (n, n_cases))
    counts = np.zeros((n, n_cases))
    np.add.at(counts, (np.arange(n)[:, None], idx), 1.0)
    return counts


def _weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (Mann-Whitney, ties 1/2) of every row of case weights ``[B, n]``; NaN where a class is absent."""
    y = np.asarray(y, dtype=int)
    s = np.asarray(score, dtype=float)
    _, group = np.unique(s, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    onehot = np.zeros((len(s), n_groups))
    onehot[np.arange(len(s)), group] = 1.0
    neg = (weights * (y == 0)) @ onehot  # [B, groups] negative weight at each distinct score
    pos = (weights * (y == 1)) @ onehot
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.sum(pos * (below + 0.5 * neg), axis=1) / total, np.nan)


def bootstrap_auc(y: np.ndarray, score: np.ndarray, n: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: the AUC (:func:`node.ai.metrics.auc`) and its percentile bootstrap 95 % CI.

    The ``n`` case resamples are evaluated at once as case weights (the same statistic as
    :func:`node.ai.metrics.bootstrap_auc_ci`, vectorised: 4,000 resamples of 250 cases take
    milliseconds); resamples with one class only are dropped.
    """
    values = _weighted_auc(y, score, _bootstrap_weights(len(np.asarray(y)), n, seed))
    values = values[np.isfinite(values)]
    if not len(values):
        return auc(y, score), float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return auc(y, score), float(lo), float(hi)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def choose_l2(x: np.ndarray, y: np.ndarray, grid: Sequence[float] = L2_GRID, folds: int = 5, seed: int = 0) -> float:
    """The ``l2`` of ``grid`` with the lowest cross-validated log-loss (stratified ``folds``-fold)."""
    y = np.asarray(y, dtype=int)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=int)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    losses = []
    for l2 in grid:
        loss = 0.0
        for k in range(folds):
            train, held = fold != k, fold == k
            if held.sum() == 0 or len(np.unique(y[train])) < 2:
                continue
            model = L2LogisticRegression(l2).fit(x[train], y[train])
            loss += _log_loss(y[held], model.predict_proba(x[held])) * held.sum()
        losses.append(loss)
    return float(grid[int(np.argmin(losses))])


def segment_features(cohort: PetCohort, map_input: str) -> np.ndarray:
    """The measured segment values of one input, ``[N, 17]`` (``[N, 51]`` for "stacked": rest, stress, MFR)."""
    parts = {"rest": cohort.segment_rest, "stress": cohort.segment_stress, "mfr": cohort.segment_mfr}
    if map_input == "stacked":
        return np.hstack([np.asarray(parts[k], dtype=float) for k in ("rest", "stress", "mfr")])
    if map_input not in parts:
        raise ValueError(f"input must be one of {INPUTS}, got {map_input!r}")
    return np.asarray(parts[map_input], dtype=float)


def task_labels(cohort: PetCohort, task: str) -> np.ndarray:
    """0/1 labels ``[N]`` of a task of :data:`TASKS`."""
    if task == "impaired":
        return np.asarray(cohort.impaired, dtype=int)
    if task == "true_impaired":
        return np.asarray(cohort.true_impaired, dtype=int)
    if task in TERRITORIES:
        return np.asarray(cohort.territory_impaired[:, TERRITORIES.index(task)], dtype=int)
    if task in TRAITS:
        return np.asarray(cohort.traits[:, TRAITS.index(task)], dtype=int)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _map_segment_mfr(cohort: PetCohort) -> np.ndarray:
    """Segment means ``[N, 17]`` of the valid cells of the measured MFR polar maps (NaN where none)."""
    out = np.full((len(cohort), N_SEGMENTS), np.nan)
    for i in range(len(cohort)):
        out[i] = DEFAULT_GRID.segment_means(cohort.maps[i, 2], weights=cohort.map_valid[i].astype(float))
    return out


def rule_scores(cohort: PetCohort, task: str) -> dict[str, np.ndarray]:
    """Scores of the two rules for an MFR task (``{}`` for a trait): "lowest segment MFR" and "global MFR".

    Scores are the negated MFR (larger = more impaired); a rule calls positive when the score is
    at least ``-2.0``. Lowest segment: on the measured MFR polar map (segment means of valid
    cells; missing segments ignored). Global: mean segment stress MBF / mean rest MBF (territory
    tasks: over the territory's segments).
    """
    if task in TRAITS:
        return {}
    segments = list(range(N_SEGMENTS)) if task in ("impaired", "true_impaired") else \
        [s - 1 for s in TERRITORY_SEGMENTS[task]]
    map_mfr = _map_segment_mfr(cohort)[:, segments]
    lowest = np.where(np.all(np.isnan(map_mfr), axis=1), np.inf, np.nanmin(np.where(np.isnan(map_mfr), np.inf, map_mfr), axis=1))
    rest = np.asarray(cohort.segment_rest, dtype=float)[:, segments].mean(axis=1)
    stress = np.asarray(cohort.segment_stress, dtype=float)[:, segments].mean(axis=1)
    return {"lowest segment MFR < 2.0": -lowest, "global MFR < 2.0": -(stress / np.maximum(rest, 1e-9))}


def fit_baselines(development: PetCohort, tasks: Sequence[str] = TASKS,
                  seed: int = 0) -> dict[tuple[str, str], L2LogisticRegression]:
    """Logistic regressions per (task, input), ``l2`` by 5-fold CV, fitted on all of development."""
    models = {}
    for task in tasks:
        y = task_labels(development, task)
        if len(np.unique(y)) < 2:
            continue
        for map_input in INPUTS:
            x = segment_features(development, map_input)
            models[(task, map_input)] = L2LogisticRegression(choose_l2(x, y, seed=seed)).fit(x, y)
    return models


def paired_auc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 4000,
                          seed: int = 0) -> tuple[float, float, float]:
    """``(auc(a) - auc(b), lo, hi)`` with a paired percentile bootstrap 95 % CI (same resampled cases)."""
    weights = _bootstrap_weights(len(np.asarray(y)), n, seed)
    diffs = _weighted_auc(y, a, weights) - _weighted_auc(y, b, weights)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return float("nan"), float("nan"), float("nan")
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return auc(y, a) - auc(y, b), float(lo), float(hi)


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float, probability: bool, n_boot: int = 4000,
                   seed: int = 0) -> dict[str, Any]:
    """AUC with its bootstrap CI, threshold metrics and (probabilities only) calibration of one score.

    Positive call: ``score >= threshold``. Calibration (probabilities): Brier score, expected
    calibration error over 10 equal-width bins, and the slope and intercept of the logistic
    recalibration ``logit P(y) = a + b logit(p)``.
    """
    y = np.asarray(y, dtype=int)
    s = np.asarray(score, dtype=float)
    value, lo, hi = bootstrap_auc(y, s, n_boot, seed)
    pred = s >= threshold
    out: dict[str, Any] = {
        "n": int(len(y)), "prevalence": float(y.mean()) if len(y) else float("nan"), "auc": value, "auc_lo": lo,
        "auc_hi": hi, "threshold": float(threshold),
        "accuracy": float(np.mean(pred == (y == 1))) if len(y) else float("nan"),
        "sensitivity": float(np.mean(pred[y == 1])) if np.any(y == 1) else float("nan"),
        "specificity": float(np.mean(~pred[y == 0])) if np.any(y == 0) else float("nan"),
        "brier": None, "ece": None, "calibration_slope": None, "calibration_intercept": None,
    }
    if probability and len(y):
        out["brier"] = float(np.mean((s - y) ** 2))
        bins = np.clip((s * 10).astype(int), 0, 9)
        out["ece"] = float(sum(np.sum(bins == k) / len(y) * abs(np.mean(y[bins == k]) - np.mean(s[bins == k]))
                               for k in range(10) if np.any(bins == k)))
        if 0 < y.sum() < len(y):
            p = np.clip(s, 1e-6, 1 - 1e-6)
            logit = np.log(p / (1 - p))[:, None]
            fit = L2LogisticRegression(l2=1e-8).fit(logit, y)
            slope = float(fit.coef[1] / fit.scale[0])
            out["calibration_slope"] = slope
            out["calibration_intercept"] = float(fit.coef[0] - slope * fit.mean[0])
    return out


def _row(split: str, task: str, method: str, map_input: str, y: np.ndarray, score: np.ndarray, threshold: float,
         probability: bool, n_boot: int, seed: int) -> dict[str, Any]:
    return {"split": split, "task": task, "method": method, "input": map_input,
            **binary_metrics(y, score, threshold, probability, n_boot, seed)}


def _network_task_scores(scores: Mapping[str, Any] | None, task: str) -> dict[str, np.ndarray]:
    """The network's ``{input: [N]}`` of one task from a split's ``network_scores`` entry (both layouts)."""
    if not scores:
        return {}
    if task in scores and isinstance(scores[task], Mapping):
        found = scores[task]
    elif task in TERRITORIES:
        found = scores.get("territory", {}).get(task, {})
    elif task in TRAITS:
        found = scores.get("traits", {}).get(task, {})
    else:
        found = {}
    return {k: np.asarray(v, dtype=float) for k, v in found.items()}


def evaluation_report(cohorts: Mapping[str, PetCohort], network_scores: Mapping[str, Any] | None = None, *,
                      n_boot: int = 4000, seed: int = 0, tasks: Sequence[str] = TASKS) -> dict[str, Any]:
    """Baselines and the network side by side on every evaluated split.

    Parameters
    ----------
    cohorts : {split: PetCohort}
        Must hold "development" (the logistic regressions are fitted there); every other split
        (normally "test" and "external") is evaluated.
    network_scores : {split: {task: {input: [N] probability}}}, optional
        The network's probabilities per evaluated split, in that split's case order; territory
        and trait tasks may also sit under ``"territory"`` / ``"traits"`` sub-dictionaries.
        Inputs are names of :data:`INPUTS`.
    n_boot : int
        Bootstrap resamples of every CI (the seed used 4,000).
    seed : int
        Bootstrap and cross-validation seed.
    tasks : sequence of str
        Subset of :data:`TASKS`.

    Returns
    -------
    dict
        ``rows`` (one per split x task x method x input: n, prevalence, auc, auc_lo, auc_hi,
        threshold, accuracy, sensitivity, specificity, brier, ece, calibration slope and
        intercept), ``comparisons`` (network input vs the best baseline of its task: paired AUC
        difference and CI, whether the AUC CIs are separated), ``verdicts`` (sentences),
        ``splits`` (sizes, prevalences), ``seed_figures``, ``cohort_version``, ``notice``.
    """
    if "development" not in cohorts:
        raise ValueError("cohorts must include 'development' (the baselines are fitted there)")
    models = fit_baselines(cohorts["development"], tasks, seed=seed)
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    for split, cohort in cohorts.items():
        if split == "development":
            splits[split] = {"n": len(cohort), "role": "fit"}
            continue
        splits[split] = {"n": len(cohort), "prevalence": {t: float(task_labels(cohort, t).mean()) for t in tasks}}
        net_split = (network_scores or {}).get(split)
        for task in tasks:
            y = task_labels(cohort, task)
            baseline_scores: dict[tuple[str, str], np.ndarray] = {}
            for name, score in rule_scores(cohort, task).items():
                rows.append(_row(split, task, name, "mfr", y, score, -_MFR_THRESHOLD, False,
                                 n_boot, seed))
                baseline_scores[(name, "mfr")] = score
            for map_input in INPUTS:
                model = models.get((task, map_input))
                if model is None:
                    continue
                p = model.predict_proba(segment_features(cohort, map_input))
                rows.append(_row(split, task, "logistic regression (17 segments)" if map_input != "stacked"
                                 else "logistic regression (51 segment values)", map_input, y, p, _PROB_THRESHOLD,
                                 True, n_boot, seed))
                rows[-1]["l2"] = model.l2
                baseline_scores[("logistic regression", map_input)] = p
            net = _network_task_scores(net_split, task)
            if not net or not baseline_scores:
                continue
            best_key = max(baseline_scores, key=lambda k: auc(y, baseline_scores[k]))
            best = next(r for r in reversed(rows) if r["split"] == split and r["task"] == task
                        and r["input"] == (best_key[1] if best_key[0] == "logistic regression" else "mfr")
                        and r["method"].startswith(best_key[0]))
            for map_input, score in net.items():
                if score.shape != y.shape:
                    raise ValueError(f"network scores {split}/{task}/{map_input} have shape {score.shape}, labels {y.shape}")
                rows.append(_row(split, task, "network", map_input, y, score, _PROB_THRESHOLD, True, n_boot, seed))
                d, lo, hi = paired_auc_difference(y, score, baseline_scores[best_key], n=n_boot, seed=seed)
                comparisons.append({
                    "split": split, "task": task, "network_input": map_input,
                    "baseline": f"{best['method']} [{best['input']}]".replace(" []", ""),
                    "network_auc": rows[-1]["auc"], "network_ci": [rows[-1]["auc_lo"], rows[-1]["auc_hi"]],
                    "baseline_auc": best["auc"], "baseline_ci": [best["auc_lo"], best["auc_hi"]],
                    "delta_auc": d, "delta_lo": lo, "delta_hi": hi,
                    "cis_separated": bool(rows[-1]["auc_lo"] > best["auc_hi"] or rows[-1]["auc_hi"] < best["auc_lo"]),
                })
    report = {
        "notice": RESEARCH_NOTICE,
        "cohort_version": PET_COHORT_VERSION,
        "n_boot": n_boot,
        "seed": seed,
        "splits": splits,
        "rows": rows,
        "comparisons": comparisons,
        "seed_figures": SEED_FIGURES,
    }
    report["verdicts"] = verdicts(report)
    return report


def verdicts(report: Mapping[str, Any]) -> list[str]:
    """Plain sentences: per split and task, whether the network adds value over the best baseline.

    "adds value" = the paired bootstrap 95 % CI of the AUC difference (network minus the best
    baseline of the task) lies above 0; "CIs separated" is said when the two AUC CIs do not overlap.
    """
    out = []
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for c in report.get("comparisons", []):
        key = (c["split"], c["task"])
        if key not in best or c["delta_auc"] > best[key]["delta_auc"]:
            best[key] = c
    for (split, task), c in best.items():
        net = f"network [{c['network_input']}] AUC {c['network_auc']:.3f} ({c['network_ci'][0]:.3f}-{c['network_ci'][1]:.3f})"
        base = f"{c['baseline']} AUC {c['baseline_auc']:.3f} ({c['baseline_ci'][0]:.3f}-{c['baseline_ci'][1]:.3f})"
        delta = f"difference {c['delta_auc']:+.3f} ({c['delta_lo']:+.3f} to {c['delta_hi']:+.3f})"
        if c["delta_lo"] > 0:
            word = "the network ADDS VALUE" + (" (CIs separated)" if c["cis_separated"] else " (paired, CIs overlap)")
        elif c["delta_hi"] < 0:
            word = "the network is WORSE than the baseline"
        else:
            word = "no difference shown"
        out.append(f"{split} / {task}: {word}: {net} vs {base}; {delta}.")
    if not out:
        out.append("No network scores were given: baselines only.")
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(report: Mapping[str, Any]) -> str:
    """The report as Markdown: one table of every row, the comparisons and the verdicts."""
    lines = [f"# PET flow-reserve model: evaluation ({report['cohort_version']})", "", f"_{report['notice']}_", "",
             "| split | task | method | input | n | prevalence | AUC (95 % CI) | accuracy | sensitivity | specificity | "
             "Brier | ECE | calibration slope |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['split']} | {r['task']} | {r['method']} | {r['input'] or '—'} | {r['n']} | {_fmt(r['prevalence'], 2)} | "
            f"{_fmt(r['auc'])} ({_fmt(r['auc_lo'])}–{_fmt(r['auc_hi'])}) | {_fmt(r['accuracy'])} | {_fmt(r['sensitivity'])} | "
            f"{_fmt(r['specificity'])} | {_fmt(r['brier'])} | {_fmt(r['ece'])} | {_fmt(r['calibration_slope'], 2)} |")
    if report.get("comparisons"):
        lines += ["", "| split | task | network input | best baseline | network AUC | baseline AUC | ΔAUC (paired 95 % CI) | CIs separated |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["comparisons"]:
            lines.append(f"| {c['split']} | {c['task']} | {c['network_input']} | {c['baseline']} | {_fmt(c['network_auc'])} | "
                         f"{_fmt(c['baseline_auc'])} | {c['delta_auc']:+.3f} ({c['delta_lo']:+.3f} to {c['delta_hi']:+.3f}) | "
                         f"{'yes' if c['cis_separated'] else 'no'} |")
    lines += ["", "Verdicts:", ""] + [f"- {v}" for v in report["verdicts"]]
    lines += ["", "Seed study (Yeung et al. 2022, 93 patients; for comparison only, not the same data): "
              + "; ".join(f"{task}: " + ", ".join(f"{m} {'/'.join(f'{v:.2f}' for v in d.values())}" for m, d in fig.items())
                          for task, fig in report["seed_figures"].items())
              + " (AUC rest/stress/reserve/stacked)."]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], json_path: Path | str, markdown_path: Path | str) -> tuple[Path, Path]:
    """Write the report as JSON and as a Markdown table; returns both paths."""
    jp, mp = Path(json_path), Path(markdown_path)
    for p in (jp, mp):
        p.parent.mkdir(parents=True, exist_ok=True)
    jp.write_text(json.dumps(report, indent=1, default=float))
    mp.write_text(markdown_table(report))
    return jp, mp


def _load_network_scores(path: Path) -> dict[str, Any]:
    """``.npz`` with keys ``<split>/<task>/<input>`` -> the nested ``network_scores``."""
    out: dict[str, Any] = {}
    with np.load(path) as data:
        for key in data.files:
            split, task, map_input = key.split("/")
            out.setdefault(split, {}).setdefault(task, {})[map_input] = data[key]
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: the baselines (and a network's scores) on the cohort's splits."""
    parser = argparse.ArgumentParser(description="PET flow-reserve evaluation report (issue 16). " + RESEARCH_NOTICE)
    parser.add_argument("--cohort-dir", default=None, help="directory of <split>.npz (default: the cohort cache)")
    parser.add_argument("--splits", default="development,test,external")
    parser.add_argument("--network-scores", default=None, help=".npz with keys <split>/<task>/<input>")
    parser.add_argument("--n-boot", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    args = parser.parse_args(argv)
    cohorts = {s: load_cohort(cohort_path(s, args.cohort_dir)) for s in args.splits.split(",")}
    scores = _load_network_scores(Path(args.network_scores)) if args.network_scores else None
    report = evaluation_report(cohorts, scores, n_boot=args.n_boot, seed=args.seed)
    write_report(report, args.json, args.markdown)
    print("\n".join(report["verdicts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
