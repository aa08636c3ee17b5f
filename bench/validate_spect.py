"""Validation figures of the SPECT MPI quantification on synthetic phantoms (issue 3).

Regenerates every figure of docs/validation.md (issue-3 sections) over N random seeds:

    .venv/bin/python bench/validate_spect.py --seeds 60 --first-seed 2000 [--json out.json] [--markdown]

For each seed it simulates (node.synth, Tier A: analytic LV, Gaussian blur FWHM 12 mm,
Poisson noise at the default clinical count level, 64^3 x 6.4 mm, pose jitter +-15 deg):

* A: a gated normal phantom (8 gates on even seeds, 16 on odd), random sex, attenuation-like
  artefact -> long-axis error, sampling error, EF/EDV/ESV (noisy and noise-free), normal TPD,
  phase statistics of a normal;
* B: the same with a delayed lateral wall (LBBB-like, +90 deg) -> phase of a delayed wall;
* C: an ungated defect phantom (territory, contiguous rings, severity 0.25/0.5/0.75 +- 0.05,
  Tc-99m or Tl-201) -> segment scores, SSS, TPD;
* D: a gated small heart (EDV 38 mL) -> small-heart volume/EF bias;
* E: two noise-free ungated phantoms, one with a random 1-4-segment defect in segments 1-16 and
  one with an apical-cap defect (17 + one of 13-16), as in tests/quant/test_sampling.py ->
  per-phantom sampling error (all 17 segments within 5 % of max of the blurred truth) and apex
  landmark error. E draws from its own generator (seed, 5), so A-D are the same with or without
  it;
* F (only with ``--parts F``): a gated normal phantom (8 gates on even seeds, 16 on odd) seen
  noise-free and at 0.5, 1, 2 and 4 x the default clinical count level -> how the phase
  statistics of the pipeline's defaults depend on the count level. F draws from (seed, 6).

* G (only with ``--parts G``): one ungated defect phantom of part C's distribution from its
  own generator (seed, 77), for larger score samples; ``--tracer`` fixes its tracer.

* H (only with ``--parts H``): an ungated rest phantom with a hot liver next to the inferior wall and
  one with a hot bowel loop, each from ``default_rng(seed)`` as in tests/quant/test_orientation.py
  -> long-axis and centre error of the classical localisation beside a hot neighbour.

* I (only with ``--parts I``): a gated normal as in part A from its own generator (seed, 9), its
  noisy gates and their noise-free expectation through the same location and surface at
  prefilter sigmas 4, 8, 12 and 16 mm -> how much PSD and bandwidth move with the count noise
  alone, for the pipeline and for the phases reduced to the phantom's own phase model (a
  yardstick of what the counts allow; see ``_phase_noise_floor``).

``--parts`` picks the parts (default ``ABCDE``; A-D always run together).

It uses the pipeline's own functions and wiring (locate_lv, perfusion_polar_map,
prefilter_gated_voxels + sample_gated_polar_maps on the summed mid-wall surface,
measure_function, score_map, analyse_phase) and the shipped SYNTHETIC normal limits.
Errors are measured minus truth. All of this is synthetic: nothing here is a clinical
validation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from node.imaging.volume import Volume
from node.quant.function import measure_function
from node.quant.lv_frame import LVLocation
from node.quant.normal_limits import load_normal_limits
from node.quant.orientation import locate_lv
from node.quant.phase import (
    PHASE_PREFILTER_SIGMA_MM,
    PhaseParameters,
    PhaseResult,
    PhaseStatistics,
    analyse_phase,
    first_harmonic,
    phase_statistics,
    prefilter_gated_voxels,
)
from node.quant.polar_map import (
    MidWallSurface,
    grid_rows_z,
    midwall_surface_rows,
    perfusion_polar_map,
    sample_gated_polar_maps,
)
from node.quant.scores import score_map
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.anatomy import Defect
from node.synth.geometry import LATERAL_DELAY, SMALL
from node.synth.spect.phantom import (
    TERRITORY_RING_SETS,
    PhantomSpec,
    lv_centre_mm,
    make_acquisition,
    territory_defect,
)


@dataclass
class Figures:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(float(value))

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for key, vals in self.values.items():
            a = np.asarray(vals, dtype=float)
            out[key] = {
                "n": int(a.size),
                "mean": float(a.mean()),
                "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                "worst": float(a[np.argmax(np.abs(a))]),
                "min": float(a.min()),
                "max": float(a.max()),
            }
        return out


def _axis_error_deg(measured: np.ndarray, truth: np.ndarray) -> float:
    c = abs(float(np.dot(measured, truth)) / (np.linalg.norm(measured) * np.linalg.norm(truth)))
    return float(np.degrees(np.arccos(min(1.0, c))))


def _gated_phase(
    frames: Volume, location: LVLocation, surface: MidWallSurface, prefilter_mm: float = PHASE_PREFILTER_SIGMA_MM
) -> PhaseResult:
    """The pipeline's phase wiring on a given summed mid-wall surface: prefilter, gated maps, defaults."""
    smooth = frames.with_voxels(prefilter_gated_voxels(frames.voxels, frames.spacing_mm, prefilter_mm))
    gated = sample_gated_polar_maps(smooth, location, DEFAULT_GRID, surface=surface)
    return analyse_phase(gated.values, gated.weights)


