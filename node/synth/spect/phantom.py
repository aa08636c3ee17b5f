"""Digital SPECT myocardial perfusion phantoms with exact ground truth (numpy/scipy only).

A phantom is an analytic LV (:mod:`node.synth.geometry`) with RV, blood pool,
torso, lungs, liver and optional hot bowel (:mod:`node.synth.anatomy`),
placed in a patient volume at a realistic jittered pose, voxelised on a
supersampled grid (partial voxels), blurred with a Gaussian of the system
FWHM, scaled to counts and given Poisson noise from a seeded
``numpy.random.Generator``.

Conventions:

* Patient coordinates are DICOM LPS mm. The transaxial grid is centred on
  the origin: slices along +z (inferior to superior), rows along +y
  (anterior to posterior), columns along +x (right to left), i.e. an NM
  reconstruction with Image Orientation ``1\\0\\0\\0\\1\\0``.
* The LV frame is ``node.quant.lv_frame.LVFrame`` with ``apex_mm`` = the
  epicardial apex at end-diastole (it does not move over the cycle; the base
  descends) and ``long_axis`` apex to base. Short-axis grids have slices apex
  to base along the long axis, rows anterior to inferior, columns septal to
  lateral, centred on the mid-point of the ED long axis.
* Volumes are ``node.imaging.volume.Volume`` with voxels ``[slice, row,
  col]`` (gated: ``[gate, slice, row, col]``, gates in time order, gate ``k``
  is the snapshot at ``(k + 0.5) / N`` of the R-R interval).
* Counts: ``counts_per_voxel`` is the mean expected count of the summed
  (all gates) image over voxels that are at least half myocardium; gated
  frames carry ``1/N`` of it each. Tl-201 defaults to 0.3x the Tc-99m level.

Example::

    rng = np.random.default_rng(seed)
    spec = PhantomSpec(defects=(territory_defect("LAD", 0.5, reversible=True),))
    study = make_study(spec, rng)            # stress + rest, same pose
    study.stress.frames.voxels.shape        # (8, 64, 64, 64)
    study.stress.truth.segment_deficit      # per AHA segment
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from node.imaging.radiopharmaceuticals import TRACERS
from node.imaging.volume import Volume
from node.quant.lv_frame import LVFrame
from node.quant.polar_map import relative_pct
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS, PolarGrid
from node.synth.anatomy import UPTAKE, Defect, HeartModel, TorsoModel, default_attenuation
from node.synth.geometry import (
    NORMAL,
    LVGeometry,
    LVShape,
    PhaseDelay,
    delay_profile_deg,
    gate_times,
    geometry_at,
    psi_weights,
)
from node.synth.truth import (
    Truth,
    analytic_segment_truth,
    first_harmonic_phase,
    midwall_samples,
    sample_max_along_normals,
    score_from_uptake,
    territories_of,
    transmural_mean_activity,
    truth_phase_statistics,
)

__all__ = [
    "territory_defect",
    "RINGS",
    "TERRITORY_RING_SETS",
    "PhantomSpec",
    "Pose",
    "draw_pose",
    "transaxial_affine",
    "short_axis_affine",
    "Acquisition",
    "StudyPhantom",
    "make_acquisition",
    "make_study",
    "lv_centre_mm",
    "DEFAULT_COUNTS_PER_VOXEL",
    "INTERNAL_UNGATED_SNAPSHOTS",
]

DEFAULT_COUNTS_PER_VOXEL = 240.0
INTERNAL_UNGATED_SNAPSHOTS = 8
RINGS: dict[str, tuple[int, ...]] = {
    "basal": (1, 2, 3, 4, 5, 6),
    "mid": (7, 8, 9, 10, 11, 12),
    "apical": (13, 14, 15, 16),
    "apex": (17,),
}

#: Ring sets of the territory defects used for validation and calibration: the whole territory, its
#: basal + mid part, its mid + apical + apex part (a distal defect).
TERRITORY_RING_SETS: tuple[tuple[str, ...], ...] = (
    ("basal", "mid", "apical", "apex"),
    ("basal", "mid"),
    ("mid", "apical", "apex"),
)


def territory_defect(
    territory: str,
    severity: float,
    reversible: bool = False,
    rings: tuple[str, ...] = ("basal", "mid", "apical", "apex"),
    transmural_fraction: float = 1.0,
) -> Defect:
    """A defect over the segments of a territory (``"LAD"``, ``"LCx"``, ``"RCA"``) within ``rings``.

    ``rings`` (subset of ``basal``, ``mid``, ``apical``, ``apex``) sets the extent,
    e.g. ``("mid", "apical")`` for a distal lesion.
    """
    key = {t.lower(): t for t in TERRITORY_SEGMENTS}.get(territory.lower())
    if key is None:
        raise ValueError(f"territory must be one of {sorted(TERRITORY_SEGMENTS)}, got {territory!r}")
    allowed: set[int] = set()
    for ring in rings:
        if ring not in RINGS:
            raise ValueError(f"ring must be one of {sorted(RINGS)}, got {ring!r}")
        allowed.update(RINGS[ring])
    segments = tuple(s for s in TERRITORY_SEGMENTS[key] if s in allowed)
    if not segments:
        raise ValueError(f"territory {key} has no segments in rings {rings}")
    return Defect(segments, severity, reversible, transmural_fraction)


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines a phantom patient and its acquisitions.

    Lengths in mm, ages in years, ``n_gates`` 0 (ungated), 8 or 16.
    ``counts_per_voxel`` None = ``DEFAULT_COUNTS_PER_VOXEL`` x the tracer's
    relative count level. ``extracardiac``: None, ``"liver"`` (hot liver next
    to the inferior wall) or ``"bowel"`` (hot bowel loop below it).
    ``supersample`` None = 3 for voxels > 5 mm, else 2. ``fwhm_mm`` (system
    resolution) None = the tracer's ``typical_fwhm_mm`` (Tc-99m 12 mm, Tl-201
    13.5 mm; :mod:`node.imaging.radiopharmaceuticals`).
    ``attenuation_artefact``: False, True (men: inferior -15 %, women: anterior
    -10 %) or a float = the fractional reduction at the artefact centre; the
    centre (180 deg men, 0 deg women) is jittered per patient uniformly by
    +-``attenuation_centre_jitter_deg`` (drawn in :func:`draw_pose`).
    """

    shape: LVShape = NORMAL
    tracer: str = "tc99m_sestamibi"
    sex: str = "M"
    age: int = 60
    n_gates: int = 8
    matrix: int = 64
    voxel_mm: float = 6.4
    fwhm_mm: float | None = None
    counts_per_voxel: float | None = None
    defects: tuple[Defect, ...] = ()
    extracardiac: str | None = None
    phase_delays: tuple[PhaseDelay, ...] = ()
    phase_jitter_sd_deg: float = 0.0
    attenuation_artefact: bool | float = False
    attenuation_centre_jitter_deg: float = 0.0
    waveform: str = "physiological"
    es_fraction: float = 0.35
    pose_jitter_deg: float = 15.0
    supersample: int | None = None

    def __post_init__(self) -> None:
        if self.tracer not in TRACERS:
            raise ValueError(f"tracer must be one of {sorted(TRACERS)}, got {self.tracer!r}")
        if self.sex not in ("M", "F"):
            raise ValueError(f"sex must be 'M' or 'F', got {self.sex!r}")
        if self.n_gates not in (0, 8, 16):
            raise ValueError(f"n_gates must be 0, 8 or 16, got {self.n_gates!r}")
        if self.extracardiac not in (None, "liver", "bowel"):
            raise ValueError(f"extracardiac must be None, 'liver' or 'bowel', got {self.extracardiac!r}")

    @property
    def attenuation_depth(self) -> float:
        """Fractional reduction at the artefact centre (0.0 = none)."""
        if self.attenuation_artefact is True:
            return default_attenuation(self.sex)[0]
        if self.attenuation_artefact is False or self.attenuation_artefact is None:
            return 0.0
        return float(self.attenuation_artefact)

    @property
    def system_fwhm_mm(self) -> float:
        """Resolution of the simulated camera (FWHM, mm): ``fwhm_mm``, else the tracer's typical one."""
        if self.fwhm_mm is not None:
            return float(self.fwhm_mm)
        return TRACERS[self.tracer].typical_fwhm_mm

    @property
    def target_counts_per_voxel(self) -> float:
        if self.counts_per_voxel is not None:
            return float(self.counts_per_voxel)
        return DEFAULT_COUNTS_PER_VOXEL * TRACERS[self.tracer].relative_counts

    @property
    def supersampling(self) -> int:
        if self.supersample is not None:
            return int(self.supersample)
        return 3 if self.voxel_mm > 5.0 else 2

    def defects_for(self, state: str) -> tuple[Defect, ...]:
        """Defects present in ``state``: all under stress, only fixed ones at rest."""
        if state == "stress":
            return self.defects
        if state == "rest":
            return tuple(d for d in self.defects if not d.reversible)
        raise ValueError(f"state must be 'stress' or 'rest', got {state!r}")


