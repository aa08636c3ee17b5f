"""Time-activity tier of the PET MBF phantoms: inputs, frames, segment TACs, noise, exact truth.

Reference note ``pet_mbf.md`` sections 5.1 (tier A), 5.2 (input functions), 5.3 (myocardial
TACs), 5.5 (noise), 5.6 (frame schedules) and 5.8 (the simulation the acceptance figures come
from). Research use only.

* **Tier A is model-exact**: the segment TACs come from the same operational equation as the
  fitter, :func:`node.quant.kinetics.model_curve`, evaluated on a finer grid (0.1 s) with the
  analytic input sampled there. Truth is exact; only noise (and the fitter's reconstruction of
  the input from frame values) limits agreement.
* **Input (LV blood, decay-corrected, Bq/mL)**, :class:`InputShape`::

      C_LV(t) = A [ g(x; alpha, beta) + r g(x - t_r; alpha, 2 beta) + p (1 - exp(-x / (alpha beta))) exp(-w x) ]

  with ``x = t - t_d`` (0 before the bolus arrives) and ``g(x; alpha, beta) =
  (x / (alpha beta))^alpha exp(alpha - x / beta)`` the gamma variate normalised to a peak of 1
  at ``x = alpha beta``; ``r`` a recirculation pass ``t_r`` s later and twice as broad; ``p`` the
  late plateau (fraction of the peak) rising over the bolus and washing out at ``w`` per minute.
  Per-tracer ranges in :data:`INPUT_RANGES` (Rb-82: t_d 10-20 s, alpha 2-4, beta 4-8 s,
  plateau 0.03-0.15; N-13 a higher plateau; O-15 a narrow bolus) [reference 5.2, shapes L].
  The RV curve peaks 2-6 s earlier, narrower (beta x 0.7) and 20 % higher, with the same
  absolute plateau.
* **Frames** (:data:`FRAME_SCHEDULES`): Rb-82 12x10, 2x30, 1x60, 1x120 s (default), 9x10,
  3x30, 1x60, 1x120 s ("short"), 12x5, 6x10, 2x30, 1x60, 1x120 s ("fast"); N-13 12x10, 6x30,
  4x60 s; O-15 14x5, 3x10, 3x20, 4x30 s.
* **Segments** (:func:`segment_parameters`): Rb-82 ``k2 = K1(F) / DV`` with one DV per study
  (U(2.8, 4.0) mL/g, spanning the reference simulation's rest 0.59/0.15 and stress 1.13/0.40);
  blood fraction U(0.25, 0.45) per segment (reference simulation 0.35); N-13 DeGrado k2
  U(0.05, 0.3) /min [L]; O-15 PTF U(0.6, 0.8), Va U(0.2, 0.4), ptMBF = MBF / PTF. Optional
  septal RV spill-over.
* **Noise** (reference 5.5, 5.8): Gaussian, ``var_i ~ C_i / (duration_i D_i)`` for
  decay-corrected values (``D_i`` the frame's mean decay factor), scaled per TAC so that its
  last frame has relative SD ``noise_level`` (default 0.05, "clinical"); the blood and RV TACs
  get ``blood_noise_ratio`` (0.5) of that, as in the note's simulation (5.8). With this model
  the 10 s uptake frames of Rb-82 come out at 4-10 % relative SD, not the 10-30 % that 5.5
  also mentions: decay correction amplifies the late (120 s, ~5 half-lives) frame's noise far
  more than the early frames'. The acceptance figures of 5.8/8.3 come from this model.
  Frame values may come out decay-corrected (default) or not.

Arrays are frames first (``[frames, 17]`` for segments, AHA order 1..17). Every random draw
comes from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from node.imaging.volume import FrameSchedule
from node.quant.kinetics import (
    NH3UCLA,
    SEPTAL_SEGMENTS,
    H2OIida,
    KineticModel,
    NH3DeGrado,
    Rb82Lortie,
    SampledInput,
    fine_grid,
    frame_operator,
    model_curve,
)
from node.quant.segments import N_SEGMENTS

__all__ = [
    "FRAME_SCHEDULES",
    "INPUT_RANGES",
    "MBF_RANGES",
    "InputShape",
    "TacStudy",
    "TacTruth",
    "frame_schedule",
    "sample_input_shape",
    "segment_parameters",
    "noisy_frames",
    "make_tac_study",
    "make_rest_stress",
]

#: Frame schedules per tracer and variant, as (count, duration in s) (reference 5.6).
FRAME_SCHEDULES: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {
    "Rb-82": {
        "default": ((12, 10.0), (2, 30.0), (1, 60.0), (1, 120.0)),
        "short": ((9, 10.0), (3, 30.0), (1, 60.0), (1, 120.0)),
        "fast": ((12, 5.0), (6, 10.0), (2, 30.0), (1, 60.0), (1, 120.0)),
    },
    "N-13 ammonia": {"default": ((12, 10.0), (6, 30.0), (4, 60.0))},
    "O-15 water": {"default": ((14, 5.0), (3, 10.0), (3, 20.0), (4, 30.0))},
}

#: Uniform ranges of the input-function parameters per tracer (reference 5.2; shapes L).
INPUT_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "Rb-82": {"delay_s": (10.0, 20.0), "alpha": (2.0, 4.0), "beta_s": (4.0, 8.0),
              "recirculation_fraction": (0.05, 0.15), "recirculation_delay_s": (15.0, 25.0),
              "plateau_fraction": (0.03, 0.15), "washout_per_min": (0.0, 0.1)},
    "N-13 ammonia": {"delay_s": (10.0, 20.0), "alpha": (2.0, 4.0), "beta_s": (4.0, 8.0),
                     "recirculation_fraction": (0.05, 0.15), "recirculation_delay_s": (15.0, 25.0),
                     "plateau_fraction": (0.08, 0.20), "washout_per_min": (0.0, 0.05)},
    "O-15 water": {"delay_s": (8.0, 15.0), "alpha": (2.0, 3.0), "beta_s": (2.0, 4.0),
                   "recirculation_fraction": (0.05, 0.15), "recirculation_delay_s": (10.0, 20.0),
                   "plateau_fraction": (0.05, 0.15), "washout_per_min": (0.0, 0.1)},
}

#: Segment MBF ranges by state in mL/min/g (reference 5.3).
MBF_RANGES: dict[str, tuple[float, float]] = {"rest": (0.6, 1.4), "stress": (1.5, 4.5)}

_PEAK_BQ_PER_ML = {"Rb-82": 2.0e5, "N-13 ammonia": 6.0e4, "O-15 water": 1.0e5}


def _tracer_key(model_or_tracer: KineticModel | str) -> str:
    name = model_or_tracer if isinstance(model_or_tracer, str) else model_or_tracer.tracer.name
    for key in FRAME_SCHEDULES:
        if name.lower().startswith(key.lower()[:4]):
            return key
    raise ValueError(f"unknown tracer {name!r}")


def frame_schedule(tracer: KineticModel | str, variant: str = "default") -> FrameSchedule:
    """A clinical frame schedule (:data:`FRAME_SCHEDULES`) for a tracer or a model's tracer."""
    return FrameSchedule.from_durations(FRAME_SCHEDULES[_tracer_key(tracer)][variant])


