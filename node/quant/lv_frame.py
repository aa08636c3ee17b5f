"""The left-ventricular coordinate frame shared by phantoms, sampling and display.

SPECT does not show the RV insertion points, so the azimuth reference comes
from the standard anatomical orientation (DESIGN section 5):

* ``long_axis`` ``l``: unit vector from the apex toward the base (patient LPS).
* ``anterior`` ``a``: the patient anterior direction (LPS ``(0, -1, 0)``) made
  orthogonal to ``l``.
* ``septal`` ``s = a x l``: toward the patient's right, where the RV lies.

Azimuth ``psi`` is measured from ``a`` toward ``s`` (0 anterior, 90 septal,
180 inferior, 270 lateral). A short-axis volume has slices from apex to base
along ``l``, rows running from anterior to inferior (``-a``) and columns from
septal to lateral (``-s``), so that displayed slices are seen from the apex
with anterior up and septum left.

This module holds the modality-free LV geometry that sampling and function build on:
:class:`LVFrame` (apex and axis), :class:`LVLocation` (where the LV is and its landmarks,
whoever found them: the count-threshold locator of :mod:`node.quant.orientation`, a
segmentation, a short-axis stack) and the linear map from LV coordinates to voxel indices
(:func:`lv_to_index`, :func:`map_points`). Lengths are millimetres, points patient LPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from node.imaging.volume import Volume

__all__ = ["LVFrame", "LVLocation", "PATIENT_ANTERIOR", "lv_to_index", "map_points"]

PATIENT_ANTERIOR = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True, eq=False)
class LVFrame:
    """An LV frame: apex position and long axis in patient LPS millimetres."""

    apex_mm: np.ndarray  # (3,) epicardial or cavity apex, as the producer states
    long_axis: np.ndarray  # (3,) unit vector apex -> base

    @classmethod
    def from_points(cls, apex_mm: np.ndarray, base_mm: np.ndarray) -> LVFrame:
        apex_mm = np.asarray(apex_mm, dtype=float)
        axis = np.asarray(base_mm, dtype=float) - apex_mm
        return cls(apex_mm, axis / np.linalg.norm(axis))

    @property
    def anterior(self) -> np.ndarray:
        axis = self.long_axis / np.linalg.norm(self.long_axis)
        a = PATIENT_ANTERIOR - np.dot(PATIENT_ANTERIOR, axis) * axis
        norm = np.linalg.norm(a)
        if norm < 1e-6:
            raise ValueError("long axis is parallel to the patient anterior direction; azimuth undefined")
        return a / norm

    @property
    def septal(self) -> np.ndarray:
        return np.cross(self.anterior, self.long_axis / np.linalg.norm(self.long_axis))

    @property
    def rotation(self) -> np.ndarray:
        """3x3 orthonormal matrix with rows (l, a, s): LV coordinates = rotation @ (x - apex).

        (l, a, s) is a left-handed basis (determinant -1) because ``s = a x l``;
        the short-axis display (seen from the apex, anterior up, septum left)
        is nevertheless a proper view: right (-s) x up (a) = -l, toward the viewer.
        """
        return np.stack([self.long_axis / np.linalg.norm(self.long_axis), self.anterior, self.septal])

    def to_lv(self, xyz_mm: np.ndarray) -> np.ndarray:
        """LV coordinates ``[..., (along l, along a, along s)]`` in mm of patient points."""
        return (np.asarray(xyz_mm, dtype=float) - self.apex_mm) @ self.rotation.T

    def cylindrical(self, xyz_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(z_mm along the long axis from the apex, radius_mm, psi_deg)`` of patient points."""
        lv = self.to_lv(xyz_mm)
        z, along_a, along_s = lv[..., 0], lv[..., 1], lv[..., 2]
        psi = np.mod(np.degrees(np.arctan2(along_s, along_a)), 360.0)
        return z, np.hypot(along_a, along_s), psi

    def to_patient(self, lv_mm: np.ndarray) -> np.ndarray:
        """Patient LPS mm of LV coordinates ``[..., (l, a, s)]``."""
        return np.asarray(lv_mm, dtype=float) @ self.rotation + self.apex_mm


@dataclass(frozen=True, eq=False)
class LVLocation:
    """Where the LV is, in patient LPS millimetres.

    ``frame.apex_mm`` is the *epicardial* apex on the long axis and
    ``frame.long_axis`` the unit vector apex -> base (same convention as the
    phantom truth of ``node.synth``). Distances along the axis (``z``) are
    measured from that apex.
    """

    frame: LVFrame
    centre_mm: np.ndarray  # (3,) point on the long axis halfway between cavity apex and base
    length_mm: float  # epicardial apex -> base plane along the axis
    cavity_apex_mm: float  # epicardial apex -> endocardial (cavity) apex along the axis = apical wall
    mid_wall_radius_mm: float  # mid-ventricular mid-wall radius
    wall_thickness_mm: float  # estimated wall thickness (resolution-corrected)
    cavity_volume_ml: float  # rough cavity volume (half prolate ellipsoid of the landmarks)
    method: str  # how it was found, e.g. "threshold" | "mask" | "short_axis" (node.quant.orientation)
    fwhm_mm: float  # system resolution assumed or estimated (mm)
    notes: tuple[str, ...] = field(default=())
    source_voxel_mm: float = 0.0  # mean voxel size of the located volume (mm)

    @property
    def effective_sigma_mm(self) -> float:
        """Gaussian sigma of the resolution plus voxelisation and trilinear sampling (``h^2/4``), mm."""
        sigma = self.fwhm_mm / 2.3548
        return float(np.sqrt(sigma**2 + self.source_voxel_mm**2 / 4.0))

    @property
    def base_mm(self) -> float:
        """``z`` of the base plane (mm from the epicardial apex)."""
        return self.length_mm

    @property
    def cavity_length_mm(self) -> float:
        return self.length_mm - self.cavity_apex_mm

    def u_to_z(self, u: np.ndarray, u_cap: float) -> np.ndarray:
        """Map polar-grid ``u`` (0 apex .. 1 base, first ``u_cap`` = cap) to ``z`` mm from the epicardial apex.

        The cap spans ``z`` in [0, cavity apex); the rest spans the cavity
        linearly to the base, so segment thirds are thirds of the cavity length.
        """
        u = np.asarray(u, dtype=float)
        cap = u / u_cap * self.cavity_apex_mm
        body = self.cavity_apex_mm + (u - u_cap) / (1.0 - u_cap) * self.cavity_length_mm
        return np.where(u < u_cap, cap, body)


def lv_to_index(frame: LVFrame, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Linear map ``(A, b)`` from LV coordinates (l, a, s) mm to fractional voxel index of ``volume``."""
    inverse = np.linalg.inv(volume.affine)
    a = inverse[:3, :3] @ frame.rotation.T
    b = inverse[:3, :3] @ frame.apex_mm + inverse[:3, 3]
    return a, b


def map_points(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``a @ p + b`` for points ``[..., 3]``, returned as coordinates ``[3, ...]`` (for map_coordinates)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.stack([a[k, 0] * x + a[k, 1] * y + a[k, 2] * z + b[k] for k in range(3)])
