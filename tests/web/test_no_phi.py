"""No patient name, ID or birth date on any page of the web app in the default configuration (issue 20).

``cardionode serve`` (the shipped ``spect_mpi`` pipeline, its web app with the default ``[web]`` settings
but a free port and a known token) receives a synthetic SPECT MPI study whose patient is the synthetic
patient of :mod:`tests.support.nm` and processes it, so that the study page carries the results view
(SR tables, bull's-eyes, report metadata); its results go to a destination that refuses them for good
with an Error Comment naming the patient (a real PACS may say anything), so the sends are dead letters
with a comment.
Then every page is fetched over HTTP with a logged-in session: the list pages, the study page, the
jobs, sends, configuration and audit pages, the JSON mirrors, ``/metrics`` and the health probes, and
every same-origin link, ``hx-get`` and ``src`` they lead to (two levels). No text answer (HTML, JSON,
plain text, scripts, styles) and no answer's headers may hold the patient's name (the family name alone, any case, covers
the DICOM ``^`` form and the spaced form), the patient ID, or the birth date (``YYYYMMDD`` and
``YYYY-MM-DD``). Binary answers (the PNG of a bull's-eye, the PDF summary) are result objects for the
reader and are not scanned.

So that the test can fail: with ``[web] show_identifiers = true`` (same ledger, node restarted) and the
session's "Show patient identifiers" switch turned on (audited), the patient's name, ID and birth date
are on the study page; before the switch, they are not.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
import pydicom
import pytest
import requests

from node.config import load_settings
from node.ledger import Ledger
from node.synth.spect import phantom as ph
from node.synth.spect.demo import demo_spec
from node.synth.spect.study import write_study
from tests.support.config import serve_settings, write_config
from tests.support.destination import Destination
from tests.support.dicom_clients import storescu
from tests.support.nm import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME
from tests.support.node import ServeProcess
from tests.support.ports import free_port, wait_for, wait_for_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

#: pages fetched whether or not a link leads to them (``{study}``, ``{job}``: the study's and its job's)
PAGES = ("/", "/studies", "/studies/{study}", "/jobs", "/sends", "/workitems", "/config", "/audit", "/metrics", "/healthz",
         "/readyz",
         "/studies?state=done", "/jobs?state=dead", "/sends?state=dead_letter")
#: content types scanned as text
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml", "image/svg")
#: links never followed (they end the session or act)
NOT_FOLLOWED = re.compile(r"/logout|/login", re.I)
#: attributes whose URLs the crawler follows
URL_ATTRIBUTES = ("href", "src", "hx-get", "data-src")


def _identifiers() -> dict[str, re.Pattern[str]]:
    """What must not appear, by name: the family and given names (any case), the ID, the birth date in two forms."""
    family, given = PATIENT_NAME.split("^")[:2]
    birth = f"{PATIENT_BIRTH_DATE[:4]}-{PATIENT_BIRTH_DATE[4:6]}-{PATIENT_BIRTH_DATE[6:]}"
    return {
        "name (DICOM form)": re.compile(re.escape(PATIENT_NAME), re.I),
        "name (spaced form)": re.compile(re.escape(f"{given} {family}") + "|" + re.escape(f"{family} {given}"), re.I),
        "family name": re.compile(re.escape(family), re.I),
        "given name": re.compile(re.escape(given), re.I),
        "patient ID": re.compile(re.escape(PATIENT_ID), re.I),
        "birth date YYYYMMDD": re.compile(PATIENT_BIRTH_DATE),
        "birth date YYYY-MM-DD": re.compile(birth),
    }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value and not value.startswith(("#", "javascript:", "mailto:", "data:")):
                self.urls.append(value)


@dataclass
class Node:
    node: ServeProcess
    tmp: Path
    settings: dict[str, Any]
    web_url: str
    token: str
    study_uid: str
    job_id: int

    def restart(self, **web: Any) -> None:
        """Stop the node, change ``[web]`` settings, start it again on the same data."""
        self.node.stop()
        self.settings["web"] = {**self.settings["web"], **web}
        write_config(self.node.config, **self.settings)
        self.node = ServeProcess(self.node.config, self.node.port, self.tmp / "node-2.log")
        self.node.start()
        wait_for_port(int(self.settings["web"]["port"]), 60, "the web app", self.node.process)


def _login(url: str, token: str) -> requests.Session:
    """A session logged in with the token as a browser does (the login form)."""
    session = requests.Session()
    response = session.post(f"{url}/login", data={"token": token}, headers={"Origin": url}, timeout=30)
    assert response.status_code < 400, f"login: {response.status_code} {response.text[:500]}"
    assert session.get(f"{url}/", timeout=30).status_code == 200, "not logged in after /login"
    return session


def _crawl(session: requests.Session, base: str, start: list[str], depth: int = 2) -> dict[str, requests.Response]:
    """GET ``start`` and every same-origin URL they lead to, ``depth`` levels; answers by URL."""
    seen: dict[str, requests.Response] = {}
    frontier = [urljoin(base + "/", p.lstrip("/")) for p in start]
    origin = urlsplit(base).netloc
    for _ in range(depth + 1):
        following: list[str] = []
        for url in frontier:
            url = url.split("#")[0]
            if url in seen or urlsplit(url).netloc != origin or NOT_FOLLOWED.search(urlsplit(url).path):
                continue
            response = session.get(url, timeout=60)
            seen[url] = response
            if "text/html" in response.headers.get("content-type", ""):
                parser = _Links()
                parser.feed(response.text)
                following += [urljoin(url, u) for u in parser.urls]
        frontier = following
    return seen


def _spect_study_of_the_patient(folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A synthetic SPECT MPI study (stress and rest, gated and summed) of the patient of :mod:`tests.support.nm`."""
    study = ph.make_study(demo_spec("RCA", "tc99m_sestamibi"), np.random.default_rng(seed), orientation="transaxial")
    files = write_study(study, folder, seed=seed % 10000)
    paths = [p for p in files.paths if p.suffix == ".dcm"]
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE
        ds.save_as(path, enforce_file_format=True)
    return files.study_uid, paths


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the module: the study goes through once; the second test restarts it with identifiers allowed."""
    tmp_path = tmp_path_factory.mktemp("web_no_phi")
    seed = secrets.randbelow(2**31)
    print(f"random seed: {seed}")
    token = secrets.token_urlsafe(24)
    node_port, web_port = free_port(), free_port()
    # a PACS that refuses for good and names the patient in its comment
    destination = Destination("ARCHIVE", refusing=True,
                              error_comment=f"cannot store {PATIENT_NAME} {PATIENT_ID} {PATIENT_BIRTH_DATE}").start()
    settings = serve_settings(tmp_path / "data", node_port, [destination.as_setting("archive")],
                              pipeline_modules=[], web={"port": web_port, "token": token})
    config = write_config(tmp_path / "node.toml", **settings)
    process = ServeProcess(config, node_port, tmp_path / "node.log")
    try:
        process.start()
        wait_for_port(web_port, 60, "the web app", process.process)
        study_uid, files = _spect_study_of_the_patient(tmp_path / "study", seed)
        storescu(node_port, files, check=True)
        ledger = Ledger.from_settings(load_settings(config))
        try:
            jobs = wait_for(lambda: [j for j in ledger.jobs.find(study_uid=study_uid) if j.state == "dead"], 300,
                            f"the study's results dead-lettered (seed {seed}; log {tmp_path / 'node.log'})", 1.0)
        finally:
            ledger.close()
        running = Node(process, tmp_path, settings, f"http://127.0.0.1:{web_port}", token, study_uid, jobs[0].id)
        yield running
        process = running.node
    finally:
        process.stop()
        destination.stop()


def _scan(answers: dict[str, requests.Response]) -> list[str]:
    """Every identifier found in a text answer or in any answer's headers, with its place."""
    found = []
    for url, response in answers.items():
        kind = response.headers.get("content-type", "")
        texts = {"headers": "\n".join(f"{k}: {v}" for k, v in response.headers.items())}
        if any(t in kind for t in TEXT_TYPES):
            texts["body"] = response.text
        for part, text in texts.items():
            for what, pattern in _identifiers().items():
                match = pattern.search(text)
                if match:
                    start = max(0, match.start() - 80)
                    found.append(f"{what} in the {part} of {url} ({kind}): ...{text[start:match.end() + 80]!r}...")
    return found


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_no_patient_identifier_on_any_page(node: Node) -> None:
    session = _login(node.web_url, node.token)
    start = [p.format(study=node.study_uid, job=node.job_id) for p in PAGES]
    answers = _crawl(session, node.web_url, start)
    failed = {u: r.status_code for u, r in answers.items() if r.status_code >= 500}
    assert not failed, f"pages that failed: {failed}"
    pages = {u for u, r in answers.items() if r.status_code == 200 and "text/html" in r.headers.get("content-type", "")}
    study_pages = [u for u in pages if urlsplit(u).path == f"/studies/{node.study_uid}"]
    assert study_pages and len(pages) >= 7, f"too few pages reached: {sorted(pages)}"
    print(f"scanned {len(answers)} answers: {sorted(answers)}")
    leaks = _scan(answers)
    assert not leaks, "\n".join(leaks)


