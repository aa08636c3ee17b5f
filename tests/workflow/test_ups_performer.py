"""The node as IHE AIW-I task performer for a site's task manager (issue 19, items 2 and 4; :mod:`node.workflow.performer`).

The node under test is `cardionode serve` with ``[ups.task_manager]``. Its task manager is either

* a scripted one on dcmjs-dimse (``tests/support/js/ups_task_manager.js``: independent code, its own codec and its
  own state machine written from PS3.4 Table CC.1.1-2) that answers "already claimed" (C302), refuses a completion
  once (C304), sends a Cancel Requested event mid-run, and restarts; or
* a second CardioNode (`cardionode listen`, the node's own UPS SCP in another process with its own ledger), for the
  claim – kill -9 – restart – complete case, where a strict SCP checks the Transaction UID.

The study is processed through the normal assembler and conductor path (the flow test pipeline; the shipped SPECT
pipeline in the end-to-end test with Orthanc), decided by the ``ups_inputs`` completeness rule.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.config import serve_settings, write_config
from tests.support.destination import Destination
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for
from tests.support.ups import (
    PULL,
    PUSH,
    WATCH,
    ScriptedTaskManager,
    input_information,
    new_uid,
    run_pynetdicom,
    workitem,
)

pytestmark = [pytest.mark.network, pytest.mark.slow]  # each starts a node and its workers: 25-60 s here

#: the completeness times of these tests: nothing but the ups_inputs rule decides within a test's time
LONG_WAIT = {"default": {"quiet_period_s": 300.0, "force_deadline_s": 900.0, "force_action": "process",
                         "settle_s": 300.0}}


def _inputs(files: list[Path]) -> tuple[str, list[tuple[str, str, str]]]:
    rows = []
    study = ""
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study = str(ds.StudyInstanceUID)
        rows.append((str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return study, rows


def _item(study_uid: str, rows: list[tuple[str, str, str]], **overrides: Any) -> dict[str, Any]:
    return workitem(StudyInstanceUID=study_uid, InputInformationSequence=input_information(study_uid, rows),
                    **overrides)


def _serve(tmp: Path, port: int, destination: Destination, task_manager: dict[str, Any], **extra: Any) -> NodeProcess:
    config = write_config(tmp / "node.toml", **serve_settings(
        tmp / "data", port, [destination.as_setting("archive")], completeness=LONG_WAIT,
        ups={"task_manager": task_manager}, **extra))
    return NodeProcess(config, port, tmp / "node.log", mode="serve")


def _status(node: NodeProcess, study_uid: str | None = None) -> dict[str, Any]:
    args = ["status", "--json"] + (["--study", study_uid] if study_uid else [])
    return dict(json.loads(node.cli(*args).stdout))


def _ledger_row(data_dir: Path, uid: str) -> tuple[str, str] | None:
    """(state, transaction UID) of work item ``uid`` in a node's SQLite ledger (read-only)."""
    with sqlite3.connect(f"file:{data_dir / 'ledger.sqlite'}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute("SELECT state, transaction_uid FROM workitems WHERE sop_instance_uid = ?", (uid,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def _contexts_are_pull_and_watch_only(tm: ScriptedTaskManager) -> None:
    for association in tm.of("associate"):
        assert set(association["contexts"]) <= {PULL, WATCH} and PULL in association["contexts"], association
    for record in tm.of("get") + tm.of("set") + tm.of("action"):
        assert record["requestedClass"] == PUSH, record  # every N-* names UPS Push (PS3.4 CC.3.1)


# ---------------------------------------------------------------------------- against the scripted task manager


def test_a_work_item_another_performer_claimed_first_is_left_to_it(tmp_path: Path, seed: int) -> None:
    """C302 on the claim: the node asks with an N-SET carrying its Transaction UID (the claim might have been its
    own, landed before a lost response); C301 says it is another performer's: the node lets it go, for good. Work
    items whose Input Readiness State is UNAVAILABLE (skipped) or INCOMPLETE (waits for READY) are not claimed."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 3, seed)
    uid, unavailable, incomplete = new_uid(), new_uid(), new_uid()
    port = free_port()
    rows = _inputs(files)[1]
    tm = ScriptedTaskManager(tmp_path, [{"uid": uid, "dataset": _item(study_uid, rows)},
                                        {"uid": unavailable, "dataset": _item(study_uid, rows,
                                                                              InputReadinessState="UNAVAILABLE")},
                                        {"uid": incomplete, "dataset": _item(study_uid, rows,
                                                                             InputReadinessState="INCOMPLETE")}],
                             claim="already-claimed",
                             eventTarget={"host": "127.0.0.1", "port": port, "ae": "CARDIONODE"})
    with Destination(refusing=False) as archive:
        node = _serve(tmp_path, port, archive, tm.as_setting())
        try:
            node.start()
            storescu(port, files, check=True)
            claim = tm.wait(lambda: tm.of("action", uid), "the node's claim")[0]
            tx = claim["dataset"]["TransactionUID"]
            assert claim["status"] == 0xC302 and claim["dataset"]["ProcedureStepState"] == "IN PROGRESS"
            probe = tm.wait(lambda: tm.of("set", uid), "the node's N-SET probe")[0]
            assert probe["dataset"]["TransactionUID"] == tx and probe["status"] == 0xC301
            time.sleep(3.0)  # several polls: the node neither claims it again nor touches it
            assert len(tm.of("action", uid)) == 1 and len(tm.of("set", uid)) == 1
            items = {i["work item (UPS)"]: i for i in _status(node)["workitems"]["items"]}
            assert items[uid]["state"] == "IN PROGRESS" and "held by another performer (0xC302)" in items[uid]["note"]
            assert items[uid]["performer"] == "" and items[uid]["role"].startswith("performer")
            assert _ledger_row(tmp_path / "data", uid) == ("IN PROGRESS", "")
            assert _status(node, study_uid)["study"]["state"] == "receiving"  # not processed for that work item
            assert tx not in node.cli("status", "--json").stdout  # the lock is never shown
            # UNAVAILABLE is skipped, INCOMPLETE waits for READY: looked at (N-GET), never claimed
            assert tm.of("get", unavailable) and tm.of("get", incomplete)
            assert not tm.of("action", unavailable) and not tm.of("action", incomplete)
            assert "waiting for READY" in items[incomplete]["note"] and "skipped" in items[unavailable]["note"]
            _contexts_are_pull_and_watch_only(tm)
        finally:
            node.stop()
            tm.stop()


def test_a_claim_whose_response_is_lost_is_checked_with_an_n_set_and_kept(tmp_path: Path, seed: int) -> None:
    """No response to the claim (it landed; the answer never came): the node asks with an N-SET of a progress item
    carrying its Transaction UID on a new association; 0000 says the claim is its own: it keeps it, never claims
    with another Transaction UID, and completes."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed)
    uid = new_uid()
    port = free_port()
    tm = ScriptedTaskManager(tmp_path, [{"uid": uid, "dataset": _item(study_uid, _inputs(files)[1])}],
                             claim="no-response", eventTarget={"host": "127.0.0.1", "port": port, "ae": "CARDIONODE"})
    with Destination(refusing=False) as archive:
        node = _serve(tmp_path, port, archive, tm.as_setting(timeout_s=3.0))
        try:
            node.start()
            storescu(port, files, check=True)
            tm.wait(lambda: [a for a in tm.of("action", uid) if a["dataset"].get("ProcedureStepState") == "COMPLETED"
                             and a["status"] == 0], "COMPLETED accepted", 120)
            actions = [(a["dataset"]["ProcedureStepState"], a["status"]) for a in tm.of("action", uid)]
            assert actions == [("IN PROGRESS", None), ("COMPLETED", 0)], actions
            probe = tm.of("set", uid)[0]
            claim_tx = tm.of("action", uid)[0]["dataset"]["TransactionUID"]
            assert probe["dataset"]["TransactionUID"] == claim_tx and probe["status"] == 0
            assert {r["dataset"]["TransactionUID"] for r in tm.of("set", uid) + tm.of("action", uid)} == {claim_tx}
            assert len(tm.of("associate")) >= 2  # the probe went on a new association
        finally:
            node.stop()
            tm.stop()


def test_a_premature_completion_is_refused_and_a_restart_of_the_task_manager_survived(tmp_path: Path,
                                                                                      seed: int) -> None:
    """The whole performer path: claim, ups_inputs decides, progress, results acknowledged, outputs listed in one
    N-SET, COMPLETED refused C304 once (the node logs it, sends the N-SET again and completes); the task manager is
    killed and restarted (warm start) meanwhile. One Transaction UID from the claim to the end."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 3, seed)
    uid = new_uid()
    port = free_port()
    tm = ScriptedTaskManager(tmp_path, [{"uid": uid, "dataset": _item(study_uid, _inputs(files)[1])}],
                             refuseCompletion=1, eventTarget={"host": "127.0.0.1", "port": port, "ae": "CARDIONODE"})
    with Destination(refusing=False) as archive:
        node = _serve(tmp_path, port, archive, tm.as_setting())
        try:
            node.start()
            storescu(port, files, check=True)
            tm.wait(lambda: [a for a in tm.of("action", uid) if a["status"] == 0], "the claim")
            tm.restart()  # the task manager goes away and comes back with its state
            final = tm.wait(lambda: [a for a in tm.of("action", uid) if a["dataset"].get("ProcedureStepState")
                                     == "COMPLETED" and a["status"] == 0], "COMPLETED accepted", 120)
            assert final
            actions = [(a["dataset"]["ProcedureStepState"], a["status"]) for a in tm.of("action", uid)]
            assert actions == [("IN PROGRESS", 0), ("COMPLETED", 0xC304), ("COMPLETED", 0)], actions
            sets = tm.of("set", uid)
            txs = {r["dataset"]["TransactionUID"] for r in tm.of("action", uid) + sets}
            assert len(txs) == 1, txs
            progress = [s["dataset"]["ProcedureStepProgressInformationSequence"][0]["ProcedureStepProgress"]
                        for s in sets if "ProcedureStepProgressInformationSequence" in s["dataset"]]
            assert progress == sorted(progress) and {0, 10, 90} <= set(progress), progress
            outputs = [s for s in sets if "UnifiedProcedureStepPerformedProcedureSequence" in s["dataset"]]
            assert len(outputs) == 2  # sent again after the C304
            performed = outputs[-1]["dataset"]["UnifiedProcedureStepPerformedProcedureSequence"]
            assert len(performed) == 1
            listed = {r["ReferencedSOPInstanceUID"] for series in performed[0]["OutputInformationSequence"]
                      for r in series["ReferencedSOPSequence"]}
            assert listed and listed == set(archive.stored)  # exactly what the destination acknowledged
            assert all(series["DICOMRetrievalSequence"][0]["RetrieveAETitle"] == archive.ae_title
                       for series in performed[0]["OutputInformationSequence"])
            assert tm.state()["items"][uid]["state"] == "COMPLETED"
            study = _status(node, study_uid)["study"]
            assert study["rule"] == "ups_inputs" and study["state"] == "done", study
            items = {i["work item (UPS)"]: i for i in _status(node)["workitems"]["items"]}
            assert items[uid]["state"] == "COMPLETED" and items[uid]["outputs"] == str(len(listed))
            assert "0xC304" in (tmp_path / "node.log").read_text(errors="replace")
            _contexts_are_pull_and_watch_only(tm)
        finally:
            node.stop()
            tm.stop()


def test_a_cancel_requested_before_the_results_are_stored_cancels_with_a_coded_reason(tmp_path: Path,
                                                                                       seed: int) -> None:
    """A Cancel Requested event while the job runs (held in the flow test pipeline's analyse): the node discards the
    job, sends the discontinuation (110513, CID 9300) and CANCELED; nothing reaches the destination."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed)
    uid = new_uid()
    port = free_port()
    hold = tmp_path / "hold"
    hold.mkdir()
    tm = ScriptedTaskManager(tmp_path, [{"uid": uid, "dataset": _item(study_uid, _inputs(files)[1])}],
                             cancelAtProgress=40, eventTarget={"host": "127.0.0.1", "port": port, "ae": "CARDIONODE"})
    with Destination(refusing=False) as archive:
        node = _serve(tmp_path, port, archive, tm.as_setting())
        node.env["FLOWTEST_HOLD_DIR"] = str(hold)
        try:
            node.start()
            storescu(port, files, check=True)
            event = tm.wait(lambda: tm.of("event", uid), "the Cancel Requested event", 120)[0]
            assert event["eventType"] == 2 and event["status"] == 0
            final = tm.wait(lambda: [a for a in tm.of("action", uid) if a["dataset"].get("ProcedureStepState")
                                     == "CANCELED"], "CANCELED", 60)[0]
            assert final["status"] == 0
            discontinued = [s for s in tm.of("set", uid) if "ReasonForCancellation" in json.dumps(s["dataset"])][-1]
            item = discontinued["dataset"]["ProcedureStepProgressInformationSequence"][0]
            code = item["ProcedureStepDiscontinuationReasonCodeSequence"][0]
            assert (code["CodeValue"], code["CodingSchemeDesignator"]) == ("110513", "DCM")
            assert "cancel requested by REQUESTER" in item["ReasonForCancellation"]
            assert tm.state()["items"][uid]["state"] == "CANCELED"
            (hold / "release").write_text("")
            wait_for(lambda: _status(node, study_uid)["study"]["state"] in ("failed", "done"), 60, "the run to end")
            time.sleep(2.0)
            assert archive.stored == []
            jobs = _status(node, study_uid)["jobs"]
            assert [j["state"] for j in jobs] == ["discarded"], jobs
        finally:
            node.stop()
            tm.stop()


def test_a_cancel_requested_after_the_results_are_stored_is_finished_and_said(tmp_path: Path, seed: int) -> None:
    """A Cancel Requested event once the results are written and being sent (the destination refuses for now,
    transiently): the node finishes, says so in the progress description, and COMPLETES with the outputs."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed)
    uid = new_uid()
    port = free_port()
    tm = ScriptedTaskManager(tmp_path, [{"uid": uid, "dataset": _item(study_uid, _inputs(files)[1])}],
                             cancelAtProgress=70, eventTarget={"host": "127.0.0.1", "port": port, "ae": "CARDIONODE"})
    with Destination(refusing=True, refusal_status=0xA700) as archive:
        node = _serve(tmp_path, port, archive, tm.as_setting())
        try:
            node.start()
            storescu(port, files, check=True)
            tm.wait(lambda: tm.of("event", uid), "the Cancel Requested event", 120)
            wait_for(lambda: any("cancel requested after the results were stored" in json.dumps(s["dataset"])
                                 for s in tm.of("set", uid)), 60, "the node to say it finishes")
            archive.refusing = False
            final = tm.wait(lambda: [a for a in tm.of("action", uid) if a["dataset"].get("ProcedureStepState")
                                     == "COMPLETED"], "COMPLETED", 120)[0]
            assert final["status"] == 0 and tm.state()["items"][uid]["state"] == "COMPLETED"
            assert not [a for a in tm.of("action", uid) if a["dataset"].get("ProcedureStepState") == "CANCELED"]
        finally:
            node.stop()
            tm.stop()


# ---------------------------------------------------------------------------- against a second node as task manager


def _task_manager_node(tmp: Path, performer_port: int, **receivers: int) -> tuple[NodeProcess, int]:
    """A second CardioNode as task manager (`cardionode listen`, its UPS SCP with its own ledger under ``tmp``), that
    knows the performer (AE CARDIONODE) and ``receivers`` (AE title -> port) as event receivers."""
    from tests.support.config import listener_config

    tmp.mkdir(parents=True, exist_ok=True)
    known = [{"ae_title": "CARDIONODE", "host": "127.0.0.1", "port": performer_port, "fallback": False}]
    known += [{"ae_title": ae, "host": "127.0.0.1", "port": port, "fallback": False} for ae, port in receivers.items()]
    config, port = listener_config(tmp, ae_title="TASKMGR", ups={"event_receivers": known, "study_workitems": False})
    return NodeProcess(config, port, tmp / "task-manager.log", mode="listener"), port


def _get_state(port: int, uid: str) -> str:
    (answer,) = run_pynetdicom(port, [{"op": "get", "uid": uid, "meta": PULL, "attributes": ["ProcedureStepState"]}],
                               called="TASKMGR")
    assert answer["status"] == 0, answer
    return str(answer["dataset"]["ProcedureStepState"])


def test_claim_kill_9_restart_complete_with_the_same_transaction_uid(tmp_path: Path, seed: int) -> None:
    """The node claims a work item of another CardioNode's UPS SCP (strict about the Transaction UID), is killed with
    SIGKILL while its job runs, restarts, and completes the work item with the Transaction UID its ledger kept; the
    same request with another Transaction UID is refused C301."""
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed)
    port = free_port()
    manager, manager_port = _task_manager_node(tmp_path / "tm", port)
    hold = tmp_path / "hold"
    hold.mkdir()
    uid = new_uid()
    with Destination(refusing=False) as archive:
        setting = {"ae_title": "TASKMGR", "host": "127.0.0.1", "port": manager_port, "poll_s": 0.5}
        node = _serve(tmp_path, port, archive, setting)
        node.env["FLOWTEST_HOLD_DIR"] = str(hold)
        try:
            manager.start()
            node.start()
            storescu(port, files, check=True)
            (created,) = run_pynetdicom(manager_port, [{"op": "create", "uid": uid,
                                                        "dataset": _item(study_uid, _inputs(files)[1])}],
                                        called="TASKMGR")
            assert created["status"] == 0, created
            wait_for(lambda: any(hold.glob("started-*")), 120, "the job to start (held)")
            assert _get_state(manager_port, uid) == "IN PROGRESS"
            ours = _ledger_row(tmp_path / "data", uid)
            theirs = _ledger_row(tmp_path / "tm" / "var", uid)
            assert ours is not None and theirs is not None and ours[1] and ours == theirs == ("IN PROGRESS", ours[1])
            node.kill()
            (hold / "release").write_text("")
            node = _serve(tmp_path, port, archive, setting)
            node.start()
            wait_for(lambda: _get_state(manager_port, uid) == "COMPLETED", 180, "COMPLETED at the task manager")
            assert _ledger_row(tmp_path / "data", uid) == ("COMPLETED", ours[1])
            assert _ledger_row(tmp_path / "tm" / "var", uid) == ("COMPLETED", ours[1])
            (again,) = run_pynetdicom(manager_port, [{"op": "action", "uid": uid, "action": 1, "meta": PULL,
                                                      "dataset": {"ProcedureStepState": "COMPLETED",
                                                                  "TransactionUID": ours[1]}}], called="TASKMGR")
            (other,) = run_pynetdicom(manager_port, [{"op": "action", "uid": uid, "action": 1, "meta": PULL,
                                                      "dataset": {"ProcedureStepState": "COMPLETED",
                                                                  "TransactionUID": new_uid()}}], called="TASKMGR")
            assert (again["status"], other["status"]) == (0xB306, 0xC301)
            (got,) = run_pynetdicom(manager_port, [{"op": "get", "uid": uid, "meta": PULL, "attributes": [
                "UnifiedProcedureStepPerformedProcedureSequence"]}], called="TASKMGR")
            performed = got["dataset"]["UnifiedProcedureStepPerformedProcedureSequence"][0]
            listed = {r["ReferencedSOPInstanceUID"] for series in performed["OutputInformationSequence"]
                      for r in series["ReferencedSOPSequence"]}
            assert listed and listed <= set(archive.stored)
        finally:
            node.stop()
            manager.stop()


# ---------------------------------------------------------------------------- end to end


def test_a_pushed_spect_work_item_is_fetched_processed_stored_and_completed_with_resolvable_outputs(
        tmp_path: Path, seed: int) -> None:
    """A requester (dcmjs-dimse) pushes a work item to the task manager (a second CardioNode) for a SPECT MPI study that
    is only in Orthanc; the node claims it, fetches the inputs (C-MOVE from the Retrieve AE Title), runs the shipped
    spect_mpi pipeline (models off), stores the results in Orthanc (the Output Destination), and the work item ends
    COMPLETED with Output Information Sequence references that Orthanc resolves; a watcher hears the changes."""
    from datetime import datetime

    import numpy as np

    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import write_study
    from tests.support.orthanc import Orthanc
    from tests.support.ups import GLOBAL, DcmjsEventReceiver, run_dcmjs

    study = ph.make_study(demo_spec("LAD", "tc99m_sestamibi"), np.random.default_rng(seed), orientation="transaxial")
    written = write_study(study, tmp_path / "spect", seed=seed % 10000, when=datetime(2026, 12, 7, 10, 30))
    files = [p for p in written.paths if p.suffix == ".dcm"]
    study_uid, rows = _inputs(files)
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=port).start()
    watcher = DcmjsEventReceiver("WATCHER")
    manager, manager_port = _task_manager_node(tmp_path / "tm", port, WATCHER=watcher.port)
    pacs = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", port, [pacs], pipeline_modules=[], pipelines={"spect_mpi": {"models": False}},
        retrieve_from=[{**pacs, "timeout_s": 30.0}], completeness=LONG_WAIT,
        ups={"task_manager": {"ae_title": "TASKMGR", "host": "127.0.0.1", "port": manager_port, "poll_s": 1.0}}))
    node = NodeProcess(config, port, tmp_path / "node.log", mode="serve")
    uid = new_uid()
    try:
        orthanc.upload(files)
        manager.start()
        (subscribed,) = run_pynetdicom(manager_port, [{"op": "action", "uid": GLOBAL, "action": 3, "meta": WATCH,
                                                       "dataset": {"ReceivingAE": "WATCHER", "DeletionLock": "FALSE"}}],
                                       calling="WATCHER", called="TASKMGR")
        assert subscribed["status"] == 0, subscribed
        item = workitem(StudyInstanceUID=study_uid,
                        InputInformationSequence=input_information(study_uid, rows, orthanc.ae_title),
                        OutputDestinationSequence=[{"DICOMStorageSequence": [{"DestinationAE": orthanc.ae_title}]}])
        (created,) = run_dcmjs(manager_port, [{"op": "create", "uid": uid, "dataset": item}], tmp_path,
                               called="TASKMGR")
        assert created["status"] in (0x0000, 0xB300), created
        node.start()
        wait_for(lambda: _get_state(manager_port, uid) in ("COMPLETED", "CANCELED"), 500,
                 f"the work item to end (seed {seed}); log {tmp_path}", 2.0)
        assert _get_state(manager_port, uid) == "COMPLETED"
        (got,) = run_pynetdicom(manager_port, [{"op": "get", "uid": uid, "meta": PULL, "attributes": [
            "UnifiedProcedureStepPerformedProcedureSequence"]}], called="TASKMGR")
        performed = got["dataset"]["UnifiedProcedureStepPerformedProcedureSequence"][0]
        referenced = [(series["StudyInstanceUID"], r["ReferencedSOPClassUID"], r["ReferencedSOPInstanceUID"])
                      for series in performed["OutputInformationSequence"] for r in series["ReferencedSOPSequence"]]
        assert referenced, performed
        for study_of, sop_class, sop_instance in referenced:
            tags = orthanc.tags(orthanc.instance_id(sop_instance))  # Orthanc resolves every reference
            assert (tags["StudyInstanceUID"], tags["SOPClassUID"], tags["SOPInstanceUID"]) == (study_of, sop_class,
                                                                                              sop_instance)
        assert {c for _, c, _ in referenced} >= {"1.2.840.10008.5.1.4.1.1.88.34"}  # the SR among them
        assert all(s["DICOMRetrievalSequence"][0]["RetrieveAETitle"] == orthanc.ae_title
                   for s in performed["OutputInformationSequence"])
        detail = _status(node, study_uid)["study"]
        assert detail["rule"] == "ups_inputs" and detail["state"] == "done", detail
        events = watcher.wait(uid, 4, 60)
        states = [e[2].get("ProcedureStepState") for e in events if e[0] == 1]
        assert states[:1] == ["SCHEDULED"] and "IN PROGRESS" in states and states[-1] == "COMPLETED", events
        assert any(e[0] == 3 for e in events)  # progress reports
    finally:
        node.stop()
        manager.stop()
        watcher.stop()
        orthanc.stop()
