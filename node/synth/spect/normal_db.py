"""Build the SYNTHETIC normal limits of :mod:`node.quant.normal_limits` (offline tool).

``python -m node.synth.spect.normal_db build|show`` simulates a normal cohort per
tracer and sex, turns it into limits with the node's own rule
(:func:`node.quant.normal_limits.build_normal_limits`), calibrates the measured
deficit of absent uptake on defect cases with known truth
(:func:`calibrate_absent_uptake`) and writes the versioned files and their
manifest (:func:`node.quant.normal_limits.write_normal_limits`). The node only
loads those files; it never imports this module.

THESE LIMITS ARE SYNTHETIC: built from simulated subjects, not from patients, and
not a clinical normal database.

The simulated normal cohort (reference note section 7.2), two builders:

* ``phantom`` (version 2, the one the pipeline loads): 40 voxel phantoms per tracer
  and sex from :mod:`node.synth.spect.phantom` (ungated, 64^3 x 6.4 mm, Poisson noise),
  localised and sampled exactly as the SPECT pipeline does
  (:func:`phantom_polar_map` = :func:`node.quant.polar_map.perfusion_polar_map` on
  the summed reconstruction). Per subject: ED/ES semi-axes and wall x U(0.9, 1.1) (+-10 %),
  pose jitter +-15 deg, counts U(0.5, 1.5) x the tracer default (Tl-201 = 0.3 x Tc-99m),
  FWHM U(10, 13) mm (Tc-99m) / U(12, 15) mm (Tl-201), attenuation-like reduction
  inferior U(10, 20) % (men, centre jitter +-10 deg) or anterior U(5, 15) % (women,
  +-20 deg). See :func:`phantom_normal_subject_spec`.
* ``analytic`` (version 1, used by the unit tests of the scoring rules): the same
  population evaluated directly in polar-map space (:class:`AnalyticPolarModel`):
  activity blurred along the mid-wall surface, slab partial-volume recovery
  ``erf(t / (2 sqrt(2) sigma))``, blurred truncation at the base plane, a +-10 deg
  azimuthal jitter of the attenuation pattern and +-3 mm of the base, counts
  U(80, 400) per voxel (Tl-201 x 0.3) and Gaussian cell noise of relative SD
  ``1 / sqrt(2 * counts * recovery)``; attenuation as above (apex 50 % of the base
  reduction in men, Tl-201 reductions x 1.2).

After the limits, defect cases per tracer and sex calibrate the measured deficit of
absent uptake (:func:`calibrate_absent_uptake`): 12 whole-territory defects of
severity U(0.3, 0.9) (segment and TPD calibration), then 24 defects over a whole
territory, its basal + mid or its mid + apical + apex rings (cycled), severity
U(0.2, 0.85) (TPD calibration only). The cohort mean cell areas are stored as
``cell_area`` (the fixed area weights of the TPD).

Regenerate the shipped files with::

    python -m node.synth.spect.normal_db build --n 40 --source phantom --version 2   # ~4 min on 2 cores
    python -m node.synth.spect.normal_db build --n 40 --source analytic --version 1  # ~2 s

Polar maps are ``[n_u, n_psi]`` on :data:`node.quant.segments.DEFAULT_GRID`
(counts, or relative counts for the analytic model); cell areas are mm^2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

from node.imaging import radiopharmaceuticals
from node.imaging.volume import Volume
from node.quant.normal_limits import (
    DATA_DIR,
    SEXES,
    SYNTHETIC_LABEL,
    TRACERS,
    NormalLimits,
    available_normal_limits,
    build_normal_limits,
    normalise_sex,
    normalise_tracer,
    write_normal_limits,
)
from node.quant.orientation import locate_lv
from node.quant.polar_map import perfusion_polar_map
from node.quant.scores import ScoreParameters, score_map, weighted_median
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS, PolarGrid
from node.synth.geometry import NORMAL, LVShape
from node.synth.spect.phantom import (
    DEFAULT_COUNTS_PER_VOXEL,
    RINGS,
    TERRITORY_RING_SETS,
    PhantomSpec,
    make_acquisition,
    territory_defect,
)

__all__ = [
    "AnalyticPolarModel",
    "polar_cell_areas",
    "random_normal_subject",
    "analytic_normal_cohort",
    "phantom_normal_subject_spec",
    "phantom_polar_map",
    "phantom_normal_cohort",
    "DefectCase",
    "analytic_defect_cases",
    "phantom_defect_cases",
    "calibrate_absent_uptake",
    "tpd_calibration_factor",
    "main",
]


# --------------------------------------------------------------------------------------------
# the analytic polar-map model (cohort simulation in polar-map space)
# --------------------------------------------------------------------------------------------


def polar_cell_areas(a_mm: float, c_mm: float, t_mm: float, grid: PolarGrid = DEFAULT_GRID) -> np.ndarray:
    """Mid-wall surface area (mm^2) of every polar cell of a truncated prolate ellipsoid LV.

    The mid-wall surface has semi-axes ``a + t/2`` (short) and ``c + t/2`` (long),
    truncated at the equatorial base plane. Cavity rows split the cavity length
    ``c`` (base plane to endocardial apex) evenly; cap rows cover the remaining
    ``t/2`` to the mid-wall apex. Returns ``[n_u, n_psi]``.
    """
    am, cm = a_mm + t_mm / 2.0, c_mm + t_mm / 2.0
    n_cav = grid.n_u - grid.n_cap
    # distance from the base plane (x) at row edges; rows run apex -> base
    cav_edges = np.linspace(c_mm, 0.0, n_cav + 1)
    cap_edges = np.linspace(cm, c_mm, grid.n_cap + 1)
    edges = np.concatenate([cap_edges[:-1], cav_edges])
    areas = np.empty(grid.n_u)
    for i in range(grid.n_u):
        xs = np.linspace(edges[i + 1], edges[i], 33)
        r = am * np.sqrt(np.clip(1.0 - (xs / cm) ** 2, 0.0, None))
        seg = np.hypot(np.diff(xs), np.diff(r))
        areas[i] = np.sum(0.5 * (r[1:] + r[:-1]) * seg) * 2.0 * np.pi / grid.n_psi
    return np.repeat(areas[:, None], grid.n_psi, axis=1)


@dataclass(frozen=True)
class AnalyticPolarModel:
    """One simulated subject evaluated directly in polar-map space.

    Lengths in mm, angles in degrees. ``defects`` maps an AHA segment (1..17) to
    its activity reduction (0..1). ``attenuation`` is ``(reduction, centre_psi_deg,
    half_width_deg, apex_weight)``: uptake multiplied by
    ``1 - reduction * taper(psi) * ramp(u)``, with a cosine taper over
    ``+-half_width`` and a long-axis ramp from ``apex_weight`` (apex) to 1 (base).
    """

    a_mm: float = 28.0
    c_mm: float = 65.0
    t_mm: float = 10.0
    fwhm_mm: float = 11.0
    counts_per_voxel: float = 200.0
    attenuation: tuple[float, float, float, float] = (0.0, 180.0, 75.0, 0.5)
    base_shift_mm: float = 0.0
    defects: tuple[tuple[int, float], ...] = ()
    grid: PolarGrid = DEFAULT_GRID

    @property
    def sigma_mm(self) -> float:
        return self.fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    def _row_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: distance of the row centre from the base plane (mm), mid-wall radius, row length (mm)."""
        g = self.grid
        am, cm = self.a_mm + self.t_mm / 2.0, self.c_mm + self.t_mm / 2.0
        n_cav = g.n_u - g.n_cap
        cav_edges = np.linspace(self.c_mm, 0.0, n_cav + 1)
        cap_edges = np.linspace(cm, self.c_mm, g.n_cap + 1)
        edges = np.concatenate([cap_edges[:-1], cav_edges])
        x_centre = 0.5 * (edges[1:] + edges[:-1])
        radius = am * np.sqrt(np.clip(1.0 - (x_centre / cm) ** 2, 0.0, None))
        r_edges = am * np.sqrt(np.clip(1.0 - (edges / cm) ** 2, 0.0, None))
        length = np.hypot(np.diff(edges), np.diff(r_edges))
        return x_centre, radius, length

    def activity(self) -> np.ndarray:
        """Unblurred relative activity ``[n_u, n_psi]`` (1 = normal myocardium)."""
        g = self.grid
        seg = g.segment_ids()
        act = np.ones(g.shape)
        for segment, severity in self.defects:
            if not 1 <= segment <= 17 or not 0.0 <= severity <= 1.0:
                raise ValueError(f"defect needs segment 1..17 and severity 0..1, got {segment}, {severity}")
            act = np.where(seg == segment, act * (1.0 - severity), act)
        reduction, centre, half_width, apex_weight = self.attenuation
        if reduction > 0:
            dpsi = np.mod(g.psi_centres_deg - centre + 180.0, 360.0) - 180.0
            taper = np.where(np.abs(dpsi) < half_width, 0.5 * (1.0 + np.cos(np.pi * dpsi / half_width)), 0.0)
            ramp = apex_weight + (1.0 - apex_weight) * g.u_centres
            act = act * (1.0 - reduction * ramp[:, None] * taper[None, :])
        return act

    def expected_map(self) -> np.ndarray:
        """Noise-free measured map ``[n_u, n_psi]`` (relative counts, 1 = fully recovered wall)."""
        x_centre, radius, length = self._row_geometry()
        sigma = self.sigma_mm
        act = self.activity()
        # blur along the surface: azimuthal (row-specific sigma, circular) then long axis
        blurred = np.empty_like(act)
        cell_deg = 360.0 / self.grid.n_psi
        for i in range(self.grid.n_u):
            arc = max(radius[i], 1e-3) * np.radians(cell_deg)
            s_cells = sigma / arc
            if s_cells > self.grid.n_psi:
                blurred[i] = act[i].mean()
            else:
                blurred[i] = gaussian_filter1d(act[i], s_cells, mode="wrap")
        mean_len = float(np.mean(length))
        blurred = gaussian_filter1d(blurred, sigma / mean_len, axis=0, mode="nearest")
        recovery = erf(self.t_mm / (2.0 * np.sqrt(2.0) * sigma))
        base = 0.5 * (1.0 + erf((x_centre + self.base_shift_mm) / (np.sqrt(2.0) * sigma)))
        return blurred * recovery * base[:, None]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Noisy map and cell areas ``([n_u, n_psi], [n_u, n_psi])``."""
        expected = self.expected_map()
        rel_sd = 1.0 / np.sqrt(2.0 * self.counts_per_voxel * np.clip(expected, 1e-3, None))
        noisy = expected * (1.0 + rel_sd * rng.standard_normal(expected.shape))
        return np.clip(noisy, 0.0, None), polar_cell_areas(self.a_mm, self.c_mm, self.t_mm, self.grid)


def random_normal_subject(
    tracer: str, sex: str, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> AnalyticPolarModel:
    """Draw one normal subject of the synthetic cohort (parameters in the module docstring)."""
    tracer = normalise_tracer(tracer)
    sex = normalise_sex(sex)
    if sex not in SEXES:
        raise ValueError("the synthetic cohort is simulated per sex: 'M' or 'F'")
    scale = rng.uniform(0.9, 1.1, size=3)
    tl = tracer == "tl201"
    counts = rng.uniform(80.0, 400.0) * (0.3 if tl else 1.0)
    fwhm = rng.uniform(12.0, 15.0) if tl else rng.uniform(10.0, 13.0)
    factor = 1.2 if tl else 1.0
    jitter = rng.uniform(-10.0, 10.0)
    if sex == "M":
        attenuation = (factor * rng.uniform(0.10, 0.20), 180.0 + jitter, 75.0, 0.5)
    else:
        attenuation = (factor * rng.uniform(0.05, 0.15), 0.0 + 2.0 * jitter, 60.0, 0.6)
    return AnalyticPolarModel(
        a_mm=28.0 * scale[0],
        c_mm=65.0 * scale[1],
        t_mm=10.0 * scale[2],
        fwhm_mm=fwhm,
        counts_per_voxel=counts,
        attenuation=attenuation,
        base_shift_mm=rng.uniform(-3.0, 3.0),
        grid=grid,
    )


def analytic_normal_cohort(
    tracer: str, sex: str, n: int, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated normal polar maps and their cell areas, each ``[n, n_u, n_psi]``."""
    maps, weights = [], []
    for _ in range(n):
        values, w = random_normal_subject(tracer, sex, rng, grid).sample(rng)
        maps.append(values)
        weights.append(w)
    return np.stack(maps), np.stack(weights)


