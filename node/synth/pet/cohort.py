"""Synthetic PET flow-reserve cohort of issue 16: a versioned, seeded generative process.

Research use only: every case is a phantom; nothing here is patient data. The seed study (Yeung et
al., J Nucl Cardiol 2022; reference ``pet_mbf.md`` section 1) is reproduced on image-tier Rb-82
phantoms (:mod:`node.synth.pet.phantom`) analysed by the node's own PET quantification, so a model
trained here sees what it sees in service.

Generative process (version :data:`PET_COHORT_VERSION`; every number below is a module constant)
-------------------------------------------------------------------------------------------------
A case is fixed by ``(seed, split)``. Two random streams: ``default_rng([seed, 0])`` draws the
*design* (traits, disease, planted patterns; :func:`draw_design`, no images, milliseconds) and
``default_rng([seed, 1])`` the *acquisition* (pose, inputs, parameters, noise). Split seeds are
disjoint by construction (:data:`SPLIT_FIRST_SEED`, :data:`SPLIT_SEED_SPAN`).

1. **Traits** (true, independent Bernoulli with the seed's prevalences, :data:`TRAIT_PREVALENCE`):
   female 0.489, diabetes 0.154, hypertension 0.522, dyslipidaemia 0.332, smoking 0.136. The
   *recorded* trait (the label in the cohort) is the true one flipped with probability
   :data:`TRAIT_LABEL_FLIP` = 0.03 (record errors: label noise).
2. **Normal flows** (as :func:`node.synth.pet.phantom.draw_study_flows`): rest MBF = a patient
   level U(0.6, 1.4) x U(0.9, 1.1) per AHA segment; stress = rest x a patient MFR U(2.6, 3.6) x
   U(0.95, 1.05) per segment, capped at 4.5 mL/min/g.
3. **Segment-level trait effects** (multiply the segment MBF): female rest x 1.15, stress x 1.05
   (higher rest and stress MBF, MFR x 0.91: Opstal 2018 via the seed note, section 1.1);
   diabetes stress x U(0.75, 0.90) in every segment (diffuse stress reduction); hypertension rest
   x 1.03 (very weak); dyslipidaemia none.
4. **Disease** (one category per case, :data:`DISEASE_PROBABILITIES`): none 0.32; single-vessel
   stenosis 0.34 (LAD 0.4, LCx 0.3, RCA 0.3); multi-vessel 0.14 (two territories 0.7, three 0.3);
   diffuse microvascular 0.12; diffuse + single-vessel 0.08. A stenosis multiplies the stress
   MBF of its territory's segments (:data:`node.quant.segments.TERRITORY_SEGMENTS`) by
   U(0.35, 0.80), each territory its own factor; diffuse disease multiplies every segment's stress
   MBF by U(0.45, 0.75). Severity therefore varies from clearly impaired to not impaired at all.
5. **Sub-segment planted patterns** (a per-voxel flow multiplier ``m(u, psi)`` on the myocardium;
   ``u`` long-axis position 0 apex .. 1 base, ``psi`` azimuth from anterior toward septum, the
   coordinates of the AHA segments, :func:`pattern_multiplier`):

   * **female ripple** (rest and stress alike, so invisible in the MFR map): ``m = 1 + a
     sin(n psi + phi)`` with ``n`` = 6 in the basal and mid rings and 4 in the apical ring (one
     full period per segment), 1 in the apex, amplitude ``a`` U(0.20, 0.30), phase ``phi``
     U(0, 2 pi). Every ring segment holds a whole period, so **the segment means of the pattern
     cancel** (exactly on the polar grid; on the voxels to the extent the myocardial mass is
     uniform in ``psi`` within a segment, measured by the stored truth). The 17 segment values see
     the female trait only through step 3; the polar maps see the ripple too.
   * **smoking spot** (stress only): ``m = 1 - b exp(-(d_psi^2 / (2 s_psi^2) + d_u^2 / (2 s_u^2)))``,
     a focal stress reduction of depth ``b`` U(0.35, 0.50), ``s_psi`` = 20 deg, ``s_u`` = 0.09,
     centred at ``psi`` U(0, 360) deg and ``u`` U(0.30, 0.85): smaller than a segment and at a
     random position, so it moves one or two segment means a little, in a different segment in
     every case (a weak regional pattern that a linear model on 17 values barely sees).

   These two are properties of the planted process, chosen so that a network on the polar maps
   can see what logistic regression on segment means cannot; they are not claims about patients.
   The voxel value is a mixture of tissue curves at flow multipliers on a 0.2 grid (linear
   weights of ``m``; exact at the grid points, a within-voxel flow heterogeneity in between), and
   the truth segment MBF is the myocardium-weighted mean of the voxels' mean flow.
6. **Acquisition** (:data:`ACQUISITIONS`; development and test identical, external shifted):
   Rb-82, default frames, phantom :data:`COHORT_SPEC` (24 x 40 x 40 voxels of 4.8 mm, voxelised
   without supersampling), Gaussian blur U(8, 10) mm FWHM per case (external U(10, 12)), the
   phantom noise model with ``noise_level`` 0.11 on a voxel (the image tier's 0.20 at 3.2 mm
   scaled by the voxel volume: the same noise per mL; external 0.165), LV input shapes of
   :func:`node.synth.pet.tac.sample_input_shape` (external: bolus width ``beta`` x 1.5 and late
   plateau x 1.5, a slower infusion), one Rb-82 distribution volume U(2.8, 4.0) mL/g per series,
   RV lead U(2, 6) s, vascular fraction U(0.08, 0.12) per segment, no motion.
7. **Measurement** (:func:`measure_study`): each state through
   :func:`node.quant.mbf.analyse_dynamic` with the pipeline's defaults (septal RV spill-over on,
   partial-volume correction on, the site resolution 9 mm: never the phantom's own blur), flow
   reserve by :func:`node.quant.kinetics.flow_reserve`, wrapped in a
   :class:`node.pipelines.pet_mbf.PetMbfResult`, and the network input by the one shared adapter
   :func:`node.ai.pet_mfr.polar_maps_and_valid`.
8. **Labels**: ``impaired`` = the seed's rule on the node's *measured* values (any of the 17
   segment MFRs < 2.0; label noise of its own, against ``true_impaired``, the rule on the truth);
   ``territory_impaired`` the node's territory rule (territory MFR < 2.0, measured).

Arrays of a cohort (:class:`PetCohort`, one ``.npz`` per split, :func:`write_cohort` /
:func:`load_cohort`; N cases): ``maps`` [N, 3, 40, 72] float32 (rest MBF, stress MBF in mL/min/g,
MFR; :class:`~node.quant.segments.PolarGrid` rows apex (0) .. base (39), column ``j`` azimuth
``5 j`` deg from anterior toward septum; 0 where not valid), ``map_valid`` [N, 40, 72],
``segment_rest`` / ``segment_stress`` / ``segment_mfr`` / ``true_segment_mfr`` [N, 17] (AHA order),
``impaired`` / ``true_impaired`` [N] int8, ``territory_impaired`` [N, 3] int8 (:data:`TERRITORIES`),
``traits`` / ``true_traits`` [N, 5] int8 (:data:`TRAITS`, recorded / true), ``defect_territory``
[N] ("" unless exactly one stenosis), ``disease`` [N] (category), ``planted_mask`` [N, 40, 72]
(the single stenosis's territory, else the smoking spot, else empty), ``trait_mask`` [N, 40, 72]
(the smoking spot, ``m < 1 - b/2``), ``phantom_fwhm_mm`` [N], ``seed`` [N] int64, ``split`` [N].
Default location: :func:`default_cohort_dir` (``$CARDIONODE_CACHE`` or ``~/.cache/cardionode``,
then ``cohorts/<version>/<split>.npz``). Build with ``bench/pet_cohort.py`` or :func:`build_cohort`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from node.ai.pet_mfr import polar_maps_and_valid
from node.imaging.volume import Volume
from node.pipelines.pet_mbf import PetMbfResult
from node.quant.kinetics import KineticModel, default_model, flow_reserve
from node.quant.mbf import StateMBF, analyse_dynamic, study_flags
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, TERRITORIES, TERRITORY_SEGMENTS, segment_of
from node.synth.pet.phantom import (
    LABELS,
    PetPhantomSpec,
    PetSeries,
    PetStudy,
    PetStudyTruth,
    make_pet_series,
)
from node.synth.pet.tac import InputShape, sample_input_shape
from node.synth.spect.phantom import PhantomSpec, draw_pose, lv_centre_mm

__all__ = [
    "PET_COHORT_VERSION",
    "TRAITS",
    "TERRITORIES",
    "TRAIT_PREVALENCE",
    "TRAIT_LABEL_FLIP",
    "DISEASE_PROBABILITIES",
    "SPLITS",
    "SPLIT_FIRST_SEED",
    "SPLIT_SEED_SPAN",
    "COHORT_SPEC",
    "Acquisition",
    "ACQUISITIONS",
    "CaseDesign",
    "PetCohort",
    "draw_design",
    "pattern_multiplier",
    "planted_masks",
    "generate_case",
    "measure_study",
    "case_arrays",
    "default_cohort_dir",
    "cohort_path",
    "write_cohort",
    "load_cohort",
    "build_cohort",
    "load_parts",
    "tiny_cohort",
]

PET_COHORT_VERSION = "cardionode-pet-cohort-1.0.0"

TRAITS: tuple[str, ...] = ("female", "diabetes", "hypertension", "dyslipidaemia", "smoking")
#: true-trait prevalences: the seed's cohort (reference section 1.1)
TRAIT_PREVALENCE: dict[str, float] = {"female": 0.489, "diabetes": 0.154, "hypertension": 0.522,
                                      "dyslipidaemia": 0.332, "smoking": 0.136}
#: probability that a recorded trait label is flipped (label noise)
TRAIT_LABEL_FLIP = 0.03

#: segment-level trait effects (multipliers of rest / stress MBF)
FEMALE_REST, FEMALE_STRESS = 1.15, 1.05
DIABETES_STRESS = (0.75, 0.90)
HYPERTENSION_REST = 1.03
#: female ripple amplitude range and periods per ring (basal, mid, apical)
RIPPLE_AMPLITUDE = (0.20, 0.30)
RIPPLE_PERIODS = {"basal": 6, "mid": 6, "apical": 4}
#: smoking spot: depth range, widths (deg, fraction of the long axis), centre ranges
SPOT_DEPTH = (0.35, 0.50)
SPOT_SIGMA_PSI_DEG = 20.0
SPOT_SIGMA_U = 0.09
SPOT_U_RANGE = (0.30, 0.85)

#: disease categories and their probabilities
DISEASE_PROBABILITIES: dict[str, float] = {"none": 0.32, "single": 0.34, "multi": 0.14, "diffuse": 0.12,
                                           "diffuse+single": 0.08}
_SINGLE_TERRITORY_P = {"LAD": 0.4, "LCx": 0.3, "RCA": 0.3}
_MULTI_TWO_P = 0.7
STENOSIS_FACTOR = (0.35, 0.80)
DIFFUSE_FACTOR = (0.45, 0.75)

SPLITS: tuple[str, ...] = ("development", "test", "external")
#: first case seed of every split; a split's seeds are first .. first + span - 1 (disjoint)
SPLIT_FIRST_SEED: dict[str, int] = {"development": 16_000_000, "test": 16_100_000, "external": 16_200_000}
SPLIT_SEED_SPAN = 100_000

#: the phantom of every case (Rb-82; blur and noise per split from :data:`ACQUISITIONS`)
COHORT_SPEC = PetPhantomSpec(tracer="Rb-82", matrix=(24, 40, 40), voxel_mm=4.8, supersample=1, noise_level=0.11)
_LEVEL_STEP = 0.2  # flow-multiplier grid of the sub-segment mixture
_NOISE_FLOOR = 0.02  # as node.synth.pet.phantom


@dataclass(frozen=True)
class Acquisition:
    """Scanner-like settings of a split: blur range (mm FWHM), voxel noise level, input-shape scaling."""

    fwhm_mm: tuple[float, float]
    noise_level: float
    input_beta_scale: float
    input_plateau_scale: float


ACQUISITIONS: dict[str, Acquisition] = {
    "development": Acquisition((8.0, 10.0), 0.11, 1.0, 1.0),
    "test": Acquisition((8.0, 10.0), 0.11, 1.0, 1.0),
    "external": Acquisition((10.0, 12.0), 0.165, 1.5, 1.5),
}


@dataclass(frozen=True)
class CaseDesign:
    """The drawn design of one case (no images): true and recorded traits, disease and patterns.

    ``stenoses`` maps a territory to its stress-MBF factor; ``diffuse_factor`` is None without
    diffuse disease; ``ripple`` (amplitude, phase rad) for true females, ``spot`` (depth, u,
    psi deg) for true smokers, else None. Flows are [17] arrays (mL/min/g) before the
    sub-segment patterns.
    """

    seed: int
    split: str
    true_traits: tuple[int, ...]
    traits: tuple[int, ...]
    disease: str
    stenoses: dict[str, float]
    diffuse_factor: float | None
    diabetes_factor: float | None
    ripple: tuple[float, float] | None
    spot: tuple[float, float, float] | None
    rest_mbf: np.ndarray
    stress_mbf: np.ndarray

    @property
    def defect_territory(self) -> str:
        """The territory of the one planted stenosis; "" when none or several."""
        return next(iter(self.stenoses)) if len(self.stenoses) == 1 else ""


def _check_split(split: str) -> Acquisition:
    if split not in ACQUISITIONS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return ACQUISITIONS[split]


def draw_design(seed: int, split: str) -> CaseDesign:
    """Draw the design of case ``seed`` of ``split`` (module docstring, steps 1-5); no images."""
    _check_split(split)
    rng = np.random.default_rng([int(seed), 0])
    true = tuple(int(rng.random() < TRAIT_PREVALENCE[t]) for t in TRAITS)
    flips = rng.random(len(TRAITS)) < TRAIT_LABEL_FLIP
    recorded = tuple(int(v) ^ int(f) for v, f in zip(true, flips, strict=True))
    female, diabetes, hypertension, _, smoking = (bool(v) for v in true)
    rest = rng.uniform(0.6, 1.4) * rng.uniform(0.9, 1.1, N_SEGMENTS)
    stress = np.minimum(rest * rng.uniform(2.6, 3.6) * rng.uniform(0.95, 1.05, N_SEGMENTS), 4.5)
    if female:
        rest, stress = rest * FEMALE_REST, stress * FEMALE_STRESS
    diabetes_factor = float(rng.uniform(*DIABETES_STRESS)) if diabetes else None
    if diabetes_factor is not None:
        stress = stress * diabetes_factor
    if hypertension:
        rest = rest * HYPERTENSION_REST
    names = list(DISEASE_PROBABILITIES)
    disease = names[int(rng.choice(len(names), p=list(DISEASE_PROBABILITIES.values())))]
    stenosed: list[str] = []
    if disease in ("single", "diffuse+single"):
        stenosed = [TERRITORIES[int(rng.choice(3, p=[_SINGLE_TERRITORY_P[t] for t in TERRITORIES]))]]
    elif disease == "multi":
        k = 2 if rng.random() < _MULTI_TWO_P else 3
        stenosed = sorted(str(t) for t in rng.choice(np.array(TERRITORIES), size=k, replace=False))
    stenoses = {t: float(rng.uniform(*STENOSIS_FACTOR)) for t in stenosed}
    for t, factor in stenoses.items():
        stress[[s - 1 for s in TERRITORY_SEGMENTS[t]]] *= factor
    diffuse_factor = float(rng.uniform(*DIFFUSE_FACTOR)) if disease.startswith("diffuse") else None
    if diffuse_factor is not None:
        stress = stress * diffuse_factor
    ripple = (float(rng.uniform(*RIPPLE_AMPLITUDE)), float(rng.uniform(0.0, 2.0 * math.pi))) if female else None
    spot = ((float(rng.uniform(*SPOT_DEPTH)), float(rng.uniform(*SPOT_U_RANGE)), float(rng.uniform(0.0, 360.0)))
            if smoking else None)
    return CaseDesign(seed=int(seed), split=split, true_traits=true, traits=recorded, disease=disease,
                      stenoses=stenoses, diffuse_factor=diffuse_factor, diabetes_factor=diabetes_factor,
                      ripple=ripple, spot=spot, rest_mbf=rest, stress_mbf=stress)


def pattern_multiplier(design: CaseDesign, state: str, u: np.ndarray, psi_deg: np.ndarray, u_cap: float) -> np.ndarray:
    """The sub-segment flow multiplier of ``state`` at long-axis ``u`` (0 apex .. 1 base) and azimuth ``psi_deg``.

    Parameters
    ----------
    design : CaseDesign
    state : "rest" | "stress"
        The ripple acts on both, the smoking spot on stress only.
    u, psi_deg : arrays (broadcast)
        Positions in the AHA coordinates of :func:`node.quant.segments.segment_of`.
    u_cap : float
        The apical cap's share of ``u`` (segment 17).

    Returns
    -------
    array
        Multiplier (dimensionless), 1 without a planted pattern.
    """
    u_arr, psi = np.broadcast_arrays(np.asarray(u, dtype=float), np.asarray(psi_deg, dtype=float))
    out = np.ones(u_arr.shape)
    if design.ripple is not None:
        amplitude, phase = design.ripple
        seg = segment_of(u_arr, psi, u_cap)
        periods = np.where(seg <= 12, RIPPLE_PERIODS["basal"], np.where(seg <= 16, RIPPLE_PERIODS["apical"], 0))
        out = out * (1.0 + amplitude * np.sin(periods * np.radians(psi) + phase) * (periods > 0))
    if design.spot is not None and state == "stress":
        depth, u0, psi0 = design.spot
        d_psi = np.mod(psi - psi0 + 180.0, 360.0) - 180.0
        out = out * (1.0 - depth * np.exp(-0.5 * ((d_psi / SPOT_SIGMA_PSI_DEG) ** 2 + ((u_arr - u0) / SPOT_SIGMA_U) ** 2)))
    return out


def planted_masks(design: CaseDesign) -> tuple[np.ndarray, np.ndarray]:
    """``(planted_mask, trait_mask)`` on the polar grid, bool [40, 72] each (module docstring)."""
    grid = DEFAULT_GRID
    trait = np.zeros(grid.shape, dtype=bool)
    if design.spot is not None:
        uu, pp = np.meshgrid(grid.u_centres, grid.psi_centres_deg, indexing="ij")
        no_ripple = replace(design, ripple=None)
        trait = pattern_multiplier(no_ripple, "stress", uu, pp, grid.u_cap) < 1.0 - 0.5 * design.spot[0]
    if design.defect_territory:
        planted = np.isin(grid.segment_ids(), TERRITORY_SEGMENTS[design.defect_territory])
    else:
        planted = trait.copy()
    return planted, trait


def _correlated_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white noise smoothed over 1 voxel (sigma) in space: the phantom's noise model."""
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.0, 1.0, 1.0, 1.0), mode="wrap")
    kernel = np.zeros((9, 9, 9))
    kernel[4, 4, 4] = 1.0
    return smooth / math.sqrt(float(np.sum(ndimage.gaussian_filter(kernel, 1.0, mode="constant") ** 2)))


