"""Realistic inputs for the results tests: NM source instances and a SPECT ReportContent.

The NM instances follow the NM Image IOD closely enough that dciodvfy accepts them
(they are evidence for the SR, and the patient/study modules of every output are
copied from them). The ReportContent is built from numbers the way the SPECT
pipeline fills it: 17 segments x stress/rest/difference, global perfusion, function,
phase and an AI prediction with a Grad-CAM heat map.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.dicom.uids import deterministic_uid
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS
from node.results.content import (
    Algorithm,
    Evaluation,
    MapImage,
    Measurement,
    MeasurementGroup,
    ReportContent,
    SourceInstance,
)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


def make_nm(study_uid: str, state: str, seed: int, acquisition_time: str = "101500") -> Dataset:
    """A small short-axis NM instance (8 frames of 16 x 16) of one state, with plausible headers."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    series_uid = deterministic_uid("test-nm-series", study_uid, state)
    sop_uid = deterministic_uid("test-nm-instance", study_uid, state)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Phantom^Results"
    ds.PatientID = "PHANTOM-RESULTS"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "M"
    ds.StudyDate = "20260115"
    ds.StudyTime = "093000"
    ds.SeriesDate = "20260115"
    ds.SeriesTime = acquisition_time
    ds.AcquisitionDate = "20260115"
    ds.AcquisitionTime = acquisition_time
    ds.ContentDate = "20260115"
    ds.ContentTime = acquisition_time
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "NM"
    ds.Manufacturer = "CardioNode phantom"
    ds.SeriesNumber = 1 if state == "stress" else 2
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"{state.upper()} SA"
    ds.ImageType = ["DERIVED", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.PatientOrientation = ""
    ds.FrameOfReferenceUID = deterministic_uid("test-nm-for", study_uid)
    ds.PositionReferenceIndicator = ""
    frames = 8
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = [0x00540080]  # SliceVector
    ds.SliceVector = list(range(1, frames + 1))
    ds.NumberOfSlices = frames
    ds.Rows = 16
    ds.Columns = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [6.4, 6.4]
    ds.SliceThickness = 6.4
    ds.SpacingBetweenSlices = 6.4
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    pixels = rng.poisson(50, size=(frames, 16, 16)).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def source_instance(ds: Dataset) -> SourceInstance:
    return SourceInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)


QUANT = Algorithm(
    name="CardioNode SPECT quantification",
    version="1.0.0",
    parameters=("normal_limits=synthetic-tc99m-v1", "grid=40x72"),
    training_data="Normal limits from synthetic phantoms (no patient data).",
)
MODEL = Algorithm(
    name="cardionode-cad-net",
    version="0.3.1",
    parameters=("weights=sha256:3f1c2a9d0b7e", "threshold=0.50"),
    training_data="Synthetic phantom cohort, 2000 studies.",
)


def polar_map(seed: int, defect_segments: tuple[int, ...] = (7, 13)) -> np.ndarray:
    """A polar map [n_u, n_psi] in % of maximum with a defect in the given segments."""
    rng = np.random.default_rng(seed)
    ids = DEFAULT_GRID.segment_ids()
    values = 85.0 + rng.normal(0, 3, size=DEFAULT_GRID.shape)
    for seg in defect_segments:
        values[ids == seg] -= 35.0
    return np.clip(values, 0, 100)


def make_content(
    sources: list[Dataset], seed: int = 1, lvef: float = 58.3, with_prediction: bool = True
) -> ReportContent:
    study_uid = sources[0].StudyInstanceUID
    stress = polar_map(seed)
    rest = polar_map(seed + 1, defect_segments=(13,))
    stress_seg = DEFAULT_GRID.segment_means(stress)
    rest_seg = DEFAULT_GRID.segment_means(rest)
    groups: list[MeasurementGroup] = []
    for state, seg_values in (("stress", stress_seg), ("rest", rest_seg), ("difference", rest_seg - stress_seg)):
        for s in range(1, N_SEGMENTS + 1):
            value = round(float(seg_values[s - 1]), 1)
            if state == "difference":
                score = max(0, min(4, round(value / 10)))
                finding = "defect_reversible" if value > 15 else "perfusion_normal"
            else:
                score = 0 if value >= 70 else (2 if value >= 50 else 3)
                finding = "perfusion_normal" if score == 0 else "perfusion_abnormal"
            groups.append(
                MeasurementGroup(
                    label=f"{state.capitalize()} perfusion AHA segment {s}",
                    finding=finding,
                    site=f"aha_{s}",
                    state=state,
                    algorithm=QUANT,
                    measurements=(
                        Measurement("relative_uptake", value, "%"),
                        Measurement("segment_score", float(score), "{score}"),
                    ),
                )
            )
    groups.append(
        MeasurementGroup(
            label="Global perfusion",
            finding="perfusion_abnormal",
            site="left_ventricle",
            state=None,
            algorithm=QUANT,
            measurements=(
                Measurement("sss", 9.0, "{score}"),
                Measurement("srs", 3.0, "{score}"),
                Measurement("sds", 6.0, "{score}"),
                Measurement("tpd_stress", 12.4, "%"),
                Measurement("tpd_rest", 4.1, "%"),
                Measurement("tpd_ischemic", 8.3, "%"),
                Measurement("tid_ratio", 1.08, "1"),
            ),
            evaluations=(Evaluation("perfusion_category", "abnormal"),),
        )
    )
    groups.append(
        MeasurementGroup(
            label="Gated function at stress",
            finding="lv_function",
            site="left_ventricle",
            state="stress",
            algorithm=QUANT,
            measurements=(
                Measurement("edv", 112.5, "ml"),
                Measurement("esv", 46.9, "ml"),
                Measurement("lvef", lvef, "%"),
                Measurement("stroke_volume", 65.6, "ml"),
                Measurement("phase_peak", 134.2, "deg"),
                Measurement("phase_sd", 14.7, "deg"),
                Measurement("phase_bandwidth", 41.0, "deg"),
                Measurement("phase_entropy", 0.52, "1"),
            ),
            evaluations=(Evaluation("lv_function_category", "normal"),),
        )
    )
    images = [
        MapImage("stress", "Stress perfusion", stress, "%", (0.0, 100.0), segment_values=tuple(float(v) for v in stress_seg), algorithm=QUANT),
        MapImage("rest", "Rest perfusion", rest, "%", (0.0, 100.0), segment_values=tuple(float(v) for v in rest_seg), algorithm=QUANT),
    ]
    if with_prediction:
        heat = np.clip((100 - stress) / 60.0, 0, 1)
        images.append(
            MapImage("gradcam_cad", "AI Grad-CAM: obstructive CAD", heat, "1", (0.0, 1.0), colormap="inferno",
                     derivation="gradcam", algorithm=MODEL, overlay_on="stress")
        )
        groups.append(
            MeasurementGroup(
                label="AI obstructive CAD prediction",
                finding="obstructive_cad",
                site="heart",
                state=None,
                algorithm=MODEL,
                measurements=(Measurement("probability", 0.73, "1"),),
                evaluations=(Evaluation("classification", "present"),),
                explanation_image="gradcam_cad",
            )
        )
    return ReportContent(
        pipeline="spect_mpi",
        pipeline_version="1.0.0",
        procedure="nm_myocardial_perfusion",
        study_instance_uid=study_uid,
        sources=tuple(source_instance(ds) for ds in sources),
        groups=tuple(groups),
        images=tuple(images),
        algorithms=(QUANT, MODEL) if with_prediction else (QUANT,),
        notes=("Attenuation correction: none.",),
    )