def _measure_phase(frames: Volume, summed: Volume, location: LVLocation) -> PhaseStatistics:
    """The pipeline's phase wiring: 8 mm prefilter, gated maps on the summed mid-wall surface, defaults."""
    surface = midwall_surface_rows(summed, location, grid_rows_z(location, DEFAULT_GRID), DEFAULT_GRID.n_psi)
    return _gated_phase(frames, location, surface).statistics


def _phase(acq, location) -> tuple:
    measured = _measure_phase(acq.frames, acq.summed, location)
    truth = acq.truth
    count_truth = phase_statistics(truth.count_phase_deg, truth.polar_cell_volume_mm3)
    geometric = phase_statistics(truth.sample_phase_deg, truth.polar_cell_volume_mm3)
    return measured, count_truth, geometric


def _function(fig: Figures, prefix: str, acq, location) -> None:
    t = acq.truth
    for label, volume in (("noisy", acq.frames), ("noise_free", acq.expected)):
        f = measure_function(volume, location)
        fig.add(f"{prefix}.{label}.ef_error_points", f.lvef_pct - t.ef_pct)
        fig.add(f"{prefix}.{label}.edv_error_pct", 100.0 * (f.edv_ml - t.edv_ml) / t.edv_ml)
        fig.add(f"{prefix}.{label}.esv_error_pct", 100.0 * (f.esv_ml - t.esv_ml) / t.esv_ml)
        ef_tolerance = 5 if label == "noisy" else 2  # points, the acceptance
        fig.add(f"{prefix}.{label}.ef_within_{ef_tolerance}", float(abs(f.lvef_pct - t.ef_pct) <= ef_tolerance))


def _sampling_defects(seed: int, fig: Figures) -> None:
    """Part E: per-phantom sampling error of noise-free defect phantoms (test_sampling.py kinds)."""
    rng = np.random.default_rng((seed, 5))
    segments = tuple(sorted(rng.choice(np.arange(1, 17), size=int(rng.integers(1, 5)), replace=False).tolist()))
    cases = (
        ("segments", Defect(segments, float(rng.uniform(0.2, 0.6)))),
        ("apical_cap", Defect((17, int(rng.integers(13, 17))), float(rng.uniform(0.3, 0.6)))),
    )
    for label, defect in cases:
        acq = make_acquisition(PhantomSpec(n_gates=0, defects=(defect,)), "stress", rng)
        location = locate_lv(acq.expected)
        pm = perfusion_polar_map(acq.expected, location)[0]
        err = np.abs(np.asarray(pm.segment_uptake_pct()) - np.asarray(acq.truth.segment_uptake_blurred_pct))
        apex = float((location.frame.apex_mm - acq.truth.frame.apex_mm) @ acq.truth.frame.long_axis)
        fig.add(f"sampling.defect_{label}.max_abs_segment_error_pct", float(err.max()))
        fig.add(f"sampling.defect_{label}.all_17_within_5", float(np.all(err < 5.0)))
        fig.add(f"sampling.defect_{label}.segments_within_5", float(np.mean(err < 5.0)))
        fig.add(f"sampling.defect_{label}.apex_error_mm", apex)


