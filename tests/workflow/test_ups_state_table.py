"""The node's UPS SCP against DICOM PS3.4 Annex CC, over real associations with pynetdicom as SCU.

The expected statuses are the standard's, written here as data (Table CC.1.1-2, every row and column;
the N-CREATE, N-SET, N-GET and subscription statuses of CC.2.3.4, CC.2.5.4, CC.2.6.4, CC.2.7.4), not
taken from the node. Each vector is the requests that bring a new UPS into the column's state, the
request of the row, and an N-GET of the state afterwards. ``tests/workflow/test_ups_dcmjs.py`` sends
the same vectors with dcmjs-dimse. Event reports are tested here too (pynetdicom Event SCP).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ups import (
    FILTERED,
    GLOBAL,
    PULL,
    PUSH,
    QUERY,
    WATCH,
    EventWatcher,
    UpsNode,
    cancel_attributes,
    dataset_from,
    final_attributes,
    new_uid,
    run_pynetdicom,
    ups_node,
    workitem,
)

ABSENT, S, IP, C, X = "absent", "SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"
COLUMNS = (ABSENT, S, IP, C, X)
#: "final": the status depends on the final-state requirements (0000 when met, C304 otherwise): two vectors
FINAL = "final"

#: PS3.4 Table CC.1.1-2 (rows: the request; columns: the UPS does not exist, SCHEDULED, IN PROGRESS,
#: COMPLETED, CANCELED). The absent column of N-CREATE is the creation itself (0000).
TABLE_CC_1_1_2: dict[str, tuple[int | str, ...]] = {
    "create": (0x0000, 0x0111, 0x0111, 0x0111, 0x0111),
    "in-progress/correct": (0xC307, 0x0000, 0xC302, 0xC300, 0xC300),
    "in-progress/incorrect": (0xC307, 0xC301, 0xC301, 0xC301, 0xC301),
    "scheduled": (0xC307, 0xC303, 0xC303, 0xC303, 0xC303),
    "completed/correct": (0xC307, 0xC310, FINAL, 0xB306, 0xC300),
    "completed/incorrect": (0xC307, 0xC301, 0xC301, 0xC301, 0xC301),
    "request-cancel": (0xC307, 0x0000, 0x0000, 0xC311, 0xB304),
    "canceled/correct": (0xC307, 0xC310, FINAL, 0xC300, 0xB304),
    "canceled/incorrect": (0xC307, 0xC301, 0xC301, 0xC301, 0xC301),
}
#: the state after a cell that changes it (the table's "Change State to ..."), else the state stays
STATE_AFTER = {
    ("create", ABSENT): S,
    ("in-progress/correct", S): IP,
    ("request-cancel", S): X,  # through IN PROGRESS, "two State Reports"
    ("completed/correct", IP): C,
    ("canceled/correct", IP): X,
}
PERFORMER = "PERFORMER"  # the calling AE title of every vector (it claims, so it is the performer)


@dataclass(frozen=True)
class Vector:
    """Requests and, for each, the status expected; ``state``: the UPS's state at the end (None: absent)."""

    name: str
    uid: str
    requests: list[dict[str, Any]]
    statuses: list[int]
    state: str | None


def _claim(uid: str, tx: str) -> dict[str, Any]:
    return {"op": "action", "uid": uid, "action": 1, "meta": PULL,
            "dataset": {"ProcedureStepState": IP, "TransactionUID": tx}}


def _change(uid: str, state: str, tx: str | None) -> dict[str, Any]:
    ds: dict[str, Any] = {"ProcedureStepState": state}
    if tx is not None:
        ds["TransactionUID"] = tx
    return {"op": "action", "uid": uid, "action": 1, "meta": PULL, "dataset": ds}


