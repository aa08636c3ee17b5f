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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LVFrame", "PATIENT_ANTERIOR"]

PATIENT_ANTERIOR = np.array([0.0, -1.0, 0.0])


@dataclass(frozen=True, eq=False)
class LVFrame:
    """An LV frame: apex position and long axis in patient LPS millimetres."""

    apex_mm: np.ndarray  # (3,) epicardial or cavity apex, as the producer states
    long_axis: np.ndarray  # (3,) unit vector apex -> base

    @classmethod
    def from_points(cls, apex_mm: np.ndarray, base_mm: np.ndarray) -> "LVFrame":
        apex_mm = np.asarray(apex_mm, dtype=float)
        axis = np.asarray(base_mm, dtype=float) - apex_mm
        return cls(apex_mm, axis / np.linalg.norm(axis))

    @property
    def anterior(self) -> np.ndarray:
        l = self.long_axis / np.linalg.norm(self.long_axis)
        a = PATIENT_ANTERIOR - np.dot(PATIENT_ANTERIOR, l) * l
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