#: count levels of part F (x the default clinical level; None = the noise-free expectation)
PHASE_COUNT_LEVELS = (None, 0.5, 1.0, 2.0, 4.0)


def _phase_count_levels(seed: int, fig: Figures) -> None:
    """Part F: phase statistics of one gated normal at several count levels (pipeline defaults)."""
    rng = np.random.default_rng((seed, 6))
    n_gates = 8 if seed % 2 == 0 else 16
    spec = PhantomSpec(sex=("M", "F")[int(rng.integers(2))], n_gates=n_gates, attenuation_artefact=True,
                       phase_jitter_sd_deg=10.0)
    acq = make_acquisition(spec, "rest", rng)
    truth = phase_statistics(acq.truth.count_phase_deg, acq.truth.polar_cell_volume_mm3)
    expected = acq.expected
    for level in PHASE_COUNT_LEVELS:
        voxels = expected.voxels if level is None else rng.poisson(expected.voxels * level).astype(float)
        summed = Volume(voxels.sum(axis=0), expected.affine)
        m = _measure_phase(expected.with_voxels(voxels), summed, locate_lv(summed))
        key = f"phase.counts_{'noise_free' if level is None else f'{level:g}x'}_{n_gates}g"
        fig.add(f"{key}.psd_error_deg", m.psd_deg - truth.psd_deg)
        fig.add(f"{key}.bandwidth_error_deg", m.bandwidth_deg - truth.bandwidth_deg)
        fig.add(f"{key}.within_tolerance",
                float(abs(m.psd_deg - truth.psd_deg) <= 3 and abs(m.bandwidth_deg - truth.bandwidth_deg) <= 10))


#: part I: prefilter sigmas (mm) at which the count noise is separated from the method
PHASE_FLOOR_PREFILTERS_MM = (4.0, 8.0, 12.0, 16.0)
#: part I: azimuthal harmonics of the phantom's own phase model (node.synth.spect.phantom.draw_pose)
PHASE_MODEL_HARMONICS = 3


