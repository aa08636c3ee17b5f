"""Myocardial blood flow of one dynamic PET series: geometry, TACs, input, fits, maps, flags.

Reference note ``pet_mbf.md`` sections 3.6 (image-derived input, spill-over), 7.2 (quality
flags) and 8.2 (algorithms). numpy/scipy and the plain types of :mod:`node.imaging` only
(DESIGN section 3). Research use only.

Steps of :func:`analyse_dynamic` (one state; arrays frames first, volumes
``[frame, slice, row, col]`` in Bq/mL, times in seconds from the schedule's zero):

1. **Summed late image**: the frames starting at or after :data:`LATE_START_S` of the tracer
   (Rb-82 and N-13 120 s), weighted by their counts (``duration x mean decay factor`` for
   decay-corrected data, else duration), and :func:`node.quant.orientation.locate_lv` on it
   (resolution ``fwhm_mm``, default :data:`TYPICAL_FWHM_MM`). When the myocardium-to-blood
   contrast is too low for the locator (low flow, high blood plateau: it finds nothing, an LV
   length outside :data:`LV_LENGTH_RANGE_MM`, or an input ROI (step 4) without a first-pass
   peak of at least :data:`INPUT_PEAK_TO_LATE_MIN` x its late level), the late image minus its
   blood-pool part is used instead (:func:`_blood_subtracted`), with a note.
2. **Polar TACs**: the mid-wall surface of the late image
   (:func:`node.quant.polar_map.midwall_surface_rows` on the :class:`PolarGrid` rows) and, in
   every frame, the **mean** of 7 trilinear samples along each cell's normal across the
   central band of the wall, ``+-wall/4`` by default (reference 8.2: mean across the wall band,
   not the maximum: in the early frames the maximum along a normal would be the blood pool).
   The band is the central half of the wall because partial volume grows toward the wall's
   edges: the fit's blood-fraction term absorbs spill-over only while recovery + spill-over
   = 1 (reference 5.9); on noise-free image-tier phantoms (9 mm FWHM) the global MBF bias is
   about -14 % at the mid-wall alone, -16 % with +-wall/4 and -23 % with +-wall/2, and MFR
   cancels it (within 1 %; bench/validate_pet_image.py part B). Segment TACs are the means of their cells (equal
   cell weights, as the phantom truth), territories the means of their segments.

   **Partial-volume correction** (``partial_volume_correction``, on by default). The geometric
   model of a band sample (PMOD's dual spill-over with the recovery made explicit) is
   ``C = RC ((1 - v_b) C_myo + v_b C_LV) + s_LV C_LV + s_out C_out``: the wall's recovery
   coefficient ``RC``, the LV cavity's spill-in ``s_LV`` and the share ``s_out`` of the
   surroundings (lung, body; taken as cold), ``RC + s_LV + s_out = 1``. The Lortie form
   ``(1 - V_LV - V_RV) C_myo + V_LV C_LV + V_RV C_RV`` assumes ``s_out = 0``; with
   ``rho = RC + s_LV = 1 - s_out`` the exact form is ``(rho - V_LV - V_RV) C_myo + V_LV C_LV +
   V_RV C_RV``, which is the Lortie form fitted to ``C / rho`` (same F; fitted blood fractions
   are ``V / rho``). ``rho`` per polar cell comes from a blurred curved wall
   (:func:`wall_kernel_fractions`): wall thickness ``T`` measured on the late image (blurred-slab
   fit of the mean wall profile across the mid-ventricular cells with the resolution's sigma,
   :func:`node.quant.function.fit_wall_profile`), the cell's mean curvature, the band's
   samples, and the resolution ``fwhm_mm`` (a site setting, :data:`TYPICAL_FWHM_MM`) with the
   voxel term of :attr:`~node.quant.lv_frame.LVLocation.effective_sigma_mm`. In the septal
   segments (2, 3, 8, 9, 14) the outside is the RV blood pool, whose spill-over the blood terms
   carry, so ``rho = 1`` there. The polar TACs are divided by ``rho`` before the segment means,
   the fits and the polar map; the voxel map's TACs by ``rho`` of the ``+-wall/2`` band of their
   cell. The reported TACs stay as measured; the fitted territory curves are shown times the
   territory's mean ``rho``. A measured thickness outside :data:`WALL_THICKNESS_RANGE_MM` leaves the
   TACs uncorrected, with a note. Noise-free Rb-82 phantoms (bench/validate_pet_image.py part B):
   global MBF bias -17 % without, +0.3 % with the correction when the assumed resolution (9 mm)
   is the phantom's; a phantom blur of 8 / 10 mm analysed at 9 mm gives +7 / -6 %
   (docs/validation.md).

   **Cross-segment correction** (``cross_segment_correction``, on by default; step 2b). The
   blur also mixes neighbouring segments *along* the wall: a defect segment's band samples hold
   some of its normal neighbours' activity and back, so at 9 mm a defect territory's MFR reads
   5-9 % high and the normal ones 1-3 % low on noise-free phantoms (docs/validation.md,
   "Territory sensitivity"). The correction is a geometric transfer matrix (Rousset et al.,
   J Nucl Med 1998) over the 17 segments plus the LV cavity, whose activity is the measured
   input ``C_LV``. With the wall's activity ``T_j = (1 - v_b) C_myo,j + v_b C_LV`` uniform per
   segment, the segment TACs as fitted (divided by ``rho``) obey ``m - beta C_LV = G (T - C_LV)``:
   ``G`` from :func:`segment_transfer_matrix` (the across-wall share of each cell, the band mean
   of the wall fraction of :func:`wall_kernel_fractions` with the same measured wall, centre and
   sigma as ``rho``, divided by ``rho``; times the along-wall Gaussian share of every segment from
   the mid-wall points and areas), ``beta = 1`` (``rho`` when the partial-volume correction is
   off). Per frame the TACs become ``beta C_LV + diag(r) G^-1 (m - beta C_LV)`` (``r`` the row
   sums of ``G``, :class:`CrossSegment`): what each segment would read with no neighbour, its own
   recovery kept for ``rho`` and the fit's blood fraction as before; a uniform wall passes
   unchanged (``G^-1 r = 1``). Linear, so it commutes with the fit; territory and global values
   follow from the corrected segments. In the septal segments the RV blood outside is taken at
   the LV blood level (their RV term carries the difference, as before). ``G`` is well
   conditioned (condition number about 1.8 on the phantoms: segments are large against a
   4 mm sigma) because it assumes uniform segments; the polar and voxel maps are **not**
   corrected: a transfer matrix over the 2,880 cells or the voxels is a deconvolution of the
   blur on a grid finer than its sigma (ill-posed, noise amplified without bound), so the maps
   keep the blur's mixing at segment borders (they use the study DV of the corrected fit). The
   reported TACs stay as measured; the fitted territory curves are those of the corrected TACs
   (times the territory's ``rho``), a few % off the measured curve in a defect.
3. **Myocardium mask**: voxels whose centre is within ``wall/2`` of the mid-wall surface and
   not beyond the base plane.
4. **Input ROI** (``lv_input``): voxels of the basal half of the cavity (inside the mid-wall
   surface by more than ``wall/2``, between mid-cavity and the base plane) whose distance to
   the myocardium mask is at least ``fwhm_mm`` plus half a voxel (reference 3.6: the cavity core
   eroded away from the wall). If no voxel is that far, the innermost basal voxels (within half
   a voxel of the largest distance) are used and ``input_near_wall`` is raised.
   ``distance_to_wall_mm`` = smallest centre distance of an ROI voxel to a myocardium voxel
   minus half a voxel.
5. **RV ROI** (``rv``): the RV is the blood pool on the septal side. In the first-pass peak
   image (per voxel the maximum over the frames before the late image: every blood pool at its
   own bolus peak, whichever comes first, so a misplaced or late RV curve is still found and
   can be flagged) the voxels outside the LV, at least ``fwhm_mm / 2`` from the myocardium, on the septal side
   (azimuth 20-160 degrees from anterior toward septum), between 20 % of the LV length and
   the base, and within 50 mm of the mid-wall surface are searched; the RV core is the
   connected part around the hottest voxel at >= 80 % of its value.
6. **Fits**: :func:`node.quant.kinetics.fit_segments` (the model's default constants, one DV per
   study for Rb-82), with the input reconstructed once by
   :func:`~node.quant.kinetics.input_on_grid` from the fit-window frames; fitted territory
   curves by :func:`~node.quant.kinetics.model_curve` with the territory fits' parameters on
   all frames (frames beyond the model's fit window are the model's extrapolation).
7. **Maps**: :func:`~node.quant.kinetics.basis_function_map` on the polar TACs (polar MBF map
   ``[n_u, n_psi]``) and on the myocardium-mask voxels (voxel MBF map, float32, 0 outside),
   with the study DV of the fit for Rb-82.
8. **Motion**: every frame after the input peak is registered (rigid translation ``d``, LPS mm,
   Gauss-Newton) to a linear mixture of templates within 20 mm of the myocardium mask: the
   summed late image (tissue) and the first-pass frames (the LV peak frame, the ones before
   and after it, and the RV peak frame: blood), all smoothed
   with a 3 mm Gaussian; the mixture absorbs the change from blood- to tissue-dominated
   frames, so only a shift moves ``d``. ``motion_mm`` is the largest distance between the
   mean displacements of the frames before and after a split, over all splits (a step, as
   patient motion is; averaging over frames keeps single frames' count noise out).

Quality flags (reference 7.2; codes :data:`QUALITY_FLAG_CODES`): ``bolus_start_missed``
(input peak in the first frame), ``input_peak_late`` (input peak frame mid-time after
60 s), ``rv_peak_after_lv`` (the RV curve rises after the LV input: its half-rise time,
:func:`half_rise_time_s`, is later than the input's; reference 7.2 "RV peak before LV peak": the
bolus passes the RV before the lungs and the LV), ``input_near_wall``
(input ROI closer than 1 FWHM to the myocardium), ``unstable_fit`` (a segment fit failed, its
MBF SE exceeds 25 % (``large_se``) or MBF/k2/DV ended at a bound), ``blood_fraction_high``
(fitted blood fraction >= 0.8 or at its upper bound), ``motion`` (``motion_mm`` > 5 mm);
:func:`study_flags` adds ``rest_mbf_implausible`` (global or segment rest MBF outside
0.3-2.5 mL/min/g) and ``stress_mbf_implausible`` (> 6 mL/min/g). ``tracer_code_missing`` concerns the
DICOM header and is raised by the pipeline (inconsistent frame timing is not a flag: the loader refuses
the series, naming the attribute).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, stats
from scipy.spatial import cKDTree

from node.imaging.volume import FrameSchedule, Volume
from node.quant.function import PROFILE_STEP_MM, fit_wall_profile
from node.quant.kinetics import (
    SEPTAL_SEGMENTS,
    KineticModel,
    SampledInput,
    SegmentFit,
    basis_function_map,
    fine_grid,
    fit_segments,
    input_on_grid,
    model_curve,
)
from node.quant.lv_frame import LVLocation, lv_to_index, map_points
from node.quant.orientation import LVNotFoundError, locate_lv
from node.quant.polar_map import MidWallSurface, grid_rows_z, midwall_surface_rows
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, TERRITORY_SEGMENTS, PolarGrid

__all__ = [
    "QUALITY_FLAG_CODES",
    "TYPICAL_FWHM_MM",
    "LATE_START_S",
    "MOTION_LIMIT_MM",
    "LV_LENGTH_RANGE_MM",
    "CrossSegment",
    "PartialVolume",
    "PlacedRegion",
    "QualityFlag",
    "StateMBF",
    "analyse_dynamic",
    "half_rise_time_s",
    "study_flags",
    "segment_transfer_matrix",
    "wall_kernel_fractions",
]

QUALITY_FLAG_CODES: tuple[str, ...] = (
    "bolus_start_missed", "input_peak_late", "rv_peak_after_lv", "input_near_wall", "unstable_fit",
    "blood_fraction_high", "motion", "rest_mbf_implausible", "stress_mbf_implausible", "tracer_code_missing")

#: Effective resolution of clinical dynamic cardiac PET reconstructions (mm FWHM: scanner, positron
#: range, reconstruction filter), the middle of the published ranges: Rb-82 8-10 mm, N-13 ammonia
#: 6-7 mm, O-15 water 7-8 mm (reference ``pet_mbf.md`` 5.4 [L]; Rb-82's long positron range, mean about
#: 5.9 mm in water against about 1.5 mm for N-13 and 2.5 mm for O-15 (Conti and Eriksson, EJNMMI Phys
#: 2016;3:8 [L]), is why Johnson et al. (J Nucl Cardiol 2011) measured a whole-cycle partial-volume
#: factor of 1.23 for Rb-82 against 1.14 without positron range [V reference 3.6]). Site settings
#: like normal limits (pipeline option ``resolution_fwhm_mm``), not fitted to any phantom: the
#: analysis's default resolution (input-ROI erosion, wall-profile fit, partial-volume correction)
#: and the image-tier phantom's default blur.
TYPICAL_FWHM_MM: dict[str, float] = {"Rb-82": 9.0, "N-13 ammonia": 6.5, "O-15 water": 7.5}
#: Frames starting at or after this time (s) make the summed late (uptake) image.
LATE_START_S: dict[str, float] = {"Rb-82": 120.0, "N-13 ammonia": 120.0, "O-15 water": 60.0}
#: Largest LV-centroid shift between frames (mm) before ``motion`` is flagged (reference 7.2).
MOTION_LIMIT_MM = 5.0
#: Plausible LV length (epicardial apex to base, mm); outside it the late image is taken to have
#: too little myocardium-to-blood contrast and the blood-subtracted image is used (step 1).
LV_LENGTH_RANGE_MM = (40.0, 130.0)
#: The input ROI's peak must be at least this many times its late (count-weighted) level, else the
#: located "cavity" has no first pass and the blood-subtracted image is used (step 1).
INPUT_PEAK_TO_LATE_MIN = 3.0
#: Plausible measured LV wall thickness (mm); outside it the partial-volume correction is not applied (step 2).
WALL_THICKNESS_RANGE_MM = (5.0, 20.0)
#: Input peak later than this (s, frame mid-time) is flagged ``input_peak_late``.
INPUT_PEAK_LIMIT_S = 60.0
#: Plausible MBF (mL/min/g): rest within, stress below (reference 7.2).
REST_MBF_RANGE = (0.3, 2.5)
STRESS_MBF_LIMIT = 6.0

_BAND_STEPS = 7
_MOTION_REGION_MM = 20.0
_MOTION_SMOOTH_MM = 3.0
_RV_SEARCH_MM = 50.0
_RV_CORE_LEVEL = 0.8


@dataclass(frozen=True, eq=False)
class PlacedRegion:
    """An automatically placed ROI, reported to the reader.

    ``name`` "lv_input" | "rv"; ``centre_mm`` [3] LPS mm (mean of the voxel centres);
    ``distance_to_wall_mm`` from the ROI edge (voxel centres less half a voxel) to the nearest
    myocardium-mask voxel centre; ``voxel_index`` [n_voxels, 3] (slice, row, col) of its voxels
    (an addition to the contract, e.g. to outline the ROI).
    """

    name: str
    centre_mm: np.ndarray
    n_voxels: int
    volume_ml: float
    distance_to_wall_mm: float
    voxel_index: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.intp))


@dataclass(frozen=True)
class QualityFlag:
    """A quality flag: ``code`` in :data:`QUALITY_FLAG_CODES`; ``region`` "global", "1".."17",
    "LAD"/"LCx"/"RCA", "lv_input" or "rv"; ``state`` "rest" | "stress" | None (study level);
    ``text`` one sentence with the number that tripped it."""

    code: str
    region: str
    state: str | None
    text: str


@dataclass(frozen=True, eq=False)
class StateMBF:
    """MBF of one dynamic series (one state). Module docstring for the steps.

    Attributes
    ----------
    state, tracer : str
        "rest" | "stress"; kinetics tracer name (e.g. "Rb-82").
    schedule : FrameSchedule
    location : LVLocation
        From the summed late-frame image.
    blood_bq_per_ml, rv_bq_per_ml : array [frames]
        LV input ROI and RV ROI means (Bq/mL, the volume's decay convention); RV None when no
        RV region was found.
    segment_tacs_bq_per_ml : array [frames, 17]
        AHA order.
    territory_tacs_bq_per_ml, fitted_territory_tacs_bq_per_ml : dict "LAD"/"LCx"/"RCA" -> [frames]
        Measured (mean of the territory's segment TACs) and the model curves of the territory fits.
    input_region, rv_region : PlacedRegion
    fit : SegmentFit
        :func:`node.quant.kinetics.fit_segments` result (model name and constants inside).
    polar_mbf_ml_per_min_per_g : array [n_u, n_psi]
        Basis-function MBF of the polar TACs on ``grid``.
    voxel_mbf_ml_per_min_per_g : float32 array [slice, row, col]
        Basis-function MBF of the myocardium-mask voxels, 0 outside the mask.
    myocardium_mask : bool array [slice, row, col]
    motion_mm : float
        Largest LV-centroid step between the frames used for the motion check (mean before vs
        after a split, mm).
    flags, notes : tuples
    timings_s : dict
        Seconds per step ("late_image", "locate", "sample", "regions", "fit", "maps", "motion", "total").
    polar_tacs_bq_per_ml : array [frames, n_u, n_psi]
        Band-mean polar TACs (addition to the contract).
    motion_frames : bool array [frames]
        Frames used for the motion check (addition).
    partial_volume : PartialVolume or None
        The recovery correction applied (measured wall thickness, ``rho`` per cell and segment);
        None when ``partial_volume_correction`` is off.
    cross_segment : CrossSegment or None
        The transfer matrix applied to the segment TACs before the fits (step 2b); None when
        ``cross_segment_correction`` is off or the wall could not be measured.
    """

    state: str
    tracer: str
    schedule: FrameSchedule
    location: LVLocation
    blood_bq_per_ml: np.ndarray
    rv_bq_per_ml: np.ndarray | None
    segment_tacs_bq_per_ml: np.ndarray
    territory_tacs_bq_per_ml: dict[str, np.ndarray]
    fitted_territory_tacs_bq_per_ml: dict[str, np.ndarray]
    input_region: PlacedRegion
    rv_region: PlacedRegion | None
    fit: SegmentFit
    polar_mbf_ml_per_min_per_g: np.ndarray
    voxel_mbf_ml_per_min_per_g: np.ndarray
    myocardium_mask: np.ndarray
    motion_mm: float
    flags: tuple[QualityFlag, ...]
    notes: tuple[str, ...]
    timings_s: dict[str, float]
    polar_tacs_bq_per_ml: np.ndarray | None = None
    motion_frames: np.ndarray | None = None
    partial_volume: PartialVolume | None = None
    cross_segment: CrossSegment | None = None


# ------------------------------------------------------------------------------------------ geometry

def _count_weights(schedule: FrameSchedule, decay_constant_per_s: float, decay_corrected: bool) -> np.ndarray:
    """Relative counts per unit concentration of each frame (duration x mean decay factor)."""
    if decay_corrected:
        return schedule.duration_s * schedule.mean_decay_factor(decay_constant_per_s)
    return schedule.duration_s.astype(float)


def _weighted_image(voxels: np.ndarray, frames: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = weights * frames
    return np.tensordot(w / w.sum(), voxels, axes=(0, 0))


def _first_pass_peak(voxels: np.ndarray, late_frames: np.ndarray) -> np.ndarray:
    """Per-voxel maximum over the first-pass frames (those before the late image; step 5).

    Every blood pool is at its own bolus peak here, whichever pool peaks first, so the RV is
    found even when its curve comes after the LV's (the fault ``rv_peak_after_lv`` reports).
    """
    n_early = max(int(np.count_nonzero(~late_frames)), 1)  # the frames are in time order: a prefix, no copy
    return np.max(voxels[:n_early], axis=0)


def half_rise_time_s(schedule: FrameSchedule, curve: np.ndarray) -> float:
    """Time (s) at which a bolus curve first reaches half its rise on the way to its peak.

    The frame means ``curve`` [frames] are taken at the frame mid-times (so frames of any
    duration are placed where their mean belongs) and interpolated linearly; the rise is from
    the lowest frame before the peak to the peak frame, and the crossing is the last one before
    the peak (an early noisy frame above half the rise does not count). A curve that peaks in
    its first frame gives that frame's start (the bolus start was missed).
    """
    c = np.asarray(curve, dtype=float)
    mid = schedule.mid_s
    k = int(np.argmax(c))
    if k == 0:
        return float(schedule.start_s[0])
    base = float(c[: k + 1].min())
    level = base + 0.5 * (float(c[k]) - base)
    j = int(np.flatnonzero(c[:k] < level)[-1])
    return float(mid[j] + (level - c[j]) / (c[j + 1] - c[j]) * (mid[j + 1] - mid[j]))


def _blood_subtracted(voxels: np.ndarray, weights: np.ndarray, late: np.ndarray) -> np.ndarray:
    """The late image minus its blood-pool part: ``late - beta * first_pass``, clipped at 0.

    ``first_pass`` is the count-weighted sum of the frames up to the one with the most total
    activity (the bolus in the cavities); ``beta`` is the median late/first-pass ratio over the
    hottest 0.2 % of first-pass voxels (cavity blood), so the cavities go to about zero.
    """
    totals = voxels.reshape(voxels.shape[0], -1).sum(axis=1)
    first_pass = _weighted_image(voxels, np.arange(voxels.shape[0]) <= int(np.argmax(totals)), weights)
    hottest = first_pass >= np.percentile(first_pass, 99.8)
    beta = float(np.median(late[hottest] / np.maximum(first_pass[hottest], 1e-12)))
    return np.clip(late - beta * first_pass, 0.0, None)


def _band_offsets(half_width_mm: float) -> np.ndarray:
    """The :data:`_BAND_STEPS` offsets (mm along the outward normal) whose mean makes a polar TAC."""
    return np.linspace(-half_width_mm, half_width_mm, _BAND_STEPS)


def _normal_samples(voxels: np.ndarray, volume: Volume, location: LVLocation, surface: MidWallSurface,
                    offsets_mm: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``voxels`` ``[frames, slice, row, col]`` at ``offsets_mm`` along each cell's
    outward normal from the mid-wall surface: ``[frames, n_u, n_psi, n_offsets]``."""
    pts = surface.points_lv()[:, :, None, :] + offsets_mm[None, None, :, None] * surface.normals_lv()[:, :, None, :]
    a, b = lv_to_index(location.frame, volume)
    idx = map_points(a, b, pts).reshape(3, -1)
    values = np.stack([ndimage.map_coordinates(f, idx, order=1, mode="nearest", prefilter=False) for f in voxels])
    return values.reshape(voxels.shape[0], *pts.shape[:2], offsets_mm.size)


def _band_means(voxels: np.ndarray, volume: Volume, location: LVLocation, surface: MidWallSurface,
                half_width_mm: float) -> np.ndarray:
    """Mean of trilinear samples along each cell normal within ``+-half_width_mm``, ``[frames, n_u, n_psi]``."""
    return _normal_samples(voxels, volume, location, surface, _band_offsets(half_width_mm)).mean(axis=-1)


# ----------------------------------------------------------------------------------- partial volume

def wall_kernel_fractions(offsets_mm: np.ndarray, wall_thickness_mm: float, sigma_mm: float,
                          curvature_per_mm: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shares of the wall, the LV cavity and the outside in blurred samples across a curved wall.

    Geometric partial-volume model (step 2 of the module docstring): a wall of thickness ``T``
    centred at offset 0 along the outward normal (cavity for ``u < -T/2``, outside for
    ``u > T/2``) of a surface with mean curvature ``H``, blurred by an isotropic 3-D Gaussian of
    ``sigma_mm``. The Gaussian's mass at normal offset ``u`` seen from a sample at ``x`` is
    ``g_s(u - x) (1 + H u) / (1 + H x)``: exact for a sphere (``H = 1/R``; the radial law of a
    3-D Gaussian, a non-central chi distribution with 3 degrees of freedom), and for a cylinder
    (``H = 1/(2R)``) within 0.005 at R = 30 mm and 0.025 at R = 15 mm across the wall (the band
    mean of the central half within 0.002; ``tests/quant/test_mbf.py`` checks both). Hence

    * outside: ``Phi((x - T/2)/s) + H s phi((T/2 - x)/s) / (1 + H x)``
    * cavity:  ``Phi((-T/2 - x)/s) - H s phi((-T/2 - x)/s) / (1 + H x)``
    * wall:    ``1 - outside - cavity`` (the recovery coefficient RC at ``x``)

    (``Phi``/``phi`` the standard normal CDF/density, ``s = sigma_mm``).

    Parameters
    ----------
    offsets_mm : array
        Sample offsets from the wall centre along the outward normal (mm, cavity negative).
    wall_thickness_mm, sigma_mm : float
        Wall thickness and Gaussian sigma of the total blur (mm).
    curvature_per_mm : float or array
        Mean curvature ``H = (k1 + k2) / 2`` (1/mm, positive for a convex LV); broadcast
        against ``offsets_mm``.

    Returns
    -------
    (wall, cavity, outside) : arrays of the broadcast shape, summing to 1.
    """
    x = np.asarray(offsets_mm, dtype=float)
    kappa = np.asarray(curvature_per_mm, dtype=float)
    s = float(sigma_mm)
    half = 0.5 * float(wall_thickness_mm)
    area = np.maximum(1.0 + kappa * x, 1e-3)
    outside = stats.norm.cdf((x - half) / s) + kappa * s * stats.norm.pdf((half - x) / s) / area
    cavity = stats.norm.cdf((-half - x) / s) - kappa * s * stats.norm.pdf((-half - x) / s) / area
    outside, cavity = np.clip(outside, 0.0, 1.0), np.clip(cavity, 0.0, 1.0)
    return 1.0 - outside - cavity, cavity, outside


@dataclass(frozen=True, eq=False)
class PartialVolume:
    """Partial-volume (recovery) correction of one state (module docstring, step 2).

    Attributes
    ----------
    fwhm_mm : float
        Resolution assumed (site setting, mm FWHM; default :data:`TYPICAL_FWHM_MM`).
    sigma_mm : float
        Gaussian sigma of the total blur: the resolution plus voxelisation and trilinear
        sampling (:attr:`node.quant.lv_frame.LVLocation.effective_sigma_mm`).
    wall_thickness_mm : float
        Measured on the late image: blurred-slab fit of the mean wall profile of the
        mid-ventricular cells (:func:`node.quant.function.fit_wall_profile`, sigma fixed).
    wall_centre_mm : float
        Centre of the fitted slab relative to the sampled mid-wall surface (mm, outward positive).
    recovery_map : array [n_u, n_psi]
        ``rho`` of each polar cell's band samples: wall recovery + LV-cavity spill-in (1 in
        the septal segments, whose outside is the RV blood pool).
    segment_recovery : array [17]
        Mean ``rho`` of each segment's cells (AHA order).
    voxel_recovery_map : array [n_u, n_psi]
        ``rho`` of the myocardium-mask band (``+-wall/2``) per cell, applied to the voxel map.
    """

    fwhm_mm: float
    sigma_mm: float
    wall_thickness_mm: float
    wall_centre_mm: float
    recovery_map: np.ndarray
    segment_recovery: np.ndarray
    voxel_recovery_map: np.ndarray


def _partial_volume(late: np.ndarray, volume: Volume, location: LVLocation, surface: MidWallSurface,
                    z_rows: np.ndarray, band_half_width_mm: float, grid: PolarGrid) -> PartialVolume:
    """Measure the wall and compute the recovery ``rho`` of every polar cell (module docstring, step 2).

    ``late`` [slice, row, col] is the image the LV was located on; the resolution is the
    location's (``location.fwhm_mm``, sigma :attr:`~node.quant.lv_frame.LVLocation.effective_sigma_mm`).
    """
    sigma = location.effective_sigma_mm
    half = location.wall_thickness_mm / 2.0 + location.fwhm_mm + 6.0
    offsets = np.arange(-half, half + 1e-9, PROFILE_STEP_MM)
    body = ((z_rows > location.cavity_apex_mm + 0.25 * location.cavity_length_mm)
            & (z_rows < location.cavity_apex_mm + 0.8 * location.cavity_length_mm))
    if not body.any():
        body = np.ones_like(z_rows, dtype=bool)
    profiles = _normal_samples(late[None], volume, location, surface, offsets)[0]  # [n_u, n_psi, K]
    thickness, _, _, centre = fit_wall_profile(offsets, profiles[body].reshape(-1, offsets.size).mean(axis=0), sigma)
    septal = np.isin(grid.segment_ids(), SEPTAL_SEGMENTS)
    curvature = surface.mean_curvature[:, :, None]

    def recovery(samples_mm: np.ndarray) -> np.ndarray:
        wall, cavity, _ = wall_kernel_fractions(samples_mm[None, None, :] - centre, thickness, sigma, curvature)
        return np.where(septal, 1.0, (wall + cavity).mean(axis=-1))

    band_map = recovery(_band_offsets(band_half_width_mm))
    voxel_map = recovery(np.linspace(-0.5, 0.5, 2 * _BAND_STEPS + 1) * location.wall_thickness_mm)
    return PartialVolume(float(location.fwhm_mm), sigma, float(thickness), float(centre), band_map,
                         band_map.reshape(-1) @ _segment_operator(grid), voxel_map)


def segment_transfer_matrix(points_mm: np.ndarray, area_mm2: np.ndarray, segment_ids: np.ndarray,
                            wall_share: np.ndarray, sigma_mm: float, chunk: int = 512) -> np.ndarray:
    """Geometric transfer matrix of the 17 AHA segments along the wall (Rousset 1998 style).

    ``G[i, j]`` = share of segment ``j``'s wall activity in the mean of segment ``i``'s band
    samples (module docstring, step 2b). The blur is split into the part across the wall,
    ``wall_share`` (per cell: the band mean of the wall fraction of :func:`wall_kernel_fractions`,
    divided by the scale the TACs were divided by), and the part along it: a 3-D Gaussian of
    ``sigma_mm`` seen from a cell's mid-wall point spreads over the other cells' mid-wall
    points in proportion to ``area x exp(-d^2 / (2 sigma^2))`` (``d`` the straight distance:
    the kernel is 3-D, so the wall across the apex counts as near), normalised over the surface
    (beyond the base the wall is taken to continue with the cell's own mix, as ``rho`` takes it
    to continue). Segment rows are the equal-weight means of their cells (as the segment TACs).

    Parameters
    ----------
    points_mm : array [n_u, n_psi, 3]
        Mid-wall points (mm, any Cartesian frame).
    area_mm2 : array [n_u, n_psi]
        Mid-wall area of each cell (mm^2).
    segment_ids : int array [n_u, n_psi]
        AHA segment (1..17) of each cell.
    wall_share : array [n_u, n_psi]
        Share of the wall in each cell's band samples (0..1).
    sigma_mm : float
        Gaussian sigma of the total blur (mm).
    chunk : int
        Cells per block of the pairwise kernel (memory).

    Returns
    -------
    array [17, 17]
        ``G``; row sums = the segments' mean ``wall_share`` (<= 1 once divided by ``rho``).
    """
    pts = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    area = np.asarray(area_mm2, dtype=float).reshape(-1)
    ids = np.asarray(segment_ids).reshape(-1)
    share = np.asarray(wall_share, dtype=float).reshape(-1)
    onehot = (ids[:, None] == np.arange(1, N_SEGMENTS + 1)[None, :]).astype(float)
    cell_to_segment = np.empty((pts.shape[0], N_SEGMENTS))
    norm2 = np.sum(pts**2, axis=1)
    for k0 in range(0, pts.shape[0], chunk):
        block = pts[k0:k0 + chunk]
        d2 = np.maximum(norm2[k0:k0 + chunk, None] + norm2[None, :] - 2.0 * block @ pts.T, 0.0)
        kernel = np.exp(-0.5 / float(sigma_mm) ** 2 * d2) * area[None, :]
        cell_to_segment[k0:k0 + chunk] = (kernel @ onehot) / kernel.sum(axis=1, keepdims=True)
    return (onehot / onehot.sum(axis=0, keepdims=True)).T @ (share[:, None] * cell_to_segment)


@dataclass(frozen=True, eq=False)
class CrossSegment:
    """Cross-segment (geometric transfer matrix) correction of one state (module docstring, step 2b).

    Attributes
    ----------
    transfer_matrix : array [17, 17]
        ``G`` (:func:`segment_transfer_matrix`), rows = measured segment, columns = source
        segment, AHA order.
    recovery : array [17]
        Row sums of ``G`` (the segments' own wall share, which the fit keeps).
    blood_level : array [17]
        ``beta``: the level of the LV blood in the fitted segment TACs had the whole segment been
        blood (1 when the partial-volume correction is applied, else ``rho``).
    correction_matrix : array [17, 17]
        ``M = diag(recovery) G^-1``; corrected = ``beta C_LV + M (measured - beta C_LV)`` per frame.
    condition_number : float
        2-norm condition number of ``G`` (noise amplification bound).
    """

    transfer_matrix: np.ndarray
    recovery: np.ndarray
    blood_level: np.ndarray
    correction_matrix: np.ndarray
    condition_number: float

    @classmethod
    def from_transfer_matrix(cls, transfer_matrix: np.ndarray, blood_level: np.ndarray) -> CrossSegment:
        """The correction of a transfer matrix ``G`` [17, 17] and the blood levels ``beta`` [17]."""
        transfer = np.asarray(transfer_matrix, dtype=float)
        recovery = transfer.sum(axis=1)
        return cls(transfer, recovery, np.asarray(blood_level, dtype=float), recovery[:, None] * np.linalg.inv(transfer),
                   float(np.linalg.cond(transfer)))

    def apply(self, segment_tacs: np.ndarray, blood: np.ndarray) -> np.ndarray:
        """Corrected segment TACs ``[frames, 17]`` from the fitted-scale TACs ``[frames, 17]`` and the LV blood
        ``[frames]`` (same units, Bq/mL)."""
        base = np.asarray(blood, dtype=float)[:, None] * self.blood_level[None, :]
        return base + (np.asarray(segment_tacs, dtype=float) - base) @ self.correction_matrix.T


def _cross_segment(partial_volume: PartialVolume, surface: MidWallSurface, band_half_width_mm: float,
                   grid: PolarGrid, applied: bool) -> CrossSegment:
    """The transfer matrix of the measured wall (step 2b); ``applied``: the TACs were divided by ``rho``."""
    curvature = surface.mean_curvature[:, :, None]
    samples = _band_offsets(band_half_width_mm)[None, None, :] - partial_volume.wall_centre_mm
    wall, _, _ = wall_kernel_fractions(samples, partial_volume.wall_thickness_mm, partial_volume.sigma_mm, curvature)
    rho = partial_volume.recovery_map
    scale = rho if applied else np.ones_like(rho)
    transfer = segment_transfer_matrix(surface.points_lv(), surface.area_mm2(), grid.segment_ids(),
                                       wall.mean(axis=-1) / scale, partial_volume.sigma_mm)
    return CrossSegment.from_transfer_matrix(transfer, (rho / scale).reshape(-1) @ _segment_operator(grid))


def _voxel_cells(geometry: _Geometry, selected: np.ndarray, z_rows: np.ndarray, n_psi: int) -> tuple[np.ndarray, np.ndarray]:
    """Polar cell (row, psi index) of the selected voxels: nearest row in ``z``, the azimuth's sector."""
    z = geometry.z[selected]
    rows = np.clip(np.rint(np.interp(z, z_rows, np.arange(z_rows.size, dtype=float))).astype(int), 0, z_rows.size - 1)
    cols = np.floor(np.mod(geometry.psi[selected], 360.0) / (360.0 / n_psi)).astype(int) % n_psi
    return rows, cols


def _segment_operator(grid: PolarGrid) -> np.ndarray:
    """``[n_u * n_psi, 17]`` matrix: polar values (flattened) @ it = segment means (equal cell weights)."""
    ids = grid.segment_ids().ravel()
    onehot = (ids[:, None] == np.arange(1, N_SEGMENTS + 1)[None, :]).astype(float)
    return onehot / onehot.sum(axis=0, keepdims=True)


def _voxel_centres(volume: Volume) -> np.ndarray:
    """Patient LPS mm of every voxel centre, ``[n_voxels, 3]`` (C order of ``shape3d``)."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in volume.shape3d], indexing="ij"), axis=-1)
    return idx.reshape(-1, 3) @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _surface_radius(surface: MidWallSurface, z_rows: np.ndarray, z: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    """Mid-wall radius (mm) at LV positions ``z`` (mm from the apex) and azimuths (bilinear, periodic in psi)."""
    n_psi = surface.psi_deg.size
    fi = np.interp(z, z_rows, np.arange(z_rows.size, dtype=float))
    i0 = np.clip(np.floor(fi).astype(int), 0, z_rows.size - 2)
    fr = np.clip(fi - i0, 0.0, 1.0)
    fj = np.mod(psi_deg, 360.0) / (360.0 / n_psi) - 0.5
    j0 = np.floor(fj).astype(int)
    fc = fj - j0
    j0, j1 = np.mod(j0, n_psi), np.mod(j0 + 1, n_psi)
    r = surface.radius_mm
    return ((1 - fr) * ((1 - fc) * r[i0, j0] + fc * r[i0, j1]) + fr * ((1 - fc) * r[i0 + 1, j0] + fc * r[i0 + 1, j1]))


@dataclass
class _Geometry:
    mask: np.ndarray  # myocardium [slice, row, col]
    distance_mm: np.ndarray  # voxel centre -> nearest myocardium voxel centre
    z: np.ndarray  # LV coordinates of every voxel (flattened)
    r: np.ndarray
    psi: np.ndarray
    r_mid: np.ndarray  # mid-wall radius at each voxel's (z, psi)
    centres: np.ndarray


def _lv_geometry(volume: Volume, location: LVLocation, surface: MidWallSurface, z_rows: np.ndarray) -> _Geometry:
    centres = _voxel_centres(volume)
    z, r, psi = location.frame.cylindrical(centres)
    half = location.wall_thickness_mm / 2.0
    points = location.frame.to_patient(surface.points_lv()).reshape(-1, 3)
    lo, hi = points.min(axis=0) - half - 1.0, points.max(axis=0) + half + 1.0
    near = np.all((centres >= lo) & (centres <= hi), axis=1) & (z <= location.length_mm)
    distance = np.full(z.shape, np.inf)
    distance[near] = cKDTree(points).query(centres[near], k=1)[0]
    mask = (distance <= half).reshape(volume.shape3d)
    if not mask.any():
        raise ValueError("no myocardium voxels found around the mid-wall surface")
    edt = ndimage.distance_transform_edt(~mask, sampling=volume.spacing_mm)
    r_mid = _surface_radius(surface, z_rows, z, psi)
    return _Geometry(mask, edt.reshape(-1), z, r, psi, r_mid, centres)


def _region(name: str, selected: np.ndarray, geometry: _Geometry, voxel_ml: float, half_voxel_mm: float) -> PlacedRegion:
    idx = np.flatnonzero(selected)
    return PlacedRegion(name, geometry.centres[idx].mean(axis=0), int(idx.size), float(idx.size * voxel_ml),
                        float(geometry.distance_mm[idx].min() - half_voxel_mm),
                        np.stack(np.unravel_index(idx, geometry.mask.shape), axis=1))


def _input_region(location: LVLocation, geometry: _Geometry, fwhm_mm: float, half_voxel_mm: float,
                  notes: list[str]) -> np.ndarray:
    """Flat boolean selection of the input ROI voxels (module docstring, step 4)."""
    half = location.wall_thickness_mm / 2.0
    mid_cavity = location.cavity_apex_mm + 0.5 * location.cavity_length_mm
    basal_cavity = (geometry.z >= mid_cavity) & (geometry.z <= location.length_mm) & (geometry.r < geometry.r_mid - half)
    basal_cavity &= ~geometry.mask.reshape(-1)
    if not basal_cavity.any():
        raise ValueError("no basal LV cavity voxels found for the input region")
    core = basal_cavity & (geometry.distance_mm >= fwhm_mm + half_voxel_mm)
    if core.any():
        return core
    deepest = float(geometry.distance_mm[basal_cavity].max())
    notes.append(f"the basal cavity has no voxel {fwhm_mm:.1f} mm (1 FWHM) from the wall; the innermost voxels "
                 f"({deepest - half_voxel_mm:.1f} mm) were used")
    return basal_cavity & (geometry.distance_mm >= deepest - half_voxel_mm)


def _rv_region(early: np.ndarray, location: LVLocation, geometry: _Geometry, fwhm_mm: float) -> np.ndarray | None:
    """Flat boolean selection of the RV core in the early (blood) image, or None (step 5)."""
    half = location.wall_thickness_mm / 2.0
    outside = (geometry.r > geometry.r_mid + half) | (geometry.z > location.length_mm)
    septal = (geometry.psi >= 20.0) & (geometry.psi <= 160.0)
    search = (outside & septal & (geometry.z >= 0.2 * location.length_mm) & (geometry.z <= location.length_mm)
              & (geometry.r <= geometry.r_mid + _RV_SEARCH_MM) & (geometry.distance_mm >= 0.5 * fwhm_mm))
    if not search.any():
        return None
    values = early.reshape(-1)
    peak_index = int(np.flatnonzero(search)[np.argmax(values[search])])
    peak = float(values[peak_index])
    if not peak > 0:
        return None
    hot = (search & (values >= _RV_CORE_LEVEL * peak)).reshape(early.shape)
    labelled, _ = ndimage.label(hot)
    core = labelled.reshape(-1) == labelled.reshape(-1)[peak_index]
    return core


def _motion(voxels: np.ndarray, frames: np.ndarray, templates: np.ndarray, geometry: _Geometry,
            volume: Volume) -> tuple[float, np.ndarray]:
    """Rigid LV displacement of the selected frames by registration to blood/tissue templates (step 8).

    Every selected frame ``f`` is modelled within the motion region as ``sum_j a_j T_j(x - d) + c``
    (templates ``T_j``: the late image and the early blood frames) and ``d`` (LPS mm) is found
    by Gauss-Newton (three steps, the ``a_j, c`` solved linearly at each). Returns ``(largest
    step in mm, displacement [n_selected, 3])``.
    """
    idx = np.flatnonzero(frames)
    if idx.size < 2:
        return 0.0, np.zeros((idx.size, 3))
    region = (geometry.distance_mm <= _MOTION_REGION_MM).reshape(volume.shape3d)
    spacing = volume.spacing_mm
    sigma = np.maximum(_MOTION_SMOOTH_MM / spacing, 0.5)
    # crop to the region's box (plus the blur margin) and use every second voxel of it per axis
    where = np.argwhere(region)
    margin = int(np.ceil(3 * sigma.max())) + 2
    box = tuple(slice(max(int(lo) - margin, 0), int(hi) + margin + 1) for lo, hi in zip(where.min(axis=0), where.max(axis=0)))
    sub = region[box].copy()
    sub[1::2] = False
    sub[:, 1::2] = False
    sub[:, :, 1::2] = False
    index = np.argwhere(sub).T.astype(float)  # [3, n] index in the box
    smooth_t = [ndimage.gaussian_filter(t[box], sigma) for t in templates]
    grads = [np.stack(np.gradient(t)) for t in smooth_t]  # per voxel index step
    to_index = np.linalg.inv(volume.affine[:3, :3])  # mm -> index offsets
    displacement = np.zeros((idx.size, 3))
    for i, k in enumerate(idx):  # loop over frames (a few small solves each), not voxels
        f = ndimage.gaussian_filter(voxels[k][box], sigma)[sub]
        d = np.zeros(3)
        for _ in range(3):
            coords = index - (to_index @ d)[:, None]
            t_vals = np.stack([ndimage.map_coordinates(t, coords, order=1, mode="nearest") for t in smooth_t], axis=1)
            design = np.concatenate([t_vals, np.ones((t_vals.shape[0], 1))], axis=1)
            amp = np.linalg.lstsq(design, f, rcond=None)[0]
            residual = f - design @ amp
            g_index = sum(a * np.stack([ndimage.map_coordinates(g[c], coords, order=1, mode="nearest") for c in range(3)], axis=1)
                          for a, g in zip(amp[:-1], grads))
            jac = -(g_index @ to_index)  # d(model)/d(d in mm)
            step = np.linalg.lstsq(jac, residual, rcond=None)[0]
            d = d + step
            if np.linalg.norm(step) < 0.05:
                break
        displacement[i] = d
    steps = [np.linalg.norm(displacement[:k].mean(axis=0) - displacement[k:].mean(axis=0)) for k in range(1, idx.size)]
    return float(max(steps)), displacement


# --------------------------------------------------------------------------------------------- flags

_UNSTABLE_PREFIXES = ("at_bound:mbf", "at_bound:k2", "at_bound:distribution", "at_bound:ptmbf")


def _fit_flags(fit: SegmentFit, model: KineticModel, state: str) -> list[QualityFlag]:
    flags: list[QualityFlag] = []
    upper_fb = model.blood_fraction_bounds[1]
    for seg in fit.segments:
        mbf, se = seg.mbf_ml_per_min_per_g, seg.mbf_se_ml_per_min_per_g
        reasons = []
        if "fit_failed" in seg.flags:
            reasons.append("the fit failed")
        if "large_se" in seg.flags:
            reasons.append(f"the MBF standard error is {100.0 * se / mbf:.0f} % of the value" if mbf > 0 and np.isfinite(se)
                           else "the MBF standard error is large")
        bounds = [f.split(":", 1)[1] for f in seg.flags if f.startswith(_UNSTABLE_PREFIXES)]
        if bounds:
            reasons.append("the fit ended at the bound of " + ", ".join(bounds))
        if reasons:
            flags.append(QualityFlag("unstable_fit", seg.region, state,
                                     f"Segment {seg.region} {state} MBF {mbf:.2f} ml/min/g is unstable: {'; '.join(reasons)}."))
        fb = seg.parameters.get("blood_fraction", float("nan"))
        if "blood_fraction_high" in seg.flags or "at_bound:blood_fraction" in seg.flags and fb >= upper_fb - 1e-6:
            flags.append(QualityFlag("blood_fraction_high", seg.region, state,
                                     f"Segment {seg.region} {state}: fitted blood fraction {fb:.2f} is high (>= 0.8); "
                                     "its MBF is unreliable (little perfusable tissue or spill-over)."))
    if "global_dv_failed" in fit.flags:
        flags.append(QualityFlag("unstable_fit", "global", state,
                                 f"The {state} study distribution volume could not be fitted; k2 was fitted per region."))
    return flags


def _input_flags(schedule: FrameSchedule, blood: np.ndarray, rv: np.ndarray | None, input_region: PlacedRegion,
                 fwhm_mm: float, motion_mm: float, state: str) -> list[QualityFlag]:
    flags: list[QualityFlag] = []
    k_lv = int(np.argmax(blood))
    t_peak = float(schedule.mid_s[k_lv])
    if k_lv == 0:
        flags.append(QualityFlag("bolus_start_missed", "lv_input", state,
                                 f"The {state} input curve peaks in the first frame ({t_peak:.0f} s): the start of the "
                                 "bolus was probably missed, which biases MBF."))
    if t_peak > INPUT_PEAK_LIMIT_S:
        flags.append(QualityFlag("input_peak_late", "lv_input", state,
                                 f"The {state} input curve peaks late, at {t_peak:.0f} s (> {INPUT_PEAK_LIMIT_S:.0f} s): "
                                 "check the injection and the frame timing."))
    if rv is not None:
        t_rv, t_lv = half_rise_time_s(schedule, rv), half_rise_time_s(schedule, blood)
        if t_rv > t_lv:
            flags.append(QualityFlag("rv_peak_after_lv", "rv", state,
                                     f"The {state} RV curve rises after the LV input (half of its rise at {t_rv:.0f} s "
                                     f"against {t_lv:.0f} s): the blood regions may be misplaced or mislabelled."))
    if input_region.distance_to_wall_mm < fwhm_mm:
        flags.append(QualityFlag("input_near_wall", "lv_input", state,
                                 f"The {state} input region is {input_region.distance_to_wall_mm:.1f} mm from the "
                                 f"myocardium, less than the {fwhm_mm:.1f} mm resolution: spill-in may lower MBF."))
    if motion_mm > MOTION_LIMIT_MM:
        flags.append(QualityFlag("motion", "global", state,
                                 f"The heart moves {motion_mm:.1f} mm between {state} frames (> {MOTION_LIMIT_MM:.0f} mm): "
                                 "MBF may be wrong, worst in the RCA territory."))
    return flags


def study_flags(rest: StateMBF | None, stress: StateMBF | None) -> tuple[QualityFlag, ...]:
    """Implausible-value flags of a study (reference 7.2).

    ``rest_mbf_implausible`` when the global or a segment rest MBF lies outside 0.3-2.5
    mL/min/g, ``stress_mbf_implausible`` when the global or a segment stress MBF exceeds 6
    mL/min/g. ``state`` is the state the value belongs to.
    """
    flags: list[QualityFlag] = []
    if rest is not None:
        lo, hi = REST_MBF_RANGE
        values = [("global", rest.fit.global_mbf_ml_per_min_per_g)] + [(s.region, s.mbf_ml_per_min_per_g) for s in rest.fit.segments]
        for region, value in values:
            if not lo <= value <= hi:
                where = "Global" if region == "global" else f"Segment {region}"
                flags.append(QualityFlag("rest_mbf_implausible", region, "rest",
                                         f"{where} rest MBF {value:.2f} ml/min/g is outside the plausible "
                                         f"{lo:.1f}-{hi:.1f} ml/min/g."))
    if stress is not None:
        values = [("global", stress.fit.global_mbf_ml_per_min_per_g)] + [(s.region, s.mbf_ml_per_min_per_g) for s in stress.fit.segments]
        for region, value in values:
            if value > STRESS_MBF_LIMIT:
                where = "Global" if region == "global" else f"Segment {region}"
                flags.append(QualityFlag("stress_mbf_implausible", region, "stress",
                                         f"{where} stress MBF {value:.2f} ml/min/g is above the plausible "
                                         f"{STRESS_MBF_LIMIT:.0f} ml/min/g."))
    return tuple(flags)


# ------------------------------------------------------------------------------------------ analysis

def analyse_dynamic(volume: Volume, *, state: str, model: KineticModel, decay_corrected: bool = True,
                    grid: PolarGrid = DEFAULT_GRID, rv_spillover: bool = False, fwhm_mm: float | None = None,
                    late_start_s: float | None = None, band_half_width_mm: float | None = None,
                    partial_volume_correction: bool = True, cross_segment_correction: bool = True) -> StateMBF:
    """MBF of one dynamic PET series (module docstring for the steps).

    Parameters
    ----------
    volume : Volume
        ``[frame, slice, row, col]`` in Bq/mL with a dynamic :class:`FrameAxis` (frame starts in
        s from injection or scan start) and a patient affine.
    state : str
        "rest" | "stress" (labels only).
    model : KineticModel
        E.g. :func:`node.quant.kinetics.default_model` of the tracer.
    decay_corrected : bool
        Whether the voxel values are decay-corrected (scanner convention) or not.
    grid : PolarGrid
        Polar grid of the TACs and the polar MBF map.
    rv_spillover : bool
        Fit the septal RV spill-over term (needs an RV region).
    fwhm_mm : float, optional
        Reconstructed resolution (mm FWHM); default :data:`TYPICAL_FWHM_MM` of the tracer.
    late_start_s : float, optional
        Start of the summed late image (s); default :data:`LATE_START_S` of the tracer.
    band_half_width_mm : float, optional
        Half-width of the band across the wall whose mean makes a polar TAC (mm); default a
        quarter of the wall thickness (the central half of the wall, step 2).
    partial_volume_correction : bool
        Divide the polar TACs by the recovery ``rho`` before the fits and maps (module docstring,
        step 2); the resolution is ``fwhm_mm``.
    cross_segment_correction : bool
        Undo the blur's mixing of neighbouring segments along the wall in the segment TACs before
        the fits (geometric transfer matrix, module docstring step 2b; on by default); the
        resolution is ``fwhm_mm``, the wall the one measured for ``rho``.

    Returns
    -------
    StateMBF

    Raises
    ------
    node.quant.orientation.LVNotFoundError
        No LV in the late image.
    ValueError
        Not a dynamic volume, or no cavity / myocardium found.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        timings[name] = t1 - t0
        return t1

    axis = volume.frame_axis
    if axis is None or axis.kind != "dynamic" or axis.schedule is None:
        raise ValueError("analyse_dynamic needs a dynamic [frame, slice, row, col] volume")
    schedule = axis.schedule
    tracer = model.tracer.name
    fwhm = float(fwhm_mm) if fwhm_mm is not None else TYPICAL_FWHM_MM.get(tracer, 8.0)
    late_from = float(late_start_s) if late_start_s is not None else LATE_START_S.get(tracer, 120.0)
    lam = model.decay_constant_per_s
    voxels = np.asarray(volume.voxels, dtype=float)
    notes: list[str] = []
    weights = _count_weights(schedule, lam, decay_corrected)
    late_frames = schedule.start_s >= late_from - 1e-9
    if not late_frames.any():
        late_frames = np.arange(schedule.n_frames) >= schedule.n_frames // 2
        notes.append(f"no frame starts after {late_from:.0f} s; the second half of the frames made the late image")
    late = Volume(_weighted_image(voxels, late_frames, weights), volume.affine)
    t = lap("late_image", t_start)

    n_f = schedule.n_frames
    flat = voxels.reshape(n_f, -1)
    spacing = volume.spacing_mm
    voxel_ml = float(np.prod(spacing)) / 1000.0
    half_voxel = 0.5 * float(np.mean(spacing))

    def place(image: Volume, place_notes: list[str]) -> tuple[LVLocation, np.ndarray, MidWallSurface, _Geometry, np.ndarray]:
        location = locate_lv(image, fwhm_mm=fwhm)
        z_rows = grid_rows_z(location, grid)
        surface = midwall_surface_rows(image, location, z_rows, grid.n_psi)
        geometry = _lv_geometry(volume, location, surface, z_rows)
        return location, z_rows, surface, geometry, _input_region(location, geometry, fwhm, half_voxel, place_notes)

    def plausible(location: LVLocation, input_sel: np.ndarray) -> bool:
        if not LV_LENGTH_RANGE_MM[0] <= location.length_mm <= LV_LENGTH_RANGE_MM[1]:
            return False
        curve = flat[:, input_sel].mean(axis=1)
        late_level = float(np.sum(weights[late_frames] * curve[late_frames]) / np.sum(weights[late_frames]))
        return float(curve.max()) >= INPUT_PEAK_TO_LATE_MIN * max(late_level, 1e-12)

    first_notes: list[str] = []
    placed = None
    try:
        placed = place(late, first_notes)
    except (LVNotFoundError, ValueError):
        placed = None
    if placed is not None and plausible(placed[0], placed[4]):
        notes.extend(first_notes)
    else:
        late = Volume(_blood_subtracted(voxels, weights, late.voxels), volume.affine)
        placed = place(late, notes)
        notes.insert(0, "the LV was located on the late image minus its blood-pool part (low myocardium-to-blood "
                        "contrast)")
    location, z_rows, surface, geometry, input_sel = placed
    t = lap("locate", t)

    band = location.wall_thickness_mm / 4.0 if band_half_width_mm is None else float(band_half_width_mm)
    measured_polar = _band_means(voxels, volume, location, surface, band)
    partial_volume = (_partial_volume(late.voxels, volume, location, surface, z_rows, band, grid)
                      if partial_volume_correction or cross_segment_correction else None)
    if partial_volume is not None and not (
            WALL_THICKNESS_RANGE_MM[0] <= partial_volume.wall_thickness_mm <= WALL_THICKNESS_RANGE_MM[1]):
        what = " or cross-segment" if cross_segment_correction else ""
        notes.append(f"the wall profile gave a thickness of {partial_volume.wall_thickness_mm:.1f} mm, outside "
                     f"{WALL_THICKNESS_RANGE_MM[0]:.0f}-{WALL_THICKNESS_RANGE_MM[1]:.0f} mm: no partial-volume{what} "
                     "correction")
        partial_volume = None
    cross_segment = (_cross_segment(partial_volume, surface, band, grid, partial_volume_correction)
                     if cross_segment_correction and partial_volume is not None else None)
    if not partial_volume_correction:
        partial_volume = None
    segment_operator = _segment_operator(grid)
    segment_tacs = measured_polar.reshape(n_f, -1) @ segment_operator
    territory_tacs = {name: segment_tacs[:, [s - 1 for s in segs]].mean(axis=1) for name, segs in TERRITORY_SEGMENTS.items()}
    # the fits see the TACs divided by rho: the Lortie form on C / rho is (rho - V_LV - V_RV) C_myo + ... on C
    polar = measured_polar if partial_volume is None else measured_polar / partial_volume.recovery_map[None]
    fitted_segment_tacs = polar.reshape(n_f, -1) @ segment_operator
    t = lap("sample", t)

    input_region = _region("lv_input", input_sel, geometry, voxel_ml, half_voxel)
    blood = flat[:, input_sel].mean(axis=1)
    k_lv = int(np.argmax(blood))
    rv_sel = _rv_region(_first_pass_peak(voxels, late_frames), location, geometry, fwhm)
    rv: np.ndarray | None = None
    rv_region: PlacedRegion | None = None
    if rv_sel is None:
        notes.append("no RV blood pool found on the septal side; RV curve and RV checks omitted")
    else:
        rv_region = _region("rv", rv_sel, geometry, voxel_ml, half_voxel)
        rv = flat[:, rv_sel].mean(axis=1)
    if cross_segment is not None:
        fitted_segment_tacs = cross_segment.apply(fitted_segment_tacs, blood)
    t = lap("regions", t)

    window = schedule.within(model.fit_end_s)
    fit_schedule = schedule.subset(window)
    fine = fine_grid(fit_schedule.end_s[-1])
    blood_dc = blood if decay_corrected else blood / schedule.mean_decay_factor(lam)
    input_function = SampledInput(fine, input_on_grid(fit_schedule, blood_dc[window], fine, decay_constant_per_s=lam))
    use_rv = bool(rv_spillover and rv is not None)
    if rv_spillover and rv is None:
        notes.append("RV spill-over requested but no RV region was found; fitted without it")
    fit = fit_segments(model, schedule, blood, fitted_segment_tacs, rv_bq_per_ml=rv if use_rv else None, rv_spillover=use_rv,
                       decay_corrected=decay_corrected, input_function=input_function)
    full = fine_grid(schedule.end_s[-1])
    display_input = SampledInput(full, input_on_grid(schedule, blood_dc, full, decay_constant_per_s=lam))
    fitted = {}
    for name, segs in TERRITORY_SEGMENTS.items():
        params = fit.regional_fits[name].parameters
        # back on the measured scale: times the territory's recovery (its segments' mean rho)
        scale = 1.0 if partial_volume is None else float(partial_volume.segment_recovery[[s - 1 for s in segs]].mean())
        fitted[name] = scale * np.asarray(model_curve(model, schedule, params, blood_input=display_input,
                                                      decay_corrected=decay_corrected), dtype=float)
    t = lap("fit", t)

    dv = fit.distribution_volume_ml_per_g
    polar_map = basis_function_map(model, schedule, blood, polar.reshape(n_f, -1), decay_corrected=decay_corrected,
                                   input_function=input_function, distribution_volume_ml_per_g=dv)
    polar_mbf = polar_map.mbf_ml_per_min_per_g.reshape(grid.shape)
    mask_flat = geometry.mask.reshape(-1)
    voxel_tacs = flat[:, mask_flat]
    if partial_volume is not None:
        voxel_tacs = voxel_tacs / partial_volume.voxel_recovery_map[_voxel_cells(geometry, mask_flat, z_rows, grid.n_psi)]
    voxel_map = basis_function_map(model, schedule, blood, voxel_tacs, decay_corrected=decay_corrected,
                                   input_function=input_function, distribution_volume_ml_per_g=dv)
    voxel_mbf = np.zeros(mask_flat.shape, dtype=np.float32)
    voxel_mbf[mask_flat] = voxel_map.mbf_ml_per_min_per_g.astype(np.float32)
    voxel_mbf = voxel_mbf.reshape(volume.shape3d)
    t = lap("maps", t)

    motion_frames = np.arange(n_f) > k_lv
    first_pass = {min(max(k, 0), n_f - 1) for k in (k_lv - 1, k_lv, k_lv + 1)}
    if rv is not None:
        first_pass.add(int(np.argmax(rv)))
    templates = np.stack([late.voxels] + [voxels[k] for k in sorted(first_pass)])
    motion_mm, _ = _motion(voxels, motion_frames, templates, geometry, volume)
    lap("motion", t)

    flags = _input_flags(schedule, blood, rv, input_region, fwhm, motion_mm, state) + _fit_flags(fit, model, state)
    timings["total"] = time.perf_counter() - t_start
    return StateMBF(state=state, tracer=tracer, schedule=schedule, location=location, blood_bq_per_ml=blood,
                    rv_bq_per_ml=rv, segment_tacs_bq_per_ml=segment_tacs, territory_tacs_bq_per_ml=territory_tacs,
                    fitted_territory_tacs_bq_per_ml=fitted, input_region=input_region, rv_region=rv_region, fit=fit,
                    polar_mbf_ml_per_min_per_g=polar_mbf, voxel_mbf_ml_per_min_per_g=voxel_mbf,
                    myocardium_mask=geometry.mask, motion_mm=motion_mm, flags=tuple(flags), notes=tuple(notes),
                    timings_s=timings, polar_tacs_bq_per_ml=measured_polar, motion_frames=motion_frames,
                    partial_volume=partial_volume, cross_segment=cross_segment)
