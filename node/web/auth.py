"""Who may use the web app, and the browser protections of every answer.

The access token
    ``[web] token`` (or ``CARDIONODE_WEB__TOKEN``), else the contents of
    ``settings.web_token_path``, which :func:`load_token` creates at first start with
    ``secrets.token_urlsafe(32)``, readable only by the node's user (file mode 0600, folder
    0700). Tokens are compared with :func:`hmac.compare_digest`. The token itself is never
    logged; where it lives is.

Who is let in (:class:`SecurityMiddleware`, one pure ASGI middleware)
    * public paths (:data:`PUBLIC_PATHS`, ``/static/``): anyone; they carry no patient data;
    * API paths (:data:`API_PREFIXES`: ``/dicom-web/``, ``/metrics``): the header
      ``Authorization: Bearer <token>``, or HTTP Basic with the token as password (what
      Orthanc's DICOMweb client sends); no cookie, hence no CSRF check; ``/metrics`` also
      accepts a page session (an operator clicking the link). Else 401 with
      ``WWW-Authenticate``;
    * pages: the session cookie (:data:`SESSION_COOKIE`), got by ``POST /login`` with the
      token or by opening any page with ``?token=<token>`` once (answered with a redirect to
      the same page without the token). Else 401 with a small login page.

    The session cookie is signed (:mod:`itsdangerous`, key derived from the token: a new
    token ends every session) and lasts ``[web] session_hours``; it is ``HttpOnly``,
    ``SameSite=Strict``, and ``Secure`` when the request came over https (directly, or as a
    reverse proxy on 127.0.0.1 says with ``X-Forwarded-Proto``). It carries a random CSRF token
    (:attr:`Session.csrf`) and whether the operator asked to see patient identifiers.

    Every state-changing page request (POST, PUT, PATCH, DELETE) must carry the session's
    CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and an ``Origin`` (else a
    ``Referer``) equal to the app's own origin; else 403 and nothing runs. ``POST /login``
    needs the own origin (there is no session yet).

Headers of every answer
    ``Content-Security-Policy`` with a per-request nonce (:func:`csp_nonce`; templates put it
    on every ``<script>`` and ``<style>``), ``X-Content-Type-Options: nosniff``,
    ``Referrer-Policy: same-origin`` (no address of this page leaves it for another site; with
    ``no-referrer`` a browser would send ``Origin: null`` on the page's own forms, and the Origin
    check could not tell them from forged ones), ``X-Frame-Options: DENY``; pages and API answers also
    ``Cache-Control: no-store`` (static files are cached).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer

from node.config import Settings

__all__ = [
    "API_PREFIXES",
    "Guard",
    "PUBLIC_PATHS",
    "SESSION_COOKIE",
    "SecurityMiddleware",
    "Session",
    "csp_nonce",
    "load_token",
    "request_session",
    "session_cookie",
]

_log = logging.getLogger("node.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: paths anyone may open (health probes carry no patient data); ``/static/`` too
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico"})
#: paths authenticated by the Authorization header alone (scripts, Prometheus, DICOMweb clients)
API_PREFIXES = ("/dicom-web", "/metrics")
#: the session cookie's name
SESSION_COOKIE = "cardionode_session"
#: the largest page form body read for the CSRF check (bytes); larger: 413
FORM_MAX_BYTES = 64 * 1024
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def load_token(settings: Settings) -> str:
    """The web app's access token: ``[web] token``, else the token file (created when missing).

    The file ``settings.web_token_path`` is created with a random token
    (``secrets.token_urlsafe(32)``), mode 0600 in a folder of mode 0700, and its place is logged
    (never the token). Raises :class:`OSError` when it cannot be read or written, and
    :class:`ValueError` for an empty file.
    """
    if settings.web.token:
        return settings.web.token
    path = settings.web_token_path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile: read theirs
            pass
        else:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            _log.info("web: access token created in %s (readable only by this user)", path)
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"the web access token file {path} is empty; remove it and a new token is made at start")
    return token


@dataclass(frozen=True)
class Session:
    """A browser's session: its CSRF token and whether it shows patient identifiers (``[web] show_identifiers`` allowing)."""

    csrf: str
    identifiers: bool = False


