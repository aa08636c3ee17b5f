"""MBF of dynamic PET volumes (node.quant.mbf) on image-tier phantoms: ROIs, TACs, maps, quality flags, accuracy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import special, stats

from node.imaging.volume import Volume
from node.quant import kinetics as K
from node.quant.mbf import (
    QUALITY_FLAG_CODES,
    CrossSegment,
    StateMBF,
    _fit_flags,
    analyse_dynamic,
    segment_transfer_matrix,
    study_flags,
    wall_kernel_fractions,
)
from node.quant.mbf import half_rise_time_s as K_half_rise
from node.quant.polar_map import MidWallSurface
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.pet import phantom as P
from node.synth.pet.tac import make_tac_study as tac_study
from node.synth.pet.tac import sample_input_shape

MODEL = K.Rb82Lortie()
LV_BLOOD = P.LABELS.index("lv_blood")
RV_BLOOD = P.LABELS.index("rv_blood")


def _analyse(series: P.PetSeries, **kwargs: object) -> StateMBF:
    return analyse_dynamic(series.volume, state=series.truth.state or "rest", model=MODEL, rv_spillover=True, **kwargs)  # type: ignore[arg-type]


def _codes(result: StateMBF) -> set[str]:
    return {f.code for f in result.flags}


@pytest.fixture(scope="module")
def clean() -> tuple[P.PetStudy, StateMBF, StateMBF]:
    study = P.make_pet_study(np.random.default_rng(4242), defect_territory="LAD")
    return study, _analyse(study.rest), _analyse(study.stress)


def test_regions_are_placed_in_the_blood_pools(clean: tuple[P.PetStudy, StateMBF, StateMBF]) -> None:
    study, rest, stress = clean
    for series, result in ((study.rest, rest), (study.stress, stress)):
        labels = series.truth.labels
        region = result.input_region
        assert region.name == "lv_input" and region.n_voxels >= 10
        assert region.distance_to_wall_mm >= 9.0  # >= 1 FWHM (Rb-82 default 9 mm)
        # the ROI's voxels: LV cavity, basal half (LV coordinates of their centre)
        z, r, _ = series.truth.frame.cylindrical(region.centre_mm)
        geom = series.truth.lv_geometry
        assert geom.apex_wall_mm + 0.45 * geom.c_endo < z < geom.c_epi and r < 10.0
        # measured input follows the true blood curve (peak and tail)
        blood, truth = result.blood_bq_per_ml, series.truth.blood_bq_per_ml
        assert np.argmax(blood) == np.argmax(truth)
        np.testing.assert_allclose(blood.max(), truth.max(), rtol=0.1)
        np.testing.assert_allclose(blood[-4:].mean(), truth[-4:].mean(), rtol=0.15)  # the noisy, decay-amplified tail
        rv = result.rv_region
        assert rv is not None and rv.name == "rv" and rv.n_voxels >= 5
        assert np.mean(labels[tuple(rv.voxel_index.T)] == RV_BLOOD) >= 0.8
        assert result.rv_bq_per_ml is not None
        np.testing.assert_allclose(result.rv_bq_per_ml.max(), series.truth.rv_bq_per_ml.max(), rtol=0.15)
        assert np.all(labels[tuple(region.voxel_index.T)] == LV_BLOOD) and len(region.voxel_index) == region.n_voxels
        # myocardium mask overlaps the true myocardium
        truth_myo = series.truth.myocardium_fraction >= 0.5
        dice = 2 * np.sum(truth_myo & result.myocardium_mask) / (truth_myo.sum() + result.myocardium_mask.sum())
        assert dice > 0.6


def test_outputs_follow_the_contract(clean: tuple[P.PetStudy, StateMBF, StateMBF]) -> None:
    study, rest, stress = clean
    n_f = study.rest.truth.schedule.n_frames
    for result, series in ((rest, study.rest), (stress, study.stress)):
        assert result.tracer == "Rb-82" and result.fit.model == "rb82_lortie_1tcm"
        assert result.segment_tacs_bq_per_ml.shape == (n_f, 17)
        assert set(result.territory_tacs_bq_per_ml) == set(TERRITORY_SEGMENTS) == set(result.fitted_territory_tacs_bq_per_ml)
        for name in TERRITORY_SEGMENTS:
            measured = result.territory_tacs_bq_per_ml[name]
            fitted = result.fitted_territory_tacs_bq_per_ml[name]
            assert fitted.shape == (n_f,)
            assert np.sqrt(np.mean((fitted - measured) ** 2)) < 0.08 * measured.max()
        assert result.polar_mbf_ml_per_min_per_g.shape == (40, 72)
        voxel = result.voxel_mbf_ml_per_min_per_g
        assert voxel.dtype == np.float32 and voxel.shape == series.volume.shape3d
        assert np.all(voxel[~result.myocardium_mask] == 0) and np.median(voxel[result.myocardium_mask]) > 0
        # the maps agree with the segment fits (same model, same input)
        polar_global = float(np.median(result.polar_mbf_ml_per_min_per_g))
        assert polar_global == pytest.approx(float(np.median(result.fit.segment_mbf_ml_per_min_per_g)), rel=0.2)
        assert set(result.timings_s) >= {"locate", "sample", "regions", "fit", "maps", "motion", "total"}
        assert result.flags == () and result.motion_mm < 3.0
    assert study_flags(rest, stress) == ()
    # the LAD defect shows in the stress map, not at rest
    reserve = K.flow_reserve(rest.fit, stress.fit)
    assert reserve.territory_mfr["LAD"] < min(reserve.territory_mfr["LCx"], reserve.territory_mfr["RCA"])
    truth = study.truth
    assert reserve.global_mfr == pytest.approx(truth.global_mfr, rel=0.15)
    assert set(truth.impaired_territories) == {t for t, v in reserve.territory_impaired.items() if v}


def _one(rng: np.random.Generator, **kwargs: object) -> tuple[P.PetSeries, StateMBF]:
    spec = kwargs.pop("spec", P.PetPhantomSpec())
    mbf = kwargs.pop("mbf", rng.uniform(0.8, 1.2, 17))
    series = P.make_pet_series(mbf, rng, spec=spec, state="rest", **kwargs)  # type: ignore[arg-type]
    return series, _analyse(series)


def test_bolus_start_missed_and_late_input_peak(seed: int) -> None:
    rng = np.random.default_rng(seed)
    early = sample_input_shape("Rb-82", rng, delay_s=-4.0, alpha=2.0, beta_s=4.0)
    _, missed = _one(rng, input_shape=early)
    assert "bolus_start_missed" in _codes(missed) and "input_peak_late" not in _codes(missed)
    late = sample_input_shape("Rb-82", rng, delay_s=54.0, alpha=2.0, beta_s=5.0)
    _, delayed = _one(rng, input_shape=late)
    assert "input_peak_late" in _codes(delayed) and "bolus_start_missed" not in _codes(delayed)
    flag = next(f for f in delayed.flags if f.code == "input_peak_late")
    assert flag.region == "lv_input" and flag.state == "rest" and "65 s" in flag.text


#: An RV curve 10 s after the LV's is no physiology (the bolus passes the RV, then the lungs, then the LV:
#: the RV leads by the pulmonary transit, 2-6 s in the phantoms): the regions are swapped or mislabelled.
RV_LAG_S = 10.0


def _rv_flag_rates(seed: int, n: int) -> tuple[float, float]:
    """Share of ``n`` fresh phantoms flagged ``rv_peak_after_lv`` with the RV 10 s late, and with the normal lead."""
    flagged, false = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        series, late = _one(rng, rv_lead_s=-RV_LAG_S)
        assert late.rv_region is not None
        assert np.mean(series.truth.labels[tuple(late.rv_region.voxel_index.T)] == RV_BLOOD) >= 0.8  # RV still found
        flagged.append("rv_peak_after_lv" in _codes(late))
        _, normal = _one(rng)  # RV lead U(2, 6) s
        false.append("rv_peak_after_lv" in _codes(normal))
    return float(np.mean(flagged)), float(np.mean(false))


def test_rv_peak_after_lv(seed: int) -> None:
    """6 + 6 fresh phantoms per run (the slow test below has the 95 % / 5 % statistic on 30 + 30)."""
    hit, false = _rv_flag_rates(seed, 6)
    assert hit == 1.0 and false <= 1 / 6, (hit, false)


@pytest.mark.slow  # 60 phantoms, ~2 min on one core
def test_rv_peak_after_lv_rates(seed: int) -> None:
    hit, false = _rv_flag_rates(seed, 30)
    assert hit >= 0.95 and false <= 0.05, (hit, false)


def test_half_rise_time_on_noisy_curves(seed: int) -> None:
    """The flag's comparison on 200 noisy TAC-tier blood curves per condition (fresh seeds, every Rb-82 schedule)."""
    rng = np.random.default_rng(seed)

    def delay(lead_s: float, variant: str) -> float:
        study = tac_study(MODEL, np.ones(17), rng, rv_lead_s=lead_s, schedule_variant=variant, noise_level=0.05)
        return K_half_rise(study.schedule, study.rv_bq_per_ml) - K_half_rise(study.schedule, study.blood_bq_per_ml)

    for variant in ("default", "short", "fast"):
        late = np.array([delay(-RV_LAG_S, variant) for _ in range(200)])
        normal = np.array([delay(float(rng.uniform(2.0, 6.0)), variant) for _ in range(200)])
        assert np.mean(late > 0) >= 0.95 and np.mean(normal > 0) <= 0.05, (variant, np.mean(late > 0), np.mean(normal > 0))
        # the measured delay follows the true one within a few seconds, whatever the frame durations
        assert abs(np.median(late) - RV_LAG_S) < 5.0, (variant, np.median(late))


