"""Dynamic PET (PET Image Storage or Enhanced PET Image Storage) to a timed 4-D volume, or a reason in words.

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

Enhanced PET Image Storage (PS3.3 A.56, C.8.22: one multi-frame instance, or several, holding
every slice of every time frame) is read to the same :class:`DynamicPETSeries`:

* each frame's attributes come from its item of the Per-frame Functional Groups Sequence
  (5200,9230), else from the Shared Functional Groups Sequence (5200,9229);
* frame timing (:data:`ENHANCED_TIMING`): Frame Acquisition DateTime (0018,9074) of the Frame
  Content Sequence (0020,9111) is the frame start, Frame Acquisition Duration (0018,9220) its
  length in ms (Frame Reference DateTime, a representative time, is not used);
* time frames: Temporal Position Index (0020,9128) when every frame has one (it must order the
  time frames as their starts do), else the distinct frame starts; slices: Plane Position
  (Patient) projected on the normal of Plane Orientation (Patient); In-Stack Position Number
  (0020,9057), when every frame has one, must order them the same way (or exactly reversed), in
  one Stack ID (0020,9056); every time frame holds the same slices;
* pixel values: Rescale Slope/Intercept of each frame's Pixel Value Transformation Sequence
  (0028,9145);
* kind: Image Type (0008,0008) value 3 (``DYNAMIC``; ``STATIC``, ``WHOLE_BODY``,
  ``CARDIAC_GATED`` are refused), no frame's Frame Type (0008,9007) value 3 saying otherwise and
  no Cardiac Synchronization Technique (0018,9037); units: the Measurement Units Code Sequence
  (0040,08EA) of the Real World Value Mapping (UCUM ``Bq/ml`` is ``BQML``); corrections: the
  flags of the Enhanced PET Corrections module (Attenuation Corrected (0018,9759) ``YES`` is
  needed) as Corrected Image terms; decay: Decay Corrected (0018,9758) with Decay Correction
  DateTime (0018,9701), ``ADMIN`` when that is the radiopharmaceutical start, else ``START``.

The frame grouping and its checks, the geometry, time zero, tracer, half-life and decay
reference are one code path for both IODs. Legacy Converted Enhanced PET is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.dicom_tracer import tracer_of
from node.imaging.dicom_values import (
    as_list,
    decoded_pixels,
    instance_words,
    native_stored_values,
    raw_number,
    text_value,
)
from node.imaging.errors import UnusableSeriesError
from node.imaging.radiopharmaceuticals import PET_TRACERS
from node.imaging.states import acquisition_state
from node.imaging.volume import FrameAxis, Volume

__all__ = [
    "ENHANCED_PET_IMAGE_STORAGE",
    "ENHANCED_TIMING",
    "LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE",
    "MAX_INJECTION_TO_SCAN_S",
    "PET_IMAGE_STORAGE",
    "TIMING_VARIANTS",
    "DynamicPETSeries",
    "PETSeriesClass",
    "classify_pet_series",
    "expected_instance_count",
    "load_dynamic_pet",
    "pet_series_kind",
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

#: the frame timing of Enhanced PET (one standard rule, no vendor variants): ``timing`` of its series
ENHANCED_TIMING = "enhanced"
_ENHANCED_TIMING_RULE = ("Frame Acquisition DateTime (0018,9074) is the frame start and Frame Acquisition Duration "
                         "(0018,9220) its length in ms")

#: longest accepted time from the radiopharmaceutical start to the first frame (else time zero = first frame)
MAX_INJECTION_TO_SCAN_S = 4 * 3600.0

_SERIES_TYPES = {"DYNAMIC": "dynamic", "STATIC": "static", "GATED": "gated", "WHOLE BODY": "whole_body"}
#: Enhanced PET: Image Type (0008,0008) value 3 (PS3.3 C.8.16.1.3 Image Flavor) to the series kind
_IMAGE_FLAVOURS = {"DYNAMIC": "dynamic", "STATIC": "static", "WHOLE_BODY": "whole_body", "CARDIAC_GATED": "gated",
                   "CARDRESP_GATED": "gated"}
_NOT_DYNAMIC = {"static": "a static (summed) image", "gated": "a cardiac-gated series", "whole_body": "a whole-body series"}
#: Enhanced PET Corrections module flags (C.8.22.6) and the Corrected Image (0028,0051) term each stands for
_CORRECTION_FLAGS: tuple[tuple[str, str], ...] = (
    ("DecayCorrected", "DECY"), ("AttenuationCorrected", "ATTN"), ("ScatterCorrected", "SCAT"),
    ("DeadTimeCorrected", "DTIM"), ("GantryMotionCorrected", "MOTN"), ("PatientMotionCorrected", "PMOT"),
    ("CountLossNormalizationCorrected", "CLN"), ("RandomsCorrected", "RAN"),
    ("NonUniformRadialSamplingCorrected", "RADL"), ("SensitivityCalibrated", "DCAL"),
    ("DetectorNormalizationCorrection", "NORM"),
)
#: Real World Value Mapping units (UCUM, CID 84 "PET Units") to the Units (0054,1001) terms of PET Image Storage
_UCUM_UNITS = {"Bq/ml": "BQML", "{counts}": "CNTS", "{counts}/s": "CPS", "{propcounts}": "PROPCNTS",
               "{propcounts}/s": "PROPCPS", "ml/min/g": "MLMING", "ml/g": "MLG", "g/ml{SUVbw}": "GML", "%": "PCNT"}
_START_TOLERANCE_S = 0.5
_DURATION_TOLERANCE_S = 0.001


@dataclass(frozen=True)
class PETSeriesClass:
    """What a PET series is and why it cannot be used as a dynamic reconstruction (no reasons: usable).

    ``kind``: ``dynamic``, ``static``, ``gated``, ``whole_body`` (Series Type (0054,1000) value 1;
    Image Type (0008,0008) value 3 for Enhanced PET), ``enhanced`` (Legacy Converted Enhanced PET,
    not read, or Enhanced PET mixed with other SOP classes), ``not_pet`` or ``unknown``.
    ``attributes[i]`` is the keyword of the attribute ``reasons[i]`` names. ``timing``: the
    :data:`TIMING_VARIANTS` key, or :data:`ENHANCED_TIMING`, the frame times were read with.
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
    ``timing``: the :data:`TIMING_VARIANTS` key or :data:`ENHANCED_TIMING`. ``corrected_image``:
    Corrected Image (0028,0051) terms (for Enhanced PET, those of its correction flags).
    ``sop_instance_uids``: one per image in ``[frame, slice]`` order (PET Image Storage), or the
    multi-frame instances in the order their frames first appear (Enhanced PET).
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

