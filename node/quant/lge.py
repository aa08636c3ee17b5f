"""Late gadolinium enhancement (LGE) quantification on a short-axis stack (numpy/scipy only).

Reference note ``cmr_lge.md`` sections 0, 2.1-2.5 (methods, SCMR recommendations, our phantom
Monte-Carlo) and 4.4.

Method (one code path, thresholds differ)
-----------------------------------------
* **Remote myocardium** (automatic unless the caller gives a mask): of the 18 regions
  "60 deg sector (``psi`` in ``[-30 + 60 j, 30 + 60 j)``) x ring (basal, mid, apical slices)" with at
  least 30 voxels, the one with the lowest mean signal, in the *core* myocardium (one pixel eroded
  in-plane, so no partial volume with blood or epicardial fat). A whole-LV sector (the reference
  Monte-Carlo's choice) holds scar in every sector of a multifocal heart; a sector of one ring rarely does.
  Coarse pixels may leave too thin a core: :func:`auto_remote` then falls back to whole-LV
  sectors, then to the uneroded myocardium (the region used is named in the result).
* **n-SD**: enhanced = myocardium brighter than ``remote mean + n x remote SD``; ``n = 5`` is the
  primary method (the 5.7 % cut-off of the cardiac-sarcoidosis literature was set with 5 SD,
  reference 2.4); 2, 3 and 6 SD are reported as secondary numbers.
* **FWHM** (magnitude images only, never PSIR: vendors store PSIR signed with an offset): the
  offset-invariant "FWHM (remote)" form, threshold = remote mean + 0.5 x (max - remote mean),
  where max is the 99th percentile inside the *gated* regions (connected regions of at least
  10 voxels above remote + 5 SD in the core myocardium); no such region -> no LGE.
* **Endocardial rim rule** (all methods, on by default): a myocardial pixel that touches the
  blood pool (8-neighbourhood in-plane) counts only if it is also brighter than the mean of its
  slice's blood pool (core, one pixel eroded). It removes the partial-volume-with-blood false
  positives that make plain n-SD over-read at high SNR (reference 2.5). Its epicardial twin (ours,
  on with it): a myocardial pixel that touches the outside of the LV counts only if it is brighter
  than the mean of those outside neighbours, which removes partial volume with bright epicardial
  fat (the fat-pad false positive) and keeps epicardial scar next to dark lung or body.
* **MVO filling** (SCMR: include microvascular obstruction in the infarct): myocardium enclosed,
  in-plane, by enhanced myocardium and the blood pool and darker than the threshold (the dark
  core of an infarct) is counted as LGE. Pixels brighter than the threshold that the rim rule
  dropped (blood partial volume) are not "dark" and stay out.
* **Volumes** by Simpson summation of voxels (slab = half the distance to each neighbouring
  slice, :func:`node.quant.cmr_function.simpson_slabs_mm`); mass = volume x 1.05 g/mL; %LV =
  LGE mass / LV myocardial mass **of the same LGE stack**.
* **Segments**: extent = % of the segment's myocardium that is enhanced; transmurality = mean,
  over the 3.6 deg wall chords of the segment that hold LGE, of the enhanced share of the chord's
  myocardium; SCMR classes 0, 1-25, 26-50, 51-75, 76-100 %.
* **Pattern**: each focus (3-D connected region of at least ``min_focus_ml``) is transmural when it
  reaches both the endocardial and the epicardial border pixels on at least 30 % of its chords,
  subendocardial when only the endocardial, epicardial when only the epicardial, mid-wall when
  neither; ``multifocal`` = two or more foci; ``rv_insertion`` = a focal focus (azimuthal span at
  most 60 deg) centred within 20 deg of an RV insertion point (the median over its slices of
  :attr:`node.quant.sax_segments.SAXSegments.insertion_psi_deg`); a territorial infarct that merely
  spans an insertion point is not flagged.

Arrays are ``[slice, row, column]`` as in :mod:`node.quant.sax_segments`; the image is in any
linear signal unit (magnitude or PSIR, without vendor offset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.cmr_function import MYOCARDIAL_DENSITY_G_PER_ML, simpson_slabs_mm
from node.quant.sax_segments import PixelSpacing, SAXSegments, arc_middle, segment_sums
from node.quant.segments import N_SEGMENTS, segment_of

__all__ = [
    "LGE_CUTOFF_PCT_LV",
    "PRIMARY_N_SD",
    "SECONDARY_N_SD",
    "TRANSMURALITY_CLASSES",
    "RemoteRegion",
    "LGEMeasurement",
    "LGEPattern",
    "LGEResult",
    "auto_remote",
    "transmurality_class",
    "quantify_lge",
]

#: %LV cut-off of Kazmirczak 2019 / Murtagh 2016 (cardiac sarcoidosis, reference 2.4)
LGE_CUTOFF_PCT_LV = 5.7
PRIMARY_N_SD = 5.0
SECONDARY_N_SD: tuple[float, ...] = (2.0, 3.0, 6.0)
#: SCMR segmental transmurality categories (% of wall)
TRANSMURALITY_CLASSES: tuple[str, ...] = ("0", "1-25", "26-50", "51-75", "76-100")

_N_CHORDS = 100  # wall chords per slice (3.6 deg)
_FLAT8 = np.ones((1, 3, 3), dtype=bool)


@dataclass(frozen=True)
class RemoteRegion:
    """The remote (reference) myocardium: signal mean and SD (image units), voxel count, and how it was chosen
    (``"auto"``: lowest-mean 60 deg sector of one ring, ``psi_range_deg`` its AHA azimuths and ``ring``
    basal/mid/apical or ``"all"`` (a sector over all LV slices, or the whole myocardium when
    ``psi_range_deg`` is None); ``"user"``: given mask)."""

    mean: float
    sd: float
    n_voxels: int
    source: str
    psi_range_deg: tuple[float, float] | None
    ring: str | None = None


@dataclass(frozen=True, eq=False)
class LGEMeasurement:
    """LGE by one method. Volumes mL, masses g, percentages of LV mass; segment arrays [17]
    (index 0 = segment 1, NaN where the segment has no myocardium); ``mask`` [slice, row, column]."""

    method: str
    threshold: float
    lge_volume_ml: float
    lge_mass_g: float
    lge_pct_lv: float
    mvo_filled_ml: float
    segment_extent_pct: np.ndarray
    segment_transmurality_pct: np.ndarray
    segment_transmurality_class: tuple[str, ...]
    mask: np.ndarray

    @property
    def above_cutoff(self) -> bool:
        """LGE above 5.7 % of LV mass (the cardiac-sarcoidosis risk cut-off)."""
        return bool(self.lge_pct_lv > LGE_CUTOFF_PCT_LV)


@dataclass(frozen=True)
class LGEPattern:
    """Scar pattern of the primary method: ``labels`` (sorted subset of subendocardial, mid-wall,
    epicardial, transmural), ``n_foci``, ``multifocal``, ``rv_insertion``, ``mvo`` (a core was filled),
    ``ischaemic_like`` (only subendocardial/transmural foci)."""

    labels: tuple[str, ...]
    n_foci: int
    multifocal: bool
    rv_insertion: bool
    mvo: bool

    @property
    def ischaemic_like(self) -> bool:
        return bool(self.labels) and set(self.labels) <= {"subendocardial", "transmural"}


@dataclass(frozen=True, eq=False)
class LGEResult:
    """LGE of one stack: the primary method (5 SD + rim rule + MVO filling by default), the
    secondary ones (2, 3, 6 SD and FWHM on magnitude images) keyed by method name, the LV
    myocardium of the same stack (mL, g), the remote region, the pattern and the 5.7 % flag."""

    primary: LGEMeasurement
    secondary: dict[str, LGEMeasurement]
    lv_myocardium_ml: float
    lv_mass_g: float
    remote: RemoteRegion
    pattern: LGEPattern
    psir: bool
    cutoff_pct_lv: float = LGE_CUTOFF_PCT_LV

    @property
    def above_cutoff(self) -> bool:
        return self.primary.above_cutoff

    @property
    def method(self) -> str:
        return self.primary.method


def transmurality_class(pct: np.ndarray) -> tuple[str, ...]:
    """SCMR class label of each transmurality (%): 0 (none or NaN), 1-25, 26-50, 51-75, 76-100."""
    p = np.nan_to_num(np.asarray(pct, dtype=float))
    idx = np.where(p <= 0, 0, np.clip(np.ceil(p / 25.0), 1, 4)).astype(int)
    return tuple(TRANSMURALITY_CLASSES[i] for i in idx)


def _core(myo: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(myo, np.ones((1, 3, 3), dtype=bool), border_value=0)


def auto_remote(image: np.ndarray, myocardium: np.ndarray, seg: SAXSegments, *, min_voxels: int = 30) -> RemoteRegion:
    """The lowest-mean region of the myocardium over the LV slices (module docstring).

    Candidates, in order, until one holds a region of at least ``min_voxels``: 60 deg sector x ring
    in the core myocardium; 60 deg sector over all LV slices in the core; the same two in the
    uneroded myocardium (coarse pixels leave a thin core); the whole myocardium.
    """
    lv_slices = np.isin(seg.ring, (1, 2, 3))[:, None, None]
    sector = (np.floor(np.mod(np.nan_to_num(seg.psi_deg) + 30.0, 360.0) / 60.0).astype(np.intp)) % 6
    ring = np.broadcast_to(np.clip(seg.ring, 1, 3)[:, None, None] - 1, sector.shape)
    img = np.asarray(image, dtype=np.float64)
    for region in (_core(myocardium) & lv_slices, myocardium & lv_slices):
        for by_ring in (True, False):
            vals = img[region]
            cand = (ring[region] * 6 + sector[region]) if by_ring else sector[region]
            count = np.bincount(cand, minlength=18)
            means = np.bincount(cand, weights=vals, minlength=18) / np.maximum(count, 1)
            means = np.where(count >= min_voxels, means, np.inf)
            if np.isfinite(means).any():
                j = int(np.argmin(means))
                chosen = vals[cand == j]
                lo = float(np.mod(-30.0 + 60.0 * (j % 6), 360.0))
                return RemoteRegion(float(chosen.mean()), float(chosen.std(ddof=1)), int(chosen.size), "auto",
                                    (lo, lo + 60.0), ("basal", "mid", "apical")[j // 6] if by_ring else "all")
    vals = img[myocardium]
    if vals.size < 2:
        raise ValueError("too little myocardium for a remote region")
    return RemoteRegion(float(vals.mean()), float(vals.std(ddof=1)), int(vals.size), "auto", None, "all")


def _blood_means(image: np.ndarray, blood: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(blood, _FLAT8, border_value=0)
    core = np.where(core.any(axis=(1, 2))[:, None, None], core, blood)
    n = core.sum(axis=(1, 2))
    sums = np.where(core, image, 0.0).sum(axis=(1, 2))
    overall = float(image[core].mean()) if core.any() else np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, sums / np.maximum(n, 1), overall)


def _fill_mvo(enhanced: np.ndarray, blood: np.ndarray, myo: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Hypo-intense (``dark``) myocardium enclosed in-plane by enhanced myocardium and blood pool (per slice)."""
    solid = np.pad(enhanced | blood, ((1, 1), (0, 0), (0, 0)), constant_values=True)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    filled = ndimage.binary_fill_holes(solid, structure)[1:-1]
    return filled & myo & ~enhanced & ~blood & dark


