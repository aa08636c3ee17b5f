"""Phantom -> NM DICOM files -> loader: voxels, geometry and gate order survive; dciodvfy is clean."""

from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pydicom
import pytest

from node.imaging.nm import group_nm_reconstructions, load_nm_series
from node.imaging.states import state_from_text
from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
from node.synth.spect.study import write_study
from tests.support.tools import dciodvfy_tool


@pytest.mark.parametrize(
    "orientation,n_gates,tracer",
    [("short_axis", 8, "tc99m_sestamibi"), ("transaxial", 8, "tc99m_tetrofosmin"),
     ("short_axis", 16, "tl201"), ("transaxial", 16, "tc99m_sestamibi")],
)
def test_round_trip_keeps_voxels_geometry_and_gate_order(orientation, n_gates, tracer, seed, tmp_path):
    rng = np.random.default_rng(seed)
    # a coarser grid keeps the test fast; geometry handling is the same
    spec = PhantomSpec(n_gates=n_gates, tracer=tracer, matrix=40, voxel_mm=9.6, sex="F", age=71,
                       defects=(territory_defect("LCx", 0.4, reversible=True),))
    study = make_study(spec, rng, orientation=orientation)
    files = write_study(study, tmp_path, seed=seed)
    assert len(files.paths) == 4
    datasets = [pydicom.dcmread(p) for p in files.paths]
    loaded, rejected = group_nm_reconstructions(datasets)
    msg = f"seed {seed}"
    assert rejected == [], msg
    assert len(loaded) == 4, msg
    for rec in loaded:
        acq = study.stress if rec.state == "stress" else study.rest
        assert rec.state in ("stress", "rest") and rec.orientation == orientation, msg
        assert rec.tracer == tracer and rec.sex == "F" and rec.age == 71.0, msg
        assert rec.study_uid == files.study_uid, msg
        assert np.allclose(rec.volume.affine, acq.frames.affine, atol=1e-4), msg
        assert np.array_equal(rec.volume.voxels, acq.summed.voxels), msg
        if "GATED" in rec.series_description:
            assert rec.gates is not None and rec.n_gates == n_gates, msg
            assert np.array_equal(rec.gates.voxels, acq.frames.voxels), msg  # same gates, same order
        else:
            assert rec.gates is None, msg
    truth = json.loads(files.truth_json.read_text())
    assert truth["stress"]["defect_segments"] == [5, 6, 11, 12, 16] and truth["rest"]["defect_segments"] == []
    assert {s["series_description"] for s in truth["series"]} == {
        f"{state} {gated}{'SA' if orientation == 'short_axis' else 'TRANS'}"
        for state in ("STRESS", "REST") for gated in ("", "GATED ")
    }


def test_frame_order_comes_from_the_vectors_not_the_storage_order(seed, tmp_path):
    rng = np.random.default_rng(seed)
    study = make_study(PhantomSpec(n_gates=8, matrix=32, voxel_mm=12.0), rng, orientation="short_axis")
    files = write_study(study, tmp_path, seed=seed, ungated=False)
    ds = pydicom.dcmread(files.paths[0])
    reference = load_nm_series([ds])
    frames = ds.pixel_array
    perm = np.random.default_rng(seed + 1).permutation(frames.shape[0])
    shuffled = copy.deepcopy(ds)
    shuffled.PixelData = np.ascontiguousarray(frames[perm]).astype("<u2").tobytes()
    shuffled.SliceVector = [int(v) for v in np.asarray(ds.SliceVector)[perm]]
    shuffled.TimeSlotVector = [int(v) for v in np.asarray(ds.TimeSlotVector)[perm]]
    again = load_nm_series([shuffled])
    assert np.array_equal(again.gates.voxels, reference.gates.voxels), f"seed {seed}"


def test_base_to_apex_short_axis_is_returned_apex_to_base(seed, tmp_path):
    rng = np.random.default_rng(seed)
    study = make_study(PhantomSpec(n_gates=0, matrix=32, voxel_mm=12.0), rng, orientation="short_axis")
    files = write_study(study, tmp_path, seed=seed)
    ds = pydicom.dcmread(files.paths[0])
    original = load_nm_series([ds])
    vox = ds.pixel_array  # [slice, row, col], apex -> base
    n = vox.shape[0]
    # store base -> apex: reverse slices; keep the NM normal convention by also reversing columns
    flipped = copy.deepcopy(ds)
    flipped.PixelData = np.ascontiguousarray(vox[::-1, :, ::-1]).astype("<u2").tobytes()
    det = flipped.DetectorInformationSequence[0]
    iop = np.array([float(v) for v in det.ImageOrientationPatient])
    last = original.volume.index_to_patient(np.array([n - 1, 0, vox.shape[2] - 1]))
    det.ImageOrientationPatient = [float(v) for v in np.concatenate([-iop[:3], iop[3:]])]
    det.ImagePositionPatient = [float(v) for v in last]
    flipped.SliceProgressionDirection = "BASE_TO_APEX"
    loaded = load_nm_series([flipped])
    assert loaded.slice_progression == "APEX_TO_BASE"
    # slices are apex -> base again (columns stay as stored: lateral -> septal)
    assert np.array_equal(loaded.volume.voxels, original.volume.voxels[:, :, ::-1]), f"seed {seed}"
    k, i, j = 3, 7, 11
    assert np.allclose(
        loaded.volume.index_to_patient(np.array([k, i, j])),
        original.volume.index_to_patient(np.array([k, i, vox.shape[2] - 1 - j])),
        atol=1e-3,
    ), f"seed {seed}"


def test_generated_nm_files_pass_dciodvfy_without_errors(seed, tmp_path):
    tool = dciodvfy_tool()
    rng = np.random.default_rng(seed)
    for orientation, n_gates in (("short_axis", 16), ("transaxial", 8)):
        study = make_study(PhantomSpec(n_gates=n_gates, matrix=32, voxel_mm=12.0), rng, orientation=orientation)
        files = write_study(study, tmp_path / orientation, seed=seed)
        for path in files.paths:
            run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
            output = run.stdout + run.stderr
            errors = [line for line in output.splitlines() if line.startswith("Error")]
            assert errors == [], f"{path.name}: {errors}"
            assert "NMImage" in output


@pytest.mark.parametrize(
    "text,state",
    [("STRESS GATED SA", "stress"), ("Rest SA", "rest"), ("REST_GATED_SAX", "rest"), ("Regadenoson MPI", "stress"),
     ("TL REDISTRIBUTION", "rest"), ("STRESS/REST SUMMARY", "unknown"), ("SPECT", "unknown"), ("", "unknown")],
)
def test_state_patterns(text, state):
    assert state_from_text(text) == state