def _add_noise(blurred: np.ndarray, series: PetSeries, model: KineticModel, noise_level: float,
               rng: np.random.Generator) -> np.ndarray:
    """The phantom's noise (:mod:`node.synth.pet.phantom`, reference 5.5) on a noise-free series."""
    schedule = series.truth.schedule
    n_f = schedule.n_frames
    exposure = schedule.duration_s * schedule.mean_decay_factor(model.decay_constant_per_s)
    floor = _NOISE_FLOOR * blurred.reshape(n_f, -1).max(axis=1)
    shape_sd = np.sqrt(np.maximum(blurred, floor[:, None, None, None]) / exposure[:, None, None, None])
    myo_last = float(blurred[-1][series.truth.myocardium_fraction >= 0.5].mean())
    scale = noise_level * myo_last / math.sqrt(myo_last / exposure[-1])
    return blurred + scale * shape_sd * _correlated_noise(blurred.shape, rng)


def _voxel_coordinates(series: PetSeries) -> tuple[np.ndarray, np.ndarray, float]:
    """``(u, psi_deg, u_cap)`` of every voxel centre (flattened) in the phantom's LV frame."""
    truth = series.truth
    shape = truth.labels.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    affine = series.volume.affine
    lv = truth.frame.to_lv(idx @ affine[:3, :3].T + affine[:3, 3])
    geom = truth.lv_geometry
    psi = np.mod(np.degrees(np.arctan2(lv[:, 2], lv[:, 1])), 360.0)
    return lv[:, 0] / geom.c_epi, psi, geom.apex_wall_mm / geom.c_epi