@dataclass(frozen=True)
class Pose:
    """Patient-specific draws: LV frame (epicardial apex at ED, long axis) and phase dispersion."""

    frame: LVFrame
    jitter_coefficients: np.ndarray  # [harmonic, (cos, sin)] in degrees of R-R
    attenuation_offset_deg: float = 0.0  # shift of the attenuation artefact centre


def draw_pose(spec: PhantomSpec, rng: np.random.Generator) -> Pose:
    """Draw the LV pose: apex toward patient left-anterior-inferior, ~45 deg from sagittal
    and ~30 deg below axial, each angle jittered uniformly by +-``spec.pose_jitter_deg``;
    LV centre at (30, -25, -10) mm +- 8 mm."""
    jit = spec.pose_jitter_deg
    azimuth = np.radians(45.0 + rng.uniform(-jit, jit))
    elevation = np.radians(30.0 + rng.uniform(-jit, jit))
    apex_direction = np.array(
        [np.cos(elevation) * np.sin(azimuth), -np.cos(elevation) * np.cos(azimuth), -np.sin(elevation)]
    )
    long_axis = -apex_direction
    centre = np.array([30.0, -25.0, -10.0]) + rng.uniform(-8.0, 8.0, size=3)
    c_epi = spec.shape.ed_c_mm + spec.shape.wall_mm
    apex = centre - long_axis * 0.5 * c_epi
    coefficients = np.zeros((3, 2))
    if spec.phase_jitter_sd_deg > 0:
        raw = rng.normal(size=(3, 2)) / np.arange(1, 4)[:, None]
        # SD over azimuth of sum c cos + s sin is sqrt(sum (c^2 + s^2) / 2)
        coefficients = raw * spec.phase_jitter_sd_deg / np.sqrt(np.sum(raw**2) / 2.0)
    offset = 0.0
    if spec.attenuation_centre_jitter_deg > 0:
        offset = float(rng.uniform(-spec.attenuation_centre_jitter_deg, spec.attenuation_centre_jitter_deg))
    return Pose(LVFrame(apex, long_axis), coefficients, offset)


