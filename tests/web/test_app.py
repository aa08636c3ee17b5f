"""The operator web app in process (Starlette's TestClient) on a real SQLite ledger, and once over HTTP from ``serve``.

The ledger is filled through the ledger's own API with studies written by the NM test factory
(its synthetic patient: :data:`tests.support.nm.PATIENT_NAME` ...): one still receiving, one
whose job failed, one whose results were dead-lettered. The pages are checked for who may see
them (401 without a session, the token exchanged for a cookie with the right flags), for the
browser protections of every answer (CSP nonce on every script, no inline style), for the
secrets the configuration page hides, and for the patient identifiers no page shows unless the
operator turned them on.
"""

from __future__ import annotations

import json
import re
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from node.config import Settings, load_settings
from node.dicom.audit import AuditLog
from node.ledger import Ledger, OutputMeta, utcnow
from node.ops.status import completeness_outlook
from node.pipelines import registry
from node.web.app import create_app
from node.web.auth import SESSION_COOKIE
from node.web.context import WebContext
from node.web.probes import StandaloneProbe
from node.workflow.completeness import Rule, decide
from tests.support.config import FLOWTEST_PIPELINE_MODULE, serve_settings, write_config
from tests.support.nm import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, write_nm_study
from tests.support.node import NodeProcess
from tests.support.pipelines import flowtest  # noqa: F401 (registered at collection: tests/conftest.py keeps it for marked tests)
from tests.support.ports import free_port
from tests.support.worker import record_instances

pytestmark = pytest.mark.uses_test_pipelines

TOKEN = "test-token-0123456789"
#: what the browser's requests carry: the app's own origin (TestClient's base URL)
ORIGIN = "http://127.0.0.1:8080"
PAGES = ("/", "/studies", "/jobs", "/sends", "/workitems", "/config", "/audit")
#: the performer's lock of the test work item: never on a page
TRANSACTION_UID = "2.25.31415926535"
#: the synthetic patient, in every spelling a page could use
PATIENT_WORDS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID, PATIENT_BIRTH_DATE, "1937-09-14")


@dataclass
class Site:
    """A web app on a filled ledger: its settings, ledger, audit log, app and the studies in it."""

    settings: Settings
    ledger: Ledger
    audit: AuditLog
    client: TestClient
    studies: dict[str, str] = field(default_factory=dict)  # role -> Study Instance UID
    jobs: dict[str, int] = field(default_factory=dict)  # role -> job id
    woken: list[int] = field(default_factory=list)  # one entry per on_change call

    def sign_in(self) -> str:
        """Sign the client in with ``?token=``; the session's CSRF token (from a page's form)."""
        response = self.client.get(f"/?token={TOKEN}")
        assert response.status_code == 200, response.text
        return csrf_of(response.text)

    def audit_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.settings.audit_log_path.read_text().splitlines()]

    def post(self, path: str, data: dict[str, str], origin: str | None = ORIGIN) -> httpx.Response:
        headers = {"Origin": origin} if origin else {}
        return self.client.post(path, data=data, headers=headers, follow_redirects=False)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def fill_ledger(site: Site, folder: Path, seed: int) -> None:
    """Three studies of the NM factory through the ledger API: ``receiving``; ``failed`` (its job failed);
    ``dead`` (its job reported, its one result dead-lettered at the destination ``pacs``)."""
    ledger = site.ledger
    for offset, role in enumerate(("receiving", "failed", "dead")):
        study = write_nm_study(folder / role, 2, seed + 10 * offset)
        record_instances(ledger, study.paths)
        site.studies[role] = study.study_uid
    failed = site.studies["failed"]
    ledger.studies.complete_manually(failed, pipeline="flowtest_nm")
    ledger.studies.transition(failed, "processing", "run 1", expected_from=("complete",))
    job = ledger.jobs.create(failed, "flowtest_nm")
    ledger.jobs.transition(job.id, "running")
    ledger.jobs.transition(job.id, "failed", error="ValueError: no LV found")
    ledger.studies.transition(failed, "failed", "job failed")
    site.jobs["failed"] = job.id

    dead = site.studies["dead"]
    ledger.studies.complete_manually(dead, pipeline="flowtest_nm")
    ledger.studies.transition(dead, "processing", "run 1", expected_from=("complete",))
    job = ledger.jobs.create(dead, "flowtest_nm")
    ledger.jobs.transition(job.id, "running")
    output = folder / "out.dcm"
    output.write_bytes(b"")
    ledger.outputs.record(job.id, "flowtest_nm", OutputMeta(f"{dead}.77", dead, f"{dead}.7", "1.2.840.10008.5.1.4.1.1.7",
                                                             str(output)))
    ledger.jobs.transition(job.id, "reported")
    (send,) = ledger.sends.create(f"{dead}.77", ["pacs"])
    ledger.sends.record_attempt(send.id, "dead_letter", status=0xA900, error="destination answered 0xA900 (refused)")
    ledger.jobs.transition(job.id, "dead", "results dead-lettered")
    ledger.studies.transition(dead, "failed", "results dead-lettered")
    site.jobs["dead"] = job.id
    # a UPS work item whose attributes name the patient (as a requester's N-CREATE does), with its performer's lock
    ledger.workitems.create(f"{dead}.900", state="IN PROGRESS", reason="claimed", role="performer", label="Cardiac SPECT",
                            study_uid=dead, transaction_uid=TRANSACTION_UID, progress=40.0, performer_ae="CARDIONODE",
                            attributes={"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID,
                                        "PatientBirthDate": PATIENT_BIRTH_DATE})


