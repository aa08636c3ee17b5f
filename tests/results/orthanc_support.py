"""DICOM clients for the results end-to-end tests (the Orthanc PACS itself is the shared ``node_harness``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE


def store(port: int, called_ae: str, files: list[Path]) -> list[int]:
    """C-STORE ``files`` with pynetdicom, proposing exactly their SOP classes; returns the status of each.

    (dcmtk storescu does not propose Comprehensive 3D SR by default, so pynetdicom is the client here.)
    """
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="CARDIONODE")
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def findscu_images(port: int, called_ae: str, keys: dict[str, str], returned: tuple[str, ...]) -> list[dict[str, str]]:
    """C-FIND (Study Root) at IMAGE level; returns one dict keyword -> value per response."""
    tool = shutil.which("findscu")
    if tool is None:
        pytest.fail("findscu missing: .ci/run installs dcmtk")
    args = [tool, "-v", "-S", "-aet", "CARDIONODE", "-aec", called_ae, "-k", "QueryRetrieveLevel=IMAGE"]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    for key in returned:
        if key not in keys:
            args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    responses = []
    for block in re.split(r"I: Find Response: \d+ \(Pending\)", out)[1:]:
        entry = {}
        for keyword in returned:
            m = re.search(r"\(\w{4},\w{4}\) \w\w \[([^\]]*)\][^\n]*# *\d+, *\d+ " + keyword + r"\b", block)
            if m:
                entry[keyword] = m.group(1).replace("\\0", "").rstrip("\x00 ")
        responses.append(entry)
    return responses
