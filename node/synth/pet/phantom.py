"""Image tier of the PET MBF phantoms: 4-D dynamic volumes with exact per-segment truth.

Reference note ``pet_mbf.md`` sections 5.1 (tier B), 5.3 (myocardial TACs), 5.4 (geometry and
partial volume) and 5.5 (noise). Research use only.

What a series is
----------------
A :class:`~node.imaging.volume.Volume` with ``FrameAxis.dynamic`` and voxels
``[frame, slice, row, col]`` in Bq/mL, decay-corrected to the injection (frame starts in
seconds after injection, :func:`node.synth.pet.tac.frame_schedule`), on a transaxial grid
(slices inferior -> superior, rows anterior -> posterior, columns right -> left; DICOM LPS
mm) centred near the LV, default 40 x 64 x 64 voxels of 3.2 mm.

Anatomy (voxelised on a 2x supersampled grid, partial voxels):

* **LV**: the cycle-mean shell of :mod:`node.synth.geometry` (:class:`LVShape`, default
  :data:`~node.synth.geometry.NORMAL`; ungated frames see the mean of the eight gate
  snapshots), posed as the SPECT phantoms (:func:`node.synth.spect.phantom.draw_pose`); every
  myocardial point carries its AHA segment (:func:`node.synth.anatomy.myocardial_segments`:
  thirds of the cavity length, segment 17 beyond the cavity apex), exactly what the analysis
  grid assumes. The cavity and an LA/outflow blood column beyond the base plane (radius 0.7 x
  the endocardial radius, 40 mm long) hold LV blood.
* **RV**: the SPECT phantom's RV ellipsoid shell on the septal side (outer semi-axes
  0.55 C, 1.25 A, A + 6 mm, wall 5 mm): cavity = RV blood, wall = tissue.
* **Torso**: body, both lungs and the liver below the inferior wall
  (:class:`node.synth.anatomy.TorsoModel`).

Time-activity curves (every curve from :func:`node.quant.kinetics.model_curve`, the fitter's own
forward model, on a 0.1 s grid with the exact input):

* LV blood ``C_LV`` = :class:`~node.synth.pet.tac.InputShape` drawn per series
  (:func:`~node.synth.pet.tac.sample_input_shape`), RV blood its earlier, narrower RV curve.
* Myocardium of segment ``s``: ``(1 - v_b) C_tissue(F_s) + v_b C_LV`` with the *vascular*
  fraction ``v_b`` U(0.08, 0.12) per segment (reference 5.3; the fitted "blood fraction" then
  also absorbs the spill-over that the blur creates), model parameters from
  :func:`~node.synth.pet.tac.segment_parameters` (Rb-82: one DV per series).
* RV wall F = 0.3 x the mean segment F; liver F 0.25, blood fraction 0.2; lung F 0.02, blood
  fraction 0.12; body F 0.02, blood fraction 0.04 (all mL/min/g, same model, but with a
  distribution volume of 1 mL/g instead of the myocardium's: ``k2 = K1 / 1``) [D, L].

Physics: every frame is blurred with a 3-D Gaussian of ``fwhm_mm`` (Rb-82 9 mm, N-13 6.5 mm:
positron range + system, reference 5.4), then gets correlated noise (reference 5.5): white
Gaussian noise smoothed with a 1-voxel-sigma Gaussian (renormalised to unit variance), scaled
per voxel as ``sd = s sqrt(C / (duration D))`` (``C`` the blurred noise-free value, floored at
2 % of the frame's maximum; ``D`` the frame's mean decay factor), with ``s`` set so that a
voxel at the mean myocardial value of the last frame has relative SD ``noise_level``
(default 0.2; the mean over a segment's voxels then has about 7 % relative SD on the last
frame and on the 10 s frames alike, within the 3-10 % that reference 5.5 calls clinical).

Motion (optional): from a frame start ``motion_start_s`` U(90, 240) s on, the whole patient is
shifted by ``motion_mm`` (default 10 mm) in a random direction (reference 8.3: +-1 cm at
90-240 s); the earlier frames are still.

Rest/stress (:func:`make_pet_study`): rest MBF = a patient level U(0.6, 1.4) x U(0.9, 1.1)
per segment; stress = rest x MFR with a patient MFR U(2.6, 3.6) x U(0.95, 1.05) per segment,
capped at 4.5 mL/min/g; a territory defect multiplies the stress F of the territory's segments
by U(0.35, 0.7) (reference 5.3); diffuse disease sets every segment's MFR to U(1.3, 1.9).
A normal territory's MFR is then above 2.4; a defect territory's lies between about 0.9 and
2.6, so most but not all defects make the territory impaired (MFR < 2.0) in the truth
(:attr:`PetStudyTruth.impaired_territories`). Territory and global values are means of the
segment values (equal AHA weighting, as the analysis defines them).

Every random draw comes from the caller's ``numpy.random.Generator``; same seed, same phantom.
Tracers: Rb-82 and N-13 ammonia (O-15 water's late images show no myocardial contrast, so
the image tier's locator does not apply; use tier A for water).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from node.imaging.volume import FrameAxis, FrameSchedule, Volume
from node.quant.kinetics import (
    H2OIida,
    KineticModel,
    Rb82Lortie,
    SampledInput,
    default_model,
    fine_grid,
    frame_operator,
    model_curve,
)
from node.quant.lv_frame import LVFrame
from node.quant.mbf import TYPICAL_FWHM_MM
from node.quant.segments import N_SEGMENTS, TERRITORY_SEGMENTS
from node.synth.anatomy import HeartModel, TissueUptake, TorsoModel, myocardial_segments
from node.synth.geometry import NORMAL, LVGeometry, LVShape, gate_times, geometry_at
from node.synth.pet.tac import InputShape, frame_schedule, sample_input_shape, segment_parameters
from node.synth.spect.phantom import PhantomSpec, draw_pose, lv_centre_mm

__all__ = [
    "LABELS",
    "PetPhantomSpec",
    "PetSeriesTruth",
    "PetSeries",
    "PetStudyTruth",
    "PetStudy",
    "draw_study_flows",
    "make_pet_series",
    "make_pet_study",
]

#: Label of each voxelised structure: 0..16 = AHA segments 1..17, then these names.
LABELS: tuple[str, ...] = tuple(str(s) for s in range(1, N_SEGMENTS + 1)) + (
    "lv_blood", "rv_blood", "rv_wall", "lung", "liver", "body", "air")
_LV_BLOOD, _RV_BLOOD, _RV_WALL, _LUNG, _LIVER, _BODY, _AIR = range(N_SEGMENTS, N_SEGMENTS + 7)

#: Background tissues: (flow mL/min/g, blood fraction) [D, L]; the RV wall's flow is relative.
_BACKGROUND = {"liver": (0.25, 0.2), "lung": (0.02, 0.12), "body": (0.02, 0.04)}
_RV_WALL_FLOW_RATIO = 0.3
_BACKGROUND_DV_ML_PER_G = 1.0
_VASCULAR_FRACTION = (0.08, 0.12)
_LA_LENGTH_MM = 40.0
_LA_RADIUS_RATIO = 0.7
_FINE_DT_S = 0.1
_NOISE_FLOOR = 0.02  # noise of cold voxels as if their value were 2 % of the frame maximum


@dataclass(frozen=True)
class PetPhantomSpec:
    """The patient-independent settings of an image-tier phantom.

    Attributes
    ----------
    tracer : str
        Kinetics tracer name ("Rb-82" or "N-13 ammonia"); the model is
        :func:`node.quant.kinetics.default_model` of it unless a model is given to the makers.
    shape : LVShape
        LV shape (ED/ES semi-axes and wall, mm); the cycle mean is voxelised.
    matrix : (slices, rows, cols)
    voxel_mm : float
        Isotropic voxel size (mm).
    fwhm_mm : float or None
        Resolution of the blur (mm FWHM); None = :data:`node.quant.mbf.TYPICAL_FWHM_MM`.
    noise_level : float
        Relative SD of a voxel at the mean myocardial value of the last frame (0 = noise-free).
    schedule_variant : str
        Frame schedule of :data:`node.synth.pet.tac.FRAME_SCHEDULES`.
    pose_jitter_deg : float
        Jitter of the LV axis angles (as the SPECT phantoms).
    supersample : int
        Sub-voxels per axis when voxelising.
    """

    tracer: str = "Rb-82"
    shape: LVShape = NORMAL
    matrix: tuple[int, int, int] = (40, 64, 64)
    voxel_mm: float = 3.2
    fwhm_mm: float | None = None
    noise_level: float = 0.2
    schedule_variant: str = "default"
    pose_jitter_deg: float = 15.0
    supersample: int = 2

    @property
    def resolution_fwhm_mm(self) -> float:
        """The blur's FWHM in mm."""
        return float(self.fwhm_mm) if self.fwhm_mm is not None else TYPICAL_FWHM_MM[default_model(self.tracer).tracer.name]


