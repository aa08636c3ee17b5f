"""NM Image Storage datasets (multi-frame reconstructed SPECT) from volumes.

One function, :func:`build_nm_dataset`, turns a ``Volume`` into an NM Image
(SOP class 1.2.840.10008.5.1.4.1.1.20) with the attributes dciodvfy expects
for ``RECON TOMO`` and ``RECON GATED TOMO`` (reference note dicom_outputs.md
section 8: no Patient Position next to the Patient Orientation Code Sequence,
frame durations inside the Rotation Information Sequence, Collimator Type
present, SCT codes).

Geometry: the volume affine maps (slice, row, col) to LPS mm. Image
Orientation (Patient) takes the column axis (row direction cosine) and the row
axis (column direction cosine); the slice axis must point along their cross
product (the NM convention for Spacing Between Slices); Image Position
(Patient) is the centre of voxel (0, 0, 0). Both go in the single item of the
Detector Information Sequence, as PS3.3 C.8.4.11 requires for
reconstructions.

Frames: ``RECON TOMO`` frames are slices (Frame Increment Pointer = Slice
Vector). ``RECON GATED TOMO`` frames are ordered time slot by time slot, each
holding all slices (Frame Increment Pointer = R-R Interval Vector\\Time Slot
Vector\\Slice Vector, all vectors 1-based). Pixels are uint16 counts with no
rescaling; values must be integers in 0..65535.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from node import RESEARCH_USE_NOTICE, __version__
from node.imaging.radiopharmaceuticals import TRACERS
from node.imaging.volume import Volume

__all__ = [
    "NM_IMAGE_STORAGE",
    "PatientInfo",
    "StudyInfo",
    "SeriesInfo",
    "geometry_attributes",
    "set_patient_and_study",
    "build_nm_dataset",
]

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SLICE_VECTOR = Tag(0x0054, 0x0080)
TIME_SLOT_VECTOR = Tag(0x0054, 0x0070)
RR_INTERVAL_VECTOR = Tag(0x0054, 0x0060)


@dataclass(frozen=True)
class PatientInfo:
    """Synthetic patient identity (never logged)."""

    name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # "M" | "F"
    age_years: int
    weight_kg: float
    height_m: float


@dataclass(frozen=True)
class StudyInfo:
    study_uid: str
    frame_of_reference_uid: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    accession_number: str
    study_id: str
    description: str = "MYOCARDIAL PERFUSION SPECT (SYNTHETIC)"


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    sop_instance_uid: str
    series_number: int
    description: str
    state: str  # "stress" | "rest"
    orientation: str  # "transaxial" | "short_axis"
    series_time: str  # HHMMSS
    heart_rate_bpm: int = 65


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def geometry_attributes(affine: np.ndarray) -> tuple[list[float], list[float], list[float], float]:
    """``(ImageOrientationPatient, ImagePositionPatient, PixelSpacing, SpacingBetweenSlices)`` of an affine.

    Raises ValueError when the axes are not orthogonal or the slice axis does
    not point along the row x column normal.
    """
    col0, col1, col2 = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    dz, dr, dc = (float(np.linalg.norm(v)) for v in (col0, col1, col2))
    row_cos, col_cos, slice_dir = col2 / dc, col1 / dr, col0 / dz
    if abs(np.dot(row_cos, col_cos)) > 1e-6 or abs(np.dot(slice_dir, row_cos)) > 1e-6:
        raise ValueError("volume axes must be orthogonal to be written as NM slices")
    if np.dot(np.cross(row_cos, col_cos), slice_dir) < 0.999:
        raise ValueError("slice axis must point along the row x column normal (NM slice convention)")
    iop = [round(float(v), 8) for v in (*row_cos, *col_cos)]
    ipp = [round(float(v), 4) for v in affine[:3, 3]]
    return iop, ipp, [round(dr, 6), round(dc, 6)], round(dz, 6)


def _patient_orientation() -> tuple[Sequence, Sequence]:
    orientation = _code("102538003", "SCT", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code("40199007", "SCT", "supine")])
    gantry = _code("102540008", "SCT", "headfirst")
    return Sequence([orientation]), Sequence([gantry])


def set_patient_and_study(ds: Dataset, patient: PatientInfo, study: StudyInfo) -> None:
    """Write the Patient and General Study modules' attributes of the synthetic ``patient`` and ``study``
    into ``ds`` (every synthetic writer, NM and PET, uses this one)."""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{int(patient.age_years):03d}Y"
    ds.PatientWeight = f"{patient.weight_kg:.1f}"
    ds.PatientSize = f"{patient.height_m:.2f}"
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number


def build_nm_dataset(
    volume: Volume,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    tracer: str,
    acquisition_datetime: datetime,
) -> Dataset:
    """An NM Image dataset holding ``volume`` (3D: RECON TOMO; 4D gated: RECON GATED TOMO).

    ``volume.voxels`` must hold integer counts in 0..65535 (they are stored
    as uint16 without rescaling).
    """
    voxels = np.asarray(volume.voxels)
    if np.any(voxels < 0) or np.any(voxels > 65535) or np.any(np.round(voxels) != voxels):
        raise ValueError("NM pixel values must be integers in 0..65535")
    gated = voxels.ndim == 4
    n_slots = voxels.shape[0] if gated else 1
    n_slices, n_rows, n_cols = voxels.shape[-3:]
    iop, ipp, pixel_spacing, spacing = geometry_attributes(volume.affine)
    info = TRACERS[tracer]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(NM_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(series.sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's root (implementation id)
    ds.file_meta.ImplementationVersionName = f"CARDIONODE_{__version__}"[:16]

    # SOP common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = series.sop_instance_uid
    ds.InstanceCreationDate = study.study_date
    ds.InstanceCreationTime = series.series_time
    # patient / study
    set_patient_and_study(ds, patient, study)
    ds.StudyDescription = study.description
    # series / equipment / frame of reference
    ds.Modality = "NM"
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = series.series_time
    ds.BodyPartExamined = "HEART"
    ds.Manufacturer = "CardioNode synthetic phantom"
    ds.ManufacturerModelName = "CardioNode phantom"
    ds.DeviceSerialNumber = "SYNTH-0001"
    ds.SoftwareVersions = f"cardionode {__version__}"
    ds.InstitutionName = "Synthetic"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    orientation, gantry = _patient_orientation()
    ds.PatientOrientationCodeSequence = orientation
    ds.PatientGantryRelationshipCodeSequence = gantry
    # general image / NM image
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON GATED TOMO" if gated else "RECON TOMO", "EMISSION"]
    ds.ContentDate = study.study_date
    ds.ContentTime = series.series_time
    ds.AcquisitionDate = acquisition_datetime.strftime("%Y%m%d")
    ds.AcquisitionTime = acquisition_datetime.strftime("%H%M%S")
    ds.ImageComments = RESEARCH_USE_NOTICE + " Synthetic phantom data."
    ds.LossyImageCompression = "00"
    ds.CorrectedImage = ["UNIF", "COR"]
    ds.CountsAccumulated = int(min(voxels.sum(), 2**31 - 1))
    ds.AcquisitionContextSequence = Sequence()
    # image pixel / NM image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(n_rows)
    ds.Columns = int(n_cols)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = pixel_spacing
    # multi-frame
    ds.NumberOfFrames = int(n_slots * n_slices)
    ds.NumberOfSlices = int(n_slices)
    ds.SliceVector = [int(v) for v in np.tile(np.arange(1, n_slices + 1), n_slots)]
    if gated:
        ds.FrameIncrementPointer = [RR_INTERVAL_VECTOR, TIME_SLOT_VECTOR, SLICE_VECTOR]
        ds.NumberOfRRIntervals = 1
        ds.RRIntervalVector = [1] * (n_slots * n_slices)
        ds.NumberOfTimeSlots = int(n_slots)
        ds.TimeSlotVector = [int(v) for v in np.repeat(np.arange(1, n_slots + 1), n_slices)]
        rr_ms = 60000.0 / series.heart_rate_bpm
        gate_item = Dataset()
        gate_item.TriggerTime = 0.0
        data_item = Dataset()
        data_item.FrameTime = round(rr_ms / n_slots, 3)
        data_item.NominalInterval = int(round(rr_ms))
        data_item.LowRRValue = int(round(rr_ms * 0.8))
        data_item.HighRRValue = int(round(rr_ms * 1.2))
        data_item.IntervalsAcquired = 900
        data_item.IntervalsRejected = 12
        gate_item.DataInformationSequence = Sequence([data_item])
        ds.GatedInformationSequence = Sequence([gate_item])
        ds.BeatRejectionFlag = "Y"
        ds.HeartRate = int(series.heart_rate_bpm)
    else:
        ds.FrameIncrementPointer = SLICE_VECTOR
    # isotope
    window = Dataset()
    window_range = Dataset()
    window_range.EnergyWindowLowerLimit = info.window_kev[0]
    window_range.EnergyWindowUpperLimit = info.window_kev[1]
    window.EnergyWindowRangeSequence = Sequence([window_range])
    window.EnergyWindowName = info.window_name
    ds.EnergyWindowInformationSequence = Sequence([window])
    ds.NumberOfEnergyWindows = 1
    pharm = Dataset()
    pharm.Radiopharmaceutical = info.radiopharmaceutical_text
    pharm.RadiopharmaceuticalRoute = "INTRAVENOUS"
    pharm.RadiopharmaceuticalStartTime = acquisition_datetime.strftime("%H%M%S")
    pharm.RadionuclideTotalDose = round(info.typical_dose_mbq * (1.0 if series.state == "stress" else 0.4), 1)
    pharm.RadionuclideCodeSequence = Sequence([_code(*info.radionuclide_code)])
    pharm.RadiopharmaceuticalCodeSequence = Sequence([_code(*info.agent_code)])
    ds.RadiopharmaceuticalInformationSequence = Sequence([pharm])
    # detector (one item for reconstructions, carrying the slice geometry)
    detector = Dataset()
    detector.CollimatorGridName = "LEHR"
    detector.CollimatorType = "PARA"
    detector.FieldOfViewShape = "RECTANGLE"
    detector.FieldOfViewDimensions = [533, 387]
    detector.ZoomFactor = [1.0, 1.0]
    detector.ImagePositionPatient = ipp
    detector.ImageOrientationPatient = iop
    view = (
        _code("103340004", "SCT", "Short axis") if series.orientation == "short_axis" else _code("62824007", "SCT", "Transverse")
    )
    detector.ViewCodeSequence = Sequence([view])
    ds.DetectorInformationSequence = Sequence([detector])
    ds.NumberOfDetectors = 1
    # tomo acquisition
    rotation = Dataset()
    rotation.StartAngle = 315.0
    rotation.AngularStep = 3.0
    rotation.RotationDirection = "CC"
    rotation.ScanArc = 180.0
    rotation.ActualFrameDuration = 25000 if series.state == "stress" else 20000
    rotation.NumberOfFramesInRotation = 60
    rotation.RadialPosition = [250.0]
    rotation.TableTraverse = 0.0
    rotation.TableHeight = 150.0
    ds.RotationInformationSequence = Sequence([rotation])
    ds.NumberOfRotations = 1
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    # reconstruction
    ds.SpacingBetweenSlices = spacing
    ds.SliceThickness = spacing
    ds.ReconstructionDiameter = round(pixel_spacing[1] * n_cols, 3)
    ds.ConvolutionKernel = "OSEM4I8S BW0.5"
    if series.orientation == "short_axis":
        ds.SliceProgressionDirection = "APEX_TO_BASE"
    # pixels: frame f = slot * n_slices + slice
    frames = voxels.reshape(n_slots * n_slices, n_rows, n_cols).astype("<u2")
    ds.PixelData = frames.tobytes()
    ds["PixelData"].VR = "OW"
    return ds
