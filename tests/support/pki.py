"""A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_pki"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate (RSA 2048, PEM).

    Returns the files by name: ``ca.pem``, ``server.pem``, ``server.key``, ``client.pem``, ``client.key``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=CardioNode Test CA", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'TESTSCU'}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
