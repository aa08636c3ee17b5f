"""PET Image Storage (one instance per slice per frame) to a timed 4-D volume, or a reason in words.

Reference note: ``pet_mbf.md`` section 4 (IODs, attributes, building the 4-D volume, pitfalls).

:func:`classify_pet_series` says what a PET series is (``dynamic``, ``static``, ``gated``,
``whole_body``, ``enhanced``, ``not_pet``, ``unknown``) and the reasons why it is not a dynamic
reconstruction the MBF pipeline can use; :func:`load_dynamic_pet` builds a
:class:`DynamicPETSeries` from a usable one and raises
:class:`~node.imaging.errors.UnusableSeriesError` with those reasons otherwise.

The volume is ``[frame, slice, row, column]`` with ``FrameAxis.dynamic(start_s, duration_s)``.
Building it (section 4.3):

* frames: ``(ImageIndex - 1) // NumberOfSlices`` when every instance has Image Index (0054,1330),
  else the distinct frame start times; slices: Image Position (Patient) projected on the normal
  of Image Orientation (Patient), never Instance Number (some vendors leave it empty); Image
  Index must order the slices the same way (or exactly reversed);
* ``NumberOfSlices x NumberOfTimeSlices`` must equal the instance count; every frame holds the
  same slice positions;
* pixel values: ``stored * RescaleSlope + RescaleIntercept`` of each instance;
* frame timing by a named vendor variant (:data:`TIMING_VARIANTS`), chosen from Manufacturer
  (0008,0070) or given: Actual Frame Duration (0018,1242) is milliseconds in all of them; the
  start of a frame is read from Frame Reference Time (0054,1300) or the Acquisition Date/Time.
  Slices of one frame must agree on start (0.5 s) and duration (1 ms); frames must not overlap.
  Missing or non-numeric timing refuses the series naming the attribute: it is never guessed;
* time zero: the Radiopharmaceutical Start DateTime (0018,1078) (or Series/Study Date with
  Radiopharmaceutical Start Time (0018,1072)) when present and not after the first frame and at
  most :data:`MAX_INJECTION_TO_SCAN_S` before it, else the first frame start (``time_zero`` says
  which). Siemens writes the dose-measurement time there, not the injection (section 4.4);
  image-derived input functions do not depend on time zero.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.radiopharmaceuticals import PET_TRACERS, pet_tracer_from_code, pet_tracer_from_text
from node.imaging.states import acquisition_state
from node.imaging.volume import FrameAxis, Volume

__all__ = [
    "ENHANCED_PET_IMAGE_STORAGE",
    "LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE",
    "MAX_INJECTION_TO_SCAN_S",
    "PET_IMAGE_STORAGE",
    "TIMING_VARIANTS",
    "DynamicPETSeries",
    "PETSeriesClass",
    "classify_pet_series",
    "load_dynamic_pet",
    "timing_variant_for",
]

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128.1"

#: the vendor frame-timing conventions (pet_mbf.md 4.2, 4.4), by name
TIMING_VARIANTS: dict[str, str] = {
    "ge": "Frame Reference Time (0054,1300) is the frame start, in ms after Series Date/Time",
    "siemens": "Acquisition Date/Time (0008,002A or 0008,0022 + 0008,0032) is the frame start "
               "(Frame Reference Time is decay-weighted and not used)",
    "philips": "Frame Reference Time (0054,1300) is the frame middle, in ms after Series Date/Time",
}

#: longest accepted time from the radiopharmaceutical start to the first frame (else time zero = first frame)
MAX_INJECTION_TO_SCAN_S = 4 * 3600.0

_SERIES_TYPES = {"DYNAMIC": "dynamic", "STATIC": "static", "GATED": "gated", "WHOLE BODY": "whole_body"}
_START_TOLERANCE_S = 0.5
_DURATION_TOLERANCE_S = 0.001


@dataclass(frozen=True)
class PETSeriesClass:
    """What a PET series is and why it cannot be used as a dynamic reconstruction (no reasons: usable).

    ``kind``: ``dynamic``, ``static``, ``gated``, ``whole_body`` (Series Type (0054,1000) value 1),
    ``enhanced`` (multi-frame Enhanced PET, not supported yet), ``not_pet`` or ``unknown``.
    ``attributes[i]`` is the keyword of the attribute ``reasons[i]`` names.
    """

    kind: str
    reasons: tuple[str, ...]
    attributes: tuple[str, ...]
    timing: str | None = None

    @property
    def usable(self) -> bool:
        return not self.reasons

    @property
    def description(self) -> str:
        """The classification in words, e.g. ``"static PET: SeriesType (0054,1000) ..."``."""
        name = {"whole_body": "whole-body", "not_pet": "not PET", "enhanced": "Enhanced PET"}.get(self.kind, self.kind)
        if self.usable:
            return f"{name} PET, usable as a dynamic reconstruction"
        return f"{name} PET: " + "; ".join(self.reasons)


@dataclass(frozen=True)
class DynamicPETSeries:
    """One dynamic PET reconstruction with what the MBF pipeline needs to know about it.

    ``volume``: ``[frame, slice, row, column]`` in ``units`` (Units (0054,1001), e.g. ``BQML``)
    with ``FrameAxis.dynamic``: frame starts and durations in seconds after ``time_zero``
    (``"radiopharmaceutical_start"`` or ``"first_frame"``). ``decay_correction`` is Decay
    Correction (0054,1102) (``NONE``, ``START``, ``ADMIN``); ``decay_reference_s`` the time the
    values are decay-corrected to, in seconds after time zero (None when not corrected or not
    known). ``half_life_s`` from Radionuclide Half Life (0018,1075), else the tracer table.
    ``notes`` are warnings that do not prevent use.
    """

    volume: Volume
    units: str
    tracer: str | None
    half_life_s: float
    decay_correction: str
    decay_reference_s: float | None
    time_zero: str
    timing: str
    state: str
    corrected_image: tuple[str, ...]
    study_uid: str
    series_uid: str
    series_description: str
    frame_of_reference_uid: str | None
    sop_instance_uids: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return int(self.volume.voxels.shape[0])

    @property
    def start_s(self) -> np.ndarray:
        assert self.volume.frame_axis is not None and self.volume.frame_axis.schedule is not None
        return self.volume.frame_axis.schedule.start_s

    @property
    def duration_s(self) -> np.ndarray:
        assert self.volume.frame_axis is not None and self.volume.frame_axis.schedule is not None
        return self.volume.frame_axis.schedule.duration_s


# --------------------------------------------------------------------------- small readers

def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _number(ds: Dataset, keyword: str, tag: str, what: str) -> float:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise UnusableSeriesError(f"{keyword} ({tag}) is missing from instance {_text(ds, 'SOPInstanceUID') or '?'}: "
                                  f"{what} cannot be known", keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UnusableSeriesError(f"{keyword} ({tag}) is not a number ({value!r}): {what} cannot be known",
                                  keyword) from None
    if not np.isfinite(number):
        raise UnusableSeriesError(f"{keyword} ({tag}) is not finite ({value!r})", keyword)
    return number


def _time_of_day(text: str) -> timedelta | None:
    match = re.fullmatch(r"(\d{2}):?(\d{2})?:?(\d{2})?(\.\d+)?", text.strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0),
                     microseconds=int(round(float(fraction or 0.0) * 1e6)))


def _date_time(date: str, time: str) -> datetime | None:
    if not re.fullmatch(r"\d{8}", date.strip()):
        return None
    offset = _time_of_day(time)
    if offset is None:
        return None
    try:
        return datetime.strptime(date.strip(), "%Y%m%d") + offset
    except ValueError:
        return None


def _dt(text: str) -> datetime | None:
    text = re.split(r"[+-]", text.strip())[0]
    if len(text) < 8:
        return None
    return _date_time(text[:8], text[8:] or "00")


def _series_reference(ds: Dataset) -> datetime | None:
    return _date_time(_text(ds, "SeriesDate") or _text(ds, "StudyDate"), _text(ds, "SeriesTime"))


def _acquisition_start(ds: Dataset) -> datetime | None:
    if _text(ds, "AcquisitionDateTime"):
        return _dt(_text(ds, "AcquisitionDateTime"))
    date = _text(ds, "AcquisitionDate") or _text(ds, "SeriesDate") or _text(ds, "StudyDate")
    return _date_time(date, _text(ds, "AcquisitionTime"))


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else None


def _radiopharmaceutical_start(ds: Dataset) -> datetime | None:
    item = _radiopharmaceutical(ds)
    if item is None:
        return None
    if _text(item, "RadiopharmaceuticalStartDateTime"):
        return _dt(_text(item, "RadiopharmaceuticalStartDateTime"))
    date = _text(ds, "SeriesDate") or _text(ds, "StudyDate")
    return _date_time(date, _text(item, "RadiopharmaceuticalStartTime"))


def _tracer(ds: Dataset) -> str | None:
    item = _radiopharmaceutical(ds)
    if item is None:
        return None
    codes = item.get("RadiopharmaceuticalCodeSequence")
    if codes:
        key = pet_tracer_from_code(_text(codes[0], "CodeValue"))
        if key:
            return key
    return pet_tracer_from_text(_text(item, "Radiopharmaceutical"))


def timing_variant_for(ds: Dataset) -> str | None:
    """The vendor timing variant (a key of :data:`TIMING_VARIANTS`) from Manufacturer (0008,0070), or None."""
    manufacturer = _text(ds, "Manufacturer").upper()
    if manufacturer.startswith("GE") or "GENERAL ELECTRIC" in manufacturer:
        return "ge"
    if "SIEMENS" in manufacturer or "CTI" in manufacturer.split():
        return "siemens"
    if "PHILIPS" in manufacturer or "ADAC" in manufacturer:
        return "philips"
    return None


# --------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class _Layout:
    order: np.ndarray  # [frame, slice] -> index into datasets
    start_s: np.ndarray  # [frame], absolute seconds after `origin` (or after the series reference)
    duration_s: np.ndarray
    origin: datetime | None  # the datetime start_s counts from, when known
    affine: np.ndarray


def _frame_start(ds: Dataset, timing: str, duration_s: float) -> tuple[float, datetime | None]:
    """Frame start in seconds after the returned origin (None: after an unknown series reference)."""
    if timing == "siemens":
        start = _acquisition_start(ds)
        if start is None:
            raise UnusableSeriesError(
                "AcquisitionDateTime (0008,002A) or AcquisitionDate (0008,0022) with AcquisitionTime (0008,0032) is "
                f"missing or unreadable in instance {_text(ds, 'SOPInstanceUID') or '?'}: the frame start of the "
                "Siemens timing variant cannot be known", "AcquisitionTime")
        return 0.0, start
    reference_ms = _number(ds, "FrameReferenceTime", "0054,1300", "the frame time")
    offset = reference_ms / 1000.0 - (0.5 * duration_s if timing == "philips" else 0.0)
    return offset, _series_reference(ds)


def _geometry(datasets: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row cosines, column cosines, pixel spacing [row, column], positions [n, 3]) of every instance."""
    first = datasets[0]
    orientation = _values(first.get("ImageOrientationPatient"))
    spacing_value = _values(first.get("PixelSpacing"))
    try:
        iop = np.array([float(v) for v in orientation])
        spacing = np.array([float(v) for v in spacing_value])
    except (TypeError, ValueError):
        raise UnusableSeriesError("ImageOrientationPatient (0020,0037) or PixelSpacing (0028,0030) is not numeric",
                                  "ImageOrientationPatient") from None
    if iop.size != 6 or not np.all(np.isfinite(iop)):
        raise UnusableSeriesError("ImageOrientationPatient (0020,0037) is missing or does not hold 6 numbers",
                                  "ImageOrientationPatient")
    row_cos, col_cos = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3
            or abs(float(np.dot(row_cos, col_cos))) > 1e-3):
        raise UnusableSeriesError(f"ImageOrientationPatient (0020,0037) {list(iop)} is not two orthogonal unit "
                                  "vectors", "ImageOrientationPatient")
    if spacing.size != 2 or not np.all(spacing > 0):
        raise UnusableSeriesError("PixelSpacing (0028,0030) is missing or not two positive numbers", "PixelSpacing")
    positions = np.empty((len(datasets), 3))
    for i, ds in enumerate(datasets):
        other = _values(ds.get("ImageOrientationPatient"))
        try:
            if not np.allclose([float(v) for v in other], iop, atol=1e-4):
                raise ValueError
            position = [float(v) for v in _values(ds.get("ImagePositionPatient"))]
        except (TypeError, ValueError):
            raise UnusableSeriesError("ImageOrientationPatient (0020,0037) differs between instances of the series",
                                      "ImageOrientationPatient") from None
        if len(position) != 3:
            raise UnusableSeriesError(f"ImagePositionPatient (0020,0032) is missing or not 3 numbers in instance "
                                      f"{_text(ds, 'SOPInstanceUID') or '?'}", "ImagePositionPatient")
        positions[i] = position
    return row_cos, col_cos, spacing, positions