@dataclass(frozen=True, eq=False)
class PetSeriesTruth:
    """Exact truth of one series (arrays [17] in AHA order; flows mL/min/g).

    ``labels`` [slice, row, col] is the majority structure of each voxel (index into
    :data:`LABELS`) in the still position; ``myocardium_fraction`` its myocardial share.
    ``moved`` says whether frames from ``motion_start_s`` on are shifted by ``motion_shift_mm``
    (LPS mm). ``label_fractions`` [n_labels, slice, row, col] are the still partial-voxel
    fractions of every structure.
    """

    state: str
    tracer: str
    model: str
    constants: dict[str, float | str]
    schedule: FrameSchedule
    segment_mbf_ml_per_min_per_g: np.ndarray
    territory_mbf_ml_per_min_per_g: dict[str, float]
    global_mbf_ml_per_min_per_g: float
    parameters: dict[str, np.ndarray]
    distribution_volume_ml_per_g: float | None
    vascular_fraction: np.ndarray
    input_shape: InputShape
    rv_shape: InputShape
    blood_bq_per_ml: np.ndarray  # [frames] noise-free LV blood frame values
    rv_bq_per_ml: np.ndarray  # [frames]
    frame: LVFrame
    lv_geometry: LVGeometry
    fwhm_mm: float
    noise_level: float
    moved: bool
    motion_start_s: float | None
    motion_shift_mm: np.ndarray
    labels: np.ndarray
    myocardium_fraction: np.ndarray
    label_fractions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 0, 0)))


