"""Image volumes with patient-space geometry and a frames axis (numpy only, no DICOM).

Array axes are ``[slice, row, column]`` for one 3-D image and ``[frame, slice, row, column]``
for a series of them. :class:`FrameAxis` says what the frames of a 4-D volume are:

* ``"gates"``: cardiac gates of one averaged R-R interval in time order (gated SPECT,
  gated PET, cine MR); gate ``k`` of ``n`` covers the fraction ``[k/n, (k+1)/n)`` of the
  interval. Gates have no clock times.
* ``"dynamic"``: timed frames of a dynamic acquisition (dynamic PET), each with its start
  time and duration in seconds from the acquisition start.

The 4x4 ``affine`` maps array indices to patient coordinates in millimetres in the DICOM
patient frame (LPS: +x patient left, +y posterior, +z superior)::

    xyz_mm = (affine @ [slice, row, column, 1])[:3]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FrameAxis", "Volume"]


@dataclass(frozen=True)
class FrameAxis:
    """What axis 0 of a 4-D volume holds: ``n`` cardiac gates, or ``n`` timed dynamic frames.

    ``start_s`` and ``duration_s`` (``n`` each, seconds from the acquisition start) are set
    for dynamic frames only: in time order, not overlapping (gaps allowed), durations > 0.
    Build one with :meth:`gates` or :meth:`dynamic`.
    """

    kind: Literal["gates", "dynamic"]
    n: int
    start_s: tuple[float, ...] = ()
    duration_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("gates", "dynamic"):
            raise ValueError(f"frame kind must be 'gates' or 'dynamic', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"a frame axis needs at least one frame, got {self.n}")
        if self.kind == "gates":
            if self.start_s or self.duration_s:
                raise ValueError("gates have no frame times (they are fractions of one R-R interval)")
            return
        if len(self.start_s) != self.n or len(self.duration_s) != self.n:
            raise ValueError(
                f"{self.n} dynamic frames need {self.n} start times and durations, "
                f"got {len(self.start_s)} and {len(self.duration_s)}"
            )
        start, duration = np.asarray(self.start_s), np.asarray(self.duration_s)
        if not (np.all(np.isfinite(start)) and np.all(np.isfinite(duration))):
            raise ValueError("dynamic frame times must be finite")
        if np.any(duration <= 0) or np.any(start < 0):
            raise ValueError("dynamic frames need positive durations and start times >= 0 s")
        if np.any(start[1:] < start[:-1] + duration[:-1] - 1e-6):
            raise ValueError("dynamic frames must be in time order and must not overlap")

    @classmethod
    def gates(cls, n: int) -> FrameAxis:
        """``n`` cardiac gates in time order."""
        return cls("gates", int(n))

    @classmethod
    def dynamic(cls, start_s: np.ndarray | list[float], duration_s: np.ndarray | list[float]) -> FrameAxis:
        """Timed frames: start times and durations in seconds from the acquisition start."""
        start = tuple(float(t) for t in np.ravel(start_s))
        duration = tuple(float(d) for d in np.ravel(duration_s))
        return cls("dynamic", len(start), start, duration)

    @property
    def mid_s(self) -> np.ndarray:
        """Mid-frame times ``[n]`` in seconds from the acquisition start (dynamic frames only)."""
        if self.kind != "dynamic":
            raise ValueError("gates have no frame times")
        return np.asarray(self.start_s) + 0.5 * np.asarray(self.duration_s)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image, or a 4-D series of them along a :class:`FrameAxis`, with its index-to-patient affine.

    ``frame_axis`` is None for 3-D voxels. 4-D voxels given without one hold cardiac gates
    (``FrameAxis.gates(voxels.shape[0])``, the convention of the NM reader); timed dynamic
    frames must say so.
    """

    voxels: np.ndarray  # [slice, row, column] or [frame, slice, row, column]
    affine: np.ndarray  # 4x4, index (slice, row, column) -> LPS mm
    frame_axis: FrameAxis | None = None

    def __post_init__(self) -> None:
        if self.voxels.ndim not in (3, 4):
            raise ValueError(f"voxels must be 3D or 4D, got shape {self.voxels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if self.voxels.ndim == 3:
            if self.frame_axis is not None:
                raise ValueError("a 3D volume has no frame axis")
            return
        if self.frame_axis is None:
            object.__setattr__(self, "frame_axis", FrameAxis.gates(self.voxels.shape[0]))
        elif self.frame_axis.n != self.voxels.shape[0]:
            raise ValueError(f"frame axis has {self.frame_axis.n} frames, the voxels {self.voxels.shape[0]}")

    @property
    def is_gated(self) -> bool:
        """True when the frames are cardiac gates."""
        return self.frame_axis is not None and self.frame_axis.kind == "gates"

    @property
    def is_dynamic(self) -> bool:
        """True when the frames are timed dynamic frames."""
        return self.frame_axis is not None and self.frame_axis.kind == "dynamic"

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape[-3:])

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size along (slice, row, column) in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def summed(self) -> Volume:
        """The ungated 3-D volume (sum over the gates); itself when 3-D.

        Dynamic frames are refused: whether their sum means anything depends on the unit
        (counts add up, activity concentrations do not).
        """
        if self.frame_axis is None:
            return self
        if self.frame_axis.kind != "gates":
            raise ValueError("summed() adds gates; dynamic frames need a time-weighted combination")
        return Volume(self.voxels.sum(axis=0), self.affine)

    def with_voxels(self, voxels: np.ndarray) -> Volume:
        """The same geometry and frame axis with other voxels of the same shape (e.g. filtered)."""
        voxels = np.asarray(voxels)
        if voxels.shape != self.voxels.shape:
            raise ValueError(f"voxels must keep the shape {self.voxels.shape}, got {voxels.shape}")
        return Volume(voxels, self.affine, self.frame_axis)

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Patient LPS mm of ``index[..., 3]`` (slice, row, column), fractional allowed."""
        index = np.asarray(index, dtype=float)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) index of patient points ``xyz_mm[..., 3]``."""
        inverse = np.linalg.inv(self.affine)
        xyz_mm = np.asarray(xyz_mm, dtype=float)
        return xyz_mm @ inverse[:3, :3].T + inverse[:3, 3]