def test_input_near_wall_when_the_cavity_is_small_for_the_resolution(seed: int) -> None:
    """A cavity of ~25 mm radius cannot hold a core 30 mm (the stated FWHM) from the wall."""
    rng = np.random.default_rng(seed)
    series = P.make_pet_series(rng.uniform(0.8, 1.2, 17), rng, state="rest")
    result = _analyse(series, fwhm_mm=30.0)
    assert "input_near_wall" in _codes(result)
    assert result.input_region.distance_to_wall_mm < 30.0 and result.input_region.n_voxels >= 1
    assert any("innermost" in note for note in result.notes)
    assert np.all(series.truth.labels[tuple(result.input_region.voxel_index.T)] == LV_BLOOD)


def test_blood_fraction_high_and_unstable_fits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vascular = np.full(17, 0.1)
    lad = [s - 1 for s in TERRITORY_SEGMENTS["LAD"]]
    vascular[lad] = 0.98  # the LAD territory almost without perfusable tissue
    _, result = _one(rng, vascular_fraction=vascular)
    fb = np.array([s.parameters["blood_fraction"] for s in result.fit.segments])
    others = np.setdiff1d(np.arange(17), lad)
    # partial volume mixes in the neighbours' tissue, so the fitted fraction stays near 0.6-0.8
    # (the 0.8 limit of kinetics is not always reached): the planted segments stand out and are flagged
    assert np.median(fb[lad]) > 0.55 and np.median(fb[others]) < 0.4
    lad_names = {str(s) for s in TERRITORY_SEGMENTS["LAD"]}
    high = {f.region for f in result.flags if f.code == "blood_fraction_high"}
    unstable = {f.region for f in result.flags if f.code == "unstable_fit"}
    assert (high | unstable) & lad_names and high <= lad_names | {"3", "6", "9", "12", "15", "16"}  # + blurred neighbours
    # a segment the fitter marks blood_fraction_high becomes that quality flag, with its number
    segment = dataclasses.replace(result.fit.segments[0], flags=("blood_fraction_high",),
                                  parameters={**result.fit.segments[0].parameters, "blood_fraction": 0.86})
    fit = dataclasses.replace(result.fit, segments=(segment,) + result.fit.segments[1:])
    flags = _fit_flags(fit, MODEL, "rest")
    assert any(f.code == "blood_fraction_high" and f.region == "1" and "0.86" in f.text for f in flags)
    noisy = P.PetPhantomSpec(noise_level=1.5)
    _, noisy_result = _one(rng, spec=noisy)
    assert "unstable_fit" in _codes(noisy_result)


