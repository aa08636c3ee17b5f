"""Log redaction and the audit log."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import NuclearMedicineImageStorage

from node.dicom.audit import AuditLog
from node.dicom.logs import (
    PatientIdentifiers,
    clean_peer_text,
    hash_identifier,
    redact,
    setup_logging,
    silence_pynetdicom,
)
from tests.support.dicom_clients import pynetdicom_store
from tests.support.nm import nm_instance
from tests.support.ports import free_port


@pytest.mark.parametrize(
    "line",
    [
        "(0010,0010) PN [Doe^Jane]",
        "Patient's Name: Doe^Jane, Modality NM",
        "PatientName=Doe^Jane",
        "PatientID 'PX-1234'",
        "Patient Birth Date 19370412",
        "Other Patient IDs: PX-1234",
    ],
)
def test_identifier_values_are_redacted(line: str) -> None:
    cleaned = redact(line)
    for secret in ("Doe", "Jane", "PX-1234", "19370412"):
        assert secret not in cleaned, cleaned
    assert "<redacted>" in cleaned


def test_library_warnings_lose_quoted_values(tmp_path: Path) -> None:
    log_file = setup_logging(tmp_path / "logs", "unit", stream=None)
    try:
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane^^^' (too many components)")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR LO: 'PX-1234'", UserWarning, stacklevel=1)
        try:
            raise ValueError("bad value 'Doe^Jane'")
        except ValueError:
            logging.getLogger("cardionode.test").exception("failed on %s", hash_identifier("1.2.3"))
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_cardionode", False):
                root.removeHandler(handler)
                handler.close()
        logging.captureWarnings(False)
    assert log_file is not None
    text = log_file.read_text()
    assert "Invalid value for VR PN" in text and hash_identifier("1.2.3") in text
    assert "Doe" not in text and "PX-1234" not in text


def test_audit_log_appends_json_lines_and_refuses_patient_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    with AuditLog(path) as audit:
        threads = [threading.Thread(target=lambda i=i: [audit.record("step", n=i, k=k) for k in range(50)]) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with pytest.raises(ValueError, match="patient data"):
            audit.record("oops", patient_name="Doe^Jane")
        with pytest.raises(ValueError, match="patient data"):  # a peer's words: ledger's peer_text only
            audit.record("oops", error_comment="patient DOE^JANE conflicts with existing record")
    with AuditLog(path) as audit:  # reopening appends
        audit.record("association.accepted", calling_ae="PACS", study_uid="1.2.3")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 201
    assert lines[-1]["event"] == "association.accepted" and lines[-1]["at"].endswith("+00:00")
    assert "Doe" not in path.read_text()


def _patient() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane^Marie^Dr", "PX-1234", "19370412"
    ds.OtherPatientIDs, ds.AccessionNumber = ["OLD-777", "XR-42"], "ACC-9001"
    ds.OtherPatientNames = "Müller^Janine"
    return ds


@pytest.mark.parametrize(
    "said",
    [
        "patient DOE^JANE conflicts with existing record",
        "patient Jane Doe conflicts with existing record",
        "patient doe, jane marie conflicts with existing record",
        "patient doe_jane conflicts with existing record",
        "patient JANINE MULLER conflicts with existing record",  # other name, spelled without diacritics
        "patient px-1234 conflicts with existing record",
        "patient OLD-777 / XR-42 / ACC-9001 conflicts with existing record",
        "patient born 1937-04-12 conflicts with existing record",
        "patient born 12.04.1937 conflicts with existing record",
        "patient born 04/12/1937 conflicts with existing record",
        "patient born 19370412 conflicts with existing record",
    ],
)
def test_a_peers_words_lose_the_patients_identifiers_in_every_spelling(said: str) -> None:
    cleaned = clean_peer_text(said, PatientIdentifiers.from_dataset(_patient()))
    assert cleaned.startswith("patient ") and cleaned.endswith(" conflicts with existing record"), cleaned
    for secret in ("doe", "jane", "marie", "janine", "muller", "px-1234", "old-777", "xr-42", "acc-9001", "1937"):
        assert secret not in cleaned.lower(), cleaned
    assert "<patient-" in cleaned or "<birth-date>" in cleaned


def test_a_peers_words_keep_what_is_not_the_patient() -> None:
    ids = PatientIdentifiers.from_dataset(_patient())
    said = "record of Doeson refused (0xA900, DR): value 'Smith^Ann'\x00\n\tduplicate; PatientName=Smith"
    cleaned = clean_peer_text(said, ids)
    assert cleaned == "record of Doeson refused (0xA900, DR): value <redacted> duplicate; PatientName=<redacted>", cleaned
    long = clean_peer_text("Jane " + "x" * 2000, ids)
    assert len(long) == 1024 and long.startswith("<patient-name> xxx") and long.endswith("…")
    assert clean_peer_text(None, ids) == "" and clean_peer_text(b"DOE", ids) == "<patient-name>"
    assert PatientIdentifiers.from_dataset(Dataset()).redact("Doe") == "Doe"  # no patient module: nothing known


class _Bare(logging.Handler):
    """A handler as an embedding application adds one: no RedactingFilter of its own."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


def test_pynetdicom_handler_exceptions_are_redacted_without_setup_logging(tmp_path: Path) -> None:
    """pynetdicom logs an exception of a notification handler at ERROR, with its traceback; the library's
    loggers redact it themselves, whichever handler writes it (here a bare one; no setup_logging)."""
    silence_pynetdicom()
    bare = _Bare()
    root = logging.getLogger()
    root.addHandler(bare)

    def on_store(event):  # type: ignore[no-untyped-def]
        ds = event.dataset
        raise ValueError(f"cannot file {str(ds.PatientName)!r}, PatientID={ds.PatientID}")

    ae = AE(ae_title="FAULTY")
    ae.add_supported_context(NuclearMedicineImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        ds = nm_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", patient_name="Doe^Jane", patient_id="PX-1234")
        path = tmp_path / "nm.dcm"
        ds.save_as(path, enforce_file_format=True)
        pynetdicom_store(port, "FAULTY", [path])
    finally:
        server.shutdown()
        root.removeHandler(bare)
    text = "\n".join(bare.lines)
    assert "Exception in handler bound to" in text and "ValueError: cannot file" in text, text
    assert "Doe" not in text and "PX-1234" not in text, text

    # while a sender works on a study, its identifiers are out of every record, unquoted ones too
    root.addHandler(bare)
    try:
        with PatientIdentifiers.from_dataset(_patient()).active():
            logging.getLogger("pynetdicom.association").error("peer closed on Jane Doe, 1937-04-12, PX-1234")
        logging.getLogger("pynetdicom.association").error("after the send: Jane")
    finally:
        root.removeHandler(bare)
    assert bare.lines[-2] == "peer closed on <patient-name>, <birth-date>, <patient-id>", bare.lines[-2]
    assert bare.lines[-1] == "after the send: Jane"