def _number(ds: Dataset, keyword: str, tag: str, what: str, where: str | None = None) -> float:
    """``keyword`` of ``ds`` as a finite number; ``where`` names the image in the reason (default: the instance)."""
    value = raw_number(ds, keyword)
    if value is None or str(value).strip() == "":
        raise UnusableSeriesError(f"{keyword} ({tag}) is missing from {where or instance_words(ds)}: "
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
    return _date_time(text_value(ds, "SeriesDate") or text_value(ds, "StudyDate"), text_value(ds, "SeriesTime"))


def _acquisition_start(ds: Dataset) -> datetime | None:
    if text_value(ds, "AcquisitionDateTime"):
        return _dt(text_value(ds, "AcquisitionDateTime"))
    date = text_value(ds, "AcquisitionDate") or text_value(ds, "SeriesDate") or text_value(ds, "StudyDate")
    return _date_time(date, text_value(ds, "AcquisitionTime"))


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else None


def _radiopharmaceutical_start(ds: Dataset) -> datetime | None:
    item = _radiopharmaceutical(ds)
    if item is None:
        return None
    if text_value(item, "RadiopharmaceuticalStartDateTime"):
        return _dt(text_value(item, "RadiopharmaceuticalStartDateTime"))
    date = text_value(ds, "SeriesDate") or text_value(ds, "StudyDate")
    return _date_time(date, text_value(item, "RadiopharmaceuticalStartTime"))



def pet_series_kind(ds: Dataset) -> str:
    """What one PET instance says its series is: ``dynamic``, ``static``, ``gated``, ``whole_body``, or
    ``unknown``; ``""`` when it is not PET Image Storage or Enhanced PET Image Storage.

    PET Image Storage: Series Type (0054,1000) value 1; Enhanced PET: Image Type (0008,0008) value 3
    (the Image Flavor). Routing and :func:`classify_pet_series` both decide by it.
    """
    sop_class = text_value(ds, "SOPClassUID")
    if sop_class == PET_IMAGE_STORAGE:
        series_type = [str(v).strip().upper() for v in as_list(ds.get("SeriesType"))]
        return _SERIES_TYPES.get(series_type[0] if series_type else "", "unknown")
    if sop_class == ENHANCED_PET_IMAGE_STORAGE:
        image_type = [str(v).strip().upper() for v in as_list(ds.get("ImageType"))]
        return _IMAGE_FLAVOURS.get(image_type[2] if len(image_type) > 2 else "", "unknown")
    return ""


def expected_instance_count(ds: Dataset) -> int | None:
    """How many instances one instance says its series has, or None when it does not say.

    A dynamic series of PET Image Storage has NumberOfSlices (0054,0081) x NumberOfTimeSlices
    (0054,0101) instances, one per slice and time frame (PS3.3 C.8.9.1); any other series (an
    Enhanced PET instance holds the whole series) does not say. Routing waits for this count before
    a study counts as complete, and the loader refuses a series that does not have it.
    """
    if pet_series_kind(ds) != "dynamic" or text_value(ds, "SOPClassUID") != PET_IMAGE_STORAGE:
        return None
    try:
        count = int(ds.get("NumberOfSlices") or 0) * int(ds.get("NumberOfTimeSlices") or 0)
    except (TypeError, ValueError):
        return None
    return count if count > 0 else None


def timing_variant_for(ds: Dataset) -> str | None:
    """The vendor timing variant (a key of :data:`TIMING_VARIANTS`) from Manufacturer (0008,0070), or None."""
    manufacturer = text_value(ds, "Manufacturer").upper()
    if manufacturer.startswith("GE") or "GENERAL ELECTRIC" in manufacturer:
        return "ge"
    if "SIEMENS" in manufacturer or "CTI" in manufacturer.split():
        return "siemens"
    if "PHILIPS" in manufacturer or "ADAC" in manufacturer:
        return "philips"
    return None


# --------------------------------------------------------------------------- layout, whatever the IOD

@dataclass(frozen=True)
class _Layout:
    order: np.ndarray  # [frame, slice] -> index of the 2-D image (an instance, or an Enhanced PET frame)
    start_s: np.ndarray  # [frame], absolute seconds after `origin` (or after the series reference)
    duration_s: np.ndarray
    origin: datetime | None  # the datetime start_s counts from, when known
    affine: np.ndarray
    frames: tuple[_EnhancedFrame, ...] | None = None  # Enhanced PET: image i is frames[i]; None: datasets[i]


@dataclass(frozen=True)
class _Words:
    """Where an IOD keeps what the frame grouping checks, for reasons that name the attribute."""

    images: str  # what one 2-D image is called: "instances" or "frames"
    start: tuple[str, str]  # (keyword, tag) of the frame start
    duration: tuple[str, str]  # (keyword, tag) of the frame duration (ms)
    slice_count: tuple[str, str]  # (words before the expected slice count, keyword to name)
    slice_index: tuple[str, str] | None  # (keyword, tag) of a slice index checked against the positions
    frame_index: tuple[str, str] | None  # (keyword, tag) of a time index checked against the frame starts
    rule: str  # the timing rule, in words


def _named(attribute: tuple[str, str]) -> str:
    return f"{attribute[0]} ({attribute[1]})"


def _legacy_words(timing: str) -> _Words:
    start = ("AcquisitionTime", "0008,0032") if timing == "siemens" else ("FrameReferenceTime", "0054,1300")
    return _Words("instances", start, ("ActualFrameDuration", "0018,1242"),
                  ("NumberOfSlices (0054,0081) is", "NumberOfSlices"), ("ImageIndex", "0054,1330"), None,
                  TIMING_VARIANTS[timing])


def _frame_start(ds: Dataset, timing: str, duration_s: float) -> tuple[float, datetime | None]:
    """Frame start in seconds after the returned origin (None: after an unknown series reference)."""
    if timing == "siemens":
        start = _acquisition_start(ds)
        if start is None:
            raise UnusableSeriesError(
                "AcquisitionDateTime (0008,002A) or AcquisitionDate (0008,0022) with AcquisitionTime (0008,0032) is "
                f"missing or unreadable in {instance_words(ds)}: the frame start of the "
                "Siemens timing variant cannot be known", "AcquisitionTime")
        return 0.0, start
    reference_ms = _number(ds, "FrameReferenceTime", "0054,1300", "the frame time")
    offset = reference_ms / 1000.0 - (0.5 * duration_s if timing == "philips" else 0.0)
    return offset, _series_reference(ds)


def _geometry(orientations: Sequence[Any], spacing_value: Any, position_values: Sequence[Any],
              label: Callable[[int], str], images: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row cosines, column cosines, pixel spacing [row, column], positions [n, 3]) of every image.

    ``orientations[i]``, ``position_values[i]``: Image Orientation / Position (Patient) of image
    ``i`` (named ``label(i)`` in a refusal); ``spacing_value``: the Pixel Spacing of the first.
    """
    orientation = as_list(orientations[0])
    spacing_values = as_list(spacing_value)
    try:
        iop = np.array([float(v) for v in orientation])
        spacing = np.array([float(v) for v in spacing_values])
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
    differs = UnusableSeriesError(f"ImageOrientationPatient (0020,0037) differs between {images} of the series",
                                  "ImageOrientationPatient")
    # parse every image, then compare all orientations at once; the first image at fault is refused
    n = len(position_values)
    positions = np.empty((n, 3))
    others = np.empty((n, 6))
    bad_position = n
    for i, (other_value, position_value) in enumerate(zip(orientations, position_values)):
        try:
            other = [float(v) for v in as_list(other_value)]
            if len(other) != 6:
                raise ValueError
            others[i] = other
            position = [float(v) for v in as_list(position_value)]
        except (TypeError, ValueError):
            n = i  # an unreadable orientation (or position) at i: "differs", unless an earlier image is at fault
            break
        if len(position) != 3:
            bad_position = min(bad_position, i)
        else:
            positions[i] = position
    mismatch = np.flatnonzero(~np.all(np.isclose(others[:n], iop, atol=1e-4), axis=1))
    first_mismatch = int(mismatch[0]) if mismatch.size else n
    if bad_position < min(first_mismatch, n):
        raise UnusableSeriesError(f"ImagePositionPatient (0020,0032) is missing or not 3 numbers in "
                                  f"{label(bad_position)}", "ImagePositionPatient")
    if first_mismatch < len(position_values) or n < len(position_values):
        raise differs
    return row_cos, col_cos, spacing, positions


def _frames_by_start(starts: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of distinct frame starts, 0-based frame of each image), starts equal within the tolerance."""
    keys = np.round(starts / _START_TOLERANCE_S)
    distinct, frame_of = np.unique(keys, return_inverse=True)
    return int(distinct.size), frame_of.reshape(-1)


def _arrange(starts: np.ndarray, durations: np.ndarray, origin: datetime | None,
             geometry: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], frame_of: np.ndarray,
             slice_rank: np.ndarray | None, n_frames: int, n_slices: int, words: _Words) -> _Layout:
    """Images to ``[frame, slice]`` with the checks both IODs share: counts, positions, timing, spacing."""
    row_cos, col_cos, spacing, positions = geometry
    normal = np.cross(row_cos, col_cos)
    along = positions @ normal
    order = np.empty((n_frames, n_slices), dtype=int)
    reference_along: np.ndarray | None = None
    frame_start = np.empty(n_frames)
    frame_duration = np.empty(n_frames)
    for frame in range(n_frames):
        members = np.flatnonzero(frame_of == frame)
        if members.size != n_slices:
            raise UnusableSeriesError(
                f"time frame {frame + 1} holds {members.size} {words.images} but {words.slice_count[0]} {n_slices}",
                words.slice_count[1])
        sorted_members = members[np.argsort(along[members], kind="stable")]
        if slice_rank is not None and words.slice_index is not None:
            ranks = slice_rank[sorted_members]
            if not (np.all(np.diff(ranks) > 0) or np.all(np.diff(ranks) < 0)):
                raise UnusableSeriesError(
                    f"{_named(words.slice_index)} orders the slices of frame {frame + 1} differently from "
                    "ImagePositionPatient (0020,0032): slice and time indices are inconsistent", words.slice_index[0])
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
                f"{_named(words.duration)} differs across the slices of frame {frame + 1} "
                f"({durations[members].min() * 1000:g} to {durations[members].max() * 1000:g} ms)",
                words.duration[0])
        if np.ptp(starts[members]) > _START_TOLERANCE_S:
            raise UnusableSeriesError(
                f"{_named(words.start)} differs across the slices of frame {frame + 1} by "
                f"{np.ptp(starts[members]):.3g} s", words.start[0])
        order[frame] = sorted_members
        frame_start[frame] = float(np.mean(starts[members]))
        frame_duration[frame] = float(durations[members[0]])

    by_time = np.argsort(frame_start, kind="stable")
    if words.frame_index is not None and np.any(np.diff(by_time) < 0):
        raise UnusableSeriesError(
            f"{_named(words.frame_index)} orders the time frames differently from their starts "
            f"({_named(words.start)})", words.frame_index[0])
    order, frame_start, frame_duration = order[by_time], frame_start[by_time], frame_duration[by_time]
    overlap = frame_start[1:] - (frame_start[:-1] + frame_duration[:-1])
    if np.any(overlap < -_START_TOLERANCE_S):
        i = int(np.argmin(overlap))
        raise UnusableSeriesError(
            f"frames overlap: frame {i + 2} starts {-overlap[i]:.3g} s before frame {i + 1} ends "
            f"({_named(words.start)} and {_named(words.duration)}; {words.rule})", words.start[0])

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


