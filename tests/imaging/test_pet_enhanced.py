"""Enhanced PET Image Storage (multi-frame) to the same timed 4-D volume as PET Image Storage; faults refused in words."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.pet import (
    ENHANCED_TIMING,
    LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE,
    classify_pet_series,
    load_dynamic_pet,
)
from node.imaging.volume import FrameAxis, FrameSchedule, Volume
from node.synth.pet.dicom import PETSeriesInfo, PETSeriesInstances, build_pet_series
from node.synth.pet.enhanced import build_enhanced_pet
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from node.uids import deterministic_uid
from tests.support.pet import RB82_DURATIONS_S
from tests.support.tools import dciodvfy

N_SLICES = 5
SEEDS = range(6)
DECAYS = ("START", "ADMIN", "NONE")


def _volume(seed: int, *, oblique: bool) -> Volume:
    """Random Bq/mL frames on an Rb-82-like schedule starting 10-40 s after the injection."""
    rng = np.random.default_rng(seed)
    schedule = FrameSchedule.from_durations(RB82_DURATIONS_S, start_s=float(rng.uniform(10.0, 40.0)))
    voxels = rng.uniform(0.0, 5.0e4, size=(schedule.n_frames, N_SLICES, 8, 9))
    angle = np.deg2rad(20.0) if oblique else 0.0
    row_cos = np.array([np.cos(angle), np.sin(angle), 0.0])
    col_cos = np.array([0.0, 0.0, -1.0]) if oblique else np.array([0.0, 1.0, 0.0])
    affine = np.eye(4)
    affine[:3, 0] = np.cross(row_cos, col_cos) * 3.27
    affine[:3, 1], affine[:3, 2] = col_cos * 3.2, row_cos * 3.1
    affine[:3, 3] = rng.uniform(-50.0, 50.0, size=3)
    return Volume(voxels, affine, FrameAxis.dynamic(schedule.start_s, schedule.duration_s))


def _identity(seed: int, description: str, decay: str) -> tuple[PatientInfo, StudyInfo, PETSeriesInfo]:
    patient = PatientInfo("Synthetic^Pet", f"SYNPET-{seed}", "19600101", "F", 66, 70.0, 1.65)
    study = StudyInfo(deterministic_uid("enhanced-pet-study", seed), deterministic_uid("enhanced-pet-for", seed),
                      "20260304", "093000", f"ACC{seed}", str(seed), "PET MBF (SYNTHETIC)")
    series = PETSeriesInfo(deterministic_uid("enhanced-pet-series", seed, decay), 3, description, "rb82_chloride",
                           datetime(2026, 3, 4, 9, 30) + timedelta(minutes=seed), decay_correction=decay)
    return patient, study, series


def _enhanced(seed: int, *, decay: str = "START", oblique: bool = False, shuffle: bool = False,
              description: str = "REST RB82 DYNAMIC") -> tuple[Volume, PETSeriesInstances]:
    volume = _volume(seed, oblique=oblique)
    patient, study, series = _identity(seed, description, decay)
    written = build_enhanced_pet(volume, patient=patient, study=study, series=series,
                                 shuffle_rng=np.random.default_rng(seed + 100) if shuffle else None)
    return volume, written


def _content(ds: Dataset, index: int) -> Dataset:
    """Frame Content of stored frame ``index`` (unshuffled: time frame ``index // N_SLICES``, slice ``index % N_SLICES``)."""
    return ds.PerFrameFunctionalGroupsSequence[index].FrameContentSequence[0]


def _shift_start(ds: Dataset, index: int, seconds: float) -> None:
    item = _content(ds, index)
    moment = datetime.strptime(item.FrameAcquisitionDateTime, "%Y%m%d%H%M%S.%f") + timedelta(seconds=seconds)
    item.FrameAcquisitionDateTime = moment.strftime("%Y%m%d%H%M%S.%f")


def _refusal(datasets: list[Dataset], attribute: str, words: str) -> UnusableSeriesError:
    verdict = classify_pet_series(datasets)
    assert not verdict.usable
    assert attribute in verdict.attributes, verdict.description
    assert words in verdict.description, verdict.description
    with pytest.raises(UnusableSeriesError) as caught:
        load_dynamic_pet(datasets)
    assert caught.value.attribute == verdict.attributes[0]
    assert words in caught.value.reason and f"{attribute} (" in caught.value.reason
    return caught.value


@pytest.mark.parametrize("seed", SEEDS)
def test_loaded_voxels_affine_and_frame_times_are_the_truth(seed: int, tmp_path: Path) -> None:
    decay = DECAYS[seed % len(DECAYS)]
    volume, written = _enhanced(seed, decay=decay, oblique=seed % 2 == 1, shuffle=seed % 3 == 0)
    path = tmp_path / "enhanced.dcm"
    written.datasets[0].save_as(path, enforce_file_format=True)
    series = load_dynamic_pet([pydicom.dcmread(path)])

    assert classify_pet_series([written.datasets[0]]).usable
    assert series.timing == ENHANCED_TIMING and series.volume.is_dynamic
    assert series.volume.voxels.shape == volume.voxels.shape
    schedule = volume.frame_axis.schedule if volume.frame_axis is not None else None
    assert schedule is not None
    np.testing.assert_allclose(series.start_s, schedule.start_s, atol=1e-3)
    np.testing.assert_allclose(series.duration_s, schedule.duration_s, atol=1e-6)
    np.testing.assert_allclose(series.volume.affine, volume.affine, atol=1e-3)
    # within half a rescale slope of the (decay-state-scaled) truth, and exactly the stored values
    expected = volume.voxels * written.scale[:, None, None, None]
    tolerance = 0.5 * written.rescale_slope[:, :, None, None] * (1 + 1e-9)
    assert np.all(np.abs(series.volume.voxels - expected) <= tolerance)
    np.testing.assert_allclose(series.volume.voxels, written.pixel_bq_per_ml, rtol=1e-12, atol=1e-9)
    assert series.units == "BQML" and series.decay_correction == decay
    if written.decay_reference_s is None:
        assert series.decay_reference_s is None
    else:
        assert series.decay_reference_s == pytest.approx(written.decay_reference_s, abs=1e-3)
    assert series.time_zero == "radiopharmaceutical_start"
    assert series.tracer == "rb82_chloride" and series.half_life_s == pytest.approx(75.45)
    assert series.state == "rest" and series.notes == ()
    assert "ATTN" in series.corrected_image and ("DECY" in series.corrected_image) == (decay != "NONE")
    assert series.sop_instance_uids == (written.datasets[0].SOPInstanceUID,)


@pytest.mark.parametrize("seed", SEEDS)
def test_enhanced_and_pet_image_storage_of_one_volume_load_alike(seed: int) -> None:
    decay = DECAYS[seed % len(DECAYS)]
    volume = _volume(seed, oblique=seed % 2 == 0)
    patient, study, series = _identity(seed, "STRESS REGADENOSON RB82", decay)
    legacy = load_dynamic_pet(build_pet_series(volume, patient=patient, study=study, series=series,
                                               shuffle_rng=np.random.default_rng(seed)).datasets)
    enhanced = load_dynamic_pet(build_enhanced_pet(volume, patient=patient, study=study, series=series).datasets)
    np.testing.assert_allclose(enhanced.volume.voxels, legacy.volume.voxels, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(enhanced.volume.affine, legacy.volume.affine, atol=1e-6)
    np.testing.assert_allclose(enhanced.start_s, legacy.start_s, atol=1e-3)
    np.testing.assert_allclose(enhanced.duration_s, legacy.duration_s, atol=1e-6)
    for field in ("units", "tracer", "half_life_s", "decay_correction", "time_zero", "state", "study_uid",
                  "series_uid", "frame_of_reference_uid", "notes"):
        assert getattr(enhanced, field) == getattr(legacy, field), field
    if legacy.decay_reference_s is None:
        assert enhanced.decay_reference_s is None
    else:
        assert enhanced.decay_reference_s == pytest.approx(legacy.decay_reference_s, abs=1e-3)
    assert set(legacy.corrected_image) <= set(enhanced.corrected_image)
    assert enhanced.state == "stress"


@pytest.mark.parametrize("seed", SEEDS)
def test_frames_stored_in_any_order_load_identically(seed: int) -> None:
    _, ordered = _enhanced(seed, oblique=seed % 2 == 1)
    _, shuffled = _enhanced(seed, oblique=seed % 2 == 1, shuffle=True)
    positions = [item.PlanePositionSequence[0].ImagePositionPatient
                 for item in shuffled.datasets[0].PerFrameFunctionalGroupsSequence]
    assert positions != [item.PlanePositionSequence[0].ImagePositionPatient
                         for item in ordered.datasets[0].PerFrameFunctionalGroupsSequence]
    a, b = load_dynamic_pet(ordered.datasets), load_dynamic_pet(shuffled.datasets)
    np.testing.assert_array_equal(a.volume.voxels, b.volume.voxels)
    np.testing.assert_array_equal(a.volume.affine, b.volume.affine)
    np.testing.assert_array_equal(a.start_s, b.start_s)
    np.testing.assert_array_equal(a.duration_s, b.duration_s)
    # without Temporal Position Index the distinct frame starts group the frames
    no_index = copy.deepcopy(shuffled.datasets[0])
    for item in no_index.PerFrameFunctionalGroupsSequence:
        del item.FrameContentSequence[0].TemporalPositionIndex
    c = load_dynamic_pet([no_index])
    np.testing.assert_array_equal(a.volume.voxels, c.volume.voxels)
    np.testing.assert_array_equal(a.start_s, c.start_s)


def _missing_duration(ds: Dataset) -> None:
    del _content(ds, 17).FrameAcquisitionDuration


def _missing_start(ds: Dataset) -> None:
    del _content(ds, 17).FrameAcquisitionDateTime


def _slice_starts_late(ds: Dataset) -> None:
    _shift_start(ds, N_SLICES + 2, 3.0)  # time frame 2, slice 3


def _slice_lasts_longer(ds: Dataset) -> None:
    _content(ds, N_SLICES + 2).FrameAcquisitionDuration = 10500.0  # the other slices of frame 2: 10000 ms


def _frames_overlap(ds: Dataset) -> None:
    for index in range(2 * N_SLICES, 3 * N_SLICES):  # frame 3 moved 5 s earlier: overlaps frame 2
        _shift_start(ds, index, -5.0)


def _temporal_index_against_time(ds: Dataset) -> None:
    for index in range(2 * N_SLICES):  # frames 1 and 2 swap their Temporal Position Index
        _content(ds, index).TemporalPositionIndex = 2 if index < N_SLICES else 1


def _in_stack_against_positions(ds: Dataset) -> None:
    _content(ds, 0).InStackPositionNumber, _content(ds, 2).InStackPositionNumber = 3, 1


def _slice_in_wrong_time_frame(ds: Dataset) -> None:
    _content(ds, N_SLICES + 1).TemporalPositionIndex = 3


def _two_stacks(ds: Dataset) -> None:
    _content(ds, 4).StackID = "2"


@pytest.mark.parametrize(("mutate", "attribute", "words"), [
    (_missing_duration, "FrameAcquisitionDuration", "is missing from frame 18 of instance"),
    (_missing_start, "FrameAcquisitionDateTime", "is missing or unreadable in frame 18 of instance"),
    (_slice_starts_late, "FrameAcquisitionDateTime", "differs across the slices of frame 2 by 3 s"),
    (_slice_lasts_longer, "FrameAcquisitionDuration", "differs across the slices of frame 2 (10000 to 10500 ms)"),
    (_frames_overlap, "FrameAcquisitionDateTime", "frames overlap: frame 3 starts 5 s before frame 2 ends"),
    (_temporal_index_against_time, "TemporalPositionIndex", "orders the time frames differently from their starts"),
    (_in_stack_against_positions, "InStackPositionNumber", "orders the slices of frame 1 differently"),
    (_slice_in_wrong_time_frame, "TemporalPositionIndex", "time frame 2 holds 4 frames"),
    (_two_stacks, "StackID", "names 2 stacks"),
], ids=lambda v: getattr(v, "__name__", None))
def test_inconsistent_frames_are_refused_naming_the_attribute(mutate: object, attribute: str, words: str) -> None:
    _, written = _enhanced(20)
    ds = written.datasets[0]
    assert callable(mutate)
    mutate(ds)
    _refusal([ds], attribute, words)


@pytest.mark.parametrize(("flavour", "kind", "words"), [
    ("STATIC", "static", "static (summed) image"),
    ("CARDIAC_GATED", "gated", "cardiac-gated series"),
    ("WHOLE_BODY", "whole_body", "whole-body series"),
    ("CARDIAC", "unknown", "value 3 must be DYNAMIC"),
])
def test_static_gated_and_whole_body_enhanced_pet_are_refused(flavour: str, kind: str, words: str) -> None:
    _, written = _enhanced(21)
    ds = written.datasets[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavour, "NONE"]
    _refusal([ds], "ImageType", words)
    assert classify_pet_series([ds]).kind == kind


def test_gated_frames_and_cardiac_synchronisation_are_refused() -> None:
    _, written = _enhanced(22)
    ds = copy.deepcopy(written.datasets[0])
    ds.PerFrameFunctionalGroupsSequence[7].PETFrameTypeSequence = copy.deepcopy(
        ds.SharedFunctionalGroupsSequence[0].PETFrameTypeSequence)
    ds.PerFrameFunctionalGroupsSequence[7].PETFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "CARDIAC_GATED",
                                                                                  "NONE"]
    _refusal([ds], "FrameType", "value 3 of frame 8 of instance")
    ds = copy.deepcopy(written.datasets[0])
    ds.CardiacSynchronizationTechnique = "PROSPECTIVE"
    _refusal([ds], "CardiacSynchronizationTechnique", "a cardiac-gated series")
    assert classify_pet_series([ds]).kind == "gated"


def test_uncorrected_and_wrong_units_are_refused_and_legacy_converted_is_not_read() -> None:
    _, written = _enhanced(23)
    ds = copy.deepcopy(written.datasets[0])
    ds.AttenuationCorrected = "NO"
    for item in ds.PerFrameFunctionalGroupsSequence:
        code = item.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
        code.CodeValue, code.CodeMeaning = "{counts}", "Counts"
    verdict = classify_pet_series([ds])
    assert verdict.kind == "dynamic" and verdict.attributes == ("AttenuationCorrected", "MeasurementUnitsCodeSequence")
    assert "not attenuation-corrected" in verdict.description and "'CNTS'" in verdict.description
    converted = copy.deepcopy(written.datasets[0])
    converted.SOPClassUID = LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE
    _refusal([converted], "SOPClassUID", "Legacy Converted Enhanced PET")
    assert classify_pet_series([converted]).kind == "enhanced"


@pytest.mark.parametrize(("decay", "oblique", "shuffle"), [("START", False, False), ("ADMIN", True, True),
                                                            ("NONE", False, True)])
def test_written_object_passes_dciodvfy(decay: str, oblique: bool, shuffle: bool, tmp_path: Path) -> None:
    _, written = _enhanced(30, decay=decay, oblique=oblique, shuffle=shuffle)
    path = tmp_path / "enhanced.dcm"
    written.datasets[0].save_as(path, enforce_file_format=True)
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)
    assert any("EnhancedPETImage" in line for line in lines), "\n".join(lines)


