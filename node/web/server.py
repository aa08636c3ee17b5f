"""The web app's HTTP server: uvicorn in a thread of the node process, or alone (``cardionode web``).

:class:`WebServer` binds ``[web] bind_address``:``port`` itself when it starts (so a taken
port is a :class:`WebServerError` in one line, before anything else runs), then serves the app
of :func:`node.web.app.create_app` with :class:`uvicorn.Server` in a daemon thread until
:meth:`WebServer.stop`. uvicorn's access log is off (URLs name studies; a ``?token=`` URL
would name the token); uvicorn trusts ``X-Forwarded-Proto`` from 127.0.0.1 only, so a TLS
reverse proxy on the same machine makes session cookies ``Secure``.

``cardionode serve`` starts one when ``[web] enabled`` (:mod:`node.service`);
``cardionode web`` (:func:`web_main`) runs the same app without listener or workers, for a node
running elsewhere on the same ledger (then the probe is
:class:`node.web.probes.StandaloneProbe` and STOW-RS answers 503).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time

import uvicorn

from node.config import listen_problem
from node.web.app import create_app
from node.web.context import WebContext

__all__ = ["START_TIMEOUT_S", "WebServer", "WebServerError", "web_main"]

_log = logging.getLogger("node.web")

#: seconds :meth:`WebServer.start` waits for uvicorn to serve
START_TIMEOUT_S = 20.0


class WebServerError(RuntimeError):
    """The web server cannot start (its port is taken, the token file cannot be made); the message says why in one line."""


class WebServer:
    """The web app of ``context`` served on ``[web] bind_address``:``port`` from a thread (:meth:`start`, :meth:`stop`).

    ``token``: the access token (default: ``[web] token`` or the token file, created at first start).
    """

    def __init__(self, context: WebContext, token: str | None = None) -> None:
        self.context = context
        self._token = token
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the configured one; the one the system chose for port 0)."""
        if self._socket is None:
            raise RuntimeError("the web server is not running")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://address:port/`` of the running server."""
        address = self.context.settings.web.bind_address
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Bind, then serve in a daemon thread; returns once uvicorn serves. Raises :class:`WebServerError`."""
        web = self.context.settings.web
        try:
            app = create_app(self.context, self._token)
        except (OSError, ValueError) as exc:
            raise WebServerError(f"web page: cannot read or create the access token: {exc}") from exc
        self._socket = _bind(web.bind_address, web.port)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", proxy_headers=True,
                                forwarded_allow_ips="127.0.0.1", server_header=False, timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self._socket]}, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise WebServerError(f"web page: the server on {web.bind_address}:{web.port} did not start")
            time.sleep(0.02)
        where = "[web] token" if web.token else str(self.context.settings.web_token_path)
        _log.info("web page on %s (access token: %s)", self.url, where)

    def stop(self) -> None:
        """Stop serving (open requests get a few seconds) and close the socket; safe to call twice."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _bind(address: str, port: int) -> socket.socket:
    """A listening socket on ``address:port``; :class:`WebServerError` in words when it cannot be had."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        words = listen_problem(address, port) if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL) else None
        raise WebServerError(f"web page: {words or f'cannot listen on {address}:{port}: {exc}'}; "
                             "set [web] port, or [web] enabled = false") from exc
    sock.setblocking(False)
    return sock


def web_main(args: argparse.Namespace) -> int:
    """``cardionode web``: the web app alone, on the ledger of ``--config`` (a node running elsewhere,
    or none); until SIGTERM/SIGINT. 2 when the configuration has problems, the ledger is at another
    schema revision or the web port cannot be had (one line each)."""
    from node.config import ConfigError, load_settings
    from node.dicom.audit import AuditLog
    from node.dicom.logs import LogOptions, setup_logging
    from node.ledger import Ledger, LedgerSchemaError
    from node.pipelines import registry
    from node.web.probes import StandaloneProbe

    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"cardionode web: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_dir, "web", options=LogOptions.from_settings(settings))
    for module, error in registry.load_modules(settings.pipeline_modules).items():
        _log.error("pipeline module %s not loaded: %s", module, error)
    registry.all_pipelines()  # the shipped ones too, now: not at the operator's first click on the studies page
    try:
        ledger = Ledger.from_settings(settings)
    except LedgerSchemaError as exc:
        print(f"cardionode web: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with AuditLog(settings.audit_log_path, durable=settings.durable_writes) as audit:
            server = WebServer(WebContext(settings, ledger, StandaloneProbe(settings, ledger), audit=audit))
            try:
                server.start()
            except WebServerError as exc:
                print(f"cardionode web: {exc}", file=sys.stderr)
                return 2
            print(f"cardionode web: the operator page is on {server.url} (Ctrl-C stops it)", flush=True)
            try:
                while not stop.wait(1.0):
                    pass
            finally:
                server.stop()
    finally:
        ledger.close()
    return 0
