"""The operator's pages and actions (server-rendered Jinja2 templates, no patient data by default).

Pages (GET): ``/`` overview, ``/studies`` (paged), ``/studies/{study}`` (one study: series,
completeness, jobs, sends, state changes, results), ``/jobs`` and ``/sends`` (paged), ``/workitems``
(UPS work items, the newest 50), ``/config``
(read-only, secrets hidden), ``/audit`` (the audit log's tail), ``/login``.

Actions (POST, each behind the session's CSRF token and the Origin check of
:mod:`node.web.auth`): ``/jobs/{id}/retry`` (also resends a job's dead-lettered results),
``/jobs/{id}/discard``, ``/studies/{study}/complete`` (optional ``pipeline``),
``/identifiers`` (show or hide patient identifiers in this session, when ``[web]
show_identifiers`` allows it), ``/login``, ``/logout``. Retry, discard and complete call
:func:`node.ops.admin.retry_job`, :func:`~node.ops.admin.discard_job` and
:func:`~node.ops.admin.complete_study`, the functions ``cardionode retry|discard|complete`` call,
with ``actor="web"``; each action is in the audit log. Their outcome is shown on the next page
(a short-lived signed cookie), and the node is woken (``WebContext.on_change``).

Patient names, IDs and birth dates are not in the ledger; the pages name a study by its Study
Instance UID and the key of the logs (:func:`node.ops.status.study_key`). With ``[web]
show_identifiers`` on and the session's switch turned on (audited), the study list and page
also show the patient's name, ID and birth date, read from the first stored instance.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from node import RESEARCH_USE_NOTICE, __version__
from node.config import redact_url
from node.dicom.sender import classify_status
from node.ledger import JOB_STATES, SEND_STATES, STUDY_STATES, WORKITEM_STATES, LedgerError, utcnow
from node.ops.admin import ActionResult, complete_study, discard_job, record_audit, retry_job
from node.ops.results import ResultNotFound, ResultWithheld, result_frame_png, result_pdf, study_results
from node.ops.running import running_node
from node.ops.status import (
    WORKITEM_COLUMNS,
    completeness_outlook,
    state_now,
    status_snapshot,
    study_detail,
    study_key,
    workitem_row,
)
from node.web.auth import Guard, Scope, csp_nonce, request_session
from node.web.context import WebContext
from node.web.metrics import model_versions

__all__ = ["PAGE_ROWS", "Pages", "PatientIdentifiers"]

_log = logging.getLogger("node.web")

#: rows per page of the study, job and send lists
PAGE_ROWS = 50
#: audit log lines shown (newest first)
AUDIT_LINES = 200
#: the cookie that carries an action's outcome to the next page (signed, one minute)
FLASH_COOKIE = "cardionode_flash"
TEMPLATES_DIR = Path(__file__).parent / "templates"
#: configuration keys whose values are secrets wherever they appear
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey")


@dataclass(frozen=True)
class PatientIdentifiers:
    """A study's patient, as its first stored instance names it (shown only when allowed and asked for)."""

    name: str
    patient_id: str
    birth_date: str


@lru_cache(maxsize=2048)
def _identifiers_from(path: str) -> PatientIdentifiers | None:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID", "PatientBirthDate"])
    except (OSError, InvalidDicomError, ValueError):
        return None
    return PatientIdentifiers(str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or ""),
                              str(ds.get("PatientBirthDate", "") or ""))


def _hide_secrets(value: Any, key: str = "") -> Any:
    """``value`` (plain data of the settings) with secrets shown as ``***`` and passwords in URLs hidden."""
    if isinstance(value, dict):
        return {k: _hide_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_secrets(v, key) for v in value]
    lowered = key.lower()
    if value not in (None, "") and any(word in lowered for word in _SECRET_KEYS) and not lowered.endswith(("_file", "_path")):
        return "***"
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _age(at: datetime | None, now: datetime) -> str:
    """``12 s ago`` / ``in 3 min`` / ``2 h ago``: how far ``at`` (naive UTC) is from ``now``."""
    if at is None:
        return ""
    seconds = (at - now).total_seconds()
    size = abs(seconds)
    text = (f"{size:.0f} s" if size < 90 else f"{size / 60:.0f} min" if size < 5400
            else f"{size / 3600:.1f} h" if size < 172800 else f"{size / 86400:.0f} d")
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n} B"