def _motion_flag_rates(seed: int, n: int) -> tuple[float, float]:
    """Share of ``n`` fresh studies whose moved series (10 mm from U(90, 240) s on) is flagged, and whose still one is."""
    moved_flagged, still_flagged = [], []
    for i in range(n):
        study = P.make_pet_study(np.random.default_rng([seed, i]), moved_state="stress" if i % 2 else "rest")
        moved, still = (study.stress, study.rest) if i % 2 else (study.rest, study.stress)
        moved_result, still_result = _analyse(moved), _analyse(still)
        moved_flagged.append("motion" in _codes(moved_result) and moved_result.motion_mm > 5.0)
        still_flagged.append("motion" in _codes(still_result))
    return float(np.mean(moved_flagged)), float(np.mean(still_flagged))


def test_motion_flag(seed: int) -> None:
    """3 fresh studies (one moved and one still series each): a single phantom misses about 1 in 20 (the bench's
    39/41, docs/validation.md), so one seed alone would flake; the slow test below has the issue's statistic."""
    hit, false = _motion_flag_rates(seed, 3)
    assert hit >= 2 / 3 and false <= 1 / 3, (hit, false)


@pytest.mark.slow  # 20 studies, ~3 min on one core
def test_motion_flag_rates(seed: int) -> None:
    hit, false = _motion_flag_rates(seed, 20)
    assert hit >= 0.9 and false <= 0.05, (hit, false)  # issue 15: >= 90 % of moved, <= 5 % of still series


