"""Durable files: the spool of received instances, and atomic writes for the outbox.

A received instance is kept at ``<spool>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.
The three UIDs are validated (:func:`node.uids.validate_uid`) before they
name anything, so a peer cannot choose a path.

Writes are atomic and, with ``durable=True``, survive a crash or power loss
once the call returns: the bytes go to a temporary file in the same directory,
which is flushed and fsync'ed, renamed over the final name, and the directory
is fsync'ed so the rename itself is on disk. Newly created directories are
fsync'ed into their parents the same way. A reader never sees a partial file.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from node.uids import validate_uid

__all__ = ["StoredFile", "Spool", "write_file_atomic", "fsync_directory", "make_directories"]

_TEMP_SUFFIX = ".partial"


def fsync_directory(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: Path, durable: bool = True) -> None:
    """Create ``path`` and missing parents; with ``durable``, fsync each new entry into its parent."""
    if path.is_dir():
        return
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # another thread made it; it still needs its parent fsync'ed below
        finally:
            if durable:
                fsync_directory(directory.parent)


def write_file_atomic(path: Path, data: bytes | bytearray | memoryview, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename, dir fsync).

    The parent directory is created if needed. An existing file is replaced.
    """
    path = Path(path)
    make_directories(path.parent, durable)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)


@dataclass(frozen=True)
class StoredFile:
    """Where an instance was spooled; ``created`` is False when the same SOP Instance UID was already there."""

    path: Path
    size_bytes: int
    created: bool


class Spool:
    """The directory of received instances (``settings.spool_dir``)."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        make_directories(self.root, durable)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """The file of an instance; raises :class:`node.uids.InvalidUIDError` for a bad UID."""
        study = validate_uid(study_uid, "StudyInstanceUID (0020,000D)")
        series = validate_uid(series_uid, "SeriesInstanceUID (0020,000E)")
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID (0008,0018)")
        return self.root / study / series / f"{sop}.dcm"

    def store(self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes) -> StoredFile:
        """Spool one instance (``data``: a DICOM Part 10 file, bytes).

        Idempotent on the SOP Instance UID: if the file exists, it is kept as it
        is (first copy wins) and ``created`` is False.
        """
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        if path.is_file():
            return StoredFile(path, path.stat().st_size, False)
        write_file_atomic(path, data, self.durable)
        return StoredFile(path, len(data), True)

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a crash mid-write; returns how many. Call before listening."""
        count = 0
        for tmp in self.root.rglob(f".*{_TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
