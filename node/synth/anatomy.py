"""Activity of the phantom's structures at given points (numpy, vectorised).

Two groups:

* the heart (LV myocardium with defects and attenuation-like artefacts, LV
  blood pool, RV wall and RV blood), evaluated in LV coordinates for one
  :class:`~node.synth.geometry.LVGeometry` snapshot;
* the static torso (body background, lungs, liver, optional hot bowel),
  evaluated in patient LPS millimetres.

Activities are relative to normal myocardium (1.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.quant.segments import segment_of
from node.synth.geometry import LVGeometry, psi_weights

__all__ = [
    "Defect",
    "TissueUptake",
    "UPTAKE",
    "depth_fraction",
    "myocardial_segments",
    "defect_deficit",
    "attenuation_factor",
    "default_attenuation",
    "HeartModel",
    "TorsoModel",
]


@dataclass(frozen=True)
class Defect:
    """A perfusion defect.

    ``segments``: AHA segments (1..17) it covers; ``severity``: fractional loss
    of uptake (0 = none, 1 = no uptake); ``reversible``: True for ischemia
    (stress only), False for scar (stress and rest); ``transmural_fraction``:
    the inner fraction of the wall (from the endocardium) affected, 1.0 =
    transmural.
    """

    segments: tuple[int, ...]
    severity: float
    reversible: bool = False
    transmural_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not self.segments or any(not 1 <= int(s) <= 17 for s in self.segments):
            raise ValueError(f"defect segments must be AHA segments 1..17, got {self.segments!r}")
        if not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"defect severity must be in [0, 1], got {self.severity!r}")
        if not 0.0 < self.transmural_fraction <= 1.0:
            raise ValueError(f"transmural_fraction must be in (0, 1], got {self.transmural_fraction!r}")


@dataclass(frozen=True)
class TissueUptake:
    """Relative uptake of non-myocardial structures for one tracer."""

    blood: float
    rv_wall: float
    body: float
    lung: float
    liver: float


UPTAKE: dict[str, TissueUptake] = {
    "tc99m_sestamibi": TissueUptake(blood=0.07, rv_wall=0.40, body=0.05, lung=0.02, liver=0.30),
    "tc99m_tetrofosmin": TissueUptake(blood=0.07, rv_wall=0.40, body=0.05, lung=0.02, liver=0.25),
    "tl201": TissueUptake(blood=0.10, rv_wall=0.40, body=0.06, lung=0.08, liver=0.30),
}


def depth_fraction(z: np.ndarray, r: np.ndarray, a: np.ndarray, A: np.ndarray, geom: LVGeometry) -> np.ndarray:
    """Fractional depth in the wall, 0 at the endocardium, 1 at the epicardium (ellipsoidal radii)."""
    zeta = z - geom.c_epi
    s_endo = np.sqrt((r / a) ** 2 + (zeta / geom.c_endo) ** 2)
    s_epi = np.sqrt((r / A) ** 2 + (zeta / geom.c_epi) ** 2)
    inner = np.maximum(s_endo - 1.0, 0.0)
    outer = np.maximum(1.0 - s_epi, 0.0)
    return inner / np.maximum(inner + outer, 1e-12)


def myocardial_segments(z: np.ndarray, psi: np.ndarray, geom: LVGeometry) -> np.ndarray:
    """AHA segment of myocardial points: thirds of the cavity length, 17 beyond the cavity apex."""
    return segment_of(z / geom.c_epi, psi, geom.apex_wall_mm / geom.c_epi)


def defect_deficit(
    segments: np.ndarray, depth: np.ndarray, defects: tuple[Defect, ...]
) -> np.ndarray:
    """Fractional uptake loss of points (max over overlapping defects)."""
    deficit = np.zeros(np.shape(segments))
    for defect in defects:
        inside = np.isin(segments, np.asarray(defect.segments)) & (depth <= defect.transmural_fraction + 1e-9)
        deficit = np.where(inside, np.maximum(deficit, defect.severity), deficit)
    return deficit


def attenuation_factor(psi: np.ndarray, depth: float, centre_deg: float, half_width_deg: float = 70.0) -> np.ndarray:
    """Attenuation-like regional reduction ``1 - depth x window(psi - centre)``.

    Raised-cosine window of half-width ``half_width_deg`` in azimuth. Phantoms use
    an inferior centre (180 deg) in men and anterior (0 deg) in women; 1.0 when
    ``depth`` is 0.
    """
    if depth == 0.0:
        return np.ones(np.shape(psi))
    diff = np.mod(np.asarray(psi) - centre_deg + 180.0, 360.0) - 180.0
    window = np.where(np.abs(diff) < half_width_deg, 0.5 * (1.0 + np.cos(np.pi * diff / half_width_deg)), 0.0)
    return 1.0 - depth * window


def default_attenuation(sex: str) -> tuple[float, float]:
    """Default ``(depth, centre_deg)`` of the artefact: men inferior -15 %, women anterior -10 %."""
    return (0.15, 180.0) if sex == "M" else (0.10, 0.0)


@dataclass(frozen=True)
class HeartModel:
    """Heart activity in LV coordinates for one snapshot."""

    uptake: TissueUptake
    defects: tuple[Defect, ...]
    sex: str
    attenuation_depth: float  # fractional reduction at the centre (0 = no artefact)
    attenuation_centre_deg: float  # azimuth of the artefact centre
    rv_centre: tuple[float, float, float]  # LV coords (l, a, s) mm
    rv_semi_axes: tuple[float, float, float]  # outer, along (l, a, s), mm
    rv_wall_mm: float
    rv_base_z: float

    def myocardial_activity(
        self,
        z: np.ndarray,
        r: np.ndarray,
        psi: np.ndarray,
        geom: LVGeometry,
        weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Activity of myocardial points (caller ensures they are in the myocardium)."""
        a, A = geom.radii_at(psi, weights)
        seg = myocardial_segments(z, psi, geom)
        depth = depth_fraction(z, r, a, A, geom)
        deficit = defect_deficit(seg, depth, self.defects)
        return (1.0 - deficit) * attenuation_factor(psi, self.attenuation_depth, self.attenuation_centre_deg)

    def rv_quadrics(self, lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Outer and inner RV ellipsoid quadric values (<= 1 inside) of points (static over the cycle)."""
        centre = np.asarray(self.rv_centre)
        outer = np.asarray(self.rv_semi_axes)
        inner = outer - self.rv_wall_mm
        return np.sum(((lv - centre) / outer) ** 2, axis=-1), np.sum(((lv - centre) / inner) ** 2, axis=-1)

    def evaluate(
        self,
        lv: np.ndarray,
        r: np.ndarray,
        psi: np.ndarray,
        geom: LVGeometry,
        weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        rv_quadrics: tuple[np.ndarray, np.ndarray] | None = None,
        base_ramp_mm: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Heart activity at points with LV coords ``lv[..., (l, a, s)]`` (``r``, ``psi`` precomputed).

        ``weights`` (:func:`node.synth.geometry.psi_weights` of ``psi``) and
        ``rv_quadrics`` (:meth:`rv_quadrics`) may be passed to reuse them across
        snapshots. ``base_ramp_mm`` > 0 treats each point as a sample of that
        thickness across the base plane (linear partial-volume weight), which
        removes the staircase error when the sampling lattice is aligned with
        the long axis.

        Returns ``(activity, heart_weight, myocardium_weight)``: the heart's
        activity already multiplied by its weight (0..1) at each point; the
        caller adds ``(1 - heart_weight) x`` the torso activity.
        """
        if weights is None:
            weights = psi_weights(psi)
        z = lv[..., 0]
        zeta = z - geom.c_epi
        if base_ramp_mm > 0:
            base_weight = np.clip(0.5 - zeta / base_ramp_mm, 0.0, 1.0)
        else:
            base_weight = (zeta <= 0.0).astype(float)
        a, A = geom.radii_at(psi, weights)
        in_epi = ((r / A) ** 2 + (zeta / geom.c_epi) ** 2 <= 1.0) & (base_weight > 0)
        in_endo = ((r / a) ** 2 + (zeta / geom.c_endo) ** 2 <= 1.0) & in_epi
        myo = in_epi & ~in_endo
        lv_activity = np.zeros(z.shape)
        lv_activity[in_endo] = self.uptake.blood
        idx = np.nonzero(myo)
        sub_weights = (weights[0][idx], weights[1][idx], weights[2][idx])
        lv_activity[idx] = self.myocardial_activity(z[idx], r[idx], psi[idx], geom, sub_weights)
        lv_weight = np.where(in_epi, base_weight, 0.0)
        # right ventricle: ellipsoidal shell outside the LV, truncated at the base plane
        q_outer, q_inner = self.rv_quadrics(lv) if rv_quadrics is None else rv_quadrics
        rv_ok = z <= self.rv_base_z
        rv_wall = rv_ok & (q_outer <= 1.0) & (q_inner > 1.0)
        rv_blood = rv_ok & (q_inner <= 1.0)
        rv_activity = np.where(rv_wall, self.uptake.rv_wall, np.where(rv_blood, self.uptake.blood, 0.0))
        rv_weight = (1.0 - lv_weight) * (rv_wall | rv_blood)
        activity = lv_weight * lv_activity + rv_weight * rv_activity
        return activity, lv_weight + rv_weight, np.where(myo, base_weight, 0.0)


@dataclass(frozen=True)
class TorsoModel:
    """Static torso structures in patient LPS mm."""

    uptake: TissueUptake
    body_semi_axes_xy: tuple[float, float]
    lungs: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]  # (centre, semi-axes)
    liver: tuple[tuple[float, float, float], tuple[float, float, float]]
    liver_activity: float
    bowel: tuple[tuple[float, float, float], float] | None  # (centre, radius)
    bowel_activity: float

    def evaluate(self, xyz: np.ndarray) -> np.ndarray:
        """Activity at patient points ``xyz[..., 3]``."""
        return self.evaluate_components(xyz[..., 0], xyz[..., 1], xyz[..., 2])

    def evaluate_components(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Activity at patient points given as separate (broadcastable) x, y, z arrays in mm."""

        def inside(centre: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
            return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2 <= 1.0

        bx, by = self.body_semi_axes_xy
        body = (x / bx) ** 2 + (y / by) ** 2 <= 1.0
        activity = np.where(body, self.uptake.body, 0.0)
        for centre, axes in self.lungs:
            activity = np.where(inside(centre, axes) & body, self.uptake.lung, activity)
        activity = np.where(inside(*self.liver) & body, self.liver_activity, activity)
        if self.bowel is not None:
            centre, radius = self.bowel
            activity = np.where(inside(centre, (radius, radius, radius)) & body, self.bowel_activity, activity)
        return np.broadcast_to(activity, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))).copy()
