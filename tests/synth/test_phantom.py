"""Phantom acquisitions against their analytic truth (fresh random seeds, printed on failure)."""

from __future__ import annotations

import numpy as np
import pytest

from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.geometry import LATERAL_DELAY, SMALL
from node.synth.spect.phantom import (
    PhantomSpec,
    draw_pose,
    make_acquisition,
    make_study,
    territory_defect,
)


def _angle_deg(u, v) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


@pytest.mark.parametrize("territory", ["LAD", "LCx", "RCA"])
def test_territory_defect_truth_lies_in_its_territory_and_is_reversible(territory, seed):
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(defects=(territory_defect(territory, 0.5, reversible=True),), n_gates=8)
    study = make_study(spec, rng)
    stress, rest = study.stress.truth, study.rest.truth
    inside = np.array(TERRITORY_SEGMENTS[territory]) - 1
    outside = np.setdiff1d(np.arange(17), inside)
    msg = f"seed {seed}"
    assert set(stress.defect_segments) == set(TERRITORY_SEGMENTS[territory]), msg
    assert stress.defect_territories == (territory,), msg
    assert np.allclose(stress.segment_deficit[inside], 0.5), msg
    assert np.allclose(stress.segment_deficit[outside], 0.0), msg
    assert np.all(stress.segment_scores[inside] == 2) and np.all(stress.segment_scores[outside] == 0), msg
    share = stress.segment_volume_ml[inside].sum() / stress.segment_volume_ml.sum()
    assert stress.tpd_pct == pytest.approx(50.0 * share, rel=1e-6), msg
    # unblurred polar map: every cell carries its own segment's uptake exactly
    cells_inside = np.isin(DEFAULT_GRID.segment_ids(), TERRITORY_SEGMENTS[territory])
    assert np.allclose(stress.polar_map_unblurred[cells_inside], 0.5), msg
    assert np.allclose(stress.polar_map_unblurred[~cells_inside], 1.0), msg
    # blurred truth: the defect territory is clearly darker than the rest
    blurred = stress.segment_uptake_blurred_pct
    assert blurred[inside].mean() < blurred[outside].mean() - 20.0, msg
    # rest has no reversible defect
    assert rest.defect_segments == () and rest.sss == 0 and rest.tpd_pct == 0.0, msg
    assert np.ptp(rest.segment_uptake_blurred_pct[6:12]) < 15.0, msg


def test_counts_noise_and_gate_sums(seed):
    rng = np.random.default_rng(seed)
    acq = make_acquisition(PhantomSpec(n_gates=8), "stress", rng)
    msg = f"seed {seed}"
    frames, expected = acq.frames.voxels, acq.expected.voxels
    assert frames.shape == (8, 64, 64, 64), msg
    assert np.all(frames == np.round(frames)) and frames.min() >= 0, msg
    assert np.array_equal(acq.summed.voxels, frames.sum(axis=0)), msg
    # Poisson: the total count matches the expectation within 5 sigma
    assert abs(frames.sum() - expected.sum()) < 5 * np.sqrt(expected.sum()), msg
    # count level: mean summed counts over the brightest (myocardial) voxels is of the configured order
    summed_expected = expected.sum(axis=0)
    assert 150 < np.percentile(summed_expected, 99.9) < 1000, msg


def test_thallium_has_about_a_third_of_the_technetium_counts(seed):
    rng = np.random.default_rng(seed)
    pose = draw_pose(PhantomSpec(), rng)
    tc = make_acquisition(PhantomSpec(n_gates=0), "rest", rng, pose)
    tl = make_acquisition(PhantomSpec(n_gates=0, tracer="tl201"), "rest", rng, pose)
    ratio = np.percentile(tl.expected.voxels, 99.9) / np.percentile(tc.expected.voxels, 99.9)
    assert 0.2 < ratio < 0.4, f"seed {seed}: ratio {ratio:.3f}"