def _status_meaning(status: int | None) -> str:
    """What a C-STORE response status means for the send (:func:`node.dicom.sender.classify_status`)."""
    if status is None:
        return "no answer: the association failed"
    if status == 0x0000:
        return "success: stored"
    return {"sent": "warning: stored", "transient": "transient failure: tried again later",
            "permanent": "permanent failure: not tried again (dead letter)"}[classify_status(status)]


#: short names of the result objects' SOP classes, by words of their names (pydicom's UID dictionary)
_KINDS = (("SR Storage", "SR"), ("Encapsulated PDF", "PDF"), ("Secondary Capture", "SC"), ("Segmentation", "SEG"),
          ("Parametric Map", "Parametric map"))


def _object_kind(sop_class_uid: str) -> str:
    """``SR``, ``SC``, ``PDF``, ... for a result object's SOP Class UID (else the class's name)."""
    name = UID(sop_class_uid).name if sop_class_uid else ""
    return next((short for words, short in _KINDS if words in name), name or "-")


def _grouped(events: Sequence[Any]) -> list[dict[str, Any]]:
    """State changes with runs of the same change of one kind of thing (``send 7 … 19: pending → dead_letter``)
    folded into one row with their count, so that a page of them shows different things."""
    rows: list[dict[str, Any]] = []
    for event in events:
        last = rows[-1] if rows else None
        if (last is not None and event.entity != "study" and last["entity"] == event.entity
                and (last["from_state"], last["to_state"], last["rule"]) == (event.from_state, event.to_state, event.rule)):
            last["count"] += 1
            last["first_id"] = event.entity_id
            continue
        rows.append({"at": event.at, "entity": event.entity, "entity_id": event.entity_id, "first_id": event.entity_id,
                     "from_state": event.from_state, "to_state": event.to_state, "rule": event.rule,
                     "reason": event.reason, "count": 1})
    return rows