def _gamma(x: np.ndarray, alpha: float, beta_s: float) -> np.ndarray:
    """Gamma variate with peak 1 at ``x = alpha beta`` (0 for x <= 0)."""
    xp = np.clip(x, 0.0, None) / (alpha * beta_s)
    with np.errstate(divide="ignore"):
        out = np.exp(alpha * (np.log(np.where(xp > 0, xp, 1.0)) + 1.0 - xp))
    return np.where(xp > 0, out, 0.0)


@dataclass(frozen=True)
class InputShape:
    """An input (blood) curve, decay-corrected, in Bq/mL; see the module docstring for the formula."""

    delay_s: float
    alpha: float
    beta_s: float
    peak_bq_per_ml: float
    recirculation_fraction: float
    recirculation_delay_s: float
    plateau_fraction: float
    washout_per_min: float

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        x = np.asarray(t_s, dtype=float) - self.delay_s
        bolus = _gamma(x, self.alpha, self.beta_s)
        recirculation = self.recirculation_fraction * _gamma(x - self.recirculation_delay_s, self.alpha, 2.0 * self.beta_s)
        xp = np.clip(x, 0.0, None)
        plateau = self.plateau_fraction * (-np.expm1(-xp / (self.alpha * self.beta_s))) * np.exp(-self.washout_per_min * xp / 60.0)
        return self.peak_bq_per_ml * (bolus + recirculation + plateau)

    @property
    def peak_time_s(self) -> float:
        return self.delay_s + self.alpha * self.beta_s

    def rv(self, lead_s: float, narrowing: float = 0.7, peak_ratio: float = 1.2) -> InputShape:
        """The RV curve: ``lead_s`` earlier, ``beta x narrowing``, ``peak x peak_ratio``, same plateau level."""
        return replace(self, delay_s=self.delay_s - lead_s, beta_s=self.beta_s * narrowing,
                       peak_bq_per_ml=self.peak_bq_per_ml * peak_ratio,
                       recirculation_fraction=self.recirculation_fraction / peak_ratio,
                       plateau_fraction=self.plateau_fraction / peak_ratio)


