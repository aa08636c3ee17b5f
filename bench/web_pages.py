"""Web pages with 1,000 studies in the ledger: how long each list page takes (issue 20).

Fills a fresh SQLite ledger through the ledger's own API (``ledger.instances.record_many``,
``studies.transition``, ``jobs``, ``outputs``, ``sends``) with ``--studies`` studies (1,000 by
default; two NM series of two instances each), most processed and sent, some receiving, failed or
with dead-lettered sends, so every list has rows in every state; the audit log gets
``--audit-lines`` lines. Then it serves the node's web app as ``cardionode web`` does (pipelines
loaded first, :func:`node.web.app.create_app` with the standalone probe) with uvicorn on a free
loopback port in this process, logs in with the token, and times each page over real HTTP: one
cold request (reported apart), then ``--rounds`` rounds:

* server: one ``GET`` with the session cookie, request sent to last byte read (httpx, keep-alive);
* browser: Debian's Chromium (Playwright, the system browser) loading the page, navigation start to
  the ``load`` event (HTML, style sheets, scripts, images of the page);

Reference in the same run: ``/healthz`` (the app's cheapest answer, same middleware) for the
server times, and ``about:blank`` → ``/healthz`` for the browser. Medians, and each page's
median as a ratio to the reference. The target: every list page under 1 s in the browser.

    .venv/bin/python bench/web_pages.py [--studies 1000] [--rounds 7] [--no-browser] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/web_pages.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from node.config import Settings, load_settings
from node.ledger import InstanceMeta, Ledger, OutputMeta, utcnow
from node.uids import deterministic_uid

#: the list pages timed (path, name); the study page of one study is added
PAGES = (("/", "overview"), ("/studies", "studies"), ("/jobs", "jobs"), ("/sends", "sends"),
         ("/workitems", "work items"), ("/audit", "audit"), ("/config", "config"))
REFERENCE = "/healthz"
NM = "1.2.840.10008.5.1.4.1.1.20"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


def fill_ledger(ledger: Ledger, n_studies: int, settings: Settings, audit_lines: int) -> dict[str, int]:
    """``n_studies`` studies with series, jobs, outputs and sends through the ledger API; counts by kind."""
    t0 = utcnow() - timedelta(days=2)
    metas = []
    for i in range(n_studies):
        study = deterministic_uid("bench-web-study", i)
        for s, state in enumerate(("STRESS", "REST")):
            series = deterministic_uid("bench-web-series", i, s)
            for k in range(2):
                metas.append(InstanceMeta(
                    sop_instance_uid=deterministic_uid("bench-web-sop", i, s, k), sop_class_uid=NM, study_uid=study,
                    series_uid=series, path=f"/nonexistent/{i}/{s}/{k}.dcm", size_bytes=1_000_000,
                    routing={"Modality": "NM", "SeriesDescription": f"{state} SA", "ImageType": ["RECON TOMO"]},
                    calling_ae="ORTHANC", received_at=t0 + timedelta(seconds=60 * i + k)))
    for start in range(0, len(metas), 2000):
        ledger.instances.record_many(metas[start:start + 2000])
    counts = {"studies": n_studies, "instances": len(metas), "jobs": 0, "outputs": 0, "sends": 0}
    for i in range(n_studies):
        study = deterministic_uid("bench-web-study", i)
        kind = i % 20
        if kind == 0:  # still receiving
            continue
        ledger.studies.transition(study, "complete", "all required series present", rule="expected_series",
                                  pipeline="spect_mpi")
        ledger.studies.transition(study, "processing", "job queued")
        job = ledger.jobs.create(study, "spect_mpi")
        counts["jobs"] += 1
        ledger.jobs.transition(job.id, "running", "analyse started", task_id=f"task-{i}")
        if kind == 1:  # the step failed
            ledger.jobs.transition(job.id, "failed", "step analyse failed", error="ValueError: no LV found in REST SA")
            ledger.studies.transition(study, "failed", f"job {job.id} failed")
            continue
        ledger.jobs.transition(job.id, "reported", "results in the outbox")
        sends = []
        for n, cls in enumerate((SR, SC, SC)):
            uid = deterministic_uid("bench-web-output", i, n)
            ledger.outputs.record(job.id, "spect_mpi", OutputMeta(uid, study, deterministic_uid("bench-web-out-series", i, n),
                                                                  cls, f"/nonexistent/out/{uid}.dcm", 50_000))
            sends += ledger.sends.create(uid, ["pacs"])
            counts["outputs"] += 1
        counts["sends"] += len(sends)
        dead = kind == 2
        for send in sends:
            if dead:
                ledger.sends.record_attempt(send.id, "dead_letter", status=0xA900, error="refused: out of scope")
            else:
                ledger.sends.record_attempt(send.id, "sent", status=0x0000)
        ledger.jobs.transition(job.id, "dead" if dead else "sent",
                               "3 of 3 sends dead-lettered" if dead else "all results sent")
        ledger.studies.transition(study, "done", "results sent" if not dead else "results dead-lettered")
    from node.dicom.audit import AuditLog

    with AuditLog(settings.audit_log_path, durable=False) as audit:
        for n in range(audit_lines):
            audit.record("association.accepted" if n % 3 else "admin.retry", calling_ae="ORTHANC", job_id=n)
    counts["audit_lines"] = audit_lines
    return counts


@contextmanager
def serve(app: Any, port: int) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1:``port`` in a thread; its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def time_server(client: httpx.Client, paths: list[str], rounds: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds of the first GET of each path (cold: whatever the app loads on first use), then of ``rounds``
    GETs each; pages answering other than 200 fail."""
    out: dict[str, list[float]] = {p: [] for p in paths}
    first: dict[str, float] = {}
    for path in paths:
        t = time.perf_counter()
        response = client.get(path)
        first[path] = time.perf_counter() - t
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    for _ in range(rounds):
        for path in paths:
            t = time.perf_counter()
            response = client.get(path)
            _ = response.content
            out[path].append(time.perf_counter() - t)
    return first, out


