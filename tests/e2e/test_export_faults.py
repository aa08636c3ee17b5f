"""Export faults: a destination that is down, and one that refuses for good.

The node has two destinations: Orthanc, not started yet (connection refused:
transient, retried with backoff, sent when Orthanc comes up), and a pynetdicom
SCP in this process answering every C-STORE with 0xA900 (permanent: dead
letter after one attempt, shown by ``cardionode status``, not retried).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network


def test_destination_down_then_up_and_permanent_refusal(tmp_path: Path, seed: int) -> None:
    refused: list[str] = []

    def refuse(event):  # type: ignore[no-untyped-def]
        refused.append(str(event.request.AffectedSOPInstanceUID))
        return 0xA900

    rejecter = AE(ae_title="REJECTER")
    rejecter.supported_contexts = AllStoragePresentationContexts
    rejecter_port = free_port()
    server = rejecter.start_server(("127.0.0.1", rejecter_port), block=False,
                                   evt_handlers=[(evt.EVT_C_STORE, refuse)])
    orthanc = Orthanc(tmp_path / "orthanc")  # ports chosen, not started: the destination is down
    node_port = free_port()
    destinations = [
        {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "rejecter", "ae_title": "REJECTER", "host": "127.0.0.1", "port": rejecter_port},
    ]
    settings = serve_settings(tmp_path / "data", node_port, destinations,
                             send_retry={"initial_s": 1.0, "max_s": 2.0, "max_attempts": 100})
    config = write_config(tmp_path / "node.toml", **settings)
    node = NodeProcess(config, node_port, tmp_path / "node-stdout.log", mode="serve")
    try:
        node.start()
        study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
        storescu(node_port, files, check=True)

        def status() -> str:
            return node.cli("status").stdout

        wait_for(lambda: "retrying" in status() and "dead_letter" in status(), 60,
                 "a retrying send (pacs down) and a dead letter (rejecter)")
        time.sleep(4)  # several retry periods: the dead letters must not be retried
        assert len(refused) == 2, f"seed {seed}: the rejecter got {len(refused)} attempts for 2 objects"
        lines = [line for line in status().splitlines() if " rejecter " in line]
        assert len(lines) == 2 and all("dead_letter" in line and "0xA900" in line for line in lines), lines

        orthanc.start()  # the destination comes back
        results = wait_for(lambda: len(orthanc.results(study_uid)) >= 2 and orthanc.results(study_uid), 30,
                           f"results in Orthanc after it came back (seed {seed})")
        assert sorted(r["modality"] for r in results) == ["OT", "SR"]
        pacs_lines = wait_for(lambda: [line for line in status().splitlines() if " pacs " in line
                                       and " sent " in line], 20, "the pacs sends to be marked sent")
        assert len(pacs_lines) == 2
        assert len(refused) == 2
    finally:
        node.stop()
        orthanc.stop()
        server.shutdown()
