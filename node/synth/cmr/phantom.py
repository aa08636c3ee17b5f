"""Cardiac MR phantoms with exact truth: short-axis cine and LGE stacks (numpy, vectorised).

Reference note ``cmr_lge.md`` sections 4.1 (LGE phantom), 4.2 (cine phantom) and 4.4 (why tests
compare with *sampled* truth). The LV is the truncated prolate ellipsoidal shell of
:mod:`node.synth.geometry` (epicardial apex fixed, base plane descending in systole, myocardial
volume conserved) in the LV frame :class:`~node.quant.lv_frame.LVFrame` (``z`` mm from the
epicardial apex along the long axis, ``psi`` from anterior toward septum).

Conventions
-----------
* **Septal angle.** The RV is a crescent (per slice an ellipse, scaled with the local LV
  epicardial radius) centred on the frame azimuth ``septal_angle_deg``: the middle of the LV-RV
  contact arc, the mid-septum of the AHA convention on short axis (reference 3.4). The AHA
  azimuth of a point is ``psi_aha = psi_frame - septal_angle_deg + 90`` (0 anterior, 90
  mid-septum, 180 inferior, 270 lateral); scar patches are placed in AHA azimuth.
* **Slices.** Short-axis slices are perpendicular to the long axis; slice ``k`` is the slab
  ``z_k +- thickness / 2`` (slice 0 the most apical), its centre plane passing through the long
  axis at pixel :attr:`SliceStack.axis_pixel` (row, column). With in-plane rotation 0 the image
  is the standard display (rows anterior -> inferior, columns septal -> lateral, seen from the
  apex); ``inplane_rotation_deg`` turns the image axes about the long axis (a double-oblique
  plan is rarely perfectly aligned). The slice normal (row x column direction) points apex -> base.
* **Partial volume.** Each pixel is supersampled (``in_plane`` x ``in_plane`` x ``through``
  points); the base plane is treated exactly across each through-plane sub-slab (linear weight),
  so the tissue *fractions* are the pixel's occupancy to within the in-plane sampling.
* **Truth.** *Continuous* = the analytic model (closed forms; a fine quadrature where none
  exists). *Sampled* = the same quantity from the fractions on the acquired slices, the way a
  perfect partial-volume segmentation with Simpson summation would find it: volume =
  sum(fraction x pixel area) x slice spacing (thickness + gap). With gap 0 sampled converges to
  continuous as the supersampling grows (tests/synth/test_cmr_phantom.py); with gaps or a base
  that falls inside a slab they differ by the reference's ``+-8 %`` discretisation, which is why
  acceptance tests compare with sampled truth.
* **Segments on slices** (reference 3.4, ukbb_cardiac; the node's rule,
  :func:`node.quant.sax_segments.slice_rings`, applied to the truth masks, fraction >= 0.5): LV
  slices hold at least 10 pixels of cavity and 10 of myocardium; they split into thirds by count,
  basal first (``ceil(n/3)`` basal, up to ``ceil(2n/3)`` mid, the rest apical); slices below the
  LV slices (myocardium, no cavity) are segment 17; slices above them belong to the basal ring
  (also slabs whose myocardium is only partial volume).
  The azimuthal sector of a pixel is that of its centre's AHA azimuth (60 deg rings from
  ``-30``, 90 deg apical sectors from ``-45``, :func:`node.quant.segments.segment_of`).
  *Continuous* segments use thirds of the cavity length (the SPECT truth convention).
* **Mass** = volume x 1.05 g/mL (:data:`MYOCARDIAL_DENSITY_G_PER_ML`).

Contrast (relative signal, reference 4.1 / 4.2; phantom parameters, not measurements):

* LGE, inversion recovery with post-contrast T1 (ms) at 1.5 T: myocardium 450, blood 300,
  scar 250, fat 270, MVO 520 (background: body 600, lung 1200 and liver 350, scaled by a
  relative proton density, lung 0.08); ``TI`` nulls myocardium up to a small error, so remote
  myocardium is a few % of scar. Signed (PSIR) signal ``1 - 2 exp(-TI/T1)``; magnitude its
  absolute value. Scar patches have an ``intensity`` in (0, 1] (fraction of dense-scar signal
  above remote) and a smooth texture.
* Cine (bSSFP): blood 1.0, myocardium 0.33, fat 0.9, lung 0.05, chest wall / body 0.35,
  liver 0.3.
* Noise: magnitude images get Rician noise (magnitude of complex Gaussian, ``sigma`` =
  reference signal / SNR: scar for LGE, blood for cine); PSIR gets Gaussian noise of the same
  ``sigma``. A smooth coil-sensitivity gradient (anterior brighter) multiplies the signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from node.quant.lv_frame import LVFrame
from node.quant.sax_segments import slice_rings
from node.quant.segments import N_SEGMENTS, segment_of
from node.synth.anatomy import TissueUptake, TorsoModel, depth_fraction
from node.synth.geometry import LVGeometry, LVShape, geometry_at

__all__ = [
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "TISSUES",
    "LGE_T1_MS",
    "LGE_PROTON_DENSITY",
    "CINE_SIGNAL",
    "ScarPatch",
    "FatPad",
    "LGEPattern",
    "PATTERNS",
    "draw_pattern",
    "SliceStack",
    "Sampling",
    "CMRAnatomy",
    "draw_anatomy",
    "shape_for_ef",
    "TissueFractions",
    "tissue_fractions",
    "slice_segments",
    "LGETruth",
    "LGEImages",
    "lge_phantom",
    "CineTruth",
    "CineImages",
    "cine_phantom",
    "lge_signal",
    "lge_composite",
    "PlaneImage",
    "lge_plane",
    "rician",
    "TI_SCOUT_MS",
    "ti_scout",
    "t1_map",
    "LongAxisCine",
    "long_axis_cine",
]

#: myocardial density (g/mL) for mass = volume x density (reference 0.3)
MYOCARDIAL_DENSITY_G_PER_ML = 1.05

#: tissue labels of :class:`TissueFractions` (index = label); ``scar`` and ``mvo`` are both infarct/LGE
TISSUES: tuple[str, ...] = ("background", "lv_blood", "myocardium", "scar", "mvo", "rv_blood", "rv_wall",
                            "fat", "rv_scar")
_BG, _LVB, _MYO, _SCAR, _MVO, _RVB, _RVW, _FAT, _RVS = range(len(TISSUES))

#: post-contrast T1 (ms) at 1.5 T, 10-15 min after gadolinium (reference 4.1, phantom parameters)
LGE_T1_MS: dict[str, float] = {"myocardium": 450.0, "blood": 300.0, "scar": 250.0, "fat": 270.0, "mvo": 520.0,
                               "body": 600.0, "lung": 1200.0, "liver": 350.0}
#: relative proton density of the LGE background tissues (air-filled lung is dark on MR); heart tissues 1
LGE_PROTON_DENSITY: dict[str, float] = {"body": 0.7, "lung": 0.08, "liver": 0.8}
#: relative bSSFP signal of each tissue on cine (reference 4.2)
CINE_SIGNAL: dict[str, float] = {"blood": 1.0, "myocardium": 0.33, "fat": 0.9, "body": 0.35, "lung": 0.05,
                                 "liver": 0.3}


# --------------------------------------------------------------------------- scar patterns

@dataclass(frozen=True)
class ScarPatch:
    """One region of late enhancement in the LV wall.

    ``psi_deg``: AHA azimuth of its centre (0 anterior, 90 mid-septum, 180 inferior, 270
    lateral); ``half_width_deg``: angular half-width; ``v_range``: long-axis extent as fractions
    of the cavity length (0 = cavity apex, 1 = base plane; below 0 reaches into the apical cap);
    ``depth_range``: wall-depth fractions (0 endocardium, 1 epicardium; :func:`node.synth.anatomy.depth_fraction`);
    ``intensity``: signal above remote as a fraction of dense scar (0.5-1); ``mvo_depth``: the
    inner part of the patch (depth fraction from its inner border) that is a dark
    microvascular-obstruction core, counted as infarct (inset from the sides: within 0.6 of the
    half-width and the inner 80 % of ``v_range``, so enhancement rims it); ``rv``: the RV wall next to the patch
    (same azimuths and heights) enhances too.
    """

    psi_deg: float
    half_width_deg: float
    v_range: tuple[float, float]
    depth_range: tuple[float, float]
    intensity: float = 1.0
    mvo_depth: float = 0.0
    rv: bool = False


@dataclass(frozen=True)
class FatPad:
    """Epicardial fat outside the LV (bright on LGE: the false-positive trap).

    ``psi_deg``/``half_width_deg`` in AHA azimuth, ``v_range`` as in :class:`ScarPatch`
    (may exceed 1: the AV groove), ``thickness_mm`` outward from the epicardium.
    """

    psi_deg: float
    half_width_deg: float
    v_range: tuple[float, float]
    thickness_mm: float


@dataclass(frozen=True)
class LGEPattern:
    """A named scar pattern: its patches, fat, and the labels a reader would give."""

    name: str
    patches: tuple[ScarPatch, ...]
    fat: tuple[FatPad, ...]
    labels: tuple[str, ...]  # subset of subendocardial, transmural, mid-wall, epicardial, mvo
    multifocal: bool
    rv_involvement: bool
    ischaemic: bool


#: the patterns :func:`draw_pattern` knows (reference 8.3: the six LGE phantoms + the multifocal RV one)
PATTERNS: tuple[str, ...] = ("scar_free", "ischaemic_subendocardial", "ischaemic_transmural_mvo",
                             "sarcoid_midwall_septal", "sarcoid_epicardial", "sarcoid_multifocal_rv",
                             "fat_pad_decoy")

_TERRITORY_PSI = {"LAD": 20.0, "RCA": 165.0, "LCx": 255.0}
_AV_GROOVE_FAT = FatPad(psi_deg=300.0, half_width_deg=50.0, v_range=(0.92, 1.2), thickness_mm=3.0)


def draw_pattern(name: str, rng: np.random.Generator) -> LGEPattern:
    """Draw an :class:`LGEPattern` of kind ``name`` (one of :data:`PATTERNS`) with random extent.

    Ischaemic: one coronary-territory sector, subendocardial depth 0.25-0.6 (``..._subendocardial``)
    or transmural with an MVO core, over 30-75 % of the cavity length. Sarcoid-like: septal/basal
    mid-wall (depth 0.25-0.75), epicardial (0.6-1.0) patches, or 3-4 patches of mixed depth with
    RV-insertion/RV wall involvement. Every pattern carries a thin AV-groove fat pad; the decoy
    adds a thick one over the anterolateral wall and has no scar.
    """
    u = rng.uniform
    if name == "scar_free":
        return LGEPattern(name, (), (_AV_GROOVE_FAT,), (), False, False, False)
    if name == "fat_pad_decoy":
        pad = FatPad(float(u(240, 330)), float(u(40, 70)), (float(u(0.2, 0.4)), 1.15), float(u(4.0, 7.0)))
        return LGEPattern(name, (), (_AV_GROOVE_FAT, pad), (), False, False, False)
    if name in ("ischaemic_subendocardial", "ischaemic_transmural_mvo"):
        territory = ("LAD", "RCA", "LCx")[int(rng.integers(3))]
        psi = _TERRITORY_PSI[territory] + float(u(-15, 15))
        lo = float(u(-0.05, 0.3))
        v = (lo, min(lo + float(u(0.3, 0.75)), 1.0))
        if name == "ischaemic_subendocardial":
            patch = ScarPatch(psi, float(u(30, 55)), v, (0.0, float(u(0.25, 0.6))), float(u(0.7, 1.0)))
            return LGEPattern(name, (patch,), (_AV_GROOVE_FAT,), ("subendocardial",), False, False, True)
        patch = ScarPatch(psi, float(u(35, 60)), v, (0.0, 1.0), float(u(0.8, 1.0)), mvo_depth=float(u(0.25, 0.45)))
        return LGEPattern(name, (patch,), (_AV_GROOVE_FAT,), ("transmural", "mvo"), False, False, True)
    if name == "sarcoid_midwall_septal":
        d0 = float(u(0.2, 0.35))
        patch = ScarPatch(90.0 + float(u(-20, 20)), float(u(20, 40)), (float(u(0.4, 0.6)), float(u(0.85, 1.0))),
                          (d0, d0 + float(u(0.3, 0.45))), float(u(0.6, 1.0)))
        return LGEPattern(name, (patch,), (_AV_GROOVE_FAT,), ("mid-wall",), False, False, False)
    if name == "sarcoid_epicardial":
        n = int(rng.integers(1, 3))
        patches = tuple(ScarPatch(float(u(180, 330)), float(u(15, 35)), (lo, lo + float(u(0.2, 0.4))),
                                  (float(u(0.55, 0.7)), 1.0), float(u(0.6, 1.0)))
                        for lo in rng.uniform(0.2, 0.6, size=n))
        return LGEPattern(name, patches, (_AV_GROOVE_FAT,), ("epicardial",), n > 1, False, False)
    if name == "sarcoid_multifocal_rv":
        # RV insertion (anterior ~30 deg, inferior ~150 deg from the mid-septum convention) + septum + lateral
        patches = (
            ScarPatch(float(u(25, 40)), float(u(12, 20)), (float(u(0.5, 0.6)), 1.0), (0.3, 1.0), float(u(0.7, 1.0)),
                      rv=True),
            ScarPatch(float(u(140, 155)), float(u(12, 20)), (float(u(0.4, 0.5)), float(u(0.8, 1.0))), (0.3, 1.0),
                      float(u(0.7, 1.0)), rv=True),
            ScarPatch(90.0 + float(u(-10, 10)), float(u(15, 25)), (float(u(0.2, 0.3)), float(u(0.5, 0.6))),
                      (0.25, 0.7), float(u(0.6, 0.9))),
            ScarPatch(float(u(250, 290)), float(u(15, 25)), (float(u(0.3, 0.5)), float(u(0.6, 0.8))),
                      (0.6, 1.0), float(u(0.6, 0.9))),
        )
        return LGEPattern(name, patches, (_AV_GROOVE_FAT,), ("mid-wall", "epicardial"), True, True, False)
    raise ValueError(f"unknown LGE pattern {name!r}; known: {PATTERNS}")


# --------------------------------------------------------------------------- anatomy and slices

def shape_for_ef(ef_pct: float, ed_a_mm: float = 27.0, ed_c_mm: float = 70.0, wall_mm: float = 9.0,
                 name: str = "cmr") -> LVShape:
    """An :class:`~node.synth.geometry.LVShape` with the given analytic EF (%).

    Long-axis shortening is ``0.2 x EF / 60`` of the cavity length (the base descends ~10 mm at
    EF 60 %, less when the ventricle fails); the ES short semi-axis then follows from the ESV.
    """
    if not 5.0 <= ef_pct <= 85.0:
        raise ValueError(f"ef_pct must be in [5, 85], got {ef_pct!r}")
    es_c = ed_c_mm * (1.0 - 0.2 * ef_pct / 60.0)
    ratio = 1.0 - ef_pct / 100.0
    es_a = ed_a_mm * math.sqrt(ratio * ed_c_mm / es_c)
    return LVShape(name, ed_a_mm, ed_c_mm, wall_mm, es_a, es_c)


@dataclass(frozen=True)
class SliceStack:
    """The short-axis acquisition plan (mm): slice ``k`` centred at ``z = first_z_mm + k x spacing``.

    ``axis_pixel``: (row, column) where the long axis crosses each slice (fractional pixel
    index); ``inplane_rotation_deg``: rotation of the image axes about the long axis from the
    standard display.
    """

    n_slices: int
    thickness_mm: float
    gap_mm: float
    pixel_mm: float
    rows: int
    cols: int
    first_z_mm: float
    axis_pixel: tuple[float, float]
    inplane_rotation_deg: float = 0.0

    @property
    def spacing_mm(self) -> float:
        return self.thickness_mm + self.gap_mm

    @property
    def z_centres_mm(self) -> np.ndarray:
        """Slice centres along the long axis (mm from the ED epicardial apex), apex first."""
        return self.first_z_mm + self.spacing_mm * np.arange(self.n_slices)


@dataclass(frozen=True)
class Sampling:
    """Supersampling per pixel: ``in_plane`` x ``in_plane`` points and ``through`` sub-slabs."""

    in_plane: int = 3
    through: int = 4


@dataclass(frozen=True, eq=False)
class CMRAnatomy:
    """One synthetic heart in the scanner: LV shape, pose, RV crescent, fat and the slice plan.

    ``frame``: LV frame (epicardial apex at ED, long axis apex -> base, patient LPS mm);
    ``septal_angle_deg``: frame azimuth of the mid-septum (middle of the LV-RV contact arc);
    ``rv_arc_deg``: angular extent of the LV-RV contact arc at mid-ventricle (110-150 deg);
    ``rv_depth``: RV cavity depth beyond the LV epicardium as a fraction of the local epicardial
    radius; ``rv_apex_v``: the RV reaches down to this fraction of the cavity length;
    ``rv_wall_mm``: RV free-wall thickness.
    """

    shape: LVShape
    frame: LVFrame
    septal_angle_deg: float
    rv_arc_deg: float
    rv_depth: float
    rv_apex_v: float
    rv_wall_mm: float
    stack: SliceStack
    es_fraction: float = 0.35

    def aha_psi(self, psi_frame_deg: np.ndarray) -> np.ndarray:
        """AHA azimuth (0 anterior, 90 mid-septum) of frame azimuths (degrees, [0, 360))."""
        return np.mod(np.asarray(psi_frame_deg) - self.septal_angle_deg + 90.0, 360.0)

    def image_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-space unit vectors of increasing column (row cosine) and increasing row (column cosine)."""
        theta = math.radians(self.stack.inplane_rotation_deg)
        a, s = self.frame.anterior, self.frame.septal
        x_axis = -s * math.cos(theta) - a * math.sin(theta)
        y_axis = -a * math.cos(theta) + s * math.sin(theta)
        return x_axis, y_axis

    def slice_origin_mm(self, k: int) -> np.ndarray:
        """Patient position (LPS mm) of the centre of pixel (0, 0) of slice ``k`` (Image Position Patient)."""
        x_axis, y_axis = self.image_axes()
        centre = self.frame.apex_mm + self.frame.long_axis * float(self.stack.z_centres_mm[k])
        row0, col0 = self.stack.axis_pixel
        return centre - x_axis * col0 * self.stack.pixel_mm - y_axis * row0 * self.stack.pixel_mm

    def affine(self) -> np.ndarray:
        """4x4 affine from (slice, row, column) index to patient LPS mm (slices apex -> base)."""
        x_axis, y_axis = self.image_axes()
        out = np.eye(4)
        out[:3, 0] = self.frame.long_axis * self.stack.spacing_mm
        out[:3, 1] = y_axis * self.stack.pixel_mm
        out[:3, 2] = x_axis * self.stack.pixel_mm
        out[:3, 3] = self.slice_origin_mm(0)
        return out

    def rv_ellipse(self) -> tuple[float, float, float]:
        """RV outer ellipse per slice as multiples of the local epicardial radius R: centre offset
        ``D`` along the mid-septum direction, semi-axes ``p`` (along it) and ``q`` (across), with
        the LV epicardial circle meeting it at +-``rv_arc_deg / 2``."""
        half = math.radians(self.rv_arc_deg / 2.0)
        p, q = self.rv_depth + 0.1, 1.3
        d = math.cos(half) + p * math.sqrt(max(1.0 - (math.sin(half) / q) ** 2, 0.0))
        return d, p, q

    def torso(self) -> TorsoModel:
        """Body, lungs and liver around the heart (patient LPS), intensities filled per sequence."""
        c_epi = self.shape.ed_c_mm + self.shape.wall_mm
        centre = self.frame.apex_mm + self.frame.long_axis * 0.5 * c_epi
        lungs = (((115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)),
                 ((-115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)))
        liver_centre = self.frame.to_patient(np.array([0.4 * c_epi, -(self.shape.ed_a_mm + self.shape.wall_mm), 0.0]))
        liver_centre = liver_centre + np.array([-40.0, 10.0, -75.0])
        return TorsoModel(uptake=TissueUptake(0.0, 0.0, 1.0, 2.0, 3.0), body_semi_axes_xy=(170.0, 115.0),
                          lungs=lungs, liver=(tuple(liver_centre), (85.0, 70.0, 65.0)), liver_activity=3.0,
                          bowel=None, bowel_activity=0.0)


