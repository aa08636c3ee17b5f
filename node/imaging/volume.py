"""Image volumes with patient-space geometry (numpy only, no DICOM).

Array axes are ``[slice, row, column]`` (gated data: ``[gate, slice, row,
column]``). The 4x4 ``affine`` maps array indices to patient coordinates in
millimetres in the DICOM patient frame (LPS: +x patient left, +y posterior,
+z superior)::

    xyz_mm = (affine @ [slice, row, column, 1])[:3]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Volume"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D (or gated 4D) image with its index-to-patient affine."""

    voxels: np.ndarray  # [slice, row, column] or [gate, slice, row, column]
    affine: np.ndarray  # 4x4, index (slice, row, column) -> LPS mm

    def __post_init__(self) -> None:
        if self.voxels.ndim not in (3, 4):
            raise ValueError(f"voxels must be 3D or 4D, got shape {self.voxels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def is_gated(self) -> bool:
        return self.voxels.ndim == 4

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape[-3:])  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along (slice, row, column) in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def summed(self) -> "Volume":
        """The ungated volume (sum over gates); itself when not gated."""
        if not self.is_gated:
            return self
        return Volume(self.voxels.sum(axis=0), self.affine)

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Patient LPS mm of ``index[..., 3]`` (slice, row, column), fractional allowed."""
        index = np.asarray(index, dtype=float)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) index of patient points ``xyz_mm[..., 3]``."""
        inverse = np.linalg.inv(self.affine)
        xyz_mm = np.asarray(xyz_mm, dtype=float)
        return xyz_mm @ inverse[:3, :3].T + inverse[:3, 3]