def lv_centre_mm(frame: LVFrame, shape: LVShape) -> np.ndarray:
    """Mid-point of the ED long axis (epicardial apex to base plane), patient mm."""
    return frame.apex_mm + frame.long_axis * 0.5 * (shape.ed_c_mm + shape.wall_mm)


def transaxial_affine(matrix: int, voxel_mm: float) -> np.ndarray:
    """Affine of the transaxial grid: index (slice, row, col) -> LPS mm, centred on the origin."""
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, voxel_mm]
    affine[:3, 1] = [0.0, voxel_mm, 0.0]
    affine[:3, 2] = [voxel_mm, 0.0, 0.0]
    affine[:3, 3] = -0.5 * (matrix - 1) * voxel_mm
    return affine


def short_axis_affine(frame: LVFrame, centre_mm: np.ndarray, matrix: int, voxel_mm: float) -> np.ndarray:
    """Affine of a short-axis grid centred on ``centre_mm``: slices apex->base (+long axis),
    rows anterior->inferior (-anterior), columns septal->lateral (-septal)."""
    axes = np.stack([frame.long_axis, -frame.anterior, -frame.septal], axis=1) * voxel_mm
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = np.asarray(centre_mm, dtype=float) - axes @ np.full(3, 0.5 * (matrix - 1))
    return affine


