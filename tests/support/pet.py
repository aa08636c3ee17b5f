"""Small synthetic dynamic PET Image Storage series with known truth, for the loader's tests.

A thin user of the DICOM tier's writer, :func:`node.synth.pet.dicom.build_pet_series` (the one
PET writer): :func:`dynamic_pet_series` fills a small 4-D volume with seeded random values,
writes it in the timing convention of a named vendor variant (``ge``: Frame Reference Time =
frame start; ``philips``: Frame Reference Time = frame middle; ``siemens``: Acquisition Time =
frame start, Frame Reference Time a decay-weighted time) with Decay Correction ``START``,
per-instance Rescale Slope, Image Index, an empty Instance Number and, optionally, shuffled
order. :class:`PETTruth` holds the voxels, affine and frame times (seconds after the
radiopharmaceutical start) the loader must find.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom import Dataset

from node.imaging.volume import FrameAxis, Volume
from node.synth.pet.dicom import PETSeriesInfo, build_pet_series
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from node.uids import deterministic_uid

__all__ = ["PETTruth", "dynamic_pet_series", "RB82_DURATIONS_S"]

#: 8 frames of varying length (an Rb-82-like start of a schedule)
RB82_DURATIONS_S: tuple[float, ...] = (10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 30.0, 60.0)

_PATIENT = PatientInfo(name="Synthetic^Pet", patient_id="SYNPET-1", birth_date="19600101", sex="M", age_years=66,
                       weight_kg=80.0, height_m=1.75)


@dataclass(frozen=True)
class PETTruth:
    voxels: np.ndarray  # [frame, slice, row, column] in Bq/mL, as stored (decay-corrected to the acquisition start)
    affine: np.ndarray
    start_s: np.ndarray  # after the radiopharmaceutical start
    duration_s: np.ndarray


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
    """Instances of one dynamic Rb-82 series and the truth; ``seed`` fixes values, UIDs and order."""
    rng = np.random.default_rng(seed)
    durations = np.asarray(durations_s, dtype=float)
    starts = injection_to_scan_s + np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    values = rng.uniform(0.0, 5.0e4, size=(len(durations), n_slices, rows, cols)).round(0)
    if oblique:
        angle = np.deg2rad(20.0)
        row_cos, col_cos = np.array([np.cos(angle), np.sin(angle), 0.0]), np.array([0.0, 0.0, -1.0])
    else:
        row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    spacing, dz, origin = (3.2, 3.1), 3.27, np.array([-25.0, -20.0, 40.0])
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = np.cross(row_cos, col_cos) * dz, col_cos * spacing[0]
    affine[:3, 2], affine[:3, 3] = row_cos * spacing[1], origin

    injection = datetime(2026, 3, 4, 9, 30, 0)
    study = StudyInfo(study_uid=deterministic_uid("pet-study", str(seed)),
                      frame_of_reference_uid=deterministic_uid("pet-for", str(seed)), study_date="20260304",
                      study_time="093000", accession_number="SYNPETACC1", study_id="1",
                      description="DYNAMIC CARDIAC PET (SYNTHETIC)")
    series = PETSeriesInfo(series_uid=deterministic_uid("pet-series", str(seed), vendor), series_number=1,
                           description=description, tracer="rb82_chloride", injection=injection, vendor=vendor,
                           decay_correction="START", instance_numbers=False)
    written = build_pet_series(Volume(values, affine, FrameAxis.dynamic(starts, durations)), patient=_PATIENT,
                               study=study, series=series, shuffle_rng=rng if shuffle else None)
    return written.datasets, PETTruth(written.pixel_bq_per_ml, affine, starts, durations)