def _phase_model_fit(phase_map: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A phase map ``[n_u, n_psi]`` (deg) reduced to the phantom generator's own phase model (part I).

    ``node.synth`` draws a normal's regional phases as a constant plus azimuthal harmonics 1-3,
    the same at every long-axis position; this fits that model to the phases (weighted least
    squares, deviations from their weighted circular mean) and returns it on every cell. Only a
    phantom study can know its phase pattern has this form: the fit is a yardstick of what the
    counts allow, not a method for patients.
    """
    psi = np.radians(DEFAULT_GRID.psi_centres_deg)
    design = np.stack(
        [np.ones_like(psi)]
        + [f(m * psi) for m in range(1, PHASE_MODEL_HARMONICS + 1) for f in (np.cos, np.sin)],
        axis=-1,
    )  # [n_psi, 1 + 2 * harmonics]
    centre = float(np.degrees(np.angle(np.sum(weights * np.exp(1j * np.radians(phase_map))))))
    deviation = np.mod(phase_map - centre + 180.0, 360.0) - 180.0
    rows = np.broadcast_to(design, (*weights.shape, design.shape[1])).reshape(-1, design.shape[1])
    root_w = np.sqrt(weights.ravel())
    coefficients, *_ = np.linalg.lstsq(rows * root_w[:, None], deviation.ravel() * root_w, rcond=None)
    return np.broadcast_to(np.mod(design @ coefficients + centre, 360.0), weights.shape)


def _phase_noise_floor(seed: int, fig: Figures) -> None:
    """Part I: the count-noise share of the single-phantom phase error (default clinical counts).

    One gated normal as in part A, from its own generator (seed, 9). The noisy gate volumes and
    their noise-free expectation go through the same location, summed mid-wall surface and
    prefilter, so measured(noisy) - measured(noise-free) is what the Poisson counts alone do to
    PSD and bandwidth (``noise_*``), for two estimators at each prefilter sigma: the pipeline's
    analyse_phase, and its phase map reduced to the phantom's own phase model
    (:func:`_phase_model_fit`; statistics with area weights, basal rows left out as the
    pipeline does). ``retained_psd_fraction`` is the model's noise-free PSD over the PSD of the
    same model fitted to the count-based truth map: the share of the true pattern that survives
    the prefilter. An unbiased estimator would have to undo that narrowing, which scales the noise
    by the same factor (``noise_per_retained_psd_deg``).
    """
    rng = np.random.default_rng((seed, 9))
    n_gates = 8 if seed % 2 == 0 else 16
    spec = PhantomSpec(sex=("M", "F")[int(rng.integers(2))], n_gates=n_gates, attenuation_artefact=True,
                       phase_jitter_sd_deg=10.0)
    acq = make_acquisition(spec, "rest", rng)
    location = locate_lv(acq.summed)
    surface = midwall_surface_rows(acq.summed, location, grid_rows_z(location, DEFAULT_GRID), DEFAULT_GRID.n_psi)
    area = surface.area_mm2()
    analysed = PhaseParameters().analysed_rows(DEFAULT_GRID.n_u)[:, None]
    truth_area = np.where(analysed, acq.truth.polar_cell_volume_mm3, 0.0)
    model_truth = phase_statistics(_phase_model_fit(acq.truth.count_phase_deg, truth_area), truth_area)
    for sigma in PHASE_FLOOR_PREFILTERS_MM:
        noisy = _gated_phase(acq.frames, location, surface, sigma)
        free = _gated_phase(acq.expected, location, surface, sigma)
        key = f"phase.floor_{sigma:g}mm"
        fig.add(f"{key}.pipeline.noise_psd_deg", noisy.statistics.psd_deg - free.statistics.psd_deg)
        fig.add(f"{key}.pipeline.noise_bandwidth_deg", noisy.statistics.bandwidth_deg - free.statistics.bandwidth_deg)
        model = {}
        for label, result in (("noisy", noisy), ("noise_free", free)):
            model_area = np.where(result.weights > 0, area, 0.0)
            model[label] = phase_statistics(_phase_model_fit(result.phase_map, result.weights), model_area)
        noise_psd = model["noisy"].psd_deg - model["noise_free"].psd_deg
        retained = model["noise_free"].psd_deg / model_truth.psd_deg
        fig.add(f"{key}.model.noise_psd_deg", noise_psd)
        fig.add(f"{key}.model.noise_bandwidth_deg", model["noisy"].bandwidth_deg - model["noise_free"].bandwidth_deg)
        fig.add(f"{key}.model.retained_psd_fraction", retained)
        fig.add(f"{key}.model.noise_per_retained_psd_deg", noise_psd / retained)


def _score_defect(fig: Figures, prefix: str, acq, severity: float) -> None:
    """Segment scores, SSS and TPD of one ungated defect acquisition against its truth."""
    truth, tracer = acq.truth, acq.spec.tracer
    pm, _ = perfusion_polar_map(acq.summed, locate_lv(acq.summed))
    result = score_map(pm.values, pm.weights, load_normal_limits(tracer, acq.spec.sex))
    true_scores = np.asarray(truth.segment_scores_severity)
    diff = result.segment_scores - true_scores
    tpd_error = result.tpd_pct - truth.tpd_pct
    extent = 100.0 * truth.segment_volume_ml[np.array(truth.defect_segments) - 1].sum() / truth.segment_volume_ml.sum()
    fig.add(f"{prefix}.defect.segment_exact_fraction", float(np.mean(diff == 0)))
    fig.add(f"{prefix}.defect.segment_max_abs_diff", float(np.abs(diff).max()))
    fig.add(f"{prefix}.defect.sss_error", float(diff.sum()))
    fig.add(f"{prefix}.defect.scores_within_1_and_sss_within_2", float(np.abs(diff).max() <= 1 and abs(diff.sum()) <= 2))
    fig.add(f"{prefix}.defect.sss_within_2", float(abs(diff.sum()) <= 2))
    tl = "tl201" if tracer == "tl201" else "tc99m"
    whole = [t for t, segs in TERRITORY_SEGMENTS.items() if set(truth.defect_segments) == set(segs)]
    groups = (f"{prefix}.defect", f"{prefix}.defect_{tl}") + tuple(f"{prefix}.defect_{tl}_whole_{t.lower()}" for t in whole)
    for group in groups[1:]:
        fig.add(f"{group}.tpd_error_pct", tpd_error)
        fig.add(f"{group}.sss_error", float(diff.sum()))
        fig.add(f"{group}.sss_within_2", float(abs(diff.sum()) <= 2))
    # the scores test's SSS rule: +-2, +-3 for severity >= 0.7
    fig.add(f"{prefix}.defect.sss_within_test_tolerance", float(abs(diff.sum()) <= (3 if severity >= 0.7 else 2)))
    if extent >= 10.0:
        for group in groups:
            fig.add(f"{group}.tpd_error_pct_extent_ge_10", tpd_error)
            fig.add(f"{group}.tpd_within_2_extent_ge_10", float(abs(tpd_error) <= 2.0))
    band = int(round(severity * 4)) * 25
    fig.add(f"{prefix}.defect_sev{band}.tpd_error_pct", tpd_error)
    fig.add(f"{prefix}.defect_sev{band}.sss_error", float(diff.sum()))


def _scores_only(seed: int, fig: Figures, tracer: str | None = None) -> None:
    """Part G: one ungated defect phantom of part C's distribution from its own generator (seed, 77).

    ``tracer`` fixes the tracer (the draw is still made, so the other draws stay the same).
    """
    rng = np.random.default_rng((seed, 77))
    sex = ("M", "F")[int(rng.integers(2))]
    drawn = ("tc99m_sestamibi", "tc99m_tetrofosmin", "tl201")[int(rng.integers(3))]
    territory = ("LAD", "LCx", "RCA")[int(rng.integers(3))]
    severity = (0.25, 0.5, 0.75)[int(rng.integers(3))] + float(rng.uniform(-0.05, 0.05))
    rings = TERRITORY_RING_SETS[int(rng.integers(len(TERRITORY_RING_SETS)))]
    spec = PhantomSpec(tracer=tracer or drawn, sex=sex, n_gates=0, attenuation_artefact=True,
                       defects=(territory_defect(territory, severity, rings=rings),))
    _score_defect(fig, "scores_g", make_acquisition(spec, "stress", rng), severity)


def _hot_neighbours(seed: int, fig: Figures) -> None:
    """Part H: localisation beside a hot liver and beside a hot bowel loop (rest, ungated)."""
    for organ in ("liver", "bowel"):
        acq = make_acquisition(PhantomSpec(n_gates=0, extracardiac=organ), "rest", np.random.default_rng(seed))
        location = locate_lv(acq.frames)
        truth = acq.truth.frame
        axis_error = _axis_error_deg(location.frame.long_axis, truth.long_axis)
        truth_centre = lv_centre_mm(truth, acq.spec.shape)
        centre_error = float(np.linalg.norm(location.centre_mm - truth_centre))
        key = f"orientation.hot_{organ}"
        fig.add(f"{key}.axis_error_deg", axis_error)
        fig.add(f"{key}.centre_error_mm", centre_error)
        fig.add(f"{key}.within_10deg_15mm", float(axis_error < 10.0 and centre_error < 15.0))


def run_seed(seed: int, fig: Figures, parts: str = "ABCDE", tracer: str | None = None) -> None:
    if "I" in parts:
        _phase_noise_floor(seed, fig)
    if "H" in parts:
        _hot_neighbours(seed, fig)
    if "G" in parts:
        _scores_only(seed, fig, tracer)
    if "F" in parts:
        _phase_count_levels(seed, fig)
    if "E" in parts:
        _sampling_defects(seed, fig)
    if not set("ABCD") & set(parts):
        return
    rng = np.random.default_rng(seed)
    sex = ("M", "F")[int(rng.integers(2))]
    n_gates = 8 if seed % 2 == 0 else 16

    # A: gated normal
    spec = PhantomSpec(sex=sex, n_gates=n_gates, attenuation_artefact=True, phase_jitter_sd_deg=10.0)
    acq = make_acquisition(spec, "rest", rng)
    truth = acq.truth
    location = locate_lv(acq.summed)
    fig.add("orientation.noisy.axis_error_deg", _axis_error_deg(location.frame.long_axis, truth.frame.long_axis))
    location_nf = locate_lv(acq.expected.summed())
    fig.add("orientation.noise_free.axis_error_deg", _axis_error_deg(location_nf.frame.long_axis, truth.frame.long_axis))
    for label, vol, loc in (("noisy", acq.summed, location), ("noise_free", acq.expected.summed(), location_nf)):
        pm = perfusion_polar_map(vol, loc)[0]
        # measured: the sampler's own relative uptake (segment mean / 99th percentile of the cells, relative_pct);
        # truth: segment mean / max of the blurred noise-free map along the true normals (node.synth)
        err = np.asarray(pm.segment_uptake_pct()) - np.asarray(truth.segment_uptake_blurred_pct)
        fig.add(f"sampling.{label}.max_abs_segment_error_pct", float(np.abs(err).max()))
        fig.add(f"sampling.{label}.mean_abs_segment_error_pct", float(np.abs(err).mean()))
        fig.add(f"sampling.{label}.all_17_within_5", float(np.all(np.abs(err) < 5.0)))
        if label == "noisy":
            scores = score_map(pm.values, pm.weights, load_normal_limits(spec.tracer, sex))
            fig.add("scores.normal.tpd_pct", scores.tpd_pct)
            fig.add("scores.normal.sss", scores.summed_score)
    _function(fig, "function.normal", acq, location)
    m, t, g = _phase(acq, location)
    key = f"phase.normal_{n_gates}g"
    fig.add(f"{key}.psd_error_deg", m.psd_deg - t.psd_deg)
    fig.add(f"{key}.bandwidth_error_deg", m.bandwidth_deg - t.bandwidth_deg)
    fig.add(f"{key}.peak_error_deg", float(np.mod(m.peak_phase_deg - t.peak_phase_deg + 180.0, 360.0) - 180.0))
    fig.add(f"{key}.psd_vs_geometric_deg", m.psd_deg - g.psd_deg)
    fig.add(f"{key}.bandwidth_vs_geometric_deg", m.bandwidth_deg - g.bandwidth_deg)
    fig.add(f"{key}.within_tolerance", float(abs(m.psd_deg - t.psd_deg) <= 3 and abs(m.bandwidth_deg - t.bandwidth_deg) <= 10))
    fig.add("phase.normal.psd_deg", m.psd_deg)
    fig.add("phase.normal.bandwidth_deg", m.bandwidth_deg)

    # B: delayed lateral wall
    spec_b = PhantomSpec(sex=sex, n_gates=n_gates, phase_delays=(LATERAL_DELAY,), phase_jitter_sd_deg=10.0)
    acq_b = make_acquisition(spec_b, "rest", rng)
    mb, tb, gb = _phase(acq_b, locate_lv(acq_b.summed))
    fig.add("phase.delayed.psd_error_deg", mb.psd_deg - tb.psd_deg)
    fig.add("phase.delayed.bandwidth_error_deg", mb.bandwidth_deg - tb.bandwidth_deg)
    fig.add("phase.delayed.psd_vs_geometric_deg", mb.psd_deg - gb.psd_deg)
    fig.add("phase.delayed.bandwidth_vs_geometric_deg", mb.bandwidth_deg - gb.bandwidth_deg)
    fig.add("phase.delayed.psd_deg", mb.psd_deg)
    fig.add("phase.delayed.bandwidth_deg", mb.bandwidth_deg)
    fig.add("phase.delayed_minus_normal.psd_deg", mb.psd_deg - m.psd_deg)
    fig.add("phase.delayed_minus_normal.bandwidth_deg", mb.bandwidth_deg - m.bandwidth_deg)

    # pure sinusoid (exactness of the gate-centre convention)
    phases = rng.uniform(0.0, 360.0, size=DEFAULT_GRID.shape)
    tc = (np.arange(n_gates) + 0.5) / n_gates
    curves = 100.0 + 30.0 * np.cos(2 * np.pi * tc[:, None, None] - np.radians(phases)[None])
    got, _ = first_harmonic(curves)
    fig.add("phase.sinusoid.max_error_deg", float(np.abs(np.mod(got - phases + 180.0, 360.0) - 180.0).max()))

    # C: defect phantom
    tracer = ("tc99m_sestamibi", "tc99m_tetrofosmin", "tl201")[int(rng.integers(3))]
    territory = ("LAD", "LCx", "RCA")[int(rng.integers(3))]
    severity = (0.25, 0.5, 0.75)[int(rng.integers(3))] + float(rng.uniform(-0.05, 0.05))
    rings = TERRITORY_RING_SETS[int(rng.integers(len(TERRITORY_RING_SETS)))]
    spec_c = PhantomSpec(
        tracer=tracer,
        sex=sex,
        n_gates=0,
        attenuation_artefact=True,
        defects=(territory_defect(territory, severity, rings=rings),),
    )
    _score_defect(fig, "scores", make_acquisition(spec_c, "stress", rng), severity)

    # D: small heart
    spec_d = PhantomSpec(shape=SMALL, sex=sex, n_gates=8)
    acq_d = make_acquisition(spec_d, "rest", rng)
    try:
        _function(fig, "function.small", acq_d, locate_lv(acq_d.summed))
        fig.add("function.small.processed", 1.0)
    except ValueError:
        fig.add("function.small.processed", 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds (default 20)")
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--json", help="write the summary as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/validation.md)")
    parser.add_argument("--parts", default="ABCDE", help="parts to run (A-D run together; E sampling of defect "
                        "phantoms, F phase at several count levels, G scores of part C's distribution, H localisation beside a "
                        "hot liver or bowel, I count-noise share of the phase error); default ABCDE")
    parser.add_argument("--tracer", choices=("tc99m_sestamibi", "tc99m_tetrofosmin", "tl201"), default=None,
                        help="part G: one tracer for every phantom (default: drawn at random)")
    args = parser.parse_args(argv)
    fig = Figures()
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        run_seed(seed, fig, parts=args.parts.upper(), tracer=args.tracer)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    summary = fig.summary()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seeds": [args.first_seed, args.first_seed + args.seeds - 1], "figures": summary}, fh, indent=2)
    print(f"# validate_spect: seeds {args.first_seed}..{args.first_seed + args.seeds - 1} (synthetic phantoms only)")
    if args.markdown:
        print("| figure | n | mean | SD | worst | min | max |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for key in sorted(summary):
            s = summary[key]
            print(
                f"| `{key}` | {s['n']} | {s['mean']:.2f} | {s['sd']:.2f} | {s['worst']:.2f} | {s['min']:.2f} | {s['max']:.2f} |"
            )
        return 0
    print(f"{'figure':58s} {'n':>4s} {'mean':>8s} {'sd':>7s} {'worst':>8s} {'min':>8s} {'max':>8s}")
    for key in sorted(summary):
        s = summary[key]
        print(f"{key:58s} {s['n']:4d} {s['mean']:8.2f} {s['sd']:7.2f} {s['worst']:8.2f} {s['min']:8.2f} {s['max']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
