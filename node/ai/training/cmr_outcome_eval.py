"""Baselines and the evaluation report of the seed's CMR models (issue 18; research use only).

Reference note ``cmr_lge.md`` sections 1.3 and 5.2-5.3. Two binary tasks on a cohort of
:mod:`node.synth.cmr.cohort`:

* ``lge``: label ``lge_above`` (the phantom's true LGE > 5.7 % of LV mass);
* ``event``: label ``event`` (an event during follow-up from the fixed hazard process).

Baselines (each on the same folds the networks use, :func:`cv_folds`):

* ``measured_lge_rule`` (LGE task, and for events): the node's measured LGE % (5 SD + rim) > 5.7 %, a binary
  score (its AUC is (sensitivity + specificity) / 2);
* ``measured_lge_pct`` (LGE task): the continuous measured LGE %;
* ``measured_basal_lge_pct`` (LGE task): the node's LGE % of the network's basal slice only (what a basal-frame
  model could at best "see" explicitly);
* ``logistic_lge_ef`` (events): logistic regression (L2, :class:`Logistic`: numpy Newton steps, no
  scikit-learn) on measured LGE % (as ``log(1 + LGE)``) and measured EF; on ``small`` and ``large`` out-of-fold by
  stratified 4-fold cross-validation repeated ``repeats`` times; on held-out cohorts fitted on the whole training
  cohort (``large``);
* ``true_lge_pct`` (events; kind ``truth``, a reference that no model has): the true LGE % alone (how much of
  the oracle the burden carries);
* ``oracle`` (events): the process's own probability (:func:`node.synth.cmr.cohort.event_probability`), the
  ceiling no model can beat in expectation.

AUC per repeat (Mann-Whitney, :func:`node.ai.metrics.auc`), the mean over repeats, and a 95 % percentile
bootstrap interval of that mean (cases resampled, the same resample for every repeat and every model, so the
differences between models are paired: :func:`paired_difference`). Network scores (``[n]`` or
``[repeats, n]`` out-of-fold probabilities) come from the networks' training (:func:`evaluation_report`'s
``network_scores``). The seed's AUCs (0.80 LGE, 0.67 events; 116 real patients, best of six models, no CI) are
quoted for comparison only.

    python -m node.ai.training.cmr_outcome_eval --cohorts small,large,test,external --out DIR [--scores FILE.npz]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from node.ai.metrics import auc
from node.synth.cmr.cohort import LGE_CUTOFF_PCT, CmrCohort, default_cohort_dir, load_cmr_cohort

__all__ = [
    "TASKS",
    "SEED_AUC",
    "CV_COHORTS",
    "Logistic",
    "cv_folds",
    "auc_over_repeats",
    "bootstrap_auc",
    "paired_difference",
    "baseline_features",
    "logistic_cv_scores",
    "baseline_scores",
    "evaluation_report",
    "report_markdown",
    "write_report",
    "load_network_scores",
    "main",
]

#: task -> label key of :class:`~node.synth.cmr.cohort.CmrCohort`
TASKS: dict[str, str] = {"lge": "lge_above", "event": "event"}
#: the seed's best AUCs (Azoulay et al., ResNet50 RadImageNet, 116 patients), for comparison only
SEED_AUC: dict[str, float] = {"lge": 0.80, "event": 0.67}
#: cohorts evaluated by cross-validation (the others are held out and scored by models fitted on ``large``)
CV_COHORTS: tuple[str, ...] = ("small", "large")
_ORACLE = "oracle"
#: rows computed from the truth: references, never the best baseline
_TRUTH_ROWS: dict[str, str] = {_ORACLE: "oracle", "true_lge_pct": "truth"}


class Logistic:
    """L2-regularised logistic regression on standardised inputs, fitted by Newton's method (numpy, float64).

    Minimises ``mean binary cross-entropy + l2 x |w|^2`` (the intercept unpenalised), the objective of
    :class:`node.ai.metrics.LogisticRegression`, without torch's per-call overhead (the CV fits it 40 times).
    """

    def __init__(self, l2: float = 1e-3, iterations: int = 50) -> None:
        self.l2 = l2
        self.iterations = iterations
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.coef = np.zeros(1)  # [intercept, weights...]

    def fit(self, x: np.ndarray, y: np.ndarray) -> Logistic:
        """Fit on ``x`` ``[n, features]`` and 0/1 labels ``y`` ``[n]``; returns self."""
        x = np.asarray(x, dtype=np.float64)
        yv = np.asarray(y, dtype=np.float64)
        self.mean = x.mean(axis=0)
        sd = x.std(axis=0)
        self.scale = np.where(sd > 1e-12, sd, 1.0)
        design = np.column_stack([np.ones(len(x)), (x - self.mean) / self.scale])
        n = float(len(x))
        penalty = np.full(design.shape[1], 2.0 * self.l2)
        penalty[0] = 0.0
        beta = np.zeros(design.shape[1])
        for _ in range(self.iterations):
            p = expit(design @ beta)
            grad = design.T @ (p - yv) / n + penalty * beta
            hess = (design * (p * (1.0 - p))[:, None]).T @ design / n + np.diag(penalty) + 1e-10 * np.eye(len(beta))
            step = np.linalg.solve(hess, grad)
            beta = beta - step
            if float(np.max(np.abs(step))) < 1e-10:
                break
        self.coef = beta
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``[n]`` of ``x`` ``[n, features]``."""
        z = ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef[1:] + self.coef[0]
        return np.asarray(expit(z))