def _patterned_series(design: CaseDesign, state: str, mbf: np.ndarray, rng: np.random.Generator, *,
                      spec: PetPhantomSpec, model: KineticModel, noise_level: float,
                      common: dict[str, object]) -> PetSeries:
    """One series with the case's sub-segment patterns and the split's noise (module docstring, step 5)."""
    base = make_pet_series(mbf, rng, spec=spec, model=model, state=state, **common)  # type: ignore[arg-type]
    blurred = np.asarray(base.noise_free.voxels, dtype=float)
    truth = base.truth
    u, psi, u_cap = _voxel_coordinates(base)
    m = pattern_multiplier(design, state, u, psi, u_cap)
    still = truth.label_fractions.reshape(len(LABELS), -1)
    segment_mbf = mbf.copy()
    if not np.allclose(m, 1.0):
        def segments_only(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
            """Noise-free series of the segments alone, with per-voxel fractions x ``weight``."""
            fractions = np.zeros_like(still)
            fractions[:N_SEGMENTS] = still[:N_SEGMENTS] * weight[None, :]
            kw = dict(common, still_fractions=fractions.reshape(truth.label_fractions.shape))
            return np.asarray(make_pet_series(values, rng, spec=spec, model=model, state=state, **kw).noise_free.voxels,  # type: ignore[arg-type]
                              dtype=float)

        blurred = blurred - segments_only(mbf, np.ones(m.shape))
        position = m / _LEVEL_STEP
        low = np.floor(position)
        upper_weight = position - low
        for level in np.unique(np.concatenate([low, low + 1.0])):
            weight = np.where(low == level, 1.0 - upper_weight, 0.0) + np.where(low + 1.0 == level, upper_weight, 0.0)
            if np.any(weight[still[:N_SEGMENTS].sum(axis=0) > 0] > 0):
                blurred = blurred + segments_only(mbf * level * _LEVEL_STEP, weight)
        mass = still[:N_SEGMENTS]
        segment_mbf = mbf * (mass @ m) / np.maximum(mass.sum(axis=1), 1e-12)
    noisy = _add_noise(blurred, base, model, noise_level, rng) if noise_level > 0 else blurred
    territory = {t: float(np.mean(segment_mbf[[s - 1 for s in segs]])) for t, segs in TERRITORY_SEGMENTS.items()}
    truth = replace(truth, segment_mbf_ml_per_min_per_g=segment_mbf, territory_mbf_ml_per_min_per_g=territory,
                    global_mbf_ml_per_min_per_g=float(np.mean(segment_mbf)), noise_level=float(noise_level))
    axis = base.volume.frame_axis
    return PetSeries(Volume(noisy.astype(np.float32), base.volume.affine.copy(), axis),
                     Volume(blurred.astype(np.float32), base.volume.affine.copy(), axis), truth)


def _external_shape(shape: InputShape, acquisition: Acquisition) -> InputShape:
    return replace(shape, beta_s=shape.beta_s * acquisition.input_beta_scale,
                   plateau_fraction=shape.plateau_fraction * acquisition.input_plateau_scale)


def generate_case(seed: int, split: str, *, spec: PetPhantomSpec = COHORT_SPEC) -> tuple[PetStudy, np.ndarray, np.ndarray]:
    """The rest + stress phantom study of case ``seed`` of ``split`` (module docstring, steps 1-6).

    Parameters
    ----------
    seed : int
        The case's seed (a split's seeds: :data:`SPLIT_FIRST_SEED`).
    split : "development" | "test" | "external"
        Selects the acquisition (:data:`ACQUISITIONS`).
    spec : PetPhantomSpec
        Phantom grid (default :data:`COHORT_SPEC`); its blur and noise are replaced by the split's.

    Returns
    -------
    (study, traits, planted_mask)
        ``traits`` int8 [5] the recorded labels (:data:`TRAITS`), ``planted_mask`` bool [40, 72]
        (:func:`planted_masks`). ``study.parameters["design"]`` holds the :class:`CaseDesign`.
    """
    acquisition = _check_split(split)
    design = draw_design(seed, split)
    rng = np.random.default_rng([int(seed), 1])
    model = default_model(spec.tracer)
    fwhm = float(rng.uniform(*acquisition.fwhm_mm))
    spec0 = replace(spec, fwhm_mm=fwhm, noise_level=0.0)
    frame = draw_pose(PhantomSpec(shape=spec.shape, pose_jitter_deg=spec.pose_jitter_deg), rng).frame
    centre = lv_centre_mm(frame, spec.shape) + rng.uniform(-8.0, 8.0, 3)
    vascular = rng.uniform(0.08, 0.12, N_SEGMENTS)
    series: dict[str, PetSeries] = {}
    for state, mbf in (("rest", design.rest_mbf), ("stress", design.stress_mbf)):
        common: dict[str, object] = {
            "frame": frame, "grid_centre_mm": centre, "vascular_fraction": vascular,
            "input_shape": _external_shape(sample_input_shape(model, rng), acquisition),
            "rv_lead_s": float(rng.uniform(2.0, 6.0)),
            "distribution_volume_ml_per_g": float(rng.uniform(2.8, 4.0)),
        }
        if series:
            common["still_fractions"] = series["rest"].truth.label_fractions
        series[state] = _patterned_series(design, state, mbf, rng, spec=spec0, model=model,
                                          noise_level=acquisition.noise_level, common=common)
    rest_t, stress_t = series["rest"].truth, series["stress"].truth
    segment_mfr = stress_t.segment_mbf_ml_per_min_per_g / rest_t.segment_mbf_ml_per_min_per_g
    territory_mfr = {t: stress_t.territory_mbf_ml_per_min_per_g[t] / rest_t.territory_mbf_ml_per_min_per_g[t]
                     for t in TERRITORY_SEGMENTS}
    truth = PetStudyTruth(segment_mfr=segment_mfr, territory_mfr=territory_mfr,
                          global_mfr=float(stress_t.global_mbf_ml_per_min_per_g / rest_t.global_mbf_ml_per_min_per_g),
                          defect_territory=design.defect_territory or None,
                          defect_factor=design.stenoses.get(design.defect_territory) if design.defect_territory else None,
                          diffuse=design.diffuse_factor is not None,
                          impaired_territories=tuple(t for t, v in territory_mfr.items() if v < 2.0), moved_states=())
    study = PetStudy(replace(spec, fwhm_mm=fwhm, noise_level=acquisition.noise_level), series["rest"], series["stress"],
                     truth, {"design": design, "version": PET_COHORT_VERSION, "model": model.name})
    planted, _ = planted_masks(design)
    return study, np.asarray(design.traits, dtype=np.int8), planted


def measure_study(study: PetStudy) -> PetMbfResult:
    """The node's own analysis of a phantom study (module docstring, step 7), as the pipeline's result."""
    model = default_model(study.spec.tracer)
    states: dict[str, StateMBF] = {
        s.truth.state: analyse_dynamic(s.volume, state=s.truth.state, model=model, rv_spillover=True,
                                       partial_volume_correction=True,
                                       # version 1.0.0 was built before the cross-segment correction became the
                                       # default; it changes segment values only, not the polar maps the model reads
                                       cross_segment_correction=False)
        for s in (study.rest, study.stress)
    }
    rest, stress = states["rest"], states["stress"]
    reserve = flow_reserve(rest.fit, stress.fit)
    return PetMbfResult(study_instance_uid="", sources=(), accession_number="", tracer="rb82_chloride", rest=rest,
                        stress=stress, reserve=reserve, flags=study_flags(rest, stress), parametric_sources={},
                        series_uids={}, heart_rate_per_min={}, notes=("synthetic phantom (research use only)",))


def case_arrays(seed: int, split: str, *, spec: PetPhantomSpec = COHORT_SPEC) -> dict[str, np.ndarray]:
    """Generate and measure one case; its rows of every cohort array (keys of :class:`PetCohort`)."""
    study, traits, planted = generate_case(seed, split, spec=spec)
    design: CaseDesign = study.parameters["design"]  # type: ignore[assignment]
    result = measure_study(study)
    maps, valid = polar_maps_and_valid(result)
    reserve = result.reserve
    assert reserve is not None and result.rest is not None and result.stress is not None
    rest = np.array([s.mbf_ml_per_min_per_g for s in result.rest.fit.segments], dtype=np.float32)
    stress = np.array([s.mbf_ml_per_min_per_g for s in result.stress.fit.segments], dtype=np.float32)
    _, trait_mask = planted_masks(design)
    return {
        "maps": maps.astype(np.float32),
        "map_valid": valid.astype(bool),
        "segment_rest": rest,
        "segment_stress": stress,
        "segment_mfr": np.asarray(reserve.segment_mfr, dtype=np.float32),
        "true_segment_mfr": np.asarray(study.truth.segment_mfr, dtype=np.float32),
        "impaired": np.asarray(bool(np.any(np.asarray(reserve.segment_mfr) < 2.0)), dtype=np.int8),
        "true_impaired": np.asarray(bool(np.any(study.truth.segment_mfr < 2.0)), dtype=np.int8),
        "territory_impaired": np.array([reserve.territory_impaired[t] for t in TERRITORIES], dtype=np.int8),
        "traits": traits.astype(np.int8),
        "true_traits": np.asarray(design.true_traits, dtype=np.int8),
        "defect_territory": np.asarray(design.defect_territory),
        "disease": np.asarray(design.disease),
        "planted_mask": planted,
        "trait_mask": trait_mask,
        "phantom_fwhm_mm": np.asarray(study.spec.resolution_fwhm_mm, dtype=np.float32),
        "seed": np.asarray(seed, dtype=np.int64),
        "split": np.asarray(split),
    }


@dataclass(frozen=True, eq=False)
class PetCohort:
    """One split of the cohort: N cases, arrays as in the module docstring (keys of the ``.npz``)."""

    maps: np.ndarray
    map_valid: np.ndarray
    segment_rest: np.ndarray
    segment_stress: np.ndarray
    segment_mfr: np.ndarray
    true_segment_mfr: np.ndarray
    impaired: np.ndarray
    true_impaired: np.ndarray
    territory_impaired: np.ndarray
    traits: np.ndarray
    true_traits: np.ndarray
    defect_territory: np.ndarray
    disease: np.ndarray
    planted_mask: np.ndarray
    trait_mask: np.ndarray
    phantom_fwhm_mm: np.ndarray
    seed: np.ndarray
    split: np.ndarray
    version: str = PET_COHORT_VERSION

    def __len__(self) -> int:
        return int(self.seed.shape[0])


_DTYPES: dict[str, object] = {
    "maps": np.float32, "map_valid": bool, "segment_rest": np.float32, "segment_stress": np.float32,
    "segment_mfr": np.float32, "true_segment_mfr": np.float32, "impaired": np.int8, "true_impaired": np.int8,
    "territory_impaired": np.int8, "traits": np.int8, "true_traits": np.int8, "defect_territory": "<U4",
    "disease": "<U16", "planted_mask": bool, "trait_mask": bool, "phantom_fwhm_mm": np.float32, "seed": np.int64,
    "split": "<U11",
}


def _stack(rows: Iterable[dict[str, np.ndarray]]) -> PetCohort:
    rows = list(rows)
    arrays = {k: np.asarray(np.stack([np.asarray(r[k]) for r in rows]) if rows else np.zeros((0,)), dtype=dt)  # type: ignore[call-overload]
              for k, dt in _DTYPES.items()}
    return PetCohort(**arrays)


def default_cohort_dir() -> Path:
    """``$CARDIONODE_CACHE/cohorts/<version>`` (cache default ``~/.cache/cardionode``)."""
    cache = Path(os.environ.get("CARDIONODE_CACHE") or Path.home() / ".cache" / "cardionode")
    return cache / "cohorts" / PET_COHORT_VERSION


def cohort_path(split: str, directory: Path | str | None = None) -> Path:
    """Where the ``.npz`` of ``split`` lives (``directory`` default :func:`default_cohort_dir`)."""
    return Path(directory) if directory is not None and str(directory).endswith(".npz") else \
        (Path(directory) if directory is not None else default_cohort_dir()) / f"{split}.npz"


def write_cohort(cohort: PetCohort, path: Path | str) -> Path:
    """Write ``cohort`` as one compressed ``.npz`` (keys = the fields, plus ``version``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays: dict[str, Any] = {f.name: np.asarray(getattr(cohort, f.name)) for f in fields(PetCohort)}
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_cohort(path: Path | str) -> PetCohort:
    """Read a cohort written by :func:`write_cohort` (refuses another version)."""
    with np.load(Path(path)) as data:
        version = str(data["version"])
        if version != PET_COHORT_VERSION:
            raise ValueError(f"{path}: cohort version {version}, this code reads {PET_COHORT_VERSION}")
        return PetCohort(**{k: data[k] for k in _DTYPES}, version=version)


def _worker(args: tuple[int, str]) -> tuple[int, dict[str, np.ndarray] | None, str, float]:
    seed, split = args
    t0 = time.process_time()
    try:
        return seed, case_arrays(seed, split), "", time.process_time() - t0
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # e.g. LVNotFoundError (a ValueError)
        return seed, None, f"{type(exc).__name__}: {exc}", time.process_time() - t0


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def build_cohort(split: str, n: int, first_seed: int | None = None, out: Path | str | None = None, processes: int = 1,
                 progress: Callable[[int, int, int, float, str], None] | None = None) -> Path:
    """Generate, measure and write ``n`` cases of ``split``; resumable.

    Cases are the first ``n`` seeds from ``first_seed`` (default :data:`SPLIT_FIRST_SEED`) whose
    analysis succeeds (a study the node refuses, e.g. no LV found, is skipped and the next seed
    taken; the skipped seeds are reported through ``progress``). Each case is kept in
    ``<out>.parts/<seed>.npz`` as it finishes, so an interrupted build resumes.

    Parameters
    ----------
    split : str
    n : int
    first_seed : int, optional
    out : path, optional
        The ``.npz`` (default :func:`cohort_path`).
    processes : int
        Worker processes (each single-threaded).
    progress : callable(done, n, seed, cpu_seconds, error), optional

    Returns
    -------
    Path of the written ``.npz``.
    """
    _check_split(split)
    first = SPLIT_FIRST_SEED[split] if first_seed is None else int(first_seed)
    path = cohort_path(split, out)
    parts = path.with_name(path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict[str, np.ndarray] | None] = {}
    for p in parts.glob("*.npz"):
        if not p.stem.isdigit():
            continue
        try:
            with np.load(p) as data:
                done[int(p.stem)] = None if "error" in data else {k: data[k] for k in _DTYPES}
        except (OSError, ValueError, EOFError, KeyError):  # cut short by an interrupted build: redo that case
            p.unlink()

    def good() -> list[int]:
        return sorted(s for s, r in done.items() if r is not None)

    next_seed = first
    pool = ProcessPoolExecutor(max_workers=processes, initializer=_init_worker) if processes > 1 else None
    try:
        while len([s for s in good() if s >= first]) < n:
            missing = n - len([s for s in good() if s >= first])
            batch: list[int] = []
            while len(batch) < max(missing, processes):
                if next_seed not in done:
                    batch.append(next_seed)
                next_seed += 1
            jobs = [(s, split) for s in batch]
            results = pool.map(_worker, jobs) if pool is not None else map(_worker, jobs)
            for seed, row, error, cpu in results:
                done[seed] = row
                tmp = parts / f"{seed}.tmp.npz"
                if row is None:
                    np.savez(tmp, error=np.str_(error))
                else:
                    saved: dict[str, Any] = dict(row)
                    np.savez_compressed(tmp, **saved)
                tmp.replace(parts / f"{seed}.npz")  # whole parts only
                if progress is not None:
                    progress(len([s for s in good() if s >= first]), n, seed, cpu, error)
    finally:
        if pool is not None:
            pool.shutdown()
    seeds = [s for s in good() if s >= first][:n]
    return write_cohort(_stack(done[s] for s in seeds), path)  # type: ignore[misc]


def load_parts(split: str, directory: Path | str | None = None, n: int | None = None) -> PetCohort:
    """The finished cases of a build still running (or stopped): ``<split>.npz.parts`` in seed order.

    Parameters
    ----------
    split : str
    directory : path, optional
        The cohort directory or the split's ``.npz`` path (default :func:`cohort_path`).
    n : int, optional
        At most this many cases (the lowest seeds).
    """
    parts = cohort_path(split, directory)
    parts = parts.with_name(parts.name + ".parts")
    rows: list[dict[str, np.ndarray]] = []
    for p in sorted((q for q in parts.glob("*.npz") if q.stem.isdigit()), key=lambda q: int(q.stem)):
        try:
            with np.load(p) as data:
                if "error" not in data:
                    rows.append({k: data[k] for k in _DTYPES})
        except (OSError, ValueError, EOFError):  # a part being written right now
            continue
        if n is not None and len(rows) >= n:
            break
    return _stack(rows)


def tiny_cohort(n: int, seed: int, split: str = "development") -> PetCohort:
    """A small in-memory cohort of the real generator (cases ``seed`` .. ``seed + n - 1``; refused studies skipped).

    For tests and smoke training: about 2-4 CPU seconds per case.
    """
    rows: list[dict[str, np.ndarray]] = []
    s = int(seed)
    while len(rows) < n:
        row = _worker((s, split))[1]
        if row is not None:
            rows.append(row)
        s += 1
    return _stack(rows)
