"""Evaluation metrics and the logistic-regression baseline (numpy / torch, no scikit-learn).

Scores are arrays ``[n]`` where larger means "more likely positive"; labels
are 0/1 arrays ``[n]``. AUC is the Mann-Whitney statistic (ties count 1/2).
:func:`dice` compares two segmentation masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.special import expit
from scipy.stats import rankdata

__all__ = ["auc", "bootstrap_auc_ci", "BinaryReport", "binary_report", "LogisticRegression", "youden_threshold", "dice"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    n1 = float(np.sum(y == 1))
    n0 = float(np.sum(y == 0))
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def bootstrap_auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC (cases resampled with replacement)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        a = auc(y[idx], s[idx])
        if np.isfinite(a):
            values.append(a)
    if not values:  # one class only: no AUC, no interval
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (ties: the lowest such threshold)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    best, best_t = -1.0, float(np.median(s))
    for t in np.unique(s):
        pred = s >= t
        sens = np.mean(pred[y == 1]) if np.any(y == 1) else 0.0
        spec = np.mean(~pred[y == 0]) if np.any(y == 0) else 0.0
        if sens + spec - 1 > best:
            best, best_t = sens + spec - 1, float(t)
    return best_t


@dataclass(frozen=True)
class BinaryReport:
    """Discrimination, threshold metrics and (for probabilities) calibration of one score."""

    n: int
    prevalence: float
    auc: float
    auc_ci: tuple[float, float]
    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    brier: float | None  # mean squared error of probabilities; None for non-probability scores
    ece: float | None  # expected calibration error, 10 equal-width bins
    calibration_slope: float | None
    calibration_intercept: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _calibration_fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration ``logit(P(y)) = a + b logit(p)``; returns (slope b, intercept a)."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    model = LogisticRegression(l2=1e-6).fit(logit[:, None], y)
    return float(model.weight[0] / model.scale[0]), float(model.bias - model.weight[0] * model.mean[0] / model.scale[0])


def binary_report(labels: np.ndarray, scores: np.ndarray, threshold: float, probability: bool,
                  n_boot: int = 1000, seed: int = 0) -> BinaryReport:
    """Metrics of ``scores`` against ``labels``; ``threshold`` decides positive (``score >= threshold``)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    pred = s >= threshold
    brier = ece = slope = intercept = None
    if probability and len(y):
        brier = float(np.mean((s - y) ** 2))
        bins = np.clip((s * 10).astype(int), 0, 9)
        ece = float(sum(np.sum(bins == b) / len(y) * abs(np.mean(y[bins == b]) - np.mean(s[bins == b]))
                        for b in range(10) if np.any(bins == b)))
        if 0 < y.sum() < len(y):
            slope, intercept = _calibration_fit(y, s)
    return BinaryReport(
        n=len(y),
        prevalence=float(np.mean(y)),
        auc=auc(y, s),
        auc_ci=bootstrap_auc_ci(y, s, n_boot, seed),
        threshold=float(threshold),
        accuracy=float(np.mean(pred == (y == 1))) if len(y) else float("nan"),
        sensitivity=float(np.mean(pred[y == 1])) if np.any(y == 1) else float("nan"),
        specificity=float(np.mean(~pred[y == 0])) if np.any(y == 0) else float("nan"),
        brier=brier,
        ece=ece,
        calibration_slope=slope,
        calibration_intercept=intercept,
    )


class LogisticRegression:
    """L2-regularised logistic regression fitted by L-BFGS (torch, float64), standardised inputs."""

    def __init__(self, l2: float = 1e-3) -> None:
        self.l2 = l2
        self.mean = np.zeros(0)
        self.scale = np.ones(0)
        self.weight = np.zeros(0)
        self.bias = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        x = np.asarray(x, dtype=float)
        self.mean = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
        xt = torch.tensor((x - self.mean) / self.scale)
        yt = torch.tensor(np.asarray(y, dtype=float))
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + self.l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight = w.detach().numpy().copy()
        self.bias = float(b.detach())
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = ((np.asarray(x, dtype=float) - self.mean) / self.scale) @ self.weight + self.bias
        return expit(z)