def cv_folds(labels: np.ndarray, k: int = 4, repeats: int = 5, seed: int = 0) -> np.ndarray:
    """Stratified ``k``-fold assignments, ``repeats`` times: int array ``[repeats, n]`` of fold indices 0..k-1.

    Per repeat, each class's cases are shuffled (``default_rng([seed, repeat])``) and dealt to the folds in turn,
    so every fold holds the class within one case of ``n_class / k``. The networks use the same folds
    (call with the task's label and the same ``seed``).
    """
    y = np.asarray(labels).astype(int)
    out = np.empty((repeats, y.size), dtype=np.int64)
    for r in range(repeats):
        rng = np.random.default_rng([int(seed), r])
        for cls in np.unique(y):
            idx = np.flatnonzero(y == cls)
            idx = idx[rng.permutation(idx.size)]
            start = int(rng.integers(k))  # which fold gets the first case of this class
            out[r, idx] = (start + np.arange(idx.size)) % k
    return out


def _as_repeats(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[None] if s.ndim == 1 else s


def auc_over_repeats(labels: np.ndarray, scores: np.ndarray, index: np.ndarray | None = None) -> float:
    """Mean over repeats of the AUC of ``scores`` ``[n]`` or ``[repeats, n]`` (optionally on cases ``index``)."""
    s = _as_repeats(scores)
    y = np.asarray(labels)
    if index is not None:
        y, s = y[index], s[:, index]
    return float(np.mean([auc(y, row) for row in s]))


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng([int(seed), 7]).integers(0, n, size=(n_boot, n))


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: the mean-over-repeats AUC and its percentile bootstrap interval (cases resampled
    ``n_boot`` times with ``default_rng([seed, 7])``; resamples with one class only are skipped)."""
    y = np.asarray(labels)
    value = auc_over_repeats(y, scores)
    boots = np.array([auc_over_repeats(y, scores, idx) for idx in _resamples(y.size, n_boot, seed)])
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return value, float("nan"), float("nan")
    lo, hi = np.percentile(boots, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return value, float(lo), float(hi)


def paired_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(delta, lo, hi)``: AUC(a) - AUC(b) (means over repeats) with a paired percentile bootstrap interval
    (the same resampled cases for both)."""
    y = np.asarray(labels)
    delta = auc_over_repeats(y, scores_a) - auc_over_repeats(y, scores_b)
    diffs = np.array([auc_over_repeats(y, scores_a, idx) - auc_over_repeats(y, scores_b, idx)
                      for idx in _resamples(y.size, n_boot, seed)])
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return delta, float("nan"), float("nan")
    lo, hi = np.percentile(diffs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return delta, float(lo), float(hi)


def baseline_features(cohort: CmrCohort, fill_from: CmrCohort | None = None) -> np.ndarray:
    """``[n, 2]`` logistic-regression inputs: ``log(1 + measured LGE %)`` and measured EF (%). A failed measurement
    (NaN) takes the median of ``fill_from`` (default: the cohort itself)."""
    ref = cohort if fill_from is None else fill_from
    cols = []
    for key, transform in (("measured_lge_pct", np.log1p), ("measured_ef", lambda v: v)):
        v = np.asarray(getattr(cohort, key), dtype=np.float64)
        fill = float(np.nanmedian(np.asarray(getattr(ref, key), dtype=np.float64)))
        cols.append(transform(np.clip(np.where(np.isfinite(v), v, fill), 0.0, None)))
    return np.stack(cols, axis=1)


def logistic_cv_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Out-of-fold probabilities ``[repeats, n]`` of an L2 logistic regression on ``x`` ``[n, features]`` for the
    fold assignments ``folds`` ``[repeats, n]`` (:func:`cv_folds`)."""
    out = np.empty(folds.shape, dtype=np.float64)
    for r, assign in enumerate(folds):
        for f in np.unique(assign):
            test = assign == f
            model = Logistic(l2=l2).fit(x[~test], y[~test])
            out[r, test] = model.predict_proba(x[test])
    return out


def _measured_lge(cohort: CmrCohort) -> np.ndarray:
    """Measured LGE %; a failed measurement counts as no LGE found (0)."""
    v = np.asarray(cohort.measured_lge_pct, dtype=np.float64)
    return np.where(np.isfinite(v), v, 0.0)


def baseline_scores(cohort: CmrCohort, task: str, *, cv: bool, folds: np.ndarray | None = None,
                    train: CmrCohort | None = None) -> dict[str, np.ndarray]:
    """The baselines' scores of ``task`` on ``cohort`` (module docstring): ``[n]`` or ``[repeats, n]``.

    ``cv``: fit the logistic regression out of fold on ``folds``; otherwise fit it on ``train``.
    """
    lge = _measured_lge(cohort)
    rule = (lge > LGE_CUTOFF_PCT).astype(np.float64)
    if task == "lge":
        basal = np.asarray(cohort.measured_basal_lge_pct, dtype=np.float64)
        return {"measured_lge_rule": rule, "measured_lge_pct": lge,
                "measured_basal_lge_pct": np.where(np.isfinite(basal), basal, 0.0)}
    if task != "event":
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    y = np.asarray(cohort.event, dtype=np.float64)
    if cv:
        if folds is None:
            raise ValueError("cv=True needs folds")
        logistic = logistic_cv_scores(baseline_features(cohort), y, folds)
    else:
        if train is None:
            raise ValueError("a held-out cohort needs the training cohort for the logistic regression")
        model = Logistic(l2=1e-3).fit(baseline_features(train), np.asarray(train.event, dtype=np.float64))
        logistic = model.predict_proba(baseline_features(cohort, fill_from=train))
    return {"logistic_lge_ef": logistic, "measured_lge_rule": rule,
            "true_lge_pct": np.asarray(cohort.true_lge_pct, dtype=np.float64),
            _ORACLE: np.asarray(cohort.event_probability, dtype=np.float64)}


def _row(y: np.ndarray, scores: np.ndarray, kind: str, n_boot: int, seed: int) -> dict[str, Any]:
    value, lo, hi = bootstrap_auc(y, scores, n_boot, seed)
    s = _as_repeats(scores)
    per = [auc(y, row) for row in s]
    return {"kind": kind, "auc": value, "ci": [lo, hi], "repeats": int(s.shape[0]),
            "sd_over_repeats": float(np.std(per, ddof=1)) if len(per) > 1 else 0.0}


def evaluation_report(cohorts: Mapping[str, CmrCohort],
                      network_scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]] | None = None, *,
                      k: int = 4, repeats: int = 5, seed: int = 0, n_boot: int = 2000,
                      train_cohort: str = "large") -> dict[str, Any]:
    """The report: for each cohort and task, every baseline's and network's AUC with its 95 % CI, and which model wins.

    Parameters
    ----------
    cohorts : mapping name -> CmrCohort
        Cohorts named as in :data:`node.synth.cmr.cohort.COHORTS`; those in :data:`CV_COHORTS` are cross-validated
        (stratified ``k``-fold, ``repeats`` times, :func:`cv_folds` with the task's label and ``seed``), the others
        scored by the logistic regression fitted on ``cohorts[train_cohort]``.
    network_scores : mapping cohort -> model name -> task -> array [n] or [repeats, n], optional
        The networks' (out-of-fold on CV cohorts) probabilities, case order as the cohort's.
    n_boot : int
        Bootstrap resamples for every interval.

    Returns
    -------
    dict
        ``{"cohorts": {name: {"n", "segmentation", "tasks": {task: {"prevalence", "rows": {model: row},
        "best_network", "best_baseline", "difference", "winner", "statement"}}}}, "seed_auc", "settings"}``;
        a row is ``{"kind": "baseline" | "network" | "oracle" | "truth", "auc", "ci": [lo, hi], "repeats", "sd_over_repeats"}``.
    """
    out: dict[str, Any] = {"seed_auc": dict(SEED_AUC), "settings": {"k": k, "repeats": repeats, "seed": seed,
                                                                     "n_boot": n_boot, "train_cohort": train_cohort}}
    per_cohort: dict[str, Any] = {}
    train = cohorts.get(train_cohort)
    for name, cohort in cohorts.items():
        tasks: dict[str, Any] = {}
        for task, label_key in TASKS.items():
            y = np.asarray(getattr(cohort, label_key)).astype(int)
            cv = name in CV_COHORTS
            folds = cv_folds(y, k, repeats, seed) if cv else None
            if not cv and task == "event" and train is None:
                raise ValueError(f"held-out cohort {name!r} needs the training cohort {train_cohort!r}")
            base = baseline_scores(cohort, task, cv=cv, folds=folds, train=train)
            rows: dict[str, dict[str, Any]] = {}
            for model, scores in base.items():
                rows[model] = _row(y, scores, _TRUTH_ROWS.get(model, "baseline"), n_boot, seed)
            nets = dict((network_scores or {}).get(name, {}))
            for model, by_task in nets.items():
                if task in by_task:
                    s = _as_repeats(by_task[task])
                    if s.shape[1] != y.size:
                        raise ValueError(f"{name}/{model}/{task}: {s.shape[1]} scores for {y.size} cases")
                    rows[model] = _row(y, s, "network", n_boot, seed)
            tasks[task] = _verdict(y, rows, base, {m: nets[m][task] for m in nets if task in nets[m]}, n_boot, seed)
            tasks[task]["prevalence"] = float(y.mean())
        per_cohort[name] = {"n": len(cohort), "segmentation": f"{cohort.meta.get('segmentation_bundle')} "
                            f"{cohort.meta.get('segmentation_version')}", "version": cohort.meta.get("version"),
                            "tasks": tasks}
    out["cohorts"] = per_cohort
    return out


def _verdict(y: np.ndarray, rows: dict[str, dict[str, Any]], base: dict[str, np.ndarray],
             nets: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, Any]:
    def best(names: Sequence[str]) -> str | None:
        ok = [m for m in names if math.isfinite(float(rows[m]["auc"]))]
        return max(ok, key=lambda m: float(rows[m]["auc"])) if ok else None

    b = best([m for m in base if m not in _TRUTH_ROWS])
    n = best(list(nets))
    result: dict[str, Any] = {"rows": rows, "best_baseline": b, "best_network": n}
    if b is None:
        return result
    if n is None:
        result["statement"] = f"best baseline {b} (no network scores)"
        return result
    delta, lo, hi = paired_difference(y, nets[n], base[b], n_boot, seed)
    result["difference"] = {"network_minus_baseline": delta, "ci": [lo, hi]}
    if lo > 0:
        winner, text = n, f"{n} beats {b} by {delta:+.3f} AUC (95 % CI {lo:+.3f} to {hi:+.3f})"
    elif hi < 0:
        winner, text = b, f"{b} beats {n} by {-delta:+.3f} AUC (95 % CI {-hi:+.3f} to {-lo:+.3f})"
    else:
        winner, text = None, (f"no clear winner: {n} - {b} = {delta:+.3f} AUC (95 % CI {lo:+.3f} to {hi:+.3f} "
                              "includes 0)")
    result["winner"] = winner
    result["statement"] = text
    return result


def _fmt(row: Mapping[str, Any]) -> str:
    lo, hi = row["ci"]
    return f"{float(row['auc']):.3f} | {float(lo):.3f}–{float(hi):.3f}"


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: one table per cohort (task, model, kind, AUC, 95 % CI, SD over repeats) and a
    verdict line per task; the seed's AUCs quoted for comparison."""
    settings = report["settings"]
    lines = ["Research use only; synthetic cohorts (node.synth.cmr.cohort), not patient data.", "",
             f"Stratified {settings['k']}-fold CV repeated {settings['repeats']}x (seed {settings['seed']}) on "
             f"{', '.join(CV_COHORTS)}; held-out cohorts scored by models fitted on `{settings['train_cohort']}`. "
             f"AUC = mean over repeats; 95 % CI = percentile bootstrap ({settings['n_boot']} case resamples).", ""]
    for name, c in report["cohorts"].items():
        lines += [f"**{name}** (n = {c['n']}, {c['segmentation']})", "",
                  "| Task | Model | Kind | AUC | 95 % CI | SD over repeats |", "|---|---|---|---|---|---|"]
        for task, t in c["tasks"].items():
            for model, row in t["rows"].items():
                sd = f"{float(row['sd_over_repeats']):.3f}" if int(row["repeats"]) > 1 else "–"
                lines.append(f"| {task} (prevalence {t['prevalence']:.2f}) | {model} | {row['kind']} | {_fmt(row)} | {sd} |")
        lines.append("")
        for task, t in c["tasks"].items():
            if "statement" in t:
                lines.append(f"- {name}, {task}: {t['statement']}.")
        lines.append("")
    seed = report["seed_auc"]
    lines.append(f"For comparison only (116 real patients, best of six models, no CI): the seed's AUC {seed['lge']:.2f} "
                 f"(LGE > 5.7 %) and {seed['event']:.2f} (events).")
    return "\n".join(lines) + "\n"


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else round(obj, 4)
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


def write_report(report: Mapping[str, Any], out_dir: Path, stem: str = "cmr_outcome_evaluation") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(_jsonable(dict(report)), indent=1, sort_keys=True) + "\n")
    md.write_text(report_markdown(report))
    return js, md


def load_network_scores(path: Path) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Network scores from an ``.npz`` with keys ``"<cohort>/<model>/<task>"`` (arrays ``[n]`` or ``[repeats, n]``)."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with np.load(Path(path), allow_pickle=False) as data:
        for key in data.files:
            cohort, model, task = key.split("/")
            out.setdefault(cohort, {}).setdefault(model, {})[task] = np.asarray(data[key])
    return out


def main(argv: list[str] | None = None, *, loader: Callable[[Path], CmrCohort] = load_cmr_cohort) -> int:
    """``python -m node.ai.training.cmr_outcome_eval``: the report of the written cohorts (and network scores)."""
    ap = argparse.ArgumentParser(description="baselines and evaluation report of the CMR outcome models (issue 18)")
    ap.add_argument("--cohorts", default="small,large,test,external")
    ap.add_argument("--folder", type=Path, default=None, help="cohort .npz folder (default: the cache)")
    ap.add_argument("--scores", type=Path, default=None, help="network scores .npz (<cohort>/<model>/<task>)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON and markdown report")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    folder = args.folder or default_cohort_dir()
    cohorts = {n: loader(folder / f"{n}.npz") for n in args.cohorts.split(",") if n}
    scores = load_network_scores(args.scores) if args.scores else None
    report = evaluation_report(cohorts, scores, repeats=args.repeats, seed=args.seed, n_boot=args.n_boot)
    js, md = write_report(report, args.out)
    print(md.read_text())
    print(f"written: {js} {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
