"""Synthetic normal limits: shipped files, labelling, tracer/sex specificity, checksums (the builder: tests/synth/test_normal_db.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from node.quant import normal_limits as nl
from node.quant.segments import DEFAULT_GRID


def test_shipped_files_are_labelled_synthetic_small_and_match_the_manifest() -> None:
    manifest = json.loads(nl.MANIFEST_PATH.read_text())
    assert "SYNTHETIC" in manifest["label"] and "not a clinical normal database" in manifest["label"]
    keys = {(e["tracer"], e["sex"]) for e in manifest["entries"]}
    assert keys >= {("tc99m", "M"), ("tc99m", "F"), ("tl201", "M"), ("tl201", "F")}
    total = 0
    for entry in manifest["entries"]:
        path = nl.DATA_DIR / entry["file"]
        total += path.stat().st_size
        assert "SYNTHETIC" in entry["label"]
        assert entry["command"].startswith("python -m node.synth.spect.normal_db build")
        assert entry["source"].startswith("synthetic-")
        limits = nl.load_normal_limits(entry["tracer"], entry["sex"], entry["version"])
        assert limits.mean.shape == DEFAULT_GRID.shape
        assert abs(limits.mean.max() - 1.0) < 1e-6
        assert np.all(limits.sd >= nl.SD_FLOOR_FRACTION * limits.mean - 1e-7)
        # cohort mean cell areas (mm^2): the fixed TPD weights; a normal LV is ~100-200 cm^2 at mid-wall
        assert limits.cell_area is not None and np.all(limits.cell_area > 0)
        assert 5_000 < limits.cell_area.sum() < 25_000, entry["file"]
        assert "SYNTHETIC" in limits.describe()
    assert total < 1_000_000


def test_limits_are_sex_and_tracer_specific() -> None:
    g = DEFAULT_GRID
    seg = g.segment_ids()
    inferior = np.isin(seg, (4, 10))
    anterior = np.isin(seg, (1, 7))
    for tracer in ("tc99m", "tl201"):
        m = nl.load_normal_limits(tracer, "M")
        f = nl.load_normal_limits(tracer, "F")
        # men: inferior (diaphragm) attenuation; women: anterior (breast)
        assert m.mean[inferior].mean() < m.mean[anterior].mean() - 0.04
        assert f.mean[anterior].mean() < f.mean[inferior].mean() - 0.02
    # Tl-201: fewer counts -> wider limits
    assert np.median(nl.load_normal_limits("tl201", "M").sd) > 1.3 * np.median(nl.load_normal_limits("tc99m", "M").sd)


def test_tracer_and_sex_keys() -> None:
    for key in ("Tc-99m", "tc99m_sestamibi", "Tc-99m tetrofosmin", "99mTc^MIBI", "Sestamibi"):
        assert nl.normalise_tracer(key) == "tc99m", key
    for key in ("Tl-201", "tl201", "Thallous chloride", "201Tl"):
        assert nl.normalise_tracer(key) == "tl201", key
    with pytest.raises(ValueError, match="no normal limits for tracer"):
        nl.normalise_tracer("F-18 FDG")
    with pytest.raises(ValueError, match="Radiopharmaceutical Information Sequence"):
        nl.normalise_tracer(None)
    assert nl.normalise_sex("female") == "F" and nl.normalise_sex(None) == "O" and nl.normalise_sex("O") == "O"
    pooled = nl.load_normal_limits("tc99m", None)
    m, f = nl.load_normal_limits("tc99m", "M"), nl.load_normal_limits("tc99m", "F")
    assert pooled.sex == "O" and np.allclose(pooled.mean, 0.5 * (m.mean + f.mean))
    assert np.all(pooled.sd >= np.minimum(m.sd, f.sd))


def test_corrupted_file_is_refused(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).uniform(0.5, 1.0, (6,) + DEFAULT_GRID.shape)
    limits = nl.build_normal_limits(maps, None, "tc99m", "M", "1", "test")
    nl.write_normal_limits(limits, tmp_path, seed=0, command="test")
    path = next(tmp_path.glob("*.npz"))
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="checksum"):
        nl.load_normal_limits("tc99m", "M", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="regenerate"):
        nl.load_normal_limits("tc99m", "M", data_dir=tmp_path / "missing")


def test_build_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[subject, 40, 72\]"):
        nl.build_normal_limits(np.ones((10, 40, 70)), None, "tc99m", "M", "9", "test")
    with pytest.raises(ValueError, match="at least 5"):
        nl.build_normal_limits(np.ones((3, 40, 72)), None, "tc99m", "M", "9", "test")
