"""Notifications: a study the node does not process, and results it cannot deliver, are told to the
sender's side, in plain words and without patient data.

A real ``cardionode serve`` (no local workers: nothing here needs processing) receives a
planar whole-body NM study from dcmtk ``storescu``; a real HTTP server (:mod:`http.server`
in a thread) receives the webhook, and a real command receives the same JSON on its
standard input. A result waiting in the outbox for a destination that is down (its port
closed) is dead-lettered by the node's sender and notified too. The failing-hook cases
drive :class:`node.ops.notify.Notifier` on a ledger directly.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import load_settings
from node.dicom.logs import hash_identifier
from node.ledger import InstanceMeta, Ledger, OutputMeta
from node.ops.notify import Notifier
from node.uids import deterministic_uid
from tests.support.config import listener_config, serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network

#: what must never leave the node in a notification (the test instances' patient module)
PATIENT_DATA = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID, PATIENT_BIRTH_DATE)
#: a command hook: appends the JSON it reads on standard input, one line per call, to the file in argv[1]
HOOK = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"


class Webhook:
    """An HTTP server on a free loopback port that records each POST (path, content type, JSON body)
    and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self.status = status
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook.received.append((self.path, self.headers.get("Content-Type", ""), json.loads(body)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cardionode/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


def _planar_study(folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A whole-body planar NM study (anterior and posterior views), which no pipeline processes."""
    study = write_nm_study(folder, 2, seed=seed, size=32)
    for path in study.paths:
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        ds.SeriesDescription = "WB ANT/POST"
        ds.save_as(path, enforce_file_format=True)
    return study.study_uid, study.paths


def _no_patient_data(text: str) -> None:
    for value in PATIENT_DATA:
        assert value not in text, f"{value!r} left the node: {text}"


def test_an_ignored_study_and_a_dead_letter_reach_the_webhook_and_the_command(tmp_path: Path, webhook: Webhook) -> None:
    port, down = free_port(), free_port()  # `down`: a destination whose port nobody listens on
    hook_out = tmp_path / "hook.jsonl"
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", port, [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": down}],
        pipeline_modules=[], workers=[], send_retry={"initial_s": 1.0, "max_s": 1.0, "max_attempts": 2},
        notify={"webhook_url": webhook.url, "command": [sys.executable, "-c", HOOK, str(hook_out)]},
    ))
    study_uid, paths = _planar_study(tmp_path / "planar", seed=41)
    node = NodeProcess(config, port, tmp_path / "node.out", mode="serve")
    with node:
        storescu(port, paths, check=True)
        wait_for(lambda: any(b["event"] == "study.ignored" for _, _, b in webhook.received), 60,
                 f"the ignored study's notification (node output {node.log_path})", 0.5)

        # a result in the outbox for the destination that is down: the node's sender dead-letters it
        settings = load_settings(config)
        ledger = Ledger.from_settings(settings)
        try:
            result_study = write_nm_study(tmp_path / "result", 1, seed=42)
            ds = pydicom.dcmread(result_study.paths[0])
            outbox = settings.outbox_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
            outbox.parent.mkdir(parents=True)
            ds.save_as(outbox, enforce_file_format=True)
            _reported_job(ledger, result_study.study_uid, ds, outbox)
        finally:
            ledger.close()
        wait_for(lambda: any(b["event"] == "send.dead_letter" for _, _, b in webhook.received), 60,
                 f"the dead letter's notification (node output {node.log_path})", 0.5)
    bodies = [b for _, _, b in webhook.received]
    assert [b["event"] for b in bodies] == ["study.ignored", "send.dead_letter"], bodies  # once per event
    ignored, dead = bodies
    assert all(path == "/cardionode/events" and kind == "application/json" for path, kind, _ in webhook.received)
    assert ignored["study_key"] == hash_identifier(study_uid) and ignored["study_instance_uid"] == study_uid
    assert ignored["state"] == "ignored" and ignored["node"] == "CARDIONODE"
    assert ignored["reason"].startswith(
        "planar whole-body images received; reconstructed stress and rest SPECT (spect_mpi)"), ignored["reason"]
    assert dead["destination"] == "pacs" and dead["results"] == 1
    assert f"cannot connect to 127.0.0.1:{down}" in dead["reason"], dead["reason"]
    assert "research use only" in ignored["software"]
    _no_patient_data(json.dumps(bodies))

    # the command got the same objects on its standard input
    lines = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert lines == bodies

    # the refused connection: one line per attempt, with host and port, no traceback
    log = (tmp_path / "data" / "logs" / "node.log").read_text()
    refused = [line for line in log.splitlines() if f"127.0.0.1:{down}" in line and "send" in line]
    assert len(refused) == 2, refused  # two attempts (max_attempts = 2)
    assert "Traceback" not in log and "TCP Initialisation Error" not in log and "unable to connect" not in log
    _no_patient_data(log)


def _reported_job(ledger: Ledger, study_uid: str, ds: pydicom.Dataset, path: Path) -> None:
    """The ledger as the conductor leaves a processed study: job reported, one output, a pending send."""
    ledger.instances.record(InstanceMeta(deterministic_uid("source", study_uid), str(ds.SOPClassUID), study_uid,
                                         deterministic_uid("source-series", study_uid), str(path), 0))
    ledger.studies.transition(study_uid, "complete", "all series", rule="manual")
    ledger.studies.transition(study_uid, "processing", "run 1")
    job = ledger.jobs.create(study_uid, "spect_mpi")
    ledger.outputs.record(job.id, "spect_mpi", OutputMeta(str(ds.SOPInstanceUID), study_uid, str(ds.SeriesInstanceUID),
                                                          str(ds.SOPClassUID), str(path), path.stat().st_size))
    ledger.jobs.transition(job.id, "running", "analyse")
    ledger.jobs.transition(job.id, "reported", "1 result object in the outbox")
    ledger.studies.transition(study_uid, "done", "spect_mpi run 1: 1 result object")
    ledger.sends.create(str(ds.SOPInstanceUID), ["pacs"])


@pytest.mark.parametrize("answer", ["http 500", "nobody listening", "command fails"])
def test_a_failing_hook_is_logged_once_and_the_node_goes_on(tmp_path: Path, answer: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    config, _ = listener_config(tmp_path)
    settings = load_settings(config)
    with Webhook(status=500) as hook:
        url = hook.url if answer == "http 500" else f"http://127.0.0.1:{free_port()}/x"
        notify = {"webhook_url": url} if answer != "command fails" else {"command": [sys.executable, "-c", "raise SystemExit(3)"]}
        settings = settings.model_copy(update={"notify": settings.notify.model_copy(update=notify)})
        ledger = Ledger.from_settings(settings)
        try:
            notifier = Notifier(ledger, settings)
            study_uid = deterministic_uid("ignored-study", answer)
            ledger.instances.record(InstanceMeta(deterministic_uid("i", answer), "1.2.840.10008.5.1.4.1.1.20", study_uid,
                                                 deterministic_uid("s", answer), "x.dcm", 1))
            ledger.studies.transition(study_uid, "ignored", "planar whole-body images received; ... needed")
            with caplog.at_level("WARNING", logger="node.ops.notify"):
                assert notifier.run_once() == 1
                assert notifier.run_once() == 0  # delivered (or tried) once: the cursor moved on
            assert Notifier(ledger, settings).run_once() == 0  # and stays moved for a restarted node
        finally:
            ledger.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "node.ops.notify"]
    assert len(warnings) == 1, warnings
    expected = {"http 500": "answered HTTP 500", "nobody listening": "Connection refused",
                "command fails": "exited with status 3"}[answer]
    assert expected in warnings[0] and hash_identifier(study_uid) in warnings[0], warnings
    if answer == "http 500":
        assert len(hook.received) == 1