def sample_input_shape(tracer: KineticModel | str, rng: np.random.Generator, **fixed: float) -> InputShape:
    """Draw an input shape from :data:`INPUT_RANGES` (keyword arguments fix parameters)."""
    key = _tracer_key(tracer)
    values = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in INPUT_RANGES[key].items()}
    values["peak_bq_per_ml"] = _PEAK_BQ_PER_ML[key]
    values.update({k: float(v) for k, v in fixed.items()})
    return InputShape(**values)


def segment_parameters(model: KineticModel, mbf_ml_per_min_per_g: np.ndarray, rng: np.random.Generator, *,
                       blood_fraction: np.ndarray | float | None = None,
                       distribution_volume_ml_per_g: float | None = None,
                       k2_per_min: np.ndarray | float | None = None,
                       perfusable_tissue_fraction: np.ndarray | float | None = None,
                       rv_fraction: float = 0.0) -> tuple[dict[str, np.ndarray], float | None]:
    """True model parameters of the segments for given MBF (module docstring for the ranges).

    Returns
    -------
    (parameters, distribution volume)
        ``parameters`` maps :func:`node.quant.kinetics.model_curve` names to arrays [n];
        ``rv_fraction`` is non-zero on the septal segments only (when n = 17). The DV
        (mL/g) is the study's Rb-82 distribution volume, else None.
    """
    mbf = np.asarray(mbf_ml_per_min_per_g, dtype=float)
    n = mbf.size
    out: dict[str, np.ndarray] = {}
    dv: float | None = None
    if isinstance(model, H2OIida):
        ptf = rng.uniform(0.6, 0.8, n) if perfusable_tissue_fraction is None else np.broadcast_to(perfusable_tissue_fraction, (n,)).astype(float)
        fb = rng.uniform(0.2, 0.4, n) if blood_fraction is None else np.broadcast_to(blood_fraction, (n,)).astype(float)
        out["ptmbf_ml_per_min_per_ml"] = mbf / ptf
        out["perfusable_tissue_fraction"] = ptf
    else:
        fb = rng.uniform(0.25, 0.45, n) if blood_fraction is None else np.broadcast_to(blood_fraction, (n,)).astype(float)
        out["mbf_ml_per_min_per_g"] = mbf.copy()
        if isinstance(model, Rb82Lortie):
            if k2_per_min is None:
                dv = float(rng.uniform(2.8, 4.0)) if distribution_volume_ml_per_g is None else float(distribution_volume_ml_per_g)
                out["k2_per_min"] = model.k1(mbf) / dv
            else:
                out["k2_per_min"] = np.broadcast_to(k2_per_min, (n,)).astype(float)
        elif isinstance(model, NH3DeGrado):
            out["k2_per_min"] = rng.uniform(0.05, 0.3, n) if k2_per_min is None else np.broadcast_to(k2_per_min, (n,)).astype(float)
        elif not isinstance(model, NH3UCLA):
            raise ValueError(f"no phantom parameters for model {model.name}")
    out["blood_fraction"] = fb
    rv = np.zeros(n)
    if rv_fraction and n == N_SEGMENTS:
        rv[[s - 1 for s in SEPTAL_SEGMENTS]] = rv_fraction
    out["rv_fraction"] = rv
    return out, dv


