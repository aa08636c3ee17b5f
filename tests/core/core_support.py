"""Helpers for the node-core tests: configs, a listener process, synthetic instances, dcmtk calls."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.uids import deterministic_uid

REPO = Path(__file__).resolve().parents[2]
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
CALLING_AE = "TESTSCU"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (asked from the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, **settings: Any) -> Path:
    """Write a TOML config: scalars at the top, dicts as tables, lists of dicts as arrays of tables."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]")
            for k, v in value.items():
                if v is not None:
                    tables.append(f"{k} = {_toml_value(v)}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                tables.append(f"[[{key}]]")
                for k, v in item.items():
                    if v is not None:
                        tables.append(f"{k} = {_toml_value(v)}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    path.write_text("\n".join(lines + tables) + "\n", encoding="utf-8")
    return path


def node_config(tmp: Path, **overrides: Any) -> tuple[Path, int]:
    """A config for a listener on a free loopback port with its data under ``tmp/var``."""
    port = free_port()
    settings: dict[str, Any] = {
        "ae_title": "CARDIONODE",
        "port": port,
        "bind_address": "127.0.0.1",
        "data_dir": tmp / "var",
        "disk_watermark_mb": 1,
    }
    settings.update(overrides)
    return write_config(tmp / "node.toml", **settings), port


class NodeProcess:
    """The listener (``python -m node.dicom.scp``) in its own process."""

    def __init__(self, config: Path, port: int, tls: bool = False) -> None:
        self.config, self.port, self.tls = config, port, tls
        self.log = open(config.parent / f"listener-{port}.out", "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("CARDIONODE_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.dicom.scp", "--config", str(config)],
            cwd=config.parent,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._wait_listening()

    def _wait_listening(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"listener exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("listener did not start listening")

    def output(self) -> str:
        self.log.flush()
        return (self.config.parent / f"listener-{self.port}.out").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.log.closed:
            self.log.close()

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_nm_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    rows: int = 16,
    cols: int = 16,
    frames: int = 1,
    patient_name: str = "Anon^Test",
    patient_id: str = "TEST-0",
    birth_date: str = "",
    seed: int | None = None,
) -> Dataset:
    """A small NM Image Storage instance with random 16-bit counts."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = NM_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = NM_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.Modality = "NM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.SeriesDescription = "STRESS RECON"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    info = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "424299003", "SCT", "Tc-99m sestamibi"
    info.RadiopharmaceuticalCodeSequence = [code]
    ds.RadiopharmaceuticalInformationSequence = [info]
    ds.PixelData = rng.integers(0, 1000, size=(frames, rows, cols), dtype=np.uint16).tobytes()
    return ds


def write_study(folder: Path, n: int, seed: int, **kwargs: Any) -> list[Path]:
    """``n`` NM instances of one fresh study written to ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study = deterministic_uid("test-study", seed)
    series = deterministic_uid("test-series", seed)
    paths = []
    for i in range(n):
        ds = make_nm_instance(study, series, deterministic_uid("test-sop", seed, i), seed=seed + i, **kwargs)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


# dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment (each C-STORE then waits for delayed ACKs)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def echoscu(port: int, calling: str = CALLING_AE, called: str = "CARDIONODE", extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# storescu proposes uncompressed syntaxes unless told which compressed one to propose
_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def _propose_option(first_file: Path) -> list[str]:
    from pydicom import dcmread

    try:
        syntax = str(dcmread(first_file, force=True, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return []
    return [_PROPOSE[syntax]] if syntax in _PROPOSE else []


def storescu(port: int, files: list[Path], calling: str = CALLING_AE, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, verbose, proposing the first file's own transfer syntax."""
    propose = _propose_option(files[0]) if files else []
    return subprocess.run(
        ["storescu", "-v", "-R", *propose, "-aet", calling, "-aec", "CARDIONODE", *(extra or []), "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
    )


def acknowledged_files(storescu_output: str) -> list[str]:
    """Files that storescu -v reports as answered with Success, in order."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: "):].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked
