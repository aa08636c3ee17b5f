"""``/metrics`` (node.web.metrics): Prometheus naming rules, the metrics reference, and counters that move.

The naming rules (https://prometheus.io/docs/practices/naming, as ``promtool check metrics``
applies them) are checked on the exposition itself, parsed line by line: one prefix, snake case,
``_total`` on counters and only there, base units, histograms with their ``_bucket``/``_sum``/
``_count`` series, no label that could carry a patient, study or instance, and no label value that
looks like a DICOM UID. docs/metrics.md must list exactly the metrics a scrape returns.

The flow test starts ``cardionode serve`` (listener, completeness, conductor, a local worker,
the sender and the web page in one process), scrapes ``/metrics`` with the access token, sends a
study with dcmtk's storescu (the flow test pipeline processes it, a Storage SCP in the test
acknowledges the results) and scrapes again: every counter on the study's way has moved.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from starlette.applications import Starlette
from starlette.testclient import TestClient

from node.config import load_settings
from node.ledger import Ledger
from node.web.context import WebContext
from node.web.health import health_routes
from node.web.metrics import metrics_routes
from node.web.probes import StandaloneProbe
from tests.support import REPO
from tests.support.config import serve_settings, write_config
from tests.support.destination import Destination
from tests.support.dicom_clients import echoscu, storescu
from tests.support.nm import write_nm_study
from tests.support.node import ServeProcess
from tests.support.pipelines import flowtest
from tests.support.ports import free_port, port_open, wait_for

NAME = re.compile(r"^cardionode_[a-z0-9_]+$")
#: labels that would carry a patient, a study or an instance (PHI, and one series per study)
FORBIDDEN_LABELS = {"study", "series", "instance", "patient", "accession", "uid", "study_uid", "series_uid",
                    "sop_instance_uid", "patient_id", "patient_name", "accession_number", "calling_ae"}
#: a DICOM UID (at least four numeric components), anywhere in a label value
UID_LIKE = re.compile(r"(?<![\w.])[0-2](\.(0|[1-9][0-9]*)){3,}(?![\w.])")
#: unit words that are not base units (Prometheus: seconds and bytes)
NON_BASE_UNITS = re.compile(r"_(milli|micro|nano)?(ms|us|ns|millis|milliseconds|microseconds|minutes|hours|days"
                            r"|kb|mb|gb|kib|mib|gib|kilobytes|megabytes|percent)(_|$)")
#: the web page's access token of the served node
TOKEN = "metrics-test-token-0123456789"
#: every metric the node exposes (docs/metrics.md lists these, and only these)
EXPECTED = {
    "cardionode_build_info": "gauge",
    "cardionode_associations_active": "gauge",
    "cardionode_associations_total": "counter",
    "cardionode_associations_aborted_total": "counter",
    "cardionode_instances_received_total": "counter",
    "cardionode_received_bytes_total": "counter",
    "cardionode_instances_refused_total": "counter",
    "cardionode_completeness_decisions_total": "counter",
    "cardionode_last_image_to_result_seconds": "histogram",
    "cardionode_job_duration_seconds": "histogram",
    "cardionode_model_inference_seconds": "histogram",
    "cardionode_export_attempts_total": "counter",
    "cardionode_mwl_queries_total": "counter",
    "cardionode_studies_paired_total": "counter",
    "cardionode_studies": "gauge",
    "cardionode_jobs": "gauge",
    "cardionode_sends": "gauge",
    "cardionode_ledger_instances": "gauge",
    "cardionode_queue_depth": "gauge",
    "cardionode_disk_free_bytes": "gauge",
    "cardionode_disk_watermark_bytes": "gauge",
}


def naming_problems(exposition: str) -> list[str]:
    """Every breach of the naming rules in a text exposition (empty when it passes)."""
    problems: list[str] = []
    types: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str]]] = []
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? \S+$", line)
            if match is None:
                problems.append(f"unparsable sample line {line!r}")
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match[3] or ""))
            samples.append((match[1], labels))
    for name, kind in types.items():
        if not NAME.match(name):
            problems.append(f"{name}: not cardionode_ and snake case")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: a counter without _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: _total on a {kind}")
        if NON_BASE_UNITS.search(name):
            problems.append(f"{name}: not in base units (seconds, bytes)")
        if kind == "histogram" and not name.endswith(("_seconds", "_bytes")):
            problems.append(f"{name}: a histogram without its unit (_seconds or _bytes)")
        if name.endswith("_info") and kind != "gauge":
            problems.append(f"{name}: an _info metric must be a gauge")
    for sample, labels in samples:
        family = next((n for n in types if sample == n or (types[n] == "histogram" and sample in
                                                           (f"{n}_bucket", f"{n}_sum", f"{n}_count"))), None)
        if family is None:
            problems.append(f"{sample}: a sample of no declared family")
            continue
        if types[family] == "histogram" and sample == family:
            problems.append(f"{sample}: a histogram sample without _bucket, _sum or _count")
        if sample.endswith("_bucket") and "le" not in labels:
            problems.append(f"{sample}: a bucket without le")
        for label, value in labels.items():
            if label.lower() in FORBIDDEN_LABELS:
                problems.append(f"{sample}: label {label} could carry a patient, study or instance")
            if UID_LIKE.search(value):
                problems.append(f"{sample}: label {label}={value!r} looks like a DICOM UID")
    for name, kind in types.items():
        if kind == "histogram" and any(s == f"{name}_bucket" for s, _ in samples):
            for suffix in ("_sum", "_count"):
                if not any(s == f"{name}{suffix}" for s, _ in samples):
                    problems.append(f"{name}: buckets without {name}{suffix}")
            if not any(s == f"{name}_bucket" and labels.get("le") == "+Inf" for s, labels in samples):
                problems.append(f"{name}: no +Inf bucket")
    return problems


def declared_types(exposition: str) -> dict[str, str]:
    """``{family name: type}`` from the ``# TYPE`` lines."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))


