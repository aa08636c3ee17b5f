"""Polar-map sampling against the blurred-phantom truth (fresh random seeds, printed)."""

from __future__ import annotations

import random

import numpy as np

from node.quant.orientation import locate_lv, reorient_to_short_axis
from node.quant.polar_map import relative_pct, sample_gated_polar_maps, sample_polar_map
from node.quant.segments import DEFAULT_GRID
from node.synth.phantom import Defect, PhantomSpec, make_acquisition

#: per-segment mean relative uptake should be within this many % of max of the blurred-phantom truth ...
TOLERANCE_PCT = 5.0
#: ... for at least this share of segments (measured 2026-11-21 10:45 UTC after the base-plane fix, 300
#: noise-free phantoms of this kind, seeds 2000-2099/4000-4099/6000-6099: 99.9 % of segments and
#: 98.7 % of phantoms with all 17 segments inside (before the fix: 95.0 % of phantoms; 99.5 % of segments in seeds 4000-4099/6000-6099); misses are
#: basal segments when apical defects place the apex 1.5-2.5 mm basal, or the apical cap; below the
#: 99 % per phantom that a per-phantom assertion would need; see docs/validation.md) ...
MIN_SHARE_WITHIN_TOLERANCE = 0.94
#: ... and every segment within this bound (measured worst 6.3 %; 8.7 % before the fix).
HARD_BOUND_PCT = 10.0


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)


def test_segment_uptake_matches_blurred_truth() -> None:
    """Random defects in segments 1-16 (an apical-cap defect is the next test)."""
    errors = []
    messages = []
    for _ in range(3):
        seed = _seed()
        rng = np.random.default_rng(seed)
        segments = tuple(sorted(rng.choice(np.arange(1, 17), size=int(rng.integers(1, 5)), replace=False).tolist()))
        spec = PhantomSpec(n_gates=0, defects=(Defect(segments, float(rng.uniform(0.2, 0.6))),))
        acq = make_acquisition(spec, "stress", rng)
        noise_free = acq.expected  # the truth is defined on the noise-free blurred volume
        location = locate_lv(noise_free)
        polar = sample_polar_map(reorient_to_short_axis(noise_free, location), location)
        diff = polar.segment_uptake_pct() - acq.truth.segment_uptake_blurred_pct
        errors.append(np.abs(diff))
        msg = f"seed={seed} defect={segments} diff={np.round(diff, 1).tolist()}"
        messages.append(msg)
        print(msg)
        assert np.abs(diff).max() < HARD_BOUND_PCT, msg
        assert polar.values.shape == DEFAULT_GRID.shape and np.all(polar.weights > 0), msg
    all_err = np.concatenate(errors)
    share = float(np.mean(all_err < TOLERANCE_PCT))
    print(f"sampling |error| % of max: mean={all_err.mean():.2f} worst={all_err.max():.2f} within 5 %: {share:.1%}")
    assert share >= MIN_SHARE_WITHIN_TOLERANCE, "\n".join(messages)


def test_gated_maps_follow_the_summed_map() -> None:
    seed = _seed()
    rng = np.random.default_rng(seed)
    acq = make_acquisition(PhantomSpec(n_gates=8), "rest", rng)
    location = locate_lv(acq.frames)
    summed = sample_polar_map(acq.frames, location)
    gated = sample_gated_polar_maps(acq.frames, location)
    assert gated.values.shape == (8,) + DEFAULT_GRID.shape
    assert gated.n_gates == 8
    # counts rise with systolic thickening (partial volume): ES gates brighter than ED on average
    means = gated.values.mean(axis=(1, 2))
    assert means[2] > means[0], f"seed={seed} gate means={np.round(means, 1).tolist()}"
    # the mean of the per-gate maps, relative, is close to the summed relative map
    diff = np.abs(relative_pct(gated.values.mean(axis=0)) - summed.relative_pct())
    assert np.median(diff) < 5.0, f"seed={seed} median diff={np.median(diff):.2f}"


#: Known limitation: a defect of the apical cap lowers the counts around the apex, and the apex is then
#: located 2-4 mm toward the base (0-2 mm without it), which shifts the cap rows (measured: worst segment
#: error 5.6 % of max, mean of per-seed worst 4.4 %, over 10 seeds); the bound is wider than 5 %.
APICAL_DEFECT_TOLERANCE_PCT = 8.0


def test_apical_cap_defect_sampling_error_is_bounded() -> None:
    seed = _seed()
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=0, defects=(Defect((17, int(rng.integers(13, 17))), float(rng.uniform(0.3, 0.6))),))
    acq = make_acquisition(spec, "stress", rng)
    location = locate_lv(acq.expected)
    diff = sample_polar_map(acq.expected, location).segment_uptake_pct() - acq.truth.segment_uptake_blurred_pct
    apex_offset = float((location.frame.apex_mm - acq.truth.frame.apex_mm) @ acq.truth.frame.long_axis)
    msg = f"seed={seed} defect={spec.defects[0].segments} apex offset {apex_offset:+.1f} mm diff={np.round(diff, 1).tolist()}"
    print(msg)
    assert np.abs(diff).max() < APICAL_DEFECT_TOLERANCE_PCT, msg
