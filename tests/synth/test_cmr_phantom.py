"""CMR phantoms: the truth is self-consistent (volumes, mass, EF, scar per pattern, segments, noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage, special

from node.synth.cmr.phantom import (
    MYOCARDIAL_DENSITY_G_PER_ML,
    PATTERNS,
    Sampling,
    draw_pattern,
    rician,
    tissue_fractions,
)
from tests.support.cmr import small_anatomy, small_cine, small_lge


def _simpson_ml(fractions: np.ndarray, anatomy) -> float:  # type: ignore[no-untyped-def]
    st = anatomy.stack
    return float(fractions.sum(dtype=np.float64)) * st.pixel_mm**2 * st.spacing_mm / 1000.0


def test_voxel_volumes_converge_to_the_analytic_ones_with_supersampling() -> None:
    # contiguous slices (no gap) covering the whole LV: sampled truth must converge to the closed forms
    anatomy = small_anatomy(5, gap_mm=0.0, base_phase=0.4)
    pattern = draw_pattern("scar_free", np.random.default_rng(0))
    errors = []
    for sampling in (Sampling(1, 1), Sampling(5, 8)):
        fr = tissue_fractions(anatomy, 0.0, pattern, sampling)
        myo = _simpson_ml(fr.lv_myocardium, anatomy)
        cavity = _simpson_ml(fr.of("lv_blood"), anatomy)
        errors.append((abs(myo / fr.geometry.myocardial_volume_ml - 1.0), abs(cavity / fr.geometry.cavity_volume_ml - 1.0)))
        assert np.allclose(fr.fractions.sum(axis=0), 1.0, atol=1e-5)
    (myo_coarse, cav_coarse), (myo_fine, cav_fine) = errors
    assert myo_fine < 5e-4 and cav_fine < 5e-4, errors
    assert myo_fine < myo_coarse and cav_fine < cav_coarse, errors


def test_mass_is_volume_times_density_and_conserved_over_the_cycle() -> None:
    lge = small_lge(1, "scar_free")
    truth = lge.truth
    shape = lge.anatomy.shape
    assert truth.lv_mass_g_continuous == pytest.approx(shape.myocardial_volume_ml * MYOCARDIAL_DENSITY_G_PER_ML, rel=1e-9)
    assert truth.lv_mass_g_sampled == pytest.approx(truth.myocardium_ml_sampled * 1.05, rel=1e-12)
    # 2 mm gaps and a base inside a slab: sampled differs from continuous by the discretisation, a few % at most
    assert abs(truth.myocardium_ml_sampled / truth.myocardium_ml_continuous - 1.0) < 0.08
    assert truth.slice_ring.max() > 0 and truth.myocardium_mask.sum() > 500


def test_cine_volumes_and_ef() -> None:
    anatomy = small_anatomy(7, gap_mm=0.0, base_phase=0.5)
    cine = small_cine(7, n_phases=20, anatomy=anatomy)
    truth = cine.truth
    shape = cine.anatomy.shape
    assert truth.phase_volume_ml_continuous[0] == pytest.approx(shape.edv_ml, rel=1e-9)
    assert truth.phase_volume_ml_continuous[truth.es_phase] == pytest.approx(shape.esv_ml, rel=1e-9)
    assert int(np.argmin(truth.phase_volume_ml_continuous)) == truth.es_phase
    assert truth.ef_pct == pytest.approx(100.0 * (shape.edv_ml - shape.esv_ml) / shape.edv_ml)
    # contiguous slices: sampled (Simpson on partial-volume fractions) close to the closed forms
    assert truth.edv_ml_sampled == pytest.approx(truth.edv_ml, rel=0.01)
    assert truth.esv_ml_sampled == pytest.approx(truth.esv_ml, rel=0.02)
    assert abs(truth.ef_pct_sampled - truth.ef_pct) < 1.0
    assert truth.lv_mass_g_sampled == pytest.approx(truth.lv_mass_g_continuous, rel=0.01)
    # the base descends toward the fixed apex in systole
    assert cine.es_fractions.geometry.c_epi < cine.ed_fractions.geometry.c_epi - 5.0
    # blood is bright, myocardium dark on bSSFP
    blood = cine.images[0][truth.blood_mask_ed].mean()
    myo = cine.images[0][truth.myocardium_mask_ed].mean()
    assert blood > 2.0 * myo


@pytest.mark.parametrize("pattern", PATTERNS)
def test_scar_extent_of_each_pattern(pattern: str) -> None:
    anatomy = small_anatomy(11, gap_mm=0.0)
    lge = small_lge(11, pattern, anatomy=anatomy)
    truth = lge.truth
    seg_pct = truth.segment_extent_pct
    if pattern in ("scar_free", "fat_pad_decoy"):
        assert truth.scar_ml_sampled == 0.0 and truth.scar_ml_continuous == 0.0
        assert np.nansum(seg_pct) == 0.0
        if pattern == "fat_pad_decoy":  # a thick bright pad touching the LV epicardium
            fat = lge.fractions.of("fat") >= 0.5
            near = ndimage.binary_dilation(truth.myocardium_mask, iterations=2) & fat
            assert near.sum() > 30
            assert lge.truth.signal_truth["fat"] > 0.75 * lge.truth.signal_truth["scar"]
        return
    assert truth.scar_pct_sampled > 0.3
    # contiguous slices: sampled and continuous burden agree to the discretisation
    assert abs(truth.scar_pct_sampled - truth.scar_pct_continuous) < 0.5 + 0.12 * truth.scar_pct_continuous
    assert truth.scar_mass_g_sampled == pytest.approx(truth.scar_ml_sampled * 1.05)
    assert np.nansum(truth.segment_scar_ml_sampled) == pytest.approx(truth.scar_ml_sampled, rel=1e-6)
    scar_psi = lge.fractions.aha_psi_deg[truth.scar_mask]
    trans = truth.segment_transmurality_pct
    if pattern == "ischaemic_subendocardial":
        assert 0.0 < np.nanmax(trans) <= 65.0
    if pattern == "ischaemic_transmural_mvo":
        assert np.nanmax(trans) > 95.0 and truth.mvo_ml_sampled > 0.0
    if pattern == "sarcoid_midwall_septal":
        mean_psi = math.degrees(np.angle(np.mean(np.exp(1j * np.radians(scar_psi)))))
        assert abs(mean_psi - 90.0) < 25.0
        assert np.nanmax(trans) < 80.0
    if pattern == "sarcoid_epicardial":
        assert np.nanmax(trans) < 50.0
    if pattern == "sarcoid_multifocal_rv":
        assert truth.rv_scar_ml_sampled > 0.0 and truth.pattern.multifocal and truth.pattern.rv_involvement
        assert int(np.sum(np.nan_to_num(seg_pct) > 1.0)) >= 3


def test_segment_of_each_voxel_follows_aha_with_the_septal_angle() -> None:
    anatomy = small_anatomy(3, septal_angle_deg=105.0)
    lge = small_lge(3, "scar_free", anatomy=anatomy)
    truth = lge.truth
    # pixel centres -> patient (the DICOM affine) -> LV frame azimuth, independently of the renderer
    k, i, j = np.nonzero(truth.segments)
    affine = anatomy.affine()
    xyz = (affine[:3, :3] @ np.stack([k, i, j]).astype(float)).T + affine[:3, 3]
    _, _, psi_frame = anatomy.frame.cylindrical(xyz)
    psi_aha = np.mod(psi_frame - 105.0 + 90.0, 360.0)
    seg = truth.segments[k, i, j]
    ring = truth.slice_ring[k]
    expected = np.where(ring == 3, 13 + np.floor(np.mod(psi_aha + 45.0, 360.0) / 90.0),
                        np.where(ring == 2, 7, 1) + np.floor(np.mod(psi_aha + 30.0, 360.0) / 60.0))
    expected = np.where(ring == 4, 17, expected)
    assert np.mean(seg == expected) > 0.999
    # rings: basal first, in thirds of the LV slices; cap below
    rings = [int(r) for r in truth.slice_ring if r]
    assert rings == sorted(rings, reverse=True)
    # the mid-septum (AHA 90 deg) is the middle of the LV-RV contact arc on mid slices
    rv = (lge.fractions.of("rv_blood") + lge.fractions.of("rv_wall")) >= 0.5
    mids = np.nonzero(truth.slice_ring == 2)[0]
    contact = np.zeros_like(rv)
    for s in mids:
        contact[s] = truth.myocardium_mask[s] & ndimage.binary_dilation(rv[s], iterations=2)
    psi = lge.fractions.aha_psi_deg[contact]
    centre = math.degrees(np.angle(np.mean(np.exp(1j * np.radians(psi)))))
    assert abs(centre - 90.0) < 6.0, centre
    assert set(np.unique(truth.segments[mids])) - {0} == set(range(7, 13))


def _rician_mean(s: np.ndarray, sigma: float) -> np.ndarray:
    nu = s**2 / (2.0 * sigma**2)
    return sigma * math.sqrt(math.pi / 2.0) * ((1.0 + nu) * special.i0e(nu / 2.0) + nu * special.i1e(nu / 2.0))


def test_noise_is_rician_at_the_stated_snr() -> None:
    lge = small_lge(4, "ischaemic_transmural_mvo", snr_scar=15.0)
    truth = lge.truth
    sigma = truth.sigma
    assert sigma == pytest.approx(abs(truth.signal_truth["scar"]) / 15.0)
    residual = lge.psir - lge.noise_free_psir  # PSIR: Gaussian of SD sigma
    assert np.std(residual) == pytest.approx(sigma, rel=0.02)
    s = np.abs(lge.noise_free_psir)
    m = lge.magnitude
    n = m.size
    # Rician moments: E[M^2] = S^2 + 2 sigma^2 and the Laguerre mean, pooled over every pixel
    assert np.mean(m**2 - s**2 - 2 * sigma**2) == pytest.approx(0.0, abs=6 * 2 * sigma**2 / math.sqrt(n) * 3)
    assert np.mean(m - _rician_mean(s, sigma)) == pytest.approx(0.0, abs=6 * sigma / math.sqrt(n))
    # where the signal is zero the magnitude is Rayleigh: mean sigma sqrt(pi/2), not zero
    zero = rician(np.zeros(200_000), 2.0, np.random.default_rng(0))
    assert zero.mean() == pytest.approx(2.0 * math.sqrt(math.pi / 2.0), rel=0.01)


def test_lge_contrast_and_psir_sign() -> None:
    lge = small_lge(6, "ischaemic_transmural_mvo", snr_scar=1e6)
    truth = lge.truth
    sig = truth.signal_truth
    assert abs(sig["myocardium"]) < 0.15 * sig["scar"]  # remote nulled
    assert 0.5 < sig["blood"] / sig["scar"] < 0.8  # blood below scar
    dense = lge.fractions.of("scar") > 0.99
    remote = lge.fractions.of("myocardium") > 0.99
    assert lge.magnitude[dense].mean() > 5 * lge.magnitude[remote].mean()
    mvo = lge.fractions.of("mvo") > 0.99
    assert lge.psir[mvo].mean() < 0.0 < lge.psir[dense].mean()  # the dark MVO core is negative on PSIR
