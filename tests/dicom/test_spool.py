"""Spool: atomic durable writes, idempotence, UIDs validated before they name files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.dicom import spool as spool_module
from node.dicom.spool import FileRange, Spool, write_file_atomic
from node.uids import InvalidUIDError


def test_store_writes_part10_bytes_under_uid_path(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = os.urandom(5000)
    stored = spool.store("1.2.3", "1.2.3.4", "1.2.3.4.5", data)
    assert stored.created and stored.size_bytes == 5000
    assert stored.path == tmp_path / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert stored.path.read_bytes() == data
    assert [p.name for p in stored.path.parent.iterdir()] == ["1.2.3.4.5.dcm"]  # no temp file left


def test_duplicate_sop_instance_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.store("1.2", "1.2.1", "1.2.1.1", b"first copy")
    second = spool.store("1.2", "1.2.1", "1.2.1.1", b"second copy")
    assert first.created and not second.created
    assert second.path.read_bytes() == b"first copy"


@pytest.mark.parametrize(
    "study, series, sop",
    [
        ("../../etc", "1.2", "1.3"),
        ("1.2", "1.2/..", "1.3"),
        ("1.2", "1.2", "1.02.3"),  # leading zero
        ("1.2", "1.2", "1." + "1" * 70),  # longer than 64
        ("1.2", "", "1.3"),
        ("1.2", "1.2", "1.3 "),
    ],
)
def test_invalid_uids_never_name_files(tmp_path: Path, study: str, series: str, sop: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUIDError):
        spool.store(study, series, sop, b"x")
    assert list((tmp_path / "spool").rglob("*")) == []


def test_failed_write_leaves_neither_partial_nor_final_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills up in the middle of a write (a fault we cannot cause here) leaves nothing behind."""
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data)[:100])  # short writes, as a real file system may do

    monkeypatch.setattr(spool_module.os, "write", failing_write)
    target = tmp_path / "d" / "file.dcm"
    with pytest.raises(OSError):
        write_file_atomic(target, b"x" * 1000)
    assert list((tmp_path / "d").iterdir()) == []


def test_replace_is_atomic_and_partials_are_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.dcm"
    write_file_atomic(target, b"old")
    write_file_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    spool = Spool(tmp_path / "spool")
    leftover = tmp_path / "spool" / "1.2" / "1.2.3" / ".1.2.3.4.dcm.abcdef.partial"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert spool.remove_partial_files() == 1 and not leftover.exists()


def test_store_from_parts_copies_file_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage service spools a received data set as File Meta bytes plus a range of the received file."""
    received = tmp_path / "received.bin"
    received.write_bytes(b"H" * 300 + os.urandom(3 * 2**20 + 17))
    spool = Spool(tmp_path / "spool")
    stored = spool.store("1.2", "1.2.3", "1.2.3.4", [b"META", FileRange(received, 300, 3 * 2**20 + 17)])
    assert stored.created and stored.size_bytes == 4 + 3 * 2**20 + 17
    assert stored.path.read_bytes() == b"META" + received.read_bytes()[300:]

    def no_kernel_copy(*args: object) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(spool_module.os, "copy_file_range", no_kernel_copy)  # the chunked fallback
    again = spool.store("1.2", "1.2.3", "1.2.3.5", [b"META", FileRange(received, 300, 3 * 2**20 + 17)])
    assert again.path.read_bytes() == stored.path.read_bytes()
    with pytest.raises(OSError, match="ended"):
        spool.store("1.2", "1.2.3", "1.2.3.6", [FileRange(received, 300, 4 * 2**20)])
    assert not spool.path_for("1.2", "1.2.3", "1.2.3.6").exists()


def test_half_received_data_sets_are_removed_before_listening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.incoming_dir / "0123.received").write_bytes(b"half")
    (spool.incoming_dir / "4567.inflated").write_bytes(b"half")
    assert spool.remove_partial_files() == 2 and list(spool.incoming_dir.iterdir()) == []
