"""DICOMweb STOW-RS ingest (issue 20 item 4): the same spool, ledger and completeness path as C-STORE.

In this process: the STOW-RS routes behind the web app's own security middleware, on a real
listener's storage service (spool, journal, ledger), answer each PS3.18 case (200, 202, 409,
400, 401, 413, 415, 503, 507) and keep nothing partial. Through ``cardionode serve``: Orthanc's
DICOMweb plugin and Python ``dicomweb-client`` each send a study that the node processes and
sends back to Orthanc like a C-STORE study, and the ledger names STOW-RS as where they came from.
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.uid import DeflatedExplicitVRLittleEndian
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient

from node.dicom.storage import Status
from node.ledger import Ledger
from node.telemetry import REGISTRY
from node.uids import deterministic_uid
from node.web.auth import Guard, SecurityMiddleware
from node.web.context import WebContext
from node.web.probes import StandaloneProbe
from node.web.stow import MultipartError, MultipartSpooler, stow_routes
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import send_raw_answers
from tests.support.dicomweb import BOUNDARY, failed, multipart, part10, referenced, stow_content_type
from tests.support.hostile_dicom import malformed_cases
from tests.support.nm import NM_STORAGE, PATIENT_ID, PATIENT_NAME, write_nm_study
from tests.support.node import RunningListener, ServeProcess, listener_in_process
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for, wait_for_port

TOKEN = "stow-test-" + secrets.token_hex(8)
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stow:
    """The STOW-RS routes on a real listener's storage, and what to look at afterwards."""

    node: RunningListener
    context: WebContext
    client: TestClient

    def post(self, body: bytes, path: str = "/dicom-web/studies", content_type: str | None = None,
             headers: dict[str, str] | None = None) -> Any:
        sent = {"Content-Type": stow_content_type() if content_type is None else content_type, **BEARER, **(headers or {})}
        return self.client.post(path, content=body, headers=sent)

    @property
    def incoming(self) -> list[Path]:
        return list(self.node.listener.storage.spool.incoming_dir.iterdir())

    def spooled(self) -> list[Path]:
        return sorted(self.node.listener.storage.spool.root.glob("*/*/*.dcm"))

    def assert_nothing_kept(self) -> None:
        assert self.spooled() == [] and self.node.ledger.instances.uids() == set()
        assert self.incoming == [] and self.node.stored == []


def _app(context: WebContext) -> Starlette:
    """The STOW-RS routes behind the web app's security middleware (token on API paths)."""
    return Starlette(routes=stow_routes(context), middleware=[Middleware(SecurityMiddleware, guard=Guard(TOKEN, 8.0))])


@pytest.fixture()
def stow(tmp_path: Path) -> Iterator[Stow]:
    node = listener_in_process(tmp_path, audit=True)
    settings = node.listener.settings
    context = WebContext(settings, node.ledger, StandaloneProbe(settings, node.ledger), storage=node.listener.storage)
    with TestClient(_app(context)) as client:
        yield Stow(node, context, client)
    node.stop()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- in process
def test_a_study_is_stored_durably_and_recorded_as_from_stow(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 3, seed)
    before = _metric("cardionode_instances_received_total", source="stowrs")
    answer = stow.post(multipart(study.paths))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    sent = [str(pydicom.dcmread(p).SOPInstanceUID) for p in study.paths]
    assert referenced(answer.json()) == sent and failed(answer.json()) == []
    for uid in sent:
        row = stow.node.ledger.instances.get(uid)
        assert row is not None and row.calling_ae == "STOW-RS" and row.study_uid == study.study_uid
        kept = pydicom.dcmread(row.path)
        assert kept.PixelData == pydicom.dcmread(study.paths[sent.index(uid)]).PixelData
        assert kept.file_meta.SourceApplicationEntityTitle == "STOW-RS"
    assert sorted(m.sop_instance_uid for m in stow.node.stored) == sorted(sent)  # the assembler is woken for each
    assert _metric("cardionode_instances_received_total", source="stowrs") == before + 3
    assert stow.incoming == []
    request = [r for r in stow.node.audit_records() if r.get("event") == "stowrs.request"]
    assert len(request) == 1 and request[0]["stored"] == 3 and request[0]["study_uids"] == [study.study_uid]
    audit_text = stow.node.audit.path.read_text()
    assert PATIENT_ID not in audit_text and PATIENT_NAME.split("^")[0] not in audit_text

    # the same instances again: duplicates are stored (200), recorded once, and wake nobody
    again = stow.post(multipart(study.paths), path=f"/dicom-web/studies/{study.study_uid}")
    assert again.status_code == 200 and referenced(again.json()) == sent
    assert len(stow.node.stored) == 3 and len(stow.spooled()) == 3