def draw_anatomy(
    rng: np.random.Generator,
    shape: LVShape | None = None,
    *,
    n_slices: int | None = None,
    thickness_mm: float = 8.0,
    gap_mm: float = 2.0,
    pixel_mm: float = 1.5,
    matrix: tuple[int, int] = (256, 256),
    base_phase: float | None = None,
    septal_angle_deg: float | None = None,
    inplane_rotation_deg: float | None = None,
) -> CMRAnatomy:
    """Draw a heart and a slice plan (reference 4.1 ranges).

    Pose: apex toward patient left-anterior-inferior (~45 deg from sagittal, ~30 deg below axial,
    +-10 deg each), so the plane is double-oblique. ``shape`` defaults to a random healthy
    ventricle (ED ``a`` 24-30 mm, ``c`` 62-78 mm, wall 8-11 mm, EF 55-65 %). The stack covers the
    LV from below the apex to past the ED base; ``base_phase`` in [0, 1) places the ED base plane
    within the top slab (default random; the reference's "random slice phase"), ``n_slices``
    defaults to enough slices for that. Septal angle: 90 +- 20 deg in the frame; the image is
    rotated by up to +-15 deg about the long axis; the long axis crosses the image up to 12 mm
    from its centre.
    """
    u = rng.uniform
    if shape is None:
        shape = shape_for_ef(float(u(55, 65)), float(u(24, 30)), float(u(62, 78)), float(u(8, 11)))
    azimuth, elevation = math.radians(45.0 + float(u(-10, 10))), math.radians(30.0 + float(u(-10, 10)))
    apex_direction = np.array([math.cos(elevation) * math.sin(azimuth), -math.cos(elevation) * math.cos(azimuth),
                               -math.sin(elevation)])
    long_axis = -apex_direction
    c_epi = shape.ed_c_mm + shape.wall_mm
    centre = np.array([30.0, -25.0, -10.0]) + rng.uniform(-8.0, 8.0, size=3)
    frame = LVFrame(centre - long_axis * 0.5 * c_epi, long_axis)
    spacing = thickness_mm + gap_mm
    phase = float(u(0.0, 1.0)) if base_phase is None else float(base_phase)
    # the ED base plane sits at fraction `phase` of the top slab's thickness
    top_centre = c_epi - (phase - 0.5) * thickness_mm
    needed = int(math.ceil((top_centre + 0.5 * thickness_mm + 2.0) / spacing))
    count = needed if n_slices is None else int(n_slices)
    first_z = top_centre - spacing * (count - 1)
    rows, cols = matrix
    offset = rng.uniform(-8.0, 8.0, size=2) / pixel_mm
    stack = SliceStack(count, thickness_mm, gap_mm, pixel_mm, rows, cols, first_z,
                       (0.5 * (rows - 1) + float(offset[0]), 0.5 * (cols - 1) + float(offset[1])),
                       float(u(-15, 15)) if inplane_rotation_deg is None else float(inplane_rotation_deg))
    return CMRAnatomy(shape=shape, frame=frame,
                      septal_angle_deg=90.0 + float(u(-20, 20)) if septal_angle_deg is None else float(septal_angle_deg),
                      rv_arc_deg=float(u(110, 150)), rv_depth=float(u(0.55, 0.8)), rv_apex_v=float(u(0.15, 0.3)),
                      rv_wall_mm=float(u(3.0, 4.0)), stack=stack)


