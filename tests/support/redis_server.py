"""A private Redis server for one test: its own loopback port, password and (optionally) TLS.

The shared Redis on 127.0.0.1:6379 has no password and must not be reconfigured
(other tests and engineers use it); a test that needs authentication or TLS starts
one of these in its temporary folder and stops it (its own process, by pid)::

    with RedisServer(tmp_path / "redis", password="s3cret") as server:
        url = server.url()            # redis://:s3cret@127.0.0.1:<port>/0
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from tests.support.ports import free_port, wait_for_port
from tests.support.tools import require_tool

__all__ = ["RedisServer"]


class RedisServer:
    """``redis-server`` on 127.0.0.1 with ``--requirepass`` when ``password`` is given.

    ``tls``: ``{"cert": ..., "key": ..., "ca": ...}`` (PEM files) makes it speak TLS only
    (``rediss://``), requiring client certificates signed by ``ca`` when ``client_certs``.
    Nothing is persisted; the files (log) live under ``folder``.
    """

    def __init__(self, folder: Path, password: str | None = None, tls: dict[str, Path] | None = None,
                 client_certs: bool = False) -> None:
        self.folder = folder
        self.password = password
        self.tls = tls
        self.client_certs = client_certs
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        command = [require_tool("redis-server"), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"), "--daemonize", "no"]
        if self.tls is None:
            command += ["--port", str(self.port)]
        else:
            command += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls["cert"]),
                        "--tls-key-file", str(self.tls["key"]), "--tls-ca-cert-file", str(self.tls["ca"]),
                        "--tls-auth-clients", "yes" if self.client_certs else "no"]
        if self.password is not None:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, 20, f"redis-server (log: {self.folder / 'redis.log'})", self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, password: str | None = "", db: int = 0) -> str:
        """The server's URL with ``password`` (default: the server's own; None: no password)."""
        scheme = "redis" if self.tls is None else "rediss"
        secret = self.password if password == "" else password
        credentials = "" if secret is None else f":{quote(secret, safe='')}@"
        return f"{scheme}://{credentials}127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