def _local_next(value: str | None, default: str) -> str:
    """A path of this app to go to after an action (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


class Pages:
    """The pages and actions of one app: built by :func:`node.web.app.create_app` with the app's :class:`Guard`."""

    def __init__(self, context: WebContext, guard: Guard) -> None:
        self.context, self.guard = context, guard
        self.settings = context.settings
        self.templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
        env = self.templates.env
        env.filters["key"] = study_key
        env.filters["when"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"
        env.filters["size"] = _size
        env.filters["hexstatus"] = lambda status: f"0x{status:04X}" if status is not None else "-"
        env.filters["status_meaning"] = _status_meaning
        env.filters["sop_class"] = lambda uid: UID(uid).name if uid else "-"
        env.filters["kind"] = _object_kind
        env.globals["state_now"] = state_now
        env.globals["research_notice"] = RESEARCH_USE_NOTICE
        env.globals["version"] = __version__
        self.flash_signer = URLSafeTimedSerializer(guard.serializer.secret_key, salt="flash")

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        """Every page and action route."""
        return [
            Route("/", self.overview, name="overview"),
            Route("/studies", self.studies, name="studies"),
            Route("/studies/{study_uid}", self.study, name="study"),
            Route("/studies/{study_uid}/complete", self.complete, methods=["POST"], name="complete"),
            Route("/jobs", self.jobs, name="jobs"),
            Route("/jobs/{job_id:int}/retry", self.retry, methods=["POST"], name="retry"),
            Route("/jobs/{job_id:int}/discard", self.discard, methods=["POST"], name="discard"),
            Route("/sends", self.sends, name="sends"),
            Route("/workitems", self.workitems, name="workitems"),
            Route("/config", self.config, name="config"),
            Route("/audit", self.audit, name="audit"),
            Route("/results/{sop_instance_uid}/frames/{frame:int}.png", self.result_frame, name="result_frame"),
            Route("/results/{sop_instance_uid}.pdf", self.result_pdf, name="result_pdf"),
            Route("/identifiers", self.identifiers, methods=["POST"], name="identifiers"),
            Route("/login", self.login, methods=["GET", "POST"], name="login"),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
            Route("/favicon.ico", lambda request: Response(status_code=204), name="favicon"),
        ]

    # ------------------------------------------------------------------ rendering
    def render(self, request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        """``template`` with the values every page uses: the node, the session, the nonce, the last action's outcome."""
        session = request_session(request.scope)
        flash = self._flash(request)
        response = self.templates.TemplateResponse(request, template, {
            "ae_title": self.settings.ae_title,
            "nonce": csp_nonce(request.scope),
            "session": session,
            "csrf": session.csrf if session else "",
            "identifiers_allowed": self.settings.web.show_identifiers,
            "identifiers_shown": self._show_identifiers(request),
            "flash": flash,
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "now": utcnow(),
            "age": _age,
            **values,
        }, status_code=status_code)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def refusal_page(self, scope: Scope, status: int, message: str) -> bytes:
        """The HTML of a refused page request (401: with the login form), for :class:`node.web.auth.SecurityMiddleware`."""
        template = self.templates.get_template("login.html")
        return template.render(
            ae_title=self.settings.ae_title, nonce=csp_nonce(scope), status=status, message=message,
            next=scope.get("path", "/"), research_notice=RESEARCH_USE_NOTICE, version=__version__,
            session=None, csrf="", flash=None,
        ).encode("utf-8")

    def _flash(self, request: Request) -> dict[str, Any] | None:
        value = request.cookies.get(FLASH_COOKIE)
        if not value:
            return None
        try:
            data = self.flash_signer.loads(value, max_age=60)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None

    def _after_action(self, request: Request, result: ActionResult, default: str, next_path: str | None) -> Response:
        """Redirect to the page the action came from, carrying its outcome; wake the node when something changed."""
        if result.changed and self.context.on_change is not None:
            try:
                self.context.on_change()
            except Exception:  # the action stands; the node picks it up on its next tick
                _log.exception("web: waking the node after an action failed")
        response = RedirectResponse(_local_next(next_path, default), status_code=303)
        flash = {"ok": result.ok, "message": result.message, "notes": list(result.notes) + list(result.warnings)}
        response.set_cookie(FLASH_COOKIE, self.flash_signer.dumps(flash), max_age=60, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    def _show_identifiers(self, request: Request) -> bool:
        session = request_session(request.scope)
        return bool(self.settings.web.show_identifiers and session is not None and session.identifiers)

    def _identifiers(self, study_uid: str) -> PatientIdentifiers | None:
        instances = self.context.ledger.instances.of_study(study_uid)
        for instance in instances[:3]:
            if instance.path:
                found = _identifiers_from(instance.path)
                if found is not None:
                    return found
        return None

    @staticmethod
    def _page_number(request: Request) -> int:
        try:
            return max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            return 1

    @staticmethod
    def _state_filter(request: Request, states: Sequence[str]) -> str | None:
        state = request.query_params.get("state") or None
        return state if state in states else None

    @classmethod
    def _listing(cls, request: Request, store: Any, states: Sequence[str]) -> tuple[str | None, int, Any, int, list[Any]]:
        """One page of a list page's rows: (state filter, page number, counts by state, rows in the filter, rows)."""
        state = cls._state_filter(request, states)
        page = cls._page_number(request)
        counts = store.count_by_state()
        total = counts[state] if state else sum(counts.values())
        rows = store.find(states=(state,) if state else None, limit=PAGE_ROWS, offset=(page - 1) * PAGE_ROWS)
        return state, page, counts, total, rows

    @staticmethod
    def _paging(request: Request, page: int, total: int, state: str | None) -> dict[str, Any]:
        pages = max(1, math.ceil(total / PAGE_ROWS))

        def link(n: int) -> str:
            query = {k: v for k, v in (("state", state), ("page", n if n > 1 else None)) if v}
            return request.url.path + (f"?{urlencode(query)}" if query else "")

        return {"page": page, "pages": pages, "total": total, "first": (page - 1) * PAGE_ROWS + 1 if total else 0,
                "last": min(total, page * PAGE_ROWS),
                "previous": link(page - 1) if page > 1 else None, "next": link(page + 1) if page < pages else None}

    # ------------------------------------------------------------------ pages
    def overview(self, request: Request) -> Response:
        ledger = self.context.ledger
        snapshot = status_snapshot(ledger, self.settings, rows=10, rejections=5, events=60)
        components = self.context.probe.components()
        last_received = max((s.last_received_at for s in snapshot.studies), default=None)
        sent = ledger.sends.find(states=("sent",), limit=1)
        disk = snapshot.disk
        return self.render(request, "overview.html", nav="overview", snapshot=snapshot, components=components,
                           events=_grouped(snapshot.events)[:15],
                           queues=self.context.probe.queue_depths(), last_received=last_received,
                           last_sent=sent[0].updated_at if sent else None, disk=disk,
                           disk_ratio=(min(1.0, disk.watermark_bytes / disk.free_bytes) if disk and disk.free_bytes else 1.0))

    def studies(self, request: Request) -> Response:
        ledger = self.context.ledger
        state, page, counts, total, rows = self._listing(request, ledger.studies, STUDY_STATES)
        now = utcnow()
        node = running_node(self.settings.node_lock_path)
        show = self._show_identifiers(request)
        answers = ledger.worklist.of_studies(s.study_uid for s in rows)
        studies = [{"study": s, "outlook": completeness_outlook(ledger, self.settings, s, now),
                    "worklist": answers.get(s.study_uid), "job": next(iter(ledger.jobs.find(study_uid=s.study_uid, limit=1)), None),
                    "patient": self._identifiers(s.study_uid) if show else None} for s in rows]
        return self.render(request, "studies.html", nav="studies", studies=studies, counts=counts, state=state,
                           states=STUDY_STATES, paging=self._paging(request, page, total, state), node=node,
                           worklists=bool(self.settings.worklists or answers))

    def study(self, request: Request) -> Response:
        ledger = self.context.ledger
        detail = study_detail(ledger, self.settings, request.path_params["study_uid"])
        if detail is None:
            return self.render(request, "missing.html", status_code=404, nav="studies",
                               what=f"no study {request.path_params['study_uid']} in the ledger")
        from node.pipelines import registry

        summary = ledger.studies.summary(detail.study.study_uid)
        show = self._show_identifiers(request)
        results = study_results(self.settings, ledger, detail.study.study_uid, identifiers=show)
        return self.render(
            request, "study.html", nav="studies", detail=detail, study=detail.study, series=summary.series,
            outlook=completeness_outlook(ledger, self.settings, detail.study),
            pipelines=[p.name for p in registry.all_pipelines()],
            patient=self._identifiers(detail.study.study_uid) if show else None,
            outputs={job.id: ledger.outputs.of_job(job.id) for job in detail.jobs}, results=results,
            worklist=ledger.worklist.answer_for(detail.study.study_uid), worklists=bool(self.settings.worklists),
        )

    def result_frame(self, request: Request) -> Response:
        """One frame of a result image (bull's-eye, curves, screen page) as PNG (:func:`node.ops.results.result_frame_png`)."""
        try:
            data = result_frame_png(self.settings, self.context.ledger, request.path_params["sop_instance_uid"],
                                    int(request.path_params["frame"]), identifiers=self._show_identifiers(request))
        except ResultNotFound as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        except ResultWithheld as exc:
            return Response(str(exc), status_code=403, media_type="text/plain")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    def result_pdf(self, request: Request) -> Response:
        """A summary PDF (:func:`node.ops.results.result_pdf`), shown inline; it names the patient, so it is
        withheld unless this session shows identifiers."""
        try:
            data = result_pdf(self.settings, self.context.ledger, request.path_params["sop_instance_uid"],
                              identifiers=self._show_identifiers(request))
        except ResultNotFound as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        except ResultWithheld as exc:
            return Response(str(exc), status_code=403, media_type="text/plain")
        uid = request.path_params["sop_instance_uid"]
        return Response(data, media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="{uid}.pdf"', "Cache-Control": "no-store"})

    def jobs(self, request: Request) -> Response:
        ledger = self.context.ledger
        state, page, counts, total, rows = self._listing(request, ledger.jobs, JOB_STATES)
        return self.render(request, "jobs.html", nav="jobs", jobs=rows, counts=counts, state=state, states=JOB_STATES,
                           paging=self._paging(request, page, total, state),
                           node=running_node(self.settings.node_lock_path))

    def sends(self, request: Request) -> Response:
        ledger = self.context.ledger
        state, page, counts, total, rows = self._listing(request, ledger.sends, SEND_STATES)
        jobs = {job_id: ledger.jobs.get(job_id) for job_id in {x.job_id for x in rows}}
        outputs = {x.output_uid: ledger.outputs.get(x.output_uid) for x in rows}
        retry_on: dict[int, int] = {}  # job id -> the one dead-lettered send row that carries its retry button
        for x in rows:
            if x.state == "dead_letter":
                retry_on.setdefault(x.job_id, x.id)
        return self.render(request, "sends.html", nav="sends", sends=rows, jobs=jobs, outputs=outputs,
                           retry_on=set(retry_on.values()), counts=counts, state=state,
                           states=SEND_STATES, paging=self._paging(request, page, total, state),
                           node=running_node(self.settings.node_lock_path))

    def workitems(self, request: Request) -> Response:
        """UPS work items (IHE AI Workflow): the newest :data:`PAGE_ROWS`, as `cardionode status` shows them."""
        ledger = self.context.ledger
        state = self._state_filter(request, WORKITEM_STATES)
        counts = ledger.workitems.count_by_state()
        items = ledger.workitems.find(states=(state,) if state else None, limit=PAGE_ROWS)
        return self.render(request, "workitems.html", nav="workitems", columns=WORKITEM_COLUMNS,
                           rows=[workitem_row(item) for item in items], counts=counts, state=state, states=WORKITEM_STATES,
                           total=counts[state] if state else sum(counts.values()))

    def config(self, request: Request) -> Response:
        settings = self.settings
        data = _hide_secrets(settings.redacted())
        sections = {k: v for k, v in data.items() if isinstance(v, (dict, list)) and v}
        scalars = {k: v for k, v in data.items() if k not in sections}
        try:
            device_uid = settings.effective_device_uid()
        except OSError as exc:
            device_uid = f"(cannot be read: {exc})"
        return self.render(request, "config.html", nav="config", scalars=scalars,
                           sections={k: json.dumps(v, indent=2, default=str) for k, v in sections.items()},
                           models=model_versions(settings), device_uid=device_uid,
                           token_place=("[web] token (setting or CARDIONODE_WEB__TOKEN)" if settings.web.token
                                        else str(settings.web_token_path)))

    def audit(self, request: Request) -> Response:
        return self.render(request, "audit.html", nav="audit", entries=_audit_tail(self.settings.audit_log_path, AUDIT_LINES),
                           path=self.settings.audit_log_path)

    # ------------------------------------------------------------------ actions
    async def _form(self, request: Request) -> Mapping[str, str]:
        form = await request.form()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def _run(self, action: Callable[[], ActionResult]) -> ActionResult:
        try:
            return action()
        except LedgerError as exc:  # the ledger refused (a race with the node): words, not a trace
            return ActionResult(False, str(exc))

    async def retry(self, request: Request) -> Response:
        form = await self._form(request)
        job_id = int(request.path_params["job_id"])
        force = form.get("force") == "1"
        result = await _threaded(lambda: self._run(lambda: retry_job(
            self.settings, self.context.ledger, job_id, force=force, actor="web", audit=self.context.audit)))
        return self._after_action(request, result, "/jobs", form.get("next"))

    async def discard(self, request: Request) -> Response:
        form = await self._form(request)
        job_id = int(request.path_params["job_id"])
        result = await _threaded(lambda: self._run(lambda: discard_job(
            self.settings, self.context.ledger, job_id, actor="web", audit=self.context.audit)))
        return self._after_action(request, result, "/jobs", form.get("next"))

    async def complete(self, request: Request) -> Response:
        form = await self._form(request)
        study_uid = request.path_params["study_uid"]
        pipeline = form.get("pipeline") or None
        result = await _threaded(lambda: self._run(lambda: complete_study(
            self.settings, self.context.ledger, study_uid, pipeline=pipeline, actor="web", audit=self.context.audit)))
        return self._after_action(request, result, f"/studies/{study_uid}", form.get("next"))

    async def identifiers(self, request: Request) -> Response:
        form = await self._form(request)
        session = request_session(request.scope)
        show = form.get("show") == "1"
        if session is None or not self.settings.web.show_identifiers:
            result = ActionResult(False, "patient identifiers are not shown on this node ([web] show_identifiers is off)")
            return self._after_action(request, result, "/", form.get("next"))
        warnings = record_audit(self.settings, self.context.audit,
                                "web.identifiers_shown" if show else "web.identifiers_hidden", actor="web")
        result = ActionResult(True, "patient identifiers shown in this session" if show
                              else "patient identifiers hidden", changed=False, warnings=warnings)
        response = self._after_action(request, result, "/", form.get("next"))
        response.headers.append("set-cookie", self.guard.cookie_for(request.scope, self.guard.with_identifiers(session, show)))
        return response

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            if self.guard.session_of({"cookie": request.headers.get("cookie", "")}) is not None:
                return RedirectResponse("/", status_code=303)
            return HTMLResponse(self.refusal_page(request.scope, 200, ""), status_code=200)
        form = await self._form(request)
        next_path = _local_next(form.get("next"), "/")
        if next_path.startswith("/login"):
            next_path = "/"
        if not self.guard.token_ok(form.get("token", "").strip()):
            record_audit(self.settings, self.context.audit, "web.login_failed", actor="web", how="form")
            return HTMLResponse(self.refusal_page(request.scope, 401, "that is not the access token of this node"), status_code=401)
        record_audit(self.settings, self.context.audit, "web.login", actor="web", how="form")
        response = RedirectResponse(next_path, status_code=303)
        response.headers.append("set-cookie", self.guard.cookie_for(request.scope, self.guard.new_session()))
        return response

    async def logout(self, request: Request) -> Response:
        record_audit(self.settings, self.context.audit, "web.logout", actor="web")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie("cardionode_session", path="/", httponly=True, samesite="strict")
        return response


async def _threaded(call: Callable[[], ActionResult]) -> ActionResult:
    """Run a blocking ledger action off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(call)


def _audit_tail(path: Path, lines: int) -> list[dict[str, Any]]:
    """The last ``lines`` entries of the audit log, newest first (the log holds no patient data)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - lines * 400))
            text = handle.read().decode("ascii", errors="replace")
    except OSError:
        return []
    entries = []
    for line in text.splitlines()[-lines:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            at, event = entry.pop("at", ""), entry.pop("event", "")
            entries.append({"at": str(at).replace("T", " ")[:19], "event": event,
                            "fields": ", ".join(f"{k}={v}" for k, v in entry.items())})
    return entries[::-1]