def test_implausible_values_are_study_flags(seed: int) -> None:
    rng = np.random.default_rng(seed)
    study = P.make_pet_study(rng, rest_mbf_ml_per_min_per_g=np.full(17, 4.2), mfr=2.0)
    rest, stress = _analyse(study.rest), _analyse(study.stress)
    flags = study_flags(rest, stress)
    codes = {(f.code, f.region) for f in flags}
    assert ("rest_mbf_implausible", "global") in codes and ("stress_mbf_implausible", "global") in codes
    assert all(f.code in QUALITY_FLAG_CODES and f.state in ("rest", "stress") for f in flags)
    assert study_flags(rest, None) == tuple(f for f in flags if f.state == "rest")
    assert study_flags(None, None) == ()
    low = dataclasses.replace(rest, fit=dataclasses.replace(rest.fit, global_mbf_ml_per_min_per_g=0.2))
    assert ("rest_mbf_implausible", "global") in {(f.code, f.region) for f in study_flags(low, None)}


def test_n13_ammonia_series() -> None:
    """The N-13 path (DeGrado model, 22-frame schedule, 6.5 mm FWHM) on one rest/stress phantom."""
    model = K.NH3DeGrado()
    study = P.make_pet_study(np.random.default_rng(7), spec=P.PetPhantomSpec(tracer="N-13 ammonia"), model=model)
    for correction, low, high in ((False, -0.25, 0.0), (True, -0.10, 0.10)):  # uncorrected partial volume: about -10 %
        results = [analyse_dynamic(s.volume, state=s.truth.state, model=model, rv_spillover=True,
                                   partial_volume_correction=correction) for s in (study.rest, study.stress)]
        errors = [r.fit.global_mbf_ml_per_min_per_g / s.truth.global_mbf_ml_per_min_per_g - 1
                  for r, s in zip(results, (study.rest, study.stress))]
        assert all(low < e < high for e in errors), (correction, errors)
        assert (1 + errors[1]) / (1 + errors[0]) == pytest.approx(1.0, abs=0.15)
        assert all(r.flags == () and r.fit.model == "nh3_degrado_1tcm" for r in results)


@pytest.mark.parametrize(("dof", "radius_mm", "tolerance"), [(3, 35.0, 1e-6), (3, 18.0, 1e-6), (2, 30.0, 0.005),
                                                              (2, 15.0, 0.025)])
