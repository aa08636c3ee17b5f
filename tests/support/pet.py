"""A factory of small synthetic dynamic PET Image Storage series with known truth (pydicom only).

:func:`dynamic_pet_series` builds one instance per slice per frame, in the timing convention of a
named vendor variant (``ge``: Frame Reference Time = frame start; ``philips``: Frame Reference
Time = frame middle; ``siemens``: Acquisition Time = frame start, Frame Reference Time a
decay-weighted time), with per-instance Rescale Slope, Image Index, an empty Instance Number and,
optionally, shuffled order. :class:`PETTruth` holds the voxels, affine and frame times (seconds
after the radiopharmaceutical start) the loader must find.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.uids import deterministic_uid

__all__ = ["PET_STORAGE", "PETTruth", "dynamic_pet_series", "RB82_DURATIONS_S"]

PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
MANUFACTURERS = {"ge": "GE MEDICAL SYSTEMS", "siemens": "SIEMENS", "philips": "Philips Medical Systems"}
#: 8 frames of varying length (an Rb-82-like start of a schedule)
RB82_DURATIONS_S: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 30.0, 60.0)


@dataclass(frozen=True)
class PETTruth:
    voxels: np.ndarray  # [frame, slice, row, column] in Bq/mL
    affine: np.ndarray
    start_s: np.ndarray  # after the radiopharmaceutical start
    duration_s: np.ndarray


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def dynamic_pet_series(
    vendor: str = "ge",
    *,
    seed: int = 0,
    n_slices: int = 6,
    rows: int = 16,
    cols: int = 16,
    durations_s: tuple[float, ...] = RB82_DURATIONS_S,
    injection_to_scan_s: float = 20.0,
    shuffle: bool = True,
    description: str = "REST RB82 DYNAMIC",
    oblique: bool = False,
) -> tuple[list[Dataset], PETTruth]:
    """Instances of one dynamic series and the truth; ``seed`` fixes values, UIDs and order."""
    rng = np.random.default_rng(seed)
    n_frames = len(durations_s)
    durations = np.asarray(durations_s, dtype=float)
    starts = injection_to_scan_s + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    truth_voxels = rng.uniform(0.0, 5.0e4, size=(n_frames, n_slices, rows, cols)).round(0)
    injection = datetime(2026, 3, 4, 9, 30, 0)
    series_reference = injection + timedelta(seconds=injection_to_scan_s)

    if oblique:
        angle = np.deg2rad(20.0)
        row_cos = np.array([np.cos(angle), np.sin(angle), 0.0])
        col_cos = np.array([0.0, 0.0, -1.0])
    else:
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_cos, col_cos)
    spacing, dz, origin = (3.2, 3.1), 3.27, np.array([-25.0, -20.0, 40.0])
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = normal * dz, col_cos * spacing[0]
    affine[:3, 2], affine[:3, 3] = row_cos * spacing[1], origin

    study_uid = deterministic_uid("pet-study", str(seed))
    series_uid = deterministic_uid("pet-series", str(seed), vendor)
    datasets: list[Dataset] = []
    for frame in range(n_frames):
        frame_start = injection + timedelta(seconds=float(starts[frame]))
        for slice_ in range(n_slices):
            sop_uid = deterministic_uid("pet-sop", str(seed), vendor, str(frame), str(slice_))
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = UID(PET_STORAGE)
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = PET_STORAGE, sop_uid
            ds.PatientName, ds.PatientID = "Synthetic^Pet", "SYNPET-1"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID = deterministic_uid("pet-for", str(seed))
            ds.Modality, ds.Manufacturer = "PT", MANUFACTURERS[vendor]
            ds.SeriesDescription = description
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = injection.strftime("%Y%m%d")
            ds.SeriesTime = _tm(series_reference)
            ds.InstanceNumber = ""  # some vendors leave it empty
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.SeriesType = ["DYNAMIC", "IMAGE"]
            ds.NumberOfTimeSlices, ds.NumberOfSlices = n_frames, n_slices
            ds.ImageIndex = frame * n_slices + slice_ + 1
            ds.ActualFrameDuration = int(round(durations[frame] * 1000))
            offset_ms = (starts[frame] - injection_to_scan_s) * 1000.0
            if vendor == "ge":
                ds.FrameReferenceTime = f"{offset_ms:.1f}"
                ds.AcquisitionTime = _tm(series_reference)
            elif vendor == "philips":
                ds.FrameReferenceTime = f"{offset_ms + 500.0 * durations[frame]:.1f}"
                ds.AcquisitionTime = _tm(frame_start)
            else:  # siemens: acquisition time is the frame start, FRT a decay-weighted time
                ds.AcquisitionTime = _tm(frame_start)
                ds.FrameReferenceTime = f"{offset_ms + 0.47 * durations[frame] * 1000.0:.1f}"
            ds.Units, ds.DecayCorrection = "BQML", "START"
            ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
            item = Dataset()
            item.Radiopharmaceutical = "Rb-82 chloride"
            item.RadionuclideHalfLife = "75.45"
            item.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f")
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
                "129503007", "SCT", "Rubidium chloride Rb^82^")
            item.RadiopharmaceuticalCodeSequence = Sequence([code])
            ds.RadiopharmaceuticalInformationSequence = Sequence([item])
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
            ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + slice_ * dz * normal]
            ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
            ds.SliceThickness = f"{dz:g}"
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            values = truth_voxels[frame, slice_]
            slope = max(float(values.max()), 1.0) / 32000.0 * float(rng.uniform(0.8, 1.2))
            stored = np.round(values / slope)
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
            truth_voxels[frame, slice_] = stored * float(ds.RescaleSlope)
            ds.PixelData = stored.astype("<u2").tobytes()
            datasets.append(ds)
    if shuffle:
        datasets = [datasets[i] for i in rng.permutation(len(datasets))]
    return datasets, PETTruth(truth_voxels, affine, starts, durations)