# --------------------------------------------------------------------------- tissue fractions

@dataclass(frozen=True, eq=False)
class TissueFractions:
    """Per-pixel occupancy of each tissue on one phase's slices.

    ``fractions`` ``[tissue, slice, row, col]`` (float32, sums to 1 over tissues; tissues in
    :data:`TISSUES` order); ``intensity`` ``[slice, row, col]``: the fraction-weighted scar
    ``intensity`` x texture of the enhancing voxels (0 elsewhere), for the signal model;
    ``aha_psi_deg`` ``[slice, row, col]``: AHA azimuth of each pixel centre; ``geometry`` the LV
    snapshot.
    """

    fractions: np.ndarray
    scar_weight: np.ndarray
    aha_psi_deg: np.ndarray
    geometry: LVGeometry

    def of(self, tissue: str) -> np.ndarray:
        return self.fractions[TISSUES.index(tissue)]

    @property
    def lv_myocardium(self) -> np.ndarray:
        """LV myocardium incl. scar and MVO, ``[slice, row, col]`` fractions."""
        return self.fractions[_MYO] + self.fractions[_SCAR] + self.fractions[_MVO]

    @property
    def lv_scar(self) -> np.ndarray:
        """LV infarct/LGE incl. MVO, ``[slice, row, col]`` fractions."""
        return self.fractions[_SCAR] + self.fractions[_MVO]