def request_session(scope: Scope) -> Session | None:
    """The session of a request the middleware let in with a cookie (None for API or public requests)."""
    session = scope.get("state", {}).get("session")
    return session if isinstance(session, Session) else None


def csp_nonce(scope: Scope) -> str:
    """The Content-Security-Policy nonce of this request (for ``<script nonce=...>`` in templates)."""
    return str(scope.get("state", {}).get("csp_nonce", ""))


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _origin(scope: Scope, headers: dict[str, str]) -> str:
    """The app's own origin as the browser sees it (scheme and Host of the request)."""
    host = headers.get("host") or "{}:{}".format(*scope.get("server") or ("127.0.0.1", 80))
    return f"{scope.get('scheme', 'http')}://{host}".lower()


def _same_origin(scope: Scope, headers: dict[str, str]) -> bool:
    """Whether the request's Origin (else Referer) is the app's own origin; False when neither is there."""
    claimed = headers.get("origin")
    if not claimed or claimed == "null":
        referer = headers.get("referer", "")
        if not referer:
            return False
        parts = urlsplit(referer)
        claimed = f"{parts.scheme}://{parts.netloc}"
    return hmac.compare_digest(claimed.lower().encode(), _origin(scope, headers).encode())


def session_cookie(serializer: URLSafeTimedSerializer, session: Session, max_age_s: int, secure: bool) -> str:
    """The ``Set-Cookie`` value that gives a browser ``session``."""
    value = serializer.dumps({"c": session.csrf, "i": session.identifiers})
    flags = f"Max-Age={max_age_s}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{SESSION_COOKIE}={value}; {flags}"


class Guard:
    """The access token and the sessions signed with it (one per app; the login page and the middleware share it)."""

    def __init__(self, token: str, session_hours: float) -> None:
        self._token = token.encode("utf-8")
        secret = hmac.new(self._token, b"cardionode-web-session-v1", hashlib.sha256).hexdigest()
        self.serializer = URLSafeTimedSerializer(secret, salt="session")
        self.max_age_s = max(60, int(session_hours * 3600))

    def token_ok(self, presented: str) -> bool:
        """Whether ``presented`` is the access token (constant time)."""
        return hmac.compare_digest(presented.encode("utf-8"), self._token)

    def header_ok(self, headers: dict[str, str]) -> bool:
        """Whether ``Authorization`` carries the token: ``Bearer <token>``, or Basic with the token as password."""
        value = headers.get("authorization", "")
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer":
            return self.token_ok(credentials.strip())
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return self.token_ok(password)
        return False

    def session_of(self, headers: dict[str, str]) -> Session | None:
        """The session of the request's valid, unexpired session cookie, or None."""
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name != SESSION_COOKIE:
                continue
            try:
                data = self.serializer.loads(value, max_age=self.max_age_s)
            except BadSignature:
                continue
            if isinstance(data, dict) and isinstance(data.get("c"), str):
                return Session(csrf=data["c"], identifiers=bool(data.get("i")))
        return None

    @staticmethod
    def new_session() -> Session:
        """A fresh session (a new CSRF token, identifiers hidden)."""
        return Session(csrf=secrets.token_urlsafe(24))

    def cookie_for(self, scope: Scope, session: Session) -> str:
        """The ``Set-Cookie`` value for ``session`` on this request's scheme (``Secure`` over https)."""
        return session_cookie(self.serializer, session, self.max_age_s, scope.get("scheme") == "https")

    @staticmethod
    def with_identifiers(session: Session, shown: bool) -> Session:
        """``session`` with patient identifiers shown or hidden."""
        return replace(session, identifiers=shown)