def test_wall_kernel_fractions_match_blurred_spheres_and_cylinders(dof: int, radius_mm: float, tolerance: float) -> None:
    """Against the exact blur of a spherical (cylindrical) shell: the radial law of an isotropic Gaussian is a
    non-central chi distribution with 3 (2) degrees of freedom."""
    thickness, sigma = 11.0, 4.1
    x = np.linspace(-thickness / 2, thickness / 2, 11)
    r = radius_mm + x
    exact_cavity = stats.ncx2.cdf(((radius_mm - thickness / 2) / sigma) ** 2, dof, (r / sigma) ** 2)
    exact_outside = stats.ncx2.sf(((radius_mm + thickness / 2) / sigma) ** 2, dof, (r / sigma) ** 2)
    curvature = (1.0 if dof == 3 else 0.5) / radius_mm  # mean curvature (k1 + k2) / 2
    wall, cavity, outside = wall_kernel_fractions(x, thickness, sigma, curvature)
    np.testing.assert_allclose(wall + cavity + outside, 1.0, atol=1e-12)
    np.testing.assert_allclose(cavity, exact_cavity, atol=tolerance)
    np.testing.assert_allclose(outside, exact_outside, atol=tolerance)
    # a flat slab: symmetric, and the recovery at the centre is erf(T / (2 sqrt(2) sigma))
    wall0, cavity0, outside0 = wall_kernel_fractions(np.array([-2.0, 0.0, 2.0]), thickness, sigma)
    np.testing.assert_allclose(cavity0, outside0[::-1], atol=1e-12)
    assert wall0[1] == pytest.approx(float(special.erf(thickness / (2 * np.sqrt(2) * sigma))), abs=1e-12)


@pytest.fixture(scope="module")
def noise_free() -> P.PetStudy:
    return P.make_pet_study(np.random.default_rng(20261207), spec=P.PetPhantomSpec(noise_level=0.0))


@pytest.fixture(scope="module")
def noise_free_default(noise_free: P.PetStudy) -> tuple[StateMBF, StateMBF]:
    """Rest and stress of the normal noise-free phantom with the partial-volume correction and without the
    cross-segment correction (the default has both; the two are tested apart)."""
    return (_analyse(noise_free.rest, cross_segment_correction=False),
            _analyse(noise_free.stress, cross_segment_correction=False))


def test_partial_volume_correction_on_a_noise_free_phantom(noise_free: P.PetStudy,
                                                          noise_free_default: tuple[StateMBF, StateMBF]) -> None:
    """Rb-82 at its 9 mm default: the measured wall and the recovery, and the global MBF bias with and without."""
    for series, on in zip((noise_free.rest, noise_free.stress), noise_free_default):
        truth = series.truth.global_mbf_ml_per_min_per_g
        off = _analyse(series, partial_volume_correction=False, cross_segment_correction=False)
        assert on.cross_segment is None  # the fixture leaves it out
        assert off.partial_volume is None
        pv = on.partial_volume
        assert pv is not None and pv.fwhm_mm == 9.0
        # the cycle-mean wall of the NORMAL shape (10 mm at end-diastole, thicker in systole)
        assert 10.0 <= pv.wall_thickness_mm <= 13.5, pv.wall_thickness_mm
        np.testing.assert_allclose(pv.segment_recovery[[s - 1 for s in K.SEPTAL_SEGMENTS]], 1.0, rtol=1e-12)
        others = np.setdiff1d(np.arange(17), [s - 1 for s in K.SEPTAL_SEGMENTS])
        assert np.all((pv.segment_recovery[others] > 0.8) & (pv.segment_recovery[others] < 0.97))
        # the measured TACs are reported as measured; the fit saw them divided by rho
        np.testing.assert_allclose(on.segment_tacs_bq_per_ml, off.segment_tacs_bq_per_ml, rtol=1e-9)
        error_off = off.fit.global_mbf_ml_per_min_per_g / truth - 1
        error_on = on.fit.global_mbf_ml_per_min_per_g / truth - 1
        assert -0.25 < error_off < -0.10, error_off  # partial volume at 9 mm on an 11-12 mm wall
        assert abs(error_on) < 0.05, error_on
        # the maps follow the segment fits
        assert np.mean(on.polar_mbf_ml_per_min_per_g) / truth - 1 == pytest.approx(error_on, abs=0.05)
        voxel_mean = float(np.mean(on.voxel_mbf_ml_per_min_per_g[on.myocardium_mask]))
        assert abs(voxel_mean / truth - 1) < 0.15


