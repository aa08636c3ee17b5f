"""A throw-away Orthanc PACS on loopback for the results end-to-end tests, and dcmtk client helpers."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

ORTHANC = "/usr/sbin/Orthanc"
AET = "ORTHANCTEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """Orthanc with its storage and index in ``directory``; DICOM and HTTP on free ports."""

    def __init__(self, directory: Path):
        if not Path(ORTHANC).exists():
            pytest.fail(f"{ORTHANC} missing: .ci/run installs the Debian package orthanc")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config = directory / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "cardionode-results-test",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "DicomAet": AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "UnknownSopClassAccepted": False,
            "Plugins": [],
            "StorageCompression": False,
            "HttpTimeout": 10,
        }))
        self.log = (directory / "orthanc.log").open("w")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("Orthanc did not start: " + (directory / "orthanc.log").read_text()[-2000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def instances(self) -> list[str]:
        return requests.get(f"{self.url}/instances", timeout=10).json()

    def instance_file(self, orthanc_id: str) -> bytes:
        return requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30).content

    def find_instance_id(self, sop_instance_uid: str) -> str:
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=10).json()
        ids = [f["ID"] for f in found if f["Type"] == "Instance"]
        assert len(ids) == 1, found
        return ids[0]


def store(port: int, files: list[Path]) -> list[int]:
    """C-STORE ``files`` with pynetdicom, proposing exactly their SOP classes; returns the status of each.

    (dcmtk storescu does not propose Comprehensive 3D SR by default, so pynetdicom is the client here.)
    """
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="CARDIONODE")
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AET)
    assert assoc.is_established, "Orthanc refused the association"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def findscu_images(port: int, keys: dict[str, str], returned: tuple[str, ...], called_ae: str = AET) -> list[dict[str, str]]:
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