def total(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    found = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def app(context: WebContext) -> Starlette:
    """The metrics and health routes alone, as the web app mounts them."""
    return Starlette(routes=[*metrics_routes(context), *health_routes(context)])


def test_the_naming_rules_catch_what_they_should() -> None:
    """The checker itself: each rule fires on a breach (a checker that cannot fail proves nothing)."""
    bad = "\n".join([
        "# TYPE cardionode_sends_total gauge", "cardionode_sends_total 1",
        "# TYPE cardionode_stored counter", "cardionode_stored 1",
        "# TYPE cardionode_latency_ms histogram", 'cardionode_latency_ms_bucket{le="+Inf"} 1',
        "# TYPE CardioNode_up gauge", "CardioNode_up 1",
        "# TYPE cardionode_jobs gauge", 'cardionode_jobs{study="1.2.840.113619.2.55"} 1',
        "# TYPE cardionode_x gauge", 'cardionode_x{destination="1.2.840.10008.5.1.4"} 1',
    ])
    problems = "\n".join(naming_problems(bad))
    for expected in ("cardionode_sends_total: _total on a gauge", "cardionode_stored: a counter without _total",
                     "cardionode_latency_ms: not in base units", "cardionode_latency_ms: a histogram without its unit",
                     "cardionode_latency_ms: buckets without cardionode_latency_ms_sum", "CardioNode_up: not cardionode_",
                     "label study could carry", "looks like a DICOM UID"):
        assert expected in problems, problems


def test_a_scrape_is_named_by_the_conventions_and_documented(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "data", port=free_port())
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    probe = StandaloneProbe(settings, ledger)
    try:
        response = TestClient(app(WebContext(settings, ledger, probe))).get("/metrics")
    finally:
        ledger.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    assert naming_problems(text) == []
    assert declared_types(text) == {k: v for k, v in EXPECTED.items() if k != "cardionode_queue_depth"}, (
        "no broker database yet: the queue depths are unknown and left out, everything else is there")
    assert total(text, "cardionode_build_info") == 1.0
    assert re.search(r'cardionode_build_info\{models="[a-z0-9_]+=\d+\.\d+\.\d+(,[a-z0-9_]+=\d+\.\d+\.\d+)*",version="\d', text), text
    assert total(text, "cardionode_studies") == 0.0
    assert total(text, "cardionode_disk_free_bytes", volume="data") > 0
    assert total(text, "cardionode_disk_watermark_bytes", volume="data") == settings.disk_watermark_mb * 2**20
    documented = set(re.findall(r"^\| `(cardionode_[a-z0-9_]+)` \|", (REPO / "docs" / "metrics.md").read_text(), re.M))
    assert documented == set(EXPECTED), f"docs/metrics.md: missing {set(EXPECTED) - documented}, extra {documented - set(EXPECTED)}"


def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "data", port=free_port())
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    try:
        response = TestClient(app(WebContext(settings, ledger, StandaloneProbe(settings, ledger)))).get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    finally:
        ledger.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def _abort_an_association(port: int) -> None:
    """An association with the node that the peer ends with an A-ABORT instead of a release."""
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIONODE")
    assert assoc.is_established
    assoc.abort()


