"""The apex shell-model fit's shortcuts give the results of the plain computation.

:func:`node.quant.orientation._apex_shift_from_shell_model` blurs each model part on its own
bounding box (:func:`node.quant.orientation._gaussian_in_box`, bit-identical to blurring the whole
grid) and solves each shift's least squares through per-row Gram matrices. The reference here is
the plain computation (every part blurred on the whole grid, one ``numpy.linalg.lstsq`` per shift
on the full design), written out in this test.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import ndimage

from node.imaging.volume import Volume
from node.quant import orientation
from node.quant.lv_frame import LVFrame
from node.quant.orientation import _gaussian_in_box


@pytest.mark.parametrize("shape", [(40, 51, 51), (12, 9, 30)])
def test_blur_on_a_box_is_bit_identical_to_the_whole_grid(shape: tuple[int, int, int]) -> None:
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    for _ in range(6):  # boxes inside the grid and touching its faces
        lo = [int(rng.integers(0, n)) for n in shape]
        box = [(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, shape)]
        whole = np.zeros(shape)
        inner = tuple(slice(a, b) for a, b in box)
        whole[inner] = rng.random(whole[inner].shape)
        sigma = float(rng.uniform(0.5, 4.0))
        values, where = _gaussian_in_box(whole[inner], box, shape, sigma)
        out = np.zeros(shape)
        out[where] = values
        assert np.array_equal(out, ndimage.gaussian_filter(whole, sigma, mode="constant")), f"seed={seed}"


def _plain_shift(smooth: np.ndarray, volume: Volume, tip: np.ndarray, axis: np.ndarray, a_mid: float, c_mid: float,
                 sigma_mm: float, thickness_mm: float, shifts_mm: np.ndarray) -> float:
    """The shell-model shift computed the plain way (the model of each shift blurred in full)."""
    step = orientation._SHELL_GRID_MM
    z_lo, z_hi = orientation._SHELL_FIT_Z_MM
    r_fit = orientation._SHELL_FIT_R_MM
    sectors = orientation._SHELL_SECTORS
    frame = LVFrame(tip, axis)
    z = np.arange(z_lo - 10.0, z_hi + 3.0 * sigma_mm + step, step)
    x = np.arange(-r_fit - 3.0 * sigma_mm, r_fit + 3.0 * sigma_mm + step, step)
    xx, yy = np.meshgrid(x, x, indexing="ij")
    pts = tip + z[:, None, None, None] * axis + xx[None, ..., None] * frame.anterior + yy[None, ..., None] * frame.septal
    r_xy = np.hypot(xx, yy)
    sector = np.minimum((np.mod(np.arctan2(yy, xx), 2 * np.pi) / (2 * np.pi) * sectors).astype(int), sectors - 1)
    fit = ((z >= z_lo) & (z <= z_hi))[:, None, None] & (r_xy <= r_fit)[None]
    data = orientation._sample(smooth, volume, pts[fit])
    am, cm, half = max(a_mid, 8.0), max(c_mid, 15.0), 0.5 * thickness_mm
    sse = []
    for shift in shifts_mm:
        tt = (z - shift)[:, None, None]
        shell = np.clip(orientation._ellipsoid_occupancy(tt, r_xy, am + half, cm + half, cm, step)
                        - orientation._ellipsoid_occupancy(tt, r_xy, am - half, cm - half, cm, step), 0.0, 1.0)
        shell = shell * (tt <= cm)
        cap = tt < half
        parts = [shell * cap] + [shell * (~cap & (sector == k)) for k in range(sectors)]
        design = np.stack([ndimage.gaussian_filter(q, sigma_mm / step, mode="constant")[fit] for q in parts]
                          + [np.ones(int(fit.sum()))], axis=1)
        coef, *_ = np.linalg.lstsq(design, data, rcond=None)
        sse.append(float(np.sum((design @ coef - data) ** 2)))
    k = int(np.argmin(sse))
    frac = 0.0
    if 0 < k < len(shifts_mm) - 1:
        y0, y1, y2 = sse[k - 1 : k + 2]
        denom = y0 - 2.0 * y1 + y2
        frac = 0.5 * (y0 - y2) / denom if denom > 0 else 0.0
    return float(shifts_mm[k] + frac * (shifts_mm[1] - shifts_mm[0]))


def test_shell_shift_matches_the_plain_fit() -> None:
    """A blurred half-ellipsoidal shell with noise whose apex is near the starting tip (the toy shell's wall
    is thinner at the sides than the model's, so the best shift is not exactly the planted 1.3 mm)."""
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    spacing = 4.0
    n = 40
    affine = np.diag([spacing, spacing, spacing, 1.0])
    idx = np.indices((n, n, n)).reshape(3, -1).T * spacing  # mm; LPS = index x spacing
    axis = np.array([0.0, 0.6, 0.8])
    tip = np.array([60.0, 50.0, 40.0])
    rel = idx - (tip + 1.3 * axis)
    t = rel @ axis
    r = np.linalg.norm(rel - t[:, None] * axis, axis=1)
    c, a = 45.0, 22.0
    e = (r / a) ** 2 + ((t - c) / c) ** 2
    shell = ((np.abs(np.sqrt(e) - 1.0) < 0.12) & (t <= c)).astype(float).reshape(n, n, n)
    smooth = ndimage.gaussian_filter(shell * 100.0 + rng.normal(0.0, 2.0, shell.shape), 6.5 / spacing)
    volume = Volume(smooth, affine)
    shifts = np.arange(-4.0, 4.01, 1.0)
    fast = orientation._apex_shift_from_shell_model(smooth, volume, tip, axis, a, c, 6.5, 11.0, shifts)
    plain = _plain_shift(smooth, volume, tip, axis, a, c, 6.5, 11.0, shifts)
    print(f"seed={seed} shift fast={fast:.12f} plain={plain:.12f}")
    # the classes of equal sub-step offset translate one blurred model instead of blurring each
    # shift's model (module comment: under 0.001 mm); the normal equations add ~1e-12 mm
    assert abs(fast - plain) < 1e-3, f"seed={seed}"
    assert -3.0 < fast < 3.5, f"seed={seed}: the best shift is inside the range (the parabolic step is used)"


def test_gated_prefilter_on_a_region_is_bit_identical() -> None:
    """The phase prefilter computed for a region only (node.quant.phase.prefilter_gated_voxels) equals
    filtering the whole gated volume there, also where the region meets the volume's faces."""
    from node.quant.phase import prefilter_gated_voxels

    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    voxels = rng.poisson(20.0, size=(3, 30, 26, 28)).astype(np.float32)
    spacing = (6.4, 5.0, 4.0)
    full = prefilter_gated_voxels(voxels, spacing)
    for _ in range(5):
        region = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in
                       ((int(rng.integers(0, n)), n) for n in voxels.shape[1:]))
        part = prefilter_gated_voxels(voxels, spacing, region=region)
        inside = (slice(None), *region)
        assert np.array_equal(part[inside], full[inside]), f"seed={seed} region={region}"
        outside = np.ones(part.shape, bool)
        outside[inside] = False
        assert not part[outside].any(), f"seed={seed}"


