"""Perfusion scores on polar maps from the analytic polar-map model (node.synth.spect.normal_db).

These maps come from the same simulated population model as the v1 normal limits
(blur along the surface, partial volume, base roll-off, sex-specific attenuation,
count noise), with defects of known deficit; truth uses the documented default
severity mapping (node.quant.scores.scores_from_deficit). Voxel phantoms through the
full SPECT sampler are tested in test_scores_phantom.py.

Defects cover a coronary territory or contiguous rings of it (as node.synth's
territory_defect); severities are drawn at 0.25/0.5/0.75 +- 0.05, away from the
rounding boundaries of score = round(4 x deficit) (0.125, 0.375, 0.625, 0.875).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from node.quant.normal_limits import load_normal_limits
from node.quant.scores import ScoreParameters, score_map, score_study, scores_from_deficit
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.spect.normal_db import AnalyticPolarModel, random_normal_subject

GRID = DEFAULT_GRID
SEG = GRID.segment_ids()
ANALYTIC = "1"  # the normal limits built from this same analytic model (v2+ come from voxel phantoms)
# The analytic model has independent (white) cell noise and jittered attenuation patterns: the rim growth
# (grow_z/grow_cells) and the defect-excluding refit of the defaults, chosen for the sampler's spatially
# correlated noise (test_scores_phantom.py), spread into that noise (normals up to ~9 % TPD, Tl-201). These
# unit tests check the single-threshold rules; the defaults are tested on voxel phantoms.
RULES = ScoreParameters(grow_z=None, fit_exclude_cells=None)
RINGS = {"basal": range(1, 7), "mid": range(7, 13), "apical": range(13, 17), "apex": (17,)}
RING_SUBSETS = (("basal", "mid"), ("mid", "apical", "apex"), ("apical", "apex"), ("basal", "mid", "apical"))


def _territory_part(territory: str, rings: tuple[str, ...]) -> tuple[int, ...]:
    """Segments of a territory within some rings: a contiguous defect (as node.synth territory_defect makes)."""
    wanted = {s for r in rings for s in RINGS[r]}
    return tuple(s for s in TERRITORY_SEGMENTS[territory] if s in wanted)


def _defect_case(rng: np.random.Generator, tracer: str, sex: str, segments: tuple[int, ...], severity: float):
    subject = replace(random_normal_subject(tracer, sex, rng), defects=tuple((s, severity) for s in segments))
    counts, weights = subject.sample(rng)
    counts = counts * rng.uniform(50.0, 500.0)  # arbitrary count scale: normalisation must absorb it
    deficit = np.where(np.isin(SEG, segments), severity, 0.0)
    return counts, weights, scores_from_deficit(deficit, weights)


#: Per-case TPD bound of the analytic model (the +-2 % acceptance is asserted per phantom on voxel
#: phantoms, test_scores_phantom.py). Here every subject has its own attenuation amplitude (men
#: inferior U(0.10, 0.20) of uptake) against the cohort's mean: where a defect covers the
#: attenuated wall, the extra attenuation reads as deficit. 4,200 cases of 300 runs (seeds 2000-2299):
#: TPD error -0.15 +- 0.48, 99.9th percentile +1.96, worst +2.93; so each case must stay within
#: +-3.5 and the mean over a run (about 14 cases) within +-0.75 (the rules' bias).
TPD_CASE_BOUND = 3.5


def test_segment_scores_sss_and_tpd_against_truth(seed: int) -> None:
    rng = np.random.default_rng(seed)
    limits = {sex: load_normal_limits("tc99m", sex, ANALYTIC) for sex in ("M", "F")}
    exact = total = 0
    failures = []
    tpd_errors: list[float] = []
    for case in range(24):
        sex = ("M", "F")[case % 2]
        territory = ("LAD", "LCx", "RCA")[case % 3]
        segments = TERRITORY_SEGMENTS[territory]
        if case % 4 >= 2:  # partial territory: contiguous rings of it
            segments = _territory_part(territory, RING_SUBSETS[int(rng.integers(len(RING_SUBSETS)))])
        severity = (0.25, 0.5, 0.75)[(case // 3) % 3] + rng.uniform(-0.05, 0.05)
        counts, weights, truth = _defect_case(rng, "tc99m", sex, segments, severity)
        result = score_map(counts, weights, limits[sex], RULES)
        diff = result.segment_scores - truth["segment_scores"]
        exact += int(np.sum(diff == 0))
        total += diff.size
        label = f"seed {seed} case {case}: {sex} {territory} {segments} severity {severity:.2f}"
        if np.abs(diff).max() > 1:
            failures.append(f"{label}: segment scores {result.segment_scores} vs truth {truth['segment_scores']}")
        if abs(result.summed_score - truth["summed_score"]) > 2:
            failures.append(f"{label}: SSS {result.summed_score} vs {truth['summed_score']}")
        if truth["extent_pct"] >= 10.0 and severity >= 0.4:
            tpd_errors.append(result.tpd_pct - truth["tpd_pct"])
            if abs(tpd_errors[-1]) > TPD_CASE_BOUND:
                failures.append(f"{label}: TPD {result.tpd_pct:.2f} vs {truth['tpd_pct']:.2f}")
        # outside the defect at most one segment may score 1: a jittered attenuated wall next to the
        # defect (1 case in 3,600, 150 runs on fresh seeds: segment 4 beside an LCx defect, men). The
        # acceptance "flagged only in its territory" is held strictly on voxel phantoms (test_orientation.py).
        outside = np.array([s not in segments for s in range(1, 18)])
        scored_outside = result.segment_scores[outside]
        if scored_outside.max() > 1 or np.sum(scored_outside > 0) > 1:
            flagged = sorted(int(i) + 1 for i in np.flatnonzero(outside & (result.segment_scores > 0)))
            failures.append(f"{label}: segments scored outside the defect: {flagged}")
    assert not failures, "\n".join(failures)
    assert abs(np.mean(tpd_errors)) <= 0.75, f"seed {seed}: mean TPD error {np.mean(tpd_errors):+.2f}"
    assert exact / total >= 0.90, f"seed {seed}: only {exact}/{total} segment scores exact"


def test_normal_maps_have_low_tpd_and_no_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(20):
        tracer = ("tc99m", "tl201")[case % 2]
        sex = ("M", "F")[(case // 2) % 2]
        counts, weights = random_normal_subject(tracer, sex, rng).sample(rng)
        result = score_map(counts, weights, load_normal_limits(tracer, sex, ANALYTIC), RULES)
        msg = f"seed {seed} case {case} {tracer} {sex}"
        # Tl-201: the analytic model's independent cell noise at 0.3x counts puts ~2 % of normals just over 3 %
        limit = 3.0 if tracer == "tc99m" else 5.0
        assert result.tpd_pct < limit, f"{msg}: TPD {result.tpd_pct:.2f}"
        assert result.summed_score <= 2, f"{msg}: SSS {result.summed_score}"


def test_mild_defects_bias_is_bounded(seed: int) -> None:
    """25 % deficits sit near the 2.5 SD threshold, which truncates part of each deficit: TPD reads low on average.

    Single cases spread by the subject's own attenuation (as for TPD_CASE_BOUND): in 2,000 runs of these
    nine men (seeds 6000-7999) the case errors were -0.85 +- 0.74 TPD points, from -2.69 to +3.20 (+2.15 at
    the 99.9th percentile), and the run means -0.85 +- 0.24, from -1.50 to -0.03.
    """
    rng = np.random.default_rng(seed)
    errors = []
    for case in range(9):
        territory = ("LAD", "LCx", "RCA")[case % 3]
        counts, weights, truth = _defect_case(rng, "tc99m", "M", TERRITORY_SEGMENTS[territory], 0.25)
        result = score_map(counts, weights, load_normal_limits("tc99m", "M", ANALYTIC), RULES)
        errors.append(result.tpd_pct - truth["tpd_pct"])
    msg = f"seed {seed}: TPD errors {np.round(errors, 2)}"
    assert np.max(np.abs(errors)) <= TPD_CASE_BOUND, msg
    assert -2.5 < np.mean(errors) < 0.5, f"{msg}: mean {np.mean(errors):+.2f} (truncation bias expected below 0)"


def test_stress_rest_combination(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sex = ("M", "F")[seed % 2]
    limits = load_normal_limits("tc99m", sex, ANALYTIC)
    subject = random_normal_subject("tc99m", sex, rng)
    lad = TERRITORY_SEGMENTS["LAD"]
    rca = TERRITORY_SEGMENTS["RCA"]
    # LAD reversible (ischaemia), RCA fixed (scar)
    stress_model = replace(subject, defects=tuple((s, 0.5) for s in lad) + tuple((s, 0.75) for s in rca))
    rest_model = replace(subject, defects=tuple((s, 0.75) for s in rca))
    stress = score_map(stress_model.sample(rng)[0], stress_model.sample(rng)[1], limits, RULES)
    rest_counts, rest_w = rest_model.sample(rng)
    rest = score_map(rest_counts, rest_w, limits, RULES)
    study = score_study(stress, rest)
    msg = f"seed {seed}: stress {stress.segment_scores} rest {rest.segment_scores}"
    assert study.sss == stress.summed_score and study.srs == rest.summed_score
    assert study.sds == int(np.clip(stress.segment_scores - rest.segment_scores, 0, None).sum())
    lad_truth = 7 * 2
    assert abs(study.territory_sds["LAD"] - lad_truth) <= 3, msg
    assert study.territory_sds["RCA"] <= 2 and study.territory_sds["LCx"] == 0, msg
    assert abs(study.territory_srs["RCA"] - 15) <= 3 and study.territory_srs["LAD"] <= 1, msg
    w = stress.weights
    lad_share = 100 * w[np.isin(SEG, lad)].sum() / w.sum()
    assert abs(study.ischemic_tpd_pct - 0.5 * lad_share) < 3.0, f"{msg}: ischemic TPD {study.ischemic_tpd_pct:.2f}"
    assert abs(sum(stress.territory_tpd_pct.values()) - stress.tpd_pct) < 1e-9
    change = score_study(stress, rest, ScoreParameters(ischemic_method="change_map"))
    assert abs(change.ischemic_tpd_pct - study.ischemic_tpd_pct) < 2.0
    alone = score_study(stress)
    assert alone.srs is None and alone.sds is None and alone.sss == stress.summed_score


def test_scores_do_not_depend_on_the_count_scale(seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts, weights, _ = _defect_case(rng, "tc99m", "F", TERRITORY_SEGMENTS["LCx"], 0.5)
    limits = load_normal_limits("tc99m", "F", ANALYTIC)
    a = score_map(counts, weights, limits, RULES)
    b = score_map(counts * 37.3, weights * 2.0, limits, RULES)
    assert np.array_equal(a.segment_scores, b.segment_scores)
    assert abs(a.tpd_pct - b.tpd_pct) < 1e-9 and abs(a.scale / b.scale - 37.3) < 1e-6


def test_percent_peak_mapping_is_exact_on_a_step_map() -> None:
    # DB-free mode: segment mean uptake 100, 75, 65, 55, 45, 35 % of peak -> scores 0,0,1,2,3,4
    values = np.ones(GRID.shape)
    uptake = {1: 1.0, 2: 0.75, 3: 0.65, 4: 0.55, 5: 0.45, 6: 0.35}
    for segment, u in uptake.items():
        values[SEG == segment] = u
    result = score_map(values * 123.0, None, None, ScoreParameters(severity_method="percent_peak"))
    assert result.segment_scores[:6].tolist() == [0, 0, 1, 2, 3, 4]
    assert np.allclose(result.segment_uptake_pct[:6], [100, 75, 65, 55, 45, 35])
    assert result.summed_score == 10


def test_truth_convention_examples() -> None:
    # reference note 2.5: a 50 %-deficit defect covering 20 % of the LV gives TPD = 10 %
    weights = np.ones(GRID.shape)
    deficit = np.zeros(GRID.shape)
    deficit[:8, :] = 0.5  # 8 of 40 rows = 20 % of the area
    truth = scores_from_deficit(deficit, weights)
    assert abs(truth["tpd_pct"] - 10.0) < 1e-12 and abs(truth["extent_pct"] - 20.0) < 1e-12
    whole = scores_from_deficit(np.where(SEG == 7, 0.5, 0.0), weights)
    assert whole["segment_scores"][6] == 2 and whole["summed_score"] == 2


def test_boundary_validation_messages() -> None:
    limits = load_normal_limits("tc99m", "M", ANALYTIC)
    with pytest.raises(ValueError, match=r"shape \(40, 72\)"):
        score_map(np.ones((40, 70)), None, limits)
    with pytest.raises(ValueError, match="NaN"):
        score_map(np.full(GRID.shape, np.nan), None, limits)
    with pytest.raises(ValueError, match="needs normal limits"):
        score_map(np.ones(GRID.shape), None, None)
    with pytest.raises(ValueError, match="no counts"):
        score_map(np.zeros(GRID.shape), None, limits)
    with pytest.raises(ValueError, match="decreasing"):
        ScoreParameters(percent_peak_thresholds=(40.0, 50.0, 60.0, 70.0))


def test_model_sanity() -> None:
    """The analytic model: no defect + no attenuation gives a flat map except the blurred base."""
    m = AnalyticPolarModel()
    expected = m.expected_map()
    assert np.ptp(expected[:30]) < 0.01
    assert expected[-1].mean() < 0.75 * expected[20].mean()


def test_tpd_uses_the_normal_cell_areas_not_the_sampled_ones(seed: int) -> None:
    """TPD weights are the normal cohort's mean cell areas (NormalLimits.cell_area): inflating the
    sampled cell areas inside a defect (as a distorted mid-wall surface does) leaves the TPD unchanged;
    tpd_weights="measured" follows the sampled areas and reads it higher."""
    rng = np.random.default_rng(seed)
    limits = load_normal_limits("tc99m", "M", ANALYTIC)
    assert limits.cell_area is not None and limits.cell_area.shape == GRID.shape
    counts, weights, truth = _defect_case(rng, "tc99m", "M", TERRITORY_SEGMENTS["LAD"], 0.75)
    inflated = np.where(np.isin(SEG, TERRITORY_SEGMENTS["LAD"]), 1.3 * weights, weights)
    a = score_map(counts, weights, limits, RULES)
    b = score_map(counts, inflated, limits, RULES)
    assert np.array_equal(a.tpd_weights, limits.cell_area) and np.array_equal(b.tpd_weights, limits.cell_area)
    # (the areas still weight the normalisation fit, hence not bit-identical)
    assert abs(a.tpd_pct - b.tpd_pct) < 0.2, f"seed {seed}: {a.tpd_pct:.2f} -> {b.tpd_pct:.2f}"
    measured = ScoreParameters(tpd_weights="measured", grow_z=None, fit_exclude_cells=None)
    c = score_map(counts, weights, limits, measured)
    d = score_map(counts, inflated, limits, measured)
    assert d.tpd_pct > c.tpd_pct + 1.0, f"seed {seed}: {c.tpd_pct:.2f} -> {d.tpd_pct:.2f}"
    assert abs(a.tpd_pct - truth["tpd_pct"]) <= 2.0, f"seed {seed}: TPD {a.tpd_pct:.2f} vs {truth['tpd_pct']:.2f}"
