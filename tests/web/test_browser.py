"""The operator web page in a real browser (issue 20): Debian's Chromium driven by Playwright.

One ``cardionode serve`` with the shipped ``spect_mpi`` pipeline and its models, its web app on a
free loopback port, and one destination (a Storage SCP in this process, :mod:`tests.support.destination`)
that refuses every result for good (0xA900) until the test lets it accept. Two studies go in with
dcmtk ``storescu``:

* a synthetic SPECT MPI study (stress and rest, gated and summed), processed by the real pipeline:
  its results (SR, bull's-eye Secondary Captures, PDF) are all dead-lettered at the destination;
* the rest series only of another one: it stays ``receiving`` (the quiet period is an hour).

Then, in Chromium: without the token every page answers 401; the token logs in (a session cookie);
the overview, studies, jobs, sends, configuration and audit pages render; the processed study shows
its bull's-eye images (``img`` elements that loaded: ``naturalWidth`` > 0) and the SR's headline
numbers (SSS, SRS, SDS, LVEF, printed by the one display rule :func:`node.results.tables.format_value`);
forged POSTs (from the page without the CSRF token; through Playwright's request API with a foreign
``Origin``) are refused with 403 and change nothing; **Retry** sends the dead letters again (the
destination now accepts: the job ends ``sent``, on the page and in the ledger); **Complete** moves
the receiving study on (rule ``manual``). Every action is in the audit log. Every page is kept as a
screenshot under ``test-artifacts/web/browser/`` (or ``$CARDIONODE_TEST_ARTIFACTS/web/browser/``).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

from node.config import Settings, load_settings
from node.ledger import Ledger
from node.results.tables import format_value
from node.results.templates import load_templates
from node.synth.spect import phantom as ph
from node.synth.spect.demo import demo_spec
from node.synth.spect.study import write_study
from tests.support.browser import BrowserSession, chromium
from tests.support.config import serve_settings, write_config
from tests.support.destination import Destination
from tests.support.dicom_clients import storescu
from tests.support.node import ServeProcess
from tests.support.ports import free_port, wait_for, wait_for_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: the pages of the web app (path, name of its screenshot); the study page is added once its UID is known
LIST_PAGES = (("/", "overview"), ("/studies", "studies"), ("/jobs", "jobs"), ("/sends", "sends"),
              ("/workitems", "workitems"), ("/config", "config"), ("/audit", "audit"))
#: the SR's headline quantities the study page must show (keys of dicom_templates/concepts.toml)
HEADLINE = ("sss", "srs", "sds", "lvef")
#: the concept of the imaging state (stress / rest) of a measurement group
STATE_CONCEPT = ("IMGSTATE", "99CARDIONODE")


@dataclass
class WebNode:
    """The running node, its settings, the destination and the two studies."""

    node: ServeProcess
    settings: Settings
    config: Path
    web_url: str
    token: str
    destination: Destination
    spect_uid: str  # processed, results dead-lettered
    partial_uid: str  # rest series only: receiving

    def ledger(self) -> Ledger:
        return Ledger.from_settings(self.settings)

    def audit(self) -> list[dict[str, Any]]:
        path = self.settings.audit_log_path
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _spect_files(folder: Path, seed: int, defect: str) -> tuple[str, list[Path]]:
    rng = np.random.default_rng(seed)
    study = ph.make_study(demo_spec(defect, "tc99m_sestamibi"), rng, orientation="transaxial")
    files = write_study(study, folder, seed=seed % 10000)
    return files.study_uid, [p for p in files.paths if p.suffix == ".dcm"]


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("web_browser")
    seed = secrets.randbelow(2**31)
    print(f"random seed: {seed}")
    token = secrets.token_urlsafe(24)
    node_port, web_port = free_port(), free_port()
    destination = Destination("ARCHIVE", refusing=True).start()
    settings = serve_settings(
        tmp / "data", node_port, [destination.as_setting("archive")],
        pipeline_modules=[],  # the shipped pipelines only: spect_mpi with its models
        completeness={"default": {"quiet_period_s": 3600.0, "force_deadline_s": 7200.0, "settle_s": 1.0}},
        send_retry={"initial_s": 1.0, "max_s": 2.0, "max_attempts": 2},
        web={"port": web_port, "token": token},
    )
    config = write_config(tmp / "node.toml", **settings)
    node = ServeProcess(config, node_port, tmp / "node.log")
    try:
        node.start()
        wait_for_port(web_port, 60, "the web app", node.process)
        spect_uid, spect_files = _spect_files(tmp / "spect", seed, "LAD")
        storescu(node_port, spect_files, check=True)
        partial_uid, partial_files = _spect_files(tmp / "partial", seed + 1, "none")
        storescu(node_port, [p for p in partial_files if p.name.startswith("REST")], check=True)
        loaded = load_settings(config)
        ledger = Ledger.from_settings(loaded)
        try:
            def dead_job() -> Any:
                jobs = ledger.jobs.find(study_uid=spect_uid)
                failed = [j for j in jobs if j.state in ("failed", "discarded")]
                assert not failed, f"seed {seed}: the SPECT job failed: {failed[0].last_error}; {node.log_path}"
                return [j for j in jobs if j.state == "dead"]

            wait_for(dead_job, 300, f"the SPECT job's results dead-lettered (seed {seed}; log {node.log_path})", 1.0)
            study = ledger.studies.get(partial_uid)
            assert study is not None and study.state == "receiving", study
        finally:
            ledger.close()
        yield WebNode(node, loaded, config, f"http://127.0.0.1:{web_port}", token, destination, spect_uid, partial_uid)
    finally:
        node.stop()
        destination.stop()


@pytest.fixture(scope="module")
def browser(web_node: WebNode) -> Iterator[BrowserSession]:
    with chromium(web_node.web_url, "browser") as session:
        yield session


# --------------------------------------------------------------------------- helpers
def _login(session: BrowserSession, token: str) -> None:
    """Log in as an operator does: the login page, the token, the button."""
    session.goto("/login")
    session.page.fill("input[name=token]", token)
    with session.page.expect_navigation():
        session.page.get_by_role("button", name="Sign in").click()
    session.page.wait_for_load_state("networkidle")


def _csrf_token(session: BrowserSession) -> str:
    return str(session.page.evaluate(
        "() => (document.querySelector('input[name=csrf]') || {}).value"
        " || (document.querySelector('meta[name=csrf-token]') || {}).content || ''"))


def _row(session: BrowserSession, number: int) -> Any:
    """The row of job or send ``number`` in the jobs or sends table (its first cell is that number)."""
    return session.page.locator("tr").filter(has=session.page.locator("td:first-child", has_text=re.compile(rf"^{number}$")))


def _assert_no_script_or_policy_errors(session: BrowserSession) -> None:
    """The pages keep to their own Content-Security-Policy (no inline script or style without the nonce) and no
    script failed."""
    refused = [e for e in session.console_errors if "Content Security Policy" in e or e.startswith("page error")]
    assert not refused, refused


def _sr_headline(sr: pydicom.Dataset) -> list[tuple[str, str, str]]:
    """(short label, state meaning, value as the pages print it) of every headline NUM of the SR."""
    templates = load_templates()
    wanted = {}
    for key in HEADLINE:
        q = templates.quantity(key, "spect_mpi")
        wanted[(q.code.value, q.code.scheme)] = q
    found: list[tuple[str, str, str]] = []

    def walk(items: Any, state: str) -> None:
        for item in items:
            children = item.get("ContentSequence", [])
            for child in children:
                name = child.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in child else None
                if name is not None and (name.CodeValue, name.CodingSchemeDesignator) == STATE_CONCEPT:
                    state = str(child.ConceptCodeSequence[0].CodeMeaning)
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "NUM" and name is not None and (name.CodeValue, name.CodingSchemeDesignator) in wanted:
                q = wanted[(name.CodeValue, name.CodingSchemeDesignator)]
                value = float(item.MeasuredValueSequence[0].NumericValue)
                found.append((q.short_label, state, format_value(value, q.decimals)))
            walk(children, state)

    walk(sr.ContentSequence, "")
    return found


def _shown_together(session: BrowserSession, label: str, value: str) -> bool:
    """Whether one small element of the page (a table row, list item, ...) shows ``label`` and ``value`` as words."""
    return bool(session.page.evaluate(
        """([label, value]) => {
             const word = (s) => new RegExp('(^|[^\\\\w.])' + s.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&') + '($|[^\\\\w.])');
             return Array.from(document.querySelectorAll('tr, li, dl > div, p, figcaption, .result, .value'))
               .some(e => { const t = e.innerText || ''; return t.length < 300 && word(label).test(t) && word(value).test(t); });
           }""",
        [label, value],
    ))


# --------------------------------------------------------------------------- the tests, in order
def test_without_the_token_every_page_is_401(web_node: WebNode, browser: BrowserSession) -> None:
    ledger = web_node.ledger()
    try:
        outputs = [o for j in ledger.jobs.find(study_uid=web_node.spect_uid) for o in ledger.outputs.of_job(j.id)]
    finally:
        ledger.close()
    image = next(o for o in outputs if o.sop_class_uid == SC_CLASS)
    paths = [p for p, _ in LIST_PAGES] + [f"/studies/{web_node.spect_uid}", f"/results/{image.sop_instance_uid}/frames/1.png"]
    for path in paths:
        response = browser.goto(path)
        assert response is not None and response.status == 401, f"{path}: {response and response.status}"
    browser.goto("/")
    browser.shot("unauthenticated")
    # the same without a browser, and with a wrong token; /metrics too
    for path in [*paths, "/metrics"]:
        assert requests.get(web_node.web_url + path, timeout=10).status_code == 401, path
        wrong = requests.get(web_node.web_url + path, headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert wrong.status_code == 401, path


def test_login_with_the_token_and_every_list_page(web_node: WebNode, browser: BrowserSession) -> None:
    _login(browser, web_node.token)
    browser.failed_responses.clear()  # the 401s of the test before
    cookies = browser.context.cookies()
    assert cookies and all(c["httpOnly"] for c in cookies), cookies
    assert not any(web_node.token in c["value"] for c in cookies), "the token itself must not be the cookie"
    for path, name in LIST_PAGES:
        response = browser.goto(path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
        assert not browser.broken_images(), f"{path}: images that did not load: {browser.broken_images()}"
        browser.shot(name)
    # the studies page lists both studies with their states
    browser.goto("/studies")
    text = browser.text()
    assert "receiving" in text and ("done" in text or "failed" in text), text[:2000]
    assert not browser.failed_responses, browser.failed_responses  # no page, style sheet, script or image failed
    _assert_no_script_or_policy_errors(browser)


def test_processed_spect_study_shows_bulls_eyes_and_the_sr_numbers(web_node: WebNode, browser: BrowserSession) -> None:
    ledger = web_node.ledger()
    try:
        jobs = ledger.jobs.find(study_uid=web_node.spect_uid)
        outputs = {o.sop_instance_uid: o for j in jobs for o in ledger.outputs.of_job(j.id)}
    finally:
        ledger.close()
    srs = [o for o in outputs.values() if o.sop_class_uid.startswith(SR_PREFIX)]
    assert len(srs) == 1, outputs
    headline = _sr_headline(pydicom.dcmread(srs[0].path))
    assert {label for label, _, _ in headline} >= {"SSS", "SRS", "SDS", "LVEF"}, headline

    response = browser.goto(f"/studies/{web_node.spect_uid}")
    assert response is not None and response.status == 200
    browser.shot("study_spect")  # scrolls every image into view first: they load lazily
    assert not browser.broken_images(), f"images that did not load: {browser.broken_images()}"
    bulls_eyes = browser.loaded_images("xpath=//h3[starts-with(normalize-space(.), \"Bull\")]/following-sibling::*[1]//img")
    assert len(bulls_eyes) >= 4, f"bull's-eye images loaded on the study page: {bulls_eyes}"
    # each is a frame of one of the job's Secondary Captures, and shows its pixels, unchanged
    shown = {}
    for image in bulls_eyes:
        uid = next((u for u in outputs if u in (image["src"] or "")), None)
        assert uid is not None and outputs[uid].sop_class_uid == SC_CLASS, image
        shown[uid] = image
    uid, image = sorted(shown.items())[0]
    png = browser.context.request.get(browser.url(image["src"]))
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(png.body())).convert("RGB"))
    sc = pydicom.dcmread(outputs[uid].path)
    frames = sc.pixel_array if int(getattr(sc, "NumberOfFrames", 1) or 1) == 1 else sc.pixel_array[0]
    assert pixels.shape == frames.shape and np.array_equal(pixels, frames), f"{image['src']}: not the SC's pixels"
    missing = [(label, state, value) for label, state, value in headline if not _shown_together(browser, label, value)]
    assert not missing, f"SR values not on the study page (label, state, value): {missing}"
    _assert_no_script_or_policy_errors(browser)


def test_forged_posts_are_refused_and_change_nothing(web_node: WebNode, browser: BrowserSession) -> None:
    ledger = web_node.ledger()
    try:
        job = ledger.jobs.find(study_uid=web_node.spect_uid)[0]
        before = (job.state, [(s.id, s.state, s.attempts) for s in ledger.sends.find(job_id=job.id)],
                  ledger.studies.get(web_node.partial_uid).state)  # type: ignore[union-attr]
    finally:
        ledger.close()
    audit_before = len(web_node.audit())
    browser.goto("/jobs")
    token = _csrf_token(browser)
    assert token, "no CSRF token on the jobs page"
    # 1. from the page itself (same origin, session cookie), without the CSRF token
    for path in (f"/jobs/{job.id}/retry", f"/studies/{web_node.partial_uid}/complete"):
        status = browser.page.evaluate(
            "(url) => fetch(url, {method: 'POST', credentials: 'same-origin', body: new URLSearchParams({})})"
            ".then(r => r.status)", browser.url(path))
        assert status == 403, f"{path} without CSRF token: {status}"
    # 2. with the session and the CSRF token, but from a foreign origin
    for path in (f"/jobs/{job.id}/retry", f"/studies/{web_node.partial_uid}/complete"):
        response = browser.context.request.post(browser.url(path), form={"csrf": token},
                                                headers={"Origin": "http://evil.example", "X-CSRF-Token": token})
        assert response.status == 403, f"{path} from a foreign origin: {response.status}"
    ledger = web_node.ledger()
    try:
        job_now = ledger.jobs.get(job.id)
        after = (job_now.state, [(s.id, s.state, s.attempts) for s in ledger.sends.find(job_id=job.id)],  # type: ignore[union-attr]
                 ledger.studies.get(web_node.partial_uid).state)  # type: ignore[union-attr]
    finally:
        ledger.close()
    assert after == before
    assert not [r for r in web_node.audit()[audit_before:] if "retry" in r["event"] or "complete" in r["event"]]


def test_retry_sends_the_dead_letters_again(web_node: WebNode, browser: BrowserSession) -> None:
    ledger = web_node.ledger()
    try:
        job = ledger.jobs.find(study_uid=web_node.spect_uid)[0]
        sends = ledger.sends.find(job_id=job.id)
    finally:
        ledger.close()
    assert job.state == "dead" and sends and all(s.state == "dead_letter" for s in sends), (job.state, sends)
    refused = len(web_node.destination.refused)
    web_node.destination.refusing = False  # the archive accepts from now on
    browser.goto("/sends?state=dead_letter")
    rows = [_row(browser, send.id) for send in sends]
    assert all(re.search(r"dead.letter", row.inner_text()) for row in rows)
    browser.shot("sends_dead_letters")
    button = browser.page.get_by_role("button", name=f"Retry job {job.id}")
    box = button.bounding_box()  # the action is on screen at 1280 px, not scrolled off to the right
    assert box is not None and box["x"] + box["width"] <= browser.page.viewport_size["width"], box  # type: ignore[index]
    with browser.page.expect_navigation():
        browser.page.get_by_role("button", name=f"Retry job {job.id}").click()
    browser.page.wait_for_load_state("networkidle")
    browser.shot("sends_after_retry_click")
    assert "Done" in browser.text(), browser.text()[:1500]

    def sent() -> bool:
        ledger = web_node.ledger()
        try:
            return ledger.jobs.get(job.id).state == "sent"  # type: ignore[union-attr]
        finally:
            ledger.close()

    wait_for(sent, 60, f"job {job.id} sent after the retry")
    assert sorted(web_node.destination.stored) == sorted(s.output_uid for s in sends)
    assert len(web_node.destination.refused) == refused
    browser.goto("/jobs")
    assert re.search(r"\bsent\b", _row(browser, job.id).inner_text())
    browser.goto("/sends")
    browser.shot("sends_all_sent")
    assert not re.search(r"dead.letter", browser.page.locator("table.list tbody").inner_text())
    audit = [r for r in web_node.audit() if "retry" in r["event"]]
    assert audit and audit[-1].get("job_id") == job.id, audit


def test_complete_moves_a_receiving_study_on(web_node: WebNode, browser: BrowserSession) -> None:
    browser.goto("/studies")
    row = browser.page.locator("tr", has=browser.page.locator(f"a[href='/studies/{web_node.partial_uid}']")).first
    assert re.search(r"\breceiving\b", row.inner_text()), row.inner_text()
    browser.goto(f"/studies/{web_node.partial_uid}")
    browser.shot("study_receiving")
    browser.page.once("dialog", lambda dialog: dialog.accept())  # should the page ask first
    with browser.page.expect_navigation():
        browser.page.get_by_role("button", name="Mark complete").click()
    browser.page.wait_for_load_state("networkidle")
    browser.shot("study_after_complete")
    assert "Done" in browser.text(), browser.text()[:1500]
    ledger = web_node.ledger()
    try:
        study = ledger.studies.get(web_node.partial_uid)
    finally:
        ledger.close()
    assert study is not None and study.rule == "manual" and study.state != "receiving", study
    browser.goto("/studies")
    row = browser.page.locator("tr", has=browser.page.locator(f"a[href='/studies/{web_node.partial_uid}']")).first
    assert not re.search(r"\breceiving\b", row.inner_text()), row.inner_text()
    audit = [r for r in web_node.audit() if "complete" in r["event"]]
    assert audit and audit[-1].get("study_uid") == web_node.partial_uid, audit