def make_site(tmp_path: Path, seed: int, **web: Any) -> Site:
    """A site on ``tmp_path`` with ``[web]`` settings ``web`` (the token is :data:`TOKEN` unless given)."""
    web = {"token": TOKEN, **web}
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "var", pipeline_modules=[FLOWTEST_PIPELINE_MODULE],
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}],
                          completeness={"default": {"quiet_period_s": 120.0, "force_deadline_s": 600.0,
                                                    "force_action": "process", "settle_s": 60.0}},
                          broker_url="redis://:s3cr3t-broker@127.0.0.1:6399/0", web=web)
    settings = load_settings(config)
    registry.load_modules(settings.pipeline_modules)
    ledger = Ledger.from_settings(settings)
    audit = AuditLog(settings.audit_log_path, durable=False)
    woken: list[int] = []
    context = WebContext(settings, ledger, StandaloneProbe(settings, ledger), audit=audit,
                         on_change=lambda: woken.append(1))
    site = Site(settings, ledger, audit, TestClient(create_app(context), base_url=ORIGIN), woken=woken)
    fill_ledger(site, tmp_path / "studies", seed)
    return site


@pytest.fixture
def site(tmp_path: Path, seed: int) -> Iterator[Site]:
    made = make_site(tmp_path, seed)
    yield made
    made.client.close()
    made.audit.close()
    made.ledger.close()


def every_page(site: Site) -> list[str]:
    """Every page path of the filled site: the lists, each study's page, and the list filters."""
    return [*PAGES, *(f"/studies/{uid}" for uid in site.studies.values()), "/studies?state=failed", "/sends?state=dead_letter",
            "/jobs?state=failed&page=1"]


def test_without_a_session_every_page_is_401_and_api_paths_ask_for_the_header(site: Site) -> None:
    for path in [*every_page(site), "/results/1.2.3/frames/1.png", "/results/1.2.3.pdf", "/login?token=nope"]:
        response = site.client.get(path, follow_redirects=False)
        assert response.status_code == 401, (path, response.status_code)
        assert 'name="token"' in response.text, path  # the login form
        assert "no LV found" not in response.text and "flowtest_nm" not in response.text, path  # nothing of the ledger
    for path in ("/jobs/1/retry", "/jobs/1/discard", f"/studies/{site.studies['receiving']}/complete", "/identifiers"):
        assert site.post(path, {"csrf": "x"}).status_code == 401, path
    assert site.client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401  # pages need the cookie
    metrics = site.client.get("/metrics")
    assert metrics.status_code == 401 and "Bearer" in metrics.headers["www-authenticate"]
    stow = site.client.post("/dicom-web/studies", content=b"x", headers={"Content-Type": "multipart/related; type=\"application/dicom\""})
    assert stow.status_code == 401 and "Basic" in stow.headers["www-authenticate"]
    assert site.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert site.client.get("/metrics", auth=("anyone", TOKEN)).status_code == 200  # Basic, the token as password
    assert site.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert site.client.get("/healthz").status_code == 200
    assert site.client.get("/readyz").status_code in (200, 503)


