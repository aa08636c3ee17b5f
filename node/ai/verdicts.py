"""What a model's probability tells the reader: its name in clinician words, threshold, indeterminate band, verdict.

Each output of a polar-map bundle that the node reports has one record in the bundle's
``configs/metadata.json`` under ``reader_outputs`` (written by the training, versioned with the
weights; :func:`reader_outputs` reads it):

* ``name``: what the output predicts, in the words a clinician uses, e.g. "Probability of
  obstructive CAD (CAD model)". It is the SR group's tracking identifier and the PDF/screen row.
* ``model``: the model's short name for titles ("CAD model", "Tc-99m model").
* ``threshold``: the probability at or above which the finding is called present (chosen on the
  validation cohort; :mod:`node.ai.training.polar`).
* ``indeterminate_band``: ``[lower, upper]`` probabilities (inclusive) inside which the verdict is
  "indeterminate" instead of "present" or "absent" (:data:`BAND_RULE`, :func:`indeterminate_band`).

:func:`verdict` is the one rule that turns a probability into the reported value. Nothing here
imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

__all__ = [
    "BAND_SHARE",
    "BAND_RULE",
    "VERDICTS",
    "ReaderOutput",
    "verdict",
    "indeterminate_band",
    "reader_outputs",
]

#: share of validation cases (closest to the threshold) that the indeterminate band holds
BAND_SHARE = 0.15
BAND_RULE = (f"the interval around the threshold, symmetric in log-odds, that holds the {100 * BAND_SHARE:.0f} % of "
             "validation-cohort cases whose probability is closest to the threshold (least certain cases)")
#: the evaluation values a verdict can take (keys of dicom_templates/evaluations.toml)
VERDICTS: tuple[str, ...] = ("present", "absent", "indeterminate")
_PROBABILITY_CLIP = 1e-6


@dataclass(frozen=True)
class ReaderOutput:
    """One reported model output: name in clinician words, threshold and indeterminate band (probabilities 0..1)."""

    key: str
    name: str
    model: str
    threshold: float
    band: tuple[float, float]

    def verdict(self, probability: float) -> str:
        """:func:`verdict` of ``probability`` for this output."""
        return verdict(probability, self.band)

    def heat_map_title(self, probability: float) -> str:
        """Title of this output's heat map: whose attention, the probability and the threshold (2 decimals)."""
        return f"{self.model} attention: p {probability:.2f} (threshold {self.threshold:.2f})"

    def heat_map_subtitle(self, probability: float, perfusion_state: str) -> str:
        """Line under the heat map's title: the verdict, the indeterminate band and what the printed segment
        numbers are (those of the ``perfusion_state`` perfusion map drawn underneath, e.g. ``"stress"``)."""
        lo, hi = self.band
        return f"{self.verdict(probability).capitalize()} (indeterminate band {lo:.2f}-{hi:.2f}); numbers: {perfusion_state} perfusion"


def verdict(probability: float, band: tuple[float, float]) -> str:
    """``"present"`` above the band, ``"absent"`` below it, ``"indeterminate"`` inside ``[lower, upper]``.

    ``probability`` and ``band`` are probabilities in [0, 1]; a band of zero width at the threshold
    gives the plain threshold rule (probability >= threshold: present). Raises ``ValueError`` for a
    probability outside [0, 1] or NaN, or a band whose lower end exceeds its upper end.
    """
    lower, upper = (float(v) for v in band)
    p = float(probability)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability!r}")
    if lower > upper:
        raise ValueError(f"indeterminate band {band!r}: lower end above upper end")
    if lower == upper:
        return "present" if p >= upper else "absent"
    if p > upper:
        return "present"
    if p < lower:
        return "absent"
    return "indeterminate"


def indeterminate_band(labels: np.ndarray, scores: np.ndarray, threshold: float, share: float = BAND_SHARE) -> dict[str, Any]:
    """The indeterminate band of :data:`BAND_RULE` on a validation cohort, with what it does there.

    ``labels`` are 0/1 ``[n]`` (NaN: no label, left out), ``scores`` probabilities ``[n]``,
    ``threshold`` the output's decision threshold. The band is ``expit(logit(threshold) -/+ d)``
    with ``d`` the ``share`` quantile of ``|logit(score) - logit(threshold)|`` (scores clipped to
    [1e-6, 1 - 1e-6]). Returns ``{"indeterminate_band": [lower, upper], "validation": {n,
    share_in_band, ppv_above, npv_below, accuracy_in_band}}`` (accuracy of the plain threshold rule
    on the cases inside the band; NaN where a group is empty). Without any labelled case (a tiny
    smoke-test cohort may hold none of one tracer) the band has zero width at the threshold: the
    plain threshold rule, with ``n`` 0.
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], s[keep]
    if not len(y):
        nan = float("nan")
        return {"indeterminate_band": [float(threshold), float(threshold)],
                "validation": {"n": 0, "share_in_band": nan, "ppv_above": nan, "npv_below": nan, "accuracy_in_band": nan}}
    t_logit = float(logit(np.clip(threshold, _PROBABILITY_CLIP, 1 - _PROBABILITY_CLIP)))
    distance = np.abs(logit(np.clip(s, _PROBABILITY_CLIP, 1 - _PROBABILITY_CLIP)) - t_logit)
    d = float(np.quantile(distance, share))
    lower, upper = float(expit(t_logit - d)), float(expit(t_logit + d))
    inside = (s >= lower) & (s <= upper)

    def mean(values: np.ndarray) -> float:
        return float(np.mean(values)) if len(values) else float("nan")

    return {
        "indeterminate_band": [lower, upper],
        "validation": {
            "n": int(len(y)),
            "share_in_band": mean(inside.astype(float)),
            "ppv_above": mean(y[s > upper]),
            "npv_below": mean(1.0 - y[s < lower]),
            "accuracy_in_band": mean(((s[inside] >= threshold) == (y[inside] == 1)).astype(float)),
        },
    }


def reader_outputs(metadata: Mapping[str, Any], bundle: str = "") -> dict[str, ReaderOutput]:
    """The :class:`ReaderOutput` records of a bundle's metadata (``reader_outputs.outputs``), by output key.

    Raises ``RuntimeError`` naming the bundle when the metadata has none (a bundle written before
    version 1.1.0: retrain it, or add them with ``python -m node.ai.training.verdict_bands``).
    """
    block = metadata.get("reader_outputs")
    if not isinstance(block, Mapping) or not isinstance(block.get("outputs"), Mapping):
        raise RuntimeError(f"model bundle {bundle or metadata.get('name', '?')!r}: configs/metadata.json has no reader_outputs "
                           "(names, thresholds, indeterminate bands); retrain it or run python -m node.ai.training.verdict_bands")
    out = {}
    for key, rec in block["outputs"].items():
        lower, upper = (float(v) for v in rec["indeterminate_band"])
        out[str(key)] = ReaderOutput(str(key), str(rec["name"]), str(rec["model"]), float(rec["threshold"]), (lower, upper))
    return out
