"""Durable files: the spool of received instances, and atomic writes for the outbox.

A received instance is kept at ``<spool>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.
The three UIDs are validated (:func:`node.uids.validate_uid`) before they
name anything, so a peer cannot choose a path.

Writes are atomic and, with ``durable=True``, survive a crash or power loss
once the call returns: the bytes go to a temporary file in the same directory,
which is flushed and fsync'ed, renamed over the final name, and the directory
is fsync'ed so the rename itself is on disk. Newly created directories are
fsync'ed into their parents the same way. A reader never sees a partial file.

A file may be written from parts (:func:`write_parts_atomic`): bytes in memory and
ranges of other files (:class:`FileRange`), which are copied by the kernel
(``copy_file_range``) without passing through the process's memory; the storage
service spools a large instance that way from the file it was received into, in the
spool's ``.incoming`` folder (emptied, like partial files, when the listener starts).

With the spool journal (:mod:`node.dicom.journal`, in the spool's ``.journal`` folder) the
storage service writes a received instance with ``durable=False``: its durable copy is the
journal record, and the spool is made durable later, many files at once, by
:meth:`Spool.sync` (one ``syncfs``) before the journal segment is retired.
"""

from __future__ import annotations

import ctypes
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.uids import validate_uid

__all__ = [
    "FileRange",
    "Part",
    "append_parts",
    "part_size",
    "sync_file_system",
    "StoredFile",
    "Spool",
    "write_file_atomic",
    "write_parts_atomic",
    "fsync_directory",
    "make_directories",
]

_TEMP_SUFFIX = ".partial"
#: the spool's folder of data sets being received (never an instance: no UID starts with a dot)
INCOMING = ".incoming"
_COPY_CHUNK = 1 << 20  # bytes per step when the kernel cannot copy between the files


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


@dataclass(frozen=True)
class FileRange:
    """``length`` bytes of the file at ``path`` from ``offset`` (bytes), a part of a file to write."""

    path: Path
    offset: int
    length: int


Part = bytes | bytearray | memoryview | FileRange


def part_size(part: Part) -> int:
    """Bytes of one part of a file to write."""
    return part.length if isinstance(part, FileRange) else len(part)


def append_parts(fd: int, parts: Sequence[Part]) -> None:
    """Write ``parts`` one after the other at the position of ``fd`` (a :class:`FileRange` is
    copied by the kernel where it can)."""
    for part in parts:
        if isinstance(part, FileRange):
            _copy_range(fd, part)
        else:
            _write_all(fd, part)


def sync_file_system(path: Path) -> None:
    """Make everything written to the file system holding ``path`` durable: ``syncfs(2)`` (one
    device flush for any number of files, their directories included), ``sync(2)`` where there
    is no ``syncfs``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_range(fd: int, part: FileRange) -> None:
    """Append ``part`` to ``fd``: in the kernel where it can, else in chunks of 1 MiB."""
    with open(part.path, "rb", buffering=0) as source:
        offset, left = part.offset, part.length
        while left > 0:
            try:
                copied = os.copy_file_range(source.fileno(), fd, min(left, 1 << 30), offset)
            except OSError:  # e.g. EXDEV on old kernels, ENOSYS, EINVAL on some file systems
                copied = 0
            if copied == 0:
                break
            offset, left = offset + copied, left - copied
        source.seek(offset)
        while left > 0:
            chunk = source.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise OSError(f"{part.path.name} ended {left} bytes before the range to copy")
            _write_all(fd, chunk)
            left -= len(chunk)


def write_file_atomic(path: Path, data: bytes | bytearray | memoryview, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename, dir fsync).

    The parent directory is created if needed. An existing file is replaced.
    """
    write_parts_atomic(path, [data], durable)


def write_parts_atomic(path: Path, parts: Sequence[Part], durable: bool = True) -> None:
    """Write ``parts`` one after the other to ``path``, atomically as :func:`write_file_atomic` does.

    A :class:`FileRange` part is copied from its file without holding it in memory.
    """
    path = Path(path)
    make_directories(path.parent, durable)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        append_parts(fd, parts)
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

    @property
    def incoming_dir(self) -> Path:
        """The folder of data sets being received and inflated (created on first use)."""
        path = self.root / INCOMING
        make_directories(path, self.durable)
        return path

    def store(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, data: bytes | Sequence[Part], durable: bool | None = None
    ) -> StoredFile:
        """Spool one instance (``data``: a DICOM Part 10 file, as bytes or as parts, see
        :func:`write_parts_atomic`); ``durable`` overrides the spool's own setting (False: the
        caller makes it durable otherwise, e.g. through :mod:`node.dicom.journal` and :meth:`sync`).

        Idempotent on the SOP Instance UID: if the file exists, it is kept as it
        is (first copy wins) and ``created`` is False.
        """
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        if path.is_file():
            return StoredFile(path, path.stat().st_size, False)
        parts: Sequence[Part] = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        write_parts_atomic(path, parts, self.durable if durable is None else durable)
        return StoredFile(path, sum(part_size(p) for p in parts), True)

    def sync(self) -> None:
        """Make every file and directory written to the spool so far durable (one :func:`sync_file_system`)."""
        sync_file_system(self.root)

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a crash mid-write, and data sets left half received;
        returns how many. Call before listening."""
        count = 0
        for tmp in self.root.rglob(f".*{_TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        incoming = self.root / INCOMING
        if incoming.is_dir():
            for leftover in incoming.iterdir():
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
                    count += 1
        return count