def noisy_frames(values_bq_per_ml: np.ndarray, schedule: FrameSchedule, decay_constant_per_s: float,
                 noise_level: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian count noise to decay-corrected frame values ``[frames]`` or ``[frames, n]``.

    ``sd_i = s sqrt(C_i / (duration_i D_i))`` with ``s`` set per column so that the last frame
    has relative SD ``noise_level`` (reference 5.5).
    """
    c = np.asarray(values_bq_per_ml, dtype=float)
    if noise_level <= 0:
        return c.copy()
    col = c if c.ndim == 2 else c[:, None]
    exposure = (schedule.duration_s * schedule.mean_decay_factor(decay_constant_per_s))[:, None]
    shape = np.sqrt(np.clip(col, 0.0, None) / exposure)
    scale = noise_level * col[-1] / np.where(shape[-1] > 0, shape[-1], 1.0)
    noisy = col + rng.standard_normal(col.shape) * shape * scale
    return noisy if c.ndim == 2 else noisy[:, 0]


@dataclass(frozen=True, eq=False)
class TacTruth:
    """Exact truth of a :class:`TacStudy` (arrays [17], AHA order)."""

    model: str
    constants: dict[str, float | str]
    mbf_ml_per_min_per_g: np.ndarray
    parameters: dict[str, np.ndarray]
    distribution_volume_ml_per_g: float | None
    input_shape: InputShape
    rv_shape: InputShape
    noise_level: float
    blood_noise_level: float


@dataclass(frozen=True, eq=False)
class TacStudy:
    """One dynamic series at the TAC level: frame values with noise, the noise-free ones, truth.

    ``blood_input`` / ``rv_input`` are the exact curves (0.1 s samples, decay-corrected) for
    tests that give the fitter the true input.
    """

    tracer: str
    state: str
    schedule: FrameSchedule
    decay_corrected: bool
    blood_bq_per_ml: np.ndarray
    rv_bq_per_ml: np.ndarray
    segment_tacs_bq_per_ml: np.ndarray
    noise_free_blood_bq_per_ml: np.ndarray
    noise_free_rv_bq_per_ml: np.ndarray
    noise_free_segment_tacs_bq_per_ml: np.ndarray
    blood_input: SampledInput
    rv_input: SampledInput
    truth: TacTruth


def make_tac_study(model: KineticModel, mbf_ml_per_min_per_g: np.ndarray, rng: np.random.Generator, *,
                   schedule: FrameSchedule | None = None, schedule_variant: str = "default",
                   input_shape: InputShape | None = None, rv_lead_s: float | None = None,
                   noise_level: float = 0.05, blood_noise_ratio: float = 0.5, decay_corrected: bool = True,
                   state: str = "", fine_dt_s: float = 0.1, blood_fraction: np.ndarray | float | None = None,
                   distribution_volume_ml_per_g: float | None = None, k2_per_min: np.ndarray | float | None = None,
                   perfusable_tissue_fraction: np.ndarray | float | None = None, rv_fraction: float = 0.0) -> TacStudy:
    """A TAC-level study: 17 segment TACs, LV and RV TACs, noise, exact truth.

    Parameters
    ----------
    model : KineticModel
        The generating model (its constants go into the truth).
    mbf_ml_per_min_per_g : array [17]
        True segment MBF (mL/min/g); for O-15 water rMBF = ptMBF x PTF.
    rng : numpy.random.Generator
        Source of every random draw (input shape, parameters, noise).
    schedule, schedule_variant
        Frames (default: the tracer's schedule of that variant).
    input_shape : InputShape, optional
        Fixed input; default drawn from :data:`INPUT_RANGES`.
    rv_lead_s : float, optional
        RV peak lead over the LV (default U(2, 6) s).
    noise_level : float
        Relative SD on the last frame of each segment TAC (0 = noise-free).
    blood_noise_ratio : float
        The LV and RV TACs' relative noise as a fraction of ``noise_level``.
    decay_corrected : bool
        Frame values decay-corrected (scanner convention) or not.
    Remaining keywords fix the segment parameters (see :func:`segment_parameters`).
    """
    mbf = np.asarray(mbf_ml_per_min_per_g, dtype=float).reshape(-1)
    if mbf.size != N_SEGMENTS:
        raise ValueError(f"give {N_SEGMENTS} segment MBF values")
    schedule = schedule if schedule is not None else frame_schedule(model, schedule_variant)
    shape = input_shape if input_shape is not None else sample_input_shape(model, rng)
    lead = float(rng.uniform(2.0, 6.0)) if rv_lead_s is None else float(rv_lead_s)
    rv_shape = shape.rv(lead)
    params, dv = segment_parameters(model, mbf, rng, blood_fraction=blood_fraction,
                                    distribution_volume_ml_per_g=distribution_volume_ml_per_g, k2_per_min=k2_per_min,
                                    perfusable_tissue_fraction=perfusable_tissue_fraction, rv_fraction=rv_fraction)
    t = np.arange(int(math.ceil(schedule.end_s[-1] / fine_dt_s)) + 2) * fine_dt_s
    blood_input = SampledInput(t, shape(t))
    rv_input = SampledInput(t, rv_shape(t))
    segments = model_curve(model, schedule, params, blood_input=blood_input, rv_input=rv_input, dt_s=fine_dt_s)
    lam = model.decay_constant_per_s
    grid = fine_grid(schedule.end_s[-1], fine_dt_s)
    operator = frame_operator(schedule, grid, lam)  # the same frame means model_curve takes
    blood = operator @ blood_input.on_grid(grid)
    rv = operator @ rv_input.on_grid(grid)
    noisy_segments = noisy_frames(segments, schedule, lam, noise_level, rng)
    blood_noise = noise_level * blood_noise_ratio
    noisy_blood = noisy_frames(blood, schedule, lam, blood_noise, rng)
    noisy_rv = noisy_frames(rv, schedule, lam, blood_noise, rng)
    if not decay_corrected:
        d = schedule.mean_decay_factor(lam)
        segments, noisy_segments = segments * d[:, None], noisy_segments * d[:, None]
        blood, noisy_blood, rv, noisy_rv = blood * d, noisy_blood * d, rv * d, noisy_rv * d
    truth = TacTruth(model.name, model.constants(), mbf.copy(), params, dv, shape, rv_shape, float(noise_level),
                     float(blood_noise))
    return TacStudy(model.tracer.name, state, schedule, decay_corrected, noisy_blood, noisy_rv, noisy_segments,
                    blood, rv, segments, blood_input, rv_input, truth)


def make_rest_stress(model: KineticModel, rng: np.random.Generator, *, rest_mbf_ml_per_min_per_g: np.ndarray | None = None,
                     mfr: np.ndarray | None = None, **kwargs: Any) -> tuple[TacStudy, TacStudy]:
    """A rest and a stress :class:`TacStudy` of one patient (separate inputs, same segment MFR truth).

    Defaults: rest MBF U(0.6, 1.4) per segment, MFR U(2.0, 3.5) per segment (stress = rest x MFR,
    capped at 4.5 mL/min/g as :data:`MBF_RANGES`). Blood fractions are shared between the states;
    input shapes, the Rb-82 distribution volume and noise are drawn per series (rest and stress
    independently) unless fixed through ``kwargs``, which go to :func:`make_tac_study`.
    """
    rest = rng.uniform(*MBF_RANGES["rest"], N_SEGMENTS) if rest_mbf_ml_per_min_per_g is None else np.asarray(rest_mbf_ml_per_min_per_g, dtype=float)
    ratio = rng.uniform(2.0, 3.5, N_SEGMENTS) if mfr is None else np.broadcast_to(mfr, (N_SEGMENTS,)).astype(float)
    stress = np.minimum(rest * ratio, MBF_RANGES["stress"][1]) if mfr is None else rest * ratio
    kwargs = dict(kwargs)
    if "blood_fraction" not in kwargs:
        kwargs["blood_fraction"] = rng.uniform(0.25, 0.45, N_SEGMENTS)
    rest_study = make_tac_study(model, rest, rng, state="rest", **kwargs)
    stress_study = make_tac_study(model, stress, rng, state="stress", **kwargs)
    return rest_study, stress_study