def test_the_study_page_names_the_patient_when_identifiers_are_shown(node: Node) -> None:
    node.restart(show_identifiers=True)
    session = _login(node.web_url, node.token)
    study_page = f"{node.web_url}/studies/{node.study_uid}"
    before = session.get(study_page, timeout=60)
    assert before.status_code == 200 and not _scan({study_page: before}), "identifiers shown before the switch"
    switched = session.post(f"{node.web_url}/identifiers", data={"csrf": _csrf(before.text), "show": "1"},
                            headers={"Origin": node.web_url}, timeout=60)
    assert switched.status_code == 200, switched.status_code
    page = session.get(study_page, timeout=60)
    assert page.status_code == 200
    leaks = "\n".join(_scan({study_page: page}))
    family = PATIENT_NAME.split("^")[0]
    assert family in leaks and PATIENT_ID in leaks, f"show_identifiers is on and switched on, but the study page has: {leaks}"
    settings = load_settings(node.node.config)
    audit = settings.audit_log_path.read_text()
    assert "web.identifiers_shown" in audit
    # the switch is not a reason to leak where it does not apply: /metrics and the probes stay clean
    answers = {u: session.get(node.web_url + u, timeout=60) for u in ("/metrics", "/healthz", "/readyz")}
    assert not _scan(answers)
