"""Polar-map sampling against the blurred-phantom truth (fresh random seeds, printed)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from node.imaging.volume import FrameAxis, Volume
from node.quant.orientation import locate_lv, reorient_to_short_axis
from node.quant.polar_map import relative_pct, sample_frame_polar_maps, sample_gated_polar_maps, sample_polar_map
from node.quant.segments import DEFAULT_GRID
from node.synth.anatomy import Defect
from node.synth.spect.phantom import PhantomSpec, make_acquisition

#: Acceptance: every segment's mean relative uptake within this many % of max of the blurred-phantom
#: truth, in every phantom. Measured 2026-12-03 (noise-free, normal shape, bench/validate_spect.py
#: part E, 400 phantoms of seeds 90000-90199, not used for tuning) after the long axis was refitted
#: through the ring centres (node.quant.orientation): random 1-4-segment defects in segments 1-16
#: 100 % of phantoms with all 17 segments inside, per-phantom worst 1.03 +- 0.46 %, worst 3.74 %;
#: apical-cap defects (17 + one of 13-16) 100 %, 1.13 +- 0.37 %, worst 2.41 %. Before (2026-11-21):
#: 99.5 % and 98.0 % of phantoms, worst 5.19 % and 5.14 % (basal segments: the axis tilt of the
#: quadric fit moved the basal rows of one side toward the base plane).
TOLERANCE_PCT = 5.0
#: the apex landmark must be within this many mm of the truth along the long axis, cap defect or not
#: (measured worst 1.4 mm over the 400 phantoms above)
APEX_TOLERANCE_MM = 3.0


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)


def _check_phantom(spec: PhantomSpec, seed: int, rng: np.random.Generator, short_axis: bool) -> None:
    acq = make_acquisition(spec, "stress", rng)
    noise_free = acq.expected  # the truth is defined on the noise-free blurred volume
    location = locate_lv(noise_free)
    volume = reorient_to_short_axis(noise_free, location) if short_axis else noise_free
    polar = sample_polar_map(volume, location)
    diff = polar.segment_uptake_pct() - acq.truth.segment_uptake_blurred_pct
    apex_offset = float((location.frame.apex_mm - acq.truth.frame.apex_mm) @ acq.truth.frame.long_axis)
    msg = (
        f"seed={seed} defect={spec.defects[0].segments} severity={spec.defects[0].severity:.2f} "
        f"apex offset {apex_offset:+.1f} mm diff={np.round(diff, 1).tolist()}"
    )
    print(msg + f" within {TOLERANCE_PCT:.0f} %: {int(np.sum(np.abs(diff) < TOLERANCE_PCT))}/17")
    assert polar.values.shape == DEFAULT_GRID.shape and np.all(polar.weights > 0), msg
    assert abs(apex_offset) < APEX_TOLERANCE_MM, msg
    assert np.all(np.abs(diff) < TOLERANCE_PCT), msg


def test_segment_uptake_matches_blurred_truth() -> None:
    """Random defects in segments 1-16: every segment of every phantom within 5 % of max of the truth."""
    for k in range(3):
        seed = _seed()
        rng = np.random.default_rng(seed)
        segments = tuple(sorted(rng.choice(np.arange(1, 17), size=int(rng.integers(1, 5)), replace=False).tolist()))
        spec = PhantomSpec(n_gates=0, defects=(Defect(segments, float(rng.uniform(0.2, 0.6))),))
        _check_phantom(spec, seed, rng, short_axis=k == 0)


def test_apical_cap_defect_sampling() -> None:
    """A defect of the apical cap (17 + one apical segment) no longer moves the apex: same bounds."""
    seed = _seed()
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=0, defects=(Defect((17, int(rng.integers(13, 17))), float(rng.uniform(0.3, 0.6))),))
    _check_phantom(spec, seed, rng, short_axis=False)


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


def test_dynamic_frames_are_sampled_per_frame_on_one_surface() -> None:
    """Timed dynamic frames (PET-like): every frame along the same normals, no gated widening, times kept."""
    seed = _seed()
    rng = np.random.default_rng(seed)
    acq = make_acquisition(PhantomSpec(n_gates=0), "rest", rng)
    location = locate_lv(acq.expected)
    scale = np.array([0.5, 1.0, 2.0])
    frames = FrameAxis.dynamic(start_s=[0.0, 30.0, 90.0], duration_s=[30.0, 60.0, 120.0])
    dynamic = Volume(scale[:, None, None, None] * acq.expected.voxels[None], acq.expected.affine, frames)
    maps = sample_frame_polar_maps(dynamic, location)
    single = sample_polar_map(acq.expected, location)
    assert maps.frame_axis is frames and maps.n_frames == 3
    assert np.allclose(maps.values, scale[:, None, None] * single.values), f"seed={seed}"
    assert np.allclose(maps.weights, single.weights)
    with pytest.raises(ValueError, match="gated"):
        sample_gated_polar_maps(dynamic, location)
