"""LGE quantification: analytic rings with known scar, then phantom populations with truth contours."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from node.quant.lge import LGE_CUTOFF_PCT_LV, quantify_lge, transmurality_class
from node.quant.sax_segments import sax_segments
from node.synth.cmr.phantom import PATTERNS
from tests.support.cmr import small_anatomy, small_lge

PIXEL = (2.0, 2.0)
POSITIONS = np.arange(10) * 10.0  # 10 slices, 10 mm apart: voxel = 2 x 2 x 10 mm = 0.04 mL


class Ring:
    """A thick-walled LV (cavity r < 8 px, wall 8-16 px) on 64 x 64 pixels, slice 0 a cap, RV at 9 o'clock.

    ``psi`` is the AHA azimuth of each pixel (septum at 9 o'clock, counter-clockwise); the image starts as
    remote myocardium 0.05, blood 0.6, outside 0, Gaussian noise SD 0.01 added by :meth:`image`.
    """

    def __init__(self) -> None:
        rows, cols = np.mgrid[0:64, 0:64].astype(float)
        dy, dx = -(rows - 32), cols - 32
        self.r = np.broadcast_to(np.hypot(dx, dy), (10, 64, 64))
        phi = np.mod(np.degrees(np.arctan2(dy, dx)), 360.0)
        self.psi = np.broadcast_to(np.mod(phi - 180.0 + 90.0, 360.0), (10, 64, 64))
        k = np.arange(10)[:, None, None]
        self.blood = (self.r < 8) & (k >= 1)
        self.myo = ((self.r >= 8) & (self.r < 16) & (k >= 1)) | ((self.r < 12) & (k == 0))
        dphi = np.abs(np.mod(phi - 180.0 + 180.0, 360.0) - 180.0)
        self.rv = (self.r >= 16) & (self.r < 24) & (dphi <= 60) & (k >= 1)
        self.signal = np.where(self.blood, 0.6, np.where(self.myo, 0.05, 0.0))
        self.seg = sax_segments(self.blood, self.myo, self.rv, PIXEL)

    def region(self, psi0: float, psi1: float, r0: float, r1: float, slices: slice = slice(3, 8)) -> np.ndarray:
        k = np.zeros(10, bool)
        k[slices] = True
        d = np.mod(self.psi - psi0, 360.0)
        return self.myo & k[:, None, None] & (d < np.mod(psi1 - psi0, 360.0)) & (self.r >= r0) & (self.r < r1)

    def image(self, seed: int = 0) -> np.ndarray:
        return self.signal + np.random.default_rng(seed).normal(0.0, 0.01, self.signal.shape)

    def quantify(self, img: np.ndarray, **kw):  # type: ignore[no-untyped-def]
        return quantify_lge(img, self.myo, self.blood, self.seg, PIXEL, POSITIONS, **kw)


def test_5sd_finds_a_subendocardial_scar_voxel_for_voxel_with_mass_extent_and_transmurality():
    ring = Ring()
    scar = ring.region(150, 210, 8, 12)  # inferior, inner half of the wall, slices 3-7
    ring.signal = np.where(scar, 1.0, ring.signal)
    res = ring.quantify(ring.image())
    assert np.array_equal(res.primary.mask, scar)
    assert res.primary.method.startswith("5SD+rim+MVO")
    assert res.remote.source == "auto" and abs(res.remote.mean - 0.05) < 0.005 and abs(res.remote.sd - 0.01) < 0.002
    voxel_ml = 2.0 * 2.0 * 10.0 / 1000.0
    assert res.primary.lge_volume_ml == pytest.approx(scar.sum() * voxel_ml)
    assert res.primary.lge_mass_g == pytest.approx(scar.sum() * voxel_ml * 1.05)
    assert res.lv_mass_g == pytest.approx(ring.myo.sum() * voxel_ml * 1.05)
    assert res.primary.lge_pct_lv == pytest.approx(100.0 * scar.sum() / ring.myo.sum())
    # the scar lies in the inferior segments (4 basal, 10 mid, 15 apical) only
    extent = np.nan_to_num(res.primary.segment_extent_pct)
    assert set(np.flatnonzero(extent > 0) + 1) <= {4, 10, 15, 3, 5, 9, 11, 14, 16}
    assert extent[[0, 1, 6, 7, 12]].max() == 0.0
    # transmurality: inner 4 of 8 wall pixels by radius -> (12^2 - 8^2) / (16^2 - 8^2) of the chord area, ~ 42 %
    assert 30.0 < res.primary.segment_transmurality_pct[9] < 55.0
    assert res.primary.segment_transmurality_class[9] == "26-50"
    assert res.pattern.labels == ("subendocardial",) and not res.pattern.multifocal and not res.pattern.rv_insertion
    # FWHM on magnitude: remote + half of (peak - remote) still separates 1.0 from 0.05
    fwhm = next(v for k, v in res.secondary.items() if k.startswith("FWHM"))
    assert np.array_equal(fwhm.mask, scar)
    assert sorted(k.split("+")[0] for k in res.secondary) == ["2SD", "3SD", "6SD", "FWHM"]


def test_rim_rule_drops_blood_partial_volume_and_keeps_bright_endocardial_scar():
    ring = Ring()
    rim = ring.myo & ndimage.binary_dilation(ring.blood, np.ones((1, 3, 3), bool))  # the pixels that touch the cavity
    ring.signal = np.where(rim, 0.35, ring.signal)  # half blood, half remote
    img = ring.image()
    with_rule = ring.quantify(img)
    without = ring.quantify(img, rim_rule=False)
    assert with_rule.primary.lge_volume_ml == 0.0 and with_rule.pattern.labels == ()
    assert without.primary.mask[rim].mean() > 0.95
    assert "+rim" in with_rule.primary.method and "+rim" not in without.primary.method


def test_epicardial_twin_drops_fat_partial_volume_but_keeps_epicardial_scar():
    ring = Ring()
    fat = (ring.r >= 16) & (ring.r < 19) & (np.mod(ring.psi - 240, 360) < 60) & ring.myo.any(axis=(1, 2))[:, None, None]
    epi_fat = ring.myo & (ring.r >= 15) & (np.mod(ring.psi - 240, 360) < 60)
    ring.signal = np.where(fat, 0.8, np.where(epi_fat, 0.4, ring.signal))
    scar = ring.region(20, 60, 12, 16)  # anterior epicardial scar next to dark outside
    ring.signal = np.where(scar, 0.9, ring.signal)
    res = ring.quantify(ring.image())
    assert not res.primary.mask[epi_fat].any()
    assert res.primary.mask[scar].mean() > 0.97
    assert res.pattern.labels == ("epicardial",)


def test_mvo_core_is_filled_and_counted_as_scar():
    ring = Ring()
    scar = ring.region(140, 220, 8, 16)  # transmural
    core = ring.region(165, 195, 8, 11)  # dark core at the endocardium, rimmed by scar
    ring.signal = np.where(scar, 1.0, ring.signal)
    ring.signal = np.where(core, 0.0, ring.signal)
    img = ring.image()
    res = ring.quantify(img)
    assert np.array_equal(res.primary.mask, scar)
    assert res.primary.mvo_filled_ml == pytest.approx(core.sum() * 0.04)
    assert res.pattern.mvo and res.pattern.labels == ("transmural",)
    unfilled = ring.quantify(img, fill_mvo=False)
    assert np.array_equal(unfilled.primary.mask, scar & ~core)


def test_psir_has_no_fwhm_and_a_user_remote_region_overrides_the_automatic_one():
    ring = Ring()
    scar = ring.region(150, 210, 8, 12)
    ring.signal = np.where(scar, 1.0, ring.signal)
    img = ring.image()
    psir = ring.quantify(img, psir=True)
    assert psir.psir and not any(k.startswith("FWHM") for k in psir.secondary)
    user = ring.region(240, 300, 10, 14, slice(1, 10))
    res = ring.quantify(img, remote_mask=user)
    assert res.remote.source == "user" and res.remote.n_voxels == int(user.sum())
    assert "remote user ROI" in res.method
    with pytest.raises(ValueError):
        ring.quantify(img, remote_mask=np.zeros_like(user))


def test_pattern_mid_wall_multifocal_and_rv_insertion():
    ring = Ring()
    mid = ring.region(80, 100, 11, 13)  # septal mid-wall stripe
    insertion = ring.region(20, 40, 9, 15, slice(5, 9))  # focal, at the anterior RV insertion (psi 30)
    ring.signal = np.where(mid | insertion, 1.0, ring.signal)
    res = ring.quantify(ring.image())
    assert "mid-wall" in res.pattern.labels
    assert res.pattern.n_foci == 2 and res.pattern.multifocal and res.pattern.rv_insertion
    # a territorial infarct spanning the insertion point is not an "RV insertion" pattern
    ring2 = Ring()
    ring2.signal = np.where(ring2.region(300, 100, 8, 12), 1.0, ring2.signal)
    res2 = ring2.quantify(ring2.image())
    assert res2.pattern.labels == ("subendocardial",) and not res2.pattern.rv_insertion


def test_cutoff_flag_and_transmurality_classes():
    assert transmurality_class(np.array([0.0, 0.4, 25.0, 25.1, 50.0, 75.0, 75.5, 100.0, np.nan])) == (
        "0", "1-25", "1-25", "26-50", "26-50", "51-75", "76-100", "76-100", "0")
    ring = Ring()
    ring.signal = np.where(ring.region(150, 210, 8, 16), 1.0, ring.signal)
    res = ring.quantify(ring.image())
    assert res.primary.lge_pct_lv > LGE_CUTOFF_PCT_LV and res.above_cutoff
    assert not Ring().quantify(Ring().image()).above_cutoff


def _population(seeds, snr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    truth, primary, two_sd, fwhm, kinds = [], [], [], [], []
    for i, seed in enumerate(seeds):
        kind = PATTERNS[i % len(PATTERNS)]
        lge = small_lge(seed, kind, snr_scar=snr)
        fr, tr, st = lge.fractions, lge.truth, lge.anatomy.stack
        blood = fr.of("lv_blood") >= 0.5
        rv = (fr.of("rv_blood") + fr.of("rv_wall") + fr.of("rv_scar")) >= 0.5
        seg = sax_segments(blood, tr.myocardium_mask, rv, (st.pixel_mm, st.pixel_mm))
        res = quantify_lge(lge.magnitude, tr.myocardium_mask, blood, seg, (st.pixel_mm, st.pixel_mm), st.z_centres_mm)
        by = {k.split("+")[0]: v.lge_pct_lv for k, v in res.secondary.items()}
        truth.append(tr.scar_pct_sampled)
        primary.append(res.primary.lge_pct_lv)
        two_sd.append(by["2SD"])
        fwhm.append(by["FWHM"])
        kinds.append(kind)
    t = np.array(truth)
    return t, np.array(primary) - t, np.stack([np.array(two_sd) - t, np.array(fwhm) - t]), kinds


def test_phantoms_one_of_each_pattern_with_truth_contours():
    t, err, other, kinds = _population(range(7), snr=20.0)
    free = np.isin(kinds, ("scar_free", "fat_pad_decoy"))
    assert np.all(np.abs(err) <= 2.5), dict(zip(kinds, np.round(err, 2)))
    assert np.all(err[free] + t[free] < 0.5)
    assert np.all(other[0] > err)  # 2SD reads more than 5SD on every phantom


@pytest.mark.slow
@pytest.mark.parametrize("snr", [15.0, 20.0])
def test_phantom_population_meets_the_acceptance_lines(snr):
    """Issue 17 acceptance with truth contours, 63 phantoms per SNR (9 of each pattern); figures in docs/validation.md.

    SNR 30 is not asserted: there 5 SD sits at ~15 % of the scar contrast and the partial-volume
    voxels at scar borders count whole (+1 %LV; measured and explained in docs/validation.md)."""
    t, err, other, kinds = _population(range(3000, 3063), snr=snr)
    measured = t + err
    free = np.isin(kinds, ("scar_free", "fat_pad_decoy"))
    report = (f"bias {err.mean():+.2f}, 95 % within 2.5: {np.mean(np.abs(err) <= 2.5):.3f}, scar-free "
              f"{measured[free].mean():.2f}, FWHM {other[1].mean():+.2f}, 2SD {other[0].mean():+.2f}")
    assert abs(err.mean()) <= 0.75, report
    assert np.mean(np.abs(err) <= 2.5) >= 0.95, report
    assert measured[free].mean() < 0.3, report
    assert np.mean((measured > LGE_CUTOFF_PCT_LV) == (t > LGE_CUTOFF_PCT_LV)) >= 0.90, report
    assert -2.5 <= other[1].mean() <= 0.0, report
    assert other[0].mean() >= 4.0, report


def test_coarse_pixels_fall_back_to_whole_lv_sectors_for_the_remote_region():
    ring = Ring()
    thin = ring.myo & (ring.r >= 8) & (ring.r < 11)  # a 3-pixel wall: a one-pixel core
    ring.myo = np.where(ring.myo.any(axis=(1, 2))[:, None, None] & (np.arange(10) > 0)[:, None, None], thin, ring.myo)
    ring.signal = np.where(ring.blood, 0.6, np.where(ring.myo, 0.05, 0.0))
    ring.seg = sax_segments(ring.blood, ring.myo, ring.rv, PIXEL)
    res = ring.quantify(ring.image())
    assert res.remote.source == "auto" and res.remote.ring in ("all", "basal", "mid", "apical")
    assert abs(res.remote.mean - 0.05) < 0.01
    # the harness's coarse study grid (2.5 mm pixels): a thin core, yet a remote region and a sane result
    lge = small_lge(0, "scar_free", anatomy=small_anatomy(0, pixel_mm=2.5))
    fr, tr, st = lge.fractions, lge.truth, lge.anatomy.stack
    blood = fr.of("lv_blood") >= 0.5
    seg = sax_segments(blood, tr.myocardium_mask, None, (st.pixel_mm, st.pixel_mm))
    coarse = quantify_lge(lge.magnitude, tr.myocardium_mask, blood, seg, (st.pixel_mm, st.pixel_mm), st.z_centres_mm)
    assert coarse.remote.n_voxels >= 30 and coarse.primary.lge_pct_lv < 0.5