@dataclass(frozen=True)
class Acquisition:
    """One simulated acquisition (stress or rest) of a phantom.

    ``frames``: noisy counts (float64, integer-valued), ``[gate, slice, row, col]``
    when gated else ``[slice, row, col]``; ``expected``: the noise-free blurred
    expectation of ``frames``; ``summed``: ``frames`` summed over gates;
    ``frame``: the true LV frame; ``truth``: ground truth for this state.
    """

    spec: PhantomSpec
    state: str
    orientation: str
    pose: Pose
    frames: Volume
    expected: Volume
    summed: Volume
    truth: Truth

    @property
    def frame(self) -> LVFrame:
        return self.pose.frame


@dataclass(frozen=True)
class StudyPhantom:
    """A stress and a rest acquisition of the same phantom patient."""

    spec: PhantomSpec
    pose: Pose
    stress: Acquisition
    rest: Acquisition
    orientation: str = "transaxial"

    @property
    def acquisitions(self) -> tuple[Acquisition, Acquisition]:
        return (self.stress, self.rest)


def _heart_model(spec: PhantomSpec, defects: tuple[Defect, ...], pose: Pose) -> HeartModel:
    shape = spec.shape
    a_epi = shape.ed_a_mm + shape.wall_mm
    c_epi = shape.ed_c_mm + shape.wall_mm
    return HeartModel(
        uptake=UPTAKE[spec.tracer],
        defects=defects,
        sex=spec.sex,
        attenuation_depth=spec.attenuation_depth,
        attenuation_centre_deg=default_attenuation(spec.sex)[1] + pose.attenuation_offset_deg,
        rv_centre=(0.6 * c_epi, 0.0, 0.75 * a_epi),
        rv_semi_axes=(0.55 * c_epi, 1.25 * a_epi, a_epi + 6.0),
        rv_wall_mm=5.0,
        rv_base_z=c_epi,
    )


def _support(axes: np.ndarray, direction: np.ndarray) -> float:
    return float(np.sqrt(np.sum((axes * direction) ** 2)))


def _torso_model(spec: PhantomSpec, frame: LVFrame) -> TorsoModel:
    shape = spec.shape
    uptake = UPTAKE[spec.tracer]
    a_epi = shape.ed_a_mm + shape.wall_mm
    c_epi = shape.ed_c_mm + shape.wall_mm
    centre = lv_centre_mm(frame, shape)
    lungs = (
        ((115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)),
        ((-115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)),
    )
    inferior_wall = frame.to_patient(np.array([0.5 * c_epi, -a_epi, 0.0]))
    liver_axes = np.array([85.0, 70.0, 65.0])
    d = np.array([-0.5, 0.15, -1.0])
    d /= np.linalg.norm(d)
    hot_liver = spec.extracardiac == "liver"
    gap = 6.0 if hot_liver else 20.0
    liver_centre = inferior_wall + d * (gap + _support(liver_axes, d))
    bowel = None
    if spec.extracardiac == "bowel":
        db = np.array([0.2, 0.2, -1.0])
        db /= np.linalg.norm(db)
        start = frame.to_patient(np.array([0.35 * c_epi, -a_epi, -0.3 * a_epi]))
        bowel = (tuple(start + db * (6.0 + 22.0)), 22.0)
    return TorsoModel(
        uptake=uptake,
        body_semi_axes_xy=(170.0, 115.0),
        lungs=lungs,
        liver=(tuple(liver_centre), tuple(liver_axes)),
        liver_activity=1.5 if hot_liver else uptake.liver,
        bowel=bowel,
        bowel_activity=2.0,
    )


def _sub_offsets(s: int) -> np.ndarray:
    return (np.arange(s) + 0.5) / s - 0.5


