"""MR Image Storage and Enhanced MR Image Storage instances of the CMR phantoms: the DICOM tier.

Reference note ``cmr_lge.md`` sections 3.1-3.3 (SOP classes, the attributes a loader identifies
and orders by) and 4.3 (writing realistic DICOM, checked with ``dciodvfy``).

A series is a list of :class:`MRFrame` (one 2-D image each: slice, phase, trigger time,
inversion time, plane position) plus an :class:`MRSeriesInfo` (role, vendor flavour, UIDs).
Two writers take the same input:

* :func:`classic_mr_series`: MR Image Storage (``1.2.840.10008.5.1.4.1.1.4``), one file per
  frame (slice x phase). Magnitude pixels are unsigned 12-bit, stored = round(value x gain);
  PSIR pixels are **signed** 16-bit (Pixel Representation 1), stored = round(value x gain), no
  rescale (Rescale Slope/Intercept are not in the classic MR IOD). ``gain`` (stored units per
  signal unit) is one per series, returned with the datasets.
* :func:`enhanced_mr_series`: Enhanced MR Image Storage (``1.2.840.10008.5.1.4.1.1.4.1``), one
  multi-frame instance; unsigned 12-bit stored values with a **per-frame** Pixel Value
  Transformation: magnitude ``value = stored x slope_f`` (``slope_f = max_f / 4095``), PSIR
  ``value = stored x slope_f - 2048 x slope_f`` (``slope_f = max_f |value| / 2047``; a negative
  intercept), where value = signal x gain as in the classic writer. Per-frame Plane Position,
  Frame Content (Stack ID ``1``, In-Stack Position = slice + 1, Temporal Position Index = phase
  + 1), Cardiac Synchronization (trigger delay) and MR Modifier (inversion recovery, Inversion
  Times); shared Pixel Measures, Plane Orientation and MR Image Frame Type (Complex Image
  Component MAGNITUDE, or REAL for PSIR).

Vendor flavours (:data:`VENDORS`, ``siemens``/``ge``/``philips``) set Manufacturer, Series
Description (:func:`series_description`), Image Type value 3+ and sequence names; roles are
``cine_sax``, ``cine_lax``, ``lge_mag``, ``lge_psir``, ``ti_scout``, ``map`` (:data:`ROLES`; a
post-contrast MOLLI T1 map, pixels = T1 in ms, gain 1, written as a bSSFP-readout series without
inversion attributes, Image Type value 3 ``T1MAP``). Geometry:
Image Orientation (Patient) = (row cosine: direction of increasing column, column cosine:
direction of increasing row), Image Position (Patient) = centre of the first pixel, Slice
Location = IPP . normal (normal = row cosine x column cosine, apex -> base on short axis).
Classic attributes per reference 4.3: Scan Options ``CG`` (Trigger Time requires it), Patient
Position ``HFS``, Body Part ``HEART``, contrast agent on LGE.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from node import RESEARCH_USE_NOTICE, __version__
from node.synth.cmr.phantom import CMRAnatomy
from node.synth.pet.dicom import instance_header
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from node.uids import deterministic_uid

__all__ = [
    "MR_IMAGE_STORAGE",
    "ENHANCED_MR_IMAGE_STORAGE",
    "ROLES",
    "VENDORS",
    "MANUFACTURERS",
    "MRFrame",
    "MRSeriesInfo",
    "MRSeriesWritten",
    "series_description",
    "image_type",
    "classic_mr_series",
    "enhanced_mr_series",
    "sax_orientation",
    "sax_frames",
]

MR_IMAGE_STORAGE = str(MRImageStorage)
ENHANCED_MR_IMAGE_STORAGE = str(EnhancedMRImageStorage)
#: series roles, in the words of :mod:`node.imaging.mr`
ROLES: tuple[str, ...] = ("cine_sax", "cine_lax", "lge_mag", "lge_psir", "ti_scout", "map")
VENDORS: tuple[str, ...] = ("siemens", "ge", "philips")
MANUFACTURERS: dict[str, str] = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}
_MODELS = {"siemens": "Avanto_fit", "ge": "SIGNA Artist", "philips": "Ingenia"}

_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "siemens": {"cine_sax": "CINE_segmented_SAX", "cine_lax": "CINE_segmented_LAX_4Ch",
                "lge_mag": "de_tfl_psir_SAX_MAG", "lge_psir": "de_tfl_psir_SAX_PSIR", "ti_scout": "TI_Scout_SAX_mid",
                "map": "MOLLI_T1MAP_SAX_POST"},
    "ge": {"cine_sax": "SAX_FIESTA_BH", "cine_lax": "4CH_FIESTA_BH", "lge_mag": "MAG:SAX_SS_PSMDE",
           "lge_psir": "PS:SAX_SS_PSMDE", "ti_scout": "SAX_MID_TI_SCOUT_CINE_IR",
           "map": "SAX_MOLLI_T1MAP_POST"},
    "philips": {"cine_sax": "sBTFE_BH_SA", "cine_lax": "sBTFE_BH_4CH", "lge_mag": "LGE_SA_PSIR_M",
                "lge_psir": "LGE_SA_PSIR_R", "ti_scout": "LL_SA_TI_scout",
                "map": "SA_MOLLI_T1MAP_post"},
}
_IMAGE_TYPE: dict[str, dict[str, list[str]]] = {
    "siemens": {"cine": ["ORIGINAL", "PRIMARY", "M", "RETRO", "DIS2D"], "mag": ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"],
                "psir": ["DERIVED", "PRIMARY", "PSIR", "NORM", "DIS2D"], "map": ["DERIVED", "PRIMARY", "T1MAP", "T1"]},
    "ge": {"cine": ["ORIGINAL", "PRIMARY", "OTHER"], "mag": ["ORIGINAL", "PRIMARY", "OTHER"],
           "psir": ["DERIVED", "PRIMARY", "OTHER"], "map": ["DERIVED", "PRIMARY", "T1MAP"]},
    "philips": {"cine": ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], "mag": ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"],
                "psir": ["ORIGINAL", "PRIMARY", "R_IR", "R", "IR"], "map": ["DERIVED", "PRIMARY", "T1MAP", "T1"]},
}
_SEQUENCE_NAMES = {"siemens": {"cine": "*tfi2d1_12", "ir": "*tfl2d1_16"},
                   "ge": {"cine": "FIESTA", "ir": "FGRE IR"},
                   "philips": {"cine": "B-TFE", "ir": "T1TFE"}}
_MAX_STORED = 4095


def series_description(vendor: str, role: str, slice_number: int | None = None) -> str:
    """Vendor-like Series Description of a role; ``slice_number`` (1-based) appends the UK Biobank
    one-series-per-slice suffix ``_b<k>`` (Siemens) or ``_<k>`` (others)."""
    if vendor not in VENDORS or role not in ROLES:
        raise ValueError(f"vendor must be one of {VENDORS} and role one of {ROLES}, got {vendor!r}, {role!r}")
    text = _DESCRIPTIONS[vendor][role]
    if slice_number is not None:
        text += f"_b{slice_number}" if vendor == "siemens" else f"_{slice_number}"
    return text


def image_type(vendor: str, role: str) -> list[str]:
    """Image Type (0008,0008) of a role in a vendor flavour (PSIR markers: ``PSIR``/``R``/``DERIVED``)."""
    kind = {"lge_psir": "psir", "lge_mag": "mag", "ti_scout": "mag", "map": "map"}.get(role, "cine")
    return list(_IMAGE_TYPE[vendor][kind])


@dataclass(frozen=True, eq=False)
class MRFrame:
    """One 2-D image of a series (signal units, ``[row, col]``) and where/when it was acquired.

    ``position_mm``: Image Position (Patient) of pixel (0, 0); ``slice_index``/``phase_index``
    0-based; ``trigger_time_ms`` after the R wave; ``inversion_time_ms`` for IR sequences;
    ``orientation``: the frame's own Image Orientation (Patient) when it differs from the series'.
    """

    pixels: np.ndarray
    position_mm: np.ndarray
    slice_index: int
    phase_index: int
    trigger_time_ms: float
    inversion_time_ms: float | None = None
    orientation: tuple[float, ...] | None = None  # its own Image Orientation (a re-planned slice); classic only


@dataclass(frozen=True)
class MRSeriesInfo:
    """What a series is: role, vendor flavour, UIDs, numbers and the shared geometry.

    ``orientation``: Image Orientation (Patient) 6 values; ``pixel_mm``; ``thickness_mm``;
    ``spacing_mm`` (Spacing Between Slices; None for single-slice series); ``rr_ms`` the nominal
    interval; ``n_phases`` Cardiac Number of Images; ``acquired`` the series start;
    ``reverse_instance_numbers`` writes Instance Numbers backwards (a loader must sort by position).
    """

    role: str
    vendor: str
    series_uid: str
    series_number: int
    description: str
    orientation: tuple[float, ...]
    pixel_mm: float
    thickness_mm: float
    spacing_mm: float | None
    rr_ms: float
    n_phases: int
    acquired: datetime
    reverse_instance_numbers: bool = False


@dataclass(frozen=True, eq=False)
class MRSeriesWritten:
    """Datasets of one series (writing order) with ``gain`` (stored units per signal unit; a loaded
    pixel / gain is the signal) and, for Enhanced MR, the per-frame ``slopes`` and ``intercepts``
    and ``values`` ``[frame, row, col]`` (signal x gain before quantisation, frame order as written)."""

    info: MRSeriesInfo
    datasets: list[Dataset]
    gain: float
    slopes: np.ndarray | None = None
    intercepts: np.ndarray | None = None
    values: np.ndarray | None = None


def _ds(value: float) -> str:
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _is_ir(role: str) -> bool:
    return role in ("lge_mag", "lge_psir", "ti_scout")


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    o = np.asarray(orientation, dtype=float)
    return np.cross(o[:3], o[3:])


def _common(ds: Dataset, info: MRSeriesInfo, study: StudyInfo) -> None:
    """General Series, Frame of Reference, Equipment and MR acquisition attributes of every instance."""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = info.series_number
    ds.SeriesDescription = info.description
    ds.SeriesDate, ds.SeriesTime = info.acquired.strftime("%Y%m%d"), info.acquired.strftime("%H%M%S")
    ds.BodyPartExamined = "HEART"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURERS[info.vendor]
    ds.ManufacturerModelName = _MODELS[info.vendor]
    ds.DeviceSerialNumber = "SYNTH-0001"
    ds.SoftwareVersions = f"cardionode {__version__}"
    ds.InstitutionName = "Synthetic"
    ds.StationName = "CMRPHANTOM"
    ds.MagneticFieldStrength = "1.5"
    if _is_ir(info.role) and ds.SOPClassUID == MR_IMAGE_STORAGE:  # Enhanced MR has its own contrast module
        ds.ContrastBolusAgent = "Gadobutrol 0.15 mmol/kg"
        ds.ContrastBolusRoute = "IV"


def _pixel_module(ds: Dataset, rows: int, cols: int, signed: bool, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0


def _series_gain(frames: list[MRFrame]) -> float:
    """Stored units per signal unit: the largest |signal| of the series maps to 4000 (12-bit headroom)."""
    largest = max(float(np.max(np.abs(f.pixels))) for f in frames)
    return 4000.0 / largest if largest > 0 else 1.0


def _instance_order(frames: list[MRFrame]) -> list[int]:
    return sorted(range(len(frames)), key=lambda i: (frames[i].slice_index, frames[i].phase_index))


def classic_mr_series(frames: list[MRFrame], info: MRSeriesInfo, patient: PatientInfo, study: StudyInfo,
                      gain: float | None = None) -> MRSeriesWritten:
    """One MR Image Storage instance per frame (module docstring for the pixel rule).

    ``gain`` (stored units per signal unit) defaults to 4000 / the largest |signal| of the series.
    Instance Number runs over (slice, phase) in acquisition order, backwards when
    ``info.reverse_instance_numbers``.
    """
    if not frames:
        raise ValueError("a series needs at least one frame")
    g = _series_gain(frames) if gain is None else float(gain)
    signed = info.role == "lge_psir"
    order = _instance_order(frames)
    vendor_ir = _SEQUENCE_NAMES[info.vendor]["ir" if _is_ir(info.role) else "cine"]
    datasets: list[Dataset] = []
    for number, i in enumerate(order, start=1):
        frame = frames[i]
        sop_uid = deterministic_uid(info.series_uid, "mr-instance", frame.slice_index, frame.phase_index)
        ds = instance_header(MR_IMAGE_STORAGE, sop_uid, patient, study)
        _common(ds, info, study)
        moment = info.acquired + timedelta(seconds=1.0 * frame.slice_index + frame.trigger_time_ms / 1000.0)
        ds.AcquisitionDate, ds.AcquisitionTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")
        ds.ContentDate, ds.ContentTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")
        ds.AcquisitionNumber = frame.slice_index + 1
        ds.InstanceNumber = len(order) + 1 - number if info.reverse_instance_numbers else number
        ds.ImageType = image_type(info.vendor, info.role)
        ds.ImageComments = RESEARCH_USE_NOTICE + " Synthetic phantom data."
        # MR image module
        if _is_ir(info.role):
            ds.ScanningSequence = ["GR", "IR"]
            ds.SequenceVariant = ["SP", "MP"] if info.role != "ti_scout" else ["SS", "MP"]
            ds.InversionTime = _ds(float(frame.inversion_time_ms or 0.0))
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "700", "3.2", "25"
        else:
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = ["SS", "SK"]
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "3.1", "1.3", "60"
        ds.ScanOptions = "CG"
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = vendor_ir
        ds.AngioFlag = "N"
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = "63.68"
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = "1"
        ds.EchoTrainLength = "1"
        ds.PercentSampling = "100"
        ds.PercentPhaseFieldOfView = "100"
        ds.PixelBandwidth = "930"
        ds.ReceiveCoilName = "Body18"
        ds.TransmitCoilName = "Body"
        ds.InPlanePhaseEncodingDirection = "ROW"
        ds.SAR = "0.5"
        ds.dBdt = "0"
        ds.PatientPosition = "HFS"
        ds.TriggerTime = _ds(frame.trigger_time_ms)
        ds.NominalInterval = _ds(info.rr_ms)
        ds.HeartRate = _ds(round(60000.0 / info.rr_ms))
        ds.CardiacNumberOfImages = info.n_phases
        ds.TriggerWindow = "0"
        ds.SliceThickness = _ds(info.thickness_mm)
        if info.spacing_mm is not None:
            ds.SpacingBetweenSlices = _ds(info.spacing_mm)
        # image plane
        orientation = info.orientation if frame.orientation is None else frame.orientation
        ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 4) for v in frame.position_mm]
        ds.PixelSpacing = [_ds(info.pixel_mm), _ds(info.pixel_mm)]
        ds.SliceLocation = _ds(float(np.dot(frame.position_mm, _normal(orientation))))
        # pixels
        rows, cols = frame.pixels.shape
        _pixel_module(ds, rows, cols, signed, 16 if signed else 12)
        if signed:
            stored = np.clip(np.round(frame.pixels * g), -32767, 32767).astype("<i2")
        else:
            stored = np.clip(np.round(frame.pixels * g), 0, _MAX_STORED).astype("<u2")
        ds.SmallestImagePixelValue = int(stored.min())
        ds.LargestImagePixelValue = int(stored.max())
        if signed:
            ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "SS"
        else:
            ds["SmallestImagePixelValue"].VR = ds["LargestImagePixelValue"].VR = "US"
        centre = float(np.percentile(stored, 99.5)) / 2.0
        ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(max(2.0 * centre, 1.0))
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        datasets.append(ds)
    return MRSeriesWritten(info, datasets, g)


# --------------------------------------------------------------------------- Enhanced MR

def _dt(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S.%f")


def _enhanced_image_type(info: MRSeriesInfo) -> list[str]:
    """Enhanced MR Image/Frame Type: value 3 a standard flavour (CINE, or CARDIAC for IR); PSIR is
    told by Complex Image Component REAL, not by a vendor term."""
    return ["ORIGINAL", "PRIMARY", "CINE" if info.role in ("cine_sax", "cine_lax", "ti_scout") else "CARDIAC", "NONE"]


def _frame_type(info: MRSeriesInfo) -> Dataset:
    item = Dataset()
    item.FrameType = _enhanced_image_type(info)
    item.PixelPresentation = "MONOCHROME"
    item.VolumetricProperties = "VOLUME"
    item.VolumeBasedCalculationTechnique = "NONE"
    item.ComplexImageComponent = "REAL" if info.role == "lge_psir" else "MAGNITUDE"
    item.AcquisitionContrast = "T1" if _is_ir(info.role) else "UNKNOWN"
    return item


def _dimension_index(pointer: str, group: str, label: str, organisation_uid: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organisation_uid
    item.DimensionIndexPointer = Tag(pointer)
    item.FunctionalGroupPointer = Tag(group)
    item.DimensionDescriptionLabel = label
    return item


def _shared_groups(info: MRSeriesInfo) -> Dataset:
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(info.pixel_mm), _ds(info.pixel_mm)]
    measures.SliceThickness = _ds(info.thickness_mm)
    if info.spacing_mm is not None:
        measures.SpacingBetweenSlices = _ds(info.spacing_mm)
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [round(float(v), 6) for v in info.orientation]
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.MRImageFrameTypeSequence = Sequence([_frame_type(info)])
    timing = Dataset()
    ir = _is_ir(info.role)
    timing.RepetitionTime = 700.0 if ir else 3.1
    timing.FlipAngle = 25.0 if ir else 60.0
    timing.EchoTrainLength = 1
    timing.RFEchoTrainLength = 1
    timing.GradientEchoTrainLength = 1
    sar = Dataset()
    sar.SpecificAbsorptionRateDefinition = "IEC_WHOLE_BODY"
    sar.SpecificAbsorptionRateValue = 0.5
    timing.SpecificAbsorptionRateSequence = Sequence([sar])
    modes = []
    for kind in ("STATIC FIELD", "RF", "GRADIENT"):
        mode = Dataset()
        mode.OperatingModeType, mode.OperatingMode = kind, "IEC_NORMAL"
        modes.append(mode)
    timing.OperatingModeSequence = Sequence(modes)
    timing.GradientOutputType = "DB_DT"
    timing.GradientOutput = 0.0
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    fov = Dataset()
    fov.InPlanePhaseEncodingDirection = "ROW"
    fov.MRAcquisitionFrequencyEncodingSteps = 256
    fov.MRAcquisitionPhaseEncodingStepsInPlane = 192
    fov.PercentSampling = 100.0
    fov.PercentPhaseFieldOfView = 100.0
    shared.MRFOVGeometrySequence = Sequence([fov])
    echo = Dataset()
    echo.EffectiveEchoTime = 3.2 if ir else 1.3
    shared.MREchoSequence = Sequence([echo])
    imaging = Dataset()
    imaging.PixelBandwidth = 930.0
    imaging.TransmitterFrequency = 63.68
    imaging.MagnetizationTransfer = "NONE"
    imaging.BloodSignalNulling = "NO"
    imaging.Tagging = "NONE"
    shared.MRImagingModifierSequence = Sequence([imaging])
    receive = Dataset()
    receive.ReceiveCoilName = "Body18"
    receive.ReceiveCoilManufacturerName = MANUFACTURERS[info.vendor]
    receive.ReceiveCoilType = "MULTICOIL"
    receive.QuadratureReceiveCoil = "NO"
    element = Dataset()
    element.MultiCoilElementName = "BO1"
    element.MultiCoilElementUsed = "YES"
    receive.MultiCoilDefinitionSequence = Sequence([element])
    shared.MRReceiveCoilSequence = Sequence([receive])
    transmit = Dataset()
    transmit.TransmitCoilName = "Body"
    transmit.TransmitCoilManufacturerName = MANUFACTURERS[info.vendor]
    transmit.TransmitCoilType = "BODY"
    shared.MRTransmitCoilSequence = Sequence([transmit])
    averages = Dataset()
    averages.NumberOfAverages = 1.0
    shared.MRAveragesSequence = Sequence([averages])
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code("80891009", "SCT", "Heart")])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    return shared


def enhanced_mr_series(frames: list[MRFrame], info: MRSeriesInfo, patient: PatientInfo, study: StudyInfo,
                       gain: float | None = None, shuffle_rng: np.random.Generator | None = None) -> MRSeriesWritten:
    """One Enhanced MR Image Storage instance holding every frame (module docstring for the rescale rule).

    Frames are stored slice-major then phase (or in an order drawn from ``shuffle_rng``); the
    returned ``values``/``slopes``/``intercepts`` follow the stored order.
    """
    if not frames:
        raise ValueError("a series needs at least one frame")
    if any(f.orientation is not None for f in frames):
        raise ValueError("the Enhanced MR writer shares one Plane Orientation; write re-planned slices as classic MR")
    g = _series_gain(frames) if gain is None else float(gain)
    psir = info.role == "lge_psir"
    order = _instance_order(frames)
    if shuffle_rng is not None:
        order = [order[i] for i in shuffle_rng.permutation(len(order))]
    rows, cols = frames[0].pixels.shape
    stored = np.empty((len(order), rows, cols), dtype="<u2")
    values = np.empty((len(order), rows, cols))
    slopes = np.empty(len(order))
    intercepts = np.zeros(len(order))
    per_frame: list[Dataset] = []
    organisation_uid = deterministic_uid(info.series_uid, "enhanced-mr-dimensions")
    sop_uid = deterministic_uid(info.series_uid, "enhanced-mr-instance",
                                *([] if shuffle_rng is None else [int(i) for i in order]))
    ir = _is_ir(info.role)
    for n, i in enumerate(order):
        frame = frames[i]
        v = frame.pixels.astype(np.float64) * g
        values[n] = v
        largest = float(np.max(np.abs(v)))
        if psir:
            slope = float(_ds(largest / 2047.0 if largest > 0 else 1.0))
            intercept = float(_ds(-2048.0 * slope))
        else:
            slope = float(_ds(largest / _MAX_STORED if largest > 0 else 1.0))
            intercept = 0.0
        slopes[n], intercepts[n] = slope, intercept
        stored[n] = np.clip(np.round((v - intercept) / slope), 0, _MAX_STORED)
        moment = info.acquired + timedelta(seconds=1.0 * frame.slice_index + frame.trigger_time_ms / 1000.0)
        content = Dataset()
        content.FrameAcquisitionNumber = frame.slice_index + 1
        content.FrameReferenceDateTime = _dt(moment)
        content.FrameAcquisitionDateTime = _dt(moment)
        content.FrameAcquisitionDuration = 200.0
        content.StackID = "1"
        content.InStackPositionNumber = frame.slice_index + 1
        content.TemporalPositionIndex = frame.phase_index + 1
        content.DimensionIndexValues = [1, frame.slice_index + 1, frame.phase_index + 1]
        position = Dataset()
        position.ImagePositionPatient = [round(float(x), 4) for x in frame.position_mm]
        transformation = Dataset()
        transformation.RescaleIntercept, transformation.RescaleSlope = _ds(intercept), _ds(slope)
        transformation.RescaleType = "US"
        cardiac = Dataset()
        cardiac.NominalPercentageOfCardiacPhase = round(100.0 * frame.trigger_time_ms / info.rr_ms, 3)
        cardiac.NominalCardiacTriggerDelayTime = float(frame.trigger_time_ms)
        cardiac.ActualCardiacTriggerDelayTime = float(frame.trigger_time_ms)
        cardiac.IntervalsAcquired = 1
        cardiac.IntervalsRejected = 0
        cardiac.HeartRate = int(round(60000.0 / info.rr_ms))
        cardiac.RRIntervalTimeNominal = float(info.rr_ms)
        cardiac.LowRRValue = int(info.rr_ms * 0.9)
        cardiac.HighRRValue = int(info.rr_ms * 1.1)
        modifier = Dataset()
        modifier.InversionRecovery = "YES" if ir else "NO"
        if ir:
            modifier.InversionTimes = [float(frame.inversion_time_ms or 0.0)]
        modifier.FlowCompensation = "NONE"
        modifier.Spoiling = "RF" if ir else "NONE"
        modifier.T2Preparation = "NO"
        modifier.SpectrallySelectedExcitation = "NONE"
        modifier.SpatialPresaturation = "NONE"
        modifier.PartialFourier = "NO"
        modifier.ParallelAcquisition = "NO"
        groups = Dataset()
        groups.FrameContentSequence = Sequence([content])
        groups.PlanePositionSequence = Sequence([position])
        groups.PixelValueTransformationSequence = Sequence([transformation])
        groups.CardiacSynchronizationSequence = Sequence([cardiac])
        groups.MRModifierSequence = Sequence([modifier])
        per_frame.append(groups)

    ds = instance_header(ENHANCED_MR_IMAGE_STORAGE, sop_uid, patient, study)
    _common(ds, info, study)
    ds.ImageType = _enhanced_image_type(info)
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "REAL" if psir else "MAGNITUDE"
    ds.AcquisitionContrast = "T1" if ir else "UNKNOWN"
    ds.AcquisitionDateTime = _dt(info.acquired)
    ds.AcquisitionDuration = float(len({f.slice_index for f in frames}) * info.rr_ms / 1000.0 * 16)
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = RESEARCH_USE_NOTICE + " Synthetic phantom data."
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = info.acquired.strftime("%Y%m%d"), info.acquired.strftime("%H%M%S.%f")
    ds.NumberOfFrames = len(order)
    # MR pulse sequence
    ds.PulseSequenceName = _SEQUENCE_NAMES[info.vendor]["ir" if ir else "cine"]
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE" if ir else "FREE_PRECESSION"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL"
    ds.NumberOfKSpaceTrajectories = 1
    # cardiac synchronization module
    ds.CardiacSynchronizationTechnique = "PROSPECTIVE" if ir else "RETROSPECTIVE"
    ds.CardiacSignalSource = "ECG"
    ds.CardiacRRIntervalSpecified = float(info.rr_ms)
    ds.CardiacBeatRejectionTechnique = "NONE"
    ds.LowRRValue = int(info.rr_ms * 0.9)
    ds.HighRRValue = int(info.rr_ms * 1.1)
    ds.IntervalsAcquired = 16
    ds.IntervalsRejected = 0
    ds.RespiratoryMotionCompensationTechnique = "BREATH_HOLD"
    ds.RespiratorySignalSource = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(info)])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    organisation = Dataset()
    organisation.DimensionOrganizationUID = organisation_uid
    ds.DimensionOrganizationSequence = Sequence([organisation])
    ds.DimensionIndexSequence = Sequence([
        _dimension_index("StackID", "FrameContentSequence", "Stack", organisation_uid),
        _dimension_index("InStackPositionNumber", "FrameContentSequence", "Slice", organisation_uid),
        _dimension_index("TemporalPositionIndex", "FrameContentSequence", "Cardiac phase", organisation_uid),
    ])
    _pixel_module(ds, rows, cols, False, 12)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    return MRSeriesWritten(info, [ds], g, slopes, intercepts, values)



def sax_orientation(anatomy: CMRAnatomy) -> tuple[float, ...]:
    """Image Orientation (Patient) of the phantom's short-axis slices (row cosine, column cosine)."""
    x_axis, y_axis = anatomy.image_axes()
    return tuple(float(v) for v in np.concatenate([x_axis, y_axis]))


def sax_frames(images: np.ndarray, anatomy: CMRAnatomy, trigger_times_ms: np.ndarray | list[float],
               inversion_time_ms: float | None = None, slices: list[int] | None = None) -> list[MRFrame]:
    """Frames of a short-axis stack ``images`` ``[phase, slice, row, col]`` (or ``[slice, row, col]``
    for one phase) at the phantom's slice positions; ``slices`` keeps a subset (a missing slice)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    keep = range(arr.shape[1]) if slices is None else slices
    return [MRFrame(arr[p, k], anatomy.slice_origin_mm(k), k, p, float(trigger_times_ms[p]), inversion_time_ms)
            for k in keep for p in range(arr.shape[0])]