def test_parts_without_preamble_or_content_type_and_deflated_parts_are_stored(stow: Stow, tmp_path: Path,
                                                                              seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 3, seed)
    bare = study.paths[0].read_bytes()[128:]  # "DICM" first: the preamble left out
    deflated = pydicom.dcmread(study.paths[2])
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(study.paths[2], enforce_file_format=True)
    answer = stow.post(multipart([bare, (None, study.paths[1]), study.paths[2]]))
    assert answer.status_code == 200, answer.text
    assert len(referenced(answer.json())) == 3 and len(stow.spooled()) == 3
    kept = stow.node.ledger.instances.get(str(deflated.SOPInstanceUID))
    assert kept is not None and kept.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert pydicom.dcmread(kept.path).PixelData == deflated.PixelData
    assert stow.incoming == []


def test_a_non_dicom_part_fails_alone_and_leaves_nothing(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 2, seed)
    before = _metric("cardionode_instances_refused_total", source="stowrs", status="0xC000")
    answer = stow.post(multipart([study.paths[0], b"%PDF-1.4 this is not DICOM\n" * 20, study.paths[1]]))
    assert answer.status_code == 202, answer.text
    assert len(referenced(answer.json())) == 2
    assert failed(answer.json()) == [("", Status.CANNOT_UNDERSTAND)]
    assert len(stow.spooled()) == 2 and stow.incoming == []
    rejection = stow.node.ledger.rejections.find()[0]
    assert rejection.status == Status.CANNOT_UNDERSTAND and rejection.calling_ae == "STOW-RS"
    assert _metric("cardionode_instances_refused_total", source="stowrs", status="0xC000") == before + 1


def test_a_part_that_is_not_application_dicom_is_415_and_nothing_is_stored(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 2, seed)
    answer = stow.post(multipart([study.paths[0], ("text/plain", b"hello"), study.paths[1]]))
    assert answer.status_code == 415, answer.text
    stow.assert_nothing_kept()


@pytest.mark.parametrize("content_type", [
    "application/dicom",
    "application/json",
    stow_content_type(root_type="application/dicom+json"),
    "",
])
def test_a_request_that_is_not_multipart_of_dicom_is_415(stow: Stow, tmp_path: Path, seed: int, content_type: str) -> None:
    study = write_nm_study(tmp_path / "study", 1, seed)
    answer = stow.post(multipart(study.paths), content_type=content_type)
    assert answer.status_code == 415, answer.text
    stow.assert_nothing_kept()


