"""The listener as its own process: SIGKILL mid-transfer loses nothing acknowledged; logs carry no patient data."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from node.ledger import Ledger
from tests.support.config import listener_config
from tests.support.dicom_clients import CALLING_AE, acknowledged_files, encode, send_raw, storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess, assert_acknowledged_kept

pytestmark = pytest.mark.network


def test_sigkill_mid_transfer_loses_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    files = write_nm_study(tmp_path / "study", 200, seed, size=64).paths
    config, port = listener_config(tmp_path)
    node = NodeProcess(config, port, mode="listener").start()
    # dcmtk's default environment (Nagle on): tens of ms per instance, so the kill surely lands mid-transfer
    sender = subprocess.Popen(
        ["storescu", "-v", "-R", "-aet", CALLING_AE, "-aec", "CARDIONODE", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert sender.stderr is not None
    lines: list[str] = []
    killed = threading.Event()
    successes = 0
    for line in sender.stderr:
        lines.append(line)
        if "Received Store Response (Success)" in line:
            successes += 1
            if successes == 60 and not killed.is_set():
                node.kill()
                killed.set()
    sender.wait(60)
    assert killed.is_set(), f"seed {seed}: transfer ended before the kill"
    acked = acknowledged_files("".join(lines))
    assert 60 <= len(acked) < 200, f"seed {seed}: {len(acked)} acknowledged"

    with NodeProcess(config, port, mode="listener") as restarted:
        assert_acknowledged_kept(tmp_path / "var", acked, seed)
        ledger = Ledger(f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite'}")
        assert not list((tmp_path / "var" / "spool").rglob("*.partial")), "partial files left after restart"
        # the sender tries again: everything ends stored exactly once
        again = storescu(restarted.port, files)
        assert again.returncode == 0, again.stderr[-2000:]
        assert ledger.instances.count() == 200
        assert len(list((tmp_path / "var" / "spool").rglob("*.dcm"))) == 200
        ledger.close()


def test_no_patient_identifiers_in_logs_or_audit(tmp_path: Path, seed: int) -> None:
    name, patient_id, birth = f"Zyxwvut{seed}^Quintessa", f"PID-{seed}-XQ", "19370412"
    files = write_nm_study(tmp_path / "study", 3, seed, patient_name=name, patient_id=patient_id, birth_date=birth).paths
    config, port = listener_config(tmp_path)
    with NodeProcess(config, port, mode="listener") as node:
        assert storescu(port, files).returncode == 0
        # a refused instance carrying the same identifiers goes through the failure paths
        bad = dcmread(files[0])
        bad.SOPInstanceUID = "1.2.3.4.99"
        bad.StudyInstanceUID = "1.2.not-a-uid"
        assert send_raw(port, str(bad.SOPClassUID), "1.2.3.4.99", encode(bad)) == 0xC001
        node_output = node.output()
    texts = {p: p.read_text(errors="replace") for p in (tmp_path / "var" / "logs").glob("*.log")}
    texts[tmp_path / "var" / "audit" / "audit.jsonl"] = (tmp_path / "var" / "audit" / "audit.jsonl").read_text()
    texts[tmp_path / "listener-output"] = node_output
    texts[tmp_path / "ledger"] = (tmp_path / "var" / "ledger.sqlite").read_bytes().decode("latin-1")
    assert any("association.released" in t for t in texts.values())
    for path, text in texts.items():
        for secret in (f"Zyxwvut{seed}", "Quintessa", patient_id, birth):
            assert secret not in text, f"{secret!r} found in {path}"
