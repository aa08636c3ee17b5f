"""The PET DICOM tier (node.synth.pet.dicom, node.synth.pet.study): written instances load back to the truth.

Every vendor timing variant x Decay Correction: frame starts within 0.5 s, voxels within the
rescale quantisation, the decay state the loader reports undoes the written scaling; shuffled
order loads identically; timing faults the loader tests (tests/imaging/test_pet.py) do not
already cover are refused naming the attribute; dciodvfy finds no error; routing reads
modality PT, the state and the tracer.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.pet import TIMING_VARIANTS, classify_pet_series, load_dynamic_pet
from node.imaging.radiopharmaceuticals import PET_TRACERS
from node.imaging.volume import FrameAxis, FrameSchedule, Volume
from node.pipelines.routing import routing_attributes
from node.synth.pet.dicom import (
    DECAY_CORRECTIONS,
    PETSeriesInfo,
    PETSeriesInstances,
    build_pet_series,
    pet_series_description,
)
from node.synth.pet.study import build_pet_study, build_phantom_pet_study, write_pet_study
from node.synth.pet.tac import frame_schedule
from node.synth.spect.nm_dicom import StudyInfo
from node.synth.spect.study import synthetic_patient
from node.uids import deterministic_uid
from tests.support.tools import dciodvfy_tool

INJECTION = datetime(2026, 5, 6, 23, 57, 30)  # the frames run past midnight


def _volume(rng: np.random.Generator, schedule: FrameSchedule, shape: tuple[int, int, int] = (4, 10, 12),
            oblique: bool = False) -> Volume:
    """Random Bq/mL values (some negative, as noisy reconstructions have) on a transaxial or oblique grid."""
    voxels = rng.uniform(-2.0e3, 6.0e4, size=(schedule.n_frames, *shape))
    voxels[0, 0] = 0.0  # an all-zero slice
    affine = np.eye(4)
    if oblique:
        angle = np.deg2rad(25.0)
        row, col = np.array([np.cos(angle), 0.0, np.sin(angle)]), np.array([0.0, 1.0, 0.0])
    else:
        row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = np.cross(row, col) * 3.27, col * 3.2, row * 3.1
    affine[:3, 3] = [-30.0, -12.0, 55.0]
    return Volume(voxels, affine, FrameAxis.dynamic(schedule.start_s, schedule.duration_s))


def _reread(datasets: list[Dataset]) -> list[Dataset]:
    """The instances as a receiver sees them: written to bytes and parsed again."""
    out: list[Dataset] = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


def _series(volume: Volume, vendor: str, decay: str, seed: int, *, state: str = "rest", tracer: str = "rb82_chloride",
            shuffle: bool = True) -> PETSeriesInstances:
    patient = synthetic_patient("F", 58, f"pet-dicom-{seed}")
    study = StudyInfo(deterministic_uid("t-pet", seed, "study"), deterministic_uid("t-pet", seed, "for"), "20260506",
                      "235500", "ACC1", "1", "SYNTHETIC PET")
    series = PETSeriesInfo(series_uid=deterministic_uid("t-pet", seed, vendor, decay), series_number=3,
                           description=pet_series_description(state, tracer), tracer=tracer, injection=INJECTION,
                           vendor=vendor, decay_correction=decay, dose_mbq=1100.0)
    return build_pet_series(volume, patient=patient, study=study, series=series,
                            shuffle_rng=np.random.default_rng(seed) if shuffle else None)


@pytest.mark.parametrize("decay", DECAY_CORRECTIONS)
@pytest.mark.parametrize("vendor", sorted(TIMING_VARIANTS))
def test_every_vendor_and_decay_correction_loads_back_to_the_truth(vendor: str, decay: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    delay_s = float(rng.uniform(0.0, 30.0))  # injection to scan start
    schedule = FrameSchedule.from_durations([(6, 10.0), (2, 30.0), (1, 60.0), (1, 120.0)], start_s=delay_s)
    volume = _volume(rng, schedule, oblique=vendor == "philips")
    written = _series(volume, vendor, decay, seed)
    series = load_dynamic_pet(_reread(written.datasets))
    context = f"seed {seed}, {vendor}, {decay}"

    assert series.timing == vendor and series.time_zero == "radiopharmaceutical_start", context
    np.testing.assert_allclose(series.start_s, schedule.start_s, atol=0.5, err_msg=context)
    np.testing.assert_allclose(series.duration_s, schedule.duration_s, atol=1e-3, err_msg=context)
    np.testing.assert_allclose(series.volume.affine, volume.affine, atol=1e-3, err_msg=context)
    assert series.tracer == "rb82_chloride" and series.half_life_s == PET_TRACERS["rb82_chloride"].half_life_s
    assert series.units == "BQML" and series.decay_correction == decay and series.state == "rest", context
    assert series.notes == (), context
    # the loader finds exactly what was stored ...
    np.testing.assert_allclose(series.volume.voxels, written.pixel_bq_per_ml, rtol=1e-12, atol=1e-9)
    # ... which is the truth in the decay state the series declares, within half a rescale step per instance
    lam = math.log(2.0) / series.half_life_s
    if decay == "NONE":
        assert series.decay_reference_s is None and "DECY" not in series.corrected_image
        to_injection = 1.0 / FrameSchedule(series.start_s, series.duration_s).mean_decay_factor(lam)  # kinetics' way
    else:
        expected_reference = 0.0 if decay == "ADMIN" else delay_s
        assert series.decay_reference_s is not None
        assert series.decay_reference_s == pytest.approx(expected_reference, abs=0.5), context
        to_injection = np.full(schedule.n_frames, math.exp(lam * series.decay_reference_s))
    error = np.abs(series.volume.voxels * to_injection[:, None, None, None] - volume.voxels)
    bound = 0.5 * written.rescale_slope * to_injection[:, None] * (1 + 1e-6) + 1e-6 * np.abs(volume.voxels).max()
    assert np.all(error.max(axis=(2, 3)) <= bound), context


def test_decay_factor_takes_uncorrected_values_to_the_stored_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    schedule = frame_schedule("Rb-82").subset(np.arange(16) < 6)
    volume = _volume(rng, FrameSchedule(schedule.start_s + 15.0, schedule.duration_s), shape=(2, 4, 4))
    uncorrected = _series(volume, "ge", "NONE", seed, shuffle=False)
    for decay in ("START", "ADMIN"):
        corrected = _series(volume, "ge", decay, seed, shuffle=False)
        for a, b in zip(uncorrected.datasets, corrected.datasets):
            ratio = float(b.DecayFactor)
            values_a = a.pixel_array * float(a.RescaleSlope)
            values_b = b.pixel_array * float(b.RescaleSlope)
            np.testing.assert_allclose(values_a * ratio, values_b, rtol=2e-4, atol=2 * float(b.RescaleSlope))


def test_shuffled_order_loads_identically_for_every_vendor(seed: int) -> None:
    rng = np.random.default_rng(seed)
    schedule = frame_schedule("N-13 ammonia")
    volume = _volume(rng, FrameSchedule(schedule.start_s + 5.0, schedule.duration_s), shape=(3, 6, 6))
    for vendor in TIMING_VARIANTS:
        ordered = load_dynamic_pet(_series(volume, vendor, "START", seed, tracer="n13_ammonia", shuffle=False).datasets)
        shuffled_datasets = _series(volume, vendor, "START", seed, tracer="n13_ammonia").datasets
        assert [ds.SOPInstanceUID for ds in shuffled_datasets] != sorted(ds.SOPInstanceUID for ds in shuffled_datasets)
        shuffled = load_dynamic_pet(shuffled_datasets)
        np.testing.assert_array_equal(ordered.volume.voxels, shuffled.volume.voxels)
        np.testing.assert_array_equal(ordered.start_s, shuffled.start_s)
        assert ordered.sop_instance_uids == shuffled.sop_instance_uids
        assert ordered.tracer == "n13_ammonia"


def _refused(datasets: list[Dataset], attribute: str, words: str) -> None:
    verdict = classify_pet_series(datasets)
    assert not verdict.usable and attribute in verdict.attributes, verdict.description
    assert words in verdict.description, verdict.description
    with pytest.raises(UnusableSeriesError) as caught:
        load_dynamic_pet(datasets)
    assert caught.value.attribute == attribute and words in caught.value.reason


def _ordered(vendor: str, seed: int = 1) -> list[Dataset]:
    schedule = FrameSchedule.from_durations([(4, 10.0), (2, 30.0)], start_s=10.0)
    return _series(_volume(np.random.default_rng(seed), schedule, shape=(3, 4, 4)), vendor, "START", seed,
                   shuffle=False).datasets  # frame-major: instances 3f..3f+2 are frame f


@pytest.mark.parametrize(("vendor", "keyword", "value", "attribute"), [
    ("siemens", "AcquisitionTime", -5.0, "AcquisitionTime"),        # frame 3 starts 5 s early
    ("philips", "FrameReferenceTime", -5000.0, "FrameReferenceTime"),
    ("ge", "ActualFrameDuration", 8000, "FrameReferenceTime"),     # frame 2 runs 8 s into frame 3
])
def test_overlapping_frames_are_refused_for_every_variant(vendor: str, keyword: str, value: float,
                                                          attribute: str) -> None:
    datasets = _ordered(vendor)
    frame = slice(3, 6) if keyword == "ActualFrameDuration" else slice(6, 9)
    for ds in datasets[frame]:
        if keyword == "AcquisitionTime":
            moment = datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime, "%Y%m%d%H%M%S.%f")
            moment += timedelta(seconds=value)
            ds.AcquisitionDate, ds.AcquisitionTime = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")
        elif keyword == "FrameReferenceTime":
            ds.FrameReferenceTime = f"{float(ds.FrameReferenceTime) + value:.1f}"
        else:
            ds.ActualFrameDuration = int(ds.ActualFrameDuration) + value
    _refused(datasets, attribute, "frames overlap")


def test_missing_frame_duration_is_refused_for_philips() -> None:
    datasets = _ordered("philips")
    del datasets[7].ActualFrameDuration
    _refused(datasets, "ActualFrameDuration", "ActualFrameDuration (0018,1242) is missing")


def test_number_of_time_slices_disagreeing_with_the_instances_is_refused() -> None:
    datasets = _ordered("ge")  # 6 frames x 3 slices
    for ds in datasets:
        ds.NumberOfTimeSlices = 5
    _refused(datasets, "NumberOfSlices", "NumberOfTimeSlices (0054,0101) 5 = 15 are expected")
    datasets = _ordered("siemens")
    for ds in datasets:  # 18 instances as 9 slices x 2 frames: the frame times say 6 frames
        ds.NumberOfSlices, ds.NumberOfTimeSlices = 9, 2
        del ds.ImageIndex
    _refused(datasets, "NumberOfTimeSlices", "give 6 distinct frames, but NumberOfTimeSlices (0054,0101) is 2")


@pytest.mark.parametrize("tracer", ["rb82_chloride", "n13_ammonia", "o15_water"])
def test_routing_classification_and_state_of_a_rest_stress_study(tracer: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    full = frame_schedule(PET_TRACERS[tracer].display_name)
    schedule = full.subset(np.arange(full.n_frames) < 5)
    rest, stress = (_volume(rng, schedule, shape=(2, 4, 4)) for _ in range(2))
    study = build_pet_study(rest, stress, tracer=tracer, vendor="siemens", key=f"routing-{seed}", shuffle=True)
    by_state: dict[str, list[Dataset]] = {"rest": [], "stress": []}
    for ds in study.datasets:
        attributes = routing_attributes(ds)
        assert attributes["modality"] == "PT" and attributes["tracer"] == tracer
        assert attributes["radiopharmaceutical_codes"] == [PET_TRACERS[tracer].agent_code[0]]
        assert attributes["pet_series_kind"] == "dynamic"
        by_state[str(attributes["state"])].append(ds)
    assert [len(v) for v in by_state.values()] == [10, 10]
    for state, datasets in by_state.items():
        verdict = classify_pet_series(datasets)
        assert verdict.kind == "dynamic" and verdict.usable and verdict.timing == "siemens", verdict.description
        loaded = load_dynamic_pet(datasets)
        assert loaded.state == state and loaded.tracer == tracer


@pytest.mark.parametrize("arrangement", ["one_study", "two_studies"])
def test_rest_and_stress_in_one_study_or_two(arrangement: str, seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    schedule = frame_schedule("Rb-82").subset(np.arange(16) < 4)
    rest, stress = _volume(rng, schedule, shape=(2, 4, 4)), _volume(rng, schedule, shape=(2, 4, 4))
    when = datetime(2026, 7, 1, 8, 0, 0)
    study = build_pet_study(rest, stress, tracer="Rb-82", vendor="philips", decay_correction="ADMIN",
                            arrangement=arrangement, key=f"arr-{seed}", when=when, rest_truth={"global_mbf": 0.8},
                            stress_truth={"global_mbf": 2.4})
    assert [ds.SeriesDescription for ds in study.datasets[:8]] == ["REST RB-82 CHLORIDE DYNAMIC"] * 8  # rest first
    files = write_pet_study(study, tmp_path / arrangement)
    assert len(files.paths) == 16 and len(files.study_uids) == (1 if arrangement == "one_study" else 2)
    truth = json.loads(files.truth_json.read_text())
    assert truth["rest"] == {"global_mbf": 0.8} and truth["tracer"] == "rb82_chloride"
    read = [pydicom.dcmread(p) for p in files.paths]
    loaded = {s: load_dynamic_pet([ds for ds in read if ds.SeriesInstanceUID == doc["series_instance_uid"]])
              for s, doc in ((d["state"], d) for d in truth["series"])}
    assert {s: v.state for s, v in loaded.items()} == {"rest": "rest", "stress": "stress"}
    rest_start = datetime.fromisoformat(truth["series"][0]["injection"])
    stress_start = datetime.fromisoformat(truth["series"][1]["injection"])
    assert stress_start > rest_start and len({str(ds.PatientID) for ds in read}) == 1
    for state, volume in (("rest", rest), ("stress", stress)):
        np.testing.assert_allclose(loaded[state].start_s, schedule.start_s, atol=0.5)
        np.testing.assert_allclose(loaded[state].volume.voxels, volume.voxels, rtol=2e-5, atol=2.0)
    if arrangement == "one_study":
        assert loaded["rest"].study_uid == loaded["stress"].study_uid
        assert loaded["rest"].frame_of_reference_uid == loaded["stress"].frame_of_reference_uid
        assert stress_start - rest_start == timedelta(minutes=15)
    else:
        assert loaded["rest"].study_uid != loaded["stress"].study_uid
        assert {str(ds.StudyDate) for ds in read} == {"20260701", "20260702"}


def test_written_instances_pass_dciodvfy(seed: int, tmp_path: Path) -> None:
    tool = dciodvfy_tool()
    rng = np.random.default_rng(seed)
    schedule = FrameSchedule.from_durations([10.0, 10.0, 30.0], start_s=12.0)
    volume = _volume(rng, schedule, shape=(2, 6, 6))
    for vendor in sorted(TIMING_VARIANTS):
        for decay in DECAY_CORRECTIONS:
            ds = _series(volume, vendor, decay, seed, state="stress", shuffle=False).datasets[3]
            path = tmp_path / f"{vendor}_{decay}.dcm"
            ds.save_as(path, enforce_file_format=True)
            run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
            output = run.stdout + run.stderr
            assert [line for line in output.splitlines() if line.startswith(("Error", "Warning"))] == [], \
                f"{vendor} {decay}: {output}"
            assert "PETImage" in output


def test_the_writer_refuses_what_it_cannot_write() -> None:
    schedule = FrameSchedule.from_durations([10.0, 10.0])
    volume = _volume(np.random.default_rng(0), schedule, shape=(2, 3, 3))
    with pytest.raises(ValueError, match="vendor"):
        _series(volume, "toshiba", "START", 0)
    with pytest.raises(ValueError, match="decay_correction"):
        _series(volume, "ge", "DECAY", 0)
    with pytest.raises(ValueError, match="dynamic"):
        _series(Volume(volume.voxels, volume.affine), "ge", "START", 0)
    with pytest.raises(ValueError, match="unknown PET tracer"):
        pet_series_description("rest", "Tc99m sestamibi")
    with pytest.raises(ValueError, match="rest or a stress"):
        build_pet_study(None, None, tracer="Rb-82")


def test_phantom_study_through_dicom_gives_the_image_tier_mbf(seed: int) -> None:
    """The DICOM tier changes no number: the same MBF from the loaded series as from the phantom's volume."""
    from node.quant.kinetics import default_model
    from node.quant.mbf import analyse_dynamic
    from node.synth.pet.phantom import PetPhantomSpec, make_pet_study

    phantom = make_pet_study(np.random.default_rng(seed), spec=PetPhantomSpec(matrix=(20, 32, 32), voxel_mm=6.0))
    study = build_phantom_pet_study(phantom, vendor="siemens", decay_correction="NONE", arrangement="two_studies",
                                    shuffle=True, key=f"mbf-{seed}")
    assert study.truth["study"]["global_mfr"] == pytest.approx(phantom.truth.global_mfr)
    assert study.truth["rest"]["global_mbf_ml_per_min_per_g"] == phantom.rest.truth.global_mbf_ml_per_min_per_g
    json.dumps(study.truth)  # serialisable as written
    rest_uid = study.truth["series"][0]["series_instance_uid"]
    loaded = load_dynamic_pet([ds for ds in study.datasets if ds.SeriesInstanceUID == rest_uid])
    model = default_model(phantom.spec.tracer)
    direct = analyse_dynamic(phantom.rest.volume, state="rest", model=model)
    through = analyse_dynamic(loaded.volume, state=loaded.state, model=model,
                              decay_corrected=loaded.decay_correction != "NONE")
    np.testing.assert_allclose(through.fit.segment_mbf_ml_per_min_per_g, direct.fit.segment_mbf_ml_per_min_per_g,
                               rtol=1e-3, err_msg=f"seed {seed}")