def test_refuses_a_static_volume() -> None:
    with pytest.raises(ValueError, match="dynamic"):
        analyse_dynamic(Volume(np.zeros((4, 4, 4)), np.eye(4)), state="rest", model=MODEL)


def _cohort_errors(seeds: list[int], fwhm_range_mm: tuple[float, float]) -> dict[str, list[float]]:
    """Global errors and territory calls of one rest+stress phantom per seed (blur drawn from ``fwhm_range_mm``)."""
    out: dict[str, list[float]] = {"rest": [], "stress": [], "mfr": [], "sens": [], "spec": [], "clear_sens": [],
                                   "clear_spec": []}
    kinds = ("normal", "LAD", "LCx", "RCA", "diffuse")
    for i, s in enumerate(seeds):
        kind = kinds[i % len(kinds)]
        spec = P.PetPhantomSpec(fwhm_mm=float(np.random.default_rng([s, 1]).uniform(*fwhm_range_mm)))
        study = P.make_pet_study(np.random.default_rng(s), spec=spec,
                                 defect_territory=kind if kind in TERRITORY_SEGMENTS else None, diffuse=kind == "diffuse")
        rest, stress = _analyse(study.rest), _analyse(study.stress)
        out["rest"].append(rest.fit.global_mbf_ml_per_min_per_g / study.rest.truth.global_mbf_ml_per_min_per_g - 1)
        out["stress"].append(stress.fit.global_mbf_ml_per_min_per_g / study.stress.truth.global_mbf_ml_per_min_per_g - 1)
        reserve = K.flow_reserve(rest.fit, stress.fit)
        out["mfr"].append(reserve.global_mfr / study.truth.global_mfr - 1)
        for t in TERRITORY_SEGMENTS:
            truth, called = t in study.truth.impaired_territories, reserve.territory_impaired[t]
            out["sens" if truth else "spec"].append(float(called == truth))
            # clear of the threshold (true MFR 10 % or more from 2.0: below 1.8 or above 2.2): noise alone rarely flips these
            m = study.truth.territory_mfr[t]
            if m < 1.8 or m > 2.2:
                out["clear_sens" if m < 1.8 else "clear_spec"].append(float(called == truth))
        assert "motion" not in {f.code for f in rest.flags + stress.flags}
    return out


@pytest.mark.slow  # 20 rest+stress phantoms, ~2 min on one core
def test_image_tier_cohort_statistics(seed: int) -> None:
    """Fresh seeds; the bench (bench/validate_pet_image.py, 250 phantoms) has the full figures.

    The issue's image-tier tolerances: global MBF mean bias within +-10 % and 95 % within
    +-20 % (with the partial-volume correction, the phantoms' resolution drawn from Rb-82's
    published 8-10 mm while the analysis assumes its default 9 mm), global MFR mean bias within
    +-5 % and 95 % within +-15 %.

    Territory calls: 20 phantoms hold ~20 impaired territories, too few for a sensitivity bound
    over all of them (a per-territory miss rate of 6.5 %, the bench's, fails "sens >= 0.9" in
    about 1 run in 6). Asserted are the territories whose true MFR is clear of the 2.0 threshold
    (below 1.8 / above 2.2, about 90 % of the cohort's): at most one miss and at most 5 % false
    calls; the borderline ones are measured by bench/pet_territory_sensitivity.py (noise alone
    calls a true 1.9-2.0 territory impaired in only ~60 % of phantoms, docs/validation.md).
    """
    errors = _cohort_errors([seed + i for i in range(20)], fwhm_range_mm=(8.0, 10.0))
    mfr = np.asarray(errors["mfr"])
    assert abs(mfr.mean()) < 0.05 and np.mean(np.abs(mfr) <= 0.15) >= 0.95
    for state in ("rest", "stress"):
        e = np.asarray(errors[state])
        assert abs(e.mean()) <= 0.10, (state, e.mean())
        assert np.mean(np.abs(e) <= 0.20) >= 0.95, (state, e)
    clear_sens, clear_spec = np.asarray(errors["clear_sens"]), np.asarray(errors["clear_spec"])
    assert np.sum(clear_sens == 0) <= 1, errors["clear_sens"]
    assert np.sum(clear_spec == 0) <= max(1, int(0.05 * clear_spec.size)), errors["clear_spec"]
    print(f"territory sensitivity {np.mean(errors['sens']):.3f} (n = {len(errors['sens'])}), specificity "
          f"{np.mean(errors['spec']):.3f} (n = {len(errors['spec'])}); clear of the threshold "
          f"{clear_sens.mean():.3f} / {clear_spec.mean():.3f}")


