"""Kinetic models of myocardial blood flow (MBF) for dynamic cardiac PET (research use only).

Reference note: ``pet_mbf.md`` sections 3 (models, formulas, defaults) and 8.2 (algorithms).
numpy and scipy only (DESIGN section 3). Every number carries its unit in its name; the UCUM
code of each named quantity is in :data:`UCUM`.

Units and conventions
---------------------
* Times in seconds (``*_s``) from time zero of the frame schedule (injection / scan start);
  rate constants in 1/min (``k2_per_min``), flows in mL/min/g (``mbf_ml_per_min_per_g``,
  ``k1_ml_per_min_per_g``; tissue density taken as 1 g/mL, as in the reference implementations),
  activity concentrations in Bq/mL (``*_bq_per_ml``), fractions dimensionless (UCUM ``1``).
* Arrays of time-activity curves (TACs) are ``[frames, n]``: frames first, one column per
  region or voxel. A frame ``i`` covers ``[start_i, start_i + duration_i)``.
* **Decay.** Decay-corrected frame values are the decay-weighted means of the decay-corrected
  concentration ``C(t)``: ``C_i = int C(t) exp(-lambda t) dt / int exp(-lambda t) dt`` over the
  frame, which is exactly what a scanner's per-frame decay-correction factor produces from the
  counted (decaying) activity. Uncorrected frame values are ``C_i * D_i`` with the frame's mean
  decay factor ``D_i = int exp(-lambda t) dt / duration``. Inputs state which they are
  (``decay_corrected``); the fitter converts uncorrected values exactly (divides by ``D_i``)
  and always fits in decay-corrected space. The decay reference time does not matter within
  one series (input and tissue scale together).
* **Frame integration.** Model curves are computed on a uniform fine grid (``dt_s``, default
  0.25 s) and averaged over each frame with the decay weights above (trapezoid rule of the
  piecewise-linear fine curve; frame edges need not fall on the grid).
* **Convolution.** ``C_in (x) exp(-k t)`` is computed by the exact recursion for a
  piecewise-linear input (:func:`convolve_exponential`), so it is exact on the grid points
  for an input that is linear between them.
* **Input function.** The LV-cavity TAC is both input and spill-over curve (Lortie form). From
  frame values it is made continuous by :func:`input_on_grid`. Default ``"smooth"``: the
  smoothest non-negative piecewise-linear curve (nodes about every 1 s, at most 10 per frame;
  least ``int c''^2``) whose decay-weighted frame means equal the measured frame values, zero
  at the first frame start. Options: ``"mean_preserving"`` (nodes at the frame mid-times solved
  for the same frame means) and ``"linear"`` (nodes at the frame mid-times at the frame values:
  the reference's simulation, 0.3-0.5 % noise-free bias, reference 5.8). Frame means cannot
  carry the shape of a bolus narrower than a few frames: with frame values only, the
  noise-free MBF error grows with F and with the first frames' duration (bench/
  validate_pet_tac.py part A measures it per model: Rb-82 <= 0.3 %; N-13 with 10 s first
  frames <= 1 % up to F = 3 and ~1.5 % at F = 5; O-15 with 5 s first frames <= 1 % up to
  F = 1 and up to ~5 % at F = 5; with 5 s / 2 s first frames all <= 0.25 %). A known dense
  input (:class:`SampledInput`) removes it. The spill-over terms use the measured frame
  values directly.

Models (reference section 3)
----------------------------
Operational equation (PMOD geometric dual spill-over; Lortie form when ``V_RV = 0``)::

    C_seg = (1 - V_LV - V_RV) * C_tissue + V_LV * C_LV + V_RV * C_RV

``V_LV`` is named ``blood_fraction`` (total blood volume + LV spill-over, FBV), ``V_RV``
``rv_fraction`` (septal segments only: AHA 2, 3, 8, 9, 14; off by default).

* :class:`Rb82Lortie` -- one-tissue, ``C_tissue = K1 * C_LV (x) exp(-k2 t)`` with
  ``K1 = F * (1 - A exp(-B / F))``, A = 0.77, B = 0.63 mL/min/g (Lortie 2007). F is fitted
  directly. Default: one distribution volume per study, ``k2 = K1(F) / DV`` in every region,
  the DV fitted jointly over the 17 segments (``distribution_volume="study"``); the reference
  note's two-stage form (DV from the global TAC, ``"global_tac"``) and k2 per region
  (``"region"``) are options. Fit 0-6 min.
* :class:`NH3DeGrado` -- one-tissue, ``K1 = F``, plasma ``C_p = C_LV * (1 - m t)`` with
  m = 0.077 /min (t in min, clipped at zero); fit window <= 4 min (DeGrado 1996, PMOD).
* :class:`NH3UCLA` -- UCLA/Choi two-parameter model: irreversible two-tissue, ``K1 = F``,
  ``k2 = K1 / V_ND`` (V_ND = 0.8 mL/g), ``k3 = k2 * (1.65 exp(1.25 / F) - 1)`` so that the net
  extraction ``k3 / (k2 + k3) = 1 - exp(-1.25 / F) / 1.65``; no metabolite correction; fit
  window <= 2 min. (The k3 tie is the reference note's derivation, tagged "verify against
  Choi 1993 eq 5".)
* :class:`H2OIida` -- O-15 water (Iida 1991/1992 as in Turku ``fitmbf``):
  ``C = PTF * f * C_a (x) exp(-(f / p) t) + Va * C_a``, f = ptMBF (mL/min/mL of perfusable
  tissue, bounds 0-10), PTF in [0.05, 1], Va in [0.05, 0.99], p = 0.9464 mL/mL;
  MBF = rMBF = f * PTF. Turku writes this as ``K1 = f (PTF + Va/p)``, ``k2 = f/p`` with ``Va``
  inside the integrated equation (``simMBF``); that is the same curve. The reference note's
  line "``K1 C_a (x) exp(-k2 t) + Va C_a`` with ``K1 = f (PTF + Va/p)``" double-counts Va and
  is not used. The LV cavity is used directly as input (fitmbf's spill-in-corrected arterial
  curve, its first stage, is not implemented).

Fitting (reference 3.6, 8.2)
----------------------------
Weighted bounded non-linear least squares (:func:`scipy.optimize.least_squares`, TRF) on the
frames inside the model's fit window. Weights are the inverse variance of decay-corrected count
data, ``w_i = duration_i * D_i / max(C_i, eps * max(C))`` (``var_i ~ C_i exp(lambda t_i) /
duration_i``, reference 3.6/8.2), ``eps`` = 0.05. ``"counts"`` (default) takes ``C_i`` from the
starting model curve (one reweighting step): weights from the noisy data themselves favour
frames that came out low and bias MBF down (Rb-82, 10 % noise: -3.9 % with data weights,
-0.6 % with model weights, -0.65 % with the true curve's; bench part B). ``"counts_data"``
takes ``C_i`` from the data (the reference's simulation); ``"duration"`` (traceRkinetic),
``"none"`` or an explicit array are accepted. Starting values come from the
basis-function solution (a grid over the model's non-linear parameter with the linear ones
solved exactly, below), optionally plus the reference's starts (F0 0.8 and 2.5 mL/min/g); the
lowest cost wins. Standard errors from the Jacobian: ``cov = (J^T J)^-1 * SSR_w / (n - p)``
over the parameters not at a bound; MBF's by the delta method where MBF is derived.

Voxel maps (reference 3.3 last bullet, 8.2): basis functions ``B_j = C_in (x) exp(-k2_j t)``
on 100 log-spaced k2 in [0.01, 3] /min (other models: their own one-parameter family), then
for every voxel and every basis a bounded linear least squares for (K1-scale, blood fraction)
solved in closed form (every active set of the two-variable NNLS), the best basis per voxel
(scanned in float32, then checked and solved in float64 at the best basis and its
neighbours), a parabolic sub-grid step with the problem solved again for the basis
interpolated between the two neighbours, then K1 -> F. One weight vector for all voxels (the
count weights of their mean TAC by default). Vectorised over voxels (matrix products and
elementwise passes over [basis, voxel] chunks); no Python loop over voxels.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from scipy import optimize, signal, sparse

from node.imaging.volume import FrameSchedule
from node.quant.segments import N_SEGMENTS, TERRITORY_SEGMENTS

__all__ = [
    "MFR_REPORTED_DECIMALS",
    "UCUM",
    "SEPTAL_SEGMENTS",
    "Tracer",
    "RB82",
    "N13_AMMONIA",
    "O15_WATER",
    "SampledInput",
    "lortie_k1",
    "lortie_mbf",
    "Rb82Lortie",
    "NH3DeGrado",
    "NH3UCLA",
    "H2OIida",
    "KineticModel",
    "MODELS",
    "default_model",
    "fine_grid",
    "frame_operator",
    "convolve_exponential",
    "input_on_grid",
    "model_curve",
    "RegionFit",
    "SegmentFit",
    "FlowReserve",
    "BasisFunctionMap",
    "fit_tacs",
    "fit_segments",
    "flow_reserve",
    "rate_pressure_product",
    "basis_function_map",
]

#: UCUM codes of the quantities this module names (DESIGN section 5: every number has its unit).
UCUM: dict[str, str] = {
    "mbf_ml_per_min_per_g": "ml/min/g",
    "k1_ml_per_min_per_g": "ml/min/g",
    "k2_per_min": "1/min",
    "k3_per_min": "1/min",
    "blood_fraction": "1",
    "rv_fraction": "1",
    "perfusable_tissue_fraction": "1",
    "ptmbf_ml_per_min_per_ml": "ml/min/ml",
    "distribution_volume_ml_per_g": "ml/g",
    "mfr": "{ratio}",
    "rate_pressure_product_mmhg_per_min": "mm[Hg]/min",
    "bq_per_ml": "Bq/ml",
    "s": "s",
}

#: AHA septal segments (anteroseptal and inferoseptal, basal and mid; apical septal): the only
#: regions that get the RV spill-over term (PMOD: region name contains "Sep").
SEPTAL_SEGMENTS: tuple[int, ...] = (2, 3, 8, 9, 14)

#: decimals of a reported MFR; the impaired flags are decided on the value so rounded
MFR_REPORTED_DECIMALS = 2
_EPS_WEIGHT = 0.05  # weight floor: concentrations below 5 % of the TAC maximum count as 5 %

WeightsArg = Literal["counts", "counts_data", "duration", "none"] | np.ndarray
_JOINT_TR_SOLVER = "lsmr"
_SMOOTH_POSITIVE = True
InputInterpolation = Literal["smooth", "mean_preserving", "linear"]


# ---------------------------------------------------------------------------------------------
# tracers and frames
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tracer:
    """A PET tracer: display name and physical half-life in seconds."""

    name: str
    half_life_s: float

    @property
    def decay_constant_per_s(self) -> float:
        """``ln 2 / T_1/2`` in 1/s."""
        return math.log(2.0) / self.half_life_s


#: Rb-82 chloride, T1/2 1.2575 min (ENSDF; the reference note gives 75-76 s) [L, configurable].
RB82 = Tracer("Rb-82", 75.45)
#: N-13 ammonia, T1/2 9.965 min.
N13_AMMONIA = Tracer("N-13 ammonia", 597.9)
#: O-15 water, T1/2 122.24 s.
O15_WATER = Tracer("O-15 water", 122.24)


@dataclass(frozen=True, eq=False)
class SampledInput:
    """A blood curve known densely in time (decay-corrected, Bq/mL), e.g. an exact phantom input.

    Values between samples are linear; before the first sample 0, after the last constant.
    """

    t_s: np.ndarray
    bq_per_ml: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.t_s, dtype=float).reshape(-1)
        c = np.asarray(self.bq_per_ml, dtype=float).reshape(-1)
        if t.shape != c.shape or t.size < 2 or np.any(np.diff(t) <= 0):
            raise ValueError("SampledInput needs >= 2 increasing times and one value per time")
        object.__setattr__(self, "t_s", t)
        object.__setattr__(self, "bq_per_ml", c)

    def on_grid(self, t_s: np.ndarray) -> np.ndarray:
        return np.interp(t_s, self.t_s, self.bq_per_ml, left=0.0, right=float(self.bq_per_ml[-1]))


# ---------------------------------------------------------------------------------------------
# numerical kernels
# ---------------------------------------------------------------------------------------------

def fine_grid(end_s: float, dt_s: float = 0.25) -> np.ndarray:
    """Uniform grid ``0, dt, 2 dt, ...`` in seconds reaching at least ``end_s``."""
    if dt_s <= 0:
        raise ValueError("dt_s must be > 0")
    n = int(math.ceil(end_s / dt_s - 1e-9)) + 1
    return np.arange(n) * dt_s


def frame_operator(schedule: FrameSchedule, t_s: np.ndarray, decay_constant_per_s: float = 0.0) -> np.ndarray:
    """Matrix ``P`` [frames, n_fine] with ``P @ y`` = decay-weighted frame means of a fine curve.

    ``y`` is taken as piecewise linear between the (uniform) grid points ``t_s``; each frame's
    integral of ``y(t) exp(-lambda t)`` is the trapezoid rule of the product on the grid
    (partial intervals at the frame edges included exactly), normalised by the same rule
    applied to ``exp(-lambda t)``: a constant curve maps to itself. With
    ``decay_constant_per_s = 0`` it is the plain frame average.
    """
    t = np.asarray(t_s, dtype=float)
    h = float(t[1] - t[0])
    if schedule.end_s[-1] > t[-1] + 1e-9 or schedule.start_s[0] < t[0] - 1e-9:
        raise ValueError("the fine grid must cover every frame")
    n = t.size
    weight = np.exp(-decay_constant_per_s * t)
    operator = np.zeros((schedule.n_frames, n))
    for i, (a, b) in enumerate(zip(schedule.start_s, schedule.end_s)):
        j0 = max(int(math.floor((a - t[0]) / h + 1e-9)), 0)
        j1 = min(int(math.ceil((b - t[0]) / h - 1e-9)), n - 1)
        js = np.arange(j0, j1)
        lo = np.maximum(a, t[js])
        hi = np.minimum(b, t[js + 1])
        length = np.clip(hi - lo, 0.0, None)
        p = (lo - t[js]) / h
        q = (hi - t[js]) / h
        np.add.at(operator[i], js, 0.5 * length * ((1 - p) + (1 - q)))
        np.add.at(operator[i], js + 1, 0.5 * length * (p + q))
    operator *= weight[None, :]
    operator /= operator.sum(axis=1, keepdims=True)
    return operator


def _exp_coefficients(rate_per_s: float, dt_s: float) -> tuple[float, float, float]:
    """(E, a, b) of the exact one-step recursion ``y_n = E y_{n-1} + a c_{n-1} + b c_n``."""
    x = rate_per_s * dt_s
    if x < 1e-3:
        i0 = dt_s * (1 - x / 2 + x * x / 6 - x ** 3 / 24)
        i1 = dt_s * (0.5 - x / 6 + x * x / 24 - x ** 3 / 120)
        e = math.exp(-x)
    else:
        e = math.exp(-x)
        i0 = -math.expm1(-x) / rate_per_s
        i1 = i0 - (-math.expm1(-x) - x * e) / (rate_per_s * rate_per_s * dt_s)
    return e, i0 - i1, i1


def convolve_exponential(curve: np.ndarray, dt_s: float, rate_per_s: float) -> np.ndarray:
    """``y(t) = int_0^t c(s) exp(-k (t - s)) ds`` on a uniform grid, exact for piecewise-linear c.

    Parameters
    ----------
    curve : array [n_fine] or [n_fine, m]
        ``c`` at ``0, dt, 2 dt, ...`` (time first); ``y(0) = 0``.
    dt_s : float
        Grid step in seconds.
    rate_per_s : float
        ``k >= 0`` in 1/s (``k = 0`` gives the running integral, trapezoid-exact).
    """
    c = np.asarray(curve, dtype=float)
    e, a, b = _exp_coefficients(float(rate_per_s), dt_s)
    g = a * c[:-1] + b * c[1:]
    out = np.empty_like(c)
    out[0] = 0.0
    out[1:] = signal.lfilter([1.0], [1.0, -e], g, axis=0)
    return out


def input_on_grid(schedule: FrameSchedule, frame_values_bq_per_ml: np.ndarray, t_s: np.ndarray, *,
                  decay_constant_per_s: float = 0.0, method: InputInterpolation = "smooth",
                  zero_at_start: bool = True) -> np.ndarray:
    """A continuous (piecewise-linear) input on the fine grid from decay-corrected frame values.

    ``"smooth"`` (default): nodes about every 1 s (at most 10 per frame), the smoothest
    non-negative curve (least ``int c''^2``) whose decay-weighted frame means
    (:func:`frame_operator`) equal the frame values. ``"mean_preserving"``: nodes at the frame mid-times, values solved for the same
    frame means. ``"linear"``: nodes at the frame mid-times at the frame values. With
    ``zero_at_start`` the curve is 0 at (and before) the first frame start (the bolus arrives
    after the scan starts); it is constant after the last node.

    Returns
    -------
    array [n_fine], Bq/mL (decay-corrected).
    """
    values = np.asarray(frame_values_bq_per_ml, dtype=float).reshape(-1)
    nodes = schedule.mid_s
    if zero_at_start:
        node_t = np.concatenate([[schedule.start_s[0]], nodes])
    else:
        node_t = nodes
    if method == "linear":
        node_v = np.concatenate([[0.0], values]) if zero_at_start else values
        return np.interp(t_s, node_t, node_v, left=0.0 if zero_at_start else float(values[0]),
                         right=float(values[-1]))
    if method == "smooth":
        return _smooth_input(schedule, values, t_s, decay_constant_per_s, zero_at_start)
    if method != "mean_preserving":
        raise ValueError(f"unknown input interpolation {method!r}")
    hats = _hat_matrix(t_s, node_t, zero_at_start)  # [n_fine, n_frames]
    system = frame_operator(schedule, t_s, decay_constant_per_s) @ hats
    try:
        node_v = np.linalg.solve(system, values)
    except np.linalg.LinAlgError:
        node_v = np.linalg.lstsq(system, values, rcond=None)[0]
    return hats @ node_v


def _smooth_input(schedule: FrameSchedule, values: np.ndarray, t_s: np.ndarray, decay_constant_per_s: float,
                  zero_at_start: bool, node_dt_s: float = 1.0, max_nodes_per_frame: int = 10) -> np.ndarray:
    """Smoothest piecewise-linear curve with the given decay-weighted frame means.

    Nodes at every frame edge and inside each frame at equal spacing of about ``node_dt_s``
    (at most ``max_nodes_per_frame`` intervals per frame: 1 s in 10 s frames, 12 s in a 120 s
    frame). Minimises ``int c''(t)^2 dt`` of the node values (second divided differences
    weighted by their spacing) subject to the frame means (:func:`frame_operator`) equalling
    ``values``: an equality-constrained least-squares problem solved through its KKT system.
    Where that curve rings below zero (a bolus onset sharper than the frames), the problem is
    solved again with non-negative nodes (bounded-variable least squares, the frame means kept
    by a heavy penalty). The first node (first frame start) is 0 when ``zero_at_start``.
    """
    nodes: list[float] = [float(schedule.start_s[0])]
    for a, b in zip(schedule.start_s, schedule.end_s):
        if a > nodes[-1] + 1e-9:  # a gap between frames
            nodes.append(float(a))
        k = int(np.clip(round((b - a) / node_dt_s), 1, max_nodes_per_frame))
        nodes.extend((a + (b - a) * np.arange(1, k + 1) / k).tolist())
    node_t = np.asarray(nodes)
    n_all = node_t.size
    t = np.asarray(t_s, dtype=float)
    left = np.clip(np.searchsorted(node_t, t, side="right") - 1, 0, n_all - 2)
    frac = np.clip((t - node_t[left]) / (node_t[left + 1] - node_t[left]), 0.0, 1.0)
    rows = np.arange(t.size)
    hats = sparse.csr_matrix((np.concatenate([1.0 - frac, frac]),
                              (np.concatenate([rows, rows]), np.concatenate([left, left + 1]))), shape=(t.size, n_all))
    h = np.diff(node_t)
    # second divided differences at the inner nodes, weighted so that the sum of squares ~ int c''^2
    second = np.zeros((n_all - 2, n_all))
    idx = np.arange(n_all - 2)
    second[idx, idx] = 1.0 / h[:-1]
    second[idx, idx + 1] = -(1.0 / h[:-1] + 1.0 / h[1:])
    second[idx, idx + 2] = 1.0 / h[1:]
    second *= (np.sqrt(2.0 / (h[:-1] + h[1:])))[:, None]
    operator = frame_operator(schedule, t, decay_constant_per_s)
    if zero_at_start:
        hats = hats[:, 1:]
        second = second[:, 1:]
    constraint = np.asarray((hats.T @ operator.T).T)
    n = constraint.shape[1]
    m = constraint.shape[0]
    kkt = np.zeros((n + m, n + m))
    kkt[:n, :n] = second.T @ second
    kkt[:n, n:] = constraint.T
    kkt[n:, :n] = constraint
    rhs = np.concatenate([np.zeros(n), values])
    try:
        nodes_v = np.linalg.solve(kkt, rhs)[:n]
    except np.linalg.LinAlgError:
        nodes_v = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if _SMOOTH_POSITIVE and peak > 0 and np.min(nodes_v) < -1e-6 * peak:
        # ringing below zero (a sharp bolus onset): the same problem with nodes >= 0, the frame
        # means kept by a heavy penalty (bounded-variable least squares)
        scale = 1e4 * float(np.linalg.norm(second)) / max(float(np.linalg.norm(constraint)), 1e-300)
        a_mat = np.vstack([scale * constraint, second])
        b_vec = np.concatenate([scale * values, np.zeros(second.shape[0])])
        nodes_v = optimize.lsq_linear(a_mat, b_vec, bounds=(0.0, np.inf), method="bvls").x
    curve = hats @ nodes_v
    return np.where(t < node_t[0], 0.0, curve) if zero_at_start else curve


def _hat_matrix(t_s: np.ndarray, node_t: np.ndarray, zero_first: bool) -> np.ndarray:
    """Columns: piecewise-linear interpolants of unit node values (held constant past the ends)."""
    n_nodes = node_t.size
    eye = np.eye(n_nodes)
    hats = np.stack([np.interp(t_s, node_t, eye[k], left=0.0 if zero_first else eye[k][0], right=eye[k][-1])
                     for k in range(n_nodes)], axis=1)
    return hats[:, 1:] if zero_first else hats


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------

def lortie_k1(mbf_ml_per_min_per_g: np.ndarray | float, a: float = 0.77, b_ml_per_min_per_g: float = 0.63) -> np.ndarray:
    """Rb-82 uptake rate ``K1 = F (1 - a exp(-b / F))`` in mL/min/g (Lortie 2007); F = 0 gives 0."""
    f = np.asarray(mbf_ml_per_min_per_g, dtype=float)
    safe = np.where(f > 0, f, 1.0)
    return np.where(f > 0, safe * (1.0 - a * np.exp(-b_ml_per_min_per_g / safe)), 0.0)


def lortie_mbf(k1_ml_per_min_per_g: np.ndarray | float, a: float = 0.77, b_ml_per_min_per_g: float = 0.63) -> np.ndarray:
    """Invert :func:`lortie_k1` (vectorised): F in mL/min/g with ``K1(F) = k1``.

    ``K1(F)`` is increasing and concave with ``(1 - a) F <= K1 <= F``, so the root is bracketed
    by ``[k1, k1 / (1 - a)]``; Newton steps from the left end stay left of the root and converge
    monotonically (kept inside the bracket). ``k1 <= 0`` gives 0; non-finite gives NaN.
    """
    if not 0.0 <= a < 1.0:
        raise ValueError("the extraction scale a must be in [0, 1)")
    k1 = np.asarray(k1_ml_per_min_per_g, dtype=float)
    positive = np.isfinite(k1) & (k1 > 0)
    k = np.where(positive, k1, 1.0)
    lo, hi = k.copy(), k / (1.0 - a)
    f = lo.copy()
    for _ in range(60):
        ex = np.exp(-b_ml_per_min_per_g / f)
        g = f * (1.0 - a * ex) - k
        dg = 1.0 - a * ex * (1.0 + b_ml_per_min_per_g / f)
        step = g / dg
        f = np.clip(f - step, lo, hi)
        if np.all(np.abs(step) <= 1e-14 * f):
            break
    out = np.where(positive, f, np.where(np.isfinite(k1), 0.0, np.nan))
    return out if out.ndim else out[()]


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

@dataclass
class _Context:
    """Everything a model curve needs, on the fine grid of one fit (decay-corrected)."""

    t_s: np.ndarray               # [n_fine]
    dt_s: float
    blood_fine: np.ndarray        # LV-cavity (whole-blood) input on the fine grid
    operator: np.ndarray          # [frames, n_fine] decay-weighted frame means
    blood_frames: np.ndarray      # [frames] spill-over curve (measured LV frame values)
    rv_frames: np.ndarray | None  # [frames] RV frame values or None


@dataclass
class _Family:
    """A one-parameter family of basis curves for the basis-function method."""

    grid: np.ndarray                                     # [n_grid]
    basis: Callable[[float], np.ndarray]                 # grid value -> fine curve
    to_start: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (g, alpha, beta) -> [n, n_kin + 1]
    to_mbf: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]    # (g, alpha, beta) -> MBF
    log_grid: bool = True
    #: True: the basis is the whole tissue curve and the model is ``T_g + beta (C_LV - T_g)``
    #: (one linear parameter; alpha = 1 - beta); False: ``alpha B_g + beta C_LV``.
    offset: bool = False


@dataclass
class _Spec:
    """The parameter vector of one fit: kinetic parameters, then blood_fraction [, rv_fraction]."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    scale: np.ndarray
    n_kin: int
    coupled: bool
    tissue: Callable[[np.ndarray, _Context], np.ndarray]  # kinetic params -> fine tissue curve
    mbf: Callable[[np.ndarray], float]
    derived: Callable[[np.ndarray], dict[str, float]]
    family: Callable[[_Context], _Family]
    default_start: Callable[[float], np.ndarray]  # MBF start -> kinetic start values


