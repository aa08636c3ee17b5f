"""LV function from short-axis cine masks: EDV, ESV, SV, EF, LV mass, wall thickening (numpy/scipy only).

Reference note ``cmr_lge.md`` sections 2.2 (SCMR post-processing), 4.4 (achievable accuracy).

Conventions
-----------
* **Arrays** ``[phase, slice, row, column]`` (one cine stack; phases in trigger order) or
  ``[slice, row, column]``; slices in increasing order along the DICOM normal (any direction),
  ``slice_positions_mm[slice]`` their centres along it, ``pixel_spacing_mm`` = (between rows,
  between columns).
* **Simpson (disc) summation**: volume = sum over slices of area x slab, where the slab of a
  slice is half the distance to each neighbour (the end slices take their one neighbour's
  distance; a single slice takes ``slice_thickness_mm``). With even spacing the slab is the
  centre-to-centre spacing (slice thickness + gap), so a missing slice is bridged, never
  interpolated into an image.
* **Masks or fractions**: ``blood`` and ``myocardium`` may be bool masks or occupancy fractions
  in [0, 1]; volumes sum them (a fraction counts as that share of the voxel).
* **Basal-slice rule** (SCMR, reference 2.2): a slice at the basal end of the LV counts toward
  the volumes only while at least 50 % of its blood-pool border touches LV myocardium (the rest
  is LV outflow tract or atrium); slices basal to the first slice that fails are left out too.
  Applied per phase (the base descends in systole).
* **Papillary muscles and trabeculae** are counted in the **blood pool** (cavity volume) and not in
  the mass, whatever the masks enclose: the convention of the ACDC contours our segmentation
  follows. Mass = myocardial volume at end-diastole x 1.05 g/mL.
* **ED / ES** = the phases of largest and smallest LV volume unless given.
* **Wall thickening** per AHA segment: (mean ES thickness - mean ED thickness) / ED thickness,
  the thickness of a myocardial pixel being the sum of its in-plane distances to the blood pool
  and to the outside (one wall chord through it), segments from :mod:`node.quant.sax_segments`
  on each phase's own masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.sax_segments import PixelSpacing, SAXSegments, sax_segments, segment_sums

__all__ = [
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "PAPILLARY_CONVENTION",
    "simpson_slabs_mm",
    "basal_slice_keep",
    "wall_thickness_mm",
    "blood_fraction",
    "LVFunction",
    "lv_function",
]

#: myocardial density for mass = volume x density (reference 0.3)
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: where papillary muscles and trabeculae are counted (module docstring)
PAPILLARY_CONVENTION = "blood pool"


def simpson_slabs_mm(slice_positions_mm: np.ndarray, slice_thickness_mm: float = float("nan")) -> np.ndarray:
    """Slab (mm) each slice stands for in Simpson summation: half the distance to each neighbour."""
    z = np.asarray(slice_positions_mm, dtype=np.float64)
    if z.size == 1:
        if not np.isfinite(slice_thickness_mm):
            raise ValueError("one slice: give slice_thickness_mm")
        return np.array([float(slice_thickness_mm)])
    order = np.argsort(z)
    zs = z[order]
    d = np.diff(zs)
    slab_sorted = np.empty_like(zs)
    slab_sorted[1:-1] = 0.5 * (d[:-1] + d[1:])
    slab_sorted[0] = d[0]
    slab_sorted[-1] = d[-1]
    out = np.empty_like(zs)
    out[order] = slab_sorted
    return out


def basal_slice_keep(blood: np.ndarray, myocardium: np.ndarray, *, apex_first: bool = True,
                     min_surround: float = 0.5) -> np.ndarray:
    """Bool [slice]: slices that count toward the volumes by the basal-slice rule (module docstring).

    ``blood``/``myocardium`` ``[slice, row, column]``; for fractions both are taken ``>= 0.2`` after a
    3 x 3 in-plane mean (a basal slab the base plane cuts holds a faint ring around a faint pool, and
    fractions measured from pixels are noisy).
    A slice's share is the fraction of its blood-pool border pixels (8-neighbourhood) with a
    myocardial pixel within two pixels (a partial-volume basal slab has a thin, broken ring). Walking from the most basal slice with blood toward the apex, slices
    are dropped until the first that meets ``min_surround``; every slice from there apically is kept,
    and so is a slice with no blood-pool pixel (it adds only the fractions it holds).
    """
    b_in, m_in = np.asarray(blood), np.asarray(myocardium)
    # fractions measured from pixels are noisy: the rule reads them smoothed in-plane (3 x 3 mean)
    b = b_in if b_in.dtype == bool else ndimage.uniform_filter(b_in.astype(np.float64), size=(1, 3, 3)) >= 0.2
    m = m_in if m_in.dtype == bool else ndimage.uniform_filter(m_in.astype(np.float64), size=(1, 3, 3)) >= 0.2
    flat = np.ones((1, 3, 3), dtype=bool)
    b = np.stack([ndimage.binary_fill_holes(sl) for sl in b]) if b.size else b  # holes have no myocardial border
    border = b & ~ndimage.binary_erosion(b, flat, border_value=0)
    touching = border & ndimage.binary_dilation(m, flat, iterations=2)
    n_border = border.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_border > 0, touching.sum(axis=(1, 2)) / np.maximum(n_border, 1), 0.0)
    ok = share >= min_surround
    has = n_border > 0
    n = b.shape[0]
    order = np.arange(n) if apex_first else np.arange(n)[::-1]  # apex -> base
    keep_ab = np.ones(n, dtype=bool)
    ok_ab, has_ab = ok[order], has[order]
    with_blood = np.flatnonzero(has_ab)
    if with_blood.size:
        good = with_blood[ok_ab[with_blood]]
        top = int(good[-1]) if good.size else -1
        keep_ab[with_blood[with_blood > top]] = False
    out = np.empty(n, dtype=bool)
    out[order] = keep_ab
    return out


def wall_thickness_mm(blood: np.ndarray, myocardium: np.ndarray, pixel_spacing_mm: PixelSpacing) -> np.ndarray:
    """Local wall thickness (mm) of every myocardial pixel ``[slice, row, column]`` (NaN elsewhere).

    In-plane distance to the nearest blood-pool pixel plus distance to the nearest pixel outside
    the LV (neither blood nor myocardium), minus one pixel (both distances are centre to centre).
    """
    b = np.asarray(blood, dtype=bool)
    m = np.asarray(myocardium, dtype=bool)
    sampling = (1e6, float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))  # no reach across slices
    out = np.full(m.shape, np.nan)
    if not m.any():
        return out
    d_endo = ndimage.distance_transform_edt(~b, sampling=sampling)
    d_epi = ndimage.distance_transform_edt(b | m, sampling=sampling)
    pixel = 0.5 * (float(pixel_spacing_mm[0]) + float(pixel_spacing_mm[1]))
    no_blood = np.asarray(~b.any(axis=(1, 2)), dtype=bool)
    # a cap slice without cavity: the wall is the whole slice's myocardium (thickness = 2 x distance to outside)
    thick = np.where(no_blood[:, None, None], 2.0 * d_epi - pixel, d_endo + d_epi - pixel)
    out[m] = thick[m]
    return out


def blood_fraction(image: np.ndarray, blood: np.ndarray, myocardium: np.ndarray) -> np.ndarray:
    """Partial-volume blood occupancy ``[slice, row, column]`` of one cine phase (bSSFP: blood bright).

    Inside the blood mask and a one-pixel in-plane band around it, the occupancy is
    ``(I - m) / (b - m)`` (clipped to [0, 1.5] against outliers, not at 1, so noise averages out),
    with ``b`` the median over slices of the median of each slice's blood core (mask eroded one
    pixel; slices with a core of at least 30 pixels and a quarter of the largest) and ``m`` the
    median of the myocardial core of the phase; 0 elsewhere. It recovers the in-plane partial volume at the
    endocardium and the through-plane partial volume of a basal slab the mask holds (the plane
    of the base cuts it); a basal slab the mask leaves out stays out.
    """
    img = np.asarray(image, dtype=np.float64)
    b = np.asarray(blood, dtype=bool)
    m = np.asarray(myocardium, dtype=bool)
    flat = np.ones((1, 3, 3), dtype=bool)
    b_core = ndimage.binary_erosion(b, flat, border_value=0)
    m_core = ndimage.binary_erosion(m, flat, border_value=0)
    if not b_core.any() or not (m_core.any() or m.any()):
        return b.astype(np.float64)
    # per-slice medians, then their median: a basal slab the base plane cuts is darker, and must not set b
    sizes = b_core.sum(axis=(1, 2))
    big = np.flatnonzero(sizes >= max(30, 0.25 * sizes.max()))
    b_ref = float(np.median([np.median(img[k][b_core[k]]) for k in big]))
    m_ref = float(np.median(img[m_core] if m_core.any() else img[m]))
    if b_ref <= m_ref:
        return b.astype(np.float64)
    region = ndimage.binary_dilation(b, flat) & (b | m)
    f = np.clip((img - m_ref) / (b_ref - m_ref), 0.0, 1.5)
    return np.where(region, f, 0.0)


@dataclass(frozen=True, eq=False)
class LVFunction:
    """LV volumes, EF, mass and wall thickening from a cine short-axis stack.

    Volumes mL, mass g, EF %, thickness mm, thickening %. Segment arrays have 17 entries (index 0
    = segment 1; NaN where the segment is not assessed, e.g. 17 from short axis).
    ``phase_volume_ml`` [phase]: LV cavity volume of every phase; ``slices_used_ed``/``_es`` [slice]:
    the basal-slice rule's choice; ``method`` names the method and conventions.
    """

    edv_ml: float
    esv_ml: float
    sv_ml: float
    ef_pct: float
    lv_myocardial_volume_ml: float
    lv_mass_g: float
    ed_phase: int
    es_phase: int
    phase_volume_ml: np.ndarray
    slices_used_ed: np.ndarray
    slices_used_es: np.ndarray
    segment_thickness_ed_mm: np.ndarray
    segment_thickness_es_mm: np.ndarray
    segment_thickening_pct: np.ndarray
    papillary_convention: str
    method: str


def _as_4d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 3 else a


def lv_function(
    blood: np.ndarray,
    myocardium: np.ndarray,
    pixel_spacing_mm: PixelSpacing,
    slice_positions_mm: np.ndarray,
    *,
    rv: np.ndarray | None = None,
    ed_phase: int | None = None,
    es_phase: int | None = None,
    apex_first: bool | None = None,
    slice_thickness_mm: float = float("nan"),
    basal_rule: bool = True,
    segments_ed: SAXSegments | None = None,
    segments_es: SAXSegments | None = None,
) -> LVFunction:
    """EDV, ESV, SV, EF, LV mass (Simpson summation) and per-segment wall thickening.

    Parameters
    ----------
    blood, myocardium : arrays [phase, slice, row, column] (or [slice, row, column] for one phase)
        LV cavity and LV myocardium per phase: bool masks or occupancy fractions (module docstring).
    pixel_spacing_mm : (float, float)
        Between rows, between columns (mm).
    slice_positions_mm : array [slice]
        Slice centres along the slice normal (mm).
    rv : array like ``blood`` or None
        RV cavity, for the segments' septal reference (thickening only).
    ed_phase, es_phase : int or None
        Phase indices; default the largest and smallest volume.
    apex_first : bool or None
        Slice 0 is the apex; inferred from the ED cavity when None.
    basal_rule : bool
        Apply the basal-slice rule (default True).
    segments_ed, segments_es : SAXSegments or None
        Segments to use for thickening; computed from the ED/ES masks when None.
    """
    b4 = _as_4d(blood)
    m4 = _as_4d(myocardium)
    if b4.shape != m4.shape:
        raise ValueError(f"blood and myocardium shapes differ: {b4.shape} vs {m4.shape}")
    n_phases, n_slices = b4.shape[:2]
    # work on the bounding box of LV and RV (plus a margin): the rule, thickness and segments only look there
    rv4 = None if rv is None else _as_4d(rv)
    present = np.any((b4 > 0) | (m4 > 0), axis=(0, 1)) | (False if rv4 is None else np.any(rv4 > 0, axis=(0, 1)))
    if present.any():
        rows, cols = np.flatnonzero(present.any(axis=1)), np.flatnonzero(present.any(axis=0))
        margin = 6
        box = (slice(None), slice(None), slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
               slice(max(int(cols[0]) - margin, 0), int(cols[-1]) + margin + 1))
        b4, m4 = b4[box], m4[box]
        rv4 = None if rv4 is None else rv4[box]
    slabs = simpson_slabs_mm(slice_positions_mm, slice_thickness_mm)
    if slabs.shape != (n_slices,):
        raise ValueError(f"slice_positions_mm must have {n_slices} entries")
    area_mm2 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
    if apex_first is None:
        cav = b4[0].sum(axis=(1, 2), dtype=np.float64)
        has = np.flatnonzero(m4[0].sum(axis=(1, 2), dtype=np.float64) > 0)
        apex_first = bool(cav.sum() <= 0 or has.size == 0
                          or np.sum(np.arange(n_slices) * cav) / cav.sum() >= 0.5 * (has[0] + has[-1]))
    keep = np.ones((n_phases, n_slices), dtype=bool)
    if basal_rule:
        keep = np.stack([basal_slice_keep(b4[p], m4[p], apex_first=apex_first) for p in range(n_phases)])
    slice_blood = b4.sum(axis=(2, 3), dtype=np.float64) * area_mm2 * slabs[None] / 1000.0  # mL per phase and slice
    slice_myo = m4.sum(axis=(2, 3), dtype=np.float64) * area_mm2 * slabs[None] / 1000.0
    volumes = np.sum(slice_blood * keep, axis=1)
    ed = int(np.argmax(volumes)) if ed_phase is None else int(ed_phase)
    es = int(np.argmin(volumes)) if es_phase is None else int(es_phase)
    edv, esv = float(volumes[ed]), float(volumes[es])
    myo_ml = float(np.sum(slice_myo[ed] * keep[ed]))

    spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    thick = []
    for phase, given in ((ed, segments_ed), (es, segments_es)):
        bm, mm = b4[phase] >= 0.5, m4[phase] >= 0.5
        seg = given if given is not None else sax_segments(
            bm, mm, None if rv4 is None else rv4[phase] >= 0.5, spacing, apex_first=apex_first)
        t = wall_thickness_mm(bm, mm, spacing)
        ok = (seg.segments > 0) & np.isfinite(t)
        labels = np.where(ok, seg.segments, 0)
        n = segment_sums(labels, ok)
        with np.errstate(invalid="ignore", divide="ignore"):
            thick.append(np.where(n > 0, segment_sums(labels, np.where(ok, t, 0.0)) / np.maximum(n, 1), np.nan))
    t_ed, t_es = thick
    with np.errstate(invalid="ignore", divide="ignore"):
        thickening = 100.0 * (t_es - t_ed) / t_ed
    method = ("Simpson summation of short-axis slices (slab = half the distance to each neighbour)"
              + ("; SCMR basal-slice rule (>= 50 % of the blood-pool border on myocardium)" if basal_rule else "")
              + f"; papillary muscles in the {PAPILLARY_CONVENTION}; mass = ED myocardial volume x "
              f"{MYOCARDIAL_DENSITY_G_PER_ML} g/mL")
    return LVFunction(
        edv_ml=edv, esv_ml=esv, sv_ml=edv - esv, ef_pct=100.0 * (edv - esv) / edv if edv > 0 else float("nan"),
        lv_myocardial_volume_ml=myo_ml, lv_mass_g=myo_ml * MYOCARDIAL_DENSITY_G_PER_ML,
        ed_phase=ed, es_phase=es, phase_volume_ml=volumes, slices_used_ed=keep[ed], slices_used_es=keep[es],
        segment_thickness_ed_mm=t_ed, segment_thickness_es_mm=t_es, segment_thickening_pct=thickening,
        papillary_convention=PAPILLARY_CONVENTION, method=method,
    )

