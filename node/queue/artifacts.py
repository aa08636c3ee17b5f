"""The artifact store: bytes that travel between the node and its workers.

Workers do not assume they share a disk with the node (DESIGN section 4). A job's
input instances, the intermediate results of its steps and its output DICOM
objects are put in an artifact store under keys; task messages carry only the
keys. Two stores:

* :class:`DirectoryStore` (default): files under a directory, written
  atomically (temporary file, fsync, rename). Workers on the same machine, or on
  machines mounting the same volume, read the same files. Input instances are
  hard links to the spool files when the store is on the spool's file system
  (:meth:`DirectoryStore.put_file`), copies otherwise.
* :class:`RedisStore`: values in Redis (the broker's server when it is Redis),
  with an expiry so that abandoned jobs do not fill the server. The URL carries
  the password (``redis://:PASSWORD@host:6379/0``, or ``USER:PASSWORD`` for a
  Redis ACL user); ``rediss://`` speaks TLS, verifying the server with
  :class:`RedisTLS` (a CA file, or the system's CAs) and optionally presenting a
  client certificate.

Whoever can write to the store can change what the workers read, so nothing
read from it is trusted: step results are decoded by :mod:`node.queue.codec`
(no code runs), instances and outputs are parsed as DICOM, and :meth:`ArtifactStore.get`
takes a size bound.

Keys are relative POSIX-like paths made of ``[A-Za-z0-9._-]`` components, e.g.
``jobs/12.1/inputs/0003.dcm``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import ssl
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from node.config import redact_url

__all__ = [
    "ArtifactStore",
    "DirectoryStore",
    "RedisStore",
    "RedisTLS",
    "MissingArtifactError",
    "ArtifactTooLargeError",
    "open_store",
    "validate_key",
    "redis_client",
    "redis_problem",
]

#: seconds to wait for a Redis server to accept a connection before giving up with an error
REDIS_CONNECT_TIMEOUT_S = 10.0

_KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$")


class MissingArtifactError(KeyError):
    """A key that the store does not hold (expired, deleted, or never written)."""

    def __str__(self) -> str:
        return f"artifact {self.args[0]!r} is not in the store (expired or deleted?)"


class ArtifactTooLargeError(ValueError):
    """An artifact larger than the reader accepts (a bound against memory exhaustion)."""


@dataclass(frozen=True)
class RedisTLS:
    """TLS for ``rediss://`` URLs: the server is always verified.

    ``ca``: PEM file of the CA(s) that signed the Redis server's certificate (None: the
    system's CAs); ``cert``/``key``: the client certificate and key, for a Redis with
    ``tls-auth-clients yes``; ``check_hostname``: the certificate must name the host of the URL.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of redis-py's ``SSLConnection`` (also what kombu and Celery pass on)."""
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": self.check_hostname}
        if self.ca is not None:
            options["ssl_ca_certs"] = str(self.ca)
        if self.cert is not None and self.key is not None:
            options["ssl_certfile"] = str(self.cert)
            options["ssl_keyfile"] = str(self.key)
        return options


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
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """Return the bytes under ``key``; raise :class:`MissingArtifactError` if absent and
        :class:`ArtifactTooLargeError`, before reading it, if it holds more than ``max_bytes``."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if ``key`` holds a value."""

    @abstractmethod
    def keys(self, prefix: str) -> Iterator[str]:
        """The keys below ``prefix`` (a key path without trailing slash)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete ``prefix`` and every key below it."""

    def put_file(self, key: str, path: Path) -> int:
        """Store the bytes of file ``path`` under ``key``; returns the bytes written to the store
        (0 when the store could reference the file instead, see :meth:`DirectoryStore.put_file`)."""
        data = Path(path).read_bytes()
        self.put(key, data)
        return len(data)


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

    def put_file(self, key: str, path: Path) -> int:
        """Reference ``path`` under ``key`` by a hard link when both are on one file system (no
        second copy of the bytes: a study needs its disk space once); else copy it like :meth:`put`.

        A link is safe because nothing writes a stored file or a spool file in place (both are
        replaced by rename), and workers read it through the store like any other artifact.
        """
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-link-{os.getpid()}-{target.name}"
        try:
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, target)
            return 0
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
        return super().put_file(key, path)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            with self._path(key).open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                _check_size(key, size, max_bytes)
                return handle.read()
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

    def __init__(
        self, url: str, namespace: str = "cardionode:artifacts", ttl_s: int = 7 * 24 * 3600, tls: RedisTLS | None = None
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.ttl_s = int(ttl_s)
        self._redis = redis_client(url, tls)

    def __repr__(self) -> str:
        return f"RedisStore({self.namespace!r})"

    def _name(self, key: str) -> str:
        return f"{self.namespace}:{validate_key(key)}"

    def put(self, key: str, data: bytes) -> str:
        self._redis.set(self._name(key), data, ex=self.ttl_s)
        return key

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        name = self._name(key)
        if max_bytes is not None:
            _check_size(key, int(cast(int, self._redis.strlen(name))), max_bytes)
        # redis-py types replies as bytes | str whatever decode_responses; this client keeps the default (bytes)
        value = cast("bytes | None", self._redis.get(name))
        if value is not None and max_bytes is not None:
            _check_size(key, len(value), max_bytes)  # replaced between the two commands
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


def _check_size(key: str, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise ArtifactTooLargeError(f"artifact {key!r} holds {size} bytes, more than the {max_bytes} accepted")


def redis_client(url: str, tls: RedisTLS | None = None, timeout_s: float | None = None) -> Any:
    """A redis-py client for ``url`` (password in the URL; TLS options from ``tls`` for ``rediss://``);
    ``timeout_s`` bounds connecting and each command (seconds; default: connecting within
    ``REDIS_CONNECT_TIMEOUT_S``, commands unbounded)."""
    import redis  # only needed when Redis is used

    options: dict[str, Any] = {"socket_connect_timeout": timeout_s or REDIS_CONNECT_TIMEOUT_S, "health_check_interval": 30}
    if timeout_s is not None:
        options["socket_timeout"] = timeout_s
    if url.startswith("rediss://"):
        options.update((tls or RedisTLS()).redis_options())
    return redis.Redis.from_url(url, **options)


def redis_problem(url: str, tls: RedisTLS | None, what: str, timeout_s: float | None = None) -> tuple[str, bool] | None:
    """Why the Redis server of ``url`` cannot be used, or None when it answers a ping (within
    ``timeout_s`` seconds when given, :func:`redis_client`).

    Returns ``(words, refused)``: the reason with the password redacted, naming the
    setting ``what`` (``broker_url``, ...), and whether the server *refused* this client
    (wrong or missing password, unknown user, TLS failure: a configuration error) rather
    than being unreachable (down, or the network: maybe transient).
    """
    import redis

    shown = f"{what} {redact_url(url)}"
    hint = "put it in the URL (redis://:PASSWORD@host:port/db, or USER:PASSWORD for an ACL user)"
    try:
        client = redis_client(url, tls, timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except redis.AuthenticationError as exc:  # wrong password or user; "Authentication required" without one
        if "required" in str(exc).lower():
            return f"{shown}: the Redis server needs a password; {hint} ({exc})", True
        return f"{shown}: the Redis server refused the password (or user) in the URL ({exc})", True
    except redis.ResponseError as exc:  # NOAUTH, NOPERM, or AUTH sent to a server without a password
        if "NOAUTH" in str(exc):
            return f"{shown}: the Redis server needs a password; {hint} ({exc})", True
        return f"{shown}: the Redis server refused this client ({exc})", True
    except redis.ConnectionError as exc:
        text = str(exc)
        if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "certificate" in text.lower():
            return (f"{shown}: TLS with the Redis server failed ({text}); check that redis_tls.ca holds the CA "
                    "of the server's certificate, that the certificate names the URL's host, and redis_tls.cert/key"), True
        return f"{shown}: cannot connect ({text})", False
    except (redis.RedisError, OSError) as exc:
        return f"{shown}: {type(exc).__name__}: {exc}", False
    except ValueError as exc:  # from_url: a URL redis-py cannot parse
        return f"{shown}: not a usable Redis URL ({exc})", True
    return None


def open_store(spec: str, tls: RedisTLS | None = None) -> ArtifactStore:
    """Open the artifact store named by ``Settings.effective_artifact_store``.

    ``spec`` is a ``redis://`` / ``rediss://`` URL (``tls`` applies to ``rediss://``)
    or a directory path (optionally ``file://``).
    """
    spec = spec.strip()
    if not spec:
        raise ValueError("artifact store is empty: give a directory or a redis:// URL")
    if spec.startswith(("redis://", "rediss://")):
        return RedisStore(spec, tls=tls)
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    return DirectoryStore(Path(spec))