def _torso_volume(torso: TorsoModel, affine: np.ndarray, n: int, s: int) -> np.ndarray:
    """Partial-voxel torso activity over the whole grid (chunked by slices)."""
    out = np.empty((n, n, n))
    off = _sub_offsets(s)
    rows = (np.arange(n)[:, None] + off[None, :]).ravel()
    chunk = max(1, 2_000_000 // (n * n * s**3))
    for k0 in range(0, n, chunk):
        k1 = min(n, k0 + chunk)
        ks = (np.arange(k0, k1)[:, None] + off[None, :]).ravel()
        idx = np.stack(np.meshgrid(ks, rows, rows, indexing="ij"), axis=-1)
        xyz = idx @ affine[:3, :3].T + affine[:3, 3]
        act = torso.evaluate(xyz)
        out[k0:k1] = act.reshape(k1 - k0, s, n, s, n, s).mean(axis=(1, 3, 5))
    return out


def _heart_box(frame: LVFrame, spec: PhantomSpec, affine: np.ndarray, n: int) -> tuple[slice, slice, slice]:
    shape = spec.shape
    a_epi = shape.ed_a_mm + shape.wall_mm
    c_epi = shape.ed_c_mm + shape.wall_mm
    extent_a = 1.25 * a_epi + 10.0
    corners = np.array(
        [[z, a, s] for z in (-10.0, c_epi + 10.0) for a in (-extent_a, extent_a) for s in (-(a_epi + 10.0), 1.75 * a_epi + 16.0)]
    )
    index = (frame.to_patient(corners) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    lo = np.clip(np.floor(index.min(axis=0)).astype(int) - 2, 0, n)
    hi = np.clip(np.ceil(index.max(axis=0)).astype(int) + 3, 0, n)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _snapshot_times(spec: PhantomSpec) -> np.ndarray:
    return gate_times(spec.n_gates if spec.n_gates else INTERNAL_UNGATED_SNAPSHOTS)


def make_acquisition(
    spec: PhantomSpec,
    state: str,
    rng: np.random.Generator,
    pose: Pose | None = None,
    orientation: str = "transaxial",
    grid: PolarGrid = DEFAULT_GRID,
) -> Acquisition:
    """Simulate one acquisition (``state`` ``"stress"`` or ``"rest"``) of the phantom ``spec``.

    ``pose`` None draws one from ``rng``. ``orientation`` ``"transaxial"`` or
    ``"short_axis"`` selects the voxel grid (see module docstring).
    """
    if orientation not in ("transaxial", "short_axis"):
        raise ValueError(f"orientation must be 'transaxial' or 'short_axis', got {orientation!r}")
    if pose is None:
        pose = draw_pose(spec, rng)
    frame = pose.frame
    n, v, s = spec.matrix, spec.voxel_mm, spec.supersampling
    if orientation == "transaxial":
        affine = transaxial_affine(n, v)
    else:
        affine = short_axis_affine(frame, lv_centre_mm(frame, spec.shape), n, v)
    defects = spec.defects_for(state)
    heart = _heart_model(spec, defects, pose)
    torso = _torso_model(spec, frame)
    delays = delay_profile_deg(spec.phase_delays, pose.jitter_coefficients)
    times = _snapshot_times(spec)
    geometries = [geometry_at(spec.shape, t, delays, spec.waveform, spec.es_fraction) for t in times]

    # supersampled heart box
    static = _torso_volume(torso, affine, n, 1)
    box = _heart_box(frame, spec, affine, n)
    off = _sub_offsets(s)
    axes = [(np.arange(b.start, b.stop)[:, None] + off[None, :]).ravel() for b in box]
    bshape = tuple(b.stop - b.start for b in box)
    full = tuple(len(a) for a in axes)
    # product grid: every coordinate is affine in (k, i, j), so build it by broadcasting 1D axes
    grids = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])

    def _linear(offset: float, coefficients: np.ndarray) -> np.ndarray:
        out = np.full(full, offset)
        for grid_axis, coefficient in zip(grids, coefficients):
            out += coefficient * grid_axis
        return out

    patient = [_linear(affine[d, 3], affine[d, :3]) for d in range(3)]
    background = torso.evaluate_components(*patient)
    del patient
    rotation = frame.rotation @ affine[:3, :3]
    origin = frame.rotation @ (affine[:3, 3] - frame.apex_mm)
    lz, la, ls = (_linear(origin[e], rotation[e]) for e in range(3))
    # only points that can be heart in some snapshot are evaluated per snapshot
    rv_c, rv_ax = np.asarray(heart.rv_centre), np.asarray(heart.rv_semi_axes)
    q_outer = ((lz - rv_c[0]) / rv_ax[0]) ** 2 + ((la - rv_c[1]) / rv_ax[1]) ** 2 + ((ls - rv_c[2]) / rv_ax[2]) ** 2
    r_all = np.hypot(la, ls)
    a_max = max(float(g.a_epi.max()) for g in geometries)
    c_max = max(g.c_epi for g in geometries)
    candidate = ((lz >= -1.0) & (lz <= c_max + 1.0) & (r_all <= a_max + 1.0)) | (q_outer <= 1.0)
    sel = np.flatnonzero(candidate)
    lv = np.stack([lz.ravel()[sel], la.ravel()[sel], ls.ravel()[sel]], axis=-1)
    del lz, la, ls, q_outer
    r = r_all.ravel()[sel]
    psi = np.mod(np.degrees(np.arctan2(lv[:, 2], lv[:, 1])), 360.0)
    weights = psi_weights(psi)
    rvq = heart.rv_quadrics(lv)
    n_t = len(times)
    activity = np.broadcast_to(static, (n_t, n, n, n)).copy()
    myo_fraction = np.zeros((n, n, n))
    values = background.ravel().copy()
    background_sel = values[sel]
    myo_points = np.zeros(values.shape)
    voxelised_myo_ml = []
    for g, geom in enumerate(geometries):
        act, heart_weight, myo = heart.evaluate(lv, r, psi, geom, weights, rvq, base_ramp_mm=v / s)
        values[sel] = act + (1.0 - heart_weight) * background_sel
        myo_points[sel] = myo
        voxelised_myo_ml.append(float(myo.sum()) * (v / s) ** 3 / 1000.0)
        activity[(g, *box)] = values.reshape(bshape[0], s, bshape[1], s, bshape[2], s).mean(axis=(1, 3, 5))
        myo_fraction[box] += myo_points.reshape(bshape[0], s, bshape[1], s, bshape[2], s).mean(axis=(1, 3, 5)) / n_t

    sigma = spec.system_fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / v
    blurred = ndimage.gaussian_filter(activity, sigma=(0.0, sigma, sigma, sigma), mode="constant")
    mean_blurred = blurred.mean(axis=0)
    mask = myo_fraction >= 0.5
    scale = spec.target_counts_per_voxel / float(mean_blurred[mask].mean())
    if spec.n_gates:
        expected = blurred * (scale / n_t)
        noisy = rng.poisson(expected).astype(np.float64)
        summed_noisy = noisy.sum(axis=0)
    else:
        expected = mean_blurred * scale
        noisy = rng.poisson(expected).astype(np.float64)
        summed_noisy = noisy
    summed_expected = mean_blurred * scale

    truth = _make_truth(spec, state, frame, heart, geometries, delays, summed_expected,
                        blurred * (scale / n_t) if spec.n_gates else None, affine, grid)
    truth.extra["voxelised_myocardial_volume_ml_per_snapshot"] = voxelised_myo_ml
    return Acquisition(
        spec=spec,
        state=state,
        orientation=orientation,
        pose=pose,
        frames=Volume(noisy, affine.copy()),
        expected=Volume(expected, affine.copy()),
        summed=Volume(summed_noisy, affine.copy()),
        truth=truth,
    )


