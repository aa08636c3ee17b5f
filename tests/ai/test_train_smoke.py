"""Smoke training runs (tiny cohorts, one epoch) through the API and the CLI with a site folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.ai.bundles import load_bundle
from node.ai.training import train_bundle
from node.synth.spect import cohort as cohorts

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bundle", ["cad_polar", "tracer_heads", "crt_response"])
def test_synthetic_smoke_run_writes_a_loadable_bundle(bundle: str, tmp_path: Path, seed: int) -> None:
    out = tmp_path / bundle
    result = train_bundle(bundle, out, synthetic=24, epochs=1, seed=seed % 1000, checkpoints=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "epoch_001.pt").is_file()
    loaded = load_bundle(bundle, root=out, device="cpu")
    assert loaded.metadata["training"]["epochs"] == 1
    ev = json.loads((out / "docs" / "evaluation.json").read_text())
    assert "test" in ev and "external" in ev
    assert result.history and result.history[0]["epoch"] == 1


def test_cli_trains_from_a_site_folder(tmp_path: Path, seed: int) -> None:
    data = tmp_path / "site"
    train = cohorts.make_cad_cohort(20, "train", seed)
    cohorts.write_cohort(train, data)
    test = cohorts.make_cad_cohort(10, "test", seed)
    cohorts.write_cohort(test, tmp_path / "site_test")
    # append the test rows to the same labels.csv (split column says which is which)
    lines = (tmp_path / "site_test" / "labels.csv").read_text().splitlines()[1:]
    with open(data / "labels.csv", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    for f in (tmp_path / "site_test" / "maps").iterdir():
        f.rename(data / "maps" / f.name)
    out = tmp_path / "bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "train", "cad_polar", "--data", str(data), "--epochs", "1", "--out", str(out),
         "--checkpoints", str(tmp_path / "ckpt")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[cad_polar]" in proc.stderr and "100%" in proc.stderr  # plain-text progress on stderr
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert "site folder" in meta["training_data"]
    assert "test" in json.loads((out / "docs" / "evaluation.json").read_text())


def test_a_folder_without_labels_is_refused_with_the_file_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        train_bundle("cad_polar", tmp_path / "out", data=tmp_path, epochs=1)


def test_segmentation_only_options_are_refused_for_polar_map_bundles(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lv_segmentation only"):
        train_bundle("cad_polar", tmp_path / "out", synthetic=24, epochs=1, steps_per_epoch=4)
