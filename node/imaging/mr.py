"""Cardiac MR (MR Image Storage and Enhanced MR Image Storage) to series roles and short-axis stacks.

Reference note: ``cmr_lge.md`` section 3 (SOP classes, attributes, the role classifier, stack building).

Reading (headers first, pixels once):

* :func:`mr_frames` turns each instance into :class:`MRFrame` headers, one per 2-D image: a
  classic MR Image Storage instance is one frame; an Enhanced MR (or Legacy Converted Enhanced MR)
  instance is one frame per item of its Per-frame Functional Groups Sequence (5200,9230), each
  functional group taken from the frame's item, else from the Shared Functional Groups Sequence
  (5200,9229): Plane Position / Orientation, Pixel Measures, Frame Content (Stack ID, In-Stack
  Position Number, Temporal Position Index), Cardiac Synchronization (Nominal Cardiac Trigger Delay
  Time), MR Modifier (Inversion Recovery, Inversion Times), MR Image Frame Type (Frame Type,
  Complex Image Component) and the rescale of the frame: the Pixel Value Transformation Sequence
  (0028,9145), else the first linear Real World Value Mapping (0040,9096), else none. An instance
  that cannot be used (another SOP class, no or short Pixel Data, missing geometry, colour) is an
  :class:`MRRefusal` naming the attribute; the rest of the study goes on.
* pixels are decoded once per instance and written straight into the stack (per-frame
  ``stored * slope + intercept``, vectorised over the frames of an instance).

Roles (:data:`MR_ROLES`): :func:`decide_mr_role` is the one rule. Attribute rules give points
(3 for strong evidence: inversion recovery with one inversion time per position in 100-700 ms
and one phase = LGE; several inversion times or phases per position with inversion recovery = TI
scout; >= 5 trigger times per position without it = cine; Image Type ``T1MAP``/``T2MAP``/``ECV``
= map; 5 for phase images (flow) = other; 2 for no cardiac gating = other; Image Type ``PSIR``/
``R`` or Complex Image Component ``REAL`` +2 and signed values +1 = PSIR, ``M``/``MAGNITUDE`` +1 =
magnitude). Descriptions (Series Description, Protocol Name) give 2 points for a strong word
(``LGE``, ``MDE``, ``CINE``, ``MOLLI``, ``TI_SCOUT``, ``FLOW``...) and 1 for ``MAG``/``PS``.
When an attribute rule gave some role 2 points or more, the attributes decide and descriptions
only break their ties; otherwise both are added. The role needs 2 points, else ``other``; ties go
in the order of :data:`MR_ROLES`. The slice plane only chooses between cine short and long axis:
the angle of the slice normals to the LV long axis (2 points when the axis is the study's own:
the normal of its largest set of >= 5 parallel slice positions; 1 from the anatomical prior
:data:`LV_AXIS_PRIOR`), a stack of >= 3 parallel positions, and plane words (``SAX``, ``4CH``...).
Every rule that fired is a reason, with its points. :func:`mr_series_role` applies the rule to
one instance alone (the routing attribute; a header read without Pixel Data is enough);
:func:`assign_mr_roles` to whole series with the study as context.

Stacks (:func:`build_sax_stack`): the series of one role are merged (one series per slice is
common), grouped by Frame of Reference, slice normal (within 1 degree), matrix and pixel spacing
(1 %), sorted by position along the normal and then by trigger time (never by Instance Number),
and checked: missing slices (a step > 1.5 x the median spacing; flagged, never interpolated),
duplicate positions (the highest Series Number is kept), uneven spacing, other orientations,
matrices, pixel spacings or frames of reference (left out and named), unequal phase counts, an
In-Stack Position Number that contradicts the positions. Classic MR has no rescale in its IOD, but
Philips writes Rescale Slope/Intercept there: they are applied when present.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

# the shared DICOM value readers and pixel decoder (one rule for all loaders)
from node.imaging.dicom_values import as_list, decoded_pixels, raw_number, text_value
from node.imaging.errors import UnusableSeriesError
from node.imaging.volume import ShortAxisStack

__all__ = [
    "ENHANCED_MR_COLOR_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "ISSUE_KINDS",
    "LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE",
    "LV_AXIS_PRIOR",
    "MR_IMAGE_STORAGE",
    "MR_ROLES",
    "ROLE_WORDS",
    "STACK_ROLES",
    "CMRStudy",
    "MRFrame",
    "MRRefusal",
    "MRRoleDecision",
    "MRSeries",
    "MRSeriesEvidence",
    "MRStack",
    "StackIssue",
    "assign_mr_roles",
    "build_sax_stack",
    "decide_mr_role",
    "estimate_lv_axis",
    "load_cmr_study",
    "load_mr_series",
    "mr_frames",
    "mr_role_decision",
    "mr_role_reasons",
    "mr_series_role",
    "series_evidence",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_MR_COLOR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.3"
LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.4"
_MULTI_FRAME = frozenset({ENHANCED_MR_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE})

#: the series roles, in the order that breaks ties
MR_ROLES: tuple[str, ...] = ("ti_scout", "map", "lge_mag", "lge_psir", "cine_sax", "cine_lax", "other")
#: each role in words
ROLE_WORDS: dict[str, str] = {
    "lge_mag": "LGE magnitude", "lge_psir": "LGE PSIR", "ti_scout": "TI scout", "cine_sax": "cine short axis",
    "cine_lax": "cine long axis", "map": "parametric map (T1/T2/ECV)", "other": "other MR",
}
#: roles whose slices make short-axis stacks
STACK_ROLES: tuple[str, ...] = ("cine_sax", "lge_mag", "lge_psir")

#: apex-to-base direction of the LV long axis in LPS (apex anterior, left, inferior), when the study gives none
LV_AXIS_PRIOR: np.ndarray = np.array([-0.6, 0.5, 0.6]) / np.linalg.norm([-0.6, 0.5, 0.6])
_SAX_MAX_DEG = 35.0  # a slice normal within this angle of the LV axis is short axis
_LAX_MIN_DEG = 55.0  # beyond this angle, long axis
_PARALLEL_DEG = 1.0  # slices of one stack
_LGE_TI_MS = (100.0, 700.0)  # single inversion time of post-contrast LGE (1.5 T and 3 T)
_CINE_PHASES = 5  # distinct trigger times per position that make a cine (without inversion recovery)

#: what a stack issue can be
ISSUE_KINDS: tuple[str, ...] = (
    "missing_slice", "duplicate", "mixed_spacing", "mixed_orientation", "mixed_matrix", "mixed_pixel_spacing",
    "mixed_frame_of_reference", "phase_count", "in_plane_shift", "spacing_attribute", "stack_position_order",
)


# --------------------------------------------------------------------------- headers

@dataclass(frozen=True)
class MRFrame:
    """One 2-D MR image: frame ``number`` (1-based; 1 for classic MR) of ``datasets[dataset]``.

    Geometry in patient LPS mm; ``trigger_ms`` / ``inversion_ms`` NaN when absent;
    ``stack_id`` / ``in_stack`` / ``temporal_index`` from the Frame Content Sequence (Enhanced
    MR; ``""`` / 0 otherwise); ``slope`` / ``intercept`` the rescale of this frame.
    """

    dataset: int
    number: int
    sop_uid: str
    series_uid: str
    series_number: int
    frame_of_reference: str
    rows: int
    columns: int
    position: tuple[float, float, float]
    row_cosine: tuple[float, float, float]
    column_cosine: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    thickness_mm: float
    spacing_between_mm: float
    trigger_ms: float
    inversion_ms: float
    slope: float
    intercept: float
    stack_id: str = ""
    in_stack: int = 0
    temporal_index: int = 0
    image_type: tuple[str, ...] = ()
    complex_component: str = ""

    @cached_property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row_cosine x column_cosine`` (LPS)."""
        (a, b, c), (d, e, f) = self.row_cosine, self.column_cosine
        n = np.array([b * f - c * e, c * d - a * f, a * e - b * d])
        return n / math.sqrt(float(n @ n))

    @property
    def label(self) -> str:
        return f"frame {self.number} of instance {self.sop_uid or '?'}"


