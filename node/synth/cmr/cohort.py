"""Synthetic cardiac MR cohorts for the seed's LGE and clinical-event models (issue 18; research use only).

Reference note ``cmr_lge.md`` section 1 (the seed: Azoulay, Mei, Fauveau et al., 116 patients with
suspected cardiac sarcoidosis) and sections 4.1 and 5.3. Every case is an LGE phantom of
:mod:`node.synth.cmr.phantom`, measured by the node, plus a
clinical event drawn from a fixed, versioned hazard process on the *true* covariates.

Generative process (one case, seed ``s``; every random draw comes from ``SeedSequence([s, k])``
with a fixed ``k`` per step, so a case regenerates from its seed alone)
------------------------------------------------------------------------------------------------
1. **LGE class** (:data:`LGE_CLASS_PROBABILITIES`, the seed's 66/31/19 of 116): ``none`` 57 %,
   ``low`` (0, 5.7] % of LV mass 27 %, ``high`` > 5.7 % 16 %. Target burden (% of LV myocardial
   volume): ``low`` uniform on [0.3, 5.7]; ``high`` 5.7 + lognormal (median 3.5, log-SD 1.0),
   at most 40 (mean about 12, as in the seed's LGE5.7+ group).
2. **Pattern** (:data:`PATTERN_MIX`, per class), the generator's names
   (:data:`node.synth.cmr.phantom.PATTERNS`): no LGE = scar-free or the epicardial fat-pad decoy;
   with LGE = sarcoid-like septal mid-wall, epicardial (1-2 patches), multifocal with RV involvement,
   or ischaemic (subendocardial; transmural with an MVO core). A septal mid-wall pattern has RV
   free-wall involvement with probability :data:`RV_SEPTAL_PROBABILITY`. The pattern's patches are
   then scaled (:func:`fit_pattern_burden`: angular half-width first, then long-axis extent, then
   wall depth) until the analytic burden (coarse quadrature) equals the target.
   Flags: ``rv_involvement`` (RV wall enhances), ``multifocal`` (two or more patches), ``septal``
   (a patch centred within 45 deg of the mid-septum, AHA azimuth 45-135 deg).
3. **EF** (reference 5.3): ``60 - 0.45 x target LGE % + N(0, 6)``, clipped to [20, 75] %; the LV is
   :func:`node.synth.cmr.phantom.shape_for_ef` of that EF (ED semi-axes and wall as in
   :func:`~node.synth.cmr.phantom.draw_anatomy`, the short axis 0.06 mm wider per EF point below 60:
   failing ventricles dilate).
4. **Acquisition** (:func:`draw_acquisition`): ``site`` (the small, large and test cohorts; 1.5 T-like)
   or ``external`` (3 T-like higher SNR, poorer nulling and stronger coil shading, other pixel size and
   slices, another vendor's stored-value scaling).
5. **Images**: the LGE stack (mid-diastole, magnitude with Rician noise, supersampling
   :data:`LGE_SAMPLING`, times the acquisition's ``gain``).
6. **Measured by the node**: the shipped ``cmr_segmentation`` bundle on the LGE stack, then the pipeline's
   own :func:`node.pipelines.cmr_lge.quantify_cmr` (5 SD over the automatic remote sector with the rim rule
   and MVO filling) -> measured LGE % of LV mass. The network's frame is
   :func:`node.ai.cmr_outcome.basal_frame_input` of the LGE stack and its labels (the function the pipeline
   uses); the truth scar and myocardium masks are sampled onto the same frame
   (:func:`node.ai.cmr_outcome.sample_on_frame`, nearest). **EF is not measured per case** (a cine per case
   would double the build on this shared machine): ``measured_ef`` = true EF + N(:data:`EF_ERROR_MEAN`,
   :data:`EF_ERROR_SD`), the error of the node's own cine EF (:func:`measure_cine_ef`: two-phase cine of the
   same heart, the shipped model, the pipeline's Simpson function with partial-volume blood) on 40 phantoms.
7. **Event** (:class:`EventProcess`, :data:`EVENT_PROCESS`): exponential hazard per year
   ``lambda = lambda0 exp(beta_lge log(1 + LGE) + log HR_rv x RV + log HR_mf x multifocal + log HR_sep x
   septal + log HR_ef x max(0, 55 - EF) / 10 + b)`` with a patient frailty ``b ~ N(0, 0.5^2)``; follow-up
   uniform on 4.8-5.9 years (the seed's IQR); event = event time before the end of follow-up. LGE is
   the phantom's *true* (continuous) burden and EF the true EF. :func:`event_probability` is the
   process's own probability of an event given the true covariates and the follow-up, the frailty
   integrated out (Gauss-Hermite): the oracle, the best any model of the covariates can do.

Calibration (:func:`calibrate_event_process`, run once, its result frozen in :data:`EVENT_PROCESS`):
``lambda0`` and ``beta_lge`` so that, over the population of step 1-3, the cases without LGE have
1.1 events per 100 patient-years and 20 % of all cases have an event during follow-up (the seed's
23/116); the hazard ratios are fixed a priori (RV 2.5, multifocal 2.0, septal 1.5, EF 1.5 per 10
points below 55; reference 2.4: RV/multifocal HR 4-5 *beyond* extent in a biopsy-proven cohort, halved
here because our flags also carry burden). The rate with LGE that follows is reported by
:func:`event_rates` (Coleman 2017: 11.9 per 100 patient-years): with 43 % LGE-positive, 20 % events
over 5.4 years and 1.1 %/year without LGE cannot all hold with 11.9 %/year with LGE; the seed's own
event share is kept, and the rate with LGE comes out at about 9.3 per 100 patient-years (20,000 draws).
The frozen constants came from ``calibrate_event_process(replace(EVENT_PROCESS, baseline_per_year=0.01,
beta_log_lge=0.5))`` (defaults ``n=20000, seed=12345``): ``lambda0 = 0.009493 / year``, ``beta_lge = 0.6709``.

Cohorts (:data:`COHORTS`): ``small`` 116, ``large`` 1000, ``test`` 300, ``external`` 300, with disjoint
seed ranges. :func:`build_cmr_cohort` writes one ``.npz`` per cohort (default folder
:func:`default_cohort_dir`), :func:`load_cmr_cohort` reads it, :func:`tiny_cmr_cohort` builds a few
cases in memory (tests, development).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from node.imaging.volume import ShortAxisStack
from node.synth.cmr.phantom import (
    CMRAnatomy,
    LGEPattern,
    Sampling,
    ScarPatch,
    cine_phantom,
    draw_anatomy,
    draw_pattern,
    lge_phantom,
    shape_for_ef,
)
from node.synth.cmr.phantom import _continuous_lge as _burden_quadrature  # the generator's own scar quadrature
from node.synth.geometry import geometry_at

__all__ = [
    "CMR_COHORT_VERSION",
    "LGE_CUTOFF_PCT",
    "LGE_CLASS_PROBABILITIES",
    "PATTERN_MIX",
    "RV_SEPTAL_PROBABILITY",
    "LGE_SAMPLING",
    "CINE_SAMPLING",
    "LGE_PHASE",
    "Acquisition",
    "ACQUISITION_KINDS",
    "draw_acquisition",
    "CohortSpec",
    "COHORTS",
    "Covariates",
    "draw_covariates",
    "pattern_flags",
    "fit_pattern_burden",
    "EventProcess",
    "EVENT_PROCESS",
    "hazard_per_year",
    "event_probability",
    "expected_person_years",
    "event_rates",
    "draw_events",
    "calibrate_event_process",
    "CmrCase",
    "CmrCohort",
    "COHORT_KEYS",
    "EF_ERROR_MEAN",
    "EF_ERROR_SD",
    "measure_cine_ef",
    "generate_case",
    "build_cmr_cohort",
    "write_cmr_cohort",
    "load_cmr_cohort",
    "tiny_cmr_cohort",
    "default_cohort_dir",
]

#: version of the whole generative process (population, acquisition, measurement, event process)
CMR_COHORT_VERSION = "cardionode-cmr-cohort-1.0.0"
#: the seed's LGE task threshold, % of LV mass (Kazmirczak 2019 / Murtagh 2016)
LGE_CUTOFF_PCT = 5.7
#: the seed's LGE distribution (66 none, 31 in (0, 5.7], 19 above, of 116)
LGE_CLASS_PROBABILITIES: dict[str, float] = {"none": 0.57, "low": 0.27, "high": 0.16}
#: pattern probabilities per LGE class (names of node.synth.cmr.phantom.PATTERNS)
PATTERN_MIX: dict[str, dict[str, float]] = {
    "none": {"scar_free": 0.85, "fat_pad_decoy": 0.15},
    "low": {"sarcoid_midwall_septal": 0.40, "sarcoid_epicardial": 0.30, "sarcoid_multifocal_rv": 0.15,
            "ischaemic_subendocardial": 0.10, "ischaemic_transmural_mvo": 0.05},
    "high": {"sarcoid_midwall_septal": 0.20, "sarcoid_epicardial": 0.15, "sarcoid_multifocal_rv": 0.45,
             "ischaemic_subendocardial": 0.08, "ischaemic_transmural_mvo": 0.12},
}
#: chance that a septal mid-wall pattern also involves the RV free wall
RV_SEPTAL_PROBABILITY = 0.25
#: supersampling of the LGE phantoms (in-plane 2 x 2, through-plane 3)
LGE_SAMPLING = Sampling(in_plane=2, through=3)
#: supersampling of the two-phase cine phantoms of :func:`measure_cine_ef`
CINE_SAMPLING = Sampling(in_plane=2, through=2)
#: cardiac phase (fraction of R-R) of the LGE acquisition (mid-diastole, the phantom's default)
LGE_PHASE = 0.75
_HIGH_MEDIAN_EXCESS, _HIGH_LOG_SD, _MAX_BURDEN = 3.5, 1.0, 40.0
_LOW_RANGE = (0.3, LGE_CUTOFF_PCT)
_FOLLOW_UP_Y = (4.8, 5.9)
_SEPTAL_HALF_ARC_DEG = 45.0
# seed-sequence tags of the independent streams of one case
_S_COV, _S_ACQ, _S_ANAT, _S_PAT, _S_LGE, _S_CINE, _S_EVENT = range(7)


# --------------------------------------------------------------------------- acquisition

@dataclass(frozen=True)
class Acquisition:
    """LGE/cine protocol of one case.

    ``pixel_mm`` in-plane pixel, ``matrix`` rows = columns, ``thickness_mm``/``gap_mm`` slices;
    ``snr_scar`` dense-scar signal / noise SD on LGE, ``snr_blood`` blood / noise SD on cine;
    ``null_error`` relative TI error from the myocardial null; ``coil_strength`` receive-coil gain
    gradient per 100 mm; ``gain`` stored value per signal unit (vendor-like scaling; the node's
    quantification and the network input are scale-invariant).
    """

    kind: str
    pixel_mm: float
    matrix: int
    thickness_mm: float
    gap_mm: float
    snr_scar: float
    snr_blood: float
    null_error: float
    coil_strength: float
    gain: float


#: acquisition kinds: the development site (1.5 T-like) and an external site (3 T-like, other vendor)
ACQUISITION_KINDS: tuple[str, ...] = ("site", "external")


def draw_acquisition(kind: str, rng: np.random.Generator) -> Acquisition:
    """Draw a protocol of ``kind`` (:data:`ACQUISITION_KINDS`).

    ``site``: pixels 1.4-1.8 mm, field about 180 mm, 8 mm slices, 2 mm gap, SNR scar 12-25, blood 25-45,
    TI error 0-8 %, coil 0.15-0.30, gain 800-1200. ``external``: pixels 1.9-2.3 mm, 6-7 mm slices,
    2.5-4 mm gap, SNR scar 28-45, blood 45-70, TI error 5-12 %, coil 0.30-0.45, gain 0.05-50 (log-uniform).
    """
    u = rng.uniform
    if kind == "site":
        pixel = float(u(1.4, 1.8))
        return Acquisition("site", pixel, int(round(180.0 / pixel)), 8.0, 2.0, float(u(12, 25)), float(u(25, 45)),
                           float(u(0.0, 0.08)), float(u(0.15, 0.30)), float(u(800, 1200)))
    if kind == "external":
        pixel = float(u(1.9, 2.3))
        return Acquisition("external", pixel, int(round(190.0 / pixel)), float(u(6.0, 7.0)), float(u(2.5, 4.0)),
                           float(u(28, 45)), float(u(45, 70)), float(u(0.05, 0.12)), float(u(0.30, 0.45)),
                           float(np.exp(u(np.log(0.05), np.log(50.0)))))
    raise ValueError(f"acquisition kind must be one of {ACQUISITION_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class CohortSpec:
    """A named cohort: ``n`` cases with seeds ``first_seed .. first_seed + n - 1`` and an acquisition kind."""

    name: str
    n: int
    first_seed: int
    acquisition: str


#: the cohorts of issue 18 (seed ranges are disjoint: each starts 1,000,000 after the previous)
COHORTS: dict[str, CohortSpec] = {
    "small": CohortSpec("small", 116, 1_000_000, "site"),
    "large": CohortSpec("large", 1000, 2_000_000, "site"),
    "test": CohortSpec("test", 300, 3_000_000, "site"),
    "external": CohortSpec("external", 300, 4_000_000, "external"),
}
_TINY_FIRST_SEED = 9_000_000


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


# --------------------------------------------------------------------------- population

@dataclass(frozen=True)
class Covariates:
    """The population draws of one case (steps 1-3 of the module docstring; nothing rendered yet).

    ``target_lge_pct``: the burden the pattern is scaled to (% of LV myocardial volume; the phantom's
    true burden is within about 0.5 of it); ``ef_pct``: true LVEF (%); ``follow_up_y``: years of
    follow-up; ``rv_septal``: a septal mid-wall pattern that also involves the RV free wall.
    """

    lge_class: str
    pattern: str
    target_lge_pct: float
    ef_pct: float
    follow_up_y: float
    rv_septal: bool


def _choice(mix: dict[str, float], rng: np.random.Generator) -> str:
    names = list(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_covariates(rng: np.random.Generator) -> Covariates:
    """Draw the LGE class, pattern, target burden, EF and follow-up of one case (module docstring)."""
    lge_class = _choice(LGE_CLASS_PROBABILITIES, rng)
    pattern = _choice(PATTERN_MIX[lge_class], rng)
    if lge_class == "none":
        target = 0.0
    elif lge_class == "low":
        target = float(rng.uniform(*_LOW_RANGE))
    else:
        excess = _HIGH_MEDIAN_EXCESS * math.exp(_HIGH_LOG_SD * float(rng.normal()))
        target = min(LGE_CUTOFF_PCT + excess, _MAX_BURDEN)
    ef = float(np.clip(60.0 - 0.45 * target + rng.normal(0.0, 6.0), 20.0, 75.0))
    follow = float(rng.uniform(*_FOLLOW_UP_Y))
    rv_septal = pattern == "sarcoid_midwall_septal" and bool(rng.uniform() < RV_SEPTAL_PROBABILITY)
    return Covariates(lge_class, pattern, target, ef, follow, rv_septal)


def pattern_flags(pattern: LGEPattern) -> tuple[bool, bool, bool]:
    """``(rv_involvement, septal, multifocal)`` of a pattern (module docstring, step 2)."""
    rv = bool(pattern.rv_involvement or any(p.rv for p in pattern.patches))
    septal = any(abs(((p.psi_deg - 90.0) + 180.0) % 360.0 - 180.0) <= _SEPTAL_HALF_ARC_DEG for p in pattern.patches)
    multifocal = len(pattern.patches) >= 2
    return rv, septal, multifocal


def _scaled(pattern: LGEPattern, s: float) -> LGEPattern:
    """The pattern with every patch grown by ``s``: angular half-width first (3-90 deg), the rest of the growth
    goes to the long-axis extent (0.05-1.05 of the cavity, within [-0.05, 1]) and then to the wall depth."""
    out = []
    for p in pattern.patches:
        hw = float(np.clip(p.half_width_deg * s, 3.0, 90.0))
        g = p.half_width_deg * s / hw
        v0, v1 = p.v_range
        length = float(np.clip((v1 - v0) * g, 0.05, 1.05))
        g2 = (v1 - v0) * g / length
        centre = 0.5 * (v0 + v1)
        lo = float(np.clip(centre - 0.5 * length, -0.05, 1.0 - length))
        d0, d1 = p.depth_range
        width = float(np.clip((d1 - d0) * g2, 0.05, 1.0))
        dc = 0.5 * (d0 + d1)
        dlo = float(np.clip(dc - 0.5 * width, 0.0, 1.0 - width))
        if d0 <= 0.0:  # subendocardial / transmural: anchored at the endocardium
            dlo = 0.0
        elif d1 >= 1.0:  # epicardial: anchored at the epicardium
            dlo = 1.0 - width
        out.append(replace(p, half_width_deg=hw, v_range=(lo, lo + length), depth_range=(dlo, dlo + width)))
    return replace(pattern, patches=tuple(out))


def _burden_pct(anatomy: CMRAnatomy, pattern: LGEPattern) -> float:
    geom = geometry_at(anatomy.shape, LGE_PHASE, es_fraction=anatomy.es_fraction)
    vol, scar = _burden_quadrature(anatomy, geom, pattern, n_z=36, n_psi=72, n_depth=8)
    return 100.0 * float(scar.sum()) / float(vol.sum())


def fit_pattern_burden(anatomy: CMRAnatomy, pattern: LGEPattern, target_pct: float, iterations: int = 14) -> LGEPattern:
    """Scale ``pattern`` (:func:`_scaled`, bisection on the log scale factor) so that its analytic LGE burden on
    ``anatomy`` (coarse quadrature, % of LV myocardial volume at :data:`LGE_PHASE`) is ``target_pct``."""
    if not pattern.patches or target_pct <= 0.0:
        return pattern
    lo, hi = math.log(0.02), math.log(60.0)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if _burden_pct(anatomy, _scaled(pattern, math.exp(mid))) < target_pct:
            lo = mid
        else:
            hi = mid
    return _scaled(pattern, math.exp(0.5 * (lo + hi)))


# --------------------------------------------------------------------------- event process

@dataclass(frozen=True)
class EventProcess:
    """The fixed hazard process (module docstring, step 7). Rates per year; hazard ratios per unit of the flag,
    and per 10 EF points below ``ef_reference``; ``frailty_sd`` of the log-normal patient frailty."""

    version: str
    baseline_per_year: float
    beta_log_lge: float
    hr_rv: float
    hr_multifocal: float
    hr_septal: float
    hr_ef_per_10: float
    ef_reference: float
    frailty_sd: float


#: the frozen process (calibrated by :func:`calibrate_event_process` with its defaults; see the module docstring)
EVENT_PROCESS = EventProcess(
    version="cardionode-cmr-events-1.0.0",
    baseline_per_year=0.009493,
    beta_log_lge=0.6709,
    hr_rv=2.5,
    hr_multifocal=2.0,
    hr_septal=1.5,
    hr_ef_per_10=1.5,
    ef_reference=55.0,
    frailty_sd=0.5,
)
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def hazard_per_year(lge_pct: np.ndarray, rv: np.ndarray, septal: np.ndarray, multifocal: np.ndarray,
                    ef_pct: np.ndarray, process: EventProcess = EVENT_PROCESS) -> np.ndarray:
    """Hazard (events per year) at frailty 0 of cases with true LGE % (of LV mass), flags (0/1) and true EF (%);
    arrays ``[n]`` (broadcast)."""
    lge = np.clip(np.asarray(lge_pct, dtype=np.float64), 0.0, None)
    ef_deficit = np.clip(process.ef_reference - np.asarray(ef_pct, dtype=np.float64), 0.0, None) / 10.0
    eta = (process.beta_log_lge * np.log1p(lge) + math.log(process.hr_rv) * np.asarray(rv, dtype=np.float64)
           + math.log(process.hr_multifocal) * np.asarray(multifocal, dtype=np.float64)
           + math.log(process.hr_septal) * np.asarray(septal, dtype=np.float64)
           + math.log(process.hr_ef_per_10) * ef_deficit)
    return np.asarray(process.baseline_per_year * np.exp(eta))


def _frailty_hazards(rate: np.ndarray, process: EventProcess) -> np.ndarray:
    """``[n, nodes]`` hazards at the Gauss-Hermite frailty nodes."""
    return np.asarray(rate)[..., None] * np.exp(process.frailty_sd * _GH_NODES)


def event_probability(lge_pct: np.ndarray, rv: np.ndarray, septal: np.ndarray, multifocal: np.ndarray,
                      ef_pct: np.ndarray, follow_up_y: np.ndarray, process: EventProcess = EVENT_PROCESS) -> np.ndarray:
    """The oracle: probability of an event within ``follow_up_y`` years given the true covariates, the frailty
    integrated out (40-node Gauss-Hermite). Arrays ``[n]``; returns float64 ``[n]``."""
    lam = _frailty_hazards(hazard_per_year(lge_pct, rv, septal, multifocal, ef_pct, process), process)
    t = np.asarray(follow_up_y, dtype=np.float64)[..., None]
    return np.asarray((1.0 - np.exp(-lam * t)) @ _GH_WEIGHTS)


def expected_person_years(lge_pct: np.ndarray, rv: np.ndarray, septal: np.ndarray, multifocal: np.ndarray,
                          ef_pct: np.ndarray, follow_up_y: np.ndarray, process: EventProcess = EVENT_PROCESS
                          ) -> np.ndarray:
    """Expected time at risk (years; to the event or the end of follow-up) of each case, frailty integrated out."""
    lam = _frailty_hazards(hazard_per_year(lge_pct, rv, septal, multifocal, ef_pct, process), process)
    t = np.asarray(follow_up_y, dtype=np.float64)[..., None]
    return np.asarray(((1.0 - np.exp(-lam * t)) / lam) @ _GH_WEIGHTS)


def event_rates(lge_pct: np.ndarray, rv: np.ndarray, septal: np.ndarray, multifocal: np.ndarray, ef_pct: np.ndarray,
                follow_up_y: np.ndarray, process: EventProcess = EVENT_PROCESS) -> dict[str, float]:
    """Expected event figures of a population of true covariates: ``events`` (share with an event during
    follow-up), ``rate_without_lge`` and ``rate_with_lge`` (events per patient-year, LGE = 0 and > 0),
    ``events_without_lge``/``events_with_lge`` (shares), ``share_with_lge``."""
    lge = np.asarray(lge_pct, dtype=np.float64)
    p = event_probability(lge, rv, septal, multifocal, ef_pct, follow_up_y, process)
    py = expected_person_years(lge, rv, septal, multifocal, ef_pct, follow_up_y, process)
    pos = lge > 0
    return {
        "events": float(p.mean()),
        "rate_without_lge": float(p[~pos].sum() / py[~pos].sum()) if (~pos).any() else float("nan"),
        "rate_with_lge": float(p[pos].sum() / py[pos].sum()) if pos.any() else float("nan"),
        "events_without_lge": float(p[~pos].mean()) if (~pos).any() else float("nan"),
        "events_with_lge": float(p[pos].mean()) if pos.any() else float("nan"),
        "share_with_lge": float(pos.mean()),
    }


def draw_events(lge_pct: np.ndarray, rv: np.ndarray, septal: np.ndarray, multifocal: np.ndarray, ef_pct: np.ndarray,
                follow_up_y: np.ndarray, rng: np.random.Generator, process: EventProcess = EVENT_PROCESS
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw a frailty and an exponential event time per case: ``(event int8 [n], time_y float64 [n])`` where
    ``time_y`` is the event time or the end of follow-up, whichever comes first."""
    rate = hazard_per_year(lge_pct, rv, septal, multifocal, ef_pct, process)
    frailty = rng.normal(0.0, process.frailty_sd, size=np.shape(rate))
    t_event = rng.exponential(1.0, size=np.shape(rate)) / (rate * np.exp(frailty))
    follow = np.asarray(follow_up_y, dtype=np.float64)
    event = t_event <= follow
    return event.astype(np.int8), np.where(event, t_event, follow)


def _population_proxy(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """True-covariate proxies of ``n`` draws of the population (target burden for the phantom's; pattern flags of the
    unscaled generator patterns) for the analytic calibration: (lge, rv, septal, multifocal, ef, follow_up)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        cov = draw_covariates(rng)
        pattern = _with_rv_variant(draw_pattern(cov.pattern, rng), cov.rv_septal)
        rows.append((cov.target_lge_pct, *pattern_flags(pattern), cov.ef_pct, cov.follow_up_y))
    arr = np.asarray(rows, dtype=np.float64)
    return tuple(arr[:, k] for k in range(arr.shape[1]))


def calibrate_event_process(process: EventProcess = EVENT_PROCESS, *, rate_without_lge: float = 0.011,
                            events: float = 0.20, n: int = 20000, seed: int = 12345) -> EventProcess:
    """Solve ``baseline_per_year`` and ``beta_log_lge`` so that, over ``n`` population draws (seed ``seed``), the
    cases without LGE have ``rate_without_lge`` events per patient-year and a share ``events`` of all cases has an
    event during follow-up (the other parameters of ``process`` kept). Analytic: no phantom is rendered."""
    from scipy.optimize import brentq

    lge, rv, septal, mf, ef, fu = _population_proxy(n, seed)
    neg = lge <= 0

    def with_beta(beta: float) -> EventProcess:
        trial = replace(process, beta_log_lge=beta, baseline_per_year=1.0)

        def rate_gap(log_l0: float) -> float:
            t = replace(trial, baseline_per_year=math.exp(log_l0))
            return event_rates(lge[neg], rv[neg], septal[neg], mf[neg], ef[neg], fu[neg], t)["rate_without_lge"] \
                - rate_without_lge

        return replace(trial, baseline_per_year=math.exp(brentq(rate_gap, math.log(1e-5), math.log(1.0))))

    def events_gap(beta: float) -> float:
        return event_rates(lge, rv, septal, mf, ef, fu, with_beta(beta))["events"] - events

    beta = brentq(events_gap, 0.0, 5.0, xtol=1e-6)
    return with_beta(beta)


def _with_rv_variant(pattern: LGEPattern, rv_septal: bool) -> LGEPattern:
    """The septal mid-wall pattern with RV free-wall involvement (its patch flagged ``rv``) when drawn so."""
    if not rv_septal or not pattern.patches:
        return pattern
    patches: tuple[ScarPatch, ...] = tuple(replace(p, rv=True) for p in pattern.patches)
    return replace(pattern, patches=patches, rv_involvement=True)


# --------------------------------------------------------------------------- one case

@dataclass(frozen=True, eq=False)
class CmrCase:
    """One case of a cohort: the per-case values of :data:`COHORT_KEYS` (arrays without the case axis)."""

    frame: np.ndarray  # [1, FRAME_SIZE, FRAME_SIZE] float32
    lge_mask: np.ndarray  # [FRAME_SIZE, FRAME_SIZE] bool
    myocardium_mask: np.ndarray  # [FRAME_SIZE, FRAME_SIZE] bool
    frame_slice: int
    frame_ok: bool
    true_lge_pct: float
    true_lge_pct_sampled: float
    target_lge_pct: float
    measured_lge_pct: float
    measured_basal_lge_pct: float
    true_basal_lge_pct: float
    true_ef: float
    measured_ef: float
    lge_above: int
    event: int
    event_probability: float
    event_time_y: float
    follow_up_y: float
    pattern: str
    lge_class: str
    rv_involvement: int
    septal: int
    multifocal: int
    segmentation_ok: bool
    pixel_mm: float
    snr_scar: float
    seed: int
    cohort: str


def _stack(images: np.ndarray, anatomy: CMRAnatomy, trigger_ms: np.ndarray) -> ShortAxisStack:
    """A phantom's images ``[phase, slice, row, col]`` as the node's stack, with the phantom's oblique geometry."""
    st = anatomy.stack
    x_axis, y_axis = anatomy.image_axes()
    positions = np.stack([anatomy.slice_origin_mm(k) for k in range(st.n_slices)])
    trig = np.broadcast_to(np.asarray(trigger_ms, dtype=np.float64)[:, None], images.shape[:2]).copy()
    return ShortAxisStack(np.asarray(images, dtype=np.float32), positions, x_axis, y_axis,
                          np.array([st.pixel_mm, st.pixel_mm]), float(st.thickness_mm), trig)


def _draw_heart(cov: Covariates, acq: Acquisition, rng: np.random.Generator) -> CMRAnatomy:
    u = rng.uniform
    a = float(u(24, 30)) + 0.06 * max(0.0, 60.0 - cov.ef_pct)
    shape = shape_for_ef(cov.ef_pct, a, float(u(62, 78)), float(u(8, 11)))
    return draw_anatomy(rng, shape, thickness_mm=acq.thickness_mm, gap_mm=acq.gap_mm, pixel_mm=acq.pixel_mm,
                        matrix=(acq.matrix, acq.matrix))


#: the node's cine EF error (measured - true, EF points) that :func:`generate_case` adds to the true EF when it does not
#: render a cine: mean and SD of :func:`measure_cine_ef` on 40 phantoms, seeds 5,000,000-5,000,039, shipped
#: ``cmr_segmentation`` 1.0.0: +0.11 (SD 1.45), range -3.9 to +4.0 (``python bench/cmr_cohort.py --ef-check 40``)
EF_ERROR_MEAN, EF_ERROR_SD = 0.11, 1.45


def _case_setup(seed: int, cohort: str) -> tuple[Covariates, Acquisition, CMRAnatomy, LGEPattern]:
    kind = COHORTS[cohort].acquisition if cohort in COHORTS else "site"
    cov = draw_covariates(_rng(seed, _S_COV))
    acq = draw_acquisition(kind, _rng(seed, _S_ACQ))
    anatomy = _draw_heart(cov, acq, _rng(seed, _S_ANAT))
    pattern = fit_pattern_burden(anatomy, _with_rv_variant(draw_pattern(cov.pattern, _rng(seed, _S_PAT)),
                                                           cov.rv_septal), cov.target_lge_pct)
    return cov, acq, anatomy, pattern


def measure_cine_ef(seed: int, cohort: str, *, model_dir: Path | None = None) -> tuple[float, float]:
    """(true EF, the node's measured EF) of case ``seed``'s heart from a two-phase cine (ED, ES; :data:`CINE_SAMPLING`):
    the shipped ``cmr_segmentation`` on both phases, then the pipeline's
    :func:`node.pipelines.cmr_lge.quantify_cmr` (Simpson, partial-volume blood). NaN when it fails."""
    from node.ai.cmr_segmentation import segment_short_axis
    from node.imaging.errors import UnusableSeriesError
    from node.pipelines.cmr_lge import quantify_cmr

    _, acq, anatomy, _ = _case_setup(seed, cohort)
    cine = cine_phantom(anatomy, _rng(seed, _S_CINE), n_phases=2, snr_blood=acq.snr_blood,
                        coil_strength=acq.coil_strength, sampling=CINE_SAMPLING)
    stack = _stack(cine.images * acq.gain, anatomy, cine.truth.trigger_times_ms)
    seg = segment_short_axis(stack, phases=[0, 1], model_dir=model_dir, contrast="cine", device="cpu")
    try:
        _, _, function = quantify_cmr(None, None, stack, seg.labels, cine_phases=(0, 1))
    except (UnusableSeriesError, ValueError):
        return float(anatomy.shape.ef_pct), float("nan")
    return float(anatomy.shape.ef_pct), float(function.ef_pct) if function is not None else float("nan")


def generate_case(seed: int, cohort: str, *, model_dir: Path | None = None) -> CmrCase:
    """Generate, render and measure case ``seed`` of ``cohort`` (a :data:`COHORTS` name or ``tiny``) (module docstring).

    ``model_dir``: the ``cmr_segmentation`` bundle folder (None: the shipped one). CPU, deterministic. The measured EF
    is the true EF plus the node's cine EF error drawn from N(:data:`EF_ERROR_MEAN`, :data:`EF_ERROR_SD`) (a cine per
    case would double the cost; :func:`measure_cine_ef` measures the real thing).
    """
    from node.ai.cmr_outcome import basal_frame_input, frame_geometry, sample_on_frame
    from node.ai.cmr_segmentation import segment_short_axis
    from node.imaging.errors import UnusableSeriesError
    from node.pipelines.cmr_lge import quantify_cmr

    cov, acq, anatomy, pattern = _case_setup(seed, cohort)
    lge = lge_phantom(anatomy, pattern, _rng(seed, _S_LGE), snr_scar=acq.snr_scar, null_error=acq.null_error,
                      coil_strength=acq.coil_strength, sampling=LGE_SAMPLING, t_frac=LGE_PHASE)
    lge_stack = _stack(lge.magnitude[None] * acq.gain, anatomy, np.array([np.nan]))
    lge_seg = segment_short_axis(lge_stack, model_dir=model_dir, contrast="lge", device="cpu")
    labels = lge_seg.labels[0]
    measured_lge = measured_basal = float("nan")
    lge_result = None
    try:
        lge_result, _, _ = quantify_cmr(lge_stack, labels, None, None)
        measured_lge = float(lge_result.primary.lge_pct_lv) if lge_result is not None else float("nan")
    except UnusableSeriesError:
        pass
    measured_ef = float(np.clip(anatomy.shape.ef_pct + EF_ERROR_MEAN + EF_ERROR_SD * _rng(seed, _S_CINE).normal(),
                                5.0, 90.0))
    truth = lge.truth
    try:
        frame, k = basal_frame_input(lge_stack, labels)
        geometry = frame_geometry(labels, lge_stack.pixel_spacing_mm, slice_index=k)
        frame_ok = True
    except ValueError:  # no LV in the labels: the truth's LV slices give the frame, flagged
        k = int(np.flatnonzero(truth.myocardium_mask.any(axis=(1, 2)))[-1])
        truth_labels = np.where(truth.myocardium_mask, 2, 0).astype(np.uint8)
        geometry = frame_geometry(truth_labels, lge_stack.pixel_spacing_mm, slice_index=k)
        frame = np.zeros((1, *geometry.coordinates().shape[1:]), np.float32)
        frame_ok = False
    scar_k = truth.scar_mask[k]
    myo_k = truth.myocardium_mask[k]
    if lge_result is not None:
        m = labels[k] == 2
        measured_basal = 100.0 * float((lge_result.primary.mask[k] & m).sum()) / max(float(m.sum()), 1.0)
    true_basal = float(truth.slice_scar_pct[k]) if np.isfinite(truth.slice_scar_pct[k]) else 0.0
    rv, septal, multifocal = pattern_flags(pattern)
    true_lge = float(truth.scar_pct_continuous)
    ef = float(anatomy.shape.ef_pct)
    args = (np.array([true_lge]), np.array([rv]), np.array([septal]), np.array([multifocal]), np.array([ef]),
            np.array([cov.follow_up_y]))
    p = float(event_probability(*args)[0])
    event, t_event = draw_events(*args, _rng(seed, _S_EVENT))
    return CmrCase(
        frame=np.asarray(frame, np.float32), lge_mask=sample_on_frame(scar_k, geometry, order=0).astype(bool),
        myocardium_mask=sample_on_frame(myo_k, geometry, order=0).astype(bool), frame_slice=int(k), frame_ok=frame_ok,
        true_lge_pct=true_lge, true_lge_pct_sampled=float(truth.scar_pct_sampled), target_lge_pct=cov.target_lge_pct,
        measured_lge_pct=measured_lge, measured_basal_lge_pct=measured_basal, true_basal_lge_pct=true_basal,
        true_ef=ef, measured_ef=measured_ef, lge_above=int(true_lge > LGE_CUTOFF_PCT), event=int(event[0]),
        event_probability=p, event_time_y=float(t_event[0]), follow_up_y=cov.follow_up_y, pattern=pattern.name,
        lge_class=cov.lge_class, rv_involvement=int(rv), septal=int(septal), multifocal=int(multifocal),
        segmentation_ok=bool(lge_seg.quality.ok), pixel_mm=acq.pixel_mm, snr_scar=acq.snr_scar, seed=int(seed),
        cohort=cohort,
    )


# --------------------------------------------------------------------------- cohorts

#: npz keys of a cohort file: name -> dtype (the case axis first; see :class:`CmrCase` for the per-case meaning)
COHORT_KEYS: dict[str, str] = {
    "frames": "float32", "lge_mask": "bool", "myocardium_mask": "bool", "frame_slice": "int16", "frame_ok": "bool",
    "true_lge_pct": "float32", "true_lge_pct_sampled": "float32", "target_lge_pct": "float32",
    "measured_lge_pct": "float32", "measured_basal_lge_pct": "float32", "true_basal_lge_pct": "float32",
    "true_ef": "float32", "measured_ef": "float32", "lge_above": "int8", "event": "int8",
    "event_probability": "float32", "event_time_y": "float32", "follow_up_y": "float32", "pattern": "<U24",
    "lge_class": "<U4", "rv_involvement": "int8", "septal": "int8", "multifocal": "int8", "segmentation_ok": "bool",
    "pixel_mm": "float32", "snr_scar": "float32", "seed": "int64", "cohort": "<U8",
}


@dataclass(frozen=True, eq=False)
class CmrCohort:
    """A cohort of N cases: one array per :data:`COHORT_KEYS` entry (case axis first) and ``meta`` (version,
    segmentation bundle, event process, counts).

    ``frames`` ``[N, 1, F, F]`` (F = :data:`node.ai.cmr_outcome.FRAME_SIZE`); ``lge_mask``/``myocardium_mask``
    ``[N, F, F]`` truth on the frame; ``true_lge_pct`` continuous truth % of LV myocardial volume (the hazard's
    covariate and, above 5.7, ``lge_above``, the LGE task label); ``measured_lge_pct`` the node's 5 SD + rim
    result (NaN if the segmentation found no myocardium); ``measured_basal_lge_pct`` the node's LGE % of the frame's
    slice; ``true_ef``/``measured_ef`` analytic EF and the node's cine EF (%); ``event``/``event_probability``
    (the oracle)/``event_time_y``/``follow_up_y``; pattern names and flags; ``seed``; ``cohort``.
    """

    frames: np.ndarray
    lge_mask: np.ndarray
    myocardium_mask: np.ndarray
    frame_slice: np.ndarray
    frame_ok: np.ndarray
    true_lge_pct: np.ndarray
    true_lge_pct_sampled: np.ndarray
    target_lge_pct: np.ndarray
    measured_lge_pct: np.ndarray
    measured_basal_lge_pct: np.ndarray
    true_basal_lge_pct: np.ndarray
    true_ef: np.ndarray
    measured_ef: np.ndarray
    lge_above: np.ndarray
    event: np.ndarray
    event_probability: np.ndarray
    event_time_y: np.ndarray
    follow_up_y: np.ndarray
    pattern: np.ndarray
    lge_class: np.ndarray
    rv_involvement: np.ndarray
    septal: np.ndarray
    multifocal: np.ndarray
    segmentation_ok: np.ndarray
    pixel_mm: np.ndarray
    snr_scar: np.ndarray
    seed: np.ndarray
    cohort: np.ndarray
    meta: dict[str, object]

    def __len__(self) -> int:
        return int(self.seed.shape[0])

    def subset(self, index: np.ndarray) -> CmrCohort:
        """The cases ``index`` (integer or boolean array) as a cohort with the same ``meta``."""
        return CmrCohort(**{k: getattr(self, k)[index] for k in COHORT_KEYS}, meta=dict(self.meta))


def _meta(model_dir: Path | None, cohort: str) -> dict[str, object]:
    from node.ai import bundles
    from node.ai.cmr_segmentation import BUNDLE

    seg = bundles.load_bundle(BUNDLE, root=model_dir, device="cpu")
    return {"version": CMR_COHORT_VERSION, "cohort": cohort, "segmentation_bundle": BUNDLE,
            "segmentation_version": seg.version, "segmentation_weights_sha256": seg.weights_sha256,
            "event_process": {f.name: getattr(EVENT_PROCESS, f.name) for f in fields(EVENT_PROCESS)},
            "research_use": "research use only; synthetic phantoms, not patient data"}


def _bundle_digest(model_dir: Path | None) -> str:
    """SHA-256 of the segmentation weights now on disk (not the process cache)."""
    from node.ai import bundles
    from node.ai.cmr_segmentation import BUNDLE

    root = Path(model_dir) if model_dir is not None else bundles.models_dir() / BUNDLE
    return bundles.file_sha256(root / "models" / "model.pt")


def _stack_cases(cases: Sequence[CmrCase], meta: dict[str, object]) -> CmrCohort:
    arrays: dict[str, np.ndarray] = {}
    for key, dtype in COHORT_KEYS.items():
        attr = "frame" if key == "frames" else key
        arrays[key] = np.asarray([getattr(c, attr) for c in cases], dtype=dtype)
    return CmrCohort(**arrays, meta=meta)


def _case_worker(job: tuple[int, str, str | None]) -> CmrCase:
    seed, cohort, model_dir = job
    return generate_case(seed, cohort, model_dir=None if model_dir is None else Path(model_dir))


def default_cohort_dir() -> Path:
    """``<cache>/cohorts/<CMR_COHORT_VERSION>/`` where cache is ``$CARDIONODE_CACHE`` or ``~/.cache/cardionode``."""
    cache = os.environ.get("CARDIONODE_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "cardionode"
    return root / "cohorts" / CMR_COHORT_VERSION


def _generate(seeds: Sequence[int], cohort: str, model_dir: Path | None, processes: int,
              progress: Callable[[int, int], None] | None) -> list[CmrCase]:
    jobs = [(int(s), cohort, None if model_dir is None else str(model_dir)) for s in seeds]
    cases: list[CmrCase] = []
    if processes <= 1:
        for i, job in enumerate(jobs):
            cases.append(_case_worker(job))
            if progress is not None:
                progress(i + 1, len(jobs))
        return cases
    import multiprocessing

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})  # one thread per worker process
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for i, case in enumerate(pool.imap(_case_worker, jobs, chunksize=4)):
                cases.append(case)
                if progress is not None:
                    progress(i + 1, len(jobs))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return cases


