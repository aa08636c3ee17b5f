"""The operator web app: :func:`create_app` builds one Starlette app from a :class:`~node.web.context.WebContext`.

Routes: the pages and actions (:mod:`node.web.pages`), the vendored static files
(``/static/``), ``/metrics`` (:mod:`node.web.metrics`), ``/healthz`` and ``/readyz``
(:mod:`node.web.health`) and DICOMweb STOW-RS (:mod:`node.web.stow`), all behind one
:class:`~node.web.auth.SecurityMiddleware` (token, session, CSRF, Origin, CSP; see
:mod:`node.web.auth`). The same app runs inside ``cardionode serve`` and alone under
``cardionode web`` (:mod:`node.web.server`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from node.ops.admin import record_audit
from node.web.auth import Guard, SecurityMiddleware, load_token
from node.web.context import WebContext
from node.web.health import health_routes
from node.web.metrics import metrics_routes
from node.web.pages import Pages
from node.web.stow import stow_routes

__all__ = ["STATIC_DIR", "create_app"]

#: the vendored CSS and JavaScript (no CDN: a hospital network has none)
STATIC_DIR = Path(__file__).parent / "static"


def create_app(context: WebContext, token: str | None = None) -> Starlette:
    """The web app of ``context``; ``token``: the access token (default: :func:`node.web.auth.load_token`,
    which creates the token file at first start)."""
    guard = Guard(token if token is not None else load_token(context.settings), context.settings.web.session_hours)
    pages = Pages(context, guard)
    routes: list[BaseRoute] = [
        *pages.routes(),
        *health_routes(context),
        *metrics_routes(context),
        *stow_routes(context),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    def on_login(how: str, ok: bool) -> None:
        record_audit(context.settings, context.audit, "web.login" if ok else "web.login_failed", actor="web", how=how)

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityMiddleware, guard=guard, refusal_page=pages.refusal_page, on_login=on_login)],
    )
    app.state.context = context
    app.state.guard = guard
    return app