@dataclass(frozen=True, eq=False)
class PetSeries:
    """One dynamic series: the noisy volume (what a scanner gives), the noise-free one, truth."""

    volume: Volume
    noise_free: Volume
    truth: PetSeriesTruth


@dataclass(frozen=True, eq=False)
class PetStudyTruth:
    """Study-level truth: MFR per segment [17], territory and global (ratio of global means)."""

    segment_mfr: np.ndarray
    territory_mfr: dict[str, float]
    global_mfr: float
    defect_territory: str | None
    defect_factor: float | None
    diffuse: bool
    impaired_territories: tuple[str, ...]
    moved_states: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class PetStudy:
    """A rest and a stress series of one phantom patient (same pose and anatomy)."""

    spec: PetPhantomSpec
    rest: PetSeries
    stress: PetSeries
    truth: PetStudyTruth
    parameters: dict[str, object] = field(default_factory=dict)


def _affine(matrix: tuple[int, int, int], voxel_mm: float, centre_mm: np.ndarray) -> np.ndarray:
    """Transaxial affine (slice +z, row +y, col +x) whose grid centre is ``centre_mm``."""
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, voxel_mm]
    affine[:3, 1] = [0.0, voxel_mm, 0.0]
    affine[:3, 2] = [voxel_mm, 0.0, 0.0]
    affine[:3, 3] = np.asarray(centre_mm, dtype=float) - affine[:3, :3] @ (0.5 * (np.asarray(matrix, dtype=float) - 1.0))
    return affine


def _mean_geometry(shape: LVShape) -> LVGeometry:
    """Cycle-mean LV geometry (ungated frames average the cycle)."""
    return LVGeometry.mean([geometry_at(shape, float(t)) for t in gate_times(8)])


def _heart(geom: LVGeometry) -> HeartModel:
    """RV geometry of the SPECT phantom (its uptake values are not used here)."""
    a_epi = float(np.mean(geom.a_epi))
    c_epi = geom.c_epi
    return HeartModel(uptake=TissueUptake(1.0, 1.0, 0.0, 0.0, 0.0), defects=(), sex="M", attenuation_depth=0.0,
                      attenuation_centre_deg=0.0, rv_centre=(0.6 * c_epi, 0.0, 0.75 * a_epi),
                      rv_semi_axes=(0.55 * c_epi, 1.25 * a_epi, a_epi + 6.0), rv_wall_mm=5.0, rv_base_z=c_epi)


