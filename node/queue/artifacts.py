"""The artifact store: bytes that travel between the node and its workers.

Workers do not assume they share a disk with the node (DESIGN section 4). A job's
input instances, the intermediate results of its steps and its output DICOM
objects are put in an artifact store under keys; task messages carry only the
keys. Two stores:

* :class:`DirectoryStore` (default): files under a directory, written
  atomically (temporary file, fsync, rename). Workers on the same machine, or on
  machines mounting the same volume, read the same files.
* :class:`RedisStore`: values in Redis (the broker's server when it is Redis),
  with an expiry so that abandoned jobs do not fill the server.

Keys are relative POSIX-like paths made of ``[A-Za-z0-9._-]`` components, e.g.
``jobs/12.1/inputs/0003.dcm``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import cast

__all__ = ["ArtifactStore", "DirectoryStore", "RedisStore", "MissingArtifactError", "open_store", "validate_key"]

_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


class MissingArtifactError(KeyError):
    """A key that the store does not hold (expired, deleted, or never written)."""

    def __str__(self) -> str:
        return f"artifact {self.args[0]!r} is not in the store (expired or deleted?)"


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe artifact key, else raise ``ValueError``."""
    if not isinstance(key, str) or len(key) > 512 or not _KEY_RE.match(key):
        raise ValueError(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(ABC):
    """Put, get and delete byte strings by key."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (replacing any value) and return the key."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise :class:`MissingArtifactError` if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if ``key`` holds a value."""

    @abstractmethod
    def keys(self, prefix: str) -> Iterator[str]:
        """The keys below ``prefix`` (a key path without trailing slash)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete ``prefix`` and every key below it."""


class DirectoryStore(ArtifactStore):
    """Artifacts as files below ``root``; writes are atomic and durable."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingArtifactError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return iter(())
        return (
            p.relative_to(self.root).as_posix()
            for p in sorted(base.rglob("*"))
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class RedisStore(ArtifactStore):
    """Artifacts as Redis strings under ``namespace``, expiring after ``ttl_s`` seconds."""

    def __init__(self, url: str, namespace: str = "cardionode:artifacts", ttl_s: int = 7 * 24 * 3600) -> None:
        import redis  # only needed when this store is used

        self.url = url
        self.namespace = namespace
        self.ttl_s = int(ttl_s)
        self._redis = redis.Redis.from_url(url)

    def __repr__(self) -> str:
        return f"RedisStore({self.namespace!r})"

    def _name(self, key: str) -> str:
        return f"{self.namespace}:{validate_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        self._redis.set(self._name(key), data, ex=self.ttl_s)
        return key

    def get(self, key: str) -> bytes:
        # redis-py types replies as bytes | str whatever decode_responses; this client keeps the default (bytes)
        value = cast("bytes | None", self._redis.get(self._name(key)))
        if value is None:
            raise MissingArtifactError(key)
        return bytes(value)

    def exists(self, key: str) -> bool:
        return bool(self._redis.exists(self._name(key)))

    def keys(self, prefix: str) -> Iterator[str]:
        start = len(self.namespace) + 1
        pattern = self._name(prefix) + "/*"
        return iter(sorted(k.decode()[start:] for k in self._redis.scan_iter(match=pattern, count=500)))

    def delete_prefix(self, prefix: str) -> None:
        names = [self._name(prefix)] + [self._name(k) for k in self.keys(prefix)]
        for i in range(0, len(names), 500):
            self._redis.delete(*names[i : i + 500])


def open_store(spec: str) -> ArtifactStore:
    """Open the artifact store named by ``Settings.effective_artifact_store``.

    ``spec`` is a ``redis://`` / ``rediss://`` URL or a directory path
    (optionally ``file://``).
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("artifact store is empty: give a directory or a redis:// URL")
    if spec.startswith(("redis://", "rediss://")):
        return RedisStore(spec)
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    return DirectoryStore(Path(spec))
