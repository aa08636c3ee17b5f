"""CMR DICOM writers: dciodvfy-clean classic and Enhanced MR, geometry round trip, per-frame rescale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.synth.cmr.dicom import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE
from tests.support import REPO
from tests.support.cmr import cmr_study, decode_enhanced, write_study
from tests.support.tools import assert_dciodvfy_clean, require_tool


def _series(study, role: str):  # type: ignore[no-untyped-def]
    return [w for w in study.series if w.info.role == role]


@pytest.mark.parametrize("variant", ["standard", "siemens", "philips", "enhanced", "decoys"])
def test_every_series_passes_dciodvfy(variant: str, tmp_path: Path) -> None:
    require_tool("dciodvfy")
    study = cmr_study(variant, 1)
    checked = 0
    for written in study.series:
        ds = written.datasets[len(written.datasets) // 2]
        path = tmp_path / f"{written.info.series_number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        iod = "EnhancedMRImage" if ds.SOPClassUID == ENHANCED_MR_IMAGE_STORAGE else "MRImage"
        lines = assert_dciodvfy_clean(path, f"{variant} {written.info.role} {written.info.description}", iod)
        if iod == "EnhancedMRImage":
            assert not [line for line in lines if line.startswith("Warning")], lines
        checked += 1
    assert checked >= 5
    assert {w.info.role for w in study.series} >= {"cine_sax", "cine_lax", "lge_mag", "lge_psir", "ti_scout"}


def _axis_point(ds: pydicom.Dataset, row: float, col: float, ipp=None, iop=None, spacing=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    ipp = np.array(ds.ImagePositionPatient if ipp is None else ipp, dtype=float)
    iop = np.array(ds.ImageOrientationPatient if iop is None else iop, dtype=float)
    spacing = np.array(ds.PixelSpacing if spacing is None else spacing, dtype=float)
    return ipp + iop[:3] * col * spacing[1] + iop[3:] * row * spacing[0]


def test_classic_geometry_round_trip_puts_each_slice_centre_on_the_axis(tmp_path: Path) -> None:
    truth = write_study(tmp_path, "reversed_instances", 2)
    study = cmr_study("reversed_instances", 2)
    anatomy = study.anatomy
    row, col = anatomy.stack.axis_pixel
    z = anatomy.stack.z_centres_mm
    lge_uid = next(uid for uid, role in truth.series_roles.items() if role == "lge_mag")
    files = [pydicom.dcmread(p) for p in sorted(tmp_path.rglob("*.dcm"))]
    lge = [ds for ds in files if ds.SeriesInstanceUID == lge_uid]
    assert len(lge) == anatomy.stack.n_slices
    normal = np.cross(np.array(lge[0].ImageOrientationPatient[:3], float), np.array(lge[0].ImageOrientationPatient[3:], float))
    assert np.dot(normal, truth.long_axis) > 0.9999  # the slice normal points apex -> base
    positions = []
    for ds in lge:
        p = float(np.dot(np.array(ds.ImagePositionPatient, float), normal))
        k = int(np.argmin(np.abs(truth.slice_position_mm - p)))
        assert abs(truth.slice_position_mm[k] - p) < 1e-3
        expected = truth.apex_mm + truth.long_axis * z[k]
        assert np.allclose(_axis_point(ds, row, col), expected, atol=1e-3)
        assert float(ds.SliceLocation) == pytest.approx(p, abs=1e-3)
        positions.append((p, int(ds.InstanceNumber)))
    positions.sort()
    numbers = [n for _, n in positions]
    assert numbers == sorted(numbers, reverse=True)  # instance numbers run against the position
    # the double-oblique plane: the normal is not near any patient axis
    assert np.max(np.abs(normal)) < 0.95


def test_enhanced_per_frame_rescale_and_geometry() -> None:
    study = cmr_study("enhanced", 3)
    anatomy = study.anatomy
    row, col = anatomy.stack.axis_pixel
    for role in ("lge_mag", "lge_psir", "cine_sax"):
        (written,) = _series(study, role)
        (ds,) = written.datasets
        assert ds.SOPClassUID == ENHANCED_MR_IMAGE_STORAGE
        decoded = decode_enhanced(pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds))))
        assert written.values is not None and written.slopes is not None
        assert len(set(np.round(written.slopes, 6))) > 1  # a different rescale per frame
        # decoded mean equals the truth (signal x gain) within 0.1 % per frame
        for frame, values in zip(decoded, written.values):
            assert abs(frame.mean() - values.mean()) <= 1e-3 * np.abs(values).mean()
        assert np.max(np.abs(decoded - written.values)) <= 0.5 * np.max(written.slopes) + 1e-9
        if role == "lge_psir":
            assert decoded.min() < 0.0 and ds.ComplexImageComponent == "REAL"
            assert float(ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept) < 0
        shared = ds.SharedFunctionalGroupsSequence[0]
        iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        for item in ds.PerFrameFunctionalGroupsSequence:
            k = int(item.FrameContentSequence[0].InStackPositionNumber) - 1
            ipp = item.PlanePositionSequence[0].ImagePositionPatient
            expected = anatomy.frame.apex_mm + anatomy.frame.long_axis * anatomy.stack.z_centres_mm[k]
            assert np.allclose(_axis_point(ds, row, col, ipp, iop, spacing), expected, atol=1e-3)
        modifier = ds.PerFrameFunctionalGroupsSequence[0].MRModifierSequence[0]
        assert modifier.InversionRecovery == ("NO" if role == "cine_sax" else "YES")


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_classic_pixels_decode_to_the_signal() -> None:
    study = cmr_study("standard", 4)
    truth = study.truth
    for role, image in (("lge_mag", study.lge.magnitude), ("lge_psir", study.lge.psir)):
        (written,) = _series(study, role)
        assert written.gain == truth.gains[written.info.series_uid]
        for ds in written.datasets[::3]:
            assert ds.SOPClassUID == MR_IMAGE_STORAGE and "RescaleSlope" not in ds
            assert ds.PixelRepresentation == (1 if role == "lge_psir" else 0)
            assert list(ds.ScanningSequence) == ["GR", "IR"] and float(ds.InversionTime) > 150.0
            stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds))).pixel_array.astype(float)
            k = int(ds.AcquisitionNumber) - 1
            expected = image[k] * written.gain
            if role == "lge_mag":
                expected = np.minimum(expected, 4095.0)
            assert np.max(np.abs(stored - expected)) <= 0.5 + 1e-6
        if role == "lge_psir":
            assert min(int(ds.SmallestImagePixelValue) for ds in written.datasets) < 0
    cine = _series(study, "cine_sax")[0]
    ds = cine.datasets[0]
    assert int(ds.CardiacNumberOfImages) == 12 and ds.ScanOptions == "CG"
    assert sorted({float(d.TriggerTime) for d in cine.datasets}) == pytest.approx(list(truth.cine.trigger_times_ms),
                                                                                  abs=0.01)


def test_layout_variants() -> None:
    siemens = cmr_study("siemens", 5)
    cine = _series(siemens, "cine_sax")
    assert len(cine) == siemens.anatomy.stack.n_slices  # one series per slice
    assert all(w.info.description.startswith("CINE_segmented_SAX_b") for w in cine)
    assert len({w.datasets[0].FrameOfReferenceUID for w in siemens.series}) == 1
    missing = cmr_study("missing_slice", 5)
    (gone,) = missing.truth.missing_slices
    for role in ("cine_sax", "lge_mag", "lge_psir"):
        (written,) = _series(missing, role)
        held = missing.truth.series_slices[written.info.series_uid]
        assert gone not in held and len(held) == missing.anatomy.stack.n_slices - 1
        slices_written = {round(float(ds.SliceLocation), 2) for ds in written.datasets}
        assert round(float(missing.truth.slice_position_mm[gone]), 2) not in slices_written
    scout = _series(missing, "ti_scout")[0]
    assert len({float(ds.InversionTime) for ds in scout.datasets}) == len(scout.datasets) > 5


@pytest.mark.slow  # a full-size study (25 phases x ~12 slices of 256 x 256): ~20-40 s on a loaded machine
def test_mr_demo_saves_a_full_study_without_printing_identities(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo", "--modality", "mr", "--seed", "8", "--cmr-layout", "siemens",
         "--pattern", "sarcoid_multifocal_rv", "--no-send", "--save", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "seed 8" in output and "Research use only" in output and "sarcoid_multifocal_rv" in output
    truth = json.loads((tmp_path / "truth.json").read_text())
    files = sorted(tmp_path.rglob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    for secret in (str(first.PatientID), str(first.PatientName), str(first.PatientBirthDate)):
        assert secret not in output
    roles = truth["series_roles"]
    assert sorted(set(roles.values())) == ["cine_lax", "cine_sax", "lge_mag", "lge_psir", "ti_scout"]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    cine = [ds for ds in headers if roles[ds.SeriesInstanceUID] == "cine_sax"]
    assert len(cine) == 25 * len({ds.SeriesInstanceUID for ds in cine})
    assert {int(ds.Rows) for ds in headers if roles[ds.SeriesInstanceUID] != "cine_lax"} == {256}
    assert truth["lge"]["rv_involvement"] and truth["lge"]["scar_pct_sampled"] > 1.0


def test_t1_map_decoy() -> None:
    study = cmr_study("decoys", 6)
    (written,) = _series(study, "map")
    assert study.truth.series_roles[written.info.series_uid] == "map" and written.gain == 1.0
    assert len(written.datasets) == 3 and "MOLLI" in written.info.description
    lge = study.truth.lge
    for ds in written.datasets:
        assert "T1MAP" in list(ds.ImageType) and "InversionTime" not in ds
        k = int(ds.AcquisitionNumber) - 1
        t1 = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds))).pixel_array.astype(float)
        remote = lge.myocardium_mask[k] & ~lge.scar_mask[k]
        assert abs(float(np.median(t1[remote])) - 450.0) < 40.0  # post-contrast myocardial T1 (ms)


def _axis_pixel_of(ds: pydicom.Dataset, point: np.ndarray) -> tuple[float, float, float]:
    """(row, col, distance from the plane in mm) of a patient point in an instance's image."""
    iop = np.array(ds.ImageOrientationPatient, float)
    spacing = np.array(ds.PixelSpacing, float)
    d = point - np.array(ds.ImagePositionPatient, float)
    return float(d @ iop[3:] / spacing[0]), float(d @ iop[:3] / spacing[1]), float(d @ np.cross(iop[:3], iop[3:]))


