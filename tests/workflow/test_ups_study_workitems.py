"""A UPS work item per study processed from plain C-STORE (``[ups] study_workitems``), through ``cardionode serve``:
a global watcher sees the study arrive (SCHEDULED, INCOMPLETE), the completeness decision (READY), the node's claim
and progress, and the end: COMPLETED with the results the destination acknowledged in the Output Information
Sequence, or CANCELED with a discontinuation reason when a destination refused them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from node.workflow.study_workitems import workitem_uid
from tests.support.config import serve_settings, write_config
from tests.support.destination import Destination
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for
from tests.support.ups import GLOBAL, PUSH, WATCH, EventWatcher, run_pynetdicom

pytestmark = [pytest.mark.network, pytest.mark.slow]  # about 40 s: a node with a worker, one study each


def _serve(tmp_path: Path, watcher: EventWatcher, destination: Destination) -> tuple[NodeProcess, int]:
    port = free_port()
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", port, [destination.as_setting("archive")],
        ups={"event_receivers": [watcher.receiver(fallback=False)]}))
    return NodeProcess(config, port, tmp_path / "node-stdout.log", mode="serve"), port


@pytest.mark.parametrize("accepted", [True, False], ids=["results acknowledged", "results refused"])
def test_a_stored_study_gets_a_work_item_that_watchers_follow(tmp_path: Path, seed: int, accepted: bool) -> None:
    study = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=32)
    with Destination("ARCHIVE", refusing=not accepted) as destination:
        watcher = EventWatcher("WATCHER")
        node, port = _serve(tmp_path, watcher, destination)
        try:
            node.start()
            subscribed = run_pynetdicom(port, [{"op": "action", "uid": GLOBAL, "action": 3, "meta": WATCH,
                                                "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "TRUE"}}])
            assert subscribed[0]["status"] == 0
            storescu(port, study.paths, check=True)
            uid = workitem_uid(study.study_uid, 1)
            final = "COMPLETED" if accepted else "CANCELED"
            watcher.wait(uid, 1, timeout_s=120)
            wait_for(lambda: any(info.get("ProcedureStepState") == final for _, _, info in watcher.of(uid)), 120,
                     f"the work item to be {final}")
            events = watcher.of(uid)
            kinds = [(e, info.get("ProcedureStepState"), info.get("InputReadinessState")) for e, _, info in events]
            assert kinds[0] == (1, "SCHEDULED", "INCOMPLETE")
            assert (1, "SCHEDULED", "READY") in kinds  # the completeness decision
            assert kinds.index((1, "SCHEDULED", "READY")) < kinds.index((1, "IN PROGRESS", "READY"))
            assert kinds[-1] == (1, final, "READY")
            assert any(e == 3 for e, _, _ in kinds)  # progress
            got = run_pynetdicom(port, [{"op": "get", "uid": uid, "meta": PUSH, "attributes": [
                "InputInformationSequence", "UnifiedProcedureStepPerformedProcedureSequence",
                "ProcedureStepProgressInformationSequence", "StudyInstanceUID", "ProcedureStepState"]}])[0]
            assert got["status"] == 0 and got["dataset"]["StudyInstanceUID"] == study.study_uid
            inputs = got["dataset"]["InputInformationSequence"]
            assert sorted(r["ReferencedSOPInstanceUID"] for item in inputs for r in item["ReferencedSOPSequence"]) == \
                sorted(str(dcmread(p).SOPInstanceUID) for p in study.paths)
            if accepted:
                (performed,) = got["dataset"]["UnifiedProcedureStepPerformedProcedureSequence"]
                listed = [r["ReferencedSOPInstanceUID"] for item in performed["OutputInformationSequence"]
                          for r in item["ReferencedSOPSequence"]]
                assert sorted(listed) == sorted(destination.stored) and listed
                assert {item["DICOMRetrievalSequence"][0]["RetrieveAETitle"]
                        for item in performed["OutputInformationSequence"]} == {"ARCHIVE"}
            else:
                (progress,) = got["dataset"]["ProcedureStepProgressInformationSequence"]
                assert progress["ProcedureStepDiscontinuationReasonCodeSequence"][0]["CodeValue"] == "110513"
            status = node.cli("status")
            assert uid in status.stdout and final in status.stdout
        finally:
            node.stop()
            watcher.stop()