def test_pose_jitter_stays_within_bounds_and_the_lv_sits_where_the_frame_says(seed):
    rng = np.random.default_rng(seed)
    nominal = -np.array([np.cos(np.radians(30)) * np.sin(np.radians(45)),
                         -np.cos(np.radians(30)) * np.cos(np.radians(45)), -np.sin(np.radians(30))])
    for _ in range(20):
        pose = draw_pose(PhantomSpec(), rng)
        assert _angle_deg(pose.frame.long_axis, nominal) <= 15.0 * np.sqrt(2) + 1e-6, f"seed {seed}"
    acq = make_acquisition(PhantomSpec(n_gates=0, extracardiac=None), "stress", rng, pose)
    vol = acq.expected
    # centroid of the hottest voxels (the myocardium) lies near the LV centre on the true axis
    hot = vol.voxels >= np.percentile(vol.voxels, 99.7)
    centroid = vol.index_to_patient(np.argwhere(hot).mean(axis=0))
    z, radius, _ = acq.frame.cylindrical(centroid)
    assert radius < 12.0 and 15.0 < z < 60.0, f"seed {seed}: z {z:.1f} r {radius:.1f}"


def test_short_axis_orientation_anterior_up_septum_left(seed):
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=0, defects=(territory_defect("LAD", 0.7, rings=("mid",)),))
    acq = make_acquisition(spec, "stress", rng, orientation="short_axis")
    vol = acq.expected.voxels
    n = vol.shape[-1]
    centre = vol.shape[0] // 2  # mid-ventricular slice: the SA grid is centred on the LV mid-point
    ring = vol[centre - 1 : centre + 2].mean(axis=0)
    c = (n - 1) / 2
    top, bottom = ring[: int(c), int(c) - 1 : int(c) + 2].max(), ring[int(c) + 1 :, int(c) - 1 : int(c) + 2].max()
    left, right = ring[int(c) - 1 : int(c) + 2, : int(c)].max(), ring[int(c) - 1 : int(c) + 2, int(c) + 1 :].max()
    msg = f"seed {seed}: top {top:.0f} bottom {bottom:.0f} left {left:.0f} right {right:.0f}"
    assert top < 0.75 * bottom, msg  # anterior (LAD) defect at the top
    assert left < right, msg  # anteroseptal part of the defect on the left
    # the short-axis affine is the LV frame: slice axis = long axis, rows = -anterior, cols = -septal
    axes = acq.frames.affine[:3, :3] / np.linalg.norm(acq.frames.affine[:3, :3], axis=0)
    assert np.allclose(axes[:, 0], acq.frame.long_axis) and np.allclose(axes[:, 1], -acq.frame.anterior)
    assert np.allclose(axes[:, 2], -acq.frame.septal)


@pytest.mark.parametrize("n_gates", [8, 16])
def test_sinusoid_motion_gives_the_imposed_phase_and_a_delayed_lateral_wall_widens_it(n_gates, seed):
    rng = np.random.default_rng(seed)
    pose = draw_pose(PhantomSpec(), rng)
    normal = make_acquisition(PhantomSpec(n_gates=n_gates, waveform="sinusoid"), "rest", rng, pose).truth
    msg = f"seed {seed}"
    assert np.allclose(normal.sample_phase_deg, 0.35 * 360.0, atol=1e-6), msg
    assert normal.phase_stats["psd_deg"] < 1e-6, msg
    delayed = make_acquisition(
        PhantomSpec(n_gates=n_gates, waveform="sinusoid", phase_delays=(LATERAL_DELAY,)), "rest", rng, pose
    ).truth
    lateral = np.abs(np.array(delayed.imposed_delay_deg)[262:278] - LATERAL_DELAY.delay_deg) < 3
    assert lateral.all(), msg
    assert delayed.phase_stats["psd_deg"] > 15.0 and delayed.phase_stats["pbw_deg"] > 60.0, msg
    assert delayed.count_phase_stats["psd_deg"] > normal.count_phase_stats["psd_deg"] + 5.0, msg