def _layout(datasets: Sequence[Dataset], timing: str, n_slices: int, n_frames: int) -> _Layout:
    """PET Image Storage: one instance per slice per frame."""
    words = _legacy_words(timing)
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

    geometry = _geometry([raw_number(ds, "ImageOrientationPatient", multi=True) for ds in datasets],
                         datasets[0].get("PixelSpacing"),
                         [raw_number(ds, "ImagePositionPatient", multi=True) for ds in datasets], lambda i: instance_words(datasets[i]),
                         "instances")

    # frames: by Image Index when every instance has one, else by distinct start time
    indices = [raw_number(ds, "ImageIndex") for ds in datasets]
    slice_rank: np.ndarray | None = None
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
        distinct, frame_of = _frames_by_start(starts)
        if distinct != n_frames:
            raise UnusableSeriesError(
                f"ImageIndex (0054,1330) is absent and the frame start times ({TIMING_VARIANTS[timing]}) give "
                f"{distinct} distinct frames, but NumberOfTimeSlices (0054,0101) is {n_frames}",
                "NumberOfTimeSlices")
    return _arrange(starts, durations, origin, geometry, frame_of, slice_rank, n_frames, n_slices, words)


# --------------------------------------------------------------------------- Enhanced PET frames

@dataclass(frozen=True)
class _EnhancedFrame:
    """Frame ``number`` (1-based) of ``datasets[dataset]``, with its per-frame and the shared functional groups."""

    dataset: int
    number: int
    uid: str
    per_frame: Dataset
    shared: Dataset | None

    @property
    def label(self) -> str:
        return f"frame {self.number} of instance {self.uid or '?'}"

    def item(self, sequence: str) -> Dataset | None:
        """The item of functional group ``sequence`` for this frame: per-frame, else shared; None if neither."""
        for group in (self.per_frame, self.shared):
            if group is not None and group.get(sequence):
                return group.get(sequence)[0]
        return None

    def value(self, sequence: str, keyword: str) -> Any:
        item = self.item(sequence)
        return None if item is None else item.get(keyword)