@pytest.mark.slow
@pytest.mark.network
def test_counters_move_as_a_study_flows_through_the_node(tmp_path: Path, seed: int) -> None:
    destination = Destination("ARCHIVE", refusing=False).start()
    port, web_port = free_port(), free_port()
    settings = serve_settings(tmp_path / "data", port, [destination.as_setting("archive")],
                              web={"port": web_port, "token": TOKEN})
    config = write_config(tmp_path / "node.toml", **settings)
    node = ServeProcess(config, port, tmp_path / "serve.out")
    web = f"http://127.0.0.1:{web_port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        node.start()
        wait_for(lambda: port_open(web_port), 60, "the web page to listen")
        assert httpx.get(f"{web}/metrics", timeout=30).status_code == 401  # the token guards /metrics
        ready = httpx.get(f"{web}/readyz", timeout=30)  # open: no patient data
        assert ready.status_code == 200, ready.text
        assert {name: c["ok"] for name, c in ready.json()["components"].items()} == {
            "ledger": True, "broker": True, "listener": True, "disk": True, "workers": True}, ready.text
        assert f"listening on 127.0.0.1:{port}" in ready.json()["components"]["listener"]["detail"]
        assert httpx.get(f"{web}/healthz", timeout=30).json() == {"status": "alive"}
        before = httpx.get(f"{web}/metrics", headers=bearer, timeout=30).text
        assert echoscu(port, called="NOT_THE_NODE").returncode != 0  # refused: called AE title not the node's
        _abort_an_association(port)
        study = write_nm_study(tmp_path / "study", 3, seed, frames=4)
        storescu(port, study.paths, check=True)
        ledger = Ledger.from_settings(load_settings(config))

        def scrape_when_acknowledged() -> str | None:
            failed = [job.reason for job in ledger.jobs.find(states=("failed", "dead"))]
            assert not failed, f"seed {seed}: {failed}"
            text = httpx.get(f"{web}/metrics", headers=bearer, timeout=30).text
            done = total(text, "cardionode_last_image_to_result_seconds_count") > total(
                before, "cardionode_last_image_to_result_seconds_count")
            return text if done else None

        try:
            after = wait_for(scrape_when_acknowledged, 180, "the study's results acknowledged (last_image_to_result observed)")
            spooled_bytes = sum(i.size_bytes for i in ledger.instances.of_study(study.study_uid))
        finally:
            ledger.close()
    finally:
        node.stop()
        destination.stop()

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert naming_problems(after) == []
    assert set(declared_types(after)) == set(EXPECTED)
    assert moved("cardionode_instances_received_total", source="dimse") == 3
    assert moved("cardionode_received_bytes_total", source="dimse") == spooled_bytes > 0
    assert moved("cardionode_associations_total", role="scp", result="accepted") == 2  # storescu, the aborted one
    assert moved("cardionode_associations_total", role="scp", result="rejected") == 1
    assert moved("cardionode_associations_aborted_total", role="scp") == 1
    assert moved("cardionode_associations_aborted_total", role="scu") == 0
    assert moved("cardionode_completeness_decisions_total", rule="quiet_period") + moved(
        "cardionode_completeness_decisions_total", rule="expected_series") == 1
    for step in ("analyse", "predict", "report"):
        assert moved("cardionode_job_duration_seconds_count", pipeline=flowtest.NAME, step=step) == 1, step
    assert moved("cardionode_model_inference_seconds_count", pipeline=flowtest.NAME) == 1
    assert moved("cardionode_export_attempts_total", destination="archive", outcome="success") == len(destination.stored) >= 2
    assert moved("cardionode_export_attempts_total", outcome="transient") == moved(
        "cardionode_export_attempts_total", outcome="permanent") == 0
    assert moved("cardionode_associations_total", role="scu", result="accepted") >= 1
    assert moved("cardionode_last_image_to_result_seconds_count", pipeline=flowtest.NAME) == 1
    assert 0 < moved("cardionode_last_image_to_result_seconds_sum", pipeline=flowtest.NAME) < 180
    assert total(after, "cardionode_studies", state="done") == 1
    assert total(after, "cardionode_jobs", state="sent") == 1
    assert total(after, "cardionode_sends", state="sent") == len(destination.stored)
    assert total(after, "cardionode_ledger_instances") == 3
    assert total(after, "cardionode_queue_depth") == 0
    assert {s.labels["queue"] for f in text_string_to_metric_families(after) for s in f.samples
            if s.name == "cardionode_queue_depth"} == {"cpu", "gpu", "io"}
    assert total(after, "cardionode_associations_active", role="scp") == 0
    assert study.study_uid not in after and study.series_uid not in after