@dataclass(frozen=True)
class MRRefusal:
    """An instance (or a stack) that cannot be used, with a reason that names the attribute."""

    sop_uid: str
    series_uid: str
    reason: str
    attribute: str | None


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) and abs(number) < 1e30 else math.nan


def _int(value: Any) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


def _item(groups: Sequence[Dataset | None], sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence`` in ``groups`` (per-frame, then shared)."""
    for group in groups:
        if group is not None:
            seq = group.get(sequence)
            if seq:
                return seq[0]
    return None


def _numbers(value: Any, count: int, keyword: str, tag: str, where: str) -> tuple[float, ...]:
    numbers = [_float(v) for v in as_list(value)]
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise UnusableSeriesError(f"{keyword} ({tag}) is missing or not {count} numbers in {where}", keyword)
    return tuple(numbers)


def _orientation(value: Any, where: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    iop = np.array(_numbers(value, 6, "ImageOrientationPatient", "0020,0037", where))
    row, col = iop[:3], iop[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(float(np.dot(row, col))) > 1e-3):
        raise UnusableSeriesError(f"ImageOrientationPatient (0020,0037) {list(iop)} in {where} is not two orthogonal "
                                  "unit vectors", "ImageOrientationPatient")
    return (float(row[0]), float(row[1]), float(row[2])), (float(col[0]), float(col[1]), float(col[2]))


_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _check_instance(ds: Dataset, pixels: bool = True) -> str:
    """The SOP class of a usable MR instance; refuses what cannot be an MR image, naming the attribute.

    ``pixels=False`` checks the header only (a data set read with ``stop_before_pixels``, as routing does).
    """
    where = f"instance {text_value(ds, 'SOPInstanceUID') or '?'}"
    sop_class = text_value(ds, "SOPClassUID")
    if not sop_class:
        raise UnusableSeriesError(f"SOPClassUID (0008,0016) is absent in {where}: not a DICOM image object (an "
                                  "ACR-NEMA file, an empty or truncated data set)", "SOPClassUID")
    if sop_class == ENHANCED_MR_COLOR_IMAGE_STORAGE:
        raise UnusableSeriesError(f"SOPClassUID (0008,0016) is {sop_class} (Enhanced MR Color): colour MR images "
                                  "are not read", "SOPClassUID")
    if sop_class != MR_IMAGE_STORAGE and sop_class not in _MULTI_FRAME:
        raise UnusableSeriesError(f"SOPClassUID (0008,0016) is {sop_class}: not MR Image Storage ({MR_IMAGE_STORAGE})"
                                  f" nor Enhanced MR Image Storage ({ENHANCED_MR_IMAGE_STORAGE})", "SOPClassUID")
    if text_value(ds, "Modality").upper() != "MR":
        raise UnusableSeriesError(f"Modality (0008,0060) is {text_value(ds, 'Modality') or 'absent'!r} in {where}: MR is "
                                  "needed", "Modality")
    if pixels and "PixelData" not in ds:
        raise UnusableSeriesError(f"PixelData (7FE0,0010) is missing in {where}: a header without an image",
                                  "PixelData")
    samples = raw_number(ds, "SamplesPerPixel")
    if samples not in (None, "") and int(samples) != 1:
        raise UnusableSeriesError(f"SamplesPerPixel (0028,0002) is {samples} in {where}: only monochrome MR is read",
                                  "SamplesPerPixel")
    rows, columns = _int(raw_number(ds, "Rows")), _int(raw_number(ds, "Columns"))
    if rows < 1 or columns < 1:
        raise UnusableSeriesError(f"Rows (0028,0010) / Columns (0028,0011) missing or zero in {where}", "Rows")
    meta = getattr(ds, "file_meta", None)
    if pixels and meta is not None and text_value(meta, "TransferSyntaxUID") in _NATIVE:
        bits = _int(raw_number(ds, "BitsAllocated"))
        frames = max(_int(raw_number(ds, "NumberOfFrames")), 1)
        expected = rows * columns * frames * bits // 8
        elem = ds.get_item(0x7FE00010)
        value = getattr(elem, "value", None)
        length = len(value) if isinstance(value, (bytes, bytearray)) else None
        if length is not None and length < expected:
            raise UnusableSeriesError(f"PixelData (7FE0,0010) holds {length} bytes in {where}, {expected} are "
                                      f"expected ({frames} x {rows} x {columns} x {bits} bits): truncated",
                                      "PixelData")
    return sop_class


def _instance_frames(ds: Dataset, index: int, pixels: bool = True) -> list[MRFrame]:
    """The :class:`MRFrame` headers of one instance (raises :class:`UnusableSeriesError`); ``pixels``: whether
    the Pixel Data must be there (:func:`_check_instance`)."""
    sop_class = _check_instance(ds, pixels)
    uid = text_value(ds, "SOPInstanceUID")
    where = f"instance {uid or '?'}"
    common: dict[str, Any] = {
        "dataset": index, "sop_uid": uid, "series_uid": text_value(ds, "SeriesInstanceUID"),
        "series_number": _int(raw_number(ds, "SeriesNumber")), "frame_of_reference": text_value(ds, "FrameOfReferenceUID"),
        "rows": _int(raw_number(ds, "Rows")), "columns": _int(raw_number(ds, "Columns")),
    }
    image_type = tuple(str(v).strip().upper() for v in as_list(ds.get("ImageType")))
    if sop_class == MR_IMAGE_STORAGE:
        row, col = _orientation(raw_number(ds, "ImageOrientationPatient", multi=True), where)
        position = _numbers(raw_number(ds, "ImagePositionPatient", multi=True), 3, "ImagePositionPatient", "0020,0032",
                            where)
        spacing = _numbers(raw_number(ds, "PixelSpacing", multi=True), 2, "PixelSpacing", "0028,0030", where)
        if min(spacing) <= 0:
            raise UnusableSeriesError(f"PixelSpacing (0028,0030) is not positive in {where}", "PixelSpacing")
        slope, intercept = _float(raw_number(ds, "RescaleSlope")), _float(raw_number(ds, "RescaleIntercept"))
        return [MRFrame(
            number=1, position=(position[0], position[1], position[2]), row_cosine=row, column_cosine=col,
            pixel_spacing=(spacing[0], spacing[1]), thickness_mm=_float(raw_number(ds, "SliceThickness")),
            spacing_between_mm=_float(raw_number(ds, "SpacingBetweenSlices")), trigger_ms=_float(raw_number(ds, "TriggerTime")),
            inversion_ms=_float(raw_number(ds, "InversionTime")),
            slope=1.0 if math.isnan(slope) else slope, intercept=0.0 if math.isnan(intercept) else intercept,
            image_type=image_type, complex_component=text_value(ds, "ComplexImageComponent").upper(), **common)]

    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    n_frames = _int(raw_number(ds, "NumberOfFrames"))
    if n_frames < 1 or len(per_frame) != n_frames:
        raise UnusableSeriesError(f"PerFrameFunctionalGroupsSequence (5200,9230) holds {len(per_frame)} item(s) but "
                                  f"NumberOfFrames (0028,0008) is {ds.get('NumberOfFrames', 'absent')} in {where}",
                                  "PerFrameFunctionalGroupsSequence")
    top_slope, top_intercept = _float(raw_number(ds, "RescaleSlope")), _float(raw_number(ds, "RescaleIntercept"))
    frames: list[MRFrame] = []
    for number, item in enumerate(per_frame, start=1):
        groups = (item, shared)
        here = f"frame {number} of {where}"
        plane = _item(groups, "PlaneOrientationSequence")
        row, col = _orientation(plane.get("ImageOrientationPatient") if plane is not None else None, here)
        pos_item = _item(groups, "PlanePositionSequence")
        position = _numbers(pos_item.get("ImagePositionPatient") if pos_item is not None else None, 3,
                            "ImagePositionPatient", "0020,0032", here)
        measures = _item(groups, "PixelMeasuresSequence") or Dataset()
        spacing = _numbers(measures.get("PixelSpacing"), 2, "PixelSpacing", "0028,0030", here)
        if min(spacing) <= 0:
            raise UnusableSeriesError(f"PixelSpacing (0028,0030) is not positive in {here}", "PixelSpacing")
        content = _item(groups, "FrameContentSequence") or Dataset()
        cardiac = _item(groups, "CardiacSynchronizationSequence")
        modifier = _item(groups, "MRModifierSequence")
        frame_type = _item(groups, "MRImageFrameTypeSequence")
        inversion = math.nan
        if modifier is not None:
            times = [_float(v) for v in as_list(modifier.get("InversionTimes"))]
            finite = [t for t in times if math.isfinite(t) and t > 0]
            inversion = finite[0] if finite else math.nan
        slope, intercept = top_slope, top_intercept
        transform = _item(groups, "PixelValueTransformationSequence")
        if transform is not None:
            slope, intercept = _float(transform.get("RescaleSlope")), _float(transform.get("RescaleIntercept"))
        else:
            mapping = _item(groups, "RealWorldValueMappingSequence")
            if mapping is not None and "RealWorldValueSlope" in mapping:
                slope = _float(mapping.get("RealWorldValueSlope"))
                intercept = _float(mapping.get("RealWorldValueIntercept"))
        frames.append(MRFrame(
            number=number, position=(position[0], position[1], position[2]), row_cosine=row, column_cosine=col,
            pixel_spacing=(spacing[0], spacing[1]), thickness_mm=_float(measures.get("SliceThickness")),
            spacing_between_mm=_float(measures.get("SpacingBetweenSlices", raw_number(ds, "SpacingBetweenSlices"))),
            trigger_ms=_float(cardiac.get("NominalCardiacTriggerDelayTime")) if cardiac is not None else math.nan,
            inversion_ms=inversion, slope=1.0 if math.isnan(slope) else slope,
            intercept=0.0 if math.isnan(intercept) else intercept, stack_id=text_value(content, "StackID"),
            in_stack=_int(content.get("InStackPositionNumber")),
            temporal_index=_int(content.get("TemporalPositionIndex")),
            image_type=tuple(str(v).strip().upper() for v in as_list(frame_type.get("FrameType")))
            if frame_type is not None else image_type,
            complex_component=(text_value(frame_type, "ComplexImageComponent") if frame_type is not None
                               else text_value(ds, "ComplexImageComponent")).upper(),
            **common))
    return frames


def mr_frames(datasets: Sequence[Dataset]) -> tuple[list[MRFrame], list[MRRefusal]]:
    """The 2-D image headers of ``datasets`` and the instances refused (with reasons). Pixels are not decoded."""
    frames: list[MRFrame] = []
    refusals: list[MRRefusal] = []
    for index, ds in enumerate(datasets):
        try:
            frames.extend(_instance_frames(ds, index))
        except UnusableSeriesError as exc:
            refusals.append(MRRefusal(text_value(ds, "SOPInstanceUID"), text_value(ds, "SeriesInstanceUID"), exc.reason,
                                      exc.attribute))
    return frames, refusals


# --------------------------------------------------------------------------- evidence and the role rule

@dataclass(frozen=True)
class MRSeriesEvidence:
    """What one series (or one instance of it) says about its role; :func:`series_evidence` builds it.

    ``phases_per_position``: the most distinct trigger times at one slice position, or Cardiac
    Number of Images (0018,1090) when larger; ``tis_per_position``: the most distinct inversion
    times at one position; ``normals``: the distinct slice normals ``[k, 3]``; ``n_positions``:
    distinct positions along the first normal.
    """

    series_uid: str
    sop_class: str
    n_images: int
    description: str
    image_type: tuple[str, ...]
    complex_components: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    inversion_recovery: bool
    inversion_times_ms: tuple[float, ...]
    tis_per_position: int
    phases_per_position: int
    gated: bool
    signed: bool
    normals: np.ndarray
    n_positions: int


def _norm_token(value: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", value.upper())


def series_evidence(datasets: Sequence[Dataset], frames: Sequence[MRFrame] | None = None) -> MRSeriesEvidence:
    """The role evidence of one series from its instances (one instance is enough for routing).

    ``frames``: their headers when already read (else read here from the headers alone, so that data
    sets read without their Pixel Data work; instances without usable geometry still give their
    attributes).
    """
    if frames is None:
        frames = []
        for index, ds in enumerate(datasets):
            try:
                frames.extend(_instance_frames(ds, index, pixels=False))
            except UnusableSeriesError:
                continue
    first = datasets[0]
    image_type: list[str] = []
    components: list[str] = []
    scanning: list[str] = []
    variant: list[str] = []
    inversion_times: set[float] = set()
    ir = False
    gated = False
    signed = False
    cardiac_images = 0
    for ds in datasets:
        for value in as_list(ds.get("ImageType")):
            token = str(value).strip().upper()
            if token and token not in image_type:
                image_type.append(token)
        for value in as_list(ds.get("ScanningSequence")):
            if str(value).strip().upper() not in scanning:
                scanning.append(str(value).strip().upper())
        for value in as_list(ds.get("SequenceVariant")):
            if str(value).strip().upper() not in variant:
                variant.append(str(value).strip().upper())
        component = text_value(ds, "ComplexImageComponent").upper()
        if component and component not in components:
            components.append(component)
        ti = _float(raw_number(ds, "InversionTime"))
        if math.isfinite(ti) and ti > 0:
            inversion_times.add(round(ti, 1))
        cardiac_images = max(cardiac_images, _int(raw_number(ds, "CardiacNumberOfImages")))
        options = [str(v).strip().upper() for v in as_list(ds.get("ScanOptions"))]
        technique = text_value(ds, "CardiacSynchronizationTechnique").upper()
        gated = gated or "CG" in options or "TriggerTime" in ds or cardiac_images > 0 or technique not in ("", "NONE")
        signed = signed or _int(raw_number(ds, "PixelRepresentation")) == 1
        ir = ir or text_value(ds, "InversionRecovery").upper() == "YES"
    for frame in frames:
        for token in frame.image_type:
            if token and token not in image_type:
                image_type.append(token)
        if frame.complex_component and frame.complex_component not in components:
            components.append(frame.complex_component)
        if math.isfinite(frame.inversion_ms) and frame.inversion_ms > 0:
            inversion_times.add(round(frame.inversion_ms, 1))
        gated = gated or math.isfinite(frame.trigger_ms)
        signed = signed or frame.intercept < 0
    for ds in datasets:  # Enhanced MR: the MR Modifier of any frame or shared group
        for group in list(ds.get("SharedFunctionalGroupsSequence") or [])[:1] + list(
                ds.get("PerFrameFunctionalGroupsSequence") or [])[:1]:
            modifier = _item([group], "MRModifierSequence")
            if modifier is not None and text_value(modifier, "InversionRecovery").upper() == "YES":
                ir = True
            if _item([group], "CardiacSynchronizationSequence") is not None:
                gated = True
    ir = ir or "IR" in scanning

    normals = np.zeros((0, 3))
    n_positions = 0
    tis_per_position = 1 if inversion_times else 0
    phases = 1
    if frames:
        all_normals = np.array([f.normal for f in frames])
        reference = all_normals[0]
        signs = np.where(all_normals @ reference < 0, -1.0, 1.0)[:, None]
        aligned = all_normals * signs
        keys = {tuple(np.round(n, 2)) for n in aligned}
        normals = np.array(sorted(keys))
        along = np.round(np.array([f.position for f in frames]) @ reference, 0)
        n_positions = int(np.unique(along).size)
        for position in np.unique(along):
            here = [f for f, a in zip(frames, along) if a == position]
            triggers = {round(f.trigger_ms, 0) for f in here if math.isfinite(f.trigger_ms)}
            phases = max(phases, len(triggers))
            tis = {round(f.inversion_ms, 0) for f in here if math.isfinite(f.inversion_ms)}
            tis_per_position = max(tis_per_position, len(tis))
    description = " ".join(t for t in (text_value(first, "SeriesDescription"), text_value(first, "ProtocolName")) if t)
    return MRSeriesEvidence(
        series_uid=text_value(first, "SeriesInstanceUID"), sop_class=text_value(first, "SOPClassUID"),
        n_images=len(frames) or len(datasets), description=description, image_type=tuple(image_type),
        complex_components=tuple(components), scanning_sequence=tuple(scanning), sequence_variant=tuple(variant),
        inversion_recovery=ir, inversion_times_ms=tuple(sorted(inversion_times)), tis_per_position=tis_per_position,
        phases_per_position=max(phases, cardiac_images), gated=gated, signed=signed, normals=normals,
        n_positions=n_positions)


@dataclass(frozen=True)
class MRRoleDecision:
    """The role of a series, its plane (``sax``, ``lax``, ``oblique``, ``unknown``), each role's
    score (attribute + description points; the cine roles with their plane points) and the
    reasons (every rule that fired, with its points)."""

    role: str
    plane: str
    scores: tuple[tuple[str, int], ...]
    reasons: tuple[str, ...]

    @property
    def words(self) -> str:
        return ROLE_WORDS[self.role]


_MAP_TYPES = frozenset({"T1MAP", "T2MAP", "T2STARMAP", "T2SMAP", "ECV", "ECVMAP", "MAP", "R2STAR", "R2STARMAP",
                        "T1MAPPING", "T2MAPPING"})
_PSIR_TYPES = frozenset({"PSIR", "R", "REAL"})
_PHASE_TYPES = frozenset({"P", "PHASE"})
_MAG_TYPES = frozenset({"M", "MAG", "MAGNITUDE"})
_LGE_WORDS = frozenset({"LGE", "MDE", "PSMDE", "DE", "DELAY", "DELAYED", "PSIR", "VIABILITY", "SCAR", "IRPFGRE"})
_CINE_WORDS = frozenset({"CINE", "FIESTA", "TRUFI", "TRUFISI", "BTFE", "SSFP", "BSSFP"})
_MAP_WORDS = frozenset({"MOLLI", "SHMOLLI", "SASHA", "T1MAP", "T2MAP", "T2STARMAP", "MAP", "ECV", "MAPPING",
                        "T2STAR"})
_OTHER_WORDS = frozenset({"FLOW", "PC", "VENC", "FASTPC", "TAG", "TAGS", "GRID", "TAGGING", "LOC", "LOCALIZER",
                          "LOCALISER", "SURVEY", "HASTE", "PERFUSION", "PERF", "DWI", "ADC", "DIFFUSION", "STIR",
                          "TSE", "BOLD", "FMRI", "SCOUT"})
_SAX_WORDS = frozenset({"SA", "SAX", "SHORT", "SHORTAXIS", "SHA"})
_LAX_WORDS = frozenset({"LAX", "2CH", "3CH", "4CH", "2C", "3C", "4C", "HLA", "VLA", "LVOT", "LONG", "2CHAMBER",
                        "4CHAMBER"})


def _plane(normals: np.ndarray, axis: np.ndarray) -> tuple[str, float]:
    """(``sax``, ``lax``, ``oblique`` or ``unknown``, the largest angle in degrees) of slice normals to ``axis``."""
    if normals.size == 0:
        return "unknown", math.nan
    cosines = np.clip(np.abs(normals @ axis), 0.0, 1.0)
    angles = np.degrees(np.arccos(cosines))
    if np.all(angles <= _SAX_MAX_DEG):
        return "sax", float(angles.max())
    if np.all(angles >= _LAX_MIN_DEG):
        return "lax", float(angles.min())
    return "oblique", float(angles.max())


def decide_mr_role(evidence: MRSeriesEvidence, lv_axis: np.ndarray | None = None,
                   axis_source: str = "") -> MRRoleDecision:
    """The role of one series: the one rule (module docstring), attributes first, descriptions second.

    ``lv_axis``: the study's LV long-axis estimate (:func:`estimate_lv_axis`) named by
    ``axis_source``; None uses :data:`LV_AXIS_PRIOR` with half the weight.
    """
    by_attributes = dict.fromkeys(MR_ROLES, 0)
    by_words = dict.fromkeys(MR_ROLES, 0)
    scores = by_attributes
    reasons: list[str] = []

    def add(roles: Iterable[str], points: int, why: str) -> None:
        for role in roles:
            scores[role] += points
        reasons.append(f"{why} (+{points} {'/'.join(roles)})")

    lge = ("lge_mag", "lge_psir")
    cine = ("cine_sax", "cine_lax")
    types = {_norm_token(t) for t in evidence.image_type}
    components = set(evidence.complex_components)
    tis = evidence.inversion_times_ms
    ti_words = (f"InversionTime (0018,0082) / InversionTimes (0018,9079) {', '.join(f'{t:g}' for t in tis[:4])}"
                f"{' ...' if len(tis) > 4 else ''} ms") if tis else "no inversion time"
    phases = evidence.phases_per_position
    # attributes
    if types & _MAP_TYPES:
        add(("map",), 3, f"ImageType (0008,0008) holds {', '.join(sorted(types & _MAP_TYPES))}: a parametric map")
    if "PHASE" in components or (types & _PHASE_TYPES and not evidence.inversion_recovery):
        add(("other",), 5, "ComplexImageComponent (0008,9208) / ImageType (0008,0008) says PHASE: phase (flow) images")
    if evidence.inversion_recovery or tis:
        prep = "ScanningSequence (0018,0020) IR / InversionRecovery (0018,9009) YES" if evidence.inversion_recovery \
            else "InversionTime (0018,0082)"
        if evidence.tis_per_position > 1:
            add(("ti_scout",), 3, f"{prep}, {evidence.tis_per_position} inversion times at one position ({ti_words})")
        elif phases > 1:
            add(("ti_scout",), 3, f"{prep} with {phases} cardiac phases per position (CardiacNumberOfImages "
                "(0018,1090) / TriggerTime (0018,1060)): inversion-recovery cine")
        elif tis and _LGE_TI_MS[0] <= tis[0] <= _LGE_TI_MS[1]:
            add(lge, 3, f"{prep}, one inversion time per position ({ti_words}, in {_LGE_TI_MS[0]:g}-"
                f"{_LGE_TI_MS[1]:g} ms) and one phase")
        elif tis:
            add(lge, 1, f"{prep}, one inversion time ({ti_words}) outside {_LGE_TI_MS[0]:g}-{_LGE_TI_MS[1]:g} ms")
        else:
            add(lge, 2, f"{prep} without an inversion time value, one phase")
        if "REAL" in components or types & _PSIR_TYPES:
            add(("lge_psir",), 2, "ComplexImageComponent (0008,9208) REAL / ImageType (0008,0008) PSIR or R: signed "
                "phase-sensitive reconstruction")
        elif "MAGNITUDE" in components or types & _MAG_TYPES:
            add(("lge_mag",), 1, "ComplexImageComponent (0008,9208) / ImageType (0008,0008) says magnitude")
        if evidence.signed:
            add(("lge_psir",), 1, "signed pixel values (PixelRepresentation (0028,0103) 1 or a negative rescale "
                "intercept)")
    elif phases >= _CINE_PHASES:
        add(cine, 3, f"{phases} cardiac phases per position (CardiacNumberOfImages (0018,1090) / TriggerTime "
            "(0018,1060)) and no inversion recovery")
    elif phases > 1:
        add(cine, 1, f"{phases} cardiac phases per position (fewer than {_CINE_PHASES}) and no inversion recovery")
    if not evidence.gated:
        add(("other",), 2, "no cardiac gating (TriggerTime, CardiacNumberOfImages, ScanOptions CG, Cardiac "
            "Synchronization): not a cardiac acquisition")

    # descriptions
    scores = by_words
    text = evidence.description.upper()
    tokens = set(re.split(r"[^A-Z0-9]+", text)) - {""}
    compact = _norm_token(text)
    if "TISCOUT" in compact or "LOOKLOCKER" in compact or {"CINE", "IR"} <= tokens or "CINEIR" in compact \
            or "TIMING" in tokens:
        add(("ti_scout",), 2, f"SeriesDescription / ProtocolName {evidence.description!r} names a TI scout")
    lge_words = (tokens & _LGE_WORDS) | {w for w in ("IRPFGRE", "DELAYEDENHANCEMENT", "MDE") if w in compact}
    if lge_words:
        add(lge, 2, f"SeriesDescription / ProtocolName names LGE ({', '.join(sorted(lge_words))})")
        # GE MAG:SAX_SS_PSMDE / PS:SAX_SS_PSMDE, Siemens ..._MAG / ..._PSIR, Philips LGE_SA_PSIR_M / _R
        if tokens & {"MAG", "MAGNITUDE", "M"}:
            add(("lge_mag",), 1, "SeriesDescription / ProtocolName names magnitude (MAG)")
        elif tokens & {"PSIR", "PS", "R"} or "PSIR" in compact:
            add(("lge_psir",), 1, "SeriesDescription / ProtocolName names PSIR")
    cine_words = (tokens & _CINE_WORDS) | {w for w in ("BTFE", "FIESTA", "TRUFI") if w in compact}
    if cine_words:
        add(cine, 2, f"SeriesDescription / ProtocolName names a cine ({', '.join(sorted(cine_words))})")
    if tokens & _MAP_WORDS or any(w in compact for w in ("T1MAP", "T2MAP", "T2STARMAP", "MOLLI")):
        add(("map",), 2, "SeriesDescription / ProtocolName names a map")
    if (tokens & _OTHER_WORDS) - ({"SCOUT"} if "TISCOUT" in compact or "TI" in tokens else set()):
        add(("other",), 2, f"SeriesDescription / ProtocolName names {', '.join(sorted(tokens & _OTHER_WORDS))}")

    # plane: decides between the two cine roles only (it never makes a series a cine)
    axis = LV_AXIS_PRIOR if lv_axis is None else np.asarray(lv_axis, dtype=float)
    plane, angle = _plane(evidence.normals, axis)
    weight = 1 if lv_axis is None else 2
    source = "the anatomical prior LV axis" if lv_axis is None else (axis_source or "the study's LV axis")
    views = {"cine_sax": 0, "cine_lax": 0}
    if by_attributes["cine_sax"] + by_words["cine_sax"] >= 2:
        def view(role: str, points: int, why: str) -> None:
            views[role] += points
            reasons.append(f"{why} (+{points} {role} against {'cine_lax' if role == 'cine_sax' else 'cine_sax'})")

        if plane == "sax":
            view("cine_sax", weight, f"slice normal {angle:.0f} deg from {source}: short axis")
        elif plane == "lax":
            view("cine_lax", weight, f"slice normals {angle:.0f}+ deg from {source}: long axis")
        if evidence.n_positions >= 3 and len(evidence.normals) == 1:
            view("cine_sax", 1, f"{evidence.n_positions} parallel slice positions: a stack")
        if tokens & _SAX_WORDS:
            view("cine_sax", 1, "SeriesDescription / ProtocolName names short axis")
        if tokens & _LAX_WORDS:
            view("cine_lax", 1, "SeriesDescription / ProtocolName names a long-axis view")

    total = {r: by_attributes[r] + by_words[r] for r in MR_ROLES}
    if max(by_attributes.values()) >= 2:  # attributes decide; descriptions break their ties
        best = max(MR_ROLES, key=lambda r: (by_attributes[r], by_words[r], -MR_ROLES.index(r)))
    else:
        best = max(MR_ROLES, key=lambda r: (total[r], -MR_ROLES.index(r)))
    if best in views:
        best = "cine_lax" if views["cine_lax"] > views["cine_sax"] else "cine_sax"
    if total[best] < 2:
        reasons.append(f"no role reaches 2 points (best {best} {total[best]}): other")
        best = "other"
    shown = tuple((r, total[r] + views.get(r, 0)) for r in MR_ROLES)
    return MRRoleDecision(best, plane, shown, tuple(reasons))


def mr_role_decision(ds: Dataset) -> MRRoleDecision | None:
    """The role decision of one instance alone (no study context); None when it is not an MR image."""
    if text_value(ds, "SOPClassUID") not in (MR_IMAGE_STORAGE, *_MULTI_FRAME) or text_value(ds, "Modality").upper() != "MR":
        return None
    return decide_mr_role(series_evidence([ds]))


def mr_series_role(ds: Dataset) -> str:
    """The role (:data:`MR_ROLES`) one MR instance says its series has; ``""`` when it is not an MR image.

    The routing attribute ``mr_series_role``: :func:`decide_mr_role` on this instance alone
    (the study-level :func:`assign_mr_roles` may refine the plane with the other series).
    """
    decision = mr_role_decision(ds)
    return "" if decision is None else decision.role


def mr_role_reasons(ds: Dataset) -> list[str]:
    """The reasons of :func:`mr_series_role` (the routing attribute ``mr_role_reasons``, for the ledger)."""
    decision = mr_role_decision(ds)
    return [] if decision is None else list(decision.reasons)


def _parallel_groups(frames: Sequence[MRFrame], degrees: float) -> list[list[int]]:
    """Indices of ``frames`` grouped by slice normal (sign ignored), within ``degrees`` of each group's first."""
    if not frames:
        return []
    normals = np.array([f.normal for f in frames])
    unassigned = np.ones(len(frames), dtype=bool)
    groups: list[list[int]] = []
    cos = math.cos(math.radians(degrees))
    while unassigned.any():
        seed = int(np.flatnonzero(unassigned)[0])
        members = unassigned & (np.abs(normals @ normals[seed]) >= cos)
        groups.append([int(i) for i in np.flatnonzero(members)])
        unassigned &= ~members
    return groups


def estimate_lv_axis(frames: Sequence[MRFrame], minimum_positions: int = 5) -> tuple[np.ndarray | None, str]:
    """The LV long-axis estimate of a study: the normal of its largest set of parallel slices (across series)
    with at least ``minimum_positions`` distinct positions along it, and where it came from; (None, "") when
    there is none."""
    best: tuple[int, np.ndarray, list[int]] | None = None
    for group in _parallel_groups(frames, 3.0):
        normal = frames[group[0]].normal
        positions = np.unique(np.round(np.array([frames[i].position for i in group]) @ normal, 0))
        if positions.size >= minimum_positions and (best is None or positions.size > best[0]):
            best = (int(positions.size), normal, group)
    if best is None:
        return None, ""
    series = sorted({frames[i].series_uid for i in best[2]})
    axis = best[1] if float(best[1] @ LV_AXIS_PRIOR) >= 0 else -best[1]
    return axis, f"the normal of {best[0]} parallel slice positions in {len(series)} series"


def assign_mr_roles(datasets: Sequence[Dataset], frames: Sequence[MRFrame] | None = None,
                    ) -> tuple[dict[str, MRRoleDecision], np.ndarray | None, str]:
    """The role of every MR series of a study, with the study as context.

    Returns (series UID -> decision, the LV axis estimate or None, its source). The axis comes
    from the cardiac-gated series that the instance-alone rule does not call ``other`` or ``map``.
    """
    if frames is None:
        frames = mr_frames(datasets)[0]
    by_series: dict[str, list[int]] = {}
    for index, ds in enumerate(datasets):
        if text_value(ds, "SOPClassUID") in (MR_IMAGE_STORAGE, *_MULTI_FRAME):
            by_series.setdefault(text_value(ds, "SeriesInstanceUID"), []).append(index)
    frames_of: dict[str, list[MRFrame]] = {}
    for frame in frames:
        frames_of.setdefault(frame.series_uid, []).append(frame)
    evidence = {uid: series_evidence([datasets[i] for i in indices], frames_of.get(uid, []))
                for uid, indices in by_series.items()}
    provisional = {uid: decide_mr_role(e) for uid, e in evidence.items()}
    candidates = [f for f in frames if provisional.get(f.series_uid) is not None
                  and provisional[f.series_uid].role in ("cine_sax", "cine_lax", "lge_mag", "lge_psir")]
    axis, source = estimate_lv_axis(candidates)
    return {uid: decide_mr_role(e, axis, source) for uid, e in evidence.items()}, axis, source


# --------------------------------------------------------------------------- stacks

@dataclass(frozen=True)
class StackIssue:
    """A fault of a stack (:data:`ISSUE_KINDS`), in words naming the series or attribute; ``slices``: the
    stack slice indices concerned (empty when the images were left out)."""

    kind: str
    detail: str
    slices: tuple[int, ...] = ()


@dataclass(frozen=True)
class MRStack:
    """A short-axis stack of one role built across series.

    ``series_uids[s]``: the series slice ``s`` came from; ``frames[p][s]``: the header of the image
    at phase ``p`` of slice ``s``; ``issues``: what was detected, including the images of the role
    left out of the stack and why (missing slices are issues and gaps in :attr:`stack`, never
    interpolated).
    """

    role: str
    stack: ShortAxisStack
    series_uids: tuple[str, ...]
    frames: tuple[tuple[MRFrame, ...], ...]
    issues: tuple[StackIssue, ...]

    def has(self, kind: str) -> bool:
        return any(issue.kind == kind for issue in self.issues)


def _majority(values: Sequence[Any]) -> Any:
    counts: dict[Any, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return max(counts, key=lambda v: counts[v])


def _fill(out: np.ndarray, placed: Sequence[tuple[MRFrame, tuple[int, int]]], datasets: Sequence[Dataset]) -> None:
    """Write the rescaled pixels of each frame at ``out[phase, slice]``: each instance decoded once, each pixel
    scaled in place in the output (``float64(stored) * slope + intercept``, no temporaries per image)."""
    by_dataset: dict[int, list[tuple[MRFrame, tuple[int, int]]]] = {}
    for frame, where in placed:
        by_dataset.setdefault(frame.dataset, []).append((frame, where))
    shape = out.shape[2:]
    for index, members in by_dataset.items():
        pixels = decoded_pixels(datasets[index])
        if pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        if pixels.shape[1:] != shape:
            raise UnusableSeriesError(f"PixelData (7FE0,0010) of instance {members[0][0].sop_uid} decodes to "
                                      f"{pixels.shape[1:]}, Rows x Columns say {shape}", "PixelData")
        if max(f.number for f, _ in members) > pixels.shape[0]:
            raise UnusableSeriesError(f"PixelData (7FE0,0010) of instance {members[0][0].sop_uid} holds "
                                      f"{pixels.shape[0]} frames, NumberOfFrames (0028,0008) says more", "PixelData")
        for frame, (phase, slice_) in members:
            target = out[phase, slice_]
            if frame.slope != 1.0:
                np.multiply(pixels[frame.number - 1], frame.slope, out=target)
            else:
                target[...] = pixels[frame.number - 1]
            if frame.intercept != 0.0:
                target += frame.intercept


def build_sax_stack(datasets: Sequence[Dataset], frames: Sequence[MRFrame], role: str,
                    decisions: Mapping[str, MRRoleDecision] | None = None,
                    lv_axis: np.ndarray | None = None) -> MRStack:
    """The short-axis stack of ``role`` from the frames of every series of that role (``decisions``; None: all
    ``frames`` belong to it). Raises :class:`UnusableSeriesError` when fewer than 2 slice positions remain.

    Only frames whose normal is within 35 degrees of ``lv_axis`` (when given) are short axis; of those the
    largest parallel group (1 degree) makes the stack and the rest is named as mixed orientation.
    """
    candidates = [f for f in frames if decisions is None or (f.series_uid in decisions
                                                               and decisions[f.series_uid].role == role)]
    issues: list[StackIssue] = []
    if lv_axis is not None:
        keep = [f for f in candidates if _plane(f.normal[None], lv_axis)[0] == "sax"]
        candidates = keep
    if not candidates:
        raise UnusableSeriesError(f"no short-axis images of role {role} ({ROLE_WORDS[role]})", "SeriesInstanceUID")
    groups = _parallel_groups(candidates, _PARALLEL_DEG)
    main = max(groups, key=lambda g: (len({round(float(np.dot(candidates[i].position, candidates[g[0]].normal)), 0)
                                           for i in g}), len(g)))
    for group in groups:
        if group is not main:
            series = sorted({candidates[i].series_uid for i in group})
            angle = math.degrees(math.acos(min(1.0, abs(float(candidates[group[0]].normal
                                                              @ candidates[main[0]].normal)))))
            issues.append(StackIssue("mixed_orientation", f"{len(group)} image(s) of series {', '.join(series)} are "
                                     f"{angle:.1f} deg off the stack's ImageOrientationPatient (0020,0037): left out"))
    members = [candidates[i] for i in main]

    def split(key: Any, kind: str, words: str) -> list[MRFrame]:
        values = [key(f) for f in members]
        keep_value = _majority(values)
        out = [f for f, v in zip(members, values) if v != keep_value]
        if out:
            series = sorted({f.series_uid for f in out})
            issues.append(StackIssue(kind, f"{len(out)} image(s) of series {', '.join(series)} have {words} "
                                     f"{sorted({str(key(f)) for f in out})} instead of {keep_value}: left out"))
        return [f for f, v in zip(members, values) if v == keep_value]

    members = split(lambda f: f.frame_of_reference, "mixed_frame_of_reference", "FrameOfReferenceUID (0020,0052)")
    members = split(lambda f: (f.rows, f.columns), "mixed_matrix", "Rows x Columns (0028,0010/0011)")
    reference_spacing = _majority([f.pixel_spacing for f in members])
    members = split(lambda f: reference_spacing if np.allclose(f.pixel_spacing, reference_spacing, rtol=0.01)
                    else f.pixel_spacing, "mixed_pixel_spacing", "PixelSpacing (0028,0030) (not resampled)")

    normal = members[0].normal
    row_cos = np.array(members[0].row_cosine)
    col_cos = np.array(members[0].column_cosine)
    positions = np.array([f.position for f in members])
    along = positions @ normal
    thickness = float(np.nanmedian([f.thickness_mm for f in members])) if any(
        math.isfinite(f.thickness_mm) for f in members) else math.nan
    tolerance = max(0.1 * thickness if math.isfinite(thickness) else 0.5, 0.05)
    order = np.argsort(along, kind="stable")
    slices: list[list[int]] = []
    for i in order:
        if slices and along[i] - along[slices[-1][0]] <= tolerance:
            slices[-1].append(int(i))
        else:
            slices.append([int(i)])

    chosen: list[list[MRFrame]] = []
    for position_members in slices:
        here = [members[i] for i in position_members]
        present = {f.series_uid for f in here}
        at = float(np.mean(along[position_members]))
        if len(present) > 1:
            numbers = {uid: max(f.series_number for f in here if f.series_uid == uid) for uid in present}
            kept = max(present, key=lambda uid: (numbers[uid], max(f.dataset for f in here if f.series_uid == uid)))
            dropped = sorted(present - {kept})
            issues.append(StackIssue("duplicate", f"slice position {at:.1f} mm is in series {', '.join(dropped)} and "
                                     f"{kept}: the highest SeriesNumber (0020,0011) {numbers[kept]} kept",
                                     (len(chosen),)))
            here = [f for f in here if f.series_uid == kept]
        # phases: by trigger time, else Temporal Position Index, else as received; never by Instance Number
        here.sort(key=lambda f: (f.trigger_ms if math.isfinite(f.trigger_ms) else math.inf, f.temporal_index))
        unique: list[MRFrame] = []
        for f in here:
            if unique and (f.trigger_ms == unique[-1].trigger_ms or (
                    math.isnan(f.trigger_ms) and math.isnan(unique[-1].trigger_ms)
                    and f.temporal_index == unique[-1].temporal_index)):
                issues.append(StackIssue("duplicate", f"slice position {at:.1f} mm holds two images at TriggerTime "
                                         f"(0018,1060) {f.trigger_ms:g} ms ({unique[-1].label}, {f.label}): the "
                                         "first kept", (len(chosen),)))
                continue
            unique.append(f)
        chosen.append(unique)

    if len(chosen) < 2:
        raise UnusableSeriesError(f"{ROLE_WORDS[role]}: {len(chosen)} slice position along the normal of "
                                  "ImageOrientationPatient (0020,0037): a stack needs at least 2", "ImagePositionPatient")
    in_stack = [f.in_stack for c in chosen for f in c]
    if all(in_stack) and len({(f.dataset, f.stack_id) for c in chosen for f in c}) == 1:
        ranks = np.array([c[0].in_stack for c in chosen])
        if not (np.all(np.diff(ranks) > 0) or np.all(np.diff(ranks) < 0)):
            issues.append(StackIssue("stack_position_order", "InStackPositionNumber (0020,9057) orders the slices "
                                     f"{ranks.tolist()} unlike PlanePositionSequence (0020,9113): the positions are "
                                     "used"))
    counts = [len(c) for c in chosen]
    n_phases = min(counts)
    if len(set(counts)) > 1:
        issues.append(StackIssue("phase_count", f"slices hold {min(counts)} to {max(counts)} phases (TriggerTime "
                                 f"(0018,1060)); the first {n_phases} of each are used",
                                 tuple(i for i, c in enumerate(counts) if c != n_phases)))
    slice_positions = np.array([np.mean([f.position for f in c], axis=0) for c in chosen])
    slice_along = slice_positions @ normal
    steps = np.diff(slice_along)
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * spacing) if len(steps) >= 2 else np.zeros(0, dtype=int)
    for i in gaps:
        missing = max(int(round(steps[i] / spacing)) - 1, 1)
        issues.append(StackIssue("missing_slice", f"{missing} slice(s) missing between {slice_along[i]:.1f} and "
                                 f"{slice_along[i + 1]:.1f} mm (step {steps[i]:.1f} mm, {steps[i] / spacing:.1f} x the "
                                 f"median spacing {spacing:.1f} mm): not interpolated", (int(i), int(i) + 1)))
    uneven = [int(i) for i in range(len(steps)) if i not in set(gaps.tolist())
              and abs(steps[i] - spacing) > 0.1 * spacing]
    if uneven:
        issues.append(StackIssue("mixed_spacing", f"slice steps of {', '.join(f'{steps[i]:.1f}' for i in uneven)} mm "
                                 f"differ from the median {spacing:.1f} mm by more than 10 %", tuple(uneven)))
    declared = [f.spacing_between_mm for c in chosen for f in c if math.isfinite(f.spacing_between_mm)]
    if declared and abs(float(np.median(declared)) - spacing) > 0.1 * spacing:
        issues.append(StackIssue("spacing_attribute", f"SpacingBetweenSlices (0018,0088) says "
                                 f"{float(np.median(declared)):g} mm, the positions {spacing:.2f} mm: positions used"))
    in_plane = (slice_positions - slice_positions[0]) @ np.stack([row_cos, col_cos], axis=1)
    shift = np.abs(in_plane) / np.array([reference_spacing[1], reference_spacing[0]])
    shifted = np.flatnonzero(shift.max(axis=1) > 0.5)
    if shifted.size:
        issues.append(StackIssue("in_plane_shift", f"{shifted.size} slice(s) are shifted in plane by up to "
                                 f"{float(np.abs(in_plane).max()):.1f} mm against slice 0 (kept, per-slice positions)",
                                 tuple(int(i) for i in shifted)))

    rows, columns = members[0].rows, members[0].columns
    voxels = np.empty((n_phases, len(chosen), rows, columns))
    trigger = np.full((n_phases, len(chosen)), math.nan)
    placed: list[tuple[MRFrame, tuple[int, int]]] = []
    for s, c in enumerate(chosen):
        for p, f in enumerate(c[:n_phases]):
            placed.append((f, (p, s)))
            trigger[p, s] = f.trigger_ms
    _fill(voxels, placed, datasets)
    stack = ShortAxisStack(voxels, slice_positions, row_cos, col_cos, np.array(reference_spacing, dtype=float),
                           thickness, trigger)
    return MRStack(role, stack, tuple(c[0].series_uid for c in chosen),
                   tuple(tuple(c[p] for c in chosen) for p in range(n_phases)), tuple(issues))


# --------------------------------------------------------------------------- series and studies

@dataclass(frozen=True)
class MRSeries:
    """The images of one MR series as they are: ``pixels[i]`` is ``frames[i]`` (rescaled, float64), and its role."""

    series_uid: str
    frames: tuple[MRFrame, ...]
    pixels: np.ndarray
    decision: MRRoleDecision


def load_mr_series(datasets: Sequence[Dataset] | Dataset) -> MRSeries:
    """Every image of one MR series, rescaled, in the order received, with its role (no study context).

    Raises :class:`UnusableSeriesError` naming the attribute when an instance cannot be read, the
    instances are of several series, or their matrices differ.
    """
    if isinstance(datasets, Dataset):
        datasets = [datasets]
    datasets = list(datasets)
    if not datasets:
        raise UnusableSeriesError("no instances", "SOPInstanceUID")
    frames, refusals = mr_frames(datasets)
    if refusals:
        raise UnusableSeriesError(refusals[0].reason, refusals[0].attribute)
    if len({f.series_uid for f in frames}) != 1:
        raise UnusableSeriesError("SeriesInstanceUID (0020,000E) differs between the instances: pass one series",
                                  "SeriesInstanceUID")
    if len({(f.rows, f.columns) for f in frames}) != 1:
        raise UnusableSeriesError("Rows x Columns (0028,0010/0011) differ between the images of the series", "Rows")
    pixels = np.empty((len(frames), frames[0].rows, frames[0].columns))
    flat = pixels[np.newaxis]
    _fill(flat, [(f, (0, i)) for i, f in enumerate(frames)], datasets)
    return MRSeries(frames[0].series_uid, tuple(frames), pixels, decide_mr_role(series_evidence(datasets, frames)))


@dataclass(frozen=True)
class CMRStudy:
    """A cardiac MR study read: the role of each series, the short-axis stacks, and what was refused.

    ``stacks[role]`` for each of ``cine_sax``, ``lge_mag``, ``lge_psir`` the study has; a role whose
    series could not make a stack is a refusal with an empty ``sop_uid``.
    """

    decisions: dict[str, MRRoleDecision]
    stacks: dict[str, MRStack]
    refusals: tuple[MRRefusal, ...]
    lv_axis: np.ndarray | None
    lv_axis_source: str

    def series_of(self, role: str) -> list[str]:
        return [uid for uid, d in self.decisions.items() if d.role == role]


def load_cmr_study(datasets: Sequence[Dataset]) -> CMRStudy:
    """Roles for every MR series of a study and the short-axis stacks of cine and LGE, across series.

    Instances that cannot be read are refused one by one (:class:`MRRefusal`); the others go on.
    """
    datasets = list(datasets)
    frames, refusals = mr_frames(datasets)
    usable = {f.dataset for f in frames}
    kept = [ds for i, ds in enumerate(datasets) if i in usable]
    remap = {old: new for new, old in enumerate(sorted(usable))}
    frames = [_reindex(f, remap[f.dataset]) for f in frames]
    decisions, axis, source = assign_mr_roles(kept, frames)
    stacks: dict[str, MRStack] = {}
    for role in STACK_ROLES:
        if not any(d.role == role for d in decisions.values()):
            continue
        try:
            stacks[role] = build_sax_stack(kept, frames, role, decisions, axis)
        except UnusableSeriesError as exc:
            refusals.append(MRRefusal("", ", ".join(uid for uid, d in decisions.items() if d.role == role),
                                      exc.reason, exc.attribute))
    return CMRStudy(decisions, stacks, tuple(refusals), axis, source)


def _reindex(frame: MRFrame, dataset: int) -> MRFrame:
    return frame if frame.dataset == dataset else replace(frame, dataset=dataset)