def _layout(datasets: Sequence[Dataset], timing: str, n_slices: int, n_frames: int) -> _Layout:
    durations = np.array([_number(ds, "ActualFrameDuration", "0018,1242", "the frame duration") / 1000.0
                          for ds in datasets])
    if np.any(durations <= 0):
        raise UnusableSeriesError("ActualFrameDuration (0018,1242) is zero or negative", "ActualFrameDuration")
    starts_and_origins = [_frame_start(ds, timing, d) for ds, d in zip(datasets, durations)]
    origins = {origin for _, origin in starts_and_origins}
    if len(origins) == 1:
        origin = next(iter(origins))
        starts = np.array([start for start, _ in starts_and_origins])
    elif None in origins:
        raise UnusableSeriesError("SeriesDate (0008,0021) / SeriesTime (0008,0031) is missing in some instances only: "
                                  "frame times do not share one reference", "SeriesTime")
    else:  # per-instance times of day (Siemens) or per-instance series references: count from the earliest
        origin = min(o for o in origins if o is not None)
        starts = np.array([start + (o - origin).total_seconds() for start, o in starts_and_origins if o is not None])

    row_cos, col_cos, spacing, positions = _geometry(datasets)
    normal = np.cross(row_cos, col_cos)
    along = positions @ normal

    # frames: by Image Index when every instance has one, else by distinct start time
    indices = [ds.get("ImageIndex") for ds in datasets]
    if all(v is not None and str(v).strip() != "" for v in indices):
        try:
            image_index = np.array([int(v) for v in indices])
        except (TypeError, ValueError):
            raise UnusableSeriesError("ImageIndex (0054,1330) holds a value that is not an integer",
                                      "ImageIndex") from None
        if np.unique(image_index).size != len(datasets) or image_index.min() < 1 or image_index.max() > len(datasets):
            raise UnusableSeriesError(f"ImageIndex (0054,1330) values must be 1..{len(datasets)} without repeats",
                                      "ImageIndex")
        frame_of = (image_index - 1) // n_slices
        slice_rank = (image_index - 1) % n_slices
    else:
        image_index = None
        distinct = np.unique(np.round(starts / _START_TOLERANCE_S))
        if distinct.size != n_frames:
            raise UnusableSeriesError(
                f"ImageIndex (0054,1330) is absent and the frame start times ({TIMING_VARIANTS[timing]}) give "
                f"{distinct.size} distinct frames, but NumberOfTimeSlices (0054,0101) is {n_frames}",
                "NumberOfTimeSlices")
        frame_of = np.searchsorted(distinct, np.round(starts / _START_TOLERANCE_S))
        slice_rank = np.zeros(len(datasets), dtype=int)

    order = np.empty((n_frames, n_slices), dtype=int)
    reference_along: np.ndarray | None = None
    frame_start = np.empty(n_frames)
    frame_duration = np.empty(n_frames)
    for frame in range(n_frames):
        members = np.flatnonzero(frame_of == frame)
        if members.size != n_slices:
            raise UnusableSeriesError(
                f"time frame {frame + 1} holds {members.size} instances but NumberOfSlices (0054,0081) is {n_slices}",
                "NumberOfSlices")
        sorted_members = members[np.argsort(along[members], kind="stable")]
        if image_index is not None:
            ranks = slice_rank[sorted_members]
            if not (np.all(np.diff(ranks) > 0) or np.all(np.diff(ranks) < 0)):
                raise UnusableSeriesError(
                    f"ImageIndex (0054,1330) orders the slices of frame {frame + 1} differently from "
                    "ImagePositionPatient (0020,0032): slice and time indices are inconsistent", "ImageIndex")
        positions_here = along[sorted_members]
        if reference_along is None:
            reference_along = positions_here
            if np.any(np.diff(positions_here) < 1e-3):
                raise UnusableSeriesError(
                    f"ImagePositionPatient (0020,0032) repeats a slice position in frame {frame + 1}",
                    "ImagePositionPatient")
        elif not np.allclose(positions_here, reference_along, atol=1e-2):
            raise UnusableSeriesError(
                f"ImagePositionPatient (0020,0032): frame {frame + 1} has other slice positions than frame 1",
                "ImagePositionPatient")
        if np.ptp(durations[members]) > _DURATION_TOLERANCE_S:
            raise UnusableSeriesError(
                f"ActualFrameDuration (0018,1242) differs across the slices of frame {frame + 1} "
                f"({durations[members].min() * 1000:g} to {durations[members].max() * 1000:g} ms)",
                "ActualFrameDuration")
        if np.ptp(starts[members]) > _START_TOLERANCE_S:
            attribute = "AcquisitionTime" if timing == "siemens" else "FrameReferenceTime"
            tag = "0008,0032" if timing == "siemens" else "0054,1300"
            raise UnusableSeriesError(
                f"{attribute} ({tag}) differs across the slices of frame {frame + 1} by "
                f"{np.ptp(starts[members]):.3g} s", attribute)
        order[frame] = sorted_members
        frame_start[frame] = float(np.mean(starts[members]))
        frame_duration[frame] = float(durations[members[0]])

    by_time = np.argsort(frame_start, kind="stable")
    order, frame_start, frame_duration = order[by_time], frame_start[by_time], frame_duration[by_time]
    overlap = frame_start[1:] - (frame_start[:-1] + frame_duration[:-1])
    if np.any(overlap < -_START_TOLERANCE_S):
        i = int(np.argmin(overlap))
        attribute = "AcquisitionTime" if timing == "siemens" else "FrameReferenceTime"
        tag = "0008,0032" if timing == "siemens" else "0054,1300"
        raise UnusableSeriesError(
            f"frames overlap: frame {i + 2} starts {-overlap[i]:.3g} s before frame {i + 1} ends "
            f"({attribute} ({tag}) and ActualFrameDuration (0018,1242); {TIMING_VARIANTS[timing]})", attribute)

    assert reference_along is not None
    affine = np.eye(4)
    dz = float(np.median(np.diff(reference_along))) if n_slices > 1 else 1.0
    if n_slices > 2 and np.ptp(np.diff(reference_along)) > 1e-2 * abs(dz) + 1e-3:
        raise UnusableSeriesError("ImagePositionPatient (0020,0032): slices are not evenly spaced",
                                  "ImagePositionPatient")
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = row_cos * spacing[1]
    affine[:3, 3] = positions[int(order[0, 0])]
    return _Layout(order, frame_start, frame_duration, origin, affine)


