"""Real components for the flow tests: synthetic NM studies, Orthanc, the node, storescu.

Every server binds to 127.0.0.1 on a port the OS chose, keeps its files in a
temporary directory, and is stopped by the test that started it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import requests
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
FLOW_TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable

# synthetic identity: must never appear in logs or the audit log
PATIENT_NAME = "Quillfeather^Zebedee"
PATIENT_ID = "ZQPID-73512"
PATIENT_BIRTH_DATE = "19370914"

NM_CLASS = "1.2.840.10008.5.1.4.1.1.20"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def port_open(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- synthetic NM
def make_nm_study(
    folder: Path, rng: np.random.Generator, n_instances: int = 2, frames: int = 4, size: int = 16
) -> tuple[str, list[Path]]:
    """Write an NM study of ``n_instances`` multi-frame instances (one series) to ``folder``.

    Returns (StudyInstanceUID, file paths). Pixel values are Poisson counts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(n_instances):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = NM_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = NM_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, "F")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "NM", 1, index + 1
        ds.SeriesDescription = "STRESS RECON"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = (0x0054, 0x0080)
        ds.SliceVector = list(range(1, frames + 1))
        ds.NumberOfSlices = frames
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        pixels = rng.poisson(50.0, size=(frames, size, size)).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"nm{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(study_uid), paths


def add_nm_instance(template: Path, folder: Path, rng: np.random.Generator) -> Path:
    """A new instance in the same series as ``template`` (new SOP Instance UID, new counts)."""
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = int(ds.InstanceNumber) + 1000
    frames, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    ds.PixelData = rng.poisson(50.0, size=(frames, rows, cols)).astype(np.uint16).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"late-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(port: int, called_ae: str, files: list[Path] | Path, calling_ae: str = "FLOWTEST",
             check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Send files (or a folder, recursively) with dcmtk ``storescu``."""
    targets = [str(files)] if isinstance(files, Path) else [str(p) for p in files]
    command = ["storescu", "-aet", calling_ae, "-aec", called_ae, "+sd", "+r", "-R", "127.0.0.1", str(port), *targets]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


# --------------------------------------------------------------------------- Orthanc
ROUTING_LUA = """
-- forward cardiac source images (never our own results) to the node
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'NM' or modality == 'PT' or modality == 'MR') then
    SendToModality(instanceId, 'cardionode')
  end
end
"""


class Orthanc:
    """Debian's Orthanc on loopback ports, with its storage in ``folder``."""

    def __init__(self, folder: Path, node_ae: str = "CARDIONODE", node_port: int | None = None,
                 ae_title: str = "ORTHANC") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port, self.http_port = free_port(), free_port()
        self.node_ae, self.node_port = node_ae, node_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        lua = self.folder / "route.lua"
        lua.write_text(ROUTING_LUA)
        config: dict[str, Any] = {
            "Name": "flowtest-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,  # C-FIND from any AE (the results tests query as the node)
            "DicomModalities": {},
            "LuaScripts": [str(lua)],
            "Plugins": [],
            "StableAge": 3600,
            "ConcurrentJobs": 2,
            "DicomAssociationCloseDelay": 0,
        }
        if self.node_port is not None:
            config["DicomModalities"]["cardionode"] = [self.node_ae, "127.0.0.1", self.node_port]
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(["/usr/sbin/Orthanc", str(self.folder / "orthanc.json")],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._alive, 30, "Orthanc's REST API")
        wait_for(lambda: port_open(self.dicom_port), 10, "Orthanc's DICOM port")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}/system", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study, as ``{"modality", "sop_class", "sop_instance_uid", ...}``."""
        found = requests.post(f"{self.url}/tools/find", timeout=10,
                              json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).json()
        if not found:
            return []
        out = []
        for series in requests.get(f"{self.url}/studies/{found[0]}/series", timeout=10).json():
            modality = series["MainDicomTags"].get("Modality", "")
            for instance_id in series["Instances"]:
                tags = requests.get(f"{self.url}/instances/{instance_id}/simplified-tags", timeout=10).json()
                out.append({"modality": modality, "sop_class": tags.get("SOPClassUID", ""),
                            "sop_instance_uid": tags.get("SOPInstanceUID", ""), "id": instance_id,
                            "series_uid": tags.get("SeriesInstanceUID", "")})
        return out

    def tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's tags in Orthanc's simplified JSON form."""
        return requests.get(f"{self.url}/instances/{instance_id}/simplified-tags", timeout=10).json()

    def instance_ids(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return requests.get(f"{self.url}/instances", timeout=10).json()

    def instance_id(self, sop_instance_uid: str) -> str:
        """Orthanc's id of the instance with ``sop_instance_uid`` (exactly one must exist)."""
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=10).json()
        ids = [f["ID"] for f in found if f["Type"] == "Instance"]
        assert len(ids) == 1, found
        return ids[0]

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return requests.get(f"{self.url}/instances/{instance_id}/file", timeout=30).content

    def results(self, study_uid: str) -> list[dict[str, Any]]:
        """The node's result objects in Orthanc (modality SR or OT)."""
        return [i for i in self.study_instances(study_uid) if i["modality"] in ("SR", "OT")]


# --------------------------------------------------------------------------- the node
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` as TOML (top-level keys; tables and arrays of tables as inline values)."""
    lines = [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def node_settings(data_dir: Path, port: int, destinations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ae_title": "CARDIONODE",
        "port": port,
        "data_dir": str(data_dir),
        "disk_watermark_mb": 1,
        "destinations": destinations,
        "pipeline_modules": ["flowtest_pipeline"],
        "completeness": {"default": {"quiet_period_s": 2.0, "force_deadline_s": 600.0,
                                     "force_action": "process", "settle_s": 1.0}},
        "send_retry": {"initial_s": 1.0, "max_s": 2.0, "max_attempts": 4},
        "network_timeout_s": 5.0,
    }
    settings.update(extra)
    return settings


def flow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDIONODE_")}
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*inherited, str(FLOW_TESTS), str(REPO)])
    env.update(extra or {})
    return env


class NodeProcess:
    """``cardionode serve`` as a subprocess with a TOML configuration."""

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.env = flow_env(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "NodeProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "node.cli", "--config", str(self.config), "serve"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._listening, 60, "the node to listen")
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the node exited: {self.log_path.read_text()[-3000:]}")
        return port_open(self.port)

    def stop(self) -> int | None:
        """SIGTERM, wait for a clean exit (kill after 60 s); returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the node (its local workers die with it: PR_SET_PDEATHSIG)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``cardionode`` command with the same configuration."""
        return subprocess.run([PYTHON, "-m", "node.cli", "--config", str(self.config), *args],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)