def time_browser(base: str, token: str, paths: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds from navigation start to the load event in Chromium for each path (Navigation Timing)."""
    from playwright.sync_api import sync_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    out: dict[str, list[float]] = {p: [] for p in paths}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(f"{base}/?token={token}", wait_until="load")
            for path in paths:  # warm-up
                page.goto(base + path, wait_until="load")
            for _ in range(rounds):
                for path in paths:
                    response = page.goto(base + path, wait_until="load")
                    if response is None or response.status != 200:
                        raise RuntimeError(f"{path} in the browser: {response and response.status}")
                    seconds = page.evaluate(
                        "() => { const n = performance.getEntriesByType('navigation')[0];"
                        " return (n.loadEventEnd - n.startTime) / 1000; }")
                    out[path].append(float(seconds))
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--audit-lines", type=int, default=10_000)
    parser.add_argument("--no-browser", action="store_true", help="server times only")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--reference", default=REFERENCE, help=f"the reference path (default {REFERENCE})")
    args = parser.parse_args(argv)
    reference = args.reference

    from bench.latency import describe_machine
    from node.web.app import create_app
    from node.web.context import WebContext
    from node.web.probes import StandaloneProbe

    machine = describe_machine()
    print(f"machine: {machine}")
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        token = secrets.token_urlsafe(24)
        config = Path(tmp) / "node.toml"
        config.write_text(f'data_dir = "{tmp}/data"\n[web]\ntoken = "{token}"\n', encoding="utf-8")
        settings = load_settings(config)
        ledger = Ledger.from_settings(settings)
        t = time.perf_counter()
        counts = fill_ledger(ledger, args.studies, settings, args.audit_lines)
        print(f"ledger filled in {time.perf_counter() - t:.1f} s: {counts}")
        study = deterministic_uid("bench-web-study", 3)
        paths = [p for p, _ in PAGES] + [f"/studies/{study}"]
        names = {**{p: n for p, n in PAGES}, f"/studies/{study}": "one study", reference: f"reference {reference}"}
        from node.pipelines import registry

        registry.all_pipelines()  # as `cardionode web` does before serving (node.web.server.web_main)
        app = create_app(WebContext(settings, ledger, StandaloneProbe(settings, ledger)))  # as `cardionode web` runs it
        from tests.support.ports import free_port

        with serve(app, free_port()) as base:
            with httpx.Client(base_url=base, timeout=60) as client:
                client.get("/", params={"token": token})  # the session cookie
                first, server = time_server(client, [reference, *paths], args.rounds)
            browser = {} if args.no_browser else time_browser(base, token, [reference, *paths], args.rounds)
        ledger.close()
    ref_s, ref_b = _median(server[reference]), _median(browser.get(reference, []))
    print(f"\n{args.studies} studies, {counts['jobs']} jobs, {counts['sends']} sends, {args.rounds} rounds; medians\n")
    print(f"{'page':<22}{'first (ms)':>11}{'server (ms)':>12}{'x ref':>8}{'Chromium (ms)':>15}{'x ref':>8}")
    rows = []
    for path in [reference, *paths]:
        s, b = _median(server[path]), _median(browser.get(path, []))
        rows.append({"page": names[path], "path": path, "first_ms": 1000 * first[path], "server_ms": 1000 * s,
                     "server_ratio": s / ref_s,
                     "browser_ms": 1000 * b, "browser_ratio": b / ref_b if browser else None})
        print(f"{names[path]:<22}{1000 * first[path]:>11.0f}{1000 * s:>12.1f}{s / ref_s:>8.1f}"
              + (f"{1000 * b:>15.1f}{b / ref_b:>8.1f}" if browser else ""))
    load_end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the end: {load_end}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "load_end": load_end, "counts": counts, "rounds": args.rounds,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