# --------------------------------------------------------------------------- classification

def _analyse(datasets: Sequence[Dataset], timing: str | None) -> tuple[PETSeriesClass, _Layout | None]:
    reasons: list[str] = []
    attributes: list[str] = []

    def refuse(kind: str, reason: str, attribute: str, variant: str | None = None) -> tuple[PETSeriesClass, None]:
        return PETSeriesClass(kind, tuple(reasons) + (reason,), tuple(attributes) + (attribute,), variant), None

    if not datasets:
        return refuse("unknown", "no instances", "SOPInstanceUID")
    sop_classes = {_text(ds, "SOPClassUID") for ds in datasets}
    if sop_classes & {ENHANCED_PET_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE}:
        uid = sorted(sop_classes & {ENHANCED_PET_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE})[0]
        name = "Enhanced PET Image Storage" if uid == ENHANCED_PET_IMAGE_STORAGE else "Legacy Converted Enhanced PET"
        return refuse("enhanced", f"SOPClassUID (0008,0016) is {uid} ({name}): multi-frame PET is not supported yet; "
                      f"send PET Image Storage ({PET_IMAGE_STORAGE}), one instance per slice per frame", "SOPClassUID")
    if sop_classes != {PET_IMAGE_STORAGE} or any(_text(ds, "Modality").upper() != "PT" for ds in datasets):
        shown = ", ".join(sorted(sop_classes)) or "absent"
        modalities = ", ".join(sorted({_text(ds, "Modality") or "absent" for ds in datasets}))
        return refuse("not_pet", f"SOPClassUID (0008,0016) is {shown} and Modality (0008,0060) {modalities}: not "
                      f"PET Image Storage ({PET_IMAGE_STORAGE}) with Modality PT", "SOPClassUID")
    if len({_text(ds, "SeriesInstanceUID") for ds in datasets}) != 1:
        return refuse("unknown", "SeriesInstanceUID (0020,000E) differs between the instances: pass one series",
                      "SeriesInstanceUID")

    first = datasets[0]
    series_type = [str(v).strip().upper() for v in _values(first.get("SeriesType"))]
    value1 = series_type[0] if series_type else ""
    kind = _SERIES_TYPES.get(value1, "unknown")
    if any([str(v).strip().upper() for v in _values(ds.get("SeriesType"))][:1] != series_type[:1] for ds in datasets):
        reasons.append("SeriesType (0054,1000) value 1 differs between the instances")
        attributes.append("SeriesType")
    elif kind == "unknown":
        reasons.append(f"SeriesType (0054,1000) is {chr(92).join(series_type) or 'absent'}: value 1 must be DYNAMIC")
        attributes.append("SeriesType")
    elif kind != "dynamic":
        what = {"static": "a static (summed) image", "gated": "a cardiac-gated series",
                "whole_body": "a whole-body series"}[kind]
        reasons.append(f"SeriesType (0054,1000) value 1 is {value1!r}: {what}, not a dynamic series "
                       "(DYNAMIC is needed for blood-flow kinetics)")
        attributes.append("SeriesType")

    corrections = [str(v).strip().upper() for v in _values(first.get("CorrectedImage"))]
    if "ATTN" not in corrections:
        reasons.append(f"CorrectedImage (0028,0051) is {chr(92).join(corrections) or 'absent'}: no ATTN, the images "
                       "are not attenuation-corrected")
        attributes.append("CorrectedImage")
    units = _text(first, "Units").upper()
    if units != "BQML":
        reasons.append(f"Units (0054,1001) is {units or 'absent'!r}: activity concentration (BQML) is needed")
        attributes.append("Units")

    if kind == "dynamic":
        try:
            n_frames = int(first.get("NumberOfTimeSlices") or 0)
            n_slices = int(first.get("NumberOfSlices") or 0)
        except (TypeError, ValueError):
            n_frames = n_slices = 0
        if n_frames < 2:
            reasons.append(f"NumberOfTimeSlices (0054,0101) is {first.get('NumberOfTimeSlices', 'absent')}: "
                           "a dynamic series needs at least 2 time frames")
            attributes.append("NumberOfTimeSlices")
        if n_slices < 2:
            reasons.append(f"NumberOfSlices (0054,0081) is {first.get('NumberOfSlices', 'absent')}: a single slice is "
                           "not a volume")
            attributes.append("NumberOfSlices")
        elif n_frames >= 1 and n_slices * n_frames != len(datasets):
            reasons.append(f"{len(datasets)} instance(s) received but NumberOfSlices (0054,0081) {n_slices} x "
                           f"NumberOfTimeSlices (0054,0101) {n_frames} = {n_slices * n_frames} are expected")
            attributes.append("NumberOfSlices")
        if not reasons:
            variant = timing or timing_variant_for(first)
            if variant is None:
                return refuse(kind, f"Manufacturer (0008,0070) is {_text(first, 'Manufacturer') or 'absent'!r}: the "
                              "meaning of Frame Reference Time (frame start, middle or decay-weighted) differs by "
                              f"vendor; name the timing variant ({', '.join(TIMING_VARIANTS)})", "Manufacturer")
            if variant not in TIMING_VARIANTS:
                raise ValueError(f"timing must be one of {sorted(TIMING_VARIANTS)}, got {variant!r}")
            try:
                layout = _layout(datasets, variant, n_slices, n_frames)
            except UnusableSeriesError as exc:
                return refuse(kind, exc.reason, exc.attribute or "", variant)
            return PETSeriesClass(kind, (), (), variant), layout
    return PETSeriesClass(kind, tuple(reasons), tuple(attributes)), None