def test_shared_rescale_and_a_series_split_over_two_instances_load() -> None:
    volume, written = _enhanced(24)
    ds = written.datasets[0]
    stored = written.pixel_bq_per_ml / written.rescale_slope[:, :, None, None]
    shared_rescale = copy.deepcopy(ds)
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = "2", "5", "US"
    shared_rescale.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [transformation]
    for item in shared_rescale.PerFrameFunctionalGroupsSequence:
        del item.PixelValueTransformationSequence
    np.testing.assert_allclose(load_dynamic_pet([shared_rescale]).volume.voxels, stored * 2.0 + 5.0, atol=1e-6)

    # time frames 1-3 in one instance, the others in a second one, given in reverse order
    pixels = ds.pixel_array
    parts = []
    for part, frames in enumerate((slice(0, 3 * N_SLICES), slice(3 * N_SLICES, None))):
        piece = copy.deepcopy(ds)
        piece.SOPInstanceUID = deterministic_uid(ds.SOPInstanceUID, part)
        piece.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[frames]
        piece.NumberOfFrames = len(piece.PerFrameFunctionalGroupsSequence)
        piece.PixelData = np.ascontiguousarray(pixels[frames]).astype("<i2").tobytes()
        parts.append(piece)
    split = load_dynamic_pet(parts[::-1])
    whole = load_dynamic_pet([ds])
    np.testing.assert_array_equal(split.volume.voxels, whole.volume.voxels)
    np.testing.assert_array_equal(split.start_s, whole.start_s)
    assert split.sop_instance_uids == (parts[0].SOPInstanceUID, parts[1].SOPInstanceUID)
    assert volume.voxels.shape == split.volume.voxels.shape