class KineticModel(ABC):
    """Common behaviour of the models; the concrete models are frozen dataclasses below."""

    name: ClassVar[str]
    tracer: ClassVar[Tracer]
    fit_end_s: float
    blood_fraction_bounds: tuple[float, float]
    rv_fraction_bounds: tuple[float, float]
    half_life_s: float

    @property
    def decay_constant_per_s(self) -> float:
        return math.log(2.0) / self.half_life_s

    def constants(self) -> dict[str, float | str]:
        """The model's name and every constant and bound (goes with every result)."""
        out: dict[str, float | str] = {"model": self.name, "tracer": self.tracer.name}
        for key, value in self.__dict__.items():
            if isinstance(value, tuple):
                out[f"{key}_lower"], out[f"{key}_upper"] = float(value[0]), float(value[1])
            elif isinstance(value, (int, float)):
                out[key] = float(value)
            elif isinstance(value, str):
                out[key] = value
        return out

    @abstractmethod
    def _spec(self, use_rv: bool, distribution_volume_ml_per_g: float | None = None) -> _Spec:
        """The model's parameter layout and curve functions (each concrete model says its own)."""

    def _linear_bounds(self, use_rv: bool) -> tuple[list[str], list[float], list[float], list[float]]:
        names, lower, upper, scale = ["blood_fraction"], [self.blood_fraction_bounds[0]], [self.blood_fraction_bounds[1]], [0.3]
        if use_rv:
            names.append("rv_fraction")
            lower.append(self.rv_fraction_bounds[0])
            upper.append(self.rv_fraction_bounds[1])
            scale.append(0.1)
        return names, lower, upper, scale


