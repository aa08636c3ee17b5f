"""One factory of small synthetic NM Image Storage instances and studies.

For the listener, queue and end-to-end tests, which need valid NM objects fast and do
not look at the image: a single series of multi-frame ``RECON TOMO`` instances with
Poisson counts, Tc-99m sestamibi, a synthetic patient, and UIDs derived from a seed
(a fresh seed gives a fresh study). Tests that need images with a known truth use
``node.synth`` (see :mod:`tests.support.report` and the quant and synth tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.uids import deterministic_uid

__all__ = [
    "NM_STORAGE",
    "PATIENT_BIRTH_DATE",
    "PATIENT_ID",
    "PATIENT_NAME",
    "NMStudy",
    "add_nm_instance",
    "nm_instance",
    "write_nm_study",
]

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"

# synthetic identity: must never appear in logs or the audit log
PATIENT_NAME = "Quillfeather^Zebedee"
PATIENT_ID = "ZQPID-73512"
PATIENT_BIRTH_DATE = "19370914"


class NMStudy(NamedTuple):
    study_uid: str
    series_uid: str
    paths: list[Path]


def nm_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    rows: int = 16,
    cols: int = 16,
    frames: int = 1,
    instance_number: int = 1,
    patient_name: str = PATIENT_NAME,
    patient_id: str = PATIENT_ID,
    birth_date: str = PATIENT_BIRTH_DATE,
    seed: int | None = None,
    mean_counts: float = 50.0,
) -> Dataset:
    """An NM Image Storage instance (Explicit VR Little Endian) of ``frames`` x ``rows`` x ``cols``
    16-bit Poisson counts drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NM_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = NM_STORAGE, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, birth_date, "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "NM", 1, instance_number
    ds.SeriesDescription = "STRESS RECON"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0054, 0x0080)
    ds.SliceVector = list(range(1, frames + 1))
    ds.NumberOfSlices = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    info = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "424299003", "SCT", "Tc-99m sestamibi"
    info.RadiopharmaceuticalCodeSequence = [code]
    ds.RadiopharmaceuticalInformationSequence = [info]
    ds.PixelData = rng.poisson(mean_counts, size=(frames, rows, cols)).astype(np.uint16).tobytes()
    return ds


def write_nm_study(folder: Path, n_instances: int, seed: int, *, size: int = 16, frames: int = 1,
                   **instance: object) -> NMStudy:
    """``n_instances`` NM instances of one study and series, UIDs and counts derived from ``seed``,
    written to ``folder`` as ``nm00000.dcm``, ...; ``instance`` goes to :func:`nm_instance`."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = deterministic_uid("test-study", seed)
    series_uid = deterministic_uid("test-series", seed)
    paths = []
    for index in range(n_instances):
        ds = nm_instance(study_uid, series_uid, deterministic_uid("test-sop", seed, index), rows=size, cols=size,
                         frames=frames, instance_number=index + 1, seed=seed + index, **instance)  # type: ignore[arg-type]
        path = folder / f"nm{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return NMStudy(study_uid, series_uid, paths)


def add_nm_instance(template: Path, folder: Path, seed: int) -> Path:
    """A new instance in the same series as ``template`` (new SOP Instance UID, new counts from ``seed``)."""
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = deterministic_uid("test-late-sop", seed)
    ds.InstanceNumber = int(ds.InstanceNumber) + 1000
    frames, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    ds.PixelData = np.random.default_rng(seed).poisson(50.0, size=(frames, rows, cols)).astype(np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"late-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