class SecurityMiddleware:
    """Authentication, CSRF and Origin checks, and the security headers of every answer (see the module).

    ``refusal_page(scope, status, message) -> bytes``: the HTML of a 401 (with the login form),
    403 or 413 answer to a page request; ``on_login(how, ok)``: told when a browser tries to sign in
    with ``?token=`` (``how`` = ``"query"``; ``ok``: whether the token was right), for the audit log.
    """

    def __init__(self, app: ASGIApp, guard: Guard, refusal_page: Callable[[Scope, int, str], bytes] | None = None,
                 on_login: Callable[[str, bool], None] | None = None) -> None:
        self.app, self.guard = app, guard
        self.refusal_page, self.on_login = refusal_page, on_login

    # ---------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        state = scope.setdefault("state", {})
        state["csp_nonce"] = nonce
        path: str = scope.get("path", "/")
        headers = _headers(scope)
        static = path.startswith("/static/")
        send = self._secured(send, nonce, cache=static)
        method = scope.get("method", "GET").upper()

        api = next((p for p in API_PREFIXES if path == p or path.startswith(p + "/")), None)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if "token" in query and method == "GET" and api is None and not static:
            if self.guard.token_ok(query["token"][-1]):
                await self._exchange(scope, send, query)
            else:
                if self.on_login is not None:
                    self.on_login("query", False)
                await self._refuse(scope, send, 401, "that is not the access token of this node")
            return

        if path in PUBLIC_PATHS or static:
            if path == "/login" and method in _UNSAFE and not _same_origin(scope, headers):
                await self._refuse(scope, send, 403, "the request did not come from this page (Origin check)")
                return
            await self.app(scope, receive, send)
            return

        if api is not None:
            if self.guard.header_ok(headers) or (api == "/metrics" and self.guard.session_of(headers)):
                state["authenticated_by"] = "header"
                await self.app(scope, receive, send)
                return
            await self._unauthorized_api(send)
            return

        session = self.guard.session_of(headers)
        if session is None:
            await self._refuse(scope, send, 401, "")
            return
        state["session"] = session
        state["authenticated_by"] = "session"
        if method in _UNSAFE:
            if not _same_origin(scope, headers):
                await self._refuse(scope, send, 403, "the request did not come from this page (Origin check); nothing was changed")
                return
            body = await self._body(receive)
            if body is None:
                await self._refuse(scope, send, 413, "the form is too large")
                return
            if not self._csrf_ok(session, headers, body):
                await self._refuse(scope, send, 403, "the form's security token is missing or stale; "
                                   "reload the page and try again; nothing was changed")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _csrf_ok(self, session: Session, headers: dict[str, str], body: bytes) -> bool:
        presented = headers.get("x-csrf-token", "")
        if not presented and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            presented = (parse_qs(body.decode("latin-1")).get("csrf") or [""])[-1]
        return bool(presented) and hmac.compare_digest(presented.encode(), session.csrf.encode())

    @staticmethod
    async def _body(receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > FORM_MAX_BYTES:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _secured(self, send: Send, nonce: str, cache: bool) -> Send:
        policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; "
                  "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                  "base-uri 'none'")
        extra = [
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]
        if not cache:
            extra.append((b"cache-control", b"no-store"))

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in extra}
                message["headers"] = [h for h in message.get("headers", []) if h[0].lower() not in names] + extra
            await send(message)

        return secured

    async def _exchange(self, scope: Scope, send: Send, query: dict[str, list[str]]) -> None:
        """``?token=``: a new session cookie and a redirect to the same page without the token."""
        rest = {k: v for k, v in query.items() if k != "token"}
        location = scope.get("path", "/") + (f"?{urlencode(rest, doseq=True)}" if rest else "")
        _log.info("web: a browser signed in with the access token (query)")
        if self.on_login is not None:
            self.on_login("query", True)
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1")),
            (b"set-cookie", self.guard.cookie_for(scope, self.guard.new_session()).encode("latin-1")),
            (b"content-type", b"text/plain; charset=utf-8"),
        ]})
        await send({"type": "http.response.body", "body": b"signed in\n"})

    async def _unauthorized_api(self, send: Send) -> None:
        body = json.dumps({"error": "the access token is needed: Authorization: Bearer <token> "
                           "(or HTTP Basic with the token as password)"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"),
            (b"www-authenticate", b'Bearer realm="cardionode", Basic realm="cardionode"'),
        ]})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        """A refusal as a page: 401 with the login form, 403 or 413 with the reason."""
        if self.refusal_page is not None:
            body = self.refusal_page(scope, status, message)
        else:
            body = f"<!doctype html><title>{status}</title><p>{escape(message)}</p>".encode()
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="cardionode"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already read ``body`` once, then what the client sends next (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