def _make_truth(
    spec: PhantomSpec,
    state: str,
    frame: LVFrame,
    heart: HeartModel,
    geometries: list[LVGeometry],
    delays: np.ndarray,
    summed_expected: np.ndarray,
    gated_expected: np.ndarray | None,
    affine: np.ndarray,
    grid: PolarGrid,
) -> Truth:
    ed_geom = geometry_at(spec.shape, 0.0, None, "physiological", spec.es_fraction)
    seg = analytic_segment_truth(heart, ed_geom)
    mean_geom = LVGeometry.mean(geometries)
    polar_blurred = sample_max_along_normals(summed_expected, affine, frame, mean_geom, grid)
    polar_unblurred = transmural_mean_activity(heart, grid)
    _, _, _, cell_volume = midwall_samples(mean_geom, grid)
    # relative uptake by the product's own definition of "% of maximum" (the map's 99th percentile)
    seg_blurred = grid.segment_means(relative_pct(polar_blurred))
    scores = score_from_uptake(100.0 * (1.0 - seg.deficit))
    severity_scores = np.floor(4.0 * seg.deficit + 0.5 + 1e-9).astype(int)
    defect_segments = tuple(sorted({s for d in heart.defects for s in d.segments}))
    gate_volumes = np.array([g.cavity_volume_ml for g in geometries])
    gate_maps = sample_phase = phase_stats = count_phase = count_stats = None
    if spec.n_gates:
        if gated_expected is None:
            raise ValueError("the truth of a gated phantom needs its gated expected counts")
        edv, esv = float(gate_volumes.max()), float(gate_volumes.min())
        gate_maps = np.stack(
            [sample_max_along_normals(gated_expected[k], affine, frame, g, grid) for k, g in enumerate(geometries)]
        )
        cap = grid.u_centres < grid.u_cap
        thickness = np.empty((len(geometries), grid.n_u, grid.n_psi))
        for k, g in enumerate(geometries):
            a, A = g.radii_at(grid.psi_centres_deg)
            thickness[k] = np.where(cap[:, None], g.apex_wall_mm, (A - a)[None, :])
        sample_phase = first_harmonic_phase(np.moveaxis(thickness, 0, -1))
        phase_stats = truth_phase_statistics(sample_phase, cell_volume)
        count_phase = first_harmonic_phase(np.moveaxis(gate_maps, 0, -1))
        count_stats = truth_phase_statistics(count_phase, cell_volume)
    else:
        edv, esv = spec.shape.edv_ml, spec.shape.esv_ml
    return Truth(
        state=state,
        tracer=spec.tracer,
        sex=spec.sex,
        shape=spec.shape.name,
        frame=frame,
        defects=heart.defects,
        defect_segments=defect_segments,
        defect_territories=territories_of(defect_segments),
        segment_deficit=seg.deficit,
        segment_uptake_pct=seg.uptake_pct,
        segment_volume_ml=seg.volume_ml,
        segment_scores=scores,
        sss=int(scores.sum()),
        segment_scores_severity=severity_scores,
        sss_severity=int(severity_scores.sum()),
        tpd_pct=seg.tpd_pct,
        polar_map_unblurred=polar_unblurred,
        polar_map_blurred=polar_blurred,
        segment_uptake_blurred_pct=seg_blurred,
        polar_cell_volume_mm3=cell_volume,
        gate_polar_maps_blurred=gate_maps,
        gate_volumes_ml=gate_volumes,
        edv_ml=edv,
        esv_ml=esv,
        ef_pct=100.0 * (edv - esv) / edv,
        shape_edv_ml=spec.shape.edv_ml,
        shape_esv_ml=spec.shape.esv_ml,
        shape_ef_pct=spec.shape.ef_pct,
        myocardial_volume_ml=ed_geom.myocardial_volume_ml,
        imposed_delay_deg=delays,
        sample_phase_deg=sample_phase,
        phase_stats=phase_stats,
        count_phase_deg=count_phase,
        count_phase_stats=count_stats,
        extra={
            "fwhm_mm": spec.system_fwhm_mm,
            "attenuation_depth": spec.attenuation_depth,
            "attenuation_centre_deg": heart.attenuation_centre_deg,
            "counts_per_voxel": spec.target_counts_per_voxel,
            "n_gates": spec.n_gates,
            "waveform": spec.waveform,
            "es_fraction": spec.es_fraction,
            "myocardial_volume_per_gate_ml": [g.myocardial_volume_ml for g in geometries],
            "polar_map_blurred_definition": "max of the summed noise-free expected counts along true mid-wall "
            "normals of the cycle-mean geometry within +-(half wall + 2 mm)",
        },
    )


def make_study(
    spec: PhantomSpec, rng: np.random.Generator, orientation: str = "transaxial", pose: Pose | None = None
) -> StudyPhantom:
    """Stress and rest acquisitions of one phantom patient (same pose, independent noise)."""
    if pose is None:
        pose = draw_pose(spec, rng)
    stress = make_acquisition(spec, "stress", rng, pose, orientation)
    rest = make_acquisition(spec, "rest", rng, pose, orientation)
    return StudyPhantom(spec=spec, pose=pose, stress=stress, rest=rest, orientation=orientation)