def test_gated_volumes_and_voxelised_myocardium(seed):
    rng = np.random.default_rng(seed)
    truth = make_acquisition(PhantomSpec(n_gates=16), "stress", rng).truth
    msg = f"seed {seed}"
    assert truth.edv_ml == pytest.approx(106.7, rel=0.01), msg
    assert truth.esv_ml == pytest.approx(48.6, rel=0.02), msg
    analytic = truth.myocardial_volume_ml
    voxelised = np.array(truth.extra["voxelised_myocardial_volume_ml_per_snapshot"])
    assert np.all(np.abs(voxelised / analytic - 1) < 0.01), f"{msg}: {voxelised}"
    assert np.allclose(truth.extra["myocardial_volume_per_gate_ml"], analytic, rtol=1e-6), msg
    assert truth.segment_volume_ml.sum() == pytest.approx(analytic, rel=0.005), msg


def test_small_heart_hot_liver_and_attenuation_artefact(seed):
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(shape=SMALL, n_gates=8, extracardiac="liver", attenuation_artefact=True, sex="M")
    acq = make_acquisition(spec, "stress", rng)
    truth = acq.truth
    msg = f"seed {seed}"
    assert truth.edv_ml < 40 and truth.ef_pct > 55, msg
    # attenuation-like inferior reduction in men (segments 4, 10, 15), anterior intact
    assert truth.segment_uptake_pct[[3, 9, 14]].max() < 92 and truth.segment_uptake_pct[[0, 6, 12]].min() > 99, msg
    assert truth.segment_deficit.max() == 0 and truth.sss == 0, msg  # artefacts are not defects
    # the liver is hotter than the myocardium
    assert acq.expected.voxels.sum(axis=0).max() > 1.2 * truth.polar_map_blurred.max(), msg


def test_fine_grid_128_cubed_at_4_mm_gives_the_same_blurred_truth(seed):
    rng = np.random.default_rng(seed)
    pose = draw_pose(PhantomSpec(), rng)
    coarse = make_acquisition(PhantomSpec(n_gates=0), "rest", rng, pose).truth
    fine_acq = make_acquisition(PhantomSpec(n_gates=0, matrix=128, voxel_mm=4.0), "rest", rng, pose)
    fine = fine_acq.truth
    assert fine_acq.frames.voxels.shape == (128, 128, 128)
    difference = np.abs(fine.segment_uptake_blurred_pct - coarse.segment_uptake_blurred_pct)
    assert difference.max() < 6.0, f"seed {seed}: {difference.round(1)}"


def test_attenuation_artefact_amplitude_and_centre_jitter(seed):
    rng = np.random.default_rng(seed)
    assert PhantomSpec(sex="M", attenuation_artefact=True).attenuation_depth == 0.15
    assert PhantomSpec(sex="F", attenuation_artefact=True).attenuation_depth == 0.10
    assert PhantomSpec(attenuation_artefact=0.22).attenuation_depth == 0.22
    assert PhantomSpec().attenuation_depth == 0.0
    spec = PhantomSpec(sex="F", n_gates=0, matrix=40, voxel_mm=9.6, attenuation_artefact=0.2,
                       attenuation_centre_jitter_deg=20.0)
    truth = make_acquisition(spec, "rest", rng).truth
    centre = truth.extra["attenuation_centre_deg"]
    assert -20.0 <= ((centre + 180) % 360) - 180 <= 20.0, f"seed {seed}"
    # anterior segments lose up to 20 %, inferior ones keep full uptake
    assert truth.segment_uptake_pct[[0, 6]].min() > 79.0 and truth.segment_uptake_pct[[0, 6]].min() < 95.0, f"seed {seed}"
    assert np.allclose(truth.segment_uptake_pct[[3, 9, 14]], 100.0), f"seed {seed}"