def test_problem_layouts_are_what_their_truth_says(tmp_path: Path) -> None:
    require_tool("dciodvfy")
    tilted = cmr_study("mixed_orientation", 7)
    (k,) = tilted.truth.tilted_slices
    z = tilted.anatomy.stack.z_centres_mm
    frame = tilted.anatomy.frame
    for role in ("lge_mag", "lge_psir"):
        (written,) = _series(tilted, role)
        normals = {}
        for ds in written.datasets:
            iop = np.array(ds.ImageOrientationPatient, float)
            normals[int(ds.AcquisitionNumber) - 1] = np.cross(iop[:3], iop[3:])
        angles = {s: np.degrees(np.arccos(np.clip(n @ frame.long_axis, -1, 1))) for s, n in normals.items()}
        assert angles[k] == pytest.approx(10.0, abs=0.01)
        assert all(a < 0.1 for s, a in angles.items() if s != k)  # IOP has 6 decimals
        ds = next(d for d in written.datasets if int(d.AcquisitionNumber) - 1 == k)
        row, col, off = _axis_pixel_of(ds, frame.apex_mm + frame.long_axis * z[k])
        assert abs(off) < 1e-3 and (row, col) == pytest.approx(tilted.anatomy.stack.axis_pixel, abs=1e-3)
        if role == "lge_mag":  # the long axis runs through the bright blood pool of the re-planned slice too
            pixels = ds.pixel_array.astype(float)
            assert pixels[int(round(row)), int(round(col))] > 0.4 * np.percentile(pixels, 99.5)
            path = tmp_path / "tilted.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert_dciodvfy_clean(path, "re-planned LGE slice", "MRImage")
    rescanned = cmr_study("rescanned_fov", 7)
    (k,) = rescanned.truth.rescanned_slices
    spacings = {}
    for written in _series(rescanned, "cine_sax"):
        ds = written.datasets[0]
        (s,) = rescanned.truth.series_slices[written.info.series_uid]
        spacings[s] = float(ds.PixelSpacing[0])
        row, col, off = _axis_pixel_of(ds, rescanned.anatomy.frame.apex_mm + rescanned.anatomy.frame.long_axis
                                       * rescanned.anatomy.stack.z_centres_mm[s])
        assert abs(off) < 1e-3
        pixels = ds.pixel_array.astype(float)  # phase 0 = ED: blood on the axis at mid-ventricle
        if s == k:
            assert pixels[int(round(row)), int(round(col))] > 0.5 * np.percentile(pixels, 99.5)
    assert spacings[k] == pytest.approx(1.2 * rescanned.anatomy.stack.pixel_mm, rel=1e-4)
    assert all(v == pytest.approx(rescanned.anatomy.stack.pixel_mm) for s, v in spacings.items() if s != k)