def _ellipsoidal_midwall(radius_mm: float = 25.0, length_mm: float = 75.0, wall_mm: float = 11.0) -> MidWallSurface:
    """The mid-wall of a half-ellipsoid LV (epicardial apex at z = 0, base plane at its equator ``length_mm``) on
    the default grid's rows (:func:`node.quant.polar_map.grid_rows_z`: cap rows from the mid-wall apex to the
    cavity apex, body rows linear to the base) and azimuths."""
    u = DEFAULT_GRID.u_centres
    cap = DEFAULT_GRID.u_cap
    rows = np.where(u < cap, 0.5 * wall_mm * (1.0 + u / cap), wall_mm + (u - cap) / (1.0 - cap) * (length_mm - wall_mm))
    semi = length_mm - 0.5 * wall_mm
    radius = radius_mm * np.sqrt(np.clip(1.0 - ((rows - length_mm) / semi) ** 2, 0.0, 1.0))
    z = np.repeat(rows[:, None], DEFAULT_GRID.n_psi, axis=1)
    r = np.repeat(radius[:, None], DEFAULT_GRID.n_psi, axis=1)
    zeros = np.zeros(DEFAULT_GRID.shape)
    return MidWallSurface(z, r, zeros, zeros + 1.0, DEFAULT_GRID.psi_centres_deg, zeros + 1.0, zeros)


def test_segment_transfer_matrix_on_a_standard_geometry() -> None:
    """G of an 11 mm wall at Rb-82's 9 mm (sigma 4.1 mm) on a 25 x 75 mm half-ellipsoid, and the correction's algebra."""
    surface = _ellipsoidal_midwall()
    sigma, thickness = 4.1, 11.0
    band = np.linspace(-thickness / 4, thickness / 4, 7)
    wall, cavity, _ = wall_kernel_fractions(band, thickness, sigma, 1.0 / 25.0)
    share = np.full(DEFAULT_GRID.shape, float(np.mean(wall) / np.mean(wall + cavity)))  # TACs divided by rho
    transfer = segment_transfer_matrix(surface.points_lv(), surface.area_mm2(), DEFAULT_GRID.segment_ids(), share, sigma)
    rows = transfer.sum(axis=1)
    np.testing.assert_allclose(rows, share[0, 0], rtol=1e-9)  # the cell's own wall share, spread over the segments
    assert np.all(rows <= 1.0) and np.all(transfer >= 0.0)
    diagonal = np.diag(transfer)
    assert np.all(diagonal > rows - diagonal), diagonal / rows  # diagonally dominant
    assert np.all(diagonal / rows > 0.7) and np.all(diagonal / rows < 0.95), diagonal / rows
    # only touching segments exchange counts: basal anterior (1) sees mid anterior (7), not apical anterior (13)
    assert transfer[0, 6] > 0.02 and transfer[0, 12] < 1e-3 and transfer[0, 3] < 1e-3
    # rotational symmetry: the six basal segments alike
    np.testing.assert_allclose(diagonal[:6], diagonal[0], rtol=1e-6)
    correction = CrossSegment.from_transfer_matrix(transfer, np.ones(17))
    assert 1.0 < correction.condition_number < 3.0
    # exact algebra: TACs mixed by G are returned to what each segment reads alone (its own recovery kept) ...
    rng = np.random.default_rng(1)
    blood = rng.uniform(1.0, 50.0, 16)
    tissue = rng.uniform(5.0, 20.0, (16, 17))
    mixed = blood[:, None] + (tissue - blood[:, None]) @ transfer.T
    alone = blood[:, None] + (tissue - blood[:, None]) * rows[None, :]
    np.testing.assert_allclose(correction.apply(mixed, blood), alone, rtol=1e-10)
    # ... and a uniform wall passes unchanged
    uniform = blood[:, None] + (tissue[:, :1] - blood[:, None]) * rows[None, :]
    np.testing.assert_allclose(correction.apply(uniform, blood), uniform, rtol=1e-10)


