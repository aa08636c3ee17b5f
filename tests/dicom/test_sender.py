"""The C-STORE SCU against real pynetdicom SCPs that accept, refuse or fail in chosen ways, with and without TLS."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import EnhancedSRStorage, NuclearMedicineImageStorage

from node.config import TLSSettings
from node.dicom.audit import AuditLog
from node.dicom.sender import (
    COMPREHENSIVE_3D_SR,
    ENHANCED_SR,
    PEER_TEXT_KEPT,
    Exporter,
    RetryPolicy,
    Target,
    classify_status,
    send_files,
)
from node.dicom.tls import client_context
from node.ledger import InstanceMeta, Ledger, OutputMeta
from node.ops.admin import format_status
from node.ops.status import status_snapshot
from node.results import to_enhanced_sr
from node.results.content import ReportContext
from tests.support.nm import NM_STORAGE, PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME, write_nm_study
from tests.support.pipelines import flowtest as flowtest_pipeline
from tests.support.ports import free_port


@pytest.fixture
def outputs(tmp_path: Path, seed: int) -> list[Path]:
    """An SC and a Comprehensive 3D SR made by the test pipeline, as files."""
    paths = write_nm_study(tmp_path / "in", 2, seed, frames=4).paths
    pipeline = flowtest_pipeline.FlowTestPipeline()
    result = pipeline.analyse([pydicom.dcmread(p) for p in paths])
    files = []
    for ds in pipeline.report(result, ReportContext(device_uid="1.2.3", device_name="test")):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _scp(contexts: list[str], status: int = 0x0000, reject: bool = False, comment: str = ""):  # type: ignore[no-untyped-def]
    received: list[pydicom.Dataset] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        if not comment:
            return status
        rsp = pydicom.Dataset()
        rsp.Status, rsp.ErrorComment = status, comment  # LO: at most 64 characters
        return rsp

    ae = AE(ae_title="TESTSCP")
    for uid in contexts:
        ae.add_supported_context(uid)
    port = free_port()
    if reject:
        ae.require_calling_aet = ["NOBODY"]  # rejects every association: permanent, calling AE not recognised
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, port, received


def test_sr_falls_back_to_enhanced_sr_when_3d_refused(outputs: list[Path]) -> None:
    server, port, received = _scp(["1.2.840.10008.5.1.4.1.1.7", ENHANCED_SR])
    try:
        outcomes = send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE",
                              enhanced_sr=to_enhanced_sr)
    finally:
        server.shutdown()
    assert all(o.ok for o in outcomes), outcomes
    sr = [ds for ds in received if ds.Modality == "SR"]
    assert len(sr) == 1 and sr[0].SOPClassUID == ENHANCED_SR
    original = pydicom.dcmread(outputs[1])
    assert original.SOPClassUID == COMPREHENSIVE_3D_SR and sr[0].SOPInstanceUID == original.SOPInstanceUID


def test_a900_is_permanent_and_a700_transient(outputs: list[Path]) -> None:
    for status, kind in ((0xA900, "permanent"), (0xA700, "transient")):
        server, port, _ = _scp(["1.2.840.10008.5.1.4.1.1.7", COMPREHENSIVE_3D_SR], status=status)
        try:
            outcomes = send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE")
        finally:
            server.shutdown()
        assert [o.kind for o in outcomes] == [kind, kind]
        assert all(o.status == status for o in outcomes)


def test_association_rejected_permanently_and_nobody_listening(outputs: list[Path]) -> None:
    server, port, _ = _scp([NuclearMedicineImageStorage], reject=True)
    try:
        outcomes = send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE")
    finally:
        server.shutdown()
    assert {o.kind for o in outcomes} == {"permanent"}, outcomes
    assert "rejected permanently" in outcomes[0].error
    outcomes = send_files(Target("t", "TESTSCP", "127.0.0.1", free_port()), outputs, calling_ae="CARDIONODE",
                          timeout_s=3)
    assert {o.kind for o in outcomes} == {"transient"}, outcomes


#: what the peers in these tests say: the patient of the outputs (tests.support.nm), as peers spell it
ECHO = f"{PATIENT_NAME.upper()} id {PATIENT_ID} born 1937-09-14 conflicts"
SECRETS = ("quillfeather", "zebedee", PATIENT_ID.lower(), PATIENT_BIRTH_DATE, "1937-09-14")


def _secrets_in(text: str) -> list[str]:
    return [s for s in SECRETS if s in text.lower()]


def test_the_peers_comment_is_cleaned_of_the_patient_and_kept_apart(outputs: list[Path]) -> None:
    for status, kind in ((0xC000, "permanent"), (0xB000, "sent")):
        server, port, _ = _scp(["1.2.840.10008.5.1.4.1.1.7", COMPREHENSIVE_3D_SR], status=status, comment=ECHO)
        try:
            outcomes = send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE")
        finally:
            server.shutdown()
        assert [o.kind for o in outcomes] == [kind, kind], outcomes
        for o in outcomes:
            assert o.error == ("" if kind == "sent" else f"destination answered 0x{status:04X}"), o.error
            assert o.comment == "<patient-name> id <patient-id> born <birth-date> conflicts", o.comment


def test_exporter_keeps_the_peers_words_out_of_logs_audit_events_and_default_status(
    outputs: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ds = pydicom.dcmread(outputs[0])
    study, series = str(ds.StudyInstanceUID), "1.2.3.4.5"
    ledger.instances.record(InstanceMeta(sop_instance_uid="1.2.3.4.5.6", sop_class_uid=NM_STORAGE, study_uid=study,
                                         series_uid=series, path="/spool/x.dcm", size_bytes=1,
                                         routing={"sop_class_uid": NM_STORAGE}))
    ledger.studies.transition(study, "complete", "manual", rule="manual")
    ledger.studies.transition(study, "processing", "run 1")
    job = ledger.jobs.create(study, "flowtest_nm")
    ledger.jobs.transition(job.id, "running", "test")
    ledger.jobs.transition(job.id, "reported", "2 outputs")
    for path in outputs:
        out = pydicom.dcmread(path)
        meta = OutputMeta(str(out.SOPInstanceUID), study, str(out.SeriesInstanceUID), str(out.SOPClassUID), str(path))
        ledger.outputs.record(job.id, "flowtest_nm", meta)
        ledger.sends.create(meta.sop_instance_uid, ["refuser"])
    server, port, _ = _scp(["1.2.840.10008.5.1.4.1.1.7", COMPREHENSIVE_3D_SR], status=0xA900, comment=ECHO)
    caplog.set_level(logging.DEBUG)
    try:
        with AuditLog(tmp_path / "audit.jsonl") as audit:
            exporter = Exporter(ledger, {"refuser": Target("refuser", "TESTSCP", "127.0.0.1", port)},
                                calling_ae="CARDIONODE", audit=audit)
            assert exporter.run_once() == 2
        sends = ledger.sends.find()
        events = [e.reason for e in ledger.events.recent(50)]
        settings = SimpleNamespace(ae_title="CARDIONODE", destinations=[SimpleNamespace(name="refuser")])
        snapshot = status_snapshot(ledger, settings)
    finally:
        server.shutdown()
        ledger.close()
    assert [s.state for s in sends] == ["dead_letter", "dead_letter"]
    assert {s.last_error for s in sends} == {f"destination answered 0xA900{PEER_TEXT_KEPT}"}
    assert {s.peer_text for s in sends} == {"<patient-name> id <patient-id> born <birth-date> conflicts"}
    audit_lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [a["peer_comment"] for a in audit_lines if a["event"] == "send.dead_letter"] == [True, True]
    default, shown = format_status(snapshot), format_status(snapshot, peer_text=True)
    for what, text in (("log", caplog.text), ("audit", json.dumps(audit_lines)), ("events", "\n".join(events)),
                       ("last_error", "\n".join(s.last_error for s in sends)), ("status", default),
                       ("status --peer-text", shown)):
        assert not _secrets_in(text), f"{_secrets_in(text)} in the {what}: {text}"
    assert "conflicts" not in default and "--peer-text" in default
    assert "<patient-name> id <patient-id> born <birth-date> conflicts" in shown


def test_only_the_sent_sop_classes_are_proposed(outputs: list[Path]) -> None:
    proposed: list[str] = []

    def on_request(event):  # type: ignore[no-untyped-def]
        proposed.extend(str(cx.abstract_syntax) for cx in event.assoc.requestor.requested_contexts)

    ae = AE(ae_title="TESTSCP")
    ae.add_supported_context(EnhancedSRStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_REQUESTED, on_request)])
    try:
        send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE",
                   enhanced_sr=to_enhanced_sr)
        assert set(proposed) == {"1.2.840.10008.5.1.4.1.1.7", COMPREHENSIVE_3D_SR, ENHANCED_SR}
        proposed.clear()
        send_files(Target("t", "TESTSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE")
    finally:
        server.shutdown()
    assert set(proposed) == {"1.2.840.10008.5.1.4.1.1.7", COMPREHENSIVE_3D_SR}  # no converter: no Enhanced SR


def test_sends_over_tls_with_a_verified_destination(outputs: list[Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    received: list[str] = []

    def on_store(event):  # type: ignore[no-untyped-def]
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="TLSSCP")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.7")
    ae.add_supported_context(COMPREHENSIVE_3D_SR)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        target = Target("tls", "TLSSCP", "127.0.0.1", port, client_context(TLSSettings(ca=cert)))
        outcomes = send_files(target, outputs, calling_ae="CARDIONODE", timeout_s=10)
        assert all(o.ok for o in outcomes), outcomes
        assert sorted(received) == sorted(o.sop_instance_uid for o in outcomes)
        plain = send_files(Target("tls", "TLSSCP", "127.0.0.1", port), outputs, calling_ae="CARDIONODE", timeout_s=3)
        assert not any(o.ok for o in plain)  # plain TCP to a TLS port gets nowhere
    finally:
        server.shutdown()


def test_status_classes() -> None:
    assert classify_status(0x0000) == "sent" and classify_status(0xB007) == "sent"
    assert classify_status(0xA700) == "transient" and classify_status(0xA7FF) == "transient"
    assert classify_status(0xA900) == "permanent" and classify_status(0xC000) == "permanent"
    assert classify_status(0x0122) == "permanent"


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=5, max_s=30, max_attempts=5)
    assert [policy.delay_s(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]
