"""Patient data that destinations echo back stays out of logs, audit, ledger and status (issue 21, defect 3).

``cardionode serve`` (a subprocess) processes a synthetic NM study with the flow test
pipeline and sends its two results to three destinations run by this test: one that
refuses every C-STORE (0xA900 for the image, 0xC000 for the SR) with an Error Comment
echoing the patient's name, ID and birth date in several spellings, one that answers
0xA700 (out of resources: retried, then given up) with such a comment, and one that
rejects the association. Once every send is dead-lettered, the patient's identifiers
appear in the outbox (they must: the results carry the patient module) and nowhere
else: not in the node's log files or standard output/error, the audit log, any text
column of the ledger (the protected ``sends.peer_text`` holds the comments with the
patient's identifiers replaced), nor in ``cardionode status`` or ``status --peer-text``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import PATIENT_BIRTH_DATE, PATIENT_ID, write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for

pytestmark = [pytest.mark.network]

#: the synthetic patient (tests.support.nm), as the test looks for it (case-insensitive)
NEEDLES = ("quillfeather", "zebedee", PATIENT_ID.lower(), PATIENT_BIRTH_DATE, "1937-09-14")

#: Error Comments (LO: at most 64 characters) that echo the patient in the spellings peers use
COMMENTS = {
    0xA900: "patient QUILLFEATHER^ZEBEDEE conflicts with existing record",
    0xC000: f"{PATIENT_ID} born 1937-09-14: Zebedee Quillfeather mismatch",
    0xA700: f"busy with zebedee quillfeather {PATIENT_BIRTH_DATE} id {PATIENT_ID}",
}


def _failing_destinations() -> tuple[list[object], list[dict[str, object]], list[int]]:
    """(servers, destination settings, statuses answered) of the three failing destinations."""
    answered: list[int] = []

    def answer(busy: bool):  # type: ignore[no-untyped-def]
        def on_store(event):  # type: ignore[no-untyped-def]
            status = 0xA700 if busy else (0xC000 if event.dataset.Modality == "SR" else 0xA900)
            answered.append(status)
            rsp = Dataset()
            rsp.Status, rsp.ErrorComment = status, COMMENTS[status]
            return rsp
        return on_store

    servers: list[object] = []
    destinations: list[dict[str, object]] = []
    for name, handler in (("refuser", answer(False)), ("busy", answer(True)), ("rejecter", None)):
        ae = AE(ae_title=name.upper())
        ae.supported_contexts = AllStoragePresentationContexts
        if handler is None:
            ae.require_calling_aet = ["NOBODY"]  # A-ASSOCIATE-RJ: calling AE title not recognised
        port = free_port()
        handlers = [(evt.EVT_C_STORE, handler)] if handler is not None else []
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        destinations.append({"name": name, "ae_title": name.upper(), "host": "127.0.0.1", "port": port})
    return servers, destinations, answered


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [needle for needle in NEEDLES if needle in lowered]


def _ledger_leaks(path: Path) -> list[str]:
    """``table.column: needles`` for every text value of the ledger holding patient data, but ``sends.peer_text``."""
    found: list[str] = []
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (names from sqlite_master)
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row):
                    if (table, column) == ("sends", "peer_text"):
                        continue
                    leaks = _leaks(value.decode("latin-1") if isinstance(value, bytes) else str(value))
                    if leaks:
                        found.append(f"{table}.{column}: {leaks}")
    return found


def test_destination_echoing_patient_data_leaves_it_only_in_the_outbox(tmp_path: Path, seed: int) -> None:
    servers, destinations, answered = _failing_destinations()
    node_port = free_port()
    data = tmp_path / "data"
    settings = serve_settings(data, node_port, destinations,
                              send_retry={"initial_s": 0.5, "max_s": 1.0, "max_attempts": 3})
    config = write_config(tmp_path / "node.toml", **settings)
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    try:
        node.start()
        _, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
        storescu(node_port, files, check=True)

        def dead_letters() -> int:
            return sum(" dead_letter " in line for line in node.cli("status").stdout.splitlines())

        wait_for(lambda: dead_letters() == 6, 90, f"2 results x 3 destinations dead-lettered (seed {seed})", 0.5)
        status = node.cli("status")
        shown = node.cli("status", "--peer-text")
    finally:
        node.stop()
        for server in servers:
            server.shutdown()

    # the destinations did answer with the patient's data, and the outbox does hold it
    assert {0xA900, 0xC000, 0xA700} <= set(answered), f"seed {seed}: {answered}"
    outbox = sorted((data / "outbox").rglob("*.dcm"))
    assert outbox and all(PATIENT_ID.encode() in p.read_bytes() for p in outbox), outbox

    places = {"node stdout/stderr": tmp_path / "node-stdout.log",
              **{f"log {p.name}": p for p in sorted((data / "logs").glob("*.log"))},
              **{f"audit {p.name}": p for p in sorted((data / "audit").glob("*"))}}
    assert any(p.name == "node.log" for p in (data / "logs").glob("*.log"))
    for what, path in places.items():
        assert not _leaks(path.read_text(errors="replace")), f"seed {seed}: {_leaks(path.read_text())} in {what}"
    assert not _leaks(status.stdout + status.stderr), f"seed {seed}: status shows {_leaks(status.stdout)}"
    assert status.returncode == 0 and "--peer-text" in status.stdout  # the operator is told where the text is
    assert not _ledger_leaks(data / "ledger.sqlite"), f"seed {seed}: {_ledger_leaks(data / 'ledger.sqlite')}"

    # on request, the destinations' words, with the patient's identifiers replaced
    assert shown.returncode == 0, shown.stderr
    assert not _leaks(shown.stdout + shown.stderr), f"seed {seed}: status --peer-text shows {_leaks(shown.stdout)}"
    assert "conflicts with existing record" in shown.stdout and "<patient-name>" in shown.stdout
    assert "<patient-id>" in shown.stdout and "<birth-date>" in shown.stdout
    audit = "".join(p.read_text() for p in (data / "audit").glob("*"))
    assert "admin.peer_text_shown" in audit