def _chords(seg: SAXSegments, myo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chord index of every pixel (slice x 100 azimuth bins) and the AHA segment of each chord."""
    n = myo.shape[0]
    bins = np.clip((np.nan_to_num(seg.psi_deg) / 360.0 * _N_CHORDS).astype(np.intp), 0, _N_CHORDS - 1)
    chord = np.arange(n)[:, None, None] * _N_CHORDS + bins
    u = np.array([0.0, 0.9, 0.5, 0.2, 0.0])[seg.ring]
    centres = (np.arange(_N_CHORDS) + 0.5) * 360.0 / _N_CHORDS
    chord_seg = segment_of(u[:, None], centres[None, :], 0.0)
    chord_seg = np.where((seg.ring == 4)[:, None], 17, chord_seg)
    chord_seg = np.where((seg.ring > 0)[:, None], chord_seg, 0)
    return chord, chord_seg.ravel()


def _measure(name: str, threshold: float, enhanced: np.ndarray, mvo: np.ndarray, myo: np.ndarray,
             voxel_ml: np.ndarray, myo_ml: float, seg: SAXSegments, chord: np.ndarray,
             chord_seg: np.ndarray) -> LGEMeasurement:
    mask = enhanced | mvo
    w = np.broadcast_to(voxel_ml, myo.shape)
    vol = float(np.sum(w[mask]))
    labels = np.where(myo, seg.segments, 0)
    seg_myo = segment_sums(labels, np.where(myo, w, 0.0))
    seg_lge = segment_sums(labels, np.where(mask & myo, w, 0.0))
    n_chords = chord_seg.size
    c_myo = np.bincount(chord[myo], minlength=n_chords).astype(np.float64)
    c_lge = np.bincount(chord[mask & myo], minlength=n_chords).astype(np.float64)
    hit = c_lge > 0
    frac = np.where(hit, c_lge / np.maximum(c_myo, 1), 0.0)
    t_sum = np.bincount(chord_seg[hit], weights=frac[hit], minlength=N_SEGMENTS + 1)[1:N_SEGMENTS + 1]
    t_n = np.bincount(chord_seg[hit], minlength=N_SEGMENTS + 1)[1:N_SEGMENTS + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        extent = np.where(seg_myo > 0, 100.0 * seg_lge / seg_myo, np.nan)
        trans = np.where(seg_myo > 0, np.where(t_n > 0, 100.0 * t_sum / np.maximum(t_n, 1), 0.0), np.nan)
    return LGEMeasurement(
        method=name, threshold=float(threshold), lge_volume_ml=vol, lge_mass_g=vol * MYOCARDIAL_DENSITY_G_PER_ML,
        lge_pct_lv=100.0 * vol / myo_ml if myo_ml > 0 else float("nan"),
        mvo_filled_ml=float(np.sum(w[mvo])), segment_extent_pct=extent, segment_transmurality_pct=trans,
        segment_transmurality_class=transmurality_class(trans), mask=mask,
    )


def _pattern(mask: np.ndarray, mvo: np.ndarray, blood: np.ndarray, myo: np.ndarray, seg: SAXSegments,
             chord: np.ndarray, voxel_ml: np.ndarray, min_focus_ml: float, rv_window_deg: float,
             rv_max_span_deg: float) -> LGEPattern:
    structure = ndimage.generate_binary_structure(3, 3)
    lab, n = ndimage.label(mask, structure)
    if n == 0:
        return LGEPattern((), 0, False, False, bool(mvo.any()))
    w = np.broadcast_to(voxel_ml, mask.shape)
    size = ndimage.sum_labels(w, lab, index=np.arange(1, n + 1))
    endo = myo & ndimage.binary_dilation(blood, _FLAT8)
    epi = myo & ndimage.binary_dilation(~(myo | blood), _FLAT8)
    keep = np.flatnonzero(size >= min_focus_ml) + 1
    labels: set[str] = set()
    rv_insertion = False
    for focus in keep:
        inside = lab == focus
        chords = np.unique(chord[inside])
        reach_endo = np.isin(chords, chord[inside & endo]).mean()
        reach_epi = np.isin(chords, chord[inside & epi]).mean()
        e, p = reach_endo >= 0.3, reach_epi >= 0.3
        labels.add("transmural" if e and p else "subendocardial" if e else "epicardial" if p else "mid-wall")
        ins = seg.insertion_psi_deg[np.nonzero(inside)[0]]
        finite = np.isfinite(ins).all(axis=1)
        if finite.any():
            middle, start, end = arc_middle(seg.psi_deg[inside].astype(np.float64))
            span = float(np.mod(end - start, 360.0))
            ref = np.nanmedian(ins[finite], axis=0)
            d = np.abs(np.mod(middle - ref + 180.0, 360.0) - 180.0)
            rv_insertion |= bool(span <= rv_max_span_deg and float(d.min()) <= rv_window_deg)
    return LGEPattern(tuple(sorted(labels)), int(keep.size), bool(keep.size >= 2), rv_insertion, bool(mvo.any()))


def quantify_lge(
    image: np.ndarray,
    myocardium: np.ndarray,
    blood: np.ndarray,
    segments: SAXSegments,
    pixel_spacing_mm: PixelSpacing,
    slice_positions_mm: np.ndarray,
    *,
    psir: bool = False,
    n_sd: float = PRIMARY_N_SD,
    secondary_n_sd: tuple[float, ...] = SECONDARY_N_SD,
    rim_rule: bool = True,
    fill_mvo: bool = True,
    remote_mask: np.ndarray | None = None,
    slice_thickness_mm: float = float("nan"),
    min_focus_ml: float = 0.3,
    rv_window_deg: float = 20.0,
    rv_max_span_deg: float = 60.0,
) -> LGEResult:
    """LGE burden, segments and pattern of one LGE short-axis stack (module docstring).

    Parameters
    ----------
    image : array [slice, row, column]
        LGE signal (magnitude, or PSIR with any vendor offset removed).
    myocardium, blood : bool arrays [slice, row, column]
        LV myocardium (scar and MVO included) and LV blood pool on the LGE stack.
    segments : SAXSegments
        From :func:`node.quant.sax_segments.sax_segments` on the same masks.
    pixel_spacing_mm, slice_positions_mm
        Between rows, between columns (mm); slice centres along the normal (mm).
    psir : bool
        The image is phase-sensitive (FWHM is then not computed).
    n_sd, secondary_n_sd
        Primary and secondary n-SD thresholds.
    rim_rule, fill_mvo : bool
        Endocardial rim rule and MVO filling (both on by default, for every method).
    remote_mask : bool array or None
        User override of the remote region.
    """
    img = np.asarray(image, dtype=np.float64)
    myo = np.asarray(myocardium, dtype=bool)
    bp = np.asarray(blood, dtype=bool)
    if not (img.shape == myo.shape == bp.shape == segments.segments.shape):
        raise ValueError("image, masks and segments must share one [slice, row, column] shape")
    slabs = simpson_slabs_mm(slice_positions_mm, slice_thickness_mm)
    voxel_ml = (float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * slabs / 1000.0)[:, None, None]
    myo_ml = float(np.sum(np.where(myo, voxel_ml, 0.0)))

    if remote_mask is not None:
        r = np.asarray(remote_mask, dtype=bool) & myo
        if r.sum() < 2:
            raise ValueError("remote_mask holds fewer than two myocardial voxels")
        vals = img[r]
        remote = RemoteRegion(float(vals.mean()), float(vals.std(ddof=1)), int(vals.size), "user", None)
    else:
        remote = auto_remote(img, myo, segments)

    rim_ok = np.ones(myo.shape, dtype=bool)
    if rim_rule:
        rim = myo & ndimage.binary_dilation(bp, _FLAT8)
        rim_ok = ~rim | (img > _blood_means(img, bp)[:, None, None])
        outside = ~(myo | bp)
        kernel = _FLAT8.astype(np.float64)
        n_out = ndimage.convolve(outside.astype(np.float64), kernel, mode="constant")
        s_out = ndimage.convolve(np.where(outside, img, 0.0), kernel, mode="constant")
        epi = myo & (n_out > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rim_ok &= ~epi | (img > s_out / np.maximum(n_out, 1))
    chord, chord_seg = _chords(segments, myo)
    rule = ("+rim" if rim_rule else "") + ("+MVO" if fill_mvo else "")
    if remote.source == "user":
        remote_txt = "remote user ROI"
    elif remote.psi_range_deg is None:
        remote_txt = "remote auto whole myocardium"
    else:
        remote_txt = (f"remote auto sector psi {remote.psi_range_deg[0]:.0f}-{remote.psi_range_deg[1]:.0f} deg, "
                      f"{remote.ring} slices")

    def run(name: str, threshold: float) -> LGEMeasurement:
        enhanced = myo & (img > threshold) & rim_ok
        mvo = _fill_mvo(enhanced, bp, myo, img <= threshold) if fill_mvo else np.zeros_like(myo)
        return _measure(f"{name}{rule} ({remote_txt})", threshold, enhanced, mvo, myo, voxel_ml, myo_ml, segments,
                        chord, chord_seg)

    def nsd(n: float) -> str:
        return f"{n:g}SD"

    primary = run(nsd(n_sd), remote.mean + n_sd * remote.sd)
    secondary = {m.method: m for m in (run(nsd(n), remote.mean + n * remote.sd) for n in secondary_n_sd)}
    if not psir:
        gate_mask = _core(myo) & (img > remote.mean + PRIMARY_N_SD * remote.sd)
        lab, n = ndimage.label(gate_mask)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        big = np.flatnonzero(sizes >= 10)
        big = big[big > 0]
        if big.size:
            peak = float(np.percentile(img[np.isin(lab, big)], 99))
            fwhm = run("FWHM", remote.mean + 0.5 * (peak - remote.mean))
        else:
            fwhm = _measure(f"FWHM{rule} ({remote_txt}; no region above the 5SD gate)", float("inf"),
                            np.zeros_like(myo), np.zeros_like(myo), myo, voxel_ml, myo_ml, segments, chord, chord_seg)
        secondary[fwhm.method] = fwhm
    mvo_used = fill_mvo and primary.mvo_filled_ml > 0
    pattern = _pattern(primary.mask, primary.mask & ~(myo & (img > primary.threshold) & rim_ok) if mvo_used
                       else np.zeros_like(myo), bp, myo, segments, chord, voxel_ml, min_focus_ml, rv_window_deg,
                       rv_max_span_deg)
    return LGEResult(primary, secondary, myo_ml, myo_ml * MYOCARDIAL_DENSITY_G_PER_ML, remote, pattern, bool(psir))