def test_cross_segment_correction_removes_the_blur_bias_of_a_territory_defect() -> None:
    """Noise-free LAD defect at 9 mm (bench seed 310004, docs/validation.md): without the correction the defect
    territory's MFR reads about +5 % high (its normal neighbours blurred in), with it within +-2 %."""
    study = P.make_pet_study(np.random.default_rng(310004), spec=P.PetPhantomSpec(fwhm_mm=9.0, noise_level=0.0),
                             defect_territory="LAD")
    errors = {}
    for cross in (False, True):
        rest, stress = (_analyse(s, cross_segment_correction=cross) for s in (study.rest, study.stress))
        reserve = K.flow_reserve(rest.fit, stress.fit)
        errors[cross] = {t: reserve.territory_mfr[t] / study.truth.territory_mfr[t] - 1 for t in TERRITORY_SEGMENTS}
        assert (stress.cross_segment is not None) == cross
    assert study.truth.territory_mfr["LAD"] < 2.1 < min(study.truth.territory_mfr["LCx"], study.truth.territory_mfr["RCA"])
    assert 0.03 < errors[False]["LAD"] < 0.08, errors
    assert abs(errors[True]["LAD"]) < 0.02, errors
    for t in ("LCx", "RCA"):  # the normal territories lose their small negative bias too
        assert abs(errors[True][t]) <= abs(errors[False][t]) + 0.005 and abs(errors[True][t]) < 0.02, errors


def test_cross_segment_correction_leaves_a_normal_phantom(noise_free: P.PetStudy,
                                                         noise_free_default: tuple[StateMBF, StateMBF]) -> None:
    """The normal noise-free phantom: global MBF, global and territory MFR within 1 % of the analysis without."""
    corrected = [_analyse(s, cross_segment_correction=True) for s in (noise_free.rest, noise_free.stress)]
    for off, on in zip(noise_free_default, corrected):
        assert on.cross_segment is not None and on.partial_volume is not None
        assert 1.0 < on.cross_segment.condition_number < 3.0
        np.testing.assert_allclose(on.cross_segment.recovery, on.cross_segment.transfer_matrix.sum(axis=1))
        assert np.all(on.cross_segment.recovery <= 1.0)
        assert on.fit.global_mbf_ml_per_min_per_g == pytest.approx(off.fit.global_mbf_ml_per_min_per_g, rel=0.01)
        np.testing.assert_allclose(on.segment_tacs_bq_per_ml, off.segment_tacs_bq_per_ml)  # reported as measured
    before = K.flow_reserve(*(r.fit for r in noise_free_default))
    after = K.flow_reserve(*(r.fit for r in corrected))
    assert after.global_mfr == pytest.approx(before.global_mfr, rel=0.01)
    for t in TERRITORY_SEGMENTS:
        assert after.territory_mfr[t] == pytest.approx(before.territory_mfr[t], rel=0.01), t
        assert abs(after.territory_mfr[t] / noise_free.truth.territory_mfr[t] - 1) < 0.025, t