def _malformed(paths: list[Path]) -> dict[str, tuple[bytes, str]]:
    good = multipart(paths)
    return {
        "no close delimiter": (multipart(paths, close=False), stow_content_type()),
        "cut in a part": (good[: len(good) // 2], stow_content_type()),
        "other boundary": (multipart(paths, boundary="not-the-one"), stow_content_type()),
        "no boundary parameter": (good, 'multipart/related; type="application/dicom"'),
        "no part": (f"--{BOUNDARY}--\r\n".encode(), stow_content_type()),
        "header line without colon": (good.replace(b"Content-Length:", b"Content-Length", 1), stow_content_type()),
        "text after a delimiter": (good.replace(f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY}xx\r\n".encode(), 1),
                                   stow_content_type()),
        "empty body": (b"", stow_content_type()),
    }


def test_malformed_multipart_is_400_and_nothing_is_kept(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 3, seed)
    for name, (body, content_type) in _malformed(study.paths).items():
        answer = stow.post(body, content_type=content_type)
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        assert "detail" in answer.json(), name
        stow.assert_nothing_kept()
    assert stow.node.ledger.rejections.find() == []


def test_unauthenticated_requests_are_401(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 1, seed)
    body = multipart(study.paths)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic b3J0aGFuYzp3cm9uZw=="}):
        answer = stow.client.post("/dicom-web/studies", content=body,
                                  headers={"Content-Type": stow_content_type(), **headers})
        assert answer.status_code == 401, (headers, answer.status_code)
    stow.assert_nothing_kept()
    # HTTP Basic with the token as password, any user name (what Orthanc's DICOMweb client sends)
    answer = stow.client.post("/dicom-web/studies", content=body, auth=("orthanc", TOKEN),
                              headers={"Content-Type": stow_content_type()})
    assert answer.status_code == 200, answer.text


def test_over_the_size_limit_is_413_and_nothing_is_kept(stow: Stow, tmp_path: Path, seed: int) -> None:
    settings = stow.context.settings
    small = settings.model_copy(update={"web": settings.web.model_copy(update={"stow_max_mb": 0.05})})  # 51 KiB
    stow.context.settings = small
    study = write_nm_study(tmp_path / "study", 8, seed, size=32, frames=4)  # about 8 KiB each
    body = multipart(study.paths)
    assert len(body) > 0.05 * 2**20
    declared = stow.post(body)
    assert declared.status_code == 413, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is kept while reading
        for start in range(0, len(body), 4096):
            yield body[start: start + 4096]

    streamed = stow.client.post("/dicom-web/studies", content=chunks(),
                                headers={"Content-Type": stow_content_type(), **BEARER})
    assert streamed.status_code == 413, streamed.text
    stow.assert_nothing_kept()
    assert stow.post(multipart(study.paths[:2])).status_code == 200


def test_below_the_disk_watermark_is_507(stow: Stow, tmp_path: Path, seed: int) -> None:
    stow.context.settings = stow.context.settings.model_copy(update={"disk_watermark_mb": 2.0**40})
    study = write_nm_study(tmp_path / "study", 1, seed)
    answer = stow.post(multipart(study.paths))
    assert answer.status_code == 507 and "watermark" in answer.json()["detail"]
    stow.assert_nothing_kept()


def test_without_a_listener_stow_is_503(stow: Stow, tmp_path: Path, seed: int) -> None:
    alone = WebContext(stow.context.settings, stow.node.ledger, stow.context.probe, storage=None)
    with TestClient(_app(alone)) as client:
        study = write_nm_study(tmp_path / "study", 1, seed)
        answer = client.post("/dicom-web/studies", content=multipart(study.paths),
                             headers={"Content-Type": stow_content_type(), **BEARER})
    assert answer.status_code == 503
    stow.assert_nothing_kept()


def test_instances_of_another_study_than_the_path_fail_0xA900(stow: Stow, tmp_path: Path, seed: int) -> None:
    mine = write_nm_study(tmp_path / "mine", 2, seed)
    other = write_nm_study(tmp_path / "other", 1, seed + 1)
    answer = stow.post(multipart([*mine.paths, *other.paths]), path=f"/dicom-web/studies/{mine.study_uid}")
    assert answer.status_code == 202, answer.text
    other_uid = str(pydicom.dcmread(other.paths[0]).SOPInstanceUID)
    assert failed(answer.json()) == [(other_uid, Status.DATASET_DOES_NOT_MATCH)]
    assert stow.node.ledger.instances.get(other_uid) is None and len(stow.spooled()) == 2
    only_other = stow.post(multipart(other.paths), path=f"/dicom-web/studies/{mine.study_uid}")
    assert only_other.status_code == 409 and failed(only_other.json()) == [(other_uid, Status.DATASET_DOES_NOT_MATCH)]


def test_what_c_store_refuses_stow_fails_with_the_same_status(stow: Stow, tmp_path: Path, seed: int) -> None:
    study = write_nm_study(tmp_path / "study", 3, seed)
    no_pixels, wrong_class, bad_syntax = (pydicom.dcmread(p) for p in study.paths)
    del no_pixels.PixelData  # an image without Pixel Data: 0xA900
    no_pixels.save_as(study.paths[0], enforce_file_format=True)
    wrong_class.SOPClassUID = wrong_class.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.1"  # RT Image
    wrong_class.save_as(study.paths[1], enforce_file_format=True)
    raw = bytearray(study.paths[2].read_bytes())  # a transfer syntax the node does not accept
    at = raw.index(b"1.2.840.10008.1.2.1\x00")
    raw[at: at + 20] = b"1.2.840.10008.1.2.99"
    answer = stow.post(multipart([*study.paths[:2], bytes(raw)]))
    assert answer.status_code == 409, answer.text
    reasons = [reason for _, reason in failed(answer.json())]
    assert reasons == [Status.DATASET_DOES_NOT_MATCH, Status.SOP_CLASS_NOT_SUPPORTED, Status.TRANSFER_SYNTAX_NOT_SUPPORTED]
    assert sorted(r.status for r in stow.node.ledger.rejections.find()) == sorted(reasons)
    stow.assert_nothing_kept()


def test_hostile_parts_fail_with_the_status_c_store_gives_them(stow: Stow, seed: int) -> None:
    """Every malformed kind of the listener's limits tests, as a Part 10 part: refused alone, with the
    Failure Reason a C-STORE of the same data set is answered with, and nothing kept."""
    study, series = deterministic_uid("stow-hostile-study", seed), deterministic_uid("stow-hostile-series", seed)
    cases = malformed_cases(study, series, deterministic_uid("stow-bad", seed))
    answer = stow.post(multipart([part10(c.payload, NM_STORAGE, c.sop_instance, c.transfer_syntax) for c in cases]))
    assert answer.status_code == 409, answer.text
    reasons = [reason for _, reason in failed(answer.json())]
    assert referenced(answer.json()) == [] and len(reasons) == len(cases)
    wrong = [f"{c.name}: 0x{r:04X}" for c, r in zip(cases, reasons, strict=True) if r not in c.allowed]
    assert not wrong, f"seed {seed}: " + ", ".join(wrong)
    stow.assert_nothing_kept()
    by_c_store = send_raw_answers(stow.node.port, [(NM_STORAGE, c.sop_instance, c.payload, c.transfer_syntax) for c in cases])
    assert [status for status, _ in by_c_store] == reasons, f"seed {seed}"


def test_the_multipart_reader_finds_the_same_parts_however_the_body_is_cut(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))) for _ in range(4)]
    payloads.append(b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n")  # almost a delimiter, inside a part
    body = multipart(payloads)
    for trial in range(20):
        spooler = MultipartSpooler(BOUNDARY, tmp_path, 2**20)
        at = 0
        while at < len(body):
            step = 1 if trial == 0 else rng.randrange(1, 700)
            spooler.feed(body[at: at + step])
            at += step
        parts = spooler.finish()
        assert [p.path.read_bytes() for p in parts] == payloads, f"seed {seed}, trial {trial}"
        spooler.remove()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MultipartError) as refused:
        MultipartSpooler(BOUNDARY, tmp_path, 100).feed(body)
    assert refused.value.status == 413 and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- through the node