def _torso(frame: LVFrame, geom: LVGeometry, centre: np.ndarray, tissue: str) -> TorsoModel:
    """The torso with unit uptake in ``tissue`` only ("body", "lung" or "liver"): its activity is that tissue's indicator."""
    a_epi = float(np.mean(geom.a_epi))
    uptake = TissueUptake(blood=0.0, rv_wall=0.0, body=float(tissue == "body"), lung=float(tissue == "lung"), liver=0.0)
    lungs = (((115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)),
             ((-115.0, 15.0, centre[2] + 20.0), (65.0, 90.0, 120.0)))
    inferior_wall = frame.to_patient(np.array([0.5 * geom.c_epi, -a_epi, 0.0]))
    axes = np.array([85.0, 70.0, 65.0])
    d = np.array([-0.5, 0.15, -1.0])
    d /= np.linalg.norm(d)
    liver_centre = inferior_wall + d * (20.0 + float(np.sqrt(np.sum((axes * d) ** 2))))
    return TorsoModel(uptake=uptake, body_semi_axes_xy=(170.0, 115.0), lungs=lungs,
                      liver=(tuple(liver_centre), tuple(axes)), liver_activity=float(tissue == "liver"),
                      bowel=None, bowel_activity=0.0)


def _label_points(xyz: np.ndarray, frame: LVFrame, geom: LVGeometry, heart: HeartModel,
                  torsos: dict[str, TorsoModel]) -> np.ndarray:
    """Structure label (index into :data:`LABELS`) of patient points ``xyz [n, 3]``."""
    lv = frame.to_lv(xyz)
    z = lv[:, 0]
    r = np.hypot(lv[:, 1], lv[:, 2])
    psi = np.mod(np.degrees(np.arctan2(lv[:, 2], lv[:, 1])), 360.0)
    a, big_a = geom.radii_at(psi)
    zeta = z - geom.c_epi
    below_base = zeta <= 0.0
    in_epi = below_base & ((r / big_a) ** 2 + (zeta / geom.c_epi) ** 2 <= 1.0)
    in_endo = in_epi & ((r / a) ** 2 + (zeta / geom.c_endo) ** 2 <= 1.0)
    myo = in_epi & ~in_endo
    la = (zeta > 0.0) & (zeta <= _LA_LENGTH_MM) & (r <= _LA_RADIUS_RATIO * a)
    q_outer, q_inner = heart.rv_quadrics(lv)
    rv_ok = (z <= heart.rv_base_z) & ~in_epi
    rv_wall = rv_ok & (q_outer <= 1.0) & (q_inner > 1.0)
    rv_blood = rv_ok & (q_inner <= 1.0)
    x, y, zz = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    label = np.full(z.shape, _AIR, dtype=np.intp)
    label[torsos["body"].evaluate_components(x, y, zz) > 0] = _BODY
    label[torsos["lung"].evaluate_components(x, y, zz) > 0] = _LUNG
    label[torsos["liver"].evaluate_components(x, y, zz) > 0] = _LIVER
    label[rv_wall] = _RV_WALL
    label[rv_blood] = _RV_BLOOD
    label[in_endo | la] = _LV_BLOOD
    if myo.any():
        label[myo] = myocardial_segments(z[myo], psi[myo], geom) - 1
    return label


