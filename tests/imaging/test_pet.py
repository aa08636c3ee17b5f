"""Dynamic PET (PET Image Storage) to a timed 4-D volume; every other PET series refused in words."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.pet import (
    ENHANCED_PET_IMAGE_STORAGE,
    ENHANCED_TIMING,
    TIMING_VARIANTS,
    classify_pet_series,
    load_dynamic_pet,
    timing_variant_for,
)
from node.imaging.radiopharmaceuticals import PET_TRACERS, pet_tracer_from_code, pet_tracer_from_text
from node.imaging.volume import FrameAxis, Volume
from node.quant.kinetics import N13_AMMONIA, O15_WATER, RB82
from node.synth.pet.dicom import PETSeriesInfo
from node.synth.pet.enhanced import build_enhanced_pet
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from tests.support.pet import dynamic_pet_series

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/real")


def _refusal(datasets: list[Dataset], attribute: str, words: str) -> UnusableSeriesError:
    verdict = classify_pet_series(datasets)
    assert not verdict.usable
    assert attribute in verdict.attributes, verdict.description
    assert words in verdict.description, verdict.description
    with pytest.raises(UnusableSeriesError) as caught:
        load_dynamic_pet(datasets)
    assert words in caught.value.reason
    assert f"{attribute} (" in caught.value.reason
    return caught.value


@pytest.mark.parametrize("vendor", sorted(TIMING_VARIANTS))
def test_vendor_timing_variants_give_true_frames_and_voxels(vendor: str) -> None:
    datasets, truth = dynamic_pet_series(vendor, seed=3, oblique=vendor == "philips")
    assert timing_variant_for(datasets[0]) == vendor
    series = load_dynamic_pet(datasets)
    assert series.timing == vendor
    assert series.volume.is_dynamic and series.volume.voxels.shape == (8, 6, 16, 16)
    assert series.time_zero == "radiopharmaceutical_start"
    np.testing.assert_allclose(series.start_s, truth.start_s, atol=0.5)
    np.testing.assert_allclose(series.duration_s, truth.duration_s, atol=0.5)
    np.testing.assert_allclose(series.volume.voxels, truth.voxels, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(series.volume.affine, truth.affine, atol=1e-3)
    assert series.units == "BQML" and series.decay_correction == "START"
    assert series.decay_reference_s == pytest.approx(truth.start_s[0], abs=0.5)
    assert series.tracer == "rb82_chloride" and series.half_life_s == pytest.approx(75.45)
    assert series.state == "rest" and series.notes == ()
    assert "ATTN" in series.corrected_image
    assert len(set(series.sop_instance_uids)) == 48


def test_shuffled_order_and_missing_image_index_give_the_same_volume() -> None:
    shuffled, _ = dynamic_pet_series("ge", seed=5, shuffle=True)
    ordered, _ = dynamic_pet_series("ge", seed=5, shuffle=False)
    a, b = load_dynamic_pet(shuffled), load_dynamic_pet(ordered)
    np.testing.assert_array_equal(a.volume.voxels, b.volume.voxels)
    np.testing.assert_array_equal(a.volume.affine, b.volume.affine)
    no_index = copy.deepcopy(shuffled)
    for ds in no_index:
        del ds.ImageIndex
    c = load_dynamic_pet(no_index)
    np.testing.assert_array_equal(a.volume.voxels, c.volume.voxels)
    np.testing.assert_array_equal(a.start_s, c.start_s)


def test_stress_state_and_time_zero_without_radiopharmaceutical_start() -> None:
    datasets, truth = dynamic_pet_series("siemens", seed=7, description="STRESS REGADENOSON RB82")
    for ds in datasets:
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    series = load_dynamic_pet(datasets)
    assert series.state == "stress"
    assert series.time_zero == "first_frame"
    np.testing.assert_allclose(series.start_s, truth.start_s - truth.start_s[0], atol=0.5)
    assert any("Radiopharmaceutical Start" in note for note in series.notes)


def test_explicit_timing_variant_overrides_an_unknown_manufacturer() -> None:
    datasets, truth = dynamic_pet_series("philips", seed=8)
    for ds in datasets:
        ds.Manufacturer = ""
    _refusal(datasets, "Manufacturer", "name the timing variant")
    series = load_dynamic_pet(datasets, timing="philips")
    np.testing.assert_allclose(series.start_s, truth.start_s, atol=0.5)


@pytest.mark.parametrize(("series_type", "kind", "words"), [
    ("STATIC", "static", "static (summed) image"),
    ("GATED", "gated", "cardiac-gated"),
    ("WHOLE BODY", "whole_body", "whole-body series"),
])
def test_static_gated_and_whole_body_series_are_refused(series_type: str, kind: str, words: str) -> None:
    datasets, _ = dynamic_pet_series("ge", seed=9)
    for ds in datasets:
        ds.SeriesType = [series_type, "IMAGE"]
    _refusal(datasets, "SeriesType", words)
    assert classify_pet_series(datasets).kind == kind


def test_non_attenuation_corrected_and_wrong_units_are_refused() -> None:
    datasets, _ = dynamic_pet_series("ge", seed=10)
    for ds in datasets:
        ds.CorrectedImage = ["DECY", "SCAT", "NORM"]
        ds.Units = "CNTS"
    verdict = classify_pet_series(datasets)
    assert verdict.kind == "dynamic"
    assert verdict.attributes == ("CorrectedImage", "Units")
    assert "not attenuation-corrected" in verdict.description and "'CNTS'" in verdict.description


def test_single_slice_and_count_mismatch_are_refused() -> None:
    single, _ = dynamic_pet_series("ge", seed=11, n_slices=1)
    _refusal(single, "NumberOfSlices", "a single slice is not a volume")
    datasets, _ = dynamic_pet_series("ge", seed=11)
    _refusal(datasets[:-1], "NumberOfSlices", "47 instance(s) received but NumberOfSlices (0054,0081) 6 x "
             "NumberOfTimeSlices (0054,0101) 8 = 48 are expected")


@pytest.mark.parametrize(("vendor", "keyword", "tag"), [
    ("ge", "FrameReferenceTime", "0054,1300"),
    ("philips", "FrameReferenceTime", "0054,1300"),
    ("ge", "ActualFrameDuration", "0018,1242"),
    ("siemens", "ActualFrameDuration", "0018,1242"),
    ("siemens", "AcquisitionTime", "0008,0032"),
])
def test_missing_timing_is_refused_never_guessed(vendor: str, keyword: str, tag: str) -> None:
    datasets, _ = dynamic_pet_series(vendor, seed=12)
    delattr(datasets[17], keyword)
    error = _refusal(datasets, keyword, f"({tag})")
    assert "missing" in error.reason


def test_inconsistent_timing_within_a_frame_is_refused() -> None:
    datasets, _ = dynamic_pet_series("ge", seed=13, shuffle=False)
    datasets[8].ActualFrameDuration = 10500  # frame 2, slice 3: other slices say 10000 ms
    _refusal(datasets, "ActualFrameDuration", "differs across the slices of frame 2")
    datasets, _ = dynamic_pet_series("ge", seed=13, shuffle=False)
    datasets[8].FrameReferenceTime = "12000.0"  # frame 2 starts at 10 s
    _refusal(datasets, "FrameReferenceTime", "differs across the slices of frame 2")


def test_overlapping_frames_are_refused() -> None:
    datasets, _ = dynamic_pet_series("ge", seed=14, shuffle=False)
    for ds in datasets[12:18]:  # frame 3 (starts at 20 s) moved to 15 s: overlaps frame 2 (10-20 s)
        ds.FrameReferenceTime = "15000.0"
    _refusal(datasets, "FrameReferenceTime", "frames overlap: frame 3 starts 5 s before frame 2 ends")


def test_image_index_disagreeing_with_positions_is_refused() -> None:
    datasets, _ = dynamic_pet_series("ge", seed=15, shuffle=False)
    datasets[0].ImageIndex, datasets[2].ImageIndex = 3, 1  # slices 1 and 3 of frame 1 swapped
    _refusal(datasets, "ImageIndex", "orders the slices of frame 1 differently")


def test_enhanced_pet_loads_and_non_pet_is_refused() -> None:
    datasets, truth = dynamic_pet_series("ge", seed=16)
    volume = Volume(truth.voxels, truth.affine, FrameAxis.dynamic(truth.start_s, truth.duration_s))
    patient = PatientInfo("Synthetic^Pet", "SYNPET-1", "19600101", "M", 60, 80.0, 1.8)
    study = StudyInfo(datasets[0].StudyInstanceUID, datasets[0].FrameOfReferenceUID, "20260304", "093000", "A16", "16")
    info = PETSeriesInfo(datasets[0].SeriesInstanceUID, 1, "REST RB82 DYNAMIC", "rb82_chloride",
                         datetime(2026, 3, 4, 9, 30), decay_correction="ADMIN")
    enhanced = build_enhanced_pet(volume, patient=patient, study=study, series=info).datasets
    assert enhanced[0].SOPClassUID == ENHANCED_PET_IMAGE_STORAGE
    verdict = classify_pet_series(enhanced)
    assert verdict.kind == "dynamic" and verdict.usable and verdict.timing == ENHANCED_TIMING
    series = load_dynamic_pet(enhanced)
    np.testing.assert_allclose(series.start_s, truth.start_s, atol=1e-3)
    np.testing.assert_allclose(series.volume.voxels, truth.voxels, rtol=1e-4, atol=1.0)
    np.testing.assert_allclose(series.volume.affine, truth.affine, atol=1e-3)
    ct = copy.deepcopy(datasets[:1])
    ct[0].Modality = "CT"
    assert classify_pet_series(ct).kind == "not_pet"


def test_pet_tracer_table_matches_kinetics_and_codes() -> None:
    for key, reference in (("rb82_chloride", RB82), ("n13_ammonia", N13_AMMONIA), ("o15_water", O15_WATER)):
        assert PET_TRACERS[key].half_life_s == pytest.approx(reference.half_life_s, rel=0.01)
    for tracer in PET_TRACERS.values():
        assert pet_tracer_from_code(tracer.agent_code[0]) == tracer.key
    assert pet_tracer_from_text("FDG -- fluorodeoxyglucose") == "f18_fdg"
    assert pet_tracer_from_text("N-13 Ammonia") == "n13_ammonia"
    assert pet_tracer_from_text("Tc99m Sestamibi") is None


# every real PT file of the corpus: (file, kind, refused attributes, words of the reason)
CORPUS_EXPECTED = [
    ("pt/fodicom_GH610_GE-DiscoverySTE_JPEGLossless.dcm", "static", ("SeriesType", "CorrectedImage", "Units"),
     "'STATIC': a static (summed) image"),
    ("pt/orthanc_Issue94_PhilipsGeminiTF.dcm", "whole_body", ("SeriesType",), "'WHOLE BODY': a whole-body series"),
    ("pt/petdicoms_GEAdvance-JHU_Hoffman_inst1.dcm", "dynamic", ("NumberOfTimeSlices", "NumberOfSlices"),
     "NumberOfTimeSlices (0054,0101) is 1: a dynamic series needs at least 2 time frames"),
    ("pt/petdicoms_GEAdvance-NIMH_2d_Image.0_0.dcm", "static", ("SeriesType",), "'STATIC': a static (summed) image"),
    ("pt/petdicoms_GEAdvance-NIMH_2d_Image.4_0.dcm", "static", ("SeriesType",), "'STATIC': a static (summed) image"),
    ("pt/petdicoms_GEAdvance-NIMH_2d_Image.8_0.dcm", "static", ("SeriesType",), "'STATIC': a static (summed) image"),
    ("pt/petdicoms_GESignaPETMR-Aarhus_Z01", "static", ("SeriesType", "Units"), "Units (0054,1001) is 'PROPCNTS'"),
    ("pt/petdicoms_GESignaPETMR-NIMH_i439953.PTDC.89.img", "static", ("SeriesType", "CorrectedImage", "Units"),
     "CorrectedImage (0028,0051) is UNKNOWN: no ATTN"),
    ("pt/petdicoms_PhilipsGeminiTF_reqCTAC.dcm", "whole_body", ("SeriesType",), "'WHOLE BODY': a whole-body series"),
    ("pt/tcia_ACRIN-FLT-Breast_1.dcm", "whole_body", ("SeriesType",), "'WHOLE BODY': a whole-body series"),
    ("pt/tcia_ACRIN-FLT-Breast_2.dcm", "dynamic", ("NumberOfSlices",),
     "1 instance(s) received but NumberOfSlices (0054,0081) 111 x NumberOfTimeSlices (0054,0101) 45 = 4995"),
    ("malformed/orthanc_PrivateMDNTags_PT_no-preamble-no-meta.dcm", "whole_body", ("SeriesType",),
     "'WHOLE BODY': a whole-body series"),
]


def test_every_real_pt_file_is_listed() -> None:
    if not (CORPUS / "pt").is_dir():
        pytest.skip("real corpus not present")
    listed = {name for name, *_ in CORPUS_EXPECTED if name.startswith("pt/")}
    assert {f"pt/{p.name}" for p in (CORPUS / "pt").iterdir() if p.is_file()} == listed


@pytest.mark.parametrize(("name", "kind", "attributes", "words"), CORPUS_EXPECTED, ids=[c[0] for c in CORPUS_EXPECTED])
def test_real_pt_files_are_classified_and_refused(name: str, kind: str, attributes: tuple[str, ...],
                                                  words: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    verdict = classify_pet_series(ds)
    assert (verdict.kind, verdict.attributes) == (kind, attributes), verdict.description
    assert words in verdict.description
    with pytest.raises(UnusableSeriesError) as caught:
        load_dynamic_pet([ds])
    assert caught.value.attribute == attributes[0] and words in caught.value.reason


def test_real_ge_advance_slices_stack_as_one_static_series() -> None:
    paths = sorted((CORPUS / "pt").glob("petdicoms_GEAdvance-NIMH_2d_Image.*"))
    if len(paths) != 3:
        pytest.skip("GE Advance NIMH slices not present")
    datasets = [pydicom.dcmread(p, force=True) for p in paths]
    assert all(str(ds.get("InstanceNumber", "") or "") == "" for ds in datasets)
    verdict = classify_pet_series(datasets)
    assert verdict.kind == "static" and verdict.attributes == ("SeriesType",)


@pytest.mark.parametrize(
    ("syntax", "bits", "stored", "signed", "frames", "native"),
    [
        ("1.2.840.10008.1.2.1", 16, 16, 0, 1, True),
        ("1.2.840.10008.1.2", 16, 16, 1, 1, True),
        ("1.2.840.10008.1.2.1", 32, 32, 1, 1, True),
        ("1.2.840.10008.1.2.1", 8, 8, 0, 3, True),
        ("1.2.840.10008.1.2.1", 16, 12, 1, 1, False),  # masked bits and sign extension: pydicom decodes
        ("1.2.840.10008.1.2.2", 16, 16, 1, 1, False),  # big endian: pydicom decodes
    ],
)
def test_native_pixel_data_read_directly_equals_pydicom(syntax: str, bits: int, stored: int, signed: int, frames: int,
                                                        native: bool, seed: int) -> None:
    """The direct read of native Pixel Data gives pydicom's stored values, and declines what it does not handle."""
    from pydicom.dataset import FileMetaDataset

    from node.imaging.dicom_values import decoded_pixels as _decoded
    from node.imaging.dicom_values import native_stored_values as _native_stored_values

    rng = np.random.default_rng(seed)
    rows, columns = 5, 7
    info = np.iinfo(f"{'i' if signed else 'u'}{bits // 8}")
    low, high = (max(info.min, -(2 ** (stored - 1))), min(info.max, 2 ** (stored - 1) - 1)) if signed else (0, 2**stored - 1)
    values = rng.integers(low, high, size=(frames, rows, columns), endpoint=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, signed
    if frames > 1:
        ds.NumberOfFrames = frames
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    ds.PixelData = values.astype(f"{order}{'i' if signed else 'u'}{bits // 8}").tobytes()
    expected = values[0] if frames == 1 else values
    assert (_native_stored_values(ds) is not None) == native
    np.testing.assert_array_equal(_decoded(ds), np.asarray(ds.pixel_array, dtype=np.float64))
    np.testing.assert_array_equal(_decoded(ds), expected)
