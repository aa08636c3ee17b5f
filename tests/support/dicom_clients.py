"""DICOM clients: dcmtk ``echoscu``, ``storescu`` and ``findscu``, and pynetdicom stores (whole data sets or raw bytes)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

__all__ = [
    "CALLING_AE",
    "associate_rq",
    "closed_within",
    "read_pdu",
    "DCMTK_ENV",
    "acknowledged_files",
    "echoscu",
    "encode",
    "findscu_images",
    "pynetdicom_store",
    "send_raw",
    "send_raw_answers",
    "send_raw_many",
    "storescu",
]

#: the calling AE title of the test clients, unless a test says otherwise
CALLING_AE = "TESTSCU"

# dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment (each C-STORE then waits for delayed ACKs)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# storescu proposes uncompressed syntaxes unless told which compressed one to propose
_PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


# --------------------------------------------------------------------------- dcmtk
def echoscu(port: int, calling: str = CALLING_AE, called: str = "CARDIONODE",
            extra: Sequence[str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """dcmtk echoscu (C-ECHO) to 127.0.0.1:``port``; ``subprocess.TimeoutExpired`` after ``timeout_s``."""
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _propose_option(first_file: Path) -> list[str]:
    try:
        syntax = str(pydicom.dcmread(first_file, force=True, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return []
    return [_PROPOSE[syntax]] if syntax in _PROPOSE else []


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called: str = "CARDIONODE",
    calling: str = CALLING_AE,
    extra: Sequence[str] | None = None,
    check: bool = False,
    verbose: bool = True,
    required_only: bool = True,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu: ``files`` on one association to 127.0.0.1:``port``, proposing the first file's
    own transfer syntax.

    By default verbose (``-v``, for :func:`acknowledged_files`), only the required presentation
    contexts (``-R``) and with ``TCP_NODELAY=1`` (:data:`DCMTK_ENV`); ``env`` replaces the
    environment. ``check``: fail the test with storescu's output when it exits non-zero.
    """
    propose = _propose_option(Path(files[0])) if files else []
    options = [*(["-v"] if verbose else []), *(["-R"] if required_only else []), *propose]
    command = ["storescu", *options, "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port),
               *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, env=DCMTK_ENV if env is None else env,
                            timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
    return result


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


def findscu_images(port: int, called_ae: str, keys: dict[str, str], returned: tuple[str, ...],
                   calling: str = "CARDIONODE") -> list[dict[str, str]]:
    """dcmtk findscu, C-FIND (Study Root) at IMAGE level; returns one dict keyword -> value per response."""
    tool = shutil.which("findscu")
    if tool is None:
        pytest.fail("findscu missing: .ci/run installs dcmtk")
    args = [tool, "-v", "-S", "-aet", calling, "-aec", called_ae, "-k", "QueryRetrieveLevel=IMAGE"]
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
    for block in re.split(r"I: Find (?:SCP )?Response: \d+ \(Pending\)", out)[1:]:
        entry = {}
        for keyword in returned:
            m = re.search(r"\(\w{4},\w{4}\) \w\w \[([^\]]*)\][^\n]*# *\d+, *\d+ " + keyword + r"\b", block)
            if m:
                entry[keyword] = m.group(1).replace("\\0", "").rstrip("\x00 ")
        responses.append(entry)
    return responses


# --------------------------------------------------------------------------- pynetdicom
def pynetdicom_store(port: int, called_ae: str, files: list[Path], calling: str = "CARDIONODE") -> list[int]:
    """C-STORE ``files`` with pynetdicom, proposing exactly their SOP classes; returns the status of each.

    (dcmtk storescu does not propose Comprehensive 3D SR by default, so pynetdicom is the client here.)
    """
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, f"{called_ae} refused the association"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
        return statuses
    finally:
        assoc.release()


def send_raw(port: int, sop_class: str, sop_instance: str, payload: bytes | Path,
             transfer_syntax: str = ExplicitVRLittleEndian, calling: str = CALLING_AE) -> int | None:
    """C-STORE ``payload`` (an encoded data set, or a file holding one, sent as is, whatever it holds)
    announced as ``sop_class``/``sop_instance``; the response status, or None when no context was accepted."""
    return send_raw_many(port, [(sop_class, sop_instance, payload, transfer_syntax)], calling)[0]


def send_raw_many(port: int, items: list[tuple[str, str, bytes | Path, str]], calling: str = CALLING_AE) -> list[int | None]:
    """Several raw C-STOREs on one association; the status of each (see :func:`send_raw_answers`)."""
    return [status for status, _ in send_raw_answers(port, items, calling)]


def send_raw_answers(port: int, items: list[tuple[str, str, bytes | Path, str]],
                     calling: str = CALLING_AE) -> list[tuple[int | None, str]]:
    """Several raw C-STOREs on one association: (status, Error Comment) of each; (None, "") when no
    context was accepted. A payload is the encoded data set, or a file holding it (copied in chunks,
    so that a large one never sits in the test's memory). pynetdicom sends a file's data set bytes
    unparsed when STORE_SEND_CHUNKED_DATASET is on, taking the request's UIDs from its File Meta."""
    ae = AE(ae_title=calling)
    for sop_class, _, _, ts in items:
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIONODE")
    if not assoc.is_established:  # e.g. no presentation context accepted
        return [(None, "")] * len(items)
    answers: list[tuple[int | None, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for i, (sop_class, sop_instance, payload, ts) in enumerate(items):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = sop_class
                meta.MediaStorageSOPInstanceUID = sop_instance
                meta.TransferSyntaxUID = ts
                path = Path(tmp) / f"{i}.dcm"
                with open(path, "wb") as f:
                    f.write(b"\x00" * 128 + b"DICM")
                    write_file_meta_info(f, meta, enforce_standard=False)
                    if isinstance(payload, Path):
                        with open(payload, "rb") as source:
                            shutil.copyfileobj(source, f, 1 << 20)
                    else:
                        f.write(payload)
                try:
                    rsp = assoc.send_c_store(path)
                except (ValueError, RuntimeError):
                    answers.append((None, ""))  # no accepted context for this class/syntax
                    continue
                finally:
                    path.unlink(missing_ok=True)
                answers.append((int(rsp.Status) if "Status" in rsp else None, str(rsp.get("ErrorComment", ""))))
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
            assoc.release()
    return answers


# --------------------------------------------------------------------------- raw PDUs
#: PDU types (PS3.8 9.3)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = range(1, 8)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(called: bytes | str = "CARDIONODE", calling: bytes | str = CALLING_AE,
                 abstract_syntax: str = "1.2.840.10008.1.1", max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU, byte for byte: ``called``/``calling`` go into their 16-byte fields as
    given (bytes are not checked, so that a test can send malformed AE titles; str is space-padded),
    one presentation context (``abstract_syntax`` with Implicit VR Little Endian), and a maximum PDU length."""
    def field16(value: bytes | str) -> bytes:
        raw = value.encode("ascii").ljust(16) if isinstance(value, str) else value
        if len(raw) != 16:
            raise ValueError(f"an AE title field is 16 bytes, not {len(raw)}")
        return raw

    context = (struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, abstract_syntax.encode())
               + _item(0x40, b"1.2.840.10008.1.2"))
    body = (struct.pack(">HH", 1, 0) + field16(called) + field16(calling) + b"\x00" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, context)
            + _item(0x50, _item(0x51, struct.pack(">I", max_pdu))))
    return struct.pack(">BBI", A_ASSOCIATE_RQ, 0, len(body)) + body


def read_pdu(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, bytes] | None:
    """The next PDU from ``sock`` as (type, body), or None when the connection ends first (closed,
    reset, or ``timeout_s`` passed: then ``socket.timeout``/``TimeoutError`` is raised instead)."""
    sock.settimeout(timeout_s)

    def exactly(n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    header = exactly(6)
    if header is None:
        return None
    kind, _, length = struct.unpack(">BBI", header)
    body = exactly(length)
    return None if body is None else (kind, body)


def closed_within(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the peer closed (or reset) ``sock``, reading and dropping what it sends; None if
    it is still open after ``timeout_s``."""
    started = time.monotonic()
    while True:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
        except TimeoutError:
            return None


def encode(ds: Dataset) -> bytes:
    """The data set's bytes (Explicit VR Little Endian, no File Meta), as a C-STORE carries them."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()
