"""Log redaction and the audit log."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import pytest

from node.dicom.audit import AuditLog
from node.dicom.logs import hash_identifier, redact, setup_logging


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
    with AuditLog(path) as audit:  # reopening appends
        audit.record("association.accepted", calling_ae="PACS", study_uid="1.2.3")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 201
    assert lines[-1]["event"] == "association.accepted" and lines[-1]["at"].endswith("+00:00")
    assert "Doe" not in path.read_text()