def _setup(uid: str, tx: str, state: str) -> list[dict[str, Any]]:
    """The requests that bring the new UPS ``uid`` to ``state`` (claimed with ``tx``)."""
    if state == ABSENT:
        return []
    steps = [{"op": "create", "uid": uid, "dataset": workitem()}]
    if state in (IP, C, X):
        steps.append(_claim(uid, tx))
    if state == C:
        steps += [{"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(tx)}, _change(uid, C, tx)]
    if state == X:
        steps += [{"op": "set", "uid": uid, "meta": PULL, "dataset": cancel_attributes(tx)}, _change(uid, X, tx)]
    return steps


def _request(row: str, uid: str, tx: str, state: str) -> dict[str, Any]:
    """The row's request on a UPS in ``state``. "Correct" Transaction UID: the one it was claimed with (any
    new one for a SCHEDULED or absent UPS, which has none); "incorrect": none for a SCHEDULED or absent UPS,
    another one otherwise."""
    claimed = state in (IP, C, X)
    correct = tx if claimed else new_uid()
    incorrect = new_uid() if claimed else None
    if row == "create":
        return {"op": "create", "uid": uid, "dataset": workitem()}
    if row == "scheduled":
        return _change(uid, S, correct)
    if row == "request-cancel":
        return {"op": "action", "uid": uid, "action": 2, "meta": WATCH,
                "dataset": {"ReasonForCancellation": "requested by the test"}}
    target, which = row.split("/")
    state_name = {"in-progress": IP, "completed": C, "canceled": X}[target]
    return _change(uid, state_name, correct if which == "correct" else incorrect)


def _get_state(uid: str) -> dict[str, Any]:
    return {"op": "get", "uid": uid, "meta": PULL, "attributes": ["ProcedureStepState", "SOPInstanceUID"]}


def _vector(row: str, column: str, final_met: bool | None = None) -> Vector:
    uid, tx = new_uid(), new_uid()
    steps = _setup(uid, tx, column)
    expected = TABLE_CC_1_1_2[row][COLUMNS.index(column)]
    after = STATE_AFTER.get((row, column), None if column == ABSENT else column)
    name = f"{row}@{column}"
    if expected == FINAL:
        name += "/requirements met" if final_met else "/requirements not met"
        if final_met:
            attributes = final_attributes(tx) if row.startswith("completed") else cancel_attributes(tx)
            steps.append({"op": "set", "uid": uid, "meta": PULL, "dataset": attributes})
            expected = 0x0000
        else:
            expected, after = 0xC304, IP
    if row == "request-cancel" and column == IP:
        # the performer (this AE) watches its UPS, so the SCP can tell it of the request
        steps.append({"op": "action", "uid": uid, "action": 3, "meta": WATCH,
                      "dataset": {"ReceivingAE": PERFORMER, "DeletionLock": "FALSE"}})
    statuses = [0x0000] * len(steps)
    steps.append(_request(row, uid, tx, column))
    statuses.append(int(expected))
    if after is not None:
        steps.append(_get_state(uid))
        statuses.append(0x0000)
    else:
        steps.append(_get_state(uid))
        statuses.append(0xC307)
    return Vector(name, uid, steps, statuses, after)


def state_table_vectors() -> list[Vector]:
    """Every cell of Table CC.1.1-2; the final-state cells twice (requirements met and not)."""
    out = []
    for row, cells in TABLE_CC_1_1_2.items():
        for column, cell in zip(COLUMNS, cells, strict=True):
            if cell == FINAL:
                out += [_vector(row, column, True), _vector(row, column, False)]
            else:
                out.append(_vector(row, column))
    return out


def _one(name: str, steps: list[dict[str, Any]], statuses: list[int], uid: str, state: str | None) -> Vector:
    return Vector(name, uid, steps, statuses, state)


def service_vectors() -> list[Vector]:
    """N-CREATE content, N-SET, N-GET, subscriptions, SOP class and C-FIND vectors (CC.2.3-CC.2.8)."""
    out: list[Vector] = []

    def create(name: str, ds: dict[str, Any], status: int) -> None:
        uid = new_uid()
        out.append(_one(f"N-CREATE {name}", [{"op": "create", "uid": uid, "dataset": ds}, _get_state(uid)],
                        [status, 0x0000 if status in (0x0000, 0xB300) else 0xC307], uid,
                        S if status in (0x0000, 0xB300) else None))

    create("complete request", workitem(), 0x0000)
    create("state not SCHEDULED (C309)", workitem(ProcedureStepState=IP), 0xC309)
    create("type 1 Procedure Step Label missing (0120)", workitem(ProcedureStepLabel=None), 0x0120)
    create("type 1 Input Readiness State empty (0121)", workitem(InputReadinessState=""), 0x0121)
    create("priority not HIGH/MEDIUM/LOW (0106)", workitem(ScheduledProcedureStepPriority="URGENT"), 0x0106)
    create("type 2 Input Information Sequence missing (B300)", workitem(InputInformationSequence=None), 0xB300)
    create("Transaction UID given at creation (B300)", workitem(TransactionUID=new_uid()), 0xB300)

    def sequence(name: str, state: str, request: dict[str, Any], status: int, after: str | None, tx: str,
                 uid: str) -> None:
        steps = [*_setup(uid, tx, state), request, _get_state(uid)]
        statuses = [0x0000] * (len(steps) - 2) + [status, 0x0000 if after else 0xC307]
        out.append(_one(name, steps, statuses, uid, after))

    def n_set(name: str, state: str, ds: dict[str, Any], status: int) -> None:
        uid, tx = new_uid(), new_uid()
        ds = {k: (tx if v == "<tx>" else v) for k, v in ds.items()}
        after = None if state == ABSENT else state
        sequence(f"N-SET {name}", state, {"op": "set", "uid": uid, "meta": PULL, "dataset": ds}, status, after, tx, uid)

    progress = {"ProcedureStepProgressInformationSequence": [{"ProcedureStepProgress": "40",
                                                              "ProcedureStepProgressDescription": "quantified"}]}
    n_set("of no UPS (C307)", ABSENT, {"CommentsOnTheScheduledProcedureStep": "x"}, 0xC307)
    n_set("SCHEDULED without Transaction UID (0000)", S, {"CommentsOnTheScheduledProcedureStep": "x"}, 0x0000)
    n_set("SCHEDULED with a Transaction UID (C310)", S, {"TransactionUID": "<tx>", **progress}, 0xC310)
    n_set("IN PROGRESS without Transaction UID (C301)", IP, progress, 0xC301)
    n_set("IN PROGRESS with another Transaction UID (C301)", IP, {"TransactionUID": new_uid(), **progress}, 0xC301)
    n_set("IN PROGRESS with its Transaction UID (0000)", IP, {"TransactionUID": "<tx>", **progress}, 0x0000)
    n_set("IN PROGRESS setting Procedure Step State (0106)", IP, {"TransactionUID": "<tx>", "ProcedureStepState": C},
          0x0106)
    n_set("COMPLETED (C300)", C, {"TransactionUID": "<tx>", **progress}, 0xC300)
    n_set("CANCELED (C300)", X, {"TransactionUID": "<tx>", **progress}, 0xC300)

    uid = new_uid()
    sequence("N-GET of no UPS (C307)", ABSENT, _get_state(uid),
             0xC307, None, new_uid(), uid)

    def action(name: str, state: str, action_type: int, ds: dict[str, Any], status: int, *,
               target: str | None = None, meta: str = WATCH, klass: str | None = None) -> None:
        uid, tx = new_uid(), new_uid()
        request = {"op": "action", "uid": target or uid, "action": action_type, "meta": meta, "dataset": ds}
        if klass:
            request["requestedClass"] = klass
        sequence(name, state, request, status, None if state == ABSENT else state, tx, uid)

    action("subscribe to a UPS (0000)", S, 3, {"ReceivingAE": PERFORMER, "DeletionLock": "FALSE"}, 0x0000)
    action("subscribe to no UPS (C307)", ABSENT, 3, {"ReceivingAE": PERFORMER, "DeletionLock": "FALSE"}, 0xC307)
    action("subscribe an unknown Receiving AE (C308)", S, 3, {"ReceivingAE": "NOBODY", "DeletionLock": "FALSE"},
           0xC308)
    action("subscribe globally with lock (0000)", S, 3, {"ReceivingAE": PERFORMER, "DeletionLock": "TRUE"}, 0x0000,
           target=GLOBAL)
    action("subscribe filtered globally (0000)", S, 3, {"ReceivingAE": PERFORMER, "DeletionLock": "FALSE",
                                                         "WorklistLabel": "CARDIONODE"}, 0x0000, target=FILTERED)
    action("suspend a specific UPS's subscription (C314)", S, 5, {"ReceivingAE": PERFORMER}, 0xC314)
    action("unsubscribe globally (0000)", S, 4, {"ReceivingAE": PERFORMER}, 0x0000, target=GLOBAL)
    action("unsubscribe from no UPS (C307)", ABSENT, 4, {"ReceivingAE": PERFORMER}, 0xC307)
    action("request cancel, performer not subscribed (C312)", IP, 2, {"ReasonForCancellation": "x"}, 0xC312)
    action("unknown action type (0123)", S, 9, {"ReceivingAE": PERFORMER}, 0x0123)
    action("Change UPS State with Requested SOP Class Pull, not Push (0122)", S, 1,
           {"ProcedureStepState": IP, "TransactionUID": new_uid()}, 0x0122, meta=PULL, klass=PULL)
    return out


VECTORS = state_table_vectors() + service_vectors()


def run_vector_results(results: list[dict[str, Any]], vector: Vector) -> list[str]:
    """What differs between ``results`` of ``vector`` and what the standard expects (empty: nothing)."""
    problems = []
    got = [r["status"] for r in results]
    if got != vector.statuses:
        problems.append(f"{vector.name}: statuses {[f'{s:04X}' for s in got]}, "
                        f"expected {[f'{s:04X}' for s in vector.statuses]}")
    last = results[-1]
    if vector.state is not None and (last["dataset"] or {}).get("ProcedureStepState") != vector.state:
        problems.append(f"{vector.name}: state afterwards {(last['dataset'] or {}).get('ProcedureStepState')}, "
                        f"expected {vector.state}")
    return problems


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpsNode]:
    receivers = [{"ae_title": PERFORMER, "host": "127.0.0.1", "port": 9, "fallback": False}]  # port 9: nobody listens
    running = ups_node(tmp_path_factory.mktemp("ups"), receivers)
    yield running
    running.stop()


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_with_pynetdicom(node: UpsNode, vector: Vector) -> None:
    results = run_pynetdicom(node.port, vector.requests, calling=PERFORMER)
    assert run_vector_results(results, vector) == []


def test_the_table_covers_every_row_and_column() -> None:
    cells = {(v.name.split("@")[0], v.name.split("@")[1].split("/")[0]) for v in VECTORS if "@" in v.name}
    assert len(cells) == len(TABLE_CC_1_1_2) * len(COLUMNS) == 45


# ---------------------------------------------------------------------------- N-GET, C-FIND, events


def test_n_get_never_returns_the_transaction_uid_and_c_find_finds_on_every_model(node: UpsNode) -> None:
    uid, tx = new_uid(), new_uid()
    label = f"find me {uid[-8:]}"
    results = run_pynetdicom(node.port, [
        {"op": "create", "uid": uid, "dataset": workitem(ProcedureStepLabel=label)},
        _claim(uid, tx),
        {"op": "get", "uid": uid, "meta": PULL, "attributes": ["TransactionUID", "ProcedureStepState", "SOPClassUID"]},
        {"op": "get", "uid": uid, "meta": WATCH},
        *({"op": "find", "sopClass": model, "dataset": {"ProcedureStepLabel": "find me*", "SOPInstanceUID": uid,
                                                         "ProcedureStepState": "", "TransactionUID": ""}}
          for model in (PULL, WATCH, QUERY)),
        {"op": "find", "sopClass": PULL, "dataset": {"ProcedureStepState": S, "SOPInstanceUID": uid}},
        {"op": "find", "sopClass": PULL, "dataset": {
            "ScheduledProcedureStepStartDateTime": "20261207000000-20261207235959", "SOPInstanceUID": uid,
            "ScheduledWorkitemCodeSequence": [{"CodeValue": "110003"}]}},
    ], calling=PERFORMER)
    assert [r["status"] for r in results] == [0] * 9
    assert results[2]["dataset"] == {"SOPClassUID": PUSH, "ProcedureStepState": IP}
    assert "TransactionUID" not in results[3]["dataset"] and results[3]["dataset"]["ProcedureStepLabel"] == label
    for found in results[4:7]:
        # the Transaction UID asked for is neither matched nor returned (CC.2.8)
        assert found["matches"] == [{"ProcedureStepLabel": label, "SOPInstanceUID": uid, "ProcedureStepState": IP}]
    assert results[7]["matches"] == []  # it is IN PROGRESS now
    assert [m["SOPInstanceUID"] for m in results[8]["matches"]] == [uid]


def test_watchers_receive_state_progress_and_cancel_reports(tmp_path: Path) -> None:
    watcher, performer = EventWatcher("WATCHER"), EventWatcher("PERFORMER")
    node = ups_node(tmp_path, [watcher.receiver(), performer.receiver(fallback=False)])
    try:
        watcher.wait("1.2.840.10008.5.1.4.34.5", 1)  # SCP Status Change at start: the fallback list
        assert watcher.of(GLOBAL)[0][0] == 4 and watcher.of(GLOBAL)[0][2]["SCPStatus"] == "RESTARTED"
        uid, tx, other = new_uid(), new_uid(), new_uid()
        results = run_pynetdicom(node.port, [
            {"op": "action", "uid": GLOBAL, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "FALSE"}},
            {"op": "create", "uid": uid, "dataset": workitem()},
            _claim(uid, tx),
            {"op": "action", "uid": uid, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "PERFORMER", "DeletionLock": "FALSE"}},
            {"op": "set", "uid": uid, "meta": PULL, "dataset": {
                "TransactionUID": tx, "ProcedureStepProgressInformationSequence": [{"ProcedureStepProgress": "50"}]}},
            {"op": "action", "uid": uid, "action": 2, "meta": WATCH, "dataset": {"ReasonForCancellation": "wrong study"}},
            {"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(tx)},
            _change(uid, C, tx),
            _change(uid, C, tx),  # repeated (a lost response): B306
            {"op": "create", "uid": other, "dataset": workitem()},
            {"op": "action", "uid": other, "action": 2, "meta": PUSH, "dataset": {"ReasonForCancellation": "not needed"}},
        ], calling="PERFORMER")
        assert [r["status"] for r in results] == [0, 0, 0, 0, 0, 0, 0, 0, 0xB306, 0, 0]
        events = [(e[0], e[2].get("ProcedureStepState") or e[2].get("RequestingAE") or
                   e[2]["ProcedureStepProgressInformationSequence"][0]["ProcedureStepProgress"])
                  for e in watcher.wait(uid, 5)]
        assert events == [(1, S), (1, IP), (3, "50"), (2, "PERFORMER"), (1, C)]
        # the performer subscribed once IN PROGRESS: its initial State Report, then the same reports
        assert [e[0] for e in performer.wait(uid, 4)] == [1, 3, 2, 1]
        cancelled = watcher.wait(other, 4)
        # CC.2.4.3: the cancel request is reported (2), then SCHEDULED -> IN PROGRESS -> CANCELED (CC.2.2.3)
        assert [(e[0], e[2].get("ProcedureStepState")) for e in cancelled] == [(1, S), (2, None), (1, IP), (1, X)]
        assert cancelled[1][2]["RequestingAE"] == "PERFORMER"
        assert cancelled[-1][2]["ProcedureStepDiscontinuationReasonCodeSequence"][0]["CodeValue"] == "110513"
        assert cancelled[-1][2]["ReasonForCancellation"] == "not needed"
    finally:
        node.stop()
        watcher.stop()
        performer.stop()


