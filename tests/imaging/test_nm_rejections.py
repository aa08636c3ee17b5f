"""Unusable NM instances are rejected with a reason naming the attribute; real corpus files included."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.nm import group_nm_reconstructions, load_nm_series
from node.synth.spect.phantom import PhantomSpec, make_study
from node.synth.spect.study import build_study_datasets

CORPUS_NM = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real" / "nm"
CORPUS_FILES = sorted(CORPUS_NM.glob("*.dcm")) if CORPUS_NM.is_dir() else []


@pytest.fixture(scope="module")
def nm_datasets():
    seed = random.SystemRandom().randrange(2**31)
    print(f"random seed: {seed}")
    rng = np.random.default_rng(seed)
    study = make_study(PhantomSpec(n_gates=8, matrix=24, voxel_mm=16.0), rng, orientation="short_axis")
    datasets, _ = build_study_datasets(study)
    return datasets


def _gated(datasets) -> Dataset:
    return copy.deepcopy(next(ds for ds in datasets if "GATED" in ds.SeriesDescription))


def _summed(datasets) -> Dataset:
    return copy.deepcopy(next(ds for ds in datasets if "GATED" not in ds.SeriesDescription))


@pytest.mark.skipif(not CORPUS_FILES, reason="shared corpus not present")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_real_nm_file_is_rejected_with_a_named_reason(path):
    ds = pydicom.dcmread(path)
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    reason = info.value.reason
    # the WG04 files are whole-body planar images stored as Secondary Capture
    assert "ImageType (0008,0008)" in reason and "WHOLE BODY" in reason
    assert "SOPClassUID (0008,0016)" in reason and "Secondary Capture" in reason
    assert info.value.attribute == "ImageType"


@pytest.mark.skipif(not (CORPUS_NM / "wg04_NM1_JPLY.dcm").exists(), reason="shared corpus not present")
def test_undecodable_pixels_are_rejected_naming_pixel_data():
    """The JPLY file's 12-bit lossy JPEG cannot be decoded; dressed as a reconstruction it must fail on PixelData."""
    ds = pydicom.dcmread(CORPUS_NM / "wg04_NM1_JPLY.dcm")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.NumberOfFrames = 1
    ds.NumberOfSlices = 1
    ds.SliceVector = [1]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SpacingBetweenSlices = 2.0
    det = Dataset()
    det.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    det.ImagePositionPatient = [0, 0, 0]
    ds.DetectorInformationSequence = [det]
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "PixelData"
    assert "PixelData (7FE0,0010)" in info.value.reason and "1.2.840.10008.1.2.4.51" in info.value.reason


@pytest.mark.parametrize("value3", ["TOMO", "GATED TOMO", "STATIC", "WHOLE BODY", "DYNAMIC"])
def test_projections_and_planar_images_are_rejected(nm_datasets, value3):
    ds = _summed(nm_datasets)
    ds.ImageType = ["ORIGINAL", "PRIMARY", value3, "EMISSION"]
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "ImageType" and repr(value3) in info.value.reason


def test_missing_geometry_is_rejected(nm_datasets):
    ds = _summed(nm_datasets)
    del ds.DetectorInformationSequence[0].ImageOrientationPatient
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "ImageOrientationPatient"
    ds = _summed(nm_datasets)
    del ds.SpacingBetweenSlices
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "SpacingBetweenSlices"
    ds = _summed(nm_datasets)
    del ds.PixelSpacing
    with pytest.raises(UnusableSeriesError, match=r"PixelSpacing \(0028,0030\)"):
        load_nm_series([ds])


def test_inconsistent_frame_counts_are_rejected(nm_datasets):
    ds = _gated(nm_datasets)
    ds.NumberOfTimeSlots = 16
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "NumberOfFrames" and "NumberOfTimeSlots (0054,0071) 16" in info.value.reason
    ds = _gated(nm_datasets)
    ds.TimeSlotVector = list(ds.TimeSlotVector)[:-1]
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "TimeSlotVector"
    ds = _summed(nm_datasets)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(UnusableSeriesError) as info:
        load_nm_series([ds])
    assert info.value.attribute == "PixelData"


def test_grouping_keeps_usable_reconstructions_and_lists_the_rest(nm_datasets):
    others = [pydicom.dcmread(p) for p in CORPUS_FILES]
    not_nm = Dataset()
    not_nm.Modality = "SR"
    not_nm.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    loaded, rejected = group_nm_reconstructions([*nm_datasets, *others, not_nm])
    assert len(loaded) == len(nm_datasets) == 4
    assert {(r.state, r.n_gates) for r in loaded} == {("stress", 8), ("stress", 0), ("rest", 8), ("rest", 0)}
    assert len(rejected) == len(others)
    assert all("ImageType" in r.reason for r in rejected)
