"""Reconstructed NM (SPECT) multi-frame images to volumes with patient geometry.

:func:`load_nm_series` turns one NM Image instance holding a reconstruction
(Image Type value 3 ``RECON TOMO`` or ``RECON GATED TOMO``) into an
:class:`NMReconstruction`:

* ``volume``: counts ``[slice, row, col]`` (float64, Rescale Slope/Intercept
  applied when present; gated data summed over time slots);
* ``gates``: ``[gate, slice, row, col]`` in Time Slot Vector order (gate 0 =
  time slot 1), or None;
* the affine maps (slice, row, col) to patient LPS mm from the Detector
  Information Sequence's Image Position/Orientation (Patient) (or the
  top-level ones), Pixel Spacing and Spacing Between Slices along the
  row x column normal (PS3.3 C.8.4.15);
* short-axis data are always returned apex to base: ``BASE_TO_APEX`` in
  Slice Progression Direction (0054,0500) is flipped (array and affine
  together, so patient positions do not change).

``orientation`` is ``"short_axis"`` when Slice Progression Direction is
present, the View Code Sequence says "Short axis" (SCT 103340004), or the
series description has a short-axis token (``SA``, ``SAX``, ``SHORT AXIS``);
otherwise ``"transaxial"`` (the data still need reorienting).

``state`` (``stress``, ``rest`` or ``unknown``) is
:func:`node.imaging.states.acquisition_state`, the rule routing uses too.

``tracer`` comes from the Radiopharmaceutical Code Sequence (CID 3111/25),
else from the Radiopharmaceutical text (see
:mod:`node.imaging.radiopharmaceuticals`).

What cannot be used raises :class:`~node.imaging.errors.UnusableSeriesError`
naming the attribute: wrong SOP class or modality, projections or planar
images instead of reconstructions, missing or inconsistent geometry,
frame counts that disagree with the slice/time-slot vectors, undecodable or
missing pixel data.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.dicom_tracer import tracer_of
from node.imaging.errors import UnusableSeriesError
from node.imaging.states import acquisition_state
from node.imaging.volume import FrameAxis, Volume

__all__ = [
    "NM_IMAGE_STORAGE",
    "NMReconstruction",
    "Rejection",
    "load_nm_series",
    "group_nm_reconstructions",
]

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
RETIRED_NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.5"
RECON_TYPES = ("RECON TOMO", "RECON GATED TOMO")
PROJECTION_TYPES = ("TOMO", "GATED TOMO")
PLANAR_TYPES = ("STATIC", "WHOLE BODY", "DYNAMIC", "GATED")
SHORT_AXIS_CODE = "103340004"

_SA_TOKENS = {"SA", "SAX", "SHORTAXIS"}


@dataclass(frozen=True)
class NMReconstruction:
    """One reconstructed NM volume with what the SPECT pipeline needs to know about it.

    ``age`` in years (None when absent), ``sex`` ``"M"``/``"F"``/None.
    """

    volume: Volume
    gates: Volume | None
    orientation: str
    state: str
    tracer: str | None
    age: float | None
    sex: str | None
    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]
    series_description: str
    frame_of_reference_uid: str | None = None
    slice_progression: str | None = None

    @property
    def n_gates(self) -> int:
        return 0 if self.gates is None else int(self.gates.voxels.shape[0])


@dataclass(frozen=True)
class Rejection:
    """An NM instance that could not be used, and why."""

    series_uid: str
    sop_instance_uid: str
    reason: str


def _age_years(value: object) -> float | None:
    text = str(value or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2)
    return float(number) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]


def _floats(value: Any, count: int, attribute: str) -> np.ndarray:
    """``count`` finite numbers from an element value (pydicom types element values as Any)."""
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        values = np.array([float(v) for v in items])
    except (TypeError, ValueError):
        raise UnusableSeriesError(f"{attribute} has non-numeric values {value!r}", attribute.split(" ")[0]) from None
    if values.size != count or not np.all(np.isfinite(values)):
        raise UnusableSeriesError(f"{attribute} must hold {count} numbers, got {value!r}", attribute.split(" ")[0])
    return values


def _check_kind(ds: Dataset) -> str:
    problems = []
    sop_class = str(ds.get("SOPClassUID", ""))
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    value3 = image_type[2] if len(image_type) > 2 else ""
    if value3 not in RECON_TYPES:
        if value3 in PROJECTION_TYPES:
            problems.append(f"ImageType (0008,0008) value 3 is {value3!r}: projections, not a reconstruction "
                            "(RECON TOMO or RECON GATED TOMO is needed; reconstruct on the camera workstation)")
        elif value3 in PLANAR_TYPES:
            problems.append(f"ImageType (0008,0008) value 3 is {value3!r}: a planar acquisition, not a tomographic "
                            "reconstruction (RECON TOMO or RECON GATED TOMO)")
        else:
            shown = "\\".join(image_type) or "absent"
            problems.append(f"ImageType (0008,0008) is {shown}: value 3 must be RECON TOMO or RECON GATED TOMO")
    if sop_class not in (NM_IMAGE_STORAGE, RETIRED_NM_IMAGE_STORAGE):
        name = getattr(ds.get("SOPClassUID"), "name", "") or "unknown"
        problems.append(f"SOPClassUID (0008,0016) is {sop_class or 'absent'} ({name}), not NM Image Storage "
                        f"({NM_IMAGE_STORAGE})")
    if str(ds.get("Modality", "")).upper() != "NM":
        problems.append(f"Modality (0008,0060) is {ds.get('Modality', 'absent')!r}, not 'NM'")
    if problems:
        attribute = "ImageType" if problems[0].startswith("ImageType") else problems[0].split(" ")[0]
        raise UnusableSeriesError("; ".join(problems), attribute)
    return value3


def _geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    detector = None
    seq = ds.get("DetectorInformationSequence")
    if seq:
        detector = seq[0]
    iop_value = (detector.get("ImageOrientationPatient") if detector is not None else None) or ds.get("ImageOrientationPatient")
    ipp_value = (detector.get("ImagePositionPatient") if detector is not None else None) or ds.get("ImagePositionPatient")
    if not iop_value:
        raise UnusableSeriesError(
            "ImageOrientationPatient (0020,0037) is missing from the Detector Information Sequence (0054,0022) "
            "and the top level: slice orientation cannot be inferred", "ImageOrientationPatient")
    if not ipp_value:
        raise UnusableSeriesError(
            "ImagePositionPatient (0020,0032) is missing from the Detector Information Sequence (0054,0022) "
            "and the top level: volume position cannot be inferred", "ImagePositionPatient")
    iop = _floats(iop_value, 6, "ImageOrientationPatient (0020,0037)")
    ipp = _floats(ipp_value, 3, "ImagePositionPatient (0020,0032)")
    row_cos, col_cos = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-3 or abs(np.linalg.norm(col_cos) - 1) > 1e-3 or abs(np.dot(row_cos, col_cos)) > 1e-3:
        raise UnusableSeriesError(
            f"ImageOrientationPatient (0020,0037) {list(iop)} is not two orthogonal unit vectors", "ImageOrientationPatient")
    if not ds.get("PixelSpacing"):
        raise UnusableSeriesError("PixelSpacing (0028,0030) is missing: voxel size cannot be inferred", "PixelSpacing")
    spacing = _floats(ds.PixelSpacing, 2, "PixelSpacing (0028,0030)")
    if np.any(spacing <= 0):
        raise UnusableSeriesError(f"PixelSpacing (0028,0030) {list(spacing)} must be positive", "PixelSpacing")
    between = ds.get("SpacingBetweenSlices")
    if between in (None, ""):
        raise UnusableSeriesError(
            "SpacingBetweenSlices (0018,0088) is missing: slice positions of the reconstruction cannot be inferred",
            "SpacingBetweenSlices")
    dz = float(_floats(between, 1, "SpacingBetweenSlices (0018,0088)")[0])
    if dz == 0:
        raise UnusableSeriesError("SpacingBetweenSlices (0018,0088) is 0", "SpacingBetweenSlices")
    normal = np.cross(row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos))
    affine = np.eye(4)
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos / np.linalg.norm(col_cos) * spacing[0]
    affine[:3, 2] = row_cos / np.linalg.norm(row_cos) * spacing[1]
    affine[:3, 3] = ipp
    return affine, row_cos, col_cos, dz


def _vector(ds: Dataset, keyword: str, tag: str, n_frames: int, maximum: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise UnusableSeriesError(f"{keyword} ({tag}) is missing: frames cannot be ordered", keyword)
    items = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        vector = np.atleast_1d(np.asarray([int(v) for v in items], dtype=int))
    except (TypeError, ValueError):
        raise UnusableSeriesError(f"{keyword} ({tag}) has non-integer values", keyword) from None
    if vector.size != n_frames:
        raise UnusableSeriesError(
            f"{keyword} ({tag}) has {vector.size} values but NumberOfFrames (0028,0008) is {n_frames}", keyword)
    if vector.min() < 1 or vector.max() > maximum:
        raise UnusableSeriesError(f"{keyword} ({tag}) values must lie in 1..{maximum}", keyword)
    return vector


def _pixels(ds: Dataset, n_frames: int) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise UnusableSeriesError("PixelData (7FE0,0010) is missing", "PixelData")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types
        syntax_text = f"{syntax} ({syntax.name})" if syntax is not None else "unknown transfer syntax"
        raise UnusableSeriesError(
            f"PixelData (7FE0,0010) cannot be decoded with transfer syntax {syntax_text}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}", "PixelData") from None
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if pixels.ndim != 3 or pixels.shape[0] != n_frames:
        raise UnusableSeriesError(
            f"PixelData (7FE0,0010) decodes to shape {pixels.shape}, expected {n_frames} frames of "
            f"{ds.get('Rows')}x{ds.get('Columns')} (NumberOfFrames (0028,0008))", "PixelData")
    pixels = pixels.astype(np.float64)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope not in (None, ""):
        pixels = pixels * float(slope)
    if intercept not in (None, ""):
        pixels = pixels + float(intercept)
    return pixels



def _is_short_axis(ds: Dataset) -> bool:
    if ds.get("SliceProgressionDirection"):
        return True
    seq = ds.get("DetectorInformationSequence")
    views = []
    if seq and seq[0].get("ViewCodeSequence"):
        views.extend(seq[0].ViewCodeSequence)
    if ds.get("ViewCodeSequence"):
        views.extend(ds.ViewCodeSequence)
    if any(str(v.get("CodeValue", "")) == SHORT_AXIS_CODE for v in views):
        return True
    description = str(ds.get("SeriesDescription", "")).upper()
    tokens = set(re.split(r"[^A-Z0-9]+", description)) | {description.replace(" ", "").replace("-", "")}
    return bool(tokens & _SA_TOKENS) or "SHORT AXIS" in description


def load_nm_series(datasets: Sequence[Dataset] | Dataset) -> NMReconstruction:
    """Load one reconstructed NM instance (a one-element sequence, or the dataset itself).

    Raises :class:`UnusableSeriesError` naming the attribute when the instance cannot be used.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    datasets = list(datasets)
    if len(datasets) != 1:
        raise UnusableSeriesError(
            f"expected one multi-frame NM instance per reconstruction, got {len(datasets)} instances "
            "(SOPInstanceUID (0008,0018)); pass each instance separately or use group_nm_reconstructions",
            "SOPInstanceUID")
    ds = datasets[0]
    value3 = _check_kind(ds)
    gated = value3 == "RECON GATED TOMO"
    affine, _, _, _ = _geometry(ds)

    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        n_slices = int(ds.get("NumberOfSlices", 0) or 0)
        n_slots = int(ds.get("NumberOfTimeSlots", 1) or 1) if gated else 1
    except (TypeError, ValueError):
        raise UnusableSeriesError(
            "NumberOfFrames (0028,0008), NumberOfSlices (0054,0081) or NumberOfTimeSlots (0054,0071) is not an integer",
            "NumberOfFrames") from None
    if n_slices <= 0:
        raise UnusableSeriesError("NumberOfSlices (0054,0081) is missing or zero", "NumberOfSlices")
    if gated and n_slots <= 0:
        raise UnusableSeriesError("NumberOfTimeSlots (0054,0071) is missing or zero", "NumberOfTimeSlots")
    if n_frames != n_slices * n_slots:
        detail = f"NumberOfSlices (0054,0081) {n_slices}" + (f" x NumberOfTimeSlots (0054,0071) {n_slots}" if gated else "")
        raise UnusableSeriesError(
            f"NumberOfFrames (0028,0008) is {n_frames} but {detail} = {n_slices * n_slots}", "NumberOfFrames")
    slice_vector = _vector(ds, "SliceVector", "0054,0080", n_frames, n_slices)
    slot_vector = _vector(ds, "TimeSlotVector", "0054,0070", n_frames, n_slots) if gated else np.ones(n_frames, int)
    slots_slices = (slot_vector - 1) * n_slices + (slice_vector - 1)
    if np.unique(slots_slices).size != n_frames:
        raise UnusableSeriesError(
            "SliceVector (0054,0080)" + (" and TimeSlotVector (0054,0070)" if gated else "")
            + " repeat a (time slot, slice) pair: frames are ambiguous", "SliceVector")

    pixels = _pixels(ds, n_frames)
    ordered = np.empty((n_slots * n_slices,) + pixels.shape[1:])
    ordered[slots_slices] = pixels
    data = ordered.reshape((n_slots, n_slices) + pixels.shape[1:])

    progression = str(ds.get("SliceProgressionDirection", "") or "").upper() or None
    if progression == "BASE_TO_APEX":
        data = data[:, ::-1]
        flipped = affine.copy()
        flipped[:3, 3] = affine[:3, 3] + (n_slices - 1) * affine[:3, 0]
        flipped[:3, 0] = -affine[:3, 0]
        affine = flipped
    data = np.ascontiguousarray(data)
    gates = Volume(data, affine.copy(), FrameAxis.gates(n_slots)) if gated else None
    volume = Volume(data.sum(axis=0) if gated else data[0], affine.copy())
    sex = str(ds.get("PatientSex", "") or "").upper()
    return NMReconstruction(
        volume=volume,
        gates=gates,
        orientation="short_axis" if _is_short_axis(ds) else "transaxial",
        state=acquisition_state(ds),
        tracer=tracer_of(ds),
        age=_age_years(ds.get("PatientAge")),
        sex=sex if sex in ("M", "F") else None,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uids=(str(ds.get("SOPInstanceUID", "")),),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID")) if ds.get("FrameOfReferenceUID") else None,
        slice_progression="APEX_TO_BASE" if progression == "BASE_TO_APEX" else progression,
    )


def _is_nm(ds: Dataset) -> bool:
    return str(ds.get("Modality", "")).upper() == "NM" or str(ds.get("SOPClassUID", "")) in (
        NM_IMAGE_STORAGE, RETIRED_NM_IMAGE_STORAGE)


def group_nm_reconstructions(
    datasets: Iterable[Dataset],
) -> tuple[list[NMReconstruction], list[Rejection]]:
    """Load every NM instance of a study as a reconstruction; collect the unusable ones.

    Instances that are not NM (Modality and SOP Class both say so) are
    ignored. Results keep series order of first appearance; each NM instance
    is one reconstruction (a series may hold several, e.g. gated and summed).
    """
    by_series: OrderedDict[str, list[Dataset]] = OrderedDict()
    for ds in datasets:
        if _is_nm(ds):
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    loaded: list[NMReconstruction] = []
    rejected: list[Rejection] = []
    for series_uid, members in by_series.items():
        for ds in members:
            try:
                loaded.append(load_nm_series([ds]))
            except UnusableSeriesError as exc:
                rejected.append(Rejection(series_uid, str(ds.get("SOPInstanceUID", "")), exc.reason))
    return loaded, rejected