def _enhanced_frames(datasets: Sequence[Dataset]) -> list[_EnhancedFrame]:
    frames: list[_EnhancedFrame] = []
    for index, ds in enumerate(datasets):
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        try:
            n_frames = int(ds.get("NumberOfFrames") or 0)
        except (TypeError, ValueError):
            n_frames = 0
        if n_frames < 1 or len(per_frame) != n_frames:
            raise UnusableSeriesError(
                f"PerFrameFunctionalGroupsSequence (5200,9230) holds {len(per_frame)} item(s) but NumberOfFrames "
                f"(0028,0008) is {ds.get('NumberOfFrames', 'absent')} in {instance_words(ds)}",
                "PerFrameFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else None
        uid = text_value(ds, "SOPInstanceUID")
        frames.extend(_EnhancedFrame(index, number + 1, uid, item, shared) for number, item in enumerate(per_frame))
    return frames


def _enhanced_units(frame: _EnhancedFrame, ds: Dataset) -> str:
    """Units (0054,1001) term of a frame: its Real World Value Mapping unit (UCUM), else Units itself."""
    mapping = frame.item("RealWorldValueMappingSequence")
    codes = mapping.get("MeasurementUnitsCodeSequence") if mapping is not None else None
    if codes:
        code = text_value(codes[0], "CodeValue")
        return _UCUM_UNITS.get(code, code)
    return text_value(ds, "Units").upper()


def _enhanced_layout(frames: Sequence[_EnhancedFrame]) -> _Layout:
    """Enhanced PET: every frame of every instance is one 2-D image."""
    content = [frame.item("FrameContentSequence") or Dataset() for frame in frames]
    durations = np.array([_number(item, "FrameAcquisitionDuration", "0018,9220", "the frame duration",
                                  frame.label) / 1000.0 for frame, item in zip(frames, content)])
    if np.any(durations <= 0):
        raise UnusableSeriesError("FrameAcquisitionDuration (0018,9220) is zero or negative",
                                  "FrameAcquisitionDuration")
    moments: list[datetime] = []
    for frame, item in zip(frames, content):
        moment = _dt(text_value(item, "FrameAcquisitionDateTime"))
        if moment is None:
            raise UnusableSeriesError(f"FrameAcquisitionDateTime (0018,9074) is missing or unreadable in {frame.label}: "
                                      "the frame start cannot be known", "FrameAcquisitionDateTime")
        moments.append(moment)
    origin = min(moments)
    starts = np.array([(moment - origin).total_seconds() for moment in moments])

    spacings = {tuple(as_list(frame.value("PixelMeasuresSequence", "PixelSpacing"))) for frame in frames}
    if len(spacings) > 1:
        raise UnusableSeriesError("PixelSpacing (0028,0030) of the Pixel Measures Sequence (0028,9110) differs "
                                  "between frames", "PixelSpacing")
    geometry = _geometry([frame.value("PlaneOrientationSequence", "ImageOrientationPatient") for frame in frames],
                         frames[0].value("PixelMeasuresSequence", "PixelSpacing"),
                         [frame.value("PlanePositionSequence", "ImagePositionPatient") for frame in frames],
                         lambda i: frames[i].label, "frames")

    temporal = [item.get("TemporalPositionIndex") for item in content]
    if all(v is not None and str(v).strip() != "" for v in temporal):
        try:
            distinct, frame_of = np.unique(np.array([int(v) for v in temporal]), return_inverse=True)
        except (TypeError, ValueError):
            raise UnusableSeriesError("TemporalPositionIndex (0020,9128) holds a value that is not an integer",
                                      "TemporalPositionIndex") from None
        n_frames, frame_of = int(distinct.size), frame_of.reshape(-1)
        grouping: tuple[str, str] | None = ("TemporalPositionIndex", "0020,9128")
    else:
        n_frames, frame_of = _frames_by_start(starts)
        grouping = None
    grouped_by = grouping or ("FrameAcquisitionDateTime", "0018,9074")
    if n_frames < 2:
        raise UnusableSeriesError(f"{_named(grouped_by)} gives {n_frames} time frame: a dynamic series needs at least "
                                  "2 time frames", grouped_by[0])
    n_slices = int(np.sum(frame_of == 0))
    if n_slices < 2:
        raise UnusableSeriesError(f"time frame 1 holds {n_slices} frame ({_named(grouped_by)}): a single slice is not "
                                  "a volume", grouped_by[0])

    stacks = {text_value(item, "StackID") for item in content}
    if len(stacks) > 1:
        raise UnusableSeriesError(f"StackID (0020,9056) names {len(stacks)} stacks ({', '.join(sorted(stacks))}): "
                                  "one stack of parallel slices is needed", "StackID")
    in_stack = [item.get("InStackPositionNumber") for item in content]
    slice_rank: np.ndarray | None = None
    if all(v is not None and str(v).strip() != "" for v in in_stack):
        try:
            slice_rank = np.array([int(v) for v in in_stack])
        except (TypeError, ValueError):
            raise UnusableSeriesError("InStackPositionNumber (0020,9057) holds a value that is not an integer",
                                      "InStackPositionNumber") from None
    words = _Words("frames", ("FrameAcquisitionDateTime", "0018,9074"), ("FrameAcquisitionDuration", "0018,9220"),
                   (f"time frame 1 ({_named(grouped_by)}) holds", grouped_by[0]),
                   ("InStackPositionNumber", "0020,9057"), grouping, _ENHANCED_TIMING_RULE)
    layout = _arrange(starts, durations, origin, geometry, frame_of, slice_rank, n_frames, n_slices, words)
    return _Layout(layout.order, layout.start_s, layout.duration_s, layout.origin, layout.affine, tuple(frames))


# --------------------------------------------------------------------------- classification

def _analyse(datasets: Sequence[Dataset], timing: str | None) -> tuple[PETSeriesClass, _Layout | None]:
    reasons: list[str] = []
    attributes: list[str] = []

    def refuse(kind: str, reason: str, attribute: str, variant: str | None = None) -> tuple[PETSeriesClass, None]:
        return PETSeriesClass(kind, tuple(reasons) + (reason,), tuple(attributes) + (attribute,), variant), None

    if not datasets:
        return refuse("unknown", "no instances", "SOPInstanceUID")
    sop_classes = {text_value(ds, "SOPClassUID") for ds in datasets}
    if LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE in sop_classes:
        return refuse("enhanced", f"SOPClassUID (0008,0016) is {LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE} (Legacy "
                      "Converted Enhanced PET): converted multi-frame PET is not read; send the PET Image Storage "
                      f"({PET_IMAGE_STORAGE}) instances or Enhanced PET Image Storage ({ENHANCED_PET_IMAGE_STORAGE})",
                      "SOPClassUID")
    if ENHANCED_PET_IMAGE_STORAGE in sop_classes:
        if sop_classes != {ENHANCED_PET_IMAGE_STORAGE}:
            others = ", ".join(sorted(sop_classes - {ENHANCED_PET_IMAGE_STORAGE})) or "absent"
            return refuse("enhanced", f"SOPClassUID (0008,0016) mixes Enhanced PET Image Storage "
                          f"({ENHANCED_PET_IMAGE_STORAGE}) with {others}: pass the instances of one series",
                          "SOPClassUID")
        if timing is not None and timing not in TIMING_VARIANTS:
            raise ValueError(f"timing must be one of {sorted(TIMING_VARIANTS)}, got {timing!r}")
        return _analyse_enhanced(datasets)
    if sop_classes != {PET_IMAGE_STORAGE} or any(text_value(ds, "Modality").upper() != "PT" for ds in datasets):
        shown = ", ".join(sorted(sop_classes)) or "absent"
        modalities = ", ".join(sorted({text_value(ds, "Modality") or "absent" for ds in datasets}))
        return refuse("not_pet", f"SOPClassUID (0008,0016) is {shown} and Modality (0008,0060) {modalities}: not "
                      f"PET Image Storage ({PET_IMAGE_STORAGE}) with Modality PT", "SOPClassUID")
    if len({text_value(ds, "SeriesInstanceUID") for ds in datasets}) != 1:
        return refuse("unknown", "SeriesInstanceUID (0020,000E) differs between the instances: pass one series",
                      "SeriesInstanceUID")

    first = datasets[0]
    series_type = [str(v).strip().upper() for v in as_list(first.get("SeriesType"))]
    value1 = series_type[0] if series_type else ""
    kind = pet_series_kind(first)
    if any([str(v).strip().upper() for v in as_list(ds.get("SeriesType"))][:1] != series_type[:1] for ds in datasets):
        reasons.append("SeriesType (0054,1000) value 1 differs between the instances")
        attributes.append("SeriesType")
    elif kind == "unknown":
        reasons.append(f"SeriesType (0054,1000) is {chr(92).join(series_type) or 'absent'}: value 1 must be DYNAMIC")
        attributes.append("SeriesType")
    elif kind != "dynamic":
        reasons.append(f"SeriesType (0054,1000) value 1 is {value1!r}: {_NOT_DYNAMIC[kind]}, not a dynamic series "
                       "(DYNAMIC is needed for blood-flow kinetics)")
        attributes.append("SeriesType")

    corrections = [str(v).strip().upper() for v in as_list(first.get("CorrectedImage"))]
    if "ATTN" not in corrections:
        reasons.append(f"CorrectedImage (0028,0051) is {chr(92).join(corrections) or 'absent'}: no ATTN, the images "
                       "are not attenuation-corrected")
        attributes.append("CorrectedImage")
    units = text_value(first, "Units").upper()
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
                return refuse(kind, f"Manufacturer (0008,0070) is {text_value(first, 'Manufacturer') or 'absent'!r}: the "
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


def _analyse_enhanced(datasets: Sequence[Dataset]) -> tuple[PETSeriesClass, _Layout | None]:
    """Enhanced PET Image Storage instances of one series: kind, reasons and (when usable) the layout."""
    reasons: list[str] = []
    attributes: list[str] = []

    def refuse(kind: str, reason: str, attribute: str, variant: str | None = None) -> tuple[PETSeriesClass, None]:
        return PETSeriesClass(kind, tuple(reasons) + (reason,), tuple(attributes) + (attribute,), variant), None

    modalities = {text_value(ds, "Modality").upper() for ds in datasets}
    if modalities != {"PT"}:
        return refuse("not_pet", f"Modality (0008,0060) is {', '.join(sorted(modalities)) or 'absent'}: Enhanced PET "
                      "Image Storage needs PT", "Modality")
    if len({text_value(ds, "SeriesInstanceUID") for ds in datasets}) != 1:
        return refuse("unknown", "SeriesInstanceUID (0020,000E) differs between the instances: pass one series",
                      "SeriesInstanceUID")

    first = datasets[0]
    image_type = [str(v).strip().upper() for v in as_list(first.get("ImageType"))]
    flavour = image_type[2] if len(image_type) > 2 else ""
    kind = pet_series_kind(first)
    if any([str(v).strip().upper() for v in as_list(ds.get("ImageType"))][2:3] != image_type[2:3] for ds in datasets):
        reasons.append("ImageType (0008,0008) value 3 differs between the instances")
        attributes.append("ImageType")
    elif kind == "unknown":
        reasons.append(f"ImageType (0008,0008) is {chr(92).join(image_type) or 'absent'}: value 3 must be DYNAMIC")
        attributes.append("ImageType")
    elif kind != "dynamic":
        reasons.append(f"ImageType (0008,0008) value 3 is {flavour!r}: {_NOT_DYNAMIC[kind]}, not a dynamic series "
                       "(DYNAMIC is needed for blood-flow kinetics)")
        attributes.append("ImageType")
    try:
        frames = _enhanced_frames(datasets)
    except UnusableSeriesError as exc:
        return refuse(kind, exc.reason, exc.attribute or "")

    if kind == "dynamic":
        for frame in frames:
            frame_type = [str(v).strip().upper() for v in as_list(frame.value("PETFrameTypeSequence", "FrameType"))]
            frame_kind = _IMAGE_FLAVOURS.get(frame_type[2] if len(frame_type) > 2 else "", "dynamic")
            if frame_kind != "dynamic":
                reasons.append(f"FrameType (0008,9007) value 3 of {frame.label} is {frame_type[2]!r}: "
                               f"{_NOT_DYNAMIC[frame_kind]}, not a frame of a dynamic series")
                attributes.append("FrameType")
                break
        technique = text_value(first, "CardiacSynchronizationTechnique").upper()
        if technique not in ("", "NONE"):
            kind = "gated"
            reasons.append(f"CardiacSynchronizationTechnique (0018,9037) is {technique!r}: a cardiac-gated series, "
                           "not a dynamic series (DYNAMIC is needed for blood-flow kinetics)")
            attributes.append("CardiacSynchronizationTechnique")

    facts = [_enhanced_facts(ds) for ds in datasets]
    if len({(f.decay_correction, f.decay_reference_at, f.corrected_image) for f in facts}) > 1:
        reasons.append("the corrections (Enhanced PET Corrections module, DecayCorrectionDateTime (0018,9701)) differ "
                       "between the instances")
        attributes.append("DecayCorrectionDateTime")
    if "ATTN" not in facts[0].corrected_image:
        reasons.append(f"AttenuationCorrected (0018,9759) is {text_value(first, 'AttenuationCorrected') or 'absent'}: the "
                       "images are not attenuation-corrected")
        attributes.append("AttenuationCorrected")
    units = sorted({_enhanced_units(frame, datasets[frame.dataset]) for frame in frames})
    if units != ["BQML"]:
        reasons.append(f"MeasurementUnitsCodeSequence (0040,08EA) of the RealWorldValueMappingSequence (0040,9096) is "
                       f"{', '.join(u or 'absent' for u in units)!r}: activity concentration (Bq/ml) is needed")
        attributes.append("MeasurementUnitsCodeSequence")

    if kind == "dynamic" and not reasons:
        try:
            layout = _enhanced_layout(frames)
        except UnusableSeriesError as exc:
            return refuse(kind, exc.reason, exc.attribute or "", ENHANCED_TIMING)
        return PETSeriesClass(kind, (), (), ENHANCED_TIMING), layout
    return PETSeriesClass(kind, tuple(reasons), tuple(attributes)), None


def classify_pet_series(datasets: Sequence[Dataset] | Dataset, timing: str | None = None) -> PETSeriesClass:
    """What the PET series ``datasets`` is, and the reasons it is not a usable dynamic reconstruction.

    Series kind, attenuation correction, units and instance counts are all reported; frame
    timing and geometry are checked (first fault reported) once those are right.

    ``timing`` names a :data:`TIMING_VARIANTS` key; None picks it from Manufacturer (0008,0070).
    Enhanced PET has one standard timing (:data:`ENHANCED_TIMING`) and does not use it.
    Pixel data are not decoded.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    return _analyse(list(datasets), timing)[0]


# --------------------------------------------------------------------------- pixels and the series

@dataclass(frozen=True)
class _Facts:
    """What an IOD says about the values: units, decay state and corrections (Corrected Image terms)."""

    units: str
    decay_correction: str  # NONE, START, ADMIN (or another Decay Correction term)
    decay_reference_at: datetime | None  # the time START-corrected values refer to, when known
    corrected_image: tuple[str, ...]


def _legacy_facts(ds: Dataset) -> _Facts:
    decay = text_value(ds, "DecayCorrection").upper() or "NONE"
    return _Facts(text_value(ds, "Units").upper(), decay, _series_reference(ds) if decay == "START" else None,
                  tuple(str(v).strip().upper() for v in as_list(ds.get("CorrectedImage"))))


def _enhanced_facts(ds: Dataset, units: str = "") -> _Facts:
    """The Enhanced PET Corrections module as Corrected Image terms and a Decay Correction term."""
    corrected = tuple(term for keyword, term in _CORRECTION_FLAGS if text_value(ds, keyword).upper() == "YES")
    if "DECY" not in corrected:
        return _Facts(units, "NONE", None, corrected)
    reference = _dt(text_value(ds, "DecayCorrectionDateTime"))
    injection = _radiopharmaceutical_start(ds)
    admin = reference is not None and injection is not None and abs((reference - injection).total_seconds()) <= 1.0
    return _Facts(units, "ADMIN" if admin else "START", None if admin else reference, corrected)


def _rescaled(pixels: np.ndarray, holder: Dataset) -> np.ndarray:
    """``stored * RescaleSlope + RescaleIntercept`` with the values of ``holder`` (absent: 1 and 0)."""
    slope, intercept = holder.get("RescaleSlope"), holder.get("RescaleIntercept")
    if slope not in (None, ""):
        pixels = pixels * float(slope)
    if intercept not in (None, ""):
        pixels = pixels + float(intercept)
    return pixels


def _pixels(ds: Dataset) -> np.ndarray:
    pixels = decoded_pixels(ds)
    if pixels.ndim != 2:
        raise UnusableSeriesError(f"PixelData (7FE0,0010) decodes to shape {pixels.shape}, expected one "
                                  f"{ds.get('Rows')}x{ds.get('Columns')} image", "PixelData")
    return _rescaled(pixels, ds)


def _frame_stack(ds: Dataset) -> np.ndarray:
    """Stored values ``[frame, row, column]`` of a multi-frame instance."""
    pixels = decoded_pixels(ds)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.shape[0] != int(ds.get("NumberOfFrames") or 0):
        raise UnusableSeriesError(f"PixelData (7FE0,0010) decodes to shape {pixels.shape}, expected "
                                  f"{ds.get('NumberOfFrames')} frames of {ds.get('Rows')}x{ds.get('Columns')}",
                                  "PixelData")
    return pixels


def _stack_instances(order: np.ndarray, datasets: Sequence[Dataset]) -> np.ndarray:
    """``[frame, slice, row, column]`` rescaled values of one-image instances, ``datasets[order[f, s]]``.

    The values are those of :func:`_pixels` (``float64(stored) * slope + intercept``), written
    straight into the volume for native Pixel Data (no per-image temporaries: each pixel is read
    once, converted and scaled in one pass).
    """
    first = _pixels(datasets[int(order[0, 0])])
    shape = first.shape
    voxels = np.empty(order.shape + shape)
    for frame, slice_ in np.ndindex(*order.shape):
        ds = datasets[int(order[frame, slice_])]
        out = voxels[frame, slice_]
        native = native_stored_values(ds) if "PixelData" in ds else None
        if native is None or native.ndim != 2:
            pixels = _pixels(ds)
            if pixels.shape != shape:
                raise UnusableSeriesError(f"Rows (0028,0010) x Columns (0028,0011) differ between instances "
                                          f"({pixels.shape} vs {shape})", "Rows")
            out[...] = pixels
            continue
        if native.shape != shape:
            raise UnusableSeriesError(f"Rows (0028,0010) x Columns (0028,0011) differ between instances "
                                      f"({native.shape} vs {shape})", "Rows")
        slope, intercept = raw_number(ds, "RescaleSlope"), raw_number(ds, "RescaleIntercept")
        if slope not in (None, ""):
            np.multiply(native, float(slope), out=out)  # computed in float64, as float64(stored) * slope
        else:
            out[...] = native
        if intercept not in (None, ""):
            out += float(intercept)
    return voxels


def _stack(order: np.ndarray, image: Any) -> np.ndarray:
    """``[frame, slice, row, column]`` values from ``image(i)``, the rescaled 2-D image ``i``."""
    shape = image(int(order[0, 0])).shape
    voxels = np.empty(order.shape + shape)
    for frame, slice_ in np.ndindex(*order.shape):
        pixels = image(int(order[frame, slice_]))
        if pixels.shape != shape:
            raise UnusableSeriesError(f"Rows (0028,0010) x Columns (0028,0011) differ between instances "
                                      f"({pixels.shape} vs {shape})", "Rows")
        voxels[frame, slice_] = pixels
    return voxels


def load_dynamic_pet(datasets: Sequence[Dataset], timing: str | None = None) -> DynamicPETSeries:
    """Build the timed 4-D volume of one dynamic PET series, any order of instances (and of frames).

    ``datasets``: the PET Image Storage instances of the series, or its Enhanced PET Image
    Storage instance(s). Raises :class:`UnusableSeriesError` with the reasons of
    :func:`classify_pet_series` (the attribute of the first) when the series is not a usable
    dynamic reconstruction.
    """
    datasets = list(datasets)
    verdict, layout = _analyse(datasets, timing)
    if layout is None or verdict.timing is None:
        raise UnusableSeriesError(verdict.description, verdict.attributes[0] if verdict.attributes else None)
    frames = layout.frames
    if frames is None:
        first = datasets[int(layout.order[0, 0])]
        voxels = _stack_instances(layout.order, datasets)
        facts = _legacy_facts(first)
        uids = tuple(text_value(datasets[int(i)], "SOPInstanceUID") for i in layout.order.reshape(-1))
    else:
        first = datasets[frames[int(layout.order[0, 0])].dataset]
        decoded: dict[int, np.ndarray] = {}

        def image(i: int) -> np.ndarray:
            frame = frames[i]
            if frame.dataset not in decoded:
                decoded[frame.dataset] = _frame_stack(datasets[frame.dataset])
            holder = frame.item("PixelValueTransformationSequence") or datasets[frame.dataset]
            return _rescaled(decoded[frame.dataset][frame.number - 1], holder)

        voxels = _stack(layout.order, image)
        facts = _enhanced_facts(first, _enhanced_units(frames[int(layout.order[0, 0])], first))
        uids = tuple(dict.fromkeys(frames[int(i)].uid for i in layout.order.reshape(-1)))
    return _dynamic_series(first, layout, voxels, facts, verdict.timing, uids)


def _dynamic_series(first: Dataset, layout: _Layout, voxels: np.ndarray, facts: _Facts, timing: str,
                    sop_instance_uids: tuple[str, ...]) -> DynamicPETSeries:
    """The series both IODs end in: tracer, half-life, time zero and decay reference decided once."""
    notes: list[str] = []
    tracer = tracer_of(first)
    if tracer is not None and tracer not in PET_TRACERS:
        notes.append(f"the radiopharmaceutical is {tracer}, a SPECT tracer: ignored for this PET series")
        tracer = None
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

    decay_reference: float | None = None
    if facts.decay_correction == "ADMIN":
        decay_reference = 0.0 if time_zero == "radiopharmaceutical_start" else None
    elif facts.decay_reference_at is not None and layout.origin is not None:
        decay_reference = (facts.decay_reference_at - layout.origin).total_seconds() - zero_offset

    volume = Volume(voxels, layout.affine, FrameAxis.dynamic(start, layout.duration_s))
    return DynamicPETSeries(
        volume=volume,
        units=facts.units,
        tracer=tracer,
        half_life_s=half_life,
        decay_correction=facts.decay_correction,
        decay_reference_s=decay_reference,
        time_zero=time_zero,
        timing=timing,
        state=acquisition_state(first),
        corrected_image=facts.corrected_image,
        study_uid=text_value(first, "StudyInstanceUID"),
        series_uid=text_value(first, "SeriesInstanceUID"),
        series_description=text_value(first, "SeriesDescription"),
        frame_of_reference_uid=text_value(first, "FrameOfReferenceUID") or None,
        sop_instance_uids=sop_instance_uids,
        notes=tuple(notes),
    )