def _fractions(affine: np.ndarray, matrix: tuple[int, int, int], s: int, shift_mm: np.ndarray, frame: LVFrame,
               geom: LVGeometry, heart: HeartModel, torsos: dict[str, TorsoModel]) -> np.ndarray:
    """Partial-voxel fraction of every label, ``[n_labels, n_voxels]`` (structures shifted by ``shift_mm``)."""
    n_vox = int(np.prod(matrix))
    off = (np.arange(s) + 0.5) / s - 0.5
    out = np.zeros((len(LABELS), n_vox))
    rows = (np.arange(matrix[1])[:, None] + off[None, :]).ravel()
    cols = (np.arange(matrix[2])[:, None] + off[None, :]).ravel()
    chunk = max(1, 1_500_000 // (matrix[1] * matrix[2] * s**3))
    voxel_of = np.arange(n_vox).reshape(matrix)
    for k0 in range(0, matrix[0], chunk):  # chunks of slices (memory), not a loop over voxels
        k1 = min(matrix[0], k0 + chunk)
        ks = (np.arange(k0, k1)[:, None] + off[None, :]).ravel()
        idx = np.stack(np.meshgrid(ks, rows, cols, indexing="ij"), axis=-1).reshape(-1, 3)
        xyz = idx @ affine[:3, :3].T + affine[:3, 3] - shift_mm
        label = _label_points(xyz, frame, geom, heart, torsos)
        owner = np.repeat(np.repeat(np.repeat(voxel_of[k0:k1], s, axis=0), s, axis=1), s, axis=2).ravel()
        out += np.bincount(label * n_vox + owner, minlength=len(LABELS) * n_vox).reshape(len(LABELS), n_vox)
    return out / s**3


def _tacs(model: KineticModel, schedule: FrameSchedule, segment_mbf: np.ndarray, vascular: np.ndarray,
          shape: InputShape, rv_shape: InputShape, rng: np.random.Generator,
          distribution_volume_ml_per_g: float | None) -> tuple[np.ndarray, dict[str, np.ndarray], float | None]:
    """Frame values ``[frames, n_labels]`` of every label, the segment parameters and the DV."""
    flows = np.concatenate([segment_mbf, [_RV_WALL_FLOW_RATIO * float(np.mean(segment_mbf)),
                                          _BACKGROUND["lung"][0], _BACKGROUND["liver"][0], _BACKGROUND["body"][0]]])
    fb = np.concatenate([vascular, [0.1, _BACKGROUND["lung"][1], _BACKGROUND["liver"][1], _BACKGROUND["body"][1]]])
    params, dv = segment_parameters(model, flows, rng, blood_fraction=fb,
                                    distribution_volume_ml_per_g=distribution_volume_ml_per_g)
    params.pop("rv_fraction", None)
    if "k2_per_min" in params:  # background tissues wash out faster than myocardium (distribution volume 1 mL/g)
        k1 = model.k1(flows[N_SEGMENTS:]) if isinstance(model, Rb82Lortie) else flows[N_SEGMENTS:]
        params["k2_per_min"] = np.concatenate([params["k2_per_min"][:N_SEGMENTS], k1 / _BACKGROUND_DV_ML_PER_G])
    t = np.arange(int(math.ceil(schedule.end_s[-1] / _FINE_DT_S)) + 2) * _FINE_DT_S
    blood_input = SampledInput(t, shape(t))
    tissue = model_curve(model, schedule, params, blood_input=blood_input, dt_s=_FINE_DT_S)
    grid = fine_grid(schedule.end_s[-1], _FINE_DT_S)
    operator = frame_operator(schedule, grid, model.decay_constant_per_s)
    blood = operator @ blood_input.on_grid(grid)
    rv = operator @ SampledInput(t, rv_shape(t)).on_grid(grid)
    out = np.zeros((schedule.n_frames, len(LABELS)))
    out[:, :N_SEGMENTS] = tissue[:, :N_SEGMENTS]
    out[:, _LV_BLOOD] = blood
    out[:, _RV_BLOOD] = rv
    out[:, _RV_WALL] = tissue[:, N_SEGMENTS]
    out[:, _LUNG] = tissue[:, N_SEGMENTS + 1]
    out[:, _LIVER] = tissue[:, N_SEGMENTS + 2]
    out[:, _BODY] = tissue[:, N_SEGMENTS + 3]
    segment_params = {k: np.asarray(v)[:N_SEGMENTS].copy() for k, v in params.items()}
    return out, segment_params, dv


def _correlated_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise ``[frame, slice, row, col]`` smoothed over 1 voxel (sigma) in space."""
    white = rng.standard_normal(shape)
    smooth = ndimage.gaussian_filter(white, sigma=(0.0, 1.0, 1.0, 1.0), mode="wrap")
    # variance of white noise after a unit-sum Gaussian kernel of sigma 1 voxel in 3-D
    kernel = np.zeros((9, 9, 9))
    kernel[4, 4, 4] = 1.0
    kernel = ndimage.gaussian_filter(kernel, 1.0, mode="constant")
    return smooth / math.sqrt(float(np.sum(kernel**2)))


def make_pet_series(segment_mbf_ml_per_min_per_g: np.ndarray, rng: np.random.Generator, *,
                    spec: PetPhantomSpec = PetPhantomSpec(), model: KineticModel | None = None, state: str = "",
                    frame: LVFrame | None = None, grid_centre_mm: np.ndarray | None = None,
                    vascular_fraction: np.ndarray | float | None = None, input_shape: InputShape | None = None,
                    rv_lead_s: float | None = None, distribution_volume_ml_per_g: float | None = None,
                    motion_start_s: float | None = None, motion_mm: float = 10.0,
                    motion_direction: np.ndarray | None = None,
                    still_fractions: np.ndarray | None = None) -> PetSeries:
    """One dynamic series of the image tier (module docstring for the physics).

    Parameters
    ----------
    segment_mbf_ml_per_min_per_g : array [17]
        True MBF per AHA segment.
    rng : numpy.random.Generator
        Every random draw (pose if not given, input, parameters, noise, motion direction).
    spec : PetPhantomSpec
    model : KineticModel, optional
        Generating model (default: the tracer's default model).
    state : str
        "rest" or "stress" (a label in the truth).
    frame, grid_centre_mm : optional
        LV pose (epicardial apex and long axis) and grid centre (LPS mm); drawn when None.
    vascular_fraction : float or array [17], optional
        True myocardial vascular fraction (default U(0.08, 0.12) per segment).
    input_shape : InputShape, optional
        LV input (default drawn per series); ``rv_lead_s`` the RV peak's lead (default U(2, 6)
        s; a negative value makes the RV peak after the LV, a planted fault).
    still_fractions : array [n_labels, slice, row, col], optional
        Partial-voxel label fractions of this pose and grid from an earlier series of the same
        patient (:attr:`PetSeriesTruth.label_fractions`), to skip voxelising again.
    distribution_volume_ml_per_g : float, optional
        Rb-82 DV (default drawn U(2.8, 4.0)).
    motion_start_s : float, optional
        Frames starting at or after this time are shifted by ``motion_mm`` along
        ``motion_direction`` (random unit vector when None). None = still.
    """
    model = model if model is not None else default_model(spec.tracer)
    if isinstance(model, H2OIida):
        raise ValueError("the image tier simulates Rb-82 and N-13 ammonia (O-15 water: use the TAC tier)")
    mbf = np.asarray(segment_mbf_ml_per_min_per_g, dtype=float).reshape(-1)
    if mbf.size != N_SEGMENTS:
        raise ValueError(f"give {N_SEGMENTS} segment MBF values")
    geom = _mean_geometry(spec.shape)
    if frame is None:
        frame = draw_pose(PhantomSpec(shape=spec.shape, pose_jitter_deg=spec.pose_jitter_deg), rng).frame
    if grid_centre_mm is None:
        grid_centre_mm = lv_centre_mm(frame, spec.shape) + rng.uniform(-8.0, 8.0, 3)
    schedule = frame_schedule(model, spec.schedule_variant)
    shape = input_shape if input_shape is not None else sample_input_shape(model, rng)
    lead = float(rng.uniform(2.0, 6.0)) if rv_lead_s is None else float(rv_lead_s)
    rv_shape = shape.rv(lead)
    vascular = (rng.uniform(*_VASCULAR_FRACTION, N_SEGMENTS) if vascular_fraction is None
                else np.broadcast_to(np.asarray(vascular_fraction, dtype=float), (N_SEGMENTS,)).copy())
    tacs, params, dv = _tacs(model, schedule, mbf, vascular, shape, rv_shape, rng, distribution_volume_ml_per_g)

    affine = _affine(spec.matrix, spec.voxel_mm, np.asarray(grid_centre_mm, dtype=float))
    heart = _heart(geom)
    torsos = {t: _torso(frame, geom, np.asarray(grid_centre_mm, dtype=float), t) for t in ("body", "lung", "liver")}
    still = (np.asarray(still_fractions, dtype=float).reshape(len(LABELS), -1) if still_fractions is not None
             else _fractions(affine, spec.matrix, spec.supersample, np.zeros(3), frame, geom, heart, torsos))
    moved = motion_start_s is not None
    shift = np.zeros(3)
    frames_moved = np.zeros(schedule.n_frames, dtype=bool)
    if moved:
        direction = rng.standard_normal(3) if motion_direction is None else np.asarray(motion_direction, dtype=float)
        shift = float(motion_mm) * direction / np.linalg.norm(direction)
        frames_moved = schedule.start_s >= float(motion_start_s) - 1e-9  # type: ignore[arg-type]
    activity = tacs @ still  # [frames, voxels]
    if frames_moved.any():
        shifted = _fractions(affine, spec.matrix, spec.supersample, shift, frame, geom, heart, torsos)
        activity[frames_moved] = tacs[frames_moved] @ shifted
    n_f = schedule.n_frames
    activity = activity.reshape((n_f, *spec.matrix))
    sigma_vox = spec.resolution_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spec.voxel_mm
    blurred = ndimage.gaussian_filter(activity, sigma=(0.0, sigma_vox, sigma_vox, sigma_vox), mode="nearest")
    myo_fraction = still[:N_SEGMENTS].sum(axis=0).reshape(spec.matrix)
    noisy = blurred
    if spec.noise_level > 0:
        exposure = schedule.duration_s * schedule.mean_decay_factor(model.decay_constant_per_s)
        floor = _NOISE_FLOOR * blurred.reshape(n_f, -1).max(axis=1)
        shape_sd = np.sqrt(np.maximum(blurred, floor[:, None, None, None]) / exposure[:, None, None, None])
        myo_last = float(blurred[-1][myo_fraction >= 0.5].mean())
        scale = spec.noise_level * myo_last / math.sqrt(myo_last / exposure[-1])
        noisy = blurred + scale * shape_sd * _correlated_noise(blurred.shape, rng)
    axis = FrameAxis.dynamic(schedule.start_s, schedule.duration_s)
    labels = np.argmax(still, axis=0).reshape(spec.matrix)
    territory = {t: float(np.mean(mbf[[s - 1 for s in segs]])) for t, segs in TERRITORY_SEGMENTS.items()}
    truth = PetSeriesTruth(
        state=state, tracer=model.tracer.name, model=model.name, constants=model.constants(), schedule=schedule,
        segment_mbf_ml_per_min_per_g=mbf.copy(), territory_mbf_ml_per_min_per_g=territory,
        global_mbf_ml_per_min_per_g=float(np.mean(mbf)), parameters=params, distribution_volume_ml_per_g=dv,
        vascular_fraction=vascular, input_shape=shape, rv_shape=rv_shape, blood_bq_per_ml=tacs[:, _LV_BLOOD].copy(),
        rv_bq_per_ml=tacs[:, _RV_BLOOD].copy(), frame=frame, lv_geometry=geom, fwhm_mm=spec.resolution_fwhm_mm,
        noise_level=float(spec.noise_level), moved=moved, motion_start_s=None if not moved else float(motion_start_s),  # type: ignore[arg-type]
        motion_shift_mm=shift, labels=labels, myocardium_fraction=myo_fraction,
        label_fractions=still.reshape(len(LABELS), *spec.matrix))
    return PetSeries(Volume(noisy.astype(np.float32), affine.copy(), axis),
                     Volume(blurred.astype(np.float32), affine.copy(), axis), truth)


def draw_study_flows(rng: np.random.Generator, *, defect_territory: str | None = None,
                     defect_factor: float | None = None, diffuse: bool = False,
                     rest_mbf_ml_per_min_per_g: np.ndarray | None = None,
                     mfr: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Rest and stress segment MBF [17] (module docstring for the ranges) and the defect factor used."""
    if rest_mbf_ml_per_min_per_g is None:
        rest = rng.uniform(0.6, 1.4) * rng.uniform(0.9, 1.1, N_SEGMENTS)
    else:
        rest = np.broadcast_to(np.asarray(rest_mbf_ml_per_min_per_g, dtype=float), (N_SEGMENTS,)).copy()
    if mfr is not None:
        ratio = np.broadcast_to(np.asarray(mfr, dtype=float), (N_SEGMENTS,)).copy()
    elif diffuse:
        ratio = rng.uniform(1.3, 1.9, N_SEGMENTS)
    else:
        ratio = rng.uniform(2.6, 3.6) * rng.uniform(0.95, 1.05, N_SEGMENTS)
    stress = rest * ratio
    if mfr is None:
        stress = np.minimum(stress, 4.5)
    factor = None
    if defect_territory is not None:
        if defect_territory not in TERRITORY_SEGMENTS:
            raise ValueError(f"territory must be one of {sorted(TERRITORY_SEGMENTS)}, got {defect_territory!r}")
        factor = float(rng.uniform(0.35, 0.7)) if defect_factor is None else float(defect_factor)
        idx = [s - 1 for s in TERRITORY_SEGMENTS[defect_territory]]
        stress[idx] *= factor
    return rest, stress, factor


def make_pet_study(rng: np.random.Generator, *, spec: PetPhantomSpec = PetPhantomSpec(),
                   model: KineticModel | None = None, defect_territory: str | None = None,
                   defect_factor: float | None = None, diffuse: bool = False,
                   rest_mbf_ml_per_min_per_g: np.ndarray | None = None, mfr: np.ndarray | float | None = None,
                   moved_state: str | None = None, motion_mm: float = 10.0, impaired_below: float = 2.0,
                   series_options: dict[str, dict[str, object]] | None = None) -> PetStudy:
    """A rest + stress image-tier study of one phantom patient (same pose, grid and anatomy).

    Parameters
    ----------
    rng : numpy.random.Generator
    spec : PetPhantomSpec
    model : KineticModel, optional
    defect_territory : "LAD" | "LCx" | "RCA" | None
        Stress F of the territory's segments x ``defect_factor`` (default U(0.35, 0.7)).
    diffuse : bool
        Every segment's MFR U(1.3, 1.9).
    rest_mbf_ml_per_min_per_g, mfr : optional
        Fix the rest MBF [17] and/or the MFR (scalar or [17]).
    moved_state : "rest" | "stress" | None
        That series gets motion (start U(90, 240) s, ``motion_mm``).
    impaired_below : float
        MFR threshold of :attr:`PetStudyTruth.impaired_territories`.
    series_options : {"rest": {...}, "stress": {...}}, optional
        Extra keywords for :func:`make_pet_series` per state (planted faults).
    """
    model = model if model is not None else default_model(spec.tracer)
    rest_mbf, stress_mbf, factor = draw_study_flows(rng, defect_territory=defect_territory, defect_factor=defect_factor,
                                                    diffuse=diffuse, rest_mbf_ml_per_min_per_g=rest_mbf_ml_per_min_per_g,
                                                    mfr=mfr)
    frame = draw_pose(PhantomSpec(shape=spec.shape, pose_jitter_deg=spec.pose_jitter_deg), rng).frame
    centre = lv_centre_mm(frame, spec.shape) + rng.uniform(-8.0, 8.0, 3)
    vascular = rng.uniform(*_VASCULAR_FRACTION, N_SEGMENTS)
    options = series_options or {}
    series: dict[str, PetSeries] = {}
    for state, mbf in (("rest", rest_mbf), ("stress", stress_mbf)):
        kwargs: dict[str, object] = {"vascular_fraction": vascular}
        if series:
            kwargs["still_fractions"] = series["rest"].truth.label_fractions
        if moved_state == state:
            kwargs["motion_start_s"] = float(rng.uniform(90.0, 240.0))
            kwargs["motion_mm"] = motion_mm
        kwargs.update(options.get(state, {}))
        series[state] = make_pet_series(mbf, rng, spec=spec, model=model, state=state, frame=frame,
                                        grid_centre_mm=centre, **kwargs)  # type: ignore[arg-type]
    segment_mfr = stress_mbf / rest_mbf
    territory_mfr = {t: series["stress"].truth.territory_mbf_ml_per_min_per_g[t] / series["rest"].truth.territory_mbf_ml_per_min_per_g[t]
                     for t in TERRITORY_SEGMENTS}
    truth = PetStudyTruth(segment_mfr=segment_mfr, territory_mfr=territory_mfr,
                          global_mfr=float(np.mean(stress_mbf) / np.mean(rest_mbf)), defect_territory=defect_territory,
                          defect_factor=factor, diffuse=bool(diffuse),
                          impaired_territories=tuple(t for t, v in territory_mfr.items() if v < impaired_below),
                          moved_states=(moved_state,) if moved_state else ())
    params: dict[str, object] = {"defect_territory": defect_territory, "defect_factor": factor, "diffuse": bool(diffuse),
                                 "moved_state": moved_state, "motion_mm": motion_mm, "model": model.name}
    return PetStudy(spec, series["rest"], series["stress"], truth, params)
