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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FrameAxis", "FrameSchedule", "Volume"]


@dataclass(frozen=True, eq=False)
class FrameSchedule:
    """Timing of the frames of a dynamic series (PET): the one description of timed frames.

    Parameters
    ----------
    start_s : array [frames]
        Frame start in seconds after time zero (injection / scan start), increasing.
    duration_s : array [frames]
        Frame duration in seconds (> 0). Frames may leave gaps but must not overlap.
    """

    start_s: np.ndarray
    duration_s: np.ndarray

    def __post_init__(self) -> None:
        start = np.asarray(self.start_s, dtype=float).reshape(-1)
        duration = np.asarray(self.duration_s, dtype=float).reshape(-1)
        if start.shape != duration.shape or start.size == 0:
            raise ValueError("start_s and duration_s must be non-empty and of equal length")
        if not (np.all(np.isfinite(start)) and np.all(np.isfinite(duration))):
            raise ValueError("frame times must be finite")
        if np.any(duration <= 0) or np.any(start < 0):
            raise ValueError("frame durations must be > 0 s and starts >= 0 s")
        if np.any(start[1:] < start[:-1] + duration[:-1] - 1e-6):
            raise ValueError("frames must be in time order and must not overlap")
        object.__setattr__(self, "start_s", start)
        object.__setattr__(self, "duration_s", duration)

    @classmethod
    def from_durations(cls, durations_s: Sequence[float] | Sequence[tuple[int, float]],
                       start_s: float = 0.0) -> FrameSchedule:
        """Contiguous frames from durations, e.g. ``[(12, 10), (2, 30), (1, 60), (1, 120)]``."""
        flat: list[float] = []
        for item in durations_s:
            if isinstance(item, tuple):
                count, duration = item
                flat.extend([float(duration)] * int(count))
            else:
                flat.append(float(item))
        durations = np.asarray(flat, dtype=float)
        starts = start_s + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        return cls(starts, durations)

    @property
    def n_frames(self) -> int:
        return int(self.start_s.size)

    @property
    def end_s(self) -> np.ndarray:
        return self.start_s + self.duration_s

    @property
    def mid_s(self) -> np.ndarray:
        return self.start_s + 0.5 * self.duration_s

    def mean_decay_factor(self, decay_constant_per_s: float) -> np.ndarray:
        """``D_i = (1/duration) int exp(-lambda t) dt`` over each frame (relative to time zero)."""
        lam = float(decay_constant_per_s)
        if lam == 0.0:
            return np.ones(self.n_frames)
        x = lam * self.duration_s
        return np.exp(-lam * self.start_s) * (-np.expm1(-x)) / x

    def within(self, end_s: float) -> np.ndarray:
        """Boolean mask of the frames that end no later than ``end_s`` (a fit window)."""
        return self.end_s <= end_s + 1e-6

    def subset(self, mask: np.ndarray) -> FrameSchedule:
        return FrameSchedule(self.start_s[mask], self.duration_s[mask])


@dataclass(frozen=True)
class FrameAxis:
    """What axis 0 of a 4-D volume holds: ``n`` cardiac gates, or ``n`` timed dynamic frames.

    ``schedule`` (:class:`FrameSchedule`: start times and durations in seconds from the
    acquisition start) is set for dynamic frames only. Build one with :meth:`gates` or
    :meth:`dynamic`.
    """

    kind: Literal["gates", "dynamic"]
    n: int
    schedule: FrameSchedule | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("gates", "dynamic"):
            raise ValueError(f"frame kind must be 'gates' or 'dynamic', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"a frame axis needs at least one frame, got {self.n}")
        if self.kind == "gates":
            if self.schedule is not None:
                raise ValueError("gates have no frame times (they are fractions of one R-R interval)")
            return
        if self.schedule is None or self.schedule.n_frames != self.n:
            got = "none" if self.schedule is None else str(self.schedule.n_frames)
            raise ValueError(f"{self.n} dynamic frames need {self.n} start times and durations, got {got}")

    @classmethod
    def gates(cls, n: int) -> FrameAxis:
        """``n`` cardiac gates in time order."""
        return cls("gates", int(n))

    @classmethod
    def dynamic(cls, start_s: np.ndarray | list[float], duration_s: np.ndarray | list[float]) -> FrameAxis:
        """Timed frames: start times and durations in seconds from the acquisition start."""
        schedule = FrameSchedule(np.asarray(start_s, dtype=float), np.asarray(duration_s, dtype=float))
        return cls("dynamic", schedule.n_frames, schedule)

    @property
    def mid_s(self) -> np.ndarray:
        """Mid-frame times ``[n]`` in seconds from the acquisition start (dynamic frames only)."""
        if self.schedule is None:
            raise ValueError("gates have no frame times")
        return self.schedule.mid_s


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
