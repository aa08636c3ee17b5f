"""AHA 17 segments on a short-axis (SAX) MR stack from LV and RV masks (numpy/scipy only).

Reference note ``cmr_lge.md`` section 3.4 (the ukbb_cardiac convention) and DESIGN section 5.
Segment numbering, sector borders and territories are those of :mod:`node.quant.segments`
(:func:`~node.quant.segments.segment_of`): this module only finds, per pixel, the ring
(basal/mid/apical/cap) and the azimuth ``psi``.

Conventions
-----------
* **Arrays** are ``[slice, row, column]``; slices in increasing order along the DICOM normal
  ``row_cosine x column_cosine`` (the order of :class:`node.imaging.volume.ShortAxisStack`).
  ``pixel_spacing_mm`` is (between rows, between columns), as DICOM Pixel Spacing.
* **Apex end.** Which end of the stack is the apex is inferred from the cavity (the cavity area
  is centred toward the base) unless ``apex_first`` is given.
* **Handedness.** When the apex is slice 0 the normal points apex -> base and the displayed image
  (row 0 at the top, column 0 at the left) is seen from the apex, so ``psi`` (from anterior toward
  septum) runs counter-clockwise on the display; when the apex is the last slice the display is
  seen from the base and ``psi`` runs clockwise. ``counterclockwise`` overrides it.
* **Display angle** ``phi`` of a pixel: degrees counter-clockwise on the display from the
  +column direction (3 o'clock), about the LV centre of its slice (centroid of cavity plus
  myocardium; of the myocardium alone on cap slices), with physical (mm) offsets.
* **Angle reference = mid-septum**: the middle of the LV-RV contact arc, i.e. of the two RV
  insertion points (the ends of the arc of LV epicardial pixels within ``contact_mm`` of the RV
  mask). ``psi = 90`` there; fixed 60 deg (basal, mid) and 90 deg (apical) sectors follow.
  The RV mask may be the RV cavity alone or cavity plus free wall.
* **Fallbacks** (recorded per slice in :attr:`SAXSegments.reference`): a slice without an RV
  contact arc takes the mid-septum of the nearest slice that has one (``"nearest_slice"``); with
  no contact on any slice, ``septal_display_deg`` (e.g. carried from the cine stack through
  patient coordinates) is used (``"supplied"``), else the standard display is assumed (septum at
  9 o'clock, ``"assumed_display"``), which is only right for images planned in that orientation.
* **Rings** (reference 3.4): LV slices hold at least ``min_pixels`` pixels of cavity and of
  myocardium; they split into thirds by count from the base (``ceil(n/3)`` basal, up to
  ``ceil(2n/3)`` mid, the rest apical). Myocardium on slices apical to the LV slices (no cavity)
  is segment 17 (apex cap); slices basal to them belong to the basal ring. SAX alone rarely shows
  the cap, so segment 17 is usually "not assessed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.quant.segments import N_SEGMENTS, segment_of

__all__ = [
    "PixelSpacing",
    "RING_NAMES",
    "SAXSegments",
    "slice_rings",
    "display_angles",
    "arc_middle",
    "mid_septum",
    "sax_segments",
    "segment_sums",
]

#: (between rows, between columns) in mm, as DICOM Pixel Spacing (a tuple or an array of two)
PixelSpacing = tuple[float, float] | np.ndarray

#: ring codes of :attr:`SAXSegments.ring`
RING_NAMES: dict[int, str] = {0: "none", 1: "basal", 2: "mid", 3: "apical", 4: "apex cap"}

#: ``u`` of each ring code that makes :func:`node.quant.segments.segment_of` (``u_cap = 0``) give that ring
_U_OF_RING = np.array([0.0, 0.9, 0.5, 0.2, 0.0])


@dataclass(frozen=True, eq=False)
class SAXSegments:
    """AHA segments of a short-axis stack.

    Attributes
    ----------
    segments : int8 array [slice, row, column]
        AHA segment 1..17 of each myocardial pixel, 0 elsewhere.
    psi_deg : float32 array [slice, row, column]
        AHA azimuth of every pixel (0 anterior, 90 mid-septum, 180 inferior, 270 lateral), NaN on
        slices without myocardium.
    ring : int8 array [slice]
        0 none, 1 basal, 2 mid, 3 apical, 4 apex cap (:data:`RING_NAMES`).
    centre_rc : float array [slice, 2]
        LV centre (row, column; fractional pixel index), NaN without myocardium.
    septal_display_deg : float array [slice]
        Display angle ``phi`` of the mid-septum used on each slice (NaN without myocardium).
    insertion_psi_deg : float array [slice, 2]
        AHA azimuth of the anterior and inferior RV insertion points where the slice has an RV
        contact arc (NaN otherwise).
    reference : tuple of str, one per slice
        ``"rv_contact"``, ``"nearest_slice"``, ``"supplied"``, ``"assumed_display"`` or ``"none"``.
    apex_first, counterclockwise : bool
        Stack orientation used (module docstring).
    """

    segments: np.ndarray
    psi_deg: np.ndarray
    ring: np.ndarray
    centre_rc: np.ndarray
    septal_display_deg: np.ndarray
    insertion_psi_deg: np.ndarray
    reference: tuple[str, ...]
    apex_first: bool
    counterclockwise: bool

    @property
    def convention(self) -> str:
        """One line naming the convention, for SR parameters and reports."""
        used = sorted(set(self.reference) - {"none"})
        return ("AHA 17 on short axis: slice thirds by count, mid-septum (middle of the LV-RV contact arc) at 90 deg, "
                f"fixed 60/90 deg sectors; references used: {', '.join(used) or 'none'}")

    @property
    def assessed_segments(self) -> np.ndarray:
        """Bool [17]: the segment has at least one myocardial pixel (index 0 = segment 1)."""
        return np.bincount(self.segments.ravel().astype(np.intp), minlength=N_SEGMENTS + 1)[1:] > 0


def slice_rings(blood: np.ndarray, myocardium: np.ndarray, *, apex_first: bool = True,
                min_pixels: float = 10.0) -> np.ndarray:
    """Ring code per slice (0 none, 1 basal, 2 mid, 3 apical, 4 apex cap) by the slice-thirds rule.

    ``blood``/``myocardium`` are ``[slice, row, column]`` masks (or fractions: the counts are sums);
    ``apex_first`` says slice 0 is the most apical.
    """
    blood = np.asarray(blood, dtype=np.float64)
    myo = np.asarray(myocardium, dtype=np.float64)
    n = myo.shape[0]
    order = np.arange(n) if apex_first else np.arange(n)[::-1]  # apex -> base
    myo_sum = myo.sum(axis=(1, 2))[order]
    is_lv = (myo_sum >= min_pixels) & (blood.sum(axis=(1, 2))[order] >= min_pixels)
    ring_ab = np.zeros(n, dtype=np.int8)
    lv = np.flatnonzero(is_lv)
    if lv.size:
        count = lv.size
        rank_in = (count - 1) - np.arange(count)  # rank among LV slices counted from the base
        ring_ab[lv] = np.where(rank_in < math.ceil(count / 3), 1, np.where(rank_in < math.ceil(2 * count / 3), 2, 3))
        pos = np.arange(n)
        has_myo = myo_sum > 0
        ring_ab[(pos < lv[0]) & has_myo] = 4
        ring_ab[(pos > lv[-1]) & has_myo] = 1
    out = np.empty(n, dtype=np.int8)
    out[order] = ring_ab
    return out


def _infer_apex_first(blood: np.ndarray, myo: np.ndarray) -> bool:
    cavity = blood.sum(axis=(1, 2), dtype=np.float64)
    has = np.flatnonzero(myo.sum(axis=(1, 2)) > 0)
    if cavity.sum() <= 0 or has.size == 0:
        return True
    centre = float(np.sum(np.arange(cavity.size) * cavity) / cavity.sum())
    return centre >= 0.5 * (has[0] + has[-1])


def display_angles(shape: tuple[int, int], centre_rc: np.ndarray, pixel_spacing_mm: PixelSpacing) -> np.ndarray:
    """Display angle ``phi`` (degrees, counter-clockwise from 3 o'clock, [0, 360)) of every pixel of
    ``[slice, row, column]`` about each slice's centre ``centre_rc[slice] = (row, column)``."""
    rows = np.arange(shape[0], dtype=np.float64)[None, :, None]
    cols = np.arange(shape[1], dtype=np.float64)[None, None, :]
    dy = -(rows - centre_rc[:, 0, None, None]) * pixel_spacing_mm[0]
    dx = (cols - centre_rc[:, 1, None, None]) * pixel_spacing_mm[1]
    return np.mod(np.degrees(np.arctan2(dy, dx)), 360.0)


def arc_middle(angles_deg: np.ndarray) -> tuple[float, float, float]:
    """(middle, start, end) of the circular arc spanned by ``angles_deg`` (the complement of the largest gap)."""
    a = np.sort(np.mod(angles_deg, 360.0))
    gaps = np.diff(np.concatenate([a, a[:1] + 360.0]))
    g = int(np.argmax(gaps))
    start = a[(g + 1) % a.size]
    end = a[g]
    span = np.mod(end - start, 360.0)
    return float(np.mod(start + 0.5 * span, 360.0)), float(start), float(np.mod(start + span, 360.0))


def mid_septum(myocardium: np.ndarray, blood: np.ndarray, rv: np.ndarray, centre_rc: np.ndarray,
               pixel_spacing_mm: PixelSpacing, *, contact_mm: float | None = None,
               min_contact_pixels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per slice, the display angle of the middle of the LV-RV contact arc and the arc's two ends.

    Returns ``(middle [slice], ends [slice, 2])`` in display degrees, NaN where a slice has fewer than
    ``min_contact_pixels`` LV epicardial pixels within ``contact_mm`` (default ``max(3 mm, 2 pixels)``)
    of the RV mask. ``ends`` are (start, end) counter-clockwise on the display.
    """
    myo = np.asarray(myocardium, dtype=bool)
    lv = myo | np.asarray(blood, dtype=bool)
    rv = np.asarray(rv, dtype=bool)
    n = myo.shape[0]
    if contact_mm is None:
        contact_mm = max(3.0, 2.0 * max(pixel_spacing_mm))
    middle = np.full(n, np.nan)
    ends = np.full((n, 2), np.nan)
    phi = display_angles(myo.shape[1:], np.nan_to_num(centre_rc), pixel_spacing_mm)
    cross = ndimage.generate_binary_structure(2, 1)
    for k in np.flatnonzero(rv.any(axis=(1, 2)) & myo.any(axis=(1, 2))):
        epi = myo[k] & ~ndimage.binary_erosion(lv[k], cross, border_value=0)
        dist = ndimage.distance_transform_edt(~rv[k], sampling=pixel_spacing_mm)
        contact = epi & (dist <= contact_mm)
        if int(contact.sum()) < min_contact_pixels or not np.isfinite(centre_rc[k]).all():
            continue
        mid, start, end = arc_middle(phi[k][contact])
        middle[k] = mid
        ends[k] = (start, end)
    return middle, ends


def sax_segments(
    blood: np.ndarray,
    myocardium: np.ndarray,
    rv: np.ndarray | None,
    pixel_spacing_mm: PixelSpacing,
    *,
    apex_first: bool | None = None,
    counterclockwise: bool | None = None,
    septal_display_deg: float | None = None,
    min_pixels: float = 10.0,
    contact_mm: float | None = None,
) -> SAXSegments:
    """AHA segment of every LV myocardial pixel of a short-axis stack (module docstring).

    Parameters
    ----------
    blood, myocardium : arrays [slice, row, column]
        LV cavity and LV myocardium (scar included): bool masks, or occupancy fractions in [0, 1]
        (pixels with fraction >= 0.5 belong to the mask; the slice-thirds counts use the sums).
    rv : bool array [slice, row, column] or None
        RV cavity (with or without its wall); None when the RV is not labelled.
    pixel_spacing_mm : (float, float) or array [2]
        Distance between rows and between columns, mm.
    apex_first, counterclockwise : bool or None
        Orientation overrides; inferred when None (module docstring).
    septal_display_deg : float or None
        Mid-septum display angle to use when no slice shows an RV contact.
    """
    blood_in = np.asarray(blood)
    myo_in = np.asarray(myocardium)
    blood = blood_in >= 0.5 if blood_in.dtype != bool else blood_in
    myo = myo_in >= 0.5 if myo_in.dtype != bool else myo_in
    if blood.shape != myo.shape or myo.ndim != 3:
        raise ValueError(f"blood and myocardium must be [slice, row, column] of one shape, got {blood.shape}, {myo.shape}")
    spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    n = myo.shape[0]
    if apex_first is None:
        apex_first = _infer_apex_first(blood, myo)
    if counterclockwise is None:
        counterclockwise = bool(apex_first)
    ring = slice_rings(blood_in, myo_in, apex_first=apex_first, min_pixels=min_pixels)

    # LV centre per slice: centroid of cavity + myocardium (physical offsets use pixel indices x spacing)
    lv = (blood | myo).astype(np.float64)
    area = lv.sum(axis=(1, 2))
    rows = np.arange(myo.shape[1], dtype=np.float64)
    cols = np.arange(myo.shape[2], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.stack([(lv.sum(axis=2) @ rows) / area, (lv.sum(axis=1) @ cols) / area], axis=1)
    has_myo = myo.any(axis=(1, 2))
    centre[~has_myo] = np.nan

    if rv is not None:
        rv_mask = np.asarray(rv, dtype=bool)
        if rv_mask.shape != myo.shape:
            raise ValueError(f"rv must have the shape of the LV masks {myo.shape}, got {rv_mask.shape}")
        middle, ends = mid_septum(myo, blood, rv_mask, centre, spacing, contact_mm=contact_mm)
    else:
        middle, ends = np.full(n, np.nan), np.full((n, 2), np.nan)

    reference = np.array(["none"] * n, dtype=object)
    found = np.flatnonzero(np.isfinite(middle))
    septum = middle.copy()
    if found.size:
        reference[found] = "rv_contact"
        todo = np.flatnonzero(has_myo & ~np.isfinite(middle))
        if todo.size:
            nearest = found[np.argmin(np.abs(todo[:, None] - found[None, :]), axis=1)]
            septum[todo] = middle[nearest]
            reference[todo] = "nearest_slice"
    else:
        fallback = 180.0 if septal_display_deg is None else float(septal_display_deg)
        septum[has_myo] = fallback
        reference[has_myo] = "assumed_display" if septal_display_deg is None else "supplied"
    septum[~has_myo] = np.nan

    phi = display_angles(myo.shape[1:], np.nan_to_num(centre), spacing)
    sign = 1.0 if counterclockwise else -1.0
    psi = np.mod(sign * (phi - septum[:, None, None]) + 90.0, 360.0)
    psi[~has_myo] = np.nan
    insertion = np.mod(sign * (ends - septum[:, None]) + 90.0, 360.0)
    insertion = np.sort(insertion, axis=1)  # anterior (smaller psi) first

    seg = segment_of(_U_OF_RING[ring][:, None, None], np.nan_to_num(psi), 0.0)
    seg = np.where((ring == 4)[:, None, None], 17, seg)
    seg = np.where(myo & (ring > 0)[:, None, None], seg, 0).astype(np.int8)
    return SAXSegments(seg, psi.astype(np.float32), ring, centre, septum, insertion, tuple(str(r) for r in reference),
                       bool(apex_first), bool(counterclockwise))


def segment_sums(segments: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over the pixels of each AHA segment: array [17] (index 0 = segment 1)."""
    return np.bincount(np.asarray(segments).ravel().astype(np.intp), weights=np.asarray(values, dtype=np.float64).ravel(),
                       minlength=N_SEGMENTS + 1)[1:N_SEGMENTS + 1]
