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

:class:`ShortAxisStack` holds a cardiac MR short-axis stack ``[phase, slice, row, column]``
whose slices need not be evenly spaced (a missing slice stays a gap, never interpolated):
each slice keeps its own position, the stack one in-plane orientation and pixel spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FrameAxis", "FrameSchedule", "ShortAxisStack", "Volume"]


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


@dataclass(frozen=True, eq=False)
class ShortAxisStack:
    """Parallel MR slices ``[phase, slice, row, column]`` with a per-slice patient position (numpy only).

    Parameters
    ----------
    voxels : array [phase, slice, row, column]
        Pixel values after the per-image rescale (float). One phase for LGE; cine phases in
        trigger-time order (phase ``k`` of slice ``s`` was acquired at ``trigger_ms[k, s]``).
    positions_mm : array [slice, 3]
        Patient LPS position (mm) of the centre of the first pixel (row 0, column 0) of each
        slice; slices are in increasing order along ``normal`` (``positions_mm @ normal``).
    row_cosine, column_cosine : array [3]
        Direction of increasing column index (along a row) and of increasing row index, as in
        Image Orientation (Patient); ``normal = row_cosine x column_cosine``.
    pixel_spacing_mm : array [2]
        Distance between rows and between columns, mm (Pixel Spacing order).
    slice_thickness_mm : float
        Nominal slice thickness, mm (NaN when not known).
    trigger_ms : array [phase, slice]
        Trigger delay of each image after the R wave, ms (NaN when not known, e.g. LGE).
    """

    voxels: np.ndarray
    positions_mm: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing_mm: np.ndarray
    slice_thickness_mm: float
    trigger_ms: np.ndarray

    def __post_init__(self) -> None:
        if self.voxels.ndim != 4:
            raise ValueError(f"voxels must be [phase, slice, row, column], got shape {self.voxels.shape}")
        n_phases, n_slices = self.voxels.shape[:2]
        if self.positions_mm.shape != (n_slices, 3):
            raise ValueError(f"positions_mm must be [{n_slices}, 3], got {self.positions_mm.shape}")
        if self.trigger_ms.shape != (n_phases, n_slices):
            raise ValueError(f"trigger_ms must be [{n_phases}, {n_slices}], got {self.trigger_ms.shape}")
        if self.pixel_spacing_mm.shape != (2,) or np.any(self.pixel_spacing_mm <= 0):
            raise ValueError("pixel_spacing_mm must be two positive numbers")
        if abs(float(np.dot(self.row_cosine, self.column_cosine))) > 1e-3:
            raise ValueError("row_cosine and column_cosine must be orthogonal")
        if n_slices > 1 and np.any(np.diff(self.slice_positions_mm) <= 0):
            raise ValueError("slices must be in strictly increasing order along the normal")

    @property
    def n_phases(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[1])

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row_cosine x column_cosine`` (LPS); its sign says nothing about apex or base."""
        n = np.cross(self.row_cosine, self.column_cosine)
        return n / np.linalg.norm(n)

    @property
    def slice_positions_mm(self) -> np.ndarray:
        """Position of each slice along :attr:`normal`, mm (increasing)."""
        return self.positions_mm @ self.normal

    @property
    def slice_spacing_mm(self) -> float:
        """Median centre-to-centre distance between neighbouring slices, mm (NaN for one slice)."""
        if self.n_slices < 2:
            return float("nan")
        return float(np.median(np.diff(self.slice_positions_mm)))

    def gaps_after(self, factor: float = 1.5) -> np.ndarray:
        """Indices ``i`` where the step from slice ``i`` to ``i + 1`` exceeds ``factor`` x the median
        spacing: one or more slices are missing there (the stack holds no interpolated slice)."""
        if self.n_slices < 3:
            return np.zeros(0, dtype=int)
        return np.flatnonzero(np.diff(self.slice_positions_mm) > factor * self.slice_spacing_mm)

    def slice_affine(self, index: int) -> np.ndarray:
        """4x4 map of ``(0, row, column, 1)`` of slice ``index`` to patient LPS mm (axis 0 steps along the
        normal by :attr:`slice_spacing_mm`, or 1 mm for one slice)."""
        step = self.slice_spacing_mm if self.n_slices > 1 else 1.0
        affine = np.eye(4)
        affine[:3, 0] = self.normal * step
        affine[:3, 1] = self.column_cosine * self.pixel_spacing_mm[0]
        affine[:3, 2] = self.row_cosine * self.pixel_spacing_mm[1]
        affine[:3, 3] = self.positions_mm[index]
        return affine

    def as_volume(self, tolerance_mm: float = 0.1) -> Volume:
        """The stack as a gated :class:`Volume` ``[phase, slice, row, column]``: only when the slices are
        evenly spaced and not shifted in plane (within ``tolerance_mm``); else ValueError (say so
        rather than resample)."""
        affine = self.slice_affine(0)
        expected = self.positions_mm[0] + np.outer(np.arange(self.n_slices), affine[:3, 0])
        shift = float(np.max(np.linalg.norm(self.positions_mm - expected, axis=1)))
        if shift > tolerance_mm:
            raise ValueError(f"slices are {shift:.2f} mm away from an even grid (a gap, uneven spacing or an "
                             "in-plane shift): use the per-slice positions")
        return Volume(self.voxels, affine, FrameAxis.gates(self.n_phases))
