"""Issue 21 defect 6: a directory store on the spool's file system references input files (hard link)
instead of copying them; on another file system, and in Redis, it copies the bytes."""

from __future__ import annotations

from pathlib import Path

from node.queue.artifacts import DirectoryStore
from tests.support.tmpfs import small_tmpfs


def test_same_file_system_links_other_copies(tmp_path: Path) -> None:
    spool = tmp_path / "spool.dcm"
    spool.write_bytes(b"DICM" * 1000)
    same = DirectoryStore(tmp_path / "artifacts")
    assert same.put_file("jobs/a-1.1/inputs/00000.dcm", spool) == 0
    linked = tmp_path / "artifacts" / "jobs" / "a-1.1" / "inputs" / "00000.dcm"
    assert linked.stat().st_ino == spool.stat().st_ino  # one copy of the bytes on the disk
    assert same.get("jobs/a-1.1/inputs/00000.dcm") == spool.read_bytes()
    assert same.put_file("jobs/a-1.1/inputs/00000.dcm", spool) == 0  # again (a re-dispatch): replaced
    same.delete_prefix("jobs/a-1.1")
    assert spool.read_bytes() == b"DICM" * 1000  # deleting the artifact keeps the spool file
    assert not list(tmp_path.glob("artifacts/**/.tmp-*"))

    with small_tmpfs(tmp_path / "other", size_mb=4) as other:
        elsewhere = DirectoryStore(other / "artifacts")
        assert elsewhere.put_file("jobs/a-1.1/inputs/00000.dcm", spool) == 4000  # EXDEV: copied
        copied = other / "artifacts" / "jobs" / "a-1.1" / "inputs" / "00000.dcm"
        assert copied.stat().st_ino != spool.stat().st_ino and copied.read_bytes() == spool.read_bytes()