def write_cmr_cohort(cohort: CmrCohort, path: Path) -> Path:
    """Write ``cohort`` as one ``.npz`` (the :data:`COHORT_KEYS` arrays and ``meta_json``); returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(cohort, k) for k in COHORT_KEYS}
    tmp = path.with_name(path.name + ".part.npz")
    np.savez_compressed(tmp, meta_json=np.array(json.dumps(cohort.meta, sort_keys=True)), **arrays)
    tmp.replace(path)
    return path


def build_cmr_cohort(cohort: str, *, n: int | None = None, first_seed: int | None = None, out: Path | None = None,
                     processes: int = 1, model_dir: Path | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Build cohort ``cohort`` (:data:`COHORTS`; ``n``/``first_seed`` override its size and first seed) and write it
    to ``out`` (default ``default_cohort_dir() / f"{cohort}.npz"``); returns the path.

    ``processes`` > 1 runs that many spawned worker processes with one thread each. The segmentation bundle is
    recorded before the build and must not change during it (``RuntimeError``). ``progress(done, total)`` is
    called after each case. Cost: about 0.8 s of CPU per case on this machine (phantom, segmentation,
    quantification, frame) plus about 5 s per worker process to start.
    """
    spec = COHORTS[cohort]
    count = spec.n if n is None else int(n)
    start = spec.first_seed if first_seed is None else int(first_seed)
    t0 = time.process_time()
    w0 = time.time()
    meta = _meta(model_dir, cohort)
    cases = _generate(range(start, start + count), cohort, model_dir, processes, progress)
    after = _bundle_digest(model_dir)
    if after != meta["segmentation_weights_sha256"]:
        raise RuntimeError(f"the cmr_segmentation weights changed during the build ({meta['segmentation_weights_sha256']} "
                           f"-> {after}); rebuild with a fixed model_dir")
    meta.update({"n": count, "first_seed": start, "acquisition": spec.acquisition,
                 "build_cpu_s_main_process": round(time.process_time() - t0, 1), "build_wall_s": round(time.time() - w0, 1),
                 "processes": processes})
    path = Path(out) if out is not None else default_cohort_dir() / f"{cohort}.npz"
    return write_cmr_cohort(_stack_cases(cases, meta), path)


def load_cmr_cohort(path: Path) -> CmrCohort:
    """Read a cohort written by :func:`build_cmr_cohort` / :func:`write_cmr_cohort`."""
    import json

    with np.load(Path(path), allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in COHORT_KEYS}
        meta = json.loads(str(data["meta_json"]))
    return CmrCohort(**arrays, meta=meta)


def tiny_cmr_cohort(n: int, seed: int = 0, *, model_dir: Path | None = None) -> CmrCohort:
    """``n`` cases (cohort name ``tiny``, site acquisition, seeds ``9,000,000 + 1000 x seed + i``) in memory: the same
    arrays as a built cohort, for tests and development (about 0.8 s of CPU per case, plus loading the model)."""
    first = _TINY_FIRST_SEED + 1000 * int(seed)
    cases = _generate(range(first, first + int(n)), "tiny", model_dir, 1, None)
    meta = _meta(model_dir, "tiny")
    meta.update({"n": int(n), "first_seed": first, "acquisition": "site"})
    return _stack_cases(cases, meta)
