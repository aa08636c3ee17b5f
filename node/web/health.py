"""``GET /healthz`` and ``GET /readyz``: is the process alive, and is the node ready for studies.

``/healthz`` answers ``200 {"status": "alive"}`` whenever the web server can answer at all: it
checks nothing else (a liveness probe that fails on a dependency would have the node restarted
for someone else's outage).

``/readyz`` asks the context's probe (:mod:`node.web.probes`) about every component and answers
``200 {"status": "ready", ...}`` when the ledger, the broker, the listener and the disk are all
fine (:data:`node.web.probes.READINESS`), else ``503 {"status": "not ready", ...}``. The body
names every component with its state and the reason in plain words::

    {"status": "not ready",
     "components": {"ledger": {"ok": true, "detail": "answers"},
                    "broker": {"ok": false, "detail": "broker_url redis://127.0.0.1:6390/0: cannot connect (...)"},
                    "listener": {"ok": true, "detail": "CARDIONODE listening on 127.0.0.1:11112"},
                    "disk": {"ok": true, "detail": "5120 MiB free in /var/lib/cardionode (watermark 500 MiB)"},
                    "workers": {"ok": true, "detail": "1 of 1 local worker group(s) running"}}}

``workers`` is shown but does not decide readiness. Both answer without the access token
(they carry no patient data) and are never cached.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from node.web.context import ComponentState, WebContext
from node.web.probes import READINESS

__all__ = ["health_routes", "readiness"]

_NO_STORE = {"Cache-Control": "no-store"}


def readiness(components: list[ComponentState]) -> tuple[bool, dict[str, dict[str, bool | str]]]:
    """``(ready, body components)``: ready when every component of :data:`~node.web.probes.READINESS`
    is present and ok; the body maps each component's name to ``{"ok", "detail"}``."""
    by_name = {c.name: c for c in components}
    ready = all(name in by_name and by_name[name].ok for name in READINESS)
    return ready, {c.name: {"ok": c.ok, "detail": c.detail} for c in components}


def health_routes(context: WebContext) -> list[BaseRoute]:
    """``GET /healthz`` and ``GET /readyz`` for ``context``."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"}, headers=_NO_STORE)

    def readyz(request: Request) -> JSONResponse:  # a plain function: the probes block, Starlette runs it in a thread
        ready, components = readiness(context.probe.components())
        return JSONResponse({"status": "ready" if ready else "not ready", "components": components},
                            status_code=200 if ready else 503, headers=_NO_STORE)

    return [Route("/healthz", healthz, methods=["GET"], name="healthz"),
            Route("/readyz", readyz, methods=["GET"], name="readyz")]