def _log_grid(lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(lo), math.log(hi), n))


@dataclass(frozen=True)
class Rb82Lortie(KineticModel):
    """Rb-82 one-tissue model with Lortie's flow-dependent extraction (reference 3.2, 8.2).

    ``C_tissue = K1(F) * C_LV (x) exp(-k2 t)``, ``K1 = F (1 - A exp(-B / F))``.

    Parameters
    ----------
    extraction_a : float
        A (EF scale), dimensionless; 0.77.
    extraction_b_ml_per_min_per_g : float
        B (EF exp) in mL/min/g; 0.63.
    distribution_volume : {"study", "global_tac", "region"}
        One DV = K1/k2 per study (Ocneanu 2017's best variant), k2 = K1(F)/DV in every region:
        ``"study"`` (default) fits the 17 segment TACs jointly with a shared DV;
        ``"global_tac"`` is the reference note's two-stage form (DV from a fit of F, k2 and the
        blood fraction to the global mean TAC, then F and blood fraction per region): a mean of
        segments with different F is not a one-tissue curve, so its DV is biased when flow is
        heterogeneous (noise-free: -1 % DV / +0.5 % MBF for rest flows 0.6-1.4, -3.5 % / +1.6 %
        with a territory defect, bench/validate_pet_tac.py). ``"region"``: k2 fitted per region.
    distribution_volume_bounds_ml_per_g : tuple
        Bounds of the shared DV in mL/g ([0.5, 20]).
    fit_end_s : float
        Frames ending after this are left out (0-6 min).
    mbf_bounds_ml_per_min_per_g, k2_bounds_per_min, blood_fraction_bounds, rv_fraction_bounds
        Box constraints of the fit ([0.05, 8], [0, 2], [0, 0.9], [0, 0.3]).
    half_life_s : float
        Rb-82 half-life in seconds (decay weights and corrections).
    """

    name: ClassVar[str] = "rb82_lortie_1tcm"
    tracer: ClassVar[Tracer] = RB82
    extraction_a: float = 0.77
    extraction_b_ml_per_min_per_g: float = 0.63
    distribution_volume: Literal["study", "global_tac", "region"] = "study"
    fit_end_s: float = 360.0
    mbf_bounds_ml_per_min_per_g: tuple[float, float] = (0.05, 8.0)
    k2_bounds_per_min: tuple[float, float] = (0.0, 2.0)
    distribution_volume_bounds_ml_per_g: tuple[float, float] = (0.5, 20.0)
    blood_fraction_bounds: tuple[float, float] = (0.0, 0.9)
    rv_fraction_bounds: tuple[float, float] = (0.0, 0.3)
    half_life_s: float = RB82.half_life_s

    def k1(self, mbf_ml_per_min_per_g: np.ndarray | float) -> np.ndarray:
        """K1 in mL/min/g for flow F in mL/min/g."""
        return lortie_k1(mbf_ml_per_min_per_g, self.extraction_a, self.extraction_b_ml_per_min_per_g)

    def mbf_from_k1(self, k1_ml_per_min_per_g: np.ndarray | float) -> np.ndarray:
        """F in mL/min/g for K1 in mL/min/g (exact inverse of :meth:`k1`)."""
        return lortie_mbf(k1_ml_per_min_per_g, self.extraction_a, self.extraction_b_ml_per_min_per_g)

    def _spec(self, use_rv: bool, distribution_volume_ml_per_g: float | None = None) -> _Spec:
        lin_names, lin_lo, lin_hi, lin_scale = self._linear_bounds(use_rv)
        dv = distribution_volume_ml_per_g
        f_lo, f_hi = self.mbf_bounds_ml_per_min_per_g
        if dv is None:
            def tissue(kin: np.ndarray, ctx: _Context) -> np.ndarray:
                k1 = float(self.k1(kin[0]))
                return (k1 / 60.0) * convolve_exponential(ctx.blood_fine, ctx.dt_s, max(kin[1], 0.0) / 60.0)

            def family(ctx: _Context) -> _Family:
                grid = _log_grid(0.01, 3.0, 100)

                def to_start(g: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
                    k1 = 60.0 * alpha / np.maximum(1.0 - beta, 1e-6)
                    f = np.clip(self.mbf_from_k1(k1), f_lo, f_hi)
                    return np.stack([f, np.clip(g, *self.k2_bounds_per_min), beta], axis=-1)

                return _Family(grid, lambda g: convolve_exponential(ctx.blood_fine, ctx.dt_s, g / 60.0),
                               to_start, lambda g, alpha, beta: self.mbf_from_k1(60.0 * alpha / np.maximum(1.0 - beta, 1e-6)))

            def derived(x: np.ndarray) -> dict[str, float]:
                k1 = float(self.k1(x[0]))
                return {"k1_ml_per_min_per_g": k1,
                        "distribution_volume_ml_per_g": k1 / x[1] if x[1] > 0 else math.inf}

            return _Spec(("mbf_ml_per_min_per_g", "k2_per_min", *lin_names),
                         np.array([f_lo, self.k2_bounds_per_min[0], *lin_lo]),
                         np.array([f_hi, self.k2_bounds_per_min[1], *lin_hi]),
                         np.array([1.0, 0.2, *lin_scale]), 2, True, tissue, lambda x: float(x[0]), derived, family,
                         lambda f0: np.array([f0, float(self.k1(f0)) / 3.5]))

        if not dv > 0:
            raise ValueError("distribution volume must be > 0 mL/g")

        def tissue_dv(kin: np.ndarray, ctx: _Context) -> np.ndarray:
            k1 = float(self.k1(kin[0]))
            return (k1 / 60.0) * convolve_exponential(ctx.blood_fine, ctx.dt_s, k1 / dv / 60.0)

        def family_dv(ctx: _Context) -> _Family:
            grid = _log_grid(f_lo, f_hi, 200)

            def basis(g: float) -> np.ndarray:
                k1 = float(self.k1(g))
                return (k1 / 60.0) * convolve_exponential(ctx.blood_fine, ctx.dt_s, k1 / dv / 60.0)

            return _Family(grid, basis, lambda g, alpha, beta: np.stack([g, beta], axis=-1),
                           lambda g, alpha, beta: g, offset=True)

        def derived_dv(x: np.ndarray) -> dict[str, float]:
            k1 = float(self.k1(x[0]))
            return {"k1_ml_per_min_per_g": k1, "k2_per_min": k1 / dv, "distribution_volume_ml_per_g": float(dv)}

        return _Spec(("mbf_ml_per_min_per_g", *lin_names), np.array([f_lo, *lin_lo]), np.array([f_hi, *lin_hi]),
                     np.array([1.0, *lin_scale]), 1, True, tissue_dv, lambda x: float(x[0]), derived_dv, family_dv,
                     lambda f0: np.array([f0]))


@dataclass(frozen=True)
class NH3DeGrado(KineticModel):
    """N-13 ammonia one-tissue model with linear metabolite correction (DeGrado 1996; reference 3.3).

    ``C_p(t) = C_LV(t) * max(0, 1 - m t)`` (t in min), ``C_tissue = F * C_p (x) exp(-k2 t)``
    (``K1 = F``); the spill-over term uses the whole-blood ``C_LV``.

    Parameters
    ----------
    metabolite_slope_per_min : float
        m = 0.077 /min.
    fit_end_s : float
        240 s (frames after 4 min are not used).
    """

    name: ClassVar[str] = "nh3_degrado_1tcm"
    tracer: ClassVar[Tracer] = N13_AMMONIA
    metabolite_slope_per_min: float = 0.077
    fit_end_s: float = 240.0
    mbf_bounds_ml_per_min_per_g: tuple[float, float] = (0.05, 8.0)
    k2_bounds_per_min: tuple[float, float] = (0.0, 3.0)
    blood_fraction_bounds: tuple[float, float] = (0.0, 0.9)
    rv_fraction_bounds: tuple[float, float] = (0.0, 0.3)
    half_life_s: float = N13_AMMONIA.half_life_s

    def plasma(self, t_s: np.ndarray, blood_bq_per_ml: np.ndarray) -> np.ndarray:
        """Metabolite-corrected plasma input on the fine grid (Bq/mL)."""
        return blood_bq_per_ml * np.clip(1.0 - self.metabolite_slope_per_min * t_s / 60.0, 0.0, None)

    def _spec(self, use_rv: bool, distribution_volume_ml_per_g: float | None = None) -> _Spec:
        lin_names, lin_lo, lin_hi, lin_scale = self._linear_bounds(use_rv)
        f_lo, f_hi = self.mbf_bounds_ml_per_min_per_g

        def tissue(kin: np.ndarray, ctx: _Context) -> np.ndarray:
            cp = self.plasma(ctx.t_s, ctx.blood_fine)
            return (kin[0] / 60.0) * convolve_exponential(cp, ctx.dt_s, max(kin[1], 0.0) / 60.0)

        def family(ctx: _Context) -> _Family:
            cp = self.plasma(ctx.t_s, ctx.blood_fine)

            def to_mbf(g: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
                return 60.0 * alpha / np.maximum(1.0 - beta, 1e-6)

            def to_start(g: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
                return np.stack([np.clip(to_mbf(g, alpha, beta), f_lo, f_hi), np.clip(g, *self.k2_bounds_per_min), beta], axis=-1)

            return _Family(_log_grid(0.01, 3.0, 100), lambda g: convolve_exponential(cp, ctx.dt_s, g / 60.0), to_start, to_mbf)

        return _Spec(("mbf_ml_per_min_per_g", "k2_per_min", *lin_names),
                     np.array([f_lo, self.k2_bounds_per_min[0], *lin_lo]),
                     np.array([f_hi, self.k2_bounds_per_min[1], *lin_hi]),
                     np.array([1.0, 0.2, *lin_scale]), 2, True, tissue, lambda x: float(x[0]),
                     lambda x: {"k1_ml_per_min_per_g": float(x[0])}, family, lambda f0: np.array([f0, 0.15]))


@dataclass(frozen=True)
class NH3UCLA(KineticModel):
    """N-13 ammonia UCLA/Choi modified two-parameter model (reference 3.3; option).

    Irreversible two-tissue with ``K1 = F``, ``k2 = F / V_ND``, ``k3 = k2 (s exp(e / F) - 1)``,
    i.e. net extraction ``k3 / (k2 + k3) = 1 - exp(-e / F) / s``; fitted: F, blood fraction
    [, RV fraction]. No metabolite correction.

    Parameters
    ----------
    nondisplaceable_volume_ml_per_g : float
        V_ND = 0.8 mL/g.
    extraction_scale : float
        s = 1.65 (EF scale; ``1/0.607``).
    extraction_exp_ml_per_min_per_g : float
        e = 1.25 mL/min/g (EF exp).
    fit_end_s : float
        120 s (<= 2 min).
    """

    name: ClassVar[str] = "nh3_ucla_2p"
    tracer: ClassVar[Tracer] = N13_AMMONIA
    nondisplaceable_volume_ml_per_g: float = 0.8
    extraction_scale: float = 1.65
    extraction_exp_ml_per_min_per_g: float = 1.25
    fit_end_s: float = 120.0
    mbf_bounds_ml_per_min_per_g: tuple[float, float] = (0.05, 8.0)
    blood_fraction_bounds: tuple[float, float] = (0.0, 0.9)
    rv_fraction_bounds: tuple[float, float] = (0.0, 0.3)
    half_life_s: float = N13_AMMONIA.half_life_s

    def rate_constants(self, mbf_ml_per_min_per_g: float) -> tuple[float, float, float]:
        """(K1 mL/min/g, k2 1/min, k3 1/min) for flow F (k3 may be very large at low F)."""
        f = max(float(mbf_ml_per_min_per_g), 1e-3)
        k2 = f / self.nondisplaceable_volume_ml_per_g
        return f, k2, k2 * (self.extraction_scale * math.exp(min(self.extraction_exp_ml_per_min_per_g / f, 700.0)) - 1.0)

    def net_extraction(self, mbf_ml_per_min_per_g: float) -> float:
        """``k3 / (k2 + k3) = 1 - exp(-e / F) / s``."""
        f = max(float(mbf_ml_per_min_per_g), 1e-3)
        return 1.0 - math.exp(-self.extraction_exp_ml_per_min_per_g / f) / self.extraction_scale

    def _tissue_of(self, f: float, ctx: _Context) -> np.ndarray:
        f = max(float(f), 1e-3)
        en = self.net_extraction(f)
        kappa_per_min = (f / self.nondisplaceable_volume_ml_per_g) / (1.0 - en)  # k2 + k3
        trapped = convolve_exponential(ctx.blood_fine, ctx.dt_s, 0.0)
        free = convolve_exponential(ctx.blood_fine, ctx.dt_s, kappa_per_min / 60.0)
        return (f / 60.0) * (en * trapped + (1.0 - en) * free)

    def _spec(self, use_rv: bool, distribution_volume_ml_per_g: float | None = None) -> _Spec:
        lin_names, lin_lo, lin_hi, lin_scale = self._linear_bounds(use_rv)
        f_lo, f_hi = self.mbf_bounds_ml_per_min_per_g

        def family(ctx: _Context) -> _Family:
            return _Family(_log_grid(f_lo, f_hi, 200), lambda g: self._tissue_of(g, ctx),
                           lambda g, alpha, beta: np.stack([g, beta], axis=-1), lambda g, alpha, beta: g, offset=True)

        def derived(x: np.ndarray) -> dict[str, float]:
            k1, k2, k3 = self.rate_constants(x[0])
            return {"k1_ml_per_min_per_g": k1, "k2_per_min": k2, "k3_per_min": k3}

        return _Spec(("mbf_ml_per_min_per_g", *lin_names), np.array([f_lo, *lin_lo]), np.array([f_hi, *lin_hi]),
                     np.array([1.0, *lin_scale]), 1, True, lambda kin, ctx: self._tissue_of(kin[0], ctx),
                     lambda x: float(x[0]), derived, family, lambda f0: np.array([f0]))


@dataclass(frozen=True)
class H2OIida(KineticModel):
    """O-15 water model of Iida (as Turku ``fitmbf``; reference 3.4).

    ``C = PTF * f * C_a (x) exp(-(f / p) t) + Va * C_a`` (+ ``V_RV * C_RV`` for septal regions
    when asked), f = ptMBF in mL/min/mL, MBF = rMBF = ``f * PTF``. ``Va`` is the parameter named
    ``blood_fraction``; the tissue term is not scaled by ``1 - Va`` (PTF is free).

    Parameters
    ----------
    partition_coefficient_ml_per_ml : float
        Water partition coefficient p = 0.9464 mL/mL.
    fit_end_s : float
        Whole series by default (``inf``).
    ptmbf_bounds_ml_per_min_per_ml, ptf_bounds, blood_fraction_bounds
        [0, 10], [0.05, 1], [0.05, 0.99] (tpcclib defaults).
    """

    name: ClassVar[str] = "h2o_iida"
    tracer: ClassVar[Tracer] = O15_WATER
    partition_coefficient_ml_per_ml: float = 0.9464
    fit_end_s: float = math.inf
    ptmbf_bounds_ml_per_min_per_ml: tuple[float, float] = (0.0, 10.0)
    ptf_bounds: tuple[float, float] = (0.05, 1.0)
    blood_fraction_bounds: tuple[float, float] = (0.05, 0.99)
    rv_fraction_bounds: tuple[float, float] = (0.0, 0.3)
    half_life_s: float = O15_WATER.half_life_s

    def _spec(self, use_rv: bool, distribution_volume_ml_per_g: float | None = None) -> _Spec:
        lin_names, lin_lo, lin_hi, lin_scale = self._linear_bounds(use_rv)
        p = self.partition_coefficient_ml_per_ml
        f_lo, f_hi = self.ptmbf_bounds_ml_per_min_per_ml

        def tissue(kin: np.ndarray, ctx: _Context) -> np.ndarray:
            f = max(kin[0], 0.0)
            return (kin[1] * f / 60.0) * convolve_exponential(ctx.blood_fine, ctx.dt_s, f / p / 60.0)

        def family(ctx: _Context) -> _Family:
            def to_start(g: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
                ptf = np.clip(60.0 * alpha / g, *self.ptf_bounds)
                return np.stack([np.clip(g, f_lo, f_hi), ptf, np.clip(beta, *self.blood_fraction_bounds)], axis=-1)

            return _Family(_log_grid(0.05, 10.0, 100),
                           lambda g: convolve_exponential(ctx.blood_fine, ctx.dt_s, g / p / 60.0),
                           to_start, lambda g, alpha, beta: 60.0 * alpha)

        return _Spec(("ptmbf_ml_per_min_per_ml", "perfusable_tissue_fraction", *lin_names),
                     np.array([f_lo, self.ptf_bounds[0], *lin_lo]), np.array([f_hi, self.ptf_bounds[1], *lin_hi]),
                     np.array([1.0, 0.5, *lin_scale]), 2, False, tissue, lambda x: float(x[0] * x[1]),
                     lambda x: {"ptmbf_ml_per_min_per_ml": float(x[0]), "k2_per_min": float(x[0]) / p},
                     family, lambda f0: np.array([f0 / 0.7, 0.7]))


#: The models by name, with their default constants.
MODELS: dict[str, KineticModel] = {
    Rb82Lortie.name: Rb82Lortie(),
    NH3DeGrado.name: NH3DeGrado(),
    NH3UCLA.name: NH3UCLA(),
    H2OIida.name: H2OIida(),
}


def default_model(tracer: str) -> KineticModel:
    """The default model of a tracer ("Rb-82", "N-13 ammonia", "O-15 water"; case-insensitive prefix)."""
    key = tracer.strip().lower()
    if key.startswith("rb"):
        return Rb82Lortie()
    if key.startswith("n-13") or key.startswith("n13") or "ammonia" in key:
        return NH3DeGrado()
    if key.startswith("o-15") or key.startswith("o15") or "water" in key:
        return H2OIida()
    raise ValueError(f"no kinetic model for tracer {tracer!r}")


# ---------------------------------------------------------------------------------------------
# model curves
# ---------------------------------------------------------------------------------------------

def _operational(spec: _Spec, x: np.ndarray, tissue_frames: np.ndarray, ctx: _Context) -> np.ndarray:
    fb = x[spec.n_kin]
    fr = x[spec.n_kin + 1] if len(x) > spec.n_kin + 1 else 0.0
    scale = (1.0 - fb - fr) if spec.coupled else 1.0
    out = scale * tissue_frames + fb * ctx.blood_frames
    if fr:
        assert ctx.rv_frames is not None
        out = out + fr * ctx.rv_frames
    return out


def model_curve(model: KineticModel, schedule: FrameSchedule, parameters: Mapping[str, float | np.ndarray], *,
                blood_input: SampledInput, rv_input: SampledInput | None = None, decay_corrected: bool = True,
                dt_s: float = 0.25, distribution_volume_ml_per_g: float | None = None) -> np.ndarray:
    """Frame values of the model for known continuous blood curves (the forward model).

    Parameters
    ----------
    model : KineticModel
    schedule : FrameSchedule
        All frames (no fit window applies to a forward curve).
    parameters : mapping of name -> float or array [n]
        The model's parameter names (as in :attr:`RegionFit.parameters`), e.g. for
        :class:`Rb82Lortie` ``mbf_ml_per_min_per_g``, ``k2_per_min`` (omit it and give
        ``distribution_volume_ml_per_g`` for the global-DV form), ``blood_fraction`` and
        optionally ``rv_fraction``; for :class:`H2OIida` ``ptmbf_ml_per_min_per_ml``,
        ``perfusable_tissue_fraction``, ``blood_fraction``. Arrays give one curve per element.
    blood_input, rv_input : SampledInput
        Decay-corrected LV-cavity (input and spill-over) and RV curves in Bq/mL.
    decay_corrected : bool
        Return decay-corrected frame values (scanner convention) or uncorrected ones.
    dt_s : float
        Fine-grid step in seconds.

    Returns
    -------
    array [frames] (scalar parameters) or [frames, n], Bq/mL.
    """
    use_rv = "rv_fraction" in parameters and rv_input is not None
    dv = distribution_volume_ml_per_g
    if isinstance(model, Rb82Lortie) and "k2_per_min" not in parameters and dv is None:
        raise ValueError("give k2_per_min or distribution_volume_ml_per_g")
    spec = model._spec(use_rv, dv if "k2_per_min" not in parameters else None)
    missing = [name for name in spec.names if name not in parameters and name != "rv_fraction"]
    if missing:
        raise ValueError(f"missing parameters {missing} for {model.name}")
    columns = {name: np.atleast_1d(np.asarray(parameters.get(name, 0.0), dtype=float)) for name in spec.names}
    n = max(c.size for c in columns.values())
    xs = np.stack([np.broadcast_to(columns[name], (n,)) for name in spec.names], axis=1)
    t = fine_grid(schedule.end_s[-1], dt_s)
    operator = frame_operator(schedule, t, model.decay_constant_per_s)
    blood = blood_input.on_grid(t)
    rv_frames = operator @ rv_input.on_grid(t) if rv_input is not None else None
    ctx = _Context(t, dt_s, blood, operator, operator @ blood, rv_frames)
    values = np.stack([_operational(spec, x, operator @ spec.tissue(x[:spec.n_kin], ctx), ctx) for x in xs], axis=1)
    if not decay_corrected:
        values = values * schedule.mean_decay_factor(model.decay_constant_per_s)[:, None]
    scalar = all(np.ndim(parameters.get(name, 0.0)) == 0 for name in spec.names)
    return values[:, 0] if scalar else values


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegionFit:
    """The fit of one TAC.

    Attributes
    ----------
    region : str
        "1".."17" (AHA segment), "LAD", "LCx", "RCA", "global", or a caller's label.
    model : str
        Model name; ``constants`` has every constant and bound.
    mbf_ml_per_min_per_g, mbf_se_ml_per_min_per_g : float
        MBF and its standard error (mL/min/g; NaN when not estimable).
    parameters, standard_errors : dict
        Fitted parameters by name (units in the names; SE NaN for a parameter at a bound),
        plus derived quantities (K1, DV, k2, ...) in ``parameters``.
    flags : tuple of str
        ``fit_failed``, ``at_bound:<name>``, ``large_se`` (MBF SE above ``se_limit`` of MBF),
        ``blood_fraction_high`` (>= 0.8: fits become unstable above ~0.9, Golanowski),
        ``global_dv_failed`` (stage 1 unusable; k2 fitted per region instead).
    cost : float
        Weighted sum of squared residuals.
    n_frames : int
        Frames used (inside the fit window).
    """

    region: str
    model: str
    mbf_ml_per_min_per_g: float
    mbf_se_ml_per_min_per_g: float
    parameters: dict[str, float]
    standard_errors: dict[str, float]
    flags: tuple[str, ...]
    cost: float
    n_frames: int
    constants: dict[str, float | str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SegmentFit:
    """Per-segment, per-territory and global MBF of one dynamic series (one state).

    Territory and global MBF are means of the segment values (equal AHA weighting, reference
    3.7); the fits of the territory and global mean TACs are in ``regional_fits`` (vendors
    differ: some fit a whole-LV TAC).
    """

    model: str
    constants: dict[str, float | str]
    segments: tuple[RegionFit, ...]
    territory_mbf_ml_per_min_per_g: dict[str, float]
    global_mbf_ml_per_min_per_g: float
    regional_fits: dict[str, RegionFit]
    distribution_volume_ml_per_g: float | None
    flags: tuple[str, ...]

    @property
    def segment_mbf_ml_per_min_per_g(self) -> np.ndarray:
        """[17] segment MBF in mL/min/g, AHA order 1..17."""
        return np.array([s.mbf_ml_per_min_per_g for s in self.segments])

    @property
    def segment_mbf_se_ml_per_min_per_g(self) -> np.ndarray:
        return np.array([s.mbf_se_ml_per_min_per_g for s in self.segments])

    @property
    def segment_flags(self) -> tuple[tuple[str, ...], ...]:
        return tuple(s.flags for s in self.segments)


@dataclass(frozen=True)
class FlowReserve:
    """MFR = stress / rest MBF per segment, territory and globally, with impaired flags.

    ``global_mfr`` is the ratio of the global means (reference 3.7); ``mean_segment_mfr`` the
    mean of the 17 segment ratios. RPP-corrected values are given next to, never instead of,
    the plain ones (``None`` when heart rate or systolic pressure is unknown).
    """

    model_rest: str
    model_stress: str
    constants: dict[str, float | str]
    impaired_below: float
    segment_mfr: np.ndarray
    segment_mfr_se: np.ndarray
    segment_impaired: np.ndarray
    territory_mfr: dict[str, float]
    territory_impaired: dict[str, bool]
    global_mfr: float
    mean_segment_mfr: float
    global_impaired: bool
    any_segment_impaired: bool
    rate_pressure_product_mmhg_per_min: float | None
    rpp_reference_mmhg_per_min: float
    segment_rest_mbf_rpp_corrected_ml_per_min_per_g: np.ndarray | None
    segment_mfr_rpp_corrected: np.ndarray | None
    global_mfr_rpp_corrected: float | None
    flags: tuple[str, ...]


@dataclass(frozen=True)
class BasisFunctionMap:
    """Voxel-wise result of the basis-function method (arrays [n_voxels]).

    ``grid_value`` is the family parameter at the (sub-grid) optimum: k2 in 1/min for the
    k2 families (Rb-82 region-DV, NH3 DeGrado), F in mL/min/g for the F families (Rb-82 with a
    given DV, NH3 UCLA), f = ptMBF in mL/min/mL for water. ``valid`` is False where no positive
    tissue term was found (MBF set to 0 there) or where the input was not finite.
    """

    model: str
    constants: dict[str, float | str]
    mbf_ml_per_min_per_g: np.ndarray
    blood_fraction: np.ndarray
    grid_value: np.ndarray
    valid: np.ndarray


# ---------------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------------



@dataclass
class _Prepared:
    schedule: FrameSchedule
    mask: np.ndarray
    ctx: _Context
    tissue: np.ndarray     # [frames_fit, n] decay-corrected
    weights: np.ndarray    # [frames_fit, n]
    exposure: np.ndarray   # [frames_fit] duration x mean decay factor
    model_weights: bool    # "counts": replace the data weights by the start model's


def _count_weights(exposure: np.ndarray, concentration: np.ndarray) -> np.ndarray:
    """``duration * D_i / max(C_i, 5 % of max C)`` per column, normalised to mean 1."""
    c = concentration if concentration.ndim == 2 else concentration[:, None]
    floor = _EPS_WEIGHT * np.max(np.abs(c), axis=0, keepdims=True)
    floor = np.where(floor > 0, floor, 1.0)
    w = exposure[:, None] / np.maximum(c, floor)
    w = w / np.mean(w, axis=0, keepdims=True)
    return w if concentration.ndim == 2 else w[:, 0]


def _prepare(model: KineticModel, schedule: FrameSchedule, blood: np.ndarray | None, tissue: np.ndarray,
             rv: np.ndarray | None, decay_corrected: bool, input_function: SampledInput | None,
             weights: WeightsArg, dt_s: float, input_interpolation: InputInterpolation) -> _Prepared:
    tissue = np.asarray(tissue, dtype=float)
    if tissue.ndim == 1:
        tissue = tissue[:, None]
    if tissue.shape[0] != schedule.n_frames:
        raise ValueError(f"TACs must be [frames, n] with {schedule.n_frames} frames, got {tissue.shape}")
    mask = schedule.within(model.fit_end_s)
    if mask.sum() < 3:
        raise ValueError(f"fewer than 3 frames end within the fit window of {model.fit_end_s} s")
    fit_schedule = schedule.subset(mask)
    lam = model.decay_constant_per_s
    decay = fit_schedule.mean_decay_factor(lam)
    correction = np.ones_like(decay) if decay_corrected else 1.0 / decay

    def _frames(values: np.ndarray | None, what: str) -> np.ndarray | None:
        if values is None:
            return None
        values = np.asarray(values, dtype=float).reshape(-1)
        if values.size != schedule.n_frames:
            raise ValueError(f"{what} must have one value per frame ({schedule.n_frames})")
        return values[mask] * correction

    y = tissue[mask] if decay_corrected else tissue[mask] / decay[:, None]
    t = fine_grid(fit_schedule.end_s[-1], dt_s)
    operator = frame_operator(fit_schedule, t, lam)
    blood_frames = _frames(blood, "blood")
    if input_function is not None:
        blood_fine = input_function.on_grid(t)
        if blood_frames is None:
            blood_frames = operator @ blood_fine
    else:
        if blood_frames is None:
            raise ValueError("give the LV-cavity TAC (blood) or a sampled input function")
        blood_fine = input_on_grid(fit_schedule, blood_frames, t, decay_constant_per_s=lam,
                                   method=input_interpolation)
    ctx = _Context(t, dt_s, blood_fine, operator, blood_frames, _frames(rv, "rv"))
    if isinstance(weights, str):
        if weights in ("counts", "counts_data"):
            w = _count_weights(fit_schedule.duration_s * decay, y)
        elif weights == "duration":
            w = np.repeat(fit_schedule.duration_s[:, None], y.shape[1], axis=1)
        elif weights == "none":
            w = np.ones_like(y)
        else:
            raise ValueError(f"unknown weights {weights!r}")
    else:
        w = np.asarray(weights, dtype=float)
        w = w[mask] if w.shape[0] == schedule.n_frames else w
        w = np.broadcast_to(w.reshape(w.shape[0], -1), y.shape).copy()
    w = w / np.mean(w, axis=0, keepdims=True)
    return _Prepared(fit_schedule, mask, ctx, y, w, fit_schedule.duration_s * decay,
                     isinstance(weights, str) and weights == "counts")


def _two_variable(b1: Any, b2: Any, g11: Any, g12: Any, g22: Any, beta_bounds: tuple[float, float], offset: bool,
                  solution: bool) -> tuple[np.ndarray, Any, Any]:
    """Cost reduction (and optionally the solution) of the bounded two-variable problem.

    With ``b1 = <B, y>_w``, ``b2 = <C_LV, y>_w``, ``g11 = <B, B>_w``, ``g12 = <B, C_LV>_w``,
    ``g22 = <C_LV, C_LV>_w`` (broadcastable arrays). ``offset=False``: minimise
    ``|y - alpha B - beta C_LV|_w`` over ``alpha >= 0``, ``beta`` in bounds: the interior
    solution when feasible, else the best edge (``beta`` at either bound with ``alpha`` clipped
    at 0, or ``alpha = 0`` with ``beta`` clipped) -- exact, the cost being convex.
    ``offset=True``: ``|y - B - beta (C_LV - B)|_w`` with ``beta`` clipped, ``alpha = 1 - beta``.
    The reduction is ``|y|_w^2 - cost`` (larger is better).
    """
    lo, hi = beta_bounds
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if offset:
            s_dr = b2 - b1 - g12 + g11
            s_dd = g22 - 2.0 * g12 + g11
            beta = np.clip(s_dr / s_dd, lo, hi)
            r = 2.0 * b1 - g11 + beta * (2.0 * s_dr - beta * s_dd)
            r = np.where(np.isfinite(r), r, -np.inf)
            return r, (1.0 - beta if solution else None), (beta if solution else None)
        det = g11 * g22 - g12 * g12
        alpha0 = (g22 * b1 - g12 * b2) / det
        beta0 = (g11 * b2 - g12 * b1) / det
        feasible = (alpha0 >= 0) & (beta0 >= lo) & (beta0 <= hi) & (det > 0)
        r = np.where(feasible, alpha0 * b1 + beta0 * b2, -np.inf)
        edges = []
        for bb in (lo, hi):  # beta at a bound, alpha >= 0 clipped
            a = np.maximum((b1 - bb * g12) / g11, 0.0)
            edges.append((a * (2.0 * (b1 - bb * g12) - a * g11) + bb * (2.0 * b2 - bb * g22), a, bb))
        beta3 = np.clip(b2 / g22, lo, hi)  # alpha = 0, beta clipped
        edges.append((beta3 * (2.0 * b2 - beta3 * g22), 0.0, beta3))
        alpha_out: Any = np.where(feasible, alpha0, 0.0) if solution else None
        beta_out: Any = np.where(feasible, beta0, 0.0) if solution else None
        for value, a, bb in edges:
            value = np.where(np.isfinite(value), value, -np.inf)
            better = value > r
            r = np.where(better, value, r)
            if solution:
                alpha_out = np.where(better, a, alpha_out)
                beta_out = np.where(better, bb, beta_out)
        return r, alpha_out, beta_out


def _reduction_shared(b1: np.ndarray, b2: np.ndarray, g11: np.ndarray, g12: np.ndarray, g22: Any,
                      beta_bounds: tuple[float, float]) -> np.ndarray:
    """:func:`_two_variable`'s reduction (``offset=False``) for weights shared by all columns.

    Same values, fewer passes over the [n_grid, m] arrays: the Gram entries are per basis
    ([n_grid, 1]) and ``b2`` per column, so the interior solution's feasibility and the edge
    values reduce to a few products with precomputed per-basis constants.
    """
    lo, hi = beta_bounds
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        det = g11 * g22 - g12 * g12                       # [n_grid, 1]
        ok = det > 0
        inv_g11 = 1.0 / g11
        # interior: alpha0 = (g22 b1 - g12 b2)/det >= 0, beta0 = (g11 b2 - g12 b1)/det in [lo, hi]
        alpha_num = g22 * b1 - g12 * b2[None, :]
        beta0 = (g11 * b2[None, :] - g12 * b1) / det
        r = (alpha_num * b1) / det + beta0 * b2[None, :]
        feasible = ok & (alpha_num >= 0) & (beta0 >= lo) & (beta0 <= hi)
        # edges: beta = lo or hi with alpha = max(., 0): value = max(b1 - bb g12, 0)^2 / g11 + bb (2 b2 - bb g22)
        edges = []
        for bb in (lo, hi):
            d = np.maximum(b1 - bb * g12, 0.0) if bb else np.maximum(b1, 0.0)
            value = d * d * inv_g11
            if bb:
                value += bb * (2.0 * b2[None, :] - bb * g22)
            edges.append(value)
        best_edge = np.maximum(edges[0], edges[1])
        beta3 = np.clip(b2 / g22, lo, hi)                 # alpha = 0: per column only
        best_edge = np.maximum(best_edge, (beta3 * (2.0 * b2 - beta3 * g22))[None, :])
        r = np.where(feasible, r, best_edge)
        return np.where(np.isfinite(r), r, -np.inf)


def _basis_solve(basis_frames: np.ndarray, blood_frames: np.ndarray, y: np.ndarray, w: np.ndarray,
                 beta_bounds: tuple[float, float], refine: bool = True, log_grid: bool = True,
                 grid: np.ndarray | None = None, chunk: int = 16384,
                 offset: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best basis and its bounded linear parameters for every column of ``y`` [frames, n].

    ``offset=False``: ``y ~ alpha B_g + beta C_LV`` with ``alpha >= 0`` and ``beta`` in
    ``beta_bounds`` (exact two-variable NNLS, :func:`_two_variable`). ``offset=True``:
    ``y ~ T_g + beta (C_LV - T_g)`` (coupled models whose basis is the whole tissue curve).
    Weighted by ``w`` ([frames] shared or [frames, n]); vectorised over columns (chunked) and
    bases ``basis_frames`` [n_grid, frames]: one matrix product and a few elementwise passes
    over [n_grid, chunk] give every basis's cost; the solution is then computed at the best
    basis and its neighbours only. Returns (grid value, alpha, beta, cost reduction) per
    column, with a parabolic sub-grid step over the basis index when ``refine``.
    """
    n = y.shape[1]
    n_grid = basis_frames.shape[0]
    out = np.empty((4, n))
    shared = w.ndim == 1
    step = max(1, min(chunk, int(4_000_000 // max(n_grid, 1))))
    bf = basis_frames
    bl = blood_frames
    pre: dict[str, Any] = {}
    if shared:
        pre["g11"] = ((bf * bf) @ w)[:, None]
        pre["g12"] = ((bf * bl) @ w)[:, None]
        pre["g22"] = float((bl * bl) @ w)
        pre["cross"] = ((bf[:-1] * bf[1:]) @ w) if n_grid > 1 else np.zeros(1)
        # the scan over all bases runs in float32 (memory-bound; it only picks the best basis),
        # the solution at the best basis and its neighbours is recomputed in float64
        pre["bf32"] = bf.astype(np.float32)
    for s0 in range(0, n, step):
        sl = slice(s0, min(n, s0 + step))
        out[:, sl] = _basis_chunk(bf, bl, y[:, sl], w if shared else w[:, sl], pre, beta_bounds, refine, log_grid,
                                  grid, offset)
    return out[0], out[1], out[2], out[3]


def _basis_chunk(bf: np.ndarray, bl: np.ndarray, y: np.ndarray, w: np.ndarray, pre: dict[str, Any],
                 beta_bounds: tuple[float, float],
                 refine: bool, log_grid: bool, grid: np.ndarray | None, offset: bool) -> np.ndarray:
    """:func:`_basis_solve` for one chunk of columns; returns [4, m] (grid value, alpha, beta, reduction)."""
    n_grid = bf.shape[0]
    shared = w.ndim == 1
    wy = (w[:, None] * y) if shared else w * y
    b2 = bl @ wy                   # [m]
    if shared:
        g11, g12, g22 = pre["g11"], pre["g12"], pre["g22"]
        b1_scan = pre["bf32"] @ wy.astype(np.float32)
        consts32 = (g11.astype(np.float32), g12.astype(np.float32), np.float32(g22))
        if offset:
            r = _two_variable(b1_scan, b2.astype(np.float32), *consts32, beta_bounds, offset, solution=False)[0]
        else:
            r = _reduction_shared(b1_scan, b2.astype(np.float32), *consts32, beta_bounds)
        b1: Any = None
    else:
        b1 = bf @ wy               # [n_grid, m]
        g11, g12, g22 = (bf * bf) @ w, (bf * bl) @ w, (bl * bl) @ w
        r, _, _ = _two_variable(b1, b2, g11, g12, g22, beta_bounds, offset, solution=False)
    j = np.argmax(r, axis=0)
    cols = np.arange(j.size)

    def first_products(jj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if shared:
            return np.einsum("mi,im->m", bf[jj], wy), g11[jj, 0], g12[jj, 0]
        return b1[jj, cols], g11[jj, cols], g12[jj, cols]

    def at(jj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b1j, g11j, g12j = first_products(jj)
        rr, aa, bb = _two_variable(b1j, b2, g11j, g12j, g22, beta_bounds, offset, solution=True)
        return rr, np.broadcast_to(aa, rr.shape), np.broadcast_to(bb, rr.shape)

    r_j, a_j, be_j = at(j)
    if shared:  # hill-climb in float64 where the float32 scan was ambiguous between neighbours
        for _ in range(3):
            rm = at(np.clip(j - 1, 0, n_grid - 1))[0]
            rp = at(np.clip(j + 1, 0, n_grid - 1))[0]
            move = np.where((rp > r_j) & (rp >= rm), 1, np.where((rm > r_j) & (rm > rp), -1, 0))
            if not np.any(move):
                break
            j = np.clip(j + move, 0, n_grid - 1)
            r_j, a_j, be_j = at(j)
    gval = grid[j].astype(float) if grid is not None else j.astype(float)
    if refine and n_grid >= 3:
        jm = np.clip(j - 1, 0, n_grid - 1)
        jp = np.clip(j + 1, 0, n_grid - 1)
        rm, rp = at(jm)[0], at(jp)[0]
        inner = (j > 0) & (j < n_grid - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            curvature = rm - 2 * r_j + rp
            delta = np.where(inner & (curvature < 0) & np.isfinite(rm) & np.isfinite(rp),
                             0.5 * (rm - rp) / curvature, 0.0)
        delta = np.clip(np.nan_to_num(delta), -0.5, 0.5)
        nb = np.where(delta >= 0, jp, jm)
        frac = np.abs(delta)
        # solve again with the basis interpolated linearly between the two bases
        lo_j = np.minimum(j, nb)
        b1j, g11j, g12j = first_products(j)
        b1n, g11n, g12n = first_products(nb)
        if shared:
            cross = pre["cross"][np.minimum(lo_j, n_grid - 2)]
        else:
            cross = ((bf[lo_j] * bf[np.minimum(lo_j + 1, n_grid - 1)]).T * w).sum(axis=0)
        f0, f1 = 1.0 - frac, frac
        r_i, a_i, be_i = _two_variable(f0 * b1j + f1 * b1n, b2, f0 * f0 * g11j + 2 * f0 * f1 * cross + f1 * f1 * g11n,
                                       f0 * g12j + f1 * g12n, g22, beta_bounds, offset, solution=True)
        use = np.isfinite(r_i) & (frac > 0)
        a_j = np.where(use, a_i, a_j)
        be_j = np.where(use, be_i, be_j)
        if grid is not None:
            if log_grid:
                gval = np.exp(f0 * np.log(grid[j]) + f1 * np.log(grid[nb]))
            else:
                gval = f0 * grid[j] + f1 * grid[nb]
    return np.stack([gval, a_j, be_j, r_j])


class _Objective:
    """Residuals and Jacobian of one weighted fit (caches the tissue curve of the last x)."""

    def __init__(self, spec: _Spec, ctx: _Context, y: np.ndarray, w: np.ndarray) -> None:
        self.spec, self.ctx, self.y, self.sw = spec, ctx, y, np.sqrt(w)
        self._key: bytes | None = None
        self._tf = np.zeros(0)

    def tissue_frames(self, x: np.ndarray) -> np.ndarray:
        key = x[: self.spec.n_kin].tobytes()
        if key != self._key:
            self._tf = self.ctx.operator @ self.spec.tissue(x[: self.spec.n_kin], self.ctx)
            self._key = key
        return self._tf

    def model(self, x: np.ndarray) -> np.ndarray:
        return _operational(self.spec, x, self.tissue_frames(x), self.ctx)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        return self.sw * (self.model(x) - self.y)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        spec, ctx = self.spec, self.ctx
        tf = self.tissue_frames(x)
        nk = spec.n_kin
        fb = x[nk]
        fr = x[nk + 1] if len(x) > nk + 1 else 0.0
        scale = (1.0 - fb - fr) if spec.coupled else 1.0
        jac = np.empty((self.y.size, len(x)))
        for k in range(nk):
            h = 1e-7 * max(abs(x[k]), spec.scale[k])
            xk = x[:nk].copy()
            if xk[k] + h > spec.upper[k]:
                h = -h
            xk[k] += h
            jac[:, k] = scale * (ctx.operator @ spec.tissue(xk, ctx) - tf) / h
        jac[:, nk] = ctx.blood_frames - (tf if spec.coupled else 0.0)
        if len(x) > nk + 1:
            assert ctx.rv_frames is not None
            jac[:, nk + 1] = ctx.rv_frames - (tf if spec.coupled else 0.0)
        return self.sw[:, None] * jac


def _fit_one(spec: _Spec, ctx: _Context, y: np.ndarray, w: np.ndarray, starts: list[np.ndarray],
             region: str, model: KineticModel, se_limit: float) -> RegionFit:
    objective = _Objective(spec, ctx, y, w)
    best = None
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, dtype=float), spec.lower, spec.upper)
        x0 = np.where(x0 >= spec.upper, spec.upper - 1e-9 * np.maximum(spec.scale, 1), x0)
        try:
            res = optimize.least_squares(objective.residuals, x0, jac=objective.jacobian,
                                         bounds=(spec.lower, spec.upper), method="trf", x_scale=spec.scale,
                                         ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=200)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(res.x)) and (best is None or res.cost < best.cost):
            best = res
    constants = model.constants()
    n = y.size
    if best is None:
        nan = {name: math.nan for name in spec.names}
        return RegionFit(region, model.name, math.nan, math.nan, dict(nan), dict(nan), ("fit_failed",), math.nan, n,
                         constants)
    x = best.x
    span = spec.upper - spec.lower
    at_lo = x <= spec.lower + 1e-6 * np.maximum(span, 1e-12)
    at_hi = x >= spec.upper - 1e-6 * np.maximum(span, 1e-12)
    at_bound = at_lo | at_hi | (best.active_mask != 0)
    free = ~at_bound
    flags: list[str] = [f"at_bound:{name}" for name, b in zip(spec.names, at_bound) if b]
    if best.status <= 0:
        flags.insert(0, "fit_failed")
    ssr = 2.0 * best.cost
    dof = n - int(free.sum())
    se = np.full(len(x), math.nan)
    mbf = spec.mbf(x)
    mbf_se = math.nan
    jac = objective.jacobian(x)
    if dof > 0 and free.any():
        jf = jac[:, free]
        try:
            cov = np.linalg.pinv(jf.T @ jf) * (ssr / dof)
            se[free] = np.sqrt(np.clip(np.diag(cov), 0.0, None))
            grad = np.zeros(len(x))
            for k in np.flatnonzero(free):
                h = 1e-7 * max(abs(x[k]), spec.scale[k])
                xh = x.copy()
                xh[k] += h
                grad[k] = (spec.mbf(xh) - mbf) / h
            g = grad[free]
            mbf_se = float(math.sqrt(max(g @ cov @ g, 0.0)))
        except np.linalg.LinAlgError:
            pass
    if not np.isfinite(mbf_se) or (mbf > 0 and mbf_se > se_limit * mbf):
        flags.append("large_se")
    if x[spec.n_kin] >= 0.8 and spec.coupled:
        flags.append("blood_fraction_high")
    parameters = {name: float(v) for name, v in zip(spec.names, x)}
    parameters.update(spec.derived(x))
    if "mbf_ml_per_min_per_g" not in parameters:
        parameters["mbf_ml_per_min_per_g"] = mbf
    errors = {name: float(v) for name, v in zip(spec.names, se)}
    return RegionFit(region, model.name, float(mbf), mbf_se, parameters, errors, tuple(flags), ssr, n, constants)


def _fit_study_dv(model: Rb82Lortie, prepared: _Prepared, use_rv: np.ndarray, labels: Sequence[str],
                  se_limit: float) -> tuple[list[RegionFit], float, float, bool]:
    """Fit all TACs at once with one shared distribution volume (Rb-82, ``distribution_volume="study"``).

    Parameters per TAC: F, blood fraction [, RV fraction]; shared: DV (mL/g, bounds
    ``model.distribution_volume_bounds_ml_per_g``); ``k2 = K1(F) / DV``. Each TAC's weights are
    scaled so that its weighted sum of squared values is 1 (every segment counts alike).
    Starts: the basis-function fit with k2 free gives per-TAC DV = K1 / k2, their median is the
    start DV, then the DV-family basis fit gives F and blood-fraction starts. Standard errors
    come from the joint Jacobian (so they include the DV's uncertainty), with each TAC's
    residual variance estimated from its own residuals.

    Returns (fits, DV, SE of DV, DV at a bound).
    """
    ctx = prepared.ctx
    y = prepared.tissue
    n_frames, n = y.shape
    w_mean1 = prepared.weights
    w = w_mean1 / np.sum(w_mean1 * y ** 2, axis=0, keepdims=True)
    sw = np.sqrt(w)
    beta_bounds = model.blood_fraction_bounds
    dv_lo, dv_hi = model.distribution_volume_bounds_ml_per_g
    free_family = model._spec(False, None).family(ctx)
    basis = np.stack([ctx.operator @ free_family.basis(float(g)) for g in free_family.grid])
    g, alpha, beta, _ = _basis_solve(basis, ctx.blood_frames, y, prepared.weights, beta_bounds, grid=free_family.grid)
    free_start = free_family.to_start(g, alpha, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        dv_each = model.k1(free_start[:, 0]) / free_start[:, 1]
    dv_each = dv_each[np.isfinite(dv_each) & (dv_each > 0)]
    dv0 = float(np.clip(np.median(dv_each), dv_lo * 1.01, dv_hi * 0.99)) if dv_each.size else 3.5
    dv_family = model._spec(False, dv0).family(ctx)
    basis = np.stack([ctx.operator @ dv_family.basis(float(v)) for v in dv_family.grid])
    g, alpha, beta, _ = _basis_solve(basis, ctx.blood_frames, y, prepared.weights, beta_bounds, grid=dv_family.grid,
                                     offset=True)
    f_lo, f_hi = model.mbf_bounds_ml_per_min_per_g
    rv_lo, rv_hi = model.rv_fraction_bounds
    if prepared.model_weights:  # count weights of the start model's curves, not of the noisy data
        k1_start = model.k1(np.clip(g, f_lo, f_hi))
        predicted = np.stack([ctx.operator @ ((k / 60.0) * convolve_exponential(ctx.blood_fine, ctx.dt_s, k / dv0 / 60.0))
                              for k in k1_start], axis=1)
        b = np.clip(beta, *beta_bounds)[None, :]
        w_mean1 = _count_weights(prepared.exposure, (1.0 - b) * predicted + b * ctx.blood_frames[:, None])
        w = w_mean1 / np.sum(w_mean1 * y ** 2, axis=0, keepdims=True)
        sw = np.sqrt(w)
    blocks: list[np.ndarray] = []
    x0: list[float] = []
    lower: list[float] = []
    upper: list[float] = []
    scale: list[float] = []
    for i in range(n):
        k = 3 if use_rv[i] else 2
        blocks.append(np.arange(len(x0), len(x0) + k))
        x0 += [float(np.clip(g[i], f_lo, f_hi)), float(np.clip(beta[i], *beta_bounds))] + ([0.05] if use_rv[i] else [])
        lower += [f_lo, beta_bounds[0]] + ([rv_lo] if use_rv[i] else [])
        upper += [f_hi, beta_bounds[1]] + ([rv_hi] if use_rv[i] else [])
        scale += [1.0, 0.3] + ([0.1] if use_rv[i] else [])
    x0 += [dv0]
    lower += [dv_lo]
    upper += [dv_hi]
    scale += [1.0]
    lo_a, hi_a, scale_a = np.array(lower), np.array(upper), np.array(scale)
    x0_a = np.clip(np.array(x0), lo_a, hi_a)
    cin = ctx.blood_fine
    cache: dict[tuple[float, float], np.ndarray] = {}

    def tissue(f: float, dv: float) -> np.ndarray:
        key = (f, dv)
        if key not in cache:
            if len(cache) > 4 * n + 8:
                cache.clear()
            k1 = float(model.k1(f))
            cache[key] = ctx.operator @ ((k1 / 60.0) * convolve_exponential(cin, ctx.dt_s, k1 / dv / 60.0))
        return cache[key]

    rv_frames = ctx.rv_frames if ctx.rv_frames is not None else np.zeros(n_frames)

    def model_frames(x: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, float]:
        b = blocks[i]
        tf = tissue(x[b[0]], x[-1])
        fb = x[b[1]]
        fr = x[b[2]] if b.size == 3 else 0.0
        return (1.0 - fb - fr) * tf + fb * ctx.blood_frames + fr * rv_frames, tf, 1.0 - fb - fr

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.concatenate([sw[:, i] * (model_frames(x, i)[0] - y[:, i]) for i in range(n)])

    def jacobian(x: np.ndarray) -> np.ndarray:
        jac = np.zeros((n * n_frames, x.size))
        dv = x[-1]
        h_dv = 1e-7 * max(dv, 1.0)
        if dv + h_dv > dv_hi:
            h_dv = -h_dv
        for i in range(n):
            b = blocks[i]
            rows = slice(i * n_frames, (i + 1) * n_frames)
            _, tf, frac = model_frames(x, i)
            f = x[b[0]]
            h = 1e-7 * max(abs(f), 1.0)
            if f + h > f_hi:
                h = -h
            jac[rows, b[0]] = sw[:, i] * frac * (tissue(f + h, dv) - tf) / h
            jac[rows, b[1]] = sw[:, i] * (ctx.blood_frames - tf)
            if b.size == 3:
                jac[rows, b[2]] = sw[:, i] * (rv_frames - tf)
            jac[rows, -1] = sw[:, i] * frac * (tissue(f, dv + h_dv) - tf) / h_dv
        return jac

    res = optimize.least_squares(residuals, x0_a, jac=jacobian, bounds=(lo_a, hi_a), method="trf", x_scale=scale_a,
                                 ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=300, tr_solver=_JOINT_TR_SOLVER)
    x = res.x
    span = hi_a - lo_a
    at_bound = (x <= lo_a + 1e-6 * span) | (x >= hi_a - 1e-6 * span) | (res.active_mask != 0)
    dv = float(x[-1])
    jac = jacobian(x)
    resid = residuals(x).reshape(n, n_frames)
    row_scale = np.empty(n * n_frames)
    for i in range(n):
        dof = n_frames - blocks[i].size - 1.0 / n
        variance = float(np.sum(resid[i] ** 2)) / max(dof, 1e-9)
        row_scale[i * n_frames:(i + 1) * n_frames] = 1.0 / math.sqrt(variance) if variance > 0 else 1.0
    free = ~at_bound
    se = np.full(x.size, math.nan)
    if free.any():
        jf = (jac * row_scale[:, None])[:, free]
        try:
            cov = np.linalg.pinv(jf.T @ jf)
            se[free] = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        except np.linalg.LinAlgError:
            pass
    constants = model.constants()
    fits: list[RegionFit] = []
    names = ("mbf_ml_per_min_per_g", "blood_fraction", "rv_fraction")
    for i in range(n):
        b = blocks[i]
        flags = [f"at_bound:{names[k]}" for k, j in enumerate(b) if at_bound[j]]
        if res.status <= 0:
            flags.insert(0, "fit_failed")
        f = float(x[b[0]])
        f_se = float(se[b[0]])
        if not np.isfinite(f_se) or (f > 0 and f_se > se_limit * f):
            flags.append("large_se")
        if x[b[1]] >= 0.8:
            flags.append("blood_fraction_high")
        k1 = float(model.k1(f))
        parameters = {names[k]: float(x[j]) for k, j in enumerate(b)}
        parameters.update({"k1_ml_per_min_per_g": k1, "k2_per_min": k1 / dv, "distribution_volume_ml_per_g": dv})
        errors = {names[k]: float(se[j]) for k, j in enumerate(b)}
        errors["distribution_volume_ml_per_g"] = float(se[-1])
        cost = float(np.sum(w_mean1[:, i] * (model_frames(x, i)[0] - y[:, i]) ** 2))
        fits.append(RegionFit(labels[i], model.name, f, f_se, parameters, errors, tuple(flags), cost, n_frames, constants))
    return fits, dv, float(se[-1]), bool(at_bound[-1])


def fit_tacs(model: KineticModel, schedule: FrameSchedule, blood_bq_per_ml: np.ndarray | None,
             tissue_bq_per_ml: np.ndarray, *, rv_bq_per_ml: np.ndarray | None = None,
             use_rv: Sequence[bool] | np.ndarray | bool = False, decay_corrected: bool = True,
             input_function: SampledInput | None = None, weights: WeightsArg = "counts",
             distribution_volume_ml_per_g: float | None = None, starts: Sequence[float] = (),
             regions: Sequence[str] | None = None, dt_s: float = 0.25,
             input_interpolation: InputInterpolation = "smooth",
             se_limit: float = 0.25) -> list[RegionFit]:
    """Fit the model to each TAC against one input.

    Parameters
    ----------
    model : KineticModel
    schedule : FrameSchedule
        Frames of the series; only those inside ``model.fit_end_s`` are used.
    blood_bq_per_ml : array [frames] or None
        LV-cavity TAC (input and spill-over), Bq/mL. None only with ``input_function``.
    tissue_bq_per_ml : array [frames, n] (or [frames])
        Myocardial TACs, Bq/mL.
    rv_bq_per_ml : array [frames], optional
        RV-cavity TAC for the septal spill-over term.
    use_rv : bool or [n] bools
        Which TACs get the RV term (needs ``rv_bq_per_ml``).
    decay_corrected : bool
        Whether the frame values (all curves) are decay-corrected (see the module docstring).
    input_function : SampledInput, optional
        A known dense input (decay-corrected) replacing the interpolated LV frames.
    weights : "counts" | "counts_data" | "duration" | "none" | array [frames] or [frames, n]
        See the module docstring ("counts": count weights of the starting model curve).
    distribution_volume_ml_per_g : float, optional
        Rb-82 only: fixed DV, ``k2 = K1(F) / DV`` (global-DV form); None fits k2.
    starts : sequence of float
        Extra MBF starting values (mL/min/g), besides the basis-function start; e.g. the
        reference's ``(0.8, 2.5)``.
    regions : sequence of str, optional
        Labels of the TACs (default "1", "2", ...).
    dt_s : float
        Fine-grid step in seconds.
    input_interpolation : "smooth" | "mean_preserving" | "linear"
        How frame values of the input become a continuous curve (:func:`input_on_grid`).
    se_limit : float
        Relative MBF standard error above which ``large_se`` is flagged (0.25).

    Returns
    -------
    list of RegionFit, one per TAC.
    """
    prepared = _prepare(model, schedule, blood_bq_per_ml, tissue_bq_per_ml, rv_bq_per_ml, decay_corrected,
                        input_function, weights, dt_s, input_interpolation)
    n = prepared.tissue.shape[1]
    rv_flags = np.broadcast_to(np.asarray(use_rv, dtype=bool), (n,))
    if rv_flags.any() and prepared.ctx.rv_frames is None:
        raise ValueError("use_rv needs rv_bq_per_ml")
    labels = list(regions) if regions is not None else [str(i + 1) for i in range(n)]
    if len(labels) != n:
        raise ValueError("one region label per TAC")
    specs = {flag: model._spec(bool(flag), distribution_volume_ml_per_g) for flag in (False, True)}
    ctx = prepared.ctx
    family = specs[False].family(ctx)
    basis_frames = np.stack([ctx.operator @ family.basis(float(g)) for g in family.grid])
    beta_bounds = model.blood_fraction_bounds
    g, alpha, beta, _ = _basis_solve(basis_frames, ctx.blood_frames, prepared.tissue, prepared.weights,
                                     beta_bounds, grid=family.grid, log_grid=family.log_grid, offset=family.offset)
    bf_start = family.to_start(g, alpha, beta)  # [n, n_kin + 1]
    fits: list[RegionFit] = []
    for i in range(n):
        spec = specs[bool(rv_flags[i])]
        start0 = bf_start[i]
        if rv_flags[i]:
            start0 = np.concatenate([start0, [0.05]])
        start_list = [start0]
        for f0 in starts:
            extra = np.concatenate([spec.default_start(float(f0)), start0[spec.n_kin:]])
            start_list.append(extra)
        w = prepared.weights[:, i]
        if prepared.model_weights:  # count weights of the start model's curve, not of the noisy data
            x0 = np.clip(start0, spec.lower, spec.upper)
            predicted = _operational(spec, x0, ctx.operator @ spec.tissue(x0[:spec.n_kin], ctx), ctx)
            w = _count_weights(prepared.exposure, predicted)
        fits.append(_fit_one(spec, ctx, prepared.tissue[:, i], w, start_list, labels[i], model, se_limit))
    return fits


def _region_tacs(segment_tacs: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = list(TERRITORY_SEGMENTS) + ["global"]
    columns = [segment_tacs[:, [s - 1 for s in TERRITORY_SEGMENTS[t]]].mean(axis=1) for t in TERRITORY_SEGMENTS]
    columns.append(segment_tacs.mean(axis=1))
    return names, np.stack(columns, axis=1)


def fit_segments(model: KineticModel, schedule: FrameSchedule, blood_bq_per_ml: np.ndarray | None,
                 segment_tacs_bq_per_ml: np.ndarray, *, rv_bq_per_ml: np.ndarray | None = None,
                 rv_spillover: bool = False, decay_corrected: bool = True,
                 input_function: SampledInput | None = None, weights: WeightsArg = "counts",
                 starts: Sequence[float] = (), fit_regional_tacs: bool = True, dt_s: float = 0.25,
                 input_interpolation: InputInterpolation = "smooth",
                 se_limit: float = 0.25) -> SegmentFit:
    """Fit the 17 AHA segment TACs of one series against one input (reference 8.2).

    Parameters
    ----------
    segment_tacs_bq_per_ml : array [frames, 17]
        Segment TACs (mean over each segment's polar samples), AHA order 1..17, Bq/mL.
    rv_spillover : bool
        Add the RV term to the septal segments (2, 3, 8, 9, 14); needs ``rv_bq_per_ml``.
    fit_regional_tacs : bool
        Also fit the territory (LAD, LCx, RCA) and global mean TACs (``regional_fits``).
    Other parameters as :func:`fit_tacs` (``starts`` applies to the per-region fits; the joint
    study-DV fit starts from the basis-function solution).

    Notes
    -----
    :class:`Rb82Lortie`, one DV per study: ``distribution_volume="study"`` (default) fits the 17
    segments jointly with a shared DV; ``"global_tac"`` fits F, k2 and the blood fraction to the
    global (mean of 17) TAC, sets ``DV = K1(F) / k2`` (kept in ``regional_fits["global_stage1"]``)
    and fits every segment with ``k2 = K1(F) / DV``. The territory and global TACs are then
    fitted with that DV. If no usable DV results (at a bound, or the fit failed) the regions are
    fitted with k2 free and flagged ``global_dv_failed``.

    Returns
    -------
    SegmentFit
    """
    tacs = np.asarray(segment_tacs_bq_per_ml, dtype=float)
    if tacs.ndim != 2 or tacs.shape[1] != N_SEGMENTS:
        raise ValueError(f"segment TACs must be [frames, {N_SEGMENTS}], got {tacs.shape}")
    if rv_spillover and rv_bq_per_ml is None:
        raise ValueError("rv_spillover needs the RV TAC")
    if input_function is None and blood_bq_per_ml is not None:
        # reconstruct the input once for all the fits below (stage 1, segments, regions)
        window = schedule.within(model.fit_end_s)
        fit_schedule = schedule.subset(window)
        t = fine_grid(fit_schedule.end_s[-1], dt_s)
        values = np.asarray(blood_bq_per_ml, dtype=float).reshape(-1)[window]
        if not decay_corrected:
            values = values / fit_schedule.mean_decay_factor(model.decay_constant_per_s)
        input_function = SampledInput(t, input_on_grid(fit_schedule, values, t, decay_constant_per_s=model.decay_constant_per_s,
                                                       method=input_interpolation))
    common: dict[str, Any] = dict(decay_corrected=decay_corrected, input_function=input_function, weights=weights,
                                  starts=starts, dt_s=dt_s, input_interpolation=input_interpolation, se_limit=se_limit)
    study_flags: list[str] = []
    dv: float | None = None
    region_names, region_tacs = _region_tacs(tacs)
    stage1: RegionFit | None = None
    septal = np.zeros(N_SEGMENTS, dtype=bool)
    if rv_spillover:
        septal[[s - 1 for s in SEPTAL_SEGMENTS]] = True
    labels = [str(s) for s in range(1, N_SEGMENTS + 1)]
    segments: list[RegionFit] | None = None
    dv_se: float | None = None
    if isinstance(model, Rb82Lortie) and model.distribution_volume == "study":
        prepared = _prepare(model, schedule, blood_bq_per_ml, tacs, rv_bq_per_ml, decay_corrected, input_function,
                            weights, dt_s, input_interpolation)
        joint, dv_value, dv_se, dv_at_bound = _fit_study_dv(model, prepared, septal, labels, se_limit)
        if dv_at_bound or not np.isfinite(dv_value):
            study_flags.append("global_dv_failed")
        else:
            dv, segments = dv_value, joint
    elif isinstance(model, Rb82Lortie) and model.distribution_volume == "global_tac":
        stage1 = fit_tacs(model, schedule, blood_bq_per_ml, region_tacs[:, -1], regions=["global"], **common)[0]
        dv_value = stage1.parameters.get("distribution_volume_ml_per_g", math.nan)
        usable = ("fit_failed" not in stage1.flags and not any(f == "at_bound:k2_per_min" for f in stage1.flags)
                  and np.isfinite(dv_value) and dv_value > 0)
        if usable:
            dv = float(dv_value)
        else:
            study_flags.append("global_dv_failed")
    if segments is None:
        segments = fit_tacs(model, schedule, blood_bq_per_ml, tacs, rv_bq_per_ml=rv_bq_per_ml, use_rv=septal,
                            distribution_volume_ml_per_g=dv, regions=labels, **common)
    if study_flags:
        segments = [_with_flags(s, study_flags) for s in segments]
    regional: dict[str, RegionFit] = {}
    if fit_regional_tacs:
        for fit in fit_tacs(model, schedule, blood_bq_per_ml, region_tacs, distribution_volume_ml_per_g=dv,
                            regions=region_names, **common):
            regional[fit.region] = fit
    if stage1 is not None:
        regional["global_stage1"] = stage1
    mbf = np.array([s.mbf_ml_per_min_per_g for s in segments])
    territory = {t: float(np.mean(mbf[[s - 1 for s in segs]])) for t, segs in TERRITORY_SEGMENTS.items()}
    constants = model.constants()
    if dv is not None:
        constants["distribution_volume_ml_per_g"] = dv
        if dv_se is not None:
            constants["distribution_volume_se_ml_per_g"] = dv_se
    return SegmentFit(model.name, constants, tuple(segments), territory, float(np.mean(mbf)), regional, dv,
                      tuple(study_flags))


def _with_flags(fit: RegionFit, extra: Sequence[str]) -> RegionFit:
    return RegionFit(fit.region, fit.model, fit.mbf_ml_per_min_per_g, fit.mbf_se_ml_per_min_per_g, fit.parameters,
                     fit.standard_errors, tuple(fit.flags) + tuple(extra), fit.cost, fit.n_frames, fit.constants)


def rate_pressure_product(heart_rate_per_min: float, systolic_pressure_mmhg: float) -> float:
    """RPP = heart rate (1/min) x systolic blood pressure (mmHg), in mmHg/min."""
    if not (heart_rate_per_min > 0 and systolic_pressure_mmhg > 0):
        raise ValueError("heart rate and systolic pressure must be > 0")
    return float(heart_rate_per_min) * float(systolic_pressure_mmhg)


def flow_reserve(rest: SegmentFit, stress: SegmentFit, *, impaired_below: float = 2.0,
                 rest_heart_rate_per_min: float | None = None, rest_systolic_pressure_mmhg: float | None = None,
                 rpp_reference_mmhg_per_min: float = 10_000.0) -> FlowReserve:
    """MFR = stress / rest per segment, territory (ratio of territory means) and globally.

    Parameters
    ----------
    rest, stress : SegmentFit
        The two states' fits (same model expected; a mismatch is flagged ``models_differ``).
    impaired_below : float
        MFR threshold of the impaired flags (2.0, the seed's label). A flag is decided on the MFR as
        it is reported, rounded to :data:`MFR_REPORTED_DECIMALS` decimals, so that a reader never sees
        "2.00" marked impaired.
    rest_heart_rate_per_min, rest_systolic_pressure_mmhg : float, optional
        Rest haemodynamics; when both are given the rest MBF is also reported corrected for the
        rate-pressure product, ``MBF_rest,corr = MBF_rest * RPP_ref / RPP_rest``, with
        ``MFR_corr = MBF_stress / MBF_rest,corr`` (reference 3.7; reported next to, never
        instead of, the plain values).
    rpp_reference_mmhg_per_min : float
        RPP_ref (10,000 mmHg/min, a protocol constant [L]).

    Returns
    -------
    FlowReserve
    """
    r = rest.segment_mbf_ml_per_min_per_g
    s = stress.segment_mbf_ml_per_min_per_g
    with np.errstate(divide="ignore", invalid="ignore"):
        mfr = s / r
        mfr_se = np.abs(mfr) * np.sqrt((stress.segment_mbf_se_ml_per_min_per_g / s) ** 2
                                       + (rest.segment_mbf_se_ml_per_min_per_g / r) ** 2)
    territory = {t: stress.territory_mbf_ml_per_min_per_g[t] / rest.territory_mbf_ml_per_min_per_g[t]
                 for t in TERRITORY_SEGMENTS}
    global_mfr = stress.global_mbf_ml_per_min_per_g / rest.global_mbf_ml_per_min_per_g
    flags: list[str] = []
    if rest.model != stress.model:
        flags.append("models_differ")
    rpp = None
    rest_corr = mfr_corr = None
    global_corr = None
    if rest_heart_rate_per_min is not None and rest_systolic_pressure_mmhg is not None:
        rpp = rate_pressure_product(rest_heart_rate_per_min, rest_systolic_pressure_mmhg)
        rest_corr = r * rpp_reference_mmhg_per_min / rpp
        with np.errstate(divide="ignore", invalid="ignore"):
            mfr_corr = s / rest_corr
        global_corr = float(stress.global_mbf_ml_per_min_per_g
                            / (rest.global_mbf_ml_per_min_per_g * rpp_reference_mmhg_per_min / rpp))
    constants = {"impaired_below": float(impaired_below), "rpp_reference_mmhg_per_min": float(rpp_reference_mmhg_per_min),
                 **{f"rest.{k}": v for k, v in rest.constants.items()},
                 **{f"stress.{k}": v for k, v in stress.constants.items()}}
    def below(value: np.ndarray | float) -> np.ndarray:
        return np.round(value, MFR_REPORTED_DECIMALS) < impaired_below

    impaired = below(mfr)
    return FlowReserve(rest.model, stress.model, constants, float(impaired_below), mfr, mfr_se, impaired,
                       territory, {t: bool(below(v)) for t, v in territory.items()}, float(global_mfr),
                       float(np.mean(mfr)), bool(below(global_mfr)), bool(np.any(impaired)), rpp,
                       float(rpp_reference_mmhg_per_min), rest_corr, mfr_corr, global_corr, tuple(flags))


def basis_function_map(model: KineticModel, schedule: FrameSchedule, blood_bq_per_ml: np.ndarray | None,
                       tissue_bq_per_ml: np.ndarray, *, decay_corrected: bool = True,
                       input_function: SampledInput | None = None, weights: np.ndarray | None = None,
                       distribution_volume_ml_per_g: float | None = None, dt_s: float = 0.25,
                       input_interpolation: InputInterpolation = "smooth",
                       refine: bool = True, chunk: int = 16384) -> BasisFunctionMap:
    """Voxel-wise MBF by basis functions (reference 3.3 last bullet, 8.2), vectorised over voxels.

    Parameters
    ----------
    tissue_bq_per_ml : array [frames, n_voxels]
        Voxel TACs (give only the voxels of the myocardial mask), Bq/mL.
    weights : array [frames], optional
        Frame weights shared by all voxels; default: the "counts" weights of the mean TAC
        of the given voxels (``duration * D_i / max(mean C_i, 5 % of its max)``).
    distribution_volume_ml_per_g : float, optional
        Rb-82: use the F-family with ``k2 = K1(F) / DV`` instead of the k2 grid.
    refine : bool
        Parabolic sub-grid step between neighbouring bases (default on).
    Other parameters as :func:`fit_tacs`.

    Returns
    -------
    BasisFunctionMap with arrays [n_voxels].
    """
    y_all = np.asarray(tissue_bq_per_ml, dtype=float)
    if y_all.ndim == 1:
        y_all = y_all[:, None]
    mean_tac = np.nanmean(y_all, axis=1)
    prepared = _prepare(model, schedule, blood_bq_per_ml, mean_tac, None, decay_corrected, input_function,
                        "counts" if weights is None else np.asarray(weights, dtype=float), dt_s, input_interpolation)
    ctx = prepared.ctx
    w = prepared.weights[:, 0]
    mask = prepared.mask
    lam = model.decay_constant_per_s
    y = y_all[mask]
    if not decay_corrected:
        y = y / prepared.schedule.mean_decay_factor(lam)[:, None]
    finite = np.all(np.isfinite(y), axis=0)
    y = np.where(finite[None, :], y, 0.0)
    spec = model._spec(False, distribution_volume_ml_per_g)
    family = spec.family(ctx)
    basis_frames = np.stack([ctx.operator @ family.basis(float(g)) for g in family.grid])
    g, alpha, beta, _ = _basis_solve(basis_frames, ctx.blood_frames, y, w, model.blood_fraction_bounds,
                                     refine=refine, grid=family.grid, log_grid=family.log_grid, chunk=chunk,
                                     offset=family.offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mbf = np.asarray(family.to_mbf(g, alpha, beta), dtype=float)
    valid = finite & (alpha > 0) & np.isfinite(mbf)
    mbf = np.where(valid, mbf, 0.0)
    return BasisFunctionMap(model.name, model.constants(), mbf, beta, g, valid)