def test_the_token_becomes_a_session_cookie(site: Site) -> None:
    response = site.client.get(f"/studies?state=failed&token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/studies?state=failed"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags and "secure" not in flags, flags
    assert site.client.get("/studies").status_code == 200
    assert site.client.get("/metrics").status_code == 200  # an operator's session may open the metrics too

    # the login form; over https the cookie is Secure
    https = TestClient(site.client.app, base_url="https://node.example:8443")
    refused = https.post("/login", data={"token": "wrong", "next": "/jobs"}, headers={"Origin": "https://node.example:8443"})
    assert refused.status_code == 401 and "not the access token of this node" in refused.text
    foreign = https.post("/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert foreign.status_code == 403 and SESSION_COOKIE not in foreign.headers.get("set-cookie", "")
    signed = https.post("/login", data={"token": TOKEN, "next": "/jobs"}, headers={"Origin": "https://node.example:8443"},
                        follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/jobs"
    assert "secure" in {p.strip().lower() for p in signed.headers["set-cookie"].split(";")}
    assert https.get("/jobs").status_code == 200
    other = https.post("/login", data={"token": TOKEN, "next": "https://evil.example/"},
                       headers={"Origin": "https://node.example:8443"}, follow_redirects=False)
    assert other.headers["location"] == "/"  # never sent to another site

    # a cookie signed with another token (or edited) is no session
    other_site = TestClient(create_app(WebContext(site.settings, site.ledger, StandaloneProbe(site.settings, site.ledger)),
                                       token="another-token"), base_url=ORIGIN)
    other_site.cookies.set(SESSION_COOKIE, site.client.cookies[SESSION_COOKIE])
    assert other_site.get("/").status_code == 401
    value = site.client.cookies[SESSION_COOKIE]
    for forged in (value[:-2] + ("xx" if not value.endswith("xx") else "yy"), value.split(".")[0] + ".0.0"):
        tampered = TestClient(site.client.app, base_url=ORIGIN)
        tampered.cookies.set(SESSION_COOKIE, forged)
        assert tampered.get("/").status_code == 401, forged

    events = [e["event"] for e in site.audit_events()]
    assert events.count("web.login") == 3 and events.count("web.login_failed") == 1, events
    assert TOKEN not in site.settings.audit_log_path.read_text()


def test_every_page_carries_the_security_headers_and_each_script_the_nonce(site: Site) -> None:
    site.sign_in()
    for path in [*every_page(site), "/login", "/no-such-page"]:
        response = site.client.get(path)
        assert response.status_code in (200, 303, 404), (path, response.status_code)
        policy = response.headers["content-security-policy"]
        nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]{16,})'", policy)
        assert nonce, policy
        for directive in ("default-src 'none'", f"style-src 'self' 'nonce-{nonce.group(1)}'", "img-src 'self' data:",
                          "form-action 'self'", "frame-ancestors 'none'"):
            assert directive in policy, (path, policy)
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"  # no-referrer would make forms send Origin: null
        assert response.headers["cache-control"] == "no-store"
        if response.headers["content-type"].startswith("text/html"):
            scripts = re.findall(r"<script\b[^>]*>", response.text)
            assert scripts and all(f'nonce="{nonce.group(1)}"' in tag for tag in scripts), (path, scripts)
            assert not re.search(r"<style(?![^>]*nonce=)", response.text), path
            assert not re.search(r"\sstyle\s*=", response.text), path  # no inline style attribute (CSP would drop it)
            assert not re.search(r"\son[a-z]+\s*=", response.text), path  # no inline event handler
    second = site.client.get("/").headers["content-security-policy"]
    assert second != site.client.get("/").headers["content-security-policy"]  # a nonce per request
    static = site.client.get("/static/app.css")
    assert static.status_code == 200 and "no-store" not in static.headers.get("cache-control", "")


def test_the_configuration_page_hides_secrets_and_names_the_models(tmp_path: Path, seed: int) -> None:
    site = make_site(tmp_path, seed, token="web-s3cr3t-token")
    try:
        site.client.get("/?token=web-s3cr3t-token")
        page = site.client.get("/config").text
    finally:
        site.audit.close()
        site.ledger.close()
    assert "web-s3cr3t-token" not in page and "s3cr3t-broker" not in page, "a secret is on the configuration page"
    assert "redis://:***@127.0.0.1:6399/0" in page
    assert site.settings.effective_device_uid() in page
    for bundle in ("cad_polar", "lv_segmentation"):
        metadata = json.loads((Path(__file__).parents[2] / "models" / bundle / "configs" / "metadata.json").read_text())
        assert re.search(rf"<td>{bundle}</td><td>{re.escape(metadata['version'])}</td>", page), bundle


def test_no_page_shows_a_patient_identifier_unless_the_operator_turns_them_on(tmp_path: Path, seed: int) -> None:
    hidden = make_site(tmp_path / "default", seed)
    try:
        csrf = hidden.sign_in()
        for path in every_page(hidden):
            text = hidden.client.get(path).text
            assert not [w for w in PATIENT_WORDS if w in text], path
            assert TRANSACTION_UID not in text, path
        workitems = hidden.client.get("/workitems?state=IN%20PROGRESS").text
        assert "Cardiac SPECT" in workitems and "40 %" in workitems
        refused = hidden.post("/identifiers", {"csrf": csrf, "show": "1", "next": "/studies"})
        assert refused.status_code == 303
        assert not [w for w in PATIENT_WORDS if w in hidden.client.get("/studies").text]
        assert "Show patient identifiers" not in hidden.client.get("/").text
    finally:
        hidden.audit.close()
        hidden.ledger.close()

    shown = make_site(tmp_path / "allowed", seed + 1, show_identifiers=True)
    try:
        csrf = shown.sign_in()
        assert not [w for w in PATIENT_WORDS if w in shown.client.get("/studies").text], "shown before the switch"
        assert shown.post("/identifiers", {"csrf": csrf, "show": "1", "next": "/studies"}).status_code == 303
        studies = shown.client.get("/studies").text
        study = shown.client.get(f"/studies/{shown.studies['failed']}").text
        for text in (studies, study):
            assert PATIENT_NAME in text and PATIENT_ID in text and PATIENT_BIRTH_DATE in text
        assert shown.post("/identifiers", {"csrf": csrf, "show": "0", "next": "/"}).status_code == 303
        assert PATIENT_ID not in shown.client.get("/studies").text
        events = [e["event"] for e in shown.audit_events()]
        assert events[-2:] == ["web.identifiers_shown", "web.identifiers_hidden"], events
        assert not [w for w in PATIENT_WORDS if w in shown.settings.audit_log_path.read_text()]
    finally:
        shown.audit.close()
        shown.ledger.close()


def test_the_studies_page_says_which_completeness_rule_fires_next_by_the_nodes_own_rule(site: Site) -> None:
    site.sign_in()
    receiving = site.ledger.studies.get(site.studies["receiving"])
    assert receiving is not None
    now = receiving.last_received_at + timedelta(seconds=1)
    outlook = completeness_outlook(site.ledger, site.settings, receiving, now)
    summary = site.ledger.studies.summary(receiving.study_uid)
    routed, _ = registry.route(summary)
    assert routed is not None and outlook.pipeline == routed.name
    assert outlook.series_received == 1 and outlook.series_expected is not None and outlook.series_matched == 1
    if outlook.series_matched == outlook.series_expected:  # all there: the expected-series rule after the settle time
        assert (outlook.next_rule, outlook.next_at) == ("expected_series", receiving.last_received_at + timedelta(seconds=60))
    else:  # some missing: the quiet period
        assert (outlook.next_rule, outlook.next_at) == ("quiet_period", receiving.last_received_at + timedelta(seconds=120))
    assert outlook.next_action == "complete"

    def rule_for(name: str) -> Rule:
        return Rule.from_setting(site.settings.completeness_for(name))

    first, last = receiving.first_received_at, receiving.last_received_at
    assert outlook.next_at is not None
    assert decide(summary, first, last, outlook.next_at - timedelta(milliseconds=1), rule_for).action == "wait"
    assert decide(summary, first, last, outlook.next_at, rule_for).rule == outlook.next_rule

    decided = completeness_outlook(site.ledger, site.settings, site.ledger.studies.get(site.studies["failed"]))  # type: ignore[arg-type]
    assert decided.decided_rule == "manual" and decided.next_at is None
    page = site.client.get("/studies?state=receiving").text
    assert str(outlook.next_rule).replace("_", " ") in page and f"{outlook.next_at:%Y-%m-%d %H:%M:%S}" in page
    assert "decided by <strong>manual</strong>" in site.client.get("/studies?state=failed").text


def test_the_list_pages_are_paged(site: Site, tmp_path: Path) -> None:
    site.sign_in()
    for n in range(117):
        site.ledger.instances.record(_meta(f"2.25.{n}", f"2.25.{n}.1", f"2.25.{n}.1.1"))
    first = site.client.get("/studies").text
    assert first.count('class="key"') == 50 and "studies 1–50 of 120" in first
    last = site.client.get("/studies?page=3").text
    assert last.count('class="key"') == 20 and "studies 101–120 of 120" in last and "older →" not in last
    assert site.client.get("/studies?page=99").status_code == 200
    failed = site.client.get("/studies?state=failed").text
    assert failed.count('class="key"') == 2 and "studies 1–2 of 2" in failed
    assert site.client.get("/studies?state=nonsense&page=x").status_code == 200


def _meta(sop: str, study: str, series: str) -> Any:
    from node.ledger import InstanceMeta

    return InstanceMeta(sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.20", study_uid=study, series_uid=series,
                        path="", size_bytes=0, routing={"modality": "OT"}, received_at=utcnow())


@pytest.mark.slow
@pytest.mark.network
def test_serve_starts_the_web_page_with_a_token_file_of_its_own(tmp_path: Path) -> None:
    port, web_port = free_port(), free_port()
    config = write_config(tmp_path / "node.toml", **serve_settings(tmp_path / "data", port, [], workers=[],
                                                                   web={"port": web_port}))
    with NodeProcess(config, port, tmp_path / "node.out", mode="serve"):
        token_file = tmp_path / "data" / "web" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert len(token) >= 40
        base = f"http://127.0.0.1:{web_port}"
        with httpx.Client(base_url=base, timeout=20) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/").status_code == 401
            page = client.get(f"/?token={token}", follow_redirects=True)
            assert page.status_code == 200 and "CARDIONODE" in page.text and "Research use only" in page.text
            assert "listener" in page.text and "up" in page.text
        log = "".join(p.read_text() for p in (tmp_path / "data" / "logs").glob("*.log"))
        assert str(token_file) in log and token not in log
        # a second node wanting the same web port is refused in one line
        taken = write_config(tmp_path / "other.toml", **serve_settings(tmp_path / "other", free_port(), [], workers=[],
                                                                        web={"port": web_port}))
        import subprocess

        from tests.support import PYTHON
        from tests.support.node import node_env

        done = subprocess.run([PYTHON, "-m", "node.cli", "--config", str(taken), "serve"], env=node_env(),
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cardionode serve: web page: cannot listen on 127.0.0.1:{web_port}: the port is already in use by another "
        f"program (`ss -ltnp 'sport = :{web_port}'` shows which); stop it, or set another port; "
        "set [web] port, or [web] enabled = false"], done.stderr


def test_the_web_port_of_each_test_node_is_its_own() -> None:
    """Tests start many nodes: none may take the default web port 8080."""
    a, b = serve_settings(Path("/x"), 1, []), serve_settings(Path("/y"), 2, [])
    assert a["web"]["port"] != 8080 and a["web"]["port"] != b["web"]["port"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", a["web"]["port"]))  # free when handed out


def test_the_studies_page_says_whether_the_worklist_knew_each_study(site: Site) -> None:
    site.sign_in()
    assert "<th>worklist</th>" not in site.client.get("/studies").text  # no worklist configured, none asked
    site.ledger.worklist.record(site.studies["receiving"], "found", worklist="ris", reason="found by accession",
                                matched_by="accession", pipeline="spect_mpi")
    site.ledger.worklist.record(site.studies["failed"], "down", worklist="ris", reason="no answer",
                                error="association rejected")
    page = site.client.get("/studies").text
    assert "<th>worklist</th>" in page
    rows = {uid: re.search(rf'{uid}</div></td>.*?</tr>', page, re.S) for uid in site.studies.values()}
    assert all(rows.values()), rows
    assert ">found</span>" in rows[site.studies["receiving"]].group(0)  # type: ignore[union-attr]
    assert ">no answer</span>" in rows[site.studies["failed"]].group(0)  # type: ignore[union-attr]
    assert "not asked" in rows[site.studies["dead"]].group(0)  # type: ignore[union-attr]
    study = site.client.get(f"/studies/{site.studies['receiving']}").text
    assert ">found</span>" in study and "matched by accession" in study


@pytest.mark.slow
@pytest.mark.network
def test_cardionode_web_runs_the_page_alone_on_the_ledger(tmp_path: Path, seed: int) -> None:
    import signal
    import subprocess

    from tests.support import PYTHON
    from tests.support.node import node_env
    from tests.support.ports import wait_for_port

    site = make_site(tmp_path, seed, port=free_port(), token=None)  # the token file is made by `cardionode web`
    site.audit.close()
    site.ledger.close()
    web_port = site.settings.web.port
    log = (tmp_path / "web.out").open("wb")
    process = subprocess.Popen([PYTHON, "-m", "node.cli", "--config", str(tmp_path / "node.toml"), "web"], env=node_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(web_port, 60, "cardionode web", process=process)
        token = site.settings.web_token_path.read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=20) as client:
            assert client.get("/studies").status_code == 401
            studies = client.get(f"/studies?token={token}", follow_redirects=True)
            assert studies.status_code == 200 and site.studies["failed"] in studies.text
            overview = client.get("/").text
            assert "no node runs with" in overview  # the standalone probe: no node holds the lock
            csrf = csrf_of(overview)
            done = client.post(f"/jobs/{site.jobs['failed']}/retry", data={"csrf": csrf},
                               headers={"Origin": f"http://127.0.0.1:{web_port}"}, follow_redirects=True)
            assert done.status_code == 200 and "job 1 is now queued" in done.text
            assert client.post("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 503
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "web.out").read_text()[-3000:]
    ledger = Ledger.from_settings(site.settings)
    try:
        assert ledger.jobs.get(site.jobs["failed"]).state == "queued"  # type: ignore[union-attr]
    finally:
        ledger.close()
    audit = [json.loads(line) for line in site.settings.audit_log_path.read_text().splitlines()]
    assert [e["actor"] for e in audit if e["event"] == "admin.retry"] == ["web"]


def test_the_overview_folds_runs_of_the_same_change(site: Site, tmp_path: Path) -> None:
    """Nineteen results dead-lettered one after the other are one line of the overview, not its whole list."""
    site.sign_in()
    dead = site.studies["dead"]
    output = tmp_path / "more.dcm"
    output.write_bytes(b"")
    sends = []
    for n in range(5):
        site.ledger.outputs.record(site.jobs["dead"], "flowtest_nm", OutputMeta(f"{dead}.8{n}", dead, f"{dead}.7",
                                                                                "1.2.840.10008.5.1.4.1.1.88.34", str(output)))
        sends += site.ledger.sends.create(f"{dead}.8{n}", ["pacs"])
    for send in sends:
        site.ledger.sends.record_attempt(send.id, "dead_letter", status=0xA900, error="destination answered 0xA900")
    page = site.client.get("/").text
    first, last = sends[0].id, sends[-1].id
    assert f"sends {first}–{last} <span class=\"muted\">(×5)</span>" in page
    assert page.count("→ <span class=\"state s-dead_letter\">") == 1 + 1  # the five, and the first test send's own
    assert "SR <span" in site.client.get("/sends").text  # the kind of object, short