# --------------------------------------------------------------------------------------------
# voxel-phantom cohort, defect cases, calibration, command line
# --------------------------------------------------------------------------------------------


CohortBuilder = Callable[[str, str, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def phantom_normal_subject_spec(tracer: str, sex: str, rng: np.random.Generator) -> PhantomSpec:
    """A :class:`~node.synth.spect.phantom.PhantomSpec` of one normal subject of the voxel-phantom cohort.

    Shape: ED/ES semi-axes and wall each scaled by U(0.9, 1.1); counts U(0.5, 1.5) x the
    tracer default; FWHM the tracer's typical resolution +- 1.5 mm (uniform: Tc-99m 10.5-13.5,
    Tl-201 12-15 mm, ``node.imaging.radiopharmaceuticals``); pose jitter
    +-15 deg (synth default); attenuation-like artefact amplitude U(0.10, 0.20) inferior
    (men, centre jitter +-10 deg) or U(0.05, 0.15) anterior (women, +-20 deg); ungated
    (perfusion limits use summed images).
    """
    tracer_key, sex_key = normalise_tracer(tracer), normalise_sex(sex)
    scale_a, scale_c, scale_t = rng.uniform(0.9, 1.1, size=3)
    base = NORMAL
    shape = LVShape(
        "normal-cohort",
        base.ed_a_mm * scale_a,
        base.ed_c_mm * scale_c,
        base.wall_mm * scale_t,
        base.es_a_mm * scale_a,
        base.es_c_mm * scale_c,
    )
    tl = tracer_key == "tl201"
    synth_tracer = "tl201" if tl else str(rng.choice(["tc99m_sestamibi", "tc99m_tetrofosmin"]))
    radiopharmaceutical = radiopharmaceuticals.TRACERS[synth_tracer]
    counts = DEFAULT_COUNTS_PER_VOXEL * radiopharmaceutical.relative_counts * rng.uniform(0.5, 1.5)
    fwhm = radiopharmaceutical.typical_fwhm_mm + rng.uniform(-1.5, 1.5)
    amplitude = rng.uniform(0.10, 0.20) if sex_key == "M" else rng.uniform(0.05, 0.15)
    return PhantomSpec(
        shape=shape,
        tracer=synth_tracer,
        sex=sex_key,
        n_gates=0,
        fwhm_mm=float(fwhm),
        counts_per_voxel=float(counts),
        attenuation_artefact=float(amplitude),
        attenuation_centre_jitter_deg=10.0 if sex_key == "M" else 20.0,
    )


def phantom_polar_map(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The SPECT pipeline's perfusion sampling of a summed volume: ``(counts [n_u, n_psi], areas mm^2)``.

    Locates the LV (:func:`node.quant.orientation.locate_lv`) and calls
    :func:`node.quant.polar_map.perfusion_polar_map`, the single entry point the
    pipeline uses, so that normal limits and patients are sampled identically.
    """
    polar, _ = perfusion_polar_map(volume, locate_lv(volume))
    return np.asarray(polar.values, dtype=float), np.asarray(polar.weights, dtype=float)


def phantom_normal_cohort(
    tracer: str, sex: str, n: int, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normal voxel phantoms (:mod:`node.synth.spect.phantom`) sampled by the pipeline's polar-map sampler."""
    maps, weights = [], []
    for _ in range(n):
        spec = phantom_normal_subject_spec(tracer, sex, rng)
        acquisition = make_acquisition(spec, "rest", rng)
        values, w = phantom_polar_map(acquisition.summed)
        maps.append(values)
        weights.append(w)
    return np.stack(maps), np.stack(weights)


DefectCase = tuple[np.ndarray, np.ndarray, float, np.ndarray]  # counts, areas, true TPD %, true segment deficit [17]
DefectCases = Callable[..., list[DefectCase]]  # (tracer, sex, n, rng, partial=False)
_CAL_TERRITORIES = ("LAD", "LCx", "RCA")


def _calibration_defect(i: int, partial: bool, rng: np.random.Generator) -> tuple[str, tuple[str, ...], float]:
    """Territory, rings and severity of calibration case ``i``.

    ``partial=False``: the whole territory ``i mod 3`` (LAD, LCx, RCA), severity U(0.3, 0.9)
    (segment and TPD calibration). ``partial=True``: territory ``i mod 3`` within the rings
    ``(i div 3) mod 3`` of ``node.synth.spect.phantom.TERRITORY_RING_SETS`` (whole, basal + mid,
    mid + apical + apex), severity
    U(0.2, 0.85) (TPD calibration only: spans the defect sizes and severities TPD is used on).
    """
    territory = _CAL_TERRITORIES[i % 3]
    if not partial:
        return territory, TERRITORY_RING_SETS[0], float(rng.uniform(0.3, 0.9))
    ring_set = TERRITORY_RING_SETS[(i // 3) % len(TERRITORY_RING_SETS)]
    return territory, ring_set, float(rng.uniform(0.2, 0.85))


def analytic_defect_cases(
    tracer: str, sex: str, n: int, rng: np.random.Generator, partial: bool = False
) -> list[DefectCase]:
    """``n`` analytic-model subjects with a territory defect (:func:`_calibration_defect`).

    Returns ``(counts [n_u, n_psi], areas, true TPD %, true segment deficit [17])``
    per case; true TPD = area-weighted mean deficit x 100.
    """
    cases = []
    seg = DEFAULT_GRID.segment_ids()
    for i in range(n):
        territory, rings, severity = _calibration_defect(i, partial, rng)
        allowed = {s for ring in rings for s in RINGS[ring]}
        segments = tuple(s for s in TERRITORY_SEGMENTS[territory] if s in allowed)
        subject = replace(random_normal_subject(tracer, sex, rng), defects=tuple((s, severity) for s in segments))
        values, w = subject.sample(rng)
        deficit = np.where(np.isin(seg, segments), severity, 0.0)
        seg_truth = np.array([severity if s in segments else 0.0 for s in range(1, 18)])
        cases.append((values, w, float(100.0 * np.sum(w * deficit) / np.sum(w)), seg_truth))
    return cases


def phantom_defect_cases(
    tracer: str, sex: str, n: int, rng: np.random.Generator, partial: bool = False
) -> list[DefectCase]:
    """``n`` voxel phantoms (cohort spec) with a territory defect (:func:`_calibration_defect`); truth from synth."""
    cases = []
    for i in range(n):
        spec = phantom_normal_subject_spec(tracer, sex, rng)
        territory, rings, severity = _calibration_defect(i, partial, rng)
        spec = replace(spec, defects=(territory_defect(territory, severity, rings=rings),))
        acquisition = make_acquisition(spec, "stress", rng)
        values, w = phantom_polar_map(acquisition.summed)
        truth = acquisition.truth
        cases.append((values, w, float(truth.tpd_pct), np.asarray(truth.segment_deficit, dtype=float)))
    return cases


def calibrate_absent_uptake(
    limits: NormalLimits, cases: list[DefectCase], tpd_cases: Sequence[DefectCase] = ()
) -> tuple[float, float]:
    """Measured deficit of absent uptake ``(segment, TPD)`` from defect cases with known truth.

    Each case is scored without calibration (:func:`node.quant.scores.score_map`
    defaults, ``d_absent = 1``). Segment: the median over the defect segments (true
    deficit >= 0.3) of ``cases`` (whole-territory defects) of measured / true deficit,
    the measured one being the area-weighted median cell deficit of the segment.
    TPD: the factor ``f`` that minimises the squared error, in TPD points, of the
    calibrated TPD ``m / f`` against the truth over ``cases`` and ``tpd_cases``
    (partial territories, milder defects) with a true TPD >= 5 %:
    ``f = sum(m^2) / sum(m t)``, refitted once without cases whose error exceeds 3
    robust SDs (a failed localisation). The acceptance of TPD is in absolute points,
    so large defects, where a wrong factor costs most points, weigh most; a median
    of ratios weighs a 5 % and a 30 % defect alike and left severe Tl-201 defects
    +1-2.5 points high (measured/true grows by ~6 % from mild small to severe large
    Tl-201 defects; 3 % for Tc-99m). The segment factor uses the median to be robust
    to the odd failed localisation; both are clipped to [0.5, 1.0].
    """
    raw = replace(limits, absent_uptake_deficit=1.0, tpd_absent_uptake_deficit=1.0)
    seg = limits.grid.segment_ids()
    seg_ratios, tpd_pairs = [], []
    for k, (values, w, tpd_true, seg_true) in enumerate(list(cases) + list(tpd_cases)):
        result = score_map(values, w, raw, ScoreParameters())
        if tpd_true >= 5.0:
            tpd_pairs.append((result.tpd_pct, tpd_true))
        if k >= len(cases):
            continue  # partial-territory cases calibrate the TPD only
        for s in range(1, 18):
            if seg_true[s - 1] >= 0.3:
                m = seg == s
                seg_ratios.append(weighted_median(result.deficit_map[m], w[m]) / seg_true[s - 1])
    if not seg_ratios or not tpd_pairs:
        raise ValueError("calibration needs defect cases with segment deficits >= 0.3 and a true TPD >= 5 %")
    return float(np.clip(np.median(seg_ratios), 0.5, 1.0)), float(np.clip(tpd_calibration_factor(np.asarray(tpd_pairs)), 0.5, 1.0))


def tpd_calibration_factor(pairs: np.ndarray) -> float:
    """Least-squares factor ``f`` of calibrated TPD ``m / f`` against truth ``t`` (``pairs`` [n, (m, t)])."""
    m, t = pairs[:, 0], pairs[:, 1]
    f = float(np.sum(m**2) / np.sum(m * t))
    error = m / f - t
    spread = 1.4826 * float(np.median(np.abs(error - np.median(error))))
    keep = np.abs(error) <= max(3.0 * spread, 0.5)
    return float(np.sum(m[keep] ** 2) / np.sum(m[keep] * t[keep]))


_BUILDERS: dict[str, tuple[CohortBuilder, DefectCases, str]] = {
    "analytic": (analytic_normal_cohort, analytic_defect_cases, "synthetic-analytic-polar-model"),
    "phantom": (phantom_normal_cohort, phantom_defect_cases, "synthetic-voxel-phantoms-sampled"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.synth.spect.normal_db build|show``."""
    parser = argparse.ArgumentParser(prog="python -m node.synth.spect.normal_db", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="simulate the synthetic normal cohorts and write the limits files")
    b.add_argument("--n", type=int, default=40, help="subjects per tracer and sex (default 40)")
    b.add_argument("--source", choices=sorted(_BUILDERS), default="analytic")
    b.add_argument("--seed", type=int, default=20261121)
    b.add_argument("--version", default="1")
    b.add_argument("--tracers", nargs="+", default=list(TRACERS))
    b.add_argument("--sexes", nargs="+", default=list(SEXES))
    b.add_argument(
        "--n-calibration", type=int, default=24, help="whole-territory defect cases (segment + TPD calibration)"
    )
    b.add_argument(
        "--n-tpd-calibration", type=int, default=48, help="further partial-territory defect cases (TPD calibration)"
    )
    b.add_argument("--out", type=Path, default=DATA_DIR)
    sub.add_parser("show", help="list the installed normal-limit files")
    args = parser.parse_args(argv)
    if args.command == "show":
        for e in available_normal_limits():
            print(f"{e['file']}: {e['tracer']} {e['sex']} v{e['version']} {e['source']} n={e['n_subjects']}")
        print(SYNTHETIC_LABEL)
        return 0
    builder, defect_cases, source = _BUILDERS[args.source]
    command = (
        f"python -m node.synth.spect.normal_db build --n {args.n} --source {args.source} --seed {args.seed} "
        f"--version {args.version} --n-calibration {args.n_calibration} --n-tpd-calibration {args.n_tpd_calibration}"
    )
    for i, tracer in enumerate(args.tracers):
        for j, sex in enumerate(args.sexes):
            tracer_key, sex_key = normalise_tracer(tracer), normalise_sex(sex)
            seed = args.seed + 1000 * i + 100 * j
            rng = np.random.default_rng(seed)
            maps, weights = builder(tracer_key, sex_key, args.n, rng)
            limits = build_normal_limits(maps, weights, tracer_key, sex_key, args.version, source)
            if args.n_calibration > 0:
                cases = defect_cases(tracer_key, sex_key, args.n_calibration, rng)
                tpd_cases = defect_cases(tracer_key, sex_key, args.n_tpd_calibration, rng, partial=True)
                d_segment, d_tpd = calibrate_absent_uptake(limits, cases, tpd_cases)
                limits = replace(limits, absent_uptake_deficit=d_segment, tpd_absent_uptake_deficit=d_tpd)
            entry = write_normal_limits(limits, args.out, seed, command)
            print(
                f"{entry['file']}: mean {limits.mean.mean():.3f}, median SD {np.median(limits.sd):.3f}, "
                f"absent-uptake deficit {limits.absent_uptake_deficit:.3f} (TPD {limits.tpd_absent_uptake_deficit:.3f}), "
                f"n={limits.n_subjects} ({source})"
            )
    print(SYNTHETIC_LABEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