def _in_plane_coords(anatomy: CMRAnatomy, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Components along the frame's anterior and septal axes (mm) of pixel positions (fractional indices)."""
    st = anatomy.stack
    theta = math.radians(st.inplane_rotation_deg)
    x = (cols - st.axis_pixel[1]) * st.pixel_mm
    y = (rows - st.axis_pixel[0]) * st.pixel_mm
    # x_axis = -s cos - a sin ; y_axis = -a cos + s sin
    along_a = -x * math.sin(theta) - y * math.cos(theta)
    along_s = -x * math.cos(theta) + y * math.sin(theta)
    return along_a, along_s


def _patch_masks(pattern: LGEPattern, v: np.ndarray, psi_aha: np.ndarray, depth: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scar, mvo, intensity) of myocardial points for ``pattern`` (max intensity where patches overlap)."""
    scar = np.zeros(v.shape, dtype=bool)
    mvo = np.zeros(v.shape, dtype=bool)
    intensity = np.zeros(v.shape, dtype=np.float32)
    for patch in pattern.patches:
        dpsi = np.abs(np.mod(psi_aha - patch.psi_deg + 180.0, 360.0) - 180.0)
        inside = ((dpsi <= patch.half_width_deg) & (v >= patch.v_range[0]) & (v <= patch.v_range[1])
                  & (depth >= patch.depth_range[0]) & (depth <= patch.depth_range[1]))
        scar |= inside
        if patch.mvo_depth > 0:  # the core: inner depth, inset from the sides (rimmed by enhancement)
            v_lo, v_hi = patch.v_range
            inset = 0.1 * (v_hi - v_lo)
            mvo |= (inside & (depth < patch.depth_range[0] + patch.mvo_depth * (patch.depth_range[1] - patch.depth_range[0]))
                    & (dpsi <= 0.6 * patch.half_width_deg) & (v >= v_lo + inset) & (v <= v_hi - inset))
        intensity = np.where(inside, np.maximum(intensity, patch.intensity), intensity)
    return scar, mvo & scar, intensity


def _rv_patch_mask(pattern: LGEPattern, v: np.ndarray, psi_aha: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape, dtype=bool)
    for patch in pattern.patches:
        if patch.rv:
            dpsi = np.abs(np.mod(psi_aha - patch.psi_deg + 180.0, 360.0) - 180.0)
            out |= (dpsi <= patch.half_width_deg + 10.0) & (v >= patch.v_range[0]) & (v <= patch.v_range[1])
    return out


def _texture(pattern: LGEPattern, psi_aha: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth multiplicative scar texture, 1 +- ~12 %."""
    rng = np.random.default_rng(seed)
    out = np.ones(psi_aha.shape, dtype=np.float32)
    psi = np.radians(psi_aha)
    for m in range(1, 4):
        c, s, w = rng.normal(0, 0.05, size=3)
        out += (c * np.cos(m * psi) + s * np.sin(m * psi) + w * np.cos(m * math.pi * v)).astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class _Plane:
    """In-plane quantities of sample points (same for every through-plane position of a slice)."""

    r: np.ndarray
    psi_frame: np.ndarray
    psi_aha: np.ndarray
    along_u: np.ndarray  # toward the mid-septum
    along_w: np.ndarray  # across it


def _plane(anatomy: CMRAnatomy, along_a: np.ndarray, along_s: np.ndarray) -> _Plane:
    sep = math.radians(anatomy.septal_angle_deg)
    psi_frame = np.mod(np.degrees(np.arctan2(along_s, along_a)), 360.0)
    return _Plane(np.hypot(along_a, along_s), psi_frame, anatomy.aha_psi(psi_frame),
                  along_a * math.cos(sep) + along_s * math.sin(sep),
                  -along_a * math.sin(sep) + along_s * math.cos(sep))


def _labels(anatomy: CMRAnatomy, geom: LVGeometry, pattern: LGEPattern | None,
            z: np.ndarray, plane: _Plane, base_weight: np.ndarray,
            texture_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label and weight of sample points: (label int8, weight in [0, 1] of the heart label, scar intensity).

    ``z`` broadcasts against the in-plane arrays of ``plane``. Points above the base plane get
    weight ``base_weight`` (the part of their sub-slab below the plane); the rest of their weight
    goes to the background label.
    """
    shape = np.broadcast_shapes(z.shape, plane.r.shape)
    a_endo, a_epi = geom.radii_at(plane.psi_frame)
    c, cc = geom.c_endo, geom.c_epi
    zeta = z - cc
    r2 = plane.r**2
    q_epi = r2 / a_epi**2 + (zeta / cc) ** 2
    q_endo = r2 / a_endo**2 + (zeta / c) ** 2
    below = np.broadcast_to(base_weight > 0, shape)
    in_epi = (q_epi <= 1.0) & below
    in_endo = (q_endo <= 1.0) & in_epi
    myo = in_epi & ~in_endo
    label = np.zeros(shape, dtype=np.int8)
    label[in_endo] = _LVB
    label[myo] = _MYO
    cavity_apex = cc - c
    v = np.broadcast_to((z - cavity_apex) / c, shape)
    intensity = np.zeros(shape, dtype=np.float32)
    # RV crescent: ellipse per slice scaled with the local mean epicardial radius
    d, p, q = anatomy.rv_ellipse()
    r_local = float(np.mean(geom.a_epi)) * np.sqrt(np.clip(1.0 - (zeta / cc) ** 2, 0.0, None))
    taper = np.clip((v - anatomy.rv_apex_v) / 0.25, 0.0, 1.0) ** 0.5
    r_rv = r_local * taper
    wall = anatomy.rv_wall_mm
    rv_ok = (r_rv > 2.0 * wall) & below & ~in_epi
    safe = np.maximum(r_rv, 1e-3)
    du = plane.along_u - d * safe
    q_rv_out = (du / (p * safe)) ** 2 + (plane.along_w / (q * safe)) ** 2
    q_rv_in = (du / np.maximum(p * safe - wall, 1e-3)) ** 2 + (plane.along_w / np.maximum(q * safe - wall, 1e-3)) ** 2
    rv_blood = rv_ok & (q_rv_in <= 1.0)
    rv_wall = rv_ok & (q_rv_out <= 1.0) & ~rv_blood
    label[rv_blood] = _RVB
    label[rv_wall] = _RVW
    if pattern is not None:
        full = [np.broadcast_to(x, shape) for x in (z, plane.r, a_endo, a_epi, plane.psi_aha)]
        zf, rf, af, Af, psif = full
        idx = np.nonzero(myo)
        if pattern.patches and idx[0].size:
            depth = depth_fraction(zf[idx], rf[idx], af[idx], Af[idx], geom)
            scar, mvo, inten = _patch_masks(pattern, v[idx], psif[idx], depth)
            sub = label[idx]
            sub[scar] = _SCAR
            sub[mvo] = _MVO
            label[idx] = sub
            tex = _texture(pattern, psif[idx], v[idx], texture_seed)
            intensity[idx] = np.where(scar & ~mvo, inten * tex, 0.0)
        if any(pt.rv for pt in pattern.patches):
            ridx = np.nonzero(rv_wall)
            rv_scar = _rv_patch_mask(pattern, v[ridx], psif[ridx])
            sub = label[ridx]
            sub[rv_scar] = _RVS
            label[ridx] = sub
            intensity[ridx] = np.where(rv_scar, 0.9, intensity[ridx])
        for pad in pattern.fat:
            dpsi = np.abs(np.mod(plane.psi_aha - pad.psi_deg + 180.0, 360.0) - 180.0)
            grow = pad.thickness_mm
            q_fat = r2 / (a_epi + grow) ** 2 + (zeta / (cc + grow)) ** 2
            fat = ((label == _BG) & (q_fat <= 1.0) & (dpsi <= pad.half_width_deg)
                   & (v >= pad.v_range[0]) & (v <= pad.v_range[1]) & below)
            label[fat] = _FAT
    heart = label != _BG
    # the base plane cuts LV (and RV/fat) sub-slabs: keep the part below it
    weight = np.where(heart, base_weight, 0.0).astype(np.float32)
    return label, weight, intensity


def tissue_fractions(
    anatomy: CMRAnatomy,
    t_frac: float,
    pattern: LGEPattern | None = None,
    sampling: Sampling = Sampling(),
    texture_seed: int = 0,
) -> TissueFractions:
    """Tissue occupancy of every pixel of the stack at cycle fraction ``t_frac`` (0 = ED).

    Only pixels within the heart's bounding circle are supersampled; the rest is background.
    """
    st = anatomy.stack
    geom = geometry_at(anatomy.shape, t_frac, es_fraction=anatomy.es_fraction)
    d, p, _ = anatomy.rv_ellipse()
    extent_mm = float(np.max(geom.a_epi)) * (d + p) + 12.0
    half = int(math.ceil(extent_mm / st.pixel_mm)) + 1
    r0 = max(int(math.floor(st.axis_pixel[0])) - half, 0)
    r1 = min(int(math.ceil(st.axis_pixel[0])) + half + 1, st.rows)
    c0 = max(int(math.floor(st.axis_pixel[1])) - half, 0)
    c1 = min(int(math.ceil(st.axis_pixel[1])) + half + 1, st.cols)
    n_in, n_th = sampling.in_plane, sampling.through
    off = (np.arange(n_in) + 0.5) / n_in - 0.5
    rr, cc = np.meshgrid(np.arange(r0, r1, dtype=np.float64), np.arange(c0, c1, dtype=np.float64), indexing="ij")
    sub_r = (rr[None, None] + off[:, None, None, None]).repeat(n_in, axis=1)
    sub_c = (cc[None, None] + off[None, :, None, None]).repeat(n_in, axis=0)
    along_a, along_s = _in_plane_coords(anatomy, sub_r.reshape(n_in * n_in, -1), sub_c.reshape(n_in * n_in, -1))
    plane = _plane(anatomy, along_a[None], along_s[None])
    h = st.thickness_mm / n_th
    n_box = (r1 - r0) * (c1 - c0)
    fractions = np.zeros((len(TISSUES), st.n_slices, st.rows, st.cols), dtype=np.float32)
    fractions[_BG] = 1.0
    scar_weight = np.zeros((st.n_slices, st.rows, st.cols), dtype=np.float32)
    n_samples = n_in * n_in * n_th
    pixel = np.broadcast_to(np.arange(n_box), (n_th, n_in * n_in, n_box)).ravel()
    for k, zc in enumerate(st.z_centres_mm):
        z_sub = zc + h * ((np.arange(n_th) + 0.5) - 0.5 * n_th)
        if z_sub[0] - 0.5 * h > geom.c_epi or z_sub[-1] + 0.5 * h < 0.0:
            continue
        z = z_sub[:, None, None]
        base_w = np.clip((geom.c_epi - (z - 0.5 * h)) / h, 0.0, 1.0)
        label, weight, inten = _labels(anatomy, geom, pattern, z, plane, base_w, texture_seed)
        sums = np.bincount(label.ravel().astype(np.intp) * n_box + pixel, weights=weight.ravel(),
                           minlength=len(TISSUES) * n_box).reshape(len(TISSUES), n_box) / n_samples
        sums[_BG] = 1.0 - sums[1:].sum(axis=0)
        fractions[:, k, r0:r1, c0:c1] = sums.reshape(len(TISSUES), r1 - r0, c1 - c0)
        scar_weight[k, r0:r1, c0:c1] = (np.sum((inten * weight).reshape(n_samples, n_box), axis=0)
                                        / n_samples).reshape(r1 - r0, c1 - c0)
    # AHA azimuth of pixel centres
    pr, pc = np.meshgrid(np.arange(st.rows, dtype=np.float64), np.arange(st.cols, dtype=np.float64), indexing="ij")
    ca, cs = _in_plane_coords(anatomy, pr, pc)
    psi_aha = anatomy.aha_psi(np.mod(np.degrees(np.arctan2(cs, ca)), 360.0)).astype(np.float32)
    return TissueFractions(fractions, scar_weight, np.broadcast_to(psi_aha, (st.n_slices, st.rows, st.cols)), geom)


def slice_segments(fractions: TissueFractions, min_pixels: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """AHA segment of every pixel with LV myocardium, by the slice-thirds rule (module docstring).

    Returns ``(segments [slice, row, col] int8, 0 = no LV myocardium; ring [slice] int8: 0 none,
    1 basal, 2 mid, 3 apical, 4 apex cap)``.
    """
    myo = fractions.lv_myocardium
    # the node's rule on what a perfect segmentation sees (masks: fraction >= 0.5)
    ring = slice_rings(fractions.of("lv_blood") >= 0.5, myo >= 0.5, apex_first=True, min_pixels=min_pixels)
    lv = np.flatnonzero(np.isin(ring, (1, 2, 3)))
    if lv.size:  # slabs with partial-volume myocardium only: the cap below the LV slices, basal above
        partial = (ring == 0) & (myo.sum(axis=(1, 2)) > 0)
        ring[partial & (np.arange(ring.size) < lv[0])] = 4
        ring[partial & (np.arange(ring.size) > lv[-1])] = 1
    # u within each ring chosen so that segment_of gives that ring's numbering
    u_of_ring = np.array([0.0, 0.9, 0.5, 0.2, 0.0])[ring]
    seg = segment_of(u_of_ring[:, None, None], fractions.aha_psi_deg, 0.0)
    seg = np.where((ring == 4)[:, None, None], 17, seg)
    seg = np.where((myo > 0) & (ring > 0)[:, None, None], seg, 0).astype(np.int8)
    return seg, ring


# --------------------------------------------------------------------------- LGE

def lge_signal(tissue_t1_ms: float, ti_ms: float) -> float:
    """Signed inversion-recovery signal ``1 - 2 exp(-TI / T1)`` (readout saturation ignored)."""
    return 1.0 - 2.0 * math.exp(-ti_ms / tissue_t1_ms)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` + complex Gaussian noise of SD ``sigma`` per channel (Rician)."""
    n1 = rng.normal(0.0, sigma, size=signal.shape)
    n2 = rng.normal(0.0, sigma, size=signal.shape)
    return np.hypot(signal + n1, n2)


def _coil_field(anatomy: CMRAnatomy, strength: float) -> np.ndarray:
    """Smooth receive-coil gain ``1 + strength x (anterior distance / 100 mm)``, clipped to [0.6, 1.4]."""
    st = anatomy.stack
    pr, pc = np.meshgrid(np.arange(st.rows, dtype=np.float64), np.arange(st.cols, dtype=np.float64), indexing="ij")
    along_a, _ = _in_plane_coords(anatomy, pr, pc)
    return np.clip(1.0 + strength * along_a / 100.0, 0.6, 1.4)


def _torso_signal(anatomy: CMRAnatomy, values: dict[str, float], slices: slice = slice(None)) -> np.ndarray:
    """Background signal ``[slice, row, col]`` at pixel centres (body, lungs, liver; air 0) of ``slices``."""
    st = anatomy.stack
    torso = anatomy.torso()
    x_axis, y_axis = anatomy.image_axes()
    pr, pc = np.meshgrid(np.arange(st.rows, dtype=np.float64), np.arange(st.cols, dtype=np.float64), indexing="ij")
    ks = range(st.n_slices)[slices]
    out = np.zeros((len(ks), st.rows, st.cols))
    lut = np.array([0.0, values["body"], values["lung"], values["liver"]])
    for n, k in enumerate(ks):
        o = anatomy.slice_origin_mm(k)
        pts = [o[d] + pc * st.pixel_mm * x_axis[d] + pr * st.pixel_mm * y_axis[d] for d in range(3)]
        code = torso.evaluate_components(pts[0], pts[1], pts[2])
        out[n] = lut[np.round(code).astype(int)]
    return out


@dataclass(frozen=True, eq=False)
class LGETruth:
    """Truth of one LGE phantom. Volumes mL, masses g, percentages of LV myocardial mass.

    ``*_continuous``: the analytic model over the whole LV; ``*_sampled``: from the fractions on
    the acquired slices with Simpson summation (module docstring). Segment arrays have 17
    entries (index 0 = segment 1; NaN where the segment has no myocardium); ``segment_extent_pct``
    = scar volume / myocardial volume of the segment; ``segment_transmurality_pct`` = mean over
    the rays of the segment that cross scar of the fraction of the wall the scar covers (100
    rays per slice, at the slice centre plane).
    """

    pattern: LGEPattern
    septal_angle_deg: float
    myocardium_ml_continuous: float
    lv_mass_g_continuous: float
    scar_ml_continuous: float
    scar_mass_g_continuous: float
    scar_pct_continuous: float
    segment_myocardium_ml_continuous: np.ndarray
    segment_scar_ml_continuous: np.ndarray
    myocardium_ml_sampled: float
    lv_mass_g_sampled: float
    scar_ml_sampled: float
    scar_mass_g_sampled: float
    scar_pct_sampled: float
    mvo_ml_sampled: float
    rv_scar_ml_sampled: float
    segment_myocardium_ml_sampled: np.ndarray
    segment_scar_ml_sampled: np.ndarray
    segment_extent_pct: np.ndarray
    segment_transmurality_pct: np.ndarray
    slice_scar_pct: np.ndarray  # [slice] scar % of that slice's myocardium (NaN without myocardium)
    segments: np.ndarray  # [slice, row, col] AHA segment per pixel (0 = none), slice-thirds rule
    slice_ring: np.ndarray  # [slice] 0 none, 1 basal, 2 mid, 3 apical, 4 cap
    myocardium_mask: np.ndarray  # [slice, row, col] bool, LV myocardium fraction >= 0.5
    scar_mask: np.ndarray  # [slice, row, col] bool, scar fraction >= 0.5 of the pixel
    signal_truth: dict[str, float]  # noise-free signal of each tissue (before the coil field)
    sigma: float  # noise SD per channel (signal units)
    snr_scar: float

    def summary(self) -> dict[str, Any]:
        """Scalars as a JSON-friendly dict (for ledgers, reports and test messages)."""
        keys = ("myocardium_ml_continuous", "lv_mass_g_continuous", "scar_ml_continuous", "scar_pct_continuous",
                "myocardium_ml_sampled", "lv_mass_g_sampled", "scar_ml_sampled", "scar_mass_g_sampled",
                "scar_pct_sampled", "mvo_ml_sampled", "rv_scar_ml_sampled", "septal_angle_deg", "snr_scar")
        out: dict[str, Any] = {k: round(float(getattr(self, k)), 4) for k in keys}
        out["pattern"] = self.pattern.name
        out["labels"] = list(self.pattern.labels)
        out["multifocal"] = self.pattern.multifocal
        out["rv_involvement"] = self.pattern.rv_involvement
        return out


@dataclass(frozen=True, eq=False)
class LGEImages:
    """An LGE phantom: magnitude and PSIR images ``[slice, row, col]`` (signal units), the
    noise-free signal, the tissue fractions, the anatomy, the inversion time and the truth."""

    anatomy: CMRAnatomy
    magnitude: np.ndarray
    psir: np.ndarray
    noise_free_psir: np.ndarray
    fractions: TissueFractions
    ti_ms: float
    t_frac: float
    truth: LGETruth


def _continuous_lge(anatomy: CMRAnatomy, geom: LVGeometry, pattern: LGEPattern, n_z: int = 120,
                    n_psi: int = 180, n_depth: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment (thirds of the cavity length) myocardial and scar volumes (mL) by quadrature."""
    cc, c = geom.c_epi, geom.c_endo
    z = (np.arange(n_z) + 0.5) / n_z * cc
    psi = (np.arange(n_psi) + 0.5) * 360.0 / n_psi
    f = (np.arange(n_depth) + 0.5) / n_depth
    zz, pp = np.meshgrid(z, psi, indexing="ij")
    a, A = geom.radii_at(pp)
    zeta = zz - cc
    r_endo = a * np.sqrt(np.clip(1.0 - (zeta / c) ** 2, 0.0, None))
    r_epi = A * np.sqrt(np.clip(1.0 - (zeta / cc) ** 2, 0.0, None))
    psi_aha = anatomy.aha_psi(pp)
    seg2 = segment_of(zz / cc, psi_aha, (cc - c) / cc)  # the segment does not depend on depth
    ex = (slice(None), slice(None), None)
    r = r_endo[ex] + f[None, None, :] * (r_epi - r_endo)[ex]
    weight = r * (r_epi - r_endo)[ex] / n_depth * math.radians(360.0 / n_psi) * (cc / n_z) / 1000.0
    shape3 = r.shape
    depth = depth_fraction(np.broadcast_to(zz[ex], shape3), r, np.broadcast_to(a[ex], shape3),
                           np.broadcast_to(A[ex], shape3), geom)
    v = np.broadcast_to(((zz - (cc - c)) / c)[ex], shape3)
    scar, _, _ = _patch_masks(pattern, v, np.broadcast_to(psi_aha[ex], shape3), depth)
    seg = np.broadcast_to(seg2[ex], shape3)
    vol = np.bincount(seg.ravel(), weights=weight.ravel(), minlength=N_SEGMENTS + 1)[1:]
    scar_vol = np.bincount(seg.ravel(), weights=(weight * scar).ravel(), minlength=N_SEGMENTS + 1)[1:]
    return vol, scar_vol


def _transmurality(anatomy: CMRAnatomy, geom: LVGeometry, pattern: LGEPattern,
                   ring: np.ndarray, n_rays: int = 100, n_radial: int = 64) -> np.ndarray:
    """Per-segment mean scar transmurality (%) over rays that cross scar, at each slice's centre plane."""
    st = anatomy.stack
    total = np.zeros(N_SEGMENTS)
    count = np.zeros(N_SEGMENTS)
    psi_frame = (np.arange(n_rays) + 0.5) * 360.0 / n_rays
    psi_aha = anatomy.aha_psi(psi_frame)
    a, A = geom.radii_at(psi_frame)
    cc, c = geom.c_epi, geom.c_endo
    t = (np.arange(n_radial) + 0.5) / n_radial
    for k, zc in enumerate(st.z_centres_mm):
        if ring[k] == 0 or zc >= cc:
            continue
        zeta = zc - cc
        r_endo = a * math.sqrt(max(1.0 - (zeta / c) ** 2, 0.0))
        r_epi = A * math.sqrt(max(1.0 - (zeta / cc) ** 2, 0.0))
        r = r_endo[:, None] + t[None, :] * (r_epi - r_endo)[:, None]
        zz = np.full(r.shape, zc)
        depth = depth_fraction(zz, r, a[:, None], A[:, None], geom)
        v = np.full(r.shape, (zc - (cc - c)) / c)
        scar, _, _ = _patch_masks(pattern, v, np.broadcast_to(psi_aha[:, None], r.shape), depth)
        frac = scar.mean(axis=1)
        u_ring = {1: 0.9, 2: 0.5, 3: 0.2}.get(int(ring[k]))
        seg = np.full(n_rays, 17) if u_ring is None else segment_of(u_ring, psi_aha, 0.0)
        hit = frac > 0
        np.add.at(total, seg[hit] - 1, frac[hit])
        np.add.at(count, seg[hit] - 1, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, 100.0 * total / np.maximum(count, 1), 0.0)


def lge_phantom(
    anatomy: CMRAnatomy,
    pattern: LGEPattern,
    rng: np.random.Generator,
    *,
    snr_scar: float = 20.0,
    null_error: float = 0.04,
    coil_strength: float = 0.2,
    sampling: Sampling = Sampling(),
    t_frac: float = 0.75,
) -> LGEImages:
    """An LGE short-axis stack of ``anatomy`` with ``pattern``, and its truth.

    ``t_frac``: cardiac phase of the acquisition (mid-diastole 0.75 by default; the LV is
    smaller than at ED). ``null_error``: relative TI error from the myocardial null
    (remote signal ~ a few % of scar). ``snr_scar``: dense-scar signal / noise SD.
    """
    fr = tissue_fractions(anatomy, t_frac, pattern, sampling, texture_seed=int(rng.integers(2**31)))
    geom = fr.geometry
    ti = LGE_T1_MS["myocardium"] * math.log(2.0) * (1.0 + null_error)
    sig = {name: lge_signal(t1, ti) for name, t1 in LGE_T1_MS.items()}
    noise_free = lge_composite(anatomy, fr, ti, coil_strength)
    sigma = abs(sig["scar"]) / snr_scar
    psir = noise_free + rng.normal(0.0, sigma, size=noise_free.shape)
    magnitude = rician(noise_free, sigma, rng)
    truth = _lge_truth(anatomy, geom, pattern, fr, sig, sigma, snr_scar)
    return LGEImages(anatomy, magnitude, psir, noise_free, fr, ti, t_frac, truth)


def _ir_mix(f: np.ndarray, scar_weight: np.ndarray, background: dict[str, np.ndarray], ti_ms: float) -> np.ndarray:
    """Noise-free signed IR signal of tissue fractions ``f[tissue, ...]`` with ``background`` torso
    signal weights (``body``/``lung``/``liver`` occupancy arrays or a ready signal under ``signal``)."""
    sig = {name: lge_signal(t1, ti_ms) for name, t1 in LGE_T1_MS.items()}
    out = (f[_LVB] * sig["blood"] + f[_RVB] * sig["blood"] + (f[_MYO] + f[_RVW] + f[_SCAR] + f[_RVS]) * sig["myocardium"]
           + f[_FAT] * sig["fat"] + f[_MVO] * sig["mvo"] + scar_weight * (sig["scar"] - sig["myocardium"]))
    return np.asarray(out, dtype=np.float64) + f[_BG] * background["signal"]


def lge_composite(anatomy: CMRAnatomy, fr: TissueFractions, ti_ms: float, coil_strength: float = 0.2,
                  slices: slice = slice(None)) -> np.ndarray:
    """Noise-free signed IR signal ``[slice, row, col]`` of the fractions at inversion time ``ti_ms``.

    Enhancing voxels get remote + ``intensity x texture x (scar - remote)``; MVO its own T1; the
    background the torso's (T1 and proton density); everything times the coil field.
    """
    sig = {name: lge_signal(t1, ti_ms) for name, t1 in LGE_T1_MS.items()}
    pd = LGE_PROTON_DENSITY
    torso = _torso_signal(anatomy, {k: pd[k] * sig[k] for k in ("body", "lung", "liver")}, slices)
    out = _ir_mix(fr.fractions[:, slices], fr.scar_weight[slices], {"signal": torso}, ti_ms)
    return out * _coil_field(anatomy, coil_strength)[None]


@dataclass(frozen=True, eq=False)
class PlaneImage:
    """One arbitrary plane through the phantom (a re-planned slice): ``signal`` ``[row, col]``
    noise-free, ``fractions`` ``[tissue, row, col]``; ``origin_mm`` the centre of pixel (0, 0);
    ``x_axis``/``y_axis`` unit vectors of increasing column / row (patient LPS)."""

    signal: np.ndarray
    fractions: np.ndarray
    origin_mm: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray


def lge_plane(anatomy: CMRAnatomy, pattern: LGEPattern, ti_ms: float, centre_mm: np.ndarray, x_axis: np.ndarray,
              y_axis: np.ndarray, *, t_frac: float = 0.75, texture_seed: int = 0, coil_strength: float = 0.2,
              in_plane: int = 3) -> PlaneImage:
    """Noise-free LGE signal of an arbitrary plane of the stack's matrix and pixel size centred on
    ``centre_mm`` (``in_plane`` x ``in_plane`` supersampling, no through-plane partial volume)."""
    st = anatomy.stack
    x_axis = np.asarray(x_axis, dtype=float) / np.linalg.norm(x_axis)
    y_axis = np.asarray(y_axis, dtype=float) / np.linalg.norm(y_axis)
    row0, col0 = st.axis_pixel
    origin = np.asarray(centre_mm, dtype=float) - x_axis * col0 * st.pixel_mm - y_axis * row0 * st.pixel_mm
    off = (np.arange(in_plane) + 0.5) / in_plane - 0.5
    rr, cc = np.meshgrid(np.arange(st.rows, dtype=np.float64), np.arange(st.cols, dtype=np.float64), indexing="ij")
    sub_r = (rr[None, None] + off[:, None, None, None]).repeat(in_plane, axis=1).reshape(in_plane**2, -1)
    sub_c = (cc[None, None] + off[None, :, None, None]).repeat(in_plane, axis=0).reshape(in_plane**2, -1)
    pts = origin + (sub_c[..., None] * x_axis + sub_r[..., None] * y_axis) * st.pixel_mm
    lv = anatomy.frame.to_lv(pts)
    geom = geometry_at(anatomy.shape, t_frac, es_fraction=anatomy.es_fraction)
    z = lv[..., 0]
    plane = _plane(anatomy, lv[..., 1], lv[..., 2])
    label, weight, inten = _labels(anatomy, geom, pattern, z, plane, (z <= geom.c_epi).astype(np.float32),
                                   texture_seed)
    n_pix = st.rows * st.cols
    pixel = np.broadcast_to(np.arange(n_pix), label.shape).ravel()
    sums = np.bincount(label.ravel().astype(np.intp) * n_pix + pixel, weights=weight.ravel(),
                       minlength=len(TISSUES) * n_pix).reshape(len(TISSUES), n_pix) / in_plane**2
    sums[_BG] = 1.0 - sums[1:].sum(axis=0)
    fractions = sums.reshape(len(TISSUES), st.rows, st.cols)
    scar_weight = (np.sum(inten * weight, axis=0) / in_plane**2).reshape(st.rows, st.cols)
    centres = origin + (cc[..., None] * x_axis + rr[..., None] * y_axis) * st.pixel_mm
    code = np.round(anatomy.torso().evaluate_components(centres[..., 0], centres[..., 1], centres[..., 2])).astype(int)
    sig = {name: lge_signal(t1, ti_ms) for name, t1 in LGE_T1_MS.items()}
    pd = LGE_PROTON_DENSITY
    torso = np.array([0.0, pd["body"] * sig["body"], pd["lung"] * sig["lung"], pd["liver"] * sig["liver"]])[code]
    signal = _ir_mix(fractions, scar_weight, {"signal": torso}, ti_ms)
    along_a = anatomy.frame.to_lv(centres)[..., 1]
    signal = signal * np.clip(1.0 + coil_strength * along_a / 100.0, 0.6, 1.4)
    return PlaneImage(signal, fractions, origin, x_axis, y_axis)


def _lge_truth(anatomy: CMRAnatomy, geom: LVGeometry, pattern: LGEPattern, fr: TissueFractions,
               sig: dict[str, float], sigma: float, snr: float) -> LGETruth:
    st = anatomy.stack
    voxel_ml = st.pixel_mm**2 * st.spacing_mm / 1000.0  # Simpson: area x spacing
    myo, scar = fr.lv_myocardium, fr.lv_scar
    seg_vol, seg_scar = _continuous_lge(anatomy, geom, pattern)
    myo_c = geom.myocardial_volume_ml
    scar_c = float(seg_scar.sum()) * myo_c / float(seg_vol.sum())  # quadrature ratio on the exact volume
    segments, ring = slice_segments(fr)
    ids = segments.ravel().astype(np.intp)
    s_myo = np.bincount(ids, weights=myo.ravel().astype(np.float64), minlength=N_SEGMENTS + 1)[1:] * voxel_ml
    s_scar = np.bincount(ids, weights=scar.ravel().astype(np.float64), minlength=N_SEGMENTS + 1)[1:] * voxel_ml
    myo_s = float(myo.sum(dtype=np.float64)) * voxel_ml
    scar_s = float(scar.sum(dtype=np.float64)) * voxel_ml
    per_slice_myo = myo.sum(axis=(1, 2), dtype=np.float64)
    per_slice_scar = scar.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        extent = np.where(s_myo > 0, 100.0 * s_scar / s_myo, np.nan)
        slice_pct = np.where(per_slice_myo > 0, 100.0 * per_slice_scar / per_slice_myo, np.nan)
    trans = _transmurality(anatomy, geom, pattern, ring) if pattern.patches else np.zeros(N_SEGMENTS)
    trans = np.where(s_myo > 0, trans, np.nan)
    rho = MYOCARDIAL_DENSITY_G_PER_ML
    return LGETruth(
        pattern=pattern, septal_angle_deg=anatomy.septal_angle_deg,
        myocardium_ml_continuous=myo_c, lv_mass_g_continuous=myo_c * rho,
        scar_ml_continuous=scar_c, scar_mass_g_continuous=scar_c * rho,
        scar_pct_continuous=100.0 * scar_c / myo_c,
        segment_myocardium_ml_continuous=seg_vol, segment_scar_ml_continuous=seg_scar,
        myocardium_ml_sampled=myo_s, lv_mass_g_sampled=myo_s * rho, scar_ml_sampled=scar_s,
        scar_mass_g_sampled=scar_s * rho, scar_pct_sampled=100.0 * scar_s / myo_s if myo_s > 0 else 0.0,
        mvo_ml_sampled=float(fr.of("mvo").sum(dtype=np.float64)) * voxel_ml,
        rv_scar_ml_sampled=float(fr.of("rv_scar").sum(dtype=np.float64)) * voxel_ml,
        segment_myocardium_ml_sampled=s_myo, segment_scar_ml_sampled=s_scar,
        segment_extent_pct=extent, segment_transmurality_pct=trans, slice_scar_pct=slice_pct,
        segments=segments, slice_ring=ring, myocardium_mask=myo >= 0.5,
        scar_mask=scar >= 0.5, signal_truth=dict(sig), sigma=sigma, snr_scar=snr,
    )


# --------------------------------------------------------------------------- cine

@dataclass(frozen=True, eq=False)
class CineTruth:
    """Truth of a cine phantom (mL, g, %).

    Continuous: ``edv_ml``/``esv_ml``/``ef_pct`` from the shape's closed forms (ES is sampled
    exactly: ``es_fraction`` is a whole phase), ``phase_volume_ml_continuous`` per phase.
    Sampled (Simpson on the fractions, :mod:`module docstring <node.synth.cmr.phantom>`):
    ``phase_volume_ml_sampled`` per phase, ``edv/esv/ef_*_sampled`` at the ED and ES phases,
    ``lv_mass_g_*`` at ED. ``ed_phase``/``es_phase`` are phase indices. Masks are the ED and ES
    fractions >= 0.5 ``[slice, row, col]``.
    """

    edv_ml: float
    esv_ml: float
    ef_pct: float
    lv_mass_g_continuous: float
    phase_volume_ml_continuous: np.ndarray
    phase_volume_ml_sampled: np.ndarray
    edv_ml_sampled: float
    esv_ml_sampled: float
    ef_pct_sampled: float
    lv_mass_g_sampled: float
    ed_phase: int
    es_phase: int
    trigger_times_ms: np.ndarray
    rr_ms: float
    blood_mask_ed: np.ndarray
    myocardium_mask_ed: np.ndarray
    blood_mask_es: np.ndarray
    myocardium_mask_es: np.ndarray
    sigma: float
    snr_blood: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        keys = ("edv_ml", "esv_ml", "ef_pct", "lv_mass_g_continuous", "edv_ml_sampled", "esv_ml_sampled",
                "ef_pct_sampled", "lv_mass_g_sampled", "ed_phase", "es_phase", "rr_ms", "snr_blood")
        return {k: round(float(getattr(self, k)), 4) for k in keys}


@dataclass(frozen=True, eq=False)
class CineImages:
    """A cine phantom: ``images`` ``[phase, slice, row, col]`` (signal units, Rician), the anatomy
    (with ``es_fraction`` set to a whole phase) and the truth; ``ed_fractions``/``es_fractions``
    the tissue fractions of those phases."""

    anatomy: CMRAnatomy
    images: np.ndarray
    ed_fractions: TissueFractions
    es_fractions: TissueFractions
    truth: CineTruth


def cine_phantom(
    anatomy: CMRAnatomy,
    rng: np.random.Generator,
    *,
    n_phases: int = 25,
    rr_ms: float = 1000.0,
    snr_blood: float = 40.0,
    coil_strength: float = 0.2,
    sampling: Sampling = Sampling(in_plane=2, through=4),
) -> CineImages:
    """A bSSFP cine short-axis stack over one R-R (phase ``k`` at ``k x RR / n_phases``; phase 0 = ED)."""
    es_phase = int(round(anatomy.es_fraction * n_phases))
    anatomy = replace(anatomy, es_fraction=es_phase / n_phases)
    st = anatomy.stack
    voxel_ml = st.pixel_mm**2 * st.spacing_mm / 1000.0
    torso = _torso_signal(anatomy, CINE_SIGNAL)
    coil = _coil_field(anatomy, coil_strength)[None]
    sigma = CINE_SIGNAL["blood"] / snr_blood
    images = np.empty((n_phases, st.n_slices, st.rows, st.cols), dtype=np.float32)
    vol_s = np.empty(n_phases)
    vol_c = np.empty(n_phases)
    keep: dict[int, TissueFractions] = {}
    sig = CINE_SIGNAL
    for k in range(n_phases):
        fr = tissue_fractions(anatomy, k / n_phases, None, sampling)
        f = fr.fractions
        clean = ((f[_LVB] + f[_RVB]) * sig["blood"] + (f[_MYO] + f[_RVW]) * sig["myocardium"] + f[_FAT] * sig["fat"]
                 + f[_BG] * torso) * coil
        images[k] = rician(clean, sigma, rng)
        vol_s[k] = float(f[_LVB].sum(dtype=np.float64)) * voxel_ml
        vol_c[k] = fr.geometry.cavity_volume_ml
        if k in (0, es_phase):
            keep[k] = fr
    ed, es = keep[0], keep[es_phase]
    mass_s = float(ed.lv_myocardium.sum(dtype=np.float64)) * voxel_ml * MYOCARDIAL_DENSITY_G_PER_ML
    shape = anatomy.shape
    truth = CineTruth(
        edv_ml=shape.edv_ml, esv_ml=shape.esv_ml, ef_pct=shape.ef_pct,
        lv_mass_g_continuous=shape.myocardial_volume_ml * MYOCARDIAL_DENSITY_G_PER_ML,
        phase_volume_ml_continuous=vol_c, phase_volume_ml_sampled=vol_s,
        edv_ml_sampled=float(vol_s[0]), esv_ml_sampled=float(vol_s[es_phase]),
        ef_pct_sampled=100.0 * (vol_s[0] - vol_s[es_phase]) / vol_s[0],
        lv_mass_g_sampled=mass_s, ed_phase=0, es_phase=es_phase,
        trigger_times_ms=np.arange(n_phases) * rr_ms / n_phases, rr_ms=rr_ms,
        blood_mask_ed=ed.of("lv_blood") >= 0.5, myocardium_mask_ed=ed.lv_myocardium >= 0.5,
        blood_mask_es=es.of("lv_blood") >= 0.5, myocardium_mask_es=es.lv_myocardium >= 0.5,
        sigma=sigma, snr_blood=snr_blood,
    )
    return CineImages(anatomy, images, ed, es, truth)


# --------------------------------------------------------------------------- TI scout, T1 map and long axis

def t1_map(lge: LGEImages, rng: np.random.Generator, slices: list[int], noise_ms: float = 15.0) -> np.ndarray:
    """A post-contrast T1 map (ms) ``[slice, row, col]`` of LGE slices: the fraction-weighted T1 of
    :data:`LGE_T1_MS` (lung 0: no signal to fit) plus Gaussian noise, clipped at 0."""
    f = lge.fractions.fractions[:, slices]
    t1 = LGE_T1_MS
    values = ((f[_LVB] + f[_RVB]) * t1["blood"] + (f[_MYO] + f[_RVW]) * t1["myocardium"] + f[_FAT] * t1["fat"]
              + (f[_SCAR] + f[_RVS]) * t1["scar"] + f[_MVO] * t1["mvo"])
    torso = np.stack([_torso_signal(lge.anatomy, {"body": t1["body"], "lung": 0.0, "liver": t1["liver"]},
                                    slice(k, k + 1))[0] for k in slices])
    values = values + f[_BG] * torso
    return np.clip(values + rng.normal(0.0, noise_ms, size=values.shape), 0.0, None)


#: inversion times (ms) of the TI scout (a Look-Locker-like series at one mid slice)
TI_SCOUT_MS: tuple[float, ...] = tuple(float(t) for t in range(150, 451, 25))


def ti_scout(lge: LGEImages, rng: np.random.Generator, slice_index: int | None = None,
             tis_ms: tuple[float, ...] = TI_SCOUT_MS, coil_strength: float = 0.2) -> tuple[int, np.ndarray]:
    """Magnitude images ``[ti, row, col]`` of one LGE slice (default: the mid LV slice) at each TI,
    with the LGE phantom's noise; returns ``(slice_index, images)``."""
    ring = lge.truth.slice_ring
    if slice_index is None:
        mids = np.nonzero(ring == 2)[0]
        slice_index = int(mids[len(mids) // 2]) if mids.size else lge.anatomy.stack.n_slices // 2
    k = slice(slice_index, slice_index + 1)
    out = np.stack([rician(lge_composite(lge.anatomy, lge.fractions, ti, coil_strength, k)[0], lge.truth.sigma, rng)
                    for ti in tis_ms])
    return slice_index, out


@dataclass(frozen=True, eq=False)
class LongAxisCine:
    """A four-chamber-like long-axis cine: ``images`` ``[phase, row, col]``; the plane contains the long
    axis (rows apex -> base) and the mid-septum direction (columns lateral -> septum/RV).
    ``origin_mm`` is the centre of pixel (0, 0), ``row_axis``/``col_axis`` unit vectors (patient LPS)
    of increasing row / column, ``pixel_mm`` the spacing, ``thickness_mm`` nominal."""

    images: np.ndarray
    origin_mm: np.ndarray
    row_axis: np.ndarray
    col_axis: np.ndarray
    pixel_mm: float
    thickness_mm: float
    trigger_times_ms: np.ndarray


def long_axis_cine(anatomy: CMRAnatomy, rng: np.random.Generator, *, n_phases: int = 25, rr_ms: float = 1000.0,
                   matrix: tuple[int, int] = (192, 192), pixel_mm: float = 1.6, snr_blood: float = 40.0) -> LongAxisCine:
    """A long-axis bSSFP cine through the LV axis and the mid-septum (2 x 2 in-plane supersampling)."""
    rows, cols = matrix
    frame = anatomy.frame
    sep = math.radians(anatomy.septal_angle_deg)
    u_dir = frame.anterior * math.cos(sep) + frame.septal * math.sin(sep)
    c_epi = anatomy.shape.ed_c_mm + anatomy.shape.wall_mm
    centre_z = 0.5 * c_epi
    off = np.array([-0.25, 0.25])
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    z = (rr[None, None] + off[:, None, None, None] - 0.5 * (rows - 1)) * pixel_mm + centre_z
    u = (cc[None, None] + off[None, :, None, None] - 0.5 * (cols - 1)) * pixel_mm
    z, u = np.broadcast_arrays(z, u)
    plane = _plane(anatomy, u * math.cos(sep), u * math.sin(sep))
    origin = frame.apex_mm + frame.long_axis * (centre_z - 0.5 * (rows - 1) * pixel_mm) - u_dir * 0.5 * (cols - 1) * pixel_mm
    pts = [origin[i] + rr * pixel_mm * frame.long_axis[i] + cc * pixel_mm * u_dir[i] for i in range(3)]
    code = anatomy.torso().evaluate_components(pts[0], pts[1], pts[2])
    sig = CINE_SIGNAL
    torso = np.array([0.0, sig["body"], sig["lung"], sig["liver"]])[np.round(code).astype(int)]
    values = np.zeros(len(TISSUES))
    values[[_LVB, _RVB]] = sig["blood"]
    values[[_MYO, _RVW]] = sig["myocardium"]
    values[_FAT] = sig["fat"]
    images = np.empty((n_phases, rows, cols), dtype=np.float32)
    sigma = sig["blood"] / snr_blood
    for k in range(n_phases):
        geom = geometry_at(anatomy.shape, k / n_phases, es_fraction=anatomy.es_fraction)
        base_w = (z <= geom.c_epi).astype(np.float32)
        label, weight, _ = _labels(anatomy, geom, None, z, plane, base_w, 0)
        heart = (values[label] * weight).mean(axis=(0, 1))
        w = weight.mean(axis=(0, 1))
        images[k] = rician(heart + (1.0 - w) * torso, sigma, rng)
    return LongAxisCine(images, origin, frame.long_axis.copy(), u_dir, pixel_mm, 8.0,
                        np.arange(n_phases) * rr_ms / n_phases)
