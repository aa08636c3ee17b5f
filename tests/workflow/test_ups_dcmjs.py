"""The same UPS vectors as ``test_ups_state_table.py``, sent by npm ``dcmjs-dimse`` 0.3.3: an independent
DIMSE implementation (its own encoder, decoder and association handling, nothing of pynetdicom), so the
node's encoding of every response is read by code nobody here wrote.

Installed by ``.ci/run`` (``npm ci --prefix tests/support/js``); skipped when it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ups import (
    GLOBAL,
    PULL,
    PUSH,
    WATCH,
    DcmjsEventReceiver,
    EventWatcher,
    UpsNode,
    final_attributes,
    new_uid,
    require_dcmjs,
    run_dcmjs,
    ups_node,
    workitem,
)
from tests.workflow.test_ups_state_table import PERFORMER, TABLE_CC_1_1_2, VECTORS, run_vector_results


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpsNode]:
    require_dcmjs()
    receivers = [{"ae_title": PERFORMER, "host": "127.0.0.1", "port": 9, "fallback": False}]
    running = ups_node(tmp_path_factory.mktemp("ups-dcmjs"), receivers)
    yield running
    running.stop()


def test_every_vector_with_dcmjs_dimse(node: UpsNode, tmp_path: Path) -> None:
    """Every cell of Table CC.1.1-2 and every service vector, all on one dcmjs-dimse association."""
    requests = [step for vector in VECTORS for step in vector.requests]
    results = run_dcmjs(node.port, requests, tmp_path, calling=PERFORMER, timeout_s=240)
    assert len(results) == len(requests)
    problems, at = [], 0
    for vector in VECTORS:
        problems += run_vector_results(results[at:at + len(vector.requests)], vector)
        at += len(vector.requests)
    assert problems == []
    assert len([v for v in VECTORS if "@" in v.name]) == sum(len(r) for r in TABLE_CC_1_1_2.values()) + 2


def test_dcmjs_reads_the_ups_and_its_c_find_answers(node: UpsNode, tmp_path: Path) -> None:
    uid, tx = new_uid(), new_uid()
    results = run_dcmjs(node.port, [
        {"op": "create", "uid": uid, "dataset": workitem(ProcedureStepLabel="dcmjs reads this")},
        {"op": "action", "uid": uid, "action": 1, "meta": PULL,
         "dataset": {"ProcedureStepState": "IN PROGRESS", "TransactionUID": tx}},
        {"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(tx)},
        {"op": "get", "uid": uid, "meta": PULL, "attributes": [
            "ProcedureStepLabel", "ProcedureStepState", "TransactionUID", "UnifiedProcedureStepPerformedProcedureSequence"]},
        {"op": "find", "sopClass": PULL, "dataset": {"SOPInstanceUID": uid, "ProcedureStepState": "",
                                                     "ScheduledWorkitemCodeSequence": []}},
    ], tmp_path, calling=PERFORMER)
    assert [r["status"] for r in results] == [0, 0, 0, 0, 0]
    got = results[3]["dataset"]
    assert got["ProcedureStepLabel"] == "dcmjs reads this" and got["ProcedureStepState"] == "IN PROGRESS"
    assert "TransactionUID" not in got
    performed = got["UnifiedProcedureStepPerformedProcedureSequence"][0]
    assert performed["PerformedWorkitemCodeSequence"][0]["CodeValue"] == "110003"
    (match,) = results[4]["matches"]
    assert match["SOPInstanceUID"] == uid and match["ProcedureStepState"] == "IN PROGRESS"
    assert match["ScheduledWorkitemCodeSequence"][0]["CodeMeaning"] == "Computer Aided Diagnosis"


def test_a_dcmjs_claim_is_reported_to_a_watcher(tmp_path: Path) -> None:
    require_dcmjs()
    watcher = EventWatcher("WATCHER")
    node = ups_node(tmp_path, [watcher.receiver(fallback=False)])
    try:
        uid, tx = new_uid(), new_uid()
        results = run_dcmjs(node.port, [
            {"op": "create", "uid": uid, "dataset": workitem()},
            {"op": "action", "uid": uid, "action": 3, "meta": "1.2.840.10008.5.1.4.34.6.2",
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "FALSE"}},
            {"op": "action", "uid": uid, "action": 1, "meta": PULL,
             "dataset": {"ProcedureStepState": "IN PROGRESS", "TransactionUID": tx}},
        ], tmp_path)
        assert [r["status"] for r in results] == [0, 0, 0]
        assert [(e[0], e[2]["ProcedureStepState"]) for e in watcher.wait(uid, 2)] == [(1, "SCHEDULED"), (1, "IN PROGRESS")]
    finally:
        node.stop()
        watcher.stop()


def test_the_node_s_event_reports_decoded_by_dcmjs(tmp_path: Path) -> None:
    """The node's N-EVENT-REPORTs (UPS Event SOP class as SCU) read by dcmjs-dimse's decoder: State Reports,
    Progress, Cancel Requested with its Requesting AE, and SCP Status Change at the start."""
    require_dcmjs()
    receiver = DcmjsEventReceiver("JSWATCH")
    node = ups_node(tmp_path, [receiver.receiver()])
    try:
        status_change = receiver.wait(GLOBAL, 1)[0]
        assert status_change[0] == 4 and status_change[2]["SCPStatus"] == "RESTARTED"
        uid, tx = new_uid(), new_uid()
        results = run_dcmjs(node.port, [
            {"op": "action", "uid": uid, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "JSWATCH", "DeletionLock": "FALSE"}},  # no such UPS yet: C307
            {"op": "action", "uid": GLOBAL, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "JSWATCH", "DeletionLock": "FALSE"}},
            {"op": "create", "uid": uid, "dataset": workitem()},
            {"op": "action", "uid": uid, "action": 1, "meta": PULL,
             "dataset": {"ProcedureStepState": "IN PROGRESS", "TransactionUID": tx}},
            {"op": "set", "uid": uid, "meta": PULL, "dataset": {"TransactionUID": tx, "ProcedureStepProgressInformationSequence": [
                {"ProcedureStepProgress": "60", "ProcedureStepProgressDescription": "predicting"}]}},
            {"op": "action", "uid": uid, "action": 2, "meta": WATCH,
             "dataset": {"ReasonForCancellation": "patient left", "ContactDisplayName": "Reading room"}},
        ], tmp_path, calling="JSWATCH")
        assert [r["status"] for r in results] == [0xC307, 0, 0, 0, 0, 0]
        assert results[0]["errorComment"]  # a refusal says why (UIDs and attribute names only)
        events = receiver.wait(uid, 4)
        assert [(e[0], e[2].get("ProcedureStepState")) for e in events] == [
            (1, "SCHEDULED"), (1, "IN PROGRESS"), (3, None), (2, None)]
        progress = events[2][2]["ProcedureStepProgressInformationSequence"][0]
        assert float(progress["ProcedureStepProgress"]) == 60 and progress["ProcedureStepProgressDescription"] == "predicting"
        requested = events[3][2]  # the performer (globally subscribed) hears the cancel request
        assert requested["RequestingAE"] == "JSWATCH" and requested["ReasonForCancellation"] == "patient left"
        assert requested["ContactDisplayName"] == "Reading room"
        assert set(receiver.classes) == {PUSH}  # CC.2.4.3: the Affected SOP Class of every report is UPS Push
    finally:
        node.stop()
        receiver.stop()