@pytest.mark.network
@pytest.mark.slow
def test_orthanc_and_dicomweb_client_send_studies_that_the_node_processes(tmp_path: Path, seed: int) -> None:
    from dicomweb_client.api import DICOMwebClient

    token = secrets.token_urlsafe(24)
    node_port, web_port = free_port(), free_port()
    stow_url = f"http://127.0.0.1:{web_port}/dicom-web"
    # no DICOM route from Orthanc to the node (node_port None): the studies can only come by STOW-RS
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb_servers={
        "node": {"Url": f"{stow_url}/", "Username": "orthanc", "Password": token},
    }).start()
    destination = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", **serve_settings(
        data, node_port, [destination], web={"port": web_port, "token": token}))
    node = ServeProcess(config, node_port, tmp_path / "node.log")
    by_orthanc = write_nm_study(tmp_path / "a", 3, seed, frames=4)
    by_client = write_nm_study(tmp_path / "b", 3, seed + 1, frames=4)
    try:
        node.start()
        wait_for_port(web_port, 60, "the web app", node.process)

        # Orthanc's DICOMweb plugin (HTTP Basic, the token as password)
        answer = orthanc.stow("node", orthanc.upload(by_orthanc.paths))
        assert answer.ok, answer.text

        # dicomweb-client (Bearer token)
        client = DICOMwebClient(url=stow_url, headers={"Authorization": f"Bearer {token}"})
        response = client.store_instances([pydicom.dcmread(p) for p in by_client.paths])
        assert len(response.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in response

        # without the token: 401, and nothing is stored
        refused = requests.post(f"{stow_url}/studies", data=multipart(by_client.paths[:1]),
                                headers={"Content-Type": stow_content_type()}, timeout=30)
        assert refused.status_code == 401

        # both studies are processed like C-STORE studies: results back in the PACS
        for study in (by_orthanc, by_client):
            results = wait_for(lambda s=study: len(orthanc.results(s.study_uid)) >= 2 and orthanc.results(s.study_uid),
                               120, f"the node's results for {study.study_uid} in Orthanc (seed {seed}); "
                               f"node log {tmp_path / 'node.log'}", interval_s=0.5)
            assert sorted(r["modality"] for r in results) == ["OT", "SR"], f"seed {seed}: {results}"

        # the node's metrics count them as STOW-RS instances
        metrics = requests.get(f"http://127.0.0.1:{web_port}/metrics", headers={"Authorization": f"Bearer {token}"},
                               timeout=30).text
        assert 'cardionode_instances_received_total{source="stowrs"} 6.0' in metrics
        assert not re.search(r'cardionode_instances_received_total\{source="dimse"\} [1-9]', metrics)
    finally:
        node.stop()
        orthanc.stop()
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    try:
        for study in (by_orthanc, by_client):
            for path in study.paths:
                row = ledger.instances.get(str(pydicom.dcmread(path).SOPInstanceUID))
                assert row is not None and row.calling_ae == "STOW-RS" and row.sop_class_uid == NM_STORAGE
        assert ledger.rejections.find() == []
    finally:
        ledger.close()
