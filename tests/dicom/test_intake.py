"""The bounded receive pieces (node.dicom.intake): structure walk, bounded inflation, memory budget,
the received file, and the clean-up of a transfer cut short."""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from node.dicom.intake import (
    DEFER_BYTES,
    MAX_SEQUENCE_DEPTH,
    BudgetBusy,
    DataSetProblem,
    LimitExceeded,
    MemoryBudget,
    ReceivedFile,
    Structure,
    inflate_bounded,
    scan_structure,
)
from tests.support import PYTHON, REPO
from tests.support.dicom_clients import encode
from tests.support.hostile_dicom import MalformedCase, image_header, malformed_cases, write_large_instance
from tests.support.nm import NM_STORAGE, nm_instance
from tests.support.node import RunningListener, listener_in_process
from tests.support.ports import wait_for

MiB = 2**20


def _scan(data: bytes, implicit: bool = False, limit: int = 64 * MiB) -> Structure:
    return scan_structure(io.BytesIO(data), 0, len(data), implicit, True, limit)


def _implicit(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_structure_of_an_ordinary_instance_in_both_vr_encodings() -> None:
    ds = nm_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    explicit, implicit = _scan(encode(ds)), _scan(_implicit(ds), implicit=True)
    assert explicit == implicit  # the same elements, items and nesting, whatever the encoding
    assert explicit.items == 2 and explicit.depth == 2  # radiopharmaceutical item with its code item
    assert explicit.bulk_bytes == 0 and explicit.parse_memory_bytes < MiB


def test_large_top_level_values_stay_on_disk() -> None:
    data = image_header("1.2.3", "1.2.3.4", "1.2.3.4.5", 2 * MiB) + bytes(2 * MiB)
    structure = _scan(data)
    assert structure.bulk_bytes == 2 * MiB > DEFER_BYTES and structure.parse_memory_bytes < MiB


@pytest.mark.parametrize("case", [c for c in malformed_cases("1.2.3", "1.2.3.4", "1.2.3.9")
                                  if c.allowed == {0xC000} and c.transfer_syntax == "1.2.840.10008.1.2.1"
                                  and "US value" not in c.name and "UID" not in c.name], ids=lambda c: c.name)
def test_malformed_encodings_are_found_without_parsing(case: MalformedCase) -> None:
    with pytest.raises(DataSetProblem):
        _scan(case.payload)


def test_nesting_limit() -> None:
    def nested(levels: int) -> bytes:
        head = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        return head * levels + tail * levels

    assert _scan(nested(MAX_SEQUENCE_DEPTH)).depth == MAX_SEQUENCE_DEPTH
    with pytest.raises(DataSetProblem, match="nest deeper"):
        _scan(nested(MAX_SEQUENCE_DEPTH + 1))


def test_the_walk_stops_when_the_parse_estimate_passes_the_limit() -> None:
    items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * 1_000_000
    data = struct.pack("<HH2sHI", 0x0054, 0x0016, b"SQ", 0, 0xFFFFFFFF) + items + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    with pytest.raises(LimitExceeded, match="more than 16 MiB"):
        _scan(data, limit=16 * MiB)


def _deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def test_inflate_bounded() -> None:
    data = os.urandom(100_000) + bytes(3 * MiB)
    out = io.BytesIO()
    assert inflate_bounded(io.BytesIO(b"head" + _deflate(data) + b"\x00"), 4, out, 4 * MiB) == len(data)  # padding byte ignored
    assert out.getvalue() == data
    with pytest.raises(LimitExceeded):
        inflate_bounded(io.BytesIO(_deflate(data)), 0, io.BytesIO(), 2 * MiB)
    with pytest.raises(DataSetProblem, match="truncated"):
        inflate_bounded(io.BytesIO(_deflate(data)[:5000]), 0, io.BytesIO(), 4 * MiB)
    with pytest.raises(DataSetProblem, match="corrupt"):
        inflate_bounded(io.BytesIO(b"\xff" * 100), 0, io.BytesIO(), 4 * MiB)


def test_memory_budget_waits_refuses_and_frees() -> None:
    budget = MemoryBudget(10 * MiB)
    with pytest.raises(LimitExceeded):
        with budget.reserve(11 * MiB, 0):
            pass
    got: list[float] = []
    with budget.reserve(8 * MiB, 0):
        with pytest.raises(BudgetBusy):
            with budget.reserve(4 * MiB, 0.05):
                pass

        def waiter() -> None:
            start = time.monotonic()
            with budget.reserve(4 * MiB, 10):
                got.append(time.monotonic() - start)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)
        assert got == []  # still waiting for its share
    thread.join(10)
    assert len(got) == 1 and got[0] >= 0.15
    assert budget.used_bytes == 0 and budget.peak_bytes == 8 * MiB


def test_received_file_keeps_the_limit_and_write_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received = ReceivedFile(tmp_path / "a.received", 1000)
    for _ in range(3):
        assert received.write(b"x" * 400) == 400
    received.close()
    assert received.overflow and received.received_bytes == 1200 and (tmp_path / "a.received").stat().st_size == 0
    failing = ReceivedFile(tmp_path / "b.received", 1000)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert failing.write(b"x" * 10) == 10  # never raises into pynetdicom's thread
    failing.remove()
    assert failing.error is not None and failing.error.errno == errno.ENOSPC and not (tmp_path / "b.received").exists()


_SENDER = """
import sys
from pathlib import Path
from tests.support.dicom_clients import send_raw
send_raw(int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]))
"""


@pytest.mark.network
def test_a_transfer_cut_short_leaves_nothing_in_the_spool(tmp_path: Path) -> None:
    node: RunningListener = listener_in_process(tmp_path)
    try:
        incoming = node.listener.storage.spool.incoming_dir
        payload = write_large_instance(tmp_path / "big.bin", "1.2.3", "1.2.3.4", "1.2.3.4.7", 400)
        sender = subprocess.Popen([PYTHON, "-c", _SENDER, str(node.port), NM_STORAGE, "1.2.3.4.7", str(payload)], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
        try:
            wait_for(lambda: any(p.stat().st_size > 0 for p in incoming.glob("*.received")), 60,
                     "part of the data set to arrive", 0.01)
        finally:
            os.killpg(sender.pid, signal.SIGKILL)  # the sender vanishes mid-transfer
            sender.wait(30)
        wait_for(lambda: not any(incoming.iterdir()), 30, "the half-received data set to be removed", 0.1)
        assert node.ledger.instances.count() == 0
    finally:
        node.stop()