def test_region_holds_every_voxel_the_gated_maps_read() -> None:
    """Per-gate maps sampled from the region-only prefilter equal those of the whole-volume prefilter."""
    from node.quant.orientation import locate_lv
    from node.quant.phase import prefilter_gated_voxels
    from node.quant.polar_map import gated_sampling_region, grid_rows_z, midwall_surface_rows, sample_gated_polar_maps
    from node.quant.segments import DEFAULT_GRID
    from node.synth.spect.phantom import PhantomSpec, make_acquisition

    seed = random.SystemRandom().randrange(2**31)
    acq = make_acquisition(PhantomSpec(n_gates=8), "rest", np.random.default_rng(seed))
    location = locate_lv(acq.summed)
    surface = midwall_surface_rows(acq.summed, location, grid_rows_z(location, DEFAULT_GRID), DEFAULT_GRID.n_psi)
    gated = acq.frames
    region = gated_sampling_region(gated, location, surface)
    assert all(s.stop - s.start < n for s, n in zip(region, gated.shape3d)), f"seed={seed}: {region}"
    maps = [sample_gated_polar_maps(gated.with_voxels(prefilter_gated_voxels(gated.voxels, gated.spacing_mm, region=r)),
                                    location, surface=surface).values for r in (None, region)]
    assert np.array_equal(maps[0], maps[1]), f"seed={seed}"
