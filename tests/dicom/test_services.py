"""A further DICOM service plugs into the listener beside Verification and Storage, the pynetdicom way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import UnifiedProcedureStepPull  # type: ignore[attr-defined]

from node.config import load_settings
from node.dicom.audit import AuditLog
from node.dicom.scp import DicomListener
from node.dicom.services import Peers
from node.ledger import Ledger
from node.pipelines.routing import routing_attributes
from tests.support.config import listener_config
from tests.support.dicom_clients import CALLING_AE, echoscu

pytestmark = pytest.mark.network


class WorkItemsForTest:
    """A stand-in for a UPS SCP: N-GET of any work item answers SCHEDULED and counts it."""

    counters = ("work_items_read",)

    def __init__(self) -> None:
        self.prepared = False
        self.peers: Peers | None = None

    def contexts(self) -> list[PresentationContext]:
        return [build_context(UnifiedProcedureStepPull)]

    def handlers(self, peers: Peers) -> list[evt.EventHandlerType]:
        self.peers = peers
        return [(evt.EVT_N_GET, self._on_get)]

    def prepare(self) -> None:
        self.prepared = True

    def _on_get(self, event: evt.Event) -> tuple[int, Dataset]:
        assert self.peers is not None
        peer = self.peers.get(event.assoc)
        assert peer is not None and peer.calling_ae == CALLING_AE
        peer.count("work_items_read")
        ds = Dataset()
        ds.ProcedureStepState = "SCHEDULED"
        return 0x0000, ds


def test_a_further_service_is_offered_beside_verification_and_storage(tmp_path: Path) -> None:
    config, _ = listener_config(tmp_path, port=0)
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    work_items = WorkItemsForTest()
    with AuditLog(settings.audit_log_path, durable=False) as audit:
        listener = DicomListener(settings, ledger, routing_attributes, audit=audit, services=[work_items])
        listener.start()
        try:
            assert work_items.prepared
            ae = AE(ae_title=CALLING_AE)
            ae.add_requested_context(UnifiedProcedureStepPull)
            assoc = ae.associate("127.0.0.1", listener.port, ae_title="CARDIONODE")
            assert assoc.is_established
            status, attributes = assoc.send_n_get([0x00741000], UnifiedProcedureStepPull, "1.2.3.4")
            assoc.release()
            assert status.Status == 0x0000 and attributes.ProcedureStepState == "SCHEDULED"
            assert echoscu(listener.port).returncode == 0  # Verification is still offered
        finally:
            listener.stop()
            ledger.close()
    events = [json.loads(line) for line in settings.audit_log_path.read_text().splitlines()]
    released = [e for e in events if e["event"] == "association.released"]
    assert [(e["stored"], e["work_items_read"]) for e in released] == [(0, 1), (0, 0)]