def test_a_claim_survives_a_restart_of_the_scp_and_subscriptions_are_kept(tmp_path: Path) -> None:
    watcher = EventWatcher("WATCHER")
    node = ups_node(tmp_path, [watcher.receiver(fallback=False)])
    uid, tx = new_uid(), new_uid()
    try:
        results = run_pynetdicom(node.port, [
            {"op": "create", "uid": uid, "dataset": workitem()}, _claim(uid, tx),
            {"op": "action", "uid": uid, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "TRUE"}}])
        assert [r["status"] for r in results] == [0, 0, 0]
    finally:
        node.stop()
    node = ups_node(tmp_path, [watcher.receiver(fallback=False)])
    try:
        status_change = watcher.wait(GLOBAL, 1)[0]
        assert status_change[0] == 4 and status_change[2]["SubscriptionListStatus"] == "WARM START"
        results = run_pynetdicom(node.port, [
            {"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(new_uid())},
            {"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(tx)},
            _change(uid, C, tx)])
        assert [r["status"] for r in results] == [0xC301, 0, 0]
        assert [e[2]["ProcedureStepState"] for e in watcher.wait(uid, 2)][-1] == C
        row = node.ledger.workitems.get(uid)
        assert row.state == C and row.performer_ae == "REQUESTER" and row.finished_at is not None
        assert [e.to_state for e in node.ledger.events.find("workitem", uid)] == [S, IP, C]
    finally:
        node.stop()
        watcher.stop()


def test_cardionode_status_shows_work_items_without_patient_data_or_transaction_uid(node: UpsNode) -> None:
    from node.ops.admin import format_status, status_json
    from node.ops.status import status_snapshot

    uid, tx = new_uid(), new_uid()
    results = run_pynetdicom(node.port, [
        {"op": "create", "uid": uid, "dataset": workitem(PatientName="Doe^Jane", PatientID="PID-4711",
                                                         ProcedureStepLabel="status shows this")},
        _claim(uid, tx),
        {"op": "set", "uid": uid, "meta": PULL, "dataset": {"TransactionUID": tx, "ProcedureStepProgressInformationSequence": [
            {"ProcedureStepProgress": "40", "ProcedureStepProgressDescription": "quantified"}]}},
    ], calling=PERFORMER)
    assert [r["status"] for r in results] == [0, 0, 0]
    snapshot = status_snapshot(node.ledger, node.settings, rows=500)
    text = format_status(snapshot, wide=True)
    line = next(row for row in text.splitlines() if uid in row)
    assert "IN PROGRESS" in line and "40 % quantified" in line and "status shows this" in line and PERFORMER in line
    assert "WORK ITEMS (UPS;" in text
    as_json = json.dumps(status_json(snapshot))
    assert uid in as_json and snapshot.workitems_by_state and snapshot.workitems_by_state[IP] >= 1
    for secret in ("Doe", "PID-4711", tx):
        assert secret not in text and secret not in as_json


def test_the_node_performing_a_ups_decides_a_cancel_request_c313_or_cancel(tmp_path: Path) -> None:
    """CC.2.2.3: the SCP that performs the UPS itself may cancel it, or answer C313 (its results are out)."""
    from node.workflow.ups import Status

    decisions: dict[str, bool] = {}
    node = ups_node(tmp_path, node_cancels=lambda uid: decisions[uid])
    try:
        kept, cancelled = new_uid(), new_uid()
        for uid, cancels in ((kept, False), (cancelled, True)):
            decisions[uid] = cancels
            status, ups, _ = node.service.create(dataset_from(workitem()), uid)
            assert status == 0 and ups is not None
            assert node.service.change_state(uid, IP, new_uid(), performer_ae="") == (0, "")
        results = run_pynetdicom(node.port, [
            {"op": "action", "uid": kept, "action": 2, "meta": PUSH, "dataset": {"ReasonForCancellation": "x"}},
            _get_state(kept),
            {"op": "action", "uid": cancelled, "action": 2, "meta": PUSH, "dataset": {"ReasonForCancellation": "y"}},
            _get_state(cancelled),
            {"op": "get", "uid": cancelled, "meta": PUSH, "attributes": ["ProcedureStepProgressInformationSequence",
                                                                          "SOPInstanceUID"]},
        ])
        assert [r["status"] for r in results] == [Status.PERFORMER_WILL_NOT_CANCEL, 0, 0, 0, 0] == [0xC313, 0, 0, 0, 0]
        assert results[1]["dataset"]["ProcedureStepState"] == IP and results[3]["dataset"]["ProcedureStepState"] == X
        progress = results[4]["dataset"]["ProcedureStepProgressInformationSequence"][0]
        assert progress["ReasonForCancellation"] == "y" and progress["ProcedureStepCancellationDateTime"]
        assert node.ledger.workitems.get(kept).cancel_requested is False
    finally:
        node.stop()


def test_a_ups_scheduled_on_a_station_is_announced_to_global_watchers(tmp_path: Path) -> None:
    watcher = EventWatcher("WATCHER")
    node = ups_node(tmp_path, [watcher.receiver(fallback=False)])
    try:
        uid = new_uid()
        station = [{"CodeValue": "CARDIONODE", "CodingSchemeDesignator": "99CARDIO", "CodeMeaning": "CardioNode"}]
        results = run_pynetdicom(node.port, [
            {"op": "action", "uid": GLOBAL, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "FALSE"}},
            {"op": "create", "uid": uid, "dataset": workitem(ScheduledStationNameCodeSequence=station)}])
        assert [r["status"] for r in results] == [0, 0]
        events = watcher.wait(uid, 2)
        assert [e[0] for e in events] == [1, 5]
        assert events[1][2]["ScheduledStationNameCodeSequence"][0]["CodeValue"] == "CARDIONODE"
    finally:
        node.stop()
        watcher.stop()


def test_inputs_of_a_ups_and_when_a_performer_may_start() -> None:
    from node.workflow.ups import input_references, may_start, missing_inputs

    item = {"TypeOfInstances": "DICOM", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4",
            "ReferencedSOPSequence": [
                {"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.20", "ReferencedSOPInstanceUID": f"1.2.3.4.{i}"}
                for i in (1, 2)],
            "DICOMRetrievalSequence": [{"RetrieveAETitle": "ORTHANC"}]}
    ups = dataset_from(workitem(InputInformationSequence=[item]))
    refs = input_references(ups)
    assert [(r.sop_instance_uid, r.retrieve_ae, r.series_uid) for r in refs] == [
        ("1.2.3.4.1", "ORTHANC", "1.2.3.4"), ("1.2.3.4.2", "ORTHANC", "1.2.3.4")]
    assert [r.sop_instance_uid for r in missing_inputs(ups, {"1.2.3.4.1"}.__contains__)] == ["1.2.3.4.2"]
    assert may_start(ups)
    assert not may_start(dataset_from(workitem(InputInformationSequence=[item], InputReadinessState="INCOMPLETE")))
    assert not may_start(dataset_from(workitem()))  # nothing listed


def test_cardionode_listen_is_a_ups_scp_unless_disabled(tmp_path: Path) -> None:
    """The wiring of node.service: `cardionode listen` offers the UPS SCP with [ups] enabled (the default), with
    the rules of node.workflow.ups; with it disabled the UPS contexts are refused."""
    from tests.support.config import listener_config
    from tests.support.node import ListenerProcess

    watcher = EventWatcher("WATCHER")
    try:
        config, port = listener_config(tmp_path, ups={"event_receivers": [watcher.receiver()]})
        uid = new_uid()
        with ListenerProcess(config, port).start():
            watcher.wait(GLOBAL, 1)  # SCP Status Change: the fallback list learns of the start
            results = run_pynetdicom(port, [{"op": "create", "uid": uid, "dataset": workitem(ScheduledProcedureStepPriority="LOW")},
                                            {"op": "find", "sopClass": QUERY, "dataset": {"SOPInstanceUID": uid,
                                                                                          "ScheduledProcedureStepPriority": ""}}])
        assert [r["status"] for r in results] == [0, 0]
        assert results[1]["matches"] == [{"SOPInstanceUID": uid, "ScheduledProcedureStepPriority": "LOW"}]
        (tmp_path / "off").mkdir()
        disabled, port = listener_config(tmp_path / "off", ups={"enabled": False})
        with ListenerProcess(disabled, port).start():
            with pytest.raises(AssertionError, match="refused the association"):
                run_pynetdicom(port, [{"op": "create", "uid": new_uid(), "dataset": workitem()}])
    finally:
        watcher.stop()


def test_filtered_global_subscription_and_retention_of_final_work_items(tmp_path: Path) -> None:
    """A filtered global subscription (1.2.840.10008.5.1.4.34.5.1) follows only the UPSs its keys match; a final
    UPS is deleted after [ups] retention_days unless a deletion lock holds it."""
    watcher = EventWatcher("WATCHER")
    node = ups_node(tmp_path, [watcher.receiver(fallback=False)], retention_days=0)
    try:
        ours, theirs, locked = new_uid(), new_uid(), new_uid()
        tx = {uid: new_uid() for uid in (ours, locked)}
        results = run_pynetdicom(node.port, [
            {"op": "action", "uid": FILTERED, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "FALSE", "WorklistLabel": "NUCLEAR*"}},
            {"op": "create", "uid": ours, "dataset": workitem(WorklistLabel="NUCLEAR CARDIOLOGY")},
            {"op": "create", "uid": theirs, "dataset": workitem(WorklistLabel="MRI")},
            {"op": "create", "uid": locked, "dataset": workitem(WorklistLabel="NUCLEAR CARDIOLOGY")},
            {"op": "action", "uid": locked, "action": 3, "meta": WATCH,
             "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "TRUE"}},
            *(step for uid in (ours, locked) for step in (
                _claim(uid, tx[uid]), {"op": "set", "uid": uid, "meta": PULL, "dataset": final_attributes(tx[uid])},
                _change(uid, C, tx[uid]))),
        ])
        assert [r["status"] for r in results] == [0] * 11
        assert [e[0] for e in watcher.wait(ours, 3)] == [1, 1, 1]
        node.events_sent()
        assert watcher.of(theirs) == []
        assert set(node.service.purge()) == {ours}
        assert node.ledger.workitems.get(ours) is None and node.ledger.workitems.get(locked) is not None
        assert run_pynetdicom(node.port, [_get_state(ours), _get_state(locked)])[0]["status"] == 0xC307
    finally:
        node.stop()
        watcher.stop()


def test_the_performer_client_claims_on_a_pull_only_association_with_the_push_class(node: UpsNode) -> None:
    """node.dicom.ups_scu (groundwork of the task performer): Pull and Watch proposed, never Push (pynetdicom #509),
    so every N-* goes out on the Pull context naming UPS Push, as CC.3.1 wants; the claim, a second claim, progress,
    a premature completion, the final N-SET and the completion get the standard's statuses."""
    from node.dicom.ups_scu import UpsPullClient

    uid, tx, other = new_uid(), new_uid(), new_uid()
    assert run_pynetdicom(node.port, [{"op": "create", "uid": uid, "dataset": workitem()}])[0]["status"] == 0
    with UpsPullClient(PERFORMER, "127.0.0.1", node.port, "CARDIONODE") as client:
        assert client.accepted_classes == {PULL, WATCH}
        final, found = client.find(dataset_from({"SOPInstanceUID": uid, "ProcedureStepState": "",
                                                 "InputReadinessState": ""}))
        assert final.status == 0 and [str(f.ProcedureStepState) for f in found] == [S]
        assert client.change_state(uid, IP, tx).status == 0x0000
        assert client.change_state(uid, IP, other).status == 0xC301  # another performer (Note 2 of CC.2.1.2)
        assert client.change_state(uid, IP, tx).status == 0xC302
        progress = dataset_from({"ProcedureStepProgressInformationSequence": [{"ProcedureStepProgress": "50"}]})
        assert client.update(uid, progress, tx).ok
        assert client.change_state(uid, C, tx).status == 0xC304
        performed = {k: v for k, v in final_attributes(tx).items() if k != "TransactionUID"}
        assert client.update(uid, dataset_from(performed), None).status == 0xC301
        assert client.update(uid, dataset_from(performed), tx).ok
        assert client.change_state(uid, C, tx).status == 0x0000
        assert client.change_state(uid, C, tx).status == 0xB306
        got = client.get(uid, ["ProcedureStepState", "TransactionUID"])
        assert got.ok and got.dataset is not None and str(got.dataset.ProcedureStepState) == C
        assert "TransactionUID" not in got.dataset
        refused = client.get(new_uid(), ["ProcedureStepState"])
        assert refused.status == 0xC307 and refused.comment
        assert client.subscribe("NOBODY").status == 0xC308 and client.subscribe(PERFORMER).ok
        assert client.unsubscribe(PERFORMER).ok