def classify_pet_series(datasets: Sequence[Dataset] | Dataset, timing: str | None = None) -> PETSeriesClass:
    """What the PET series ``datasets`` is, and the reasons it is not a usable dynamic reconstruction.

    Series kind, attenuation correction, units and instance counts are all reported; frame
    timing and geometry are checked (first fault reported) once those are right.

    ``timing`` names a :data:`TIMING_VARIANTS` key; None picks it from Manufacturer (0008,0070).
    Pixel data are not decoded.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    return _analyse(list(datasets), timing)[0]


def _pixels(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise UnusableSeriesError(f"PixelData (7FE0,0010) is missing in instance {_text(ds, 'SOPInstanceUID') or '?'}",
                                  "PixelData")
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # decoders raise many types
        raise UnusableSeriesError(f"PixelData (7FE0,0010) cannot be decoded: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}", "PixelData") from None
    if pixels.ndim != 2:
        raise UnusableSeriesError(f"PixelData (7FE0,0010) decodes to shape {pixels.shape}, expected one "
                                  f"{ds.get('Rows')}x{ds.get('Columns')} image", "PixelData")
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope not in (None, ""):
        pixels = pixels * float(slope)
    if intercept not in (None, ""):
        pixels = pixels + float(intercept)
    return pixels


def load_dynamic_pet(datasets: Sequence[Dataset], timing: str | None = None) -> DynamicPETSeries:
    """Build the timed 4-D volume of one dynamic PET series (PET Image Storage instances, any order).

    Raises :class:`UnusableSeriesError` with the reasons of :func:`classify_pet_series` (the
    attribute of the first) when the series is not a usable dynamic reconstruction.
    """
    datasets = list(datasets)
    verdict, layout = _analyse(datasets, timing)
    if layout is None or verdict.timing is None:
        raise UnusableSeriesError(verdict.description, verdict.attributes[0] if verdict.attributes else None)
    first = datasets[int(layout.order[0, 0])]
    shape = _pixels(first).shape
    voxels = np.empty(layout.order.shape + shape)
    for frame, slice_ in np.ndindex(*layout.order.shape):
        pixels = _pixels(datasets[int(layout.order[frame, slice_])])
        if pixels.shape != shape:
            raise UnusableSeriesError(f"Rows (0028,0010) x Columns (0028,0011) differ between instances "
                                      f"({pixels.shape} vs {shape})", "Rows")
        voxels[frame, slice_] = pixels

    notes: list[str] = []
    tracer = _tracer(first)
    item = _radiopharmaceutical(first)
    half_life_value = item.get("RadionuclideHalfLife") if item is not None else None
    if half_life_value not in (None, ""):
        half_life = float(half_life_value)
        if tracer is not None and abs(half_life / PET_TRACERS[tracer].half_life_s - 1) > 0.02:
            notes.append(f"RadionuclideHalfLife (0018,1075) {half_life:g} s differs by more than 2 % from "
                         f"{PET_TRACERS[tracer].display_name} ({PET_TRACERS[tracer].half_life_s:g} s)")
    elif tracer is not None:
        half_life = PET_TRACERS[tracer].half_life_s
        notes.append("RadionuclideHalfLife (0018,1075) is absent: half-life from the tracer table")
    else:
        raise UnusableSeriesError("RadionuclideHalfLife (0018,1075) is absent and the tracer is not recognised "
                                  "(RadiopharmaceuticalInformationSequence (0054,0016)): decay cannot be handled",
                                  "RadionuclideHalfLife")
    if tracer is None:
        notes.append("tracer not recognised from the Radiopharmaceutical Code Sequence (0054,0304) or text (0018,0031)")

    # time zero: radiopharmaceutical start when plausible, else the first frame
    zero_offset = float(layout.start_s[0])
    time_zero = "first_frame"
    injection = _radiopharmaceutical_start(first)
    if injection is not None and layout.origin is not None:
        before_scan = (layout.origin - injection).total_seconds() + float(layout.start_s[0])
        if 0.0 <= before_scan <= MAX_INJECTION_TO_SCAN_S:
            zero_offset = float(layout.start_s[0]) - before_scan
            time_zero = "radiopharmaceutical_start"
        else:
            notes.append(f"Radiopharmaceutical start is {before_scan:.0f} s before the first frame: not used as time "
                         "zero (the first frame start is)")
    elif injection is not None:
        notes.append("SeriesDate (0008,0021) / SeriesTime (0008,0031) is absent: the radiopharmaceutical start cannot "
                     "be related to the frames; time zero is the first frame start")
    else:
        notes.append("Radiopharmaceutical Start (Date)Time (0018,1078/0018,1072) is absent: time zero is the first "
                     "frame start")
    start = np.maximum(layout.start_s - zero_offset, 0.0)

    decay = _text(first, "DecayCorrection").upper() or "NONE"
    decay_reference: float | None = None
    if decay == "START" and layout.origin is not None and _series_reference(first) is not None:
        reference = _series_reference(first)
        assert reference is not None
        decay_reference = (reference - layout.origin).total_seconds() - zero_offset
    elif decay == "ADMIN" and time_zero == "radiopharmaceutical_start":
        decay_reference = 0.0

    volume = Volume(voxels, layout.affine, FrameAxis.dynamic(start, layout.duration_s))
    return DynamicPETSeries(
        volume=volume,
        units=_text(first, "Units").upper(),
        tracer=tracer,
        half_life_s=half_life,
        decay_correction=decay,
        decay_reference_s=decay_reference,
        time_zero=time_zero,
        timing=verdict.timing,
        state=acquisition_state(first),
        corrected_image=tuple(str(v).strip().upper() for v in _values(first.get("CorrectedImage"))),
        study_uid=_text(first, "StudyInstanceUID"),
        series_uid=_text(first, "SeriesInstanceUID"),
        series_description=_text(first, "SeriesDescription"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID") or None,
        sop_instance_uids=tuple(_text(datasets[int(i)], "SOPInstanceUID") for i in layout.order.reshape(-1)),
        notes=tuple(notes),
    )
