"""Ledger: idempotent records, explicit states with reasons, threads, and the admin commands.

Every test runs on SQLite and on PostgreSQL (the ``ledger`` and ``ledger_url`` fixtures of
``conftest.py``).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from node.cli import main as cli_main
from node.ledger import InstanceMeta, Ledger, LedgerError, OutputMeta, utcnow
from tests.support.config import write_config

NM = "1.2.840.10008.5.1.4.1.1.20"
SR34 = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


def meta(sop: str, study: str = "1.9", series: str = "1.9.1", received_at: datetime | None = None,
         **routing: object) -> InstanceMeta:
    """An instance with the given routing attributes (lists for multi-valued ones, as the extractor gives)."""
    return InstanceMeta(sop_instance_uid=sop, sop_class_uid=NM, study_uid=study, series_uid=series,
                        path=f"/spool/{sop}.dcm", size_bytes=100, received_at=received_at,
                        routing={"sop_class_uid": NM, **routing})  # type: ignore[dict-item]


def test_record_instance_is_idempotent_and_summarised(ledger: Ledger) -> None:
    m = meta("1.9.1.1", modality="NM", image_type=["ORIGINAL", "PRIMARY", "RECON TOMO"],
             series_description="STRESS", radiopharmaceutical_codes=["424299003"], state="stress")
    assert ledger.instances.record(m) is True
    assert ledger.instances.record(m) is False
    ledger.instances.record(meta("1.9.1.2", radiopharmaceutical_codes=["424299003", "C-B1031"]))
    ledger.instances.record(meta("1.9.2.1", series="1.9.2", modality="NM", series_description="REST", state="rest"))
    summary = ledger.studies.summary("1.9")
    assert [s.series_instance_uid for s in summary.series] == ["1.9.1", "1.9.2"]
    first = summary.series[0]
    assert (first.modality, first.sop_class_uid, first.instance_count) == ("NM", NM, 2)
    assert first.image_type == ("ORIGINAL", "PRIMARY", "RECON TOMO")
    assert first.radiopharmaceutical_codes == ("424299003", "C-B1031")
    assert (first.series_description, first.state) == ("STRESS", "stress")
    assert (summary.series[1].series_description, summary.series[1].state) == ("REST", "rest")
    study = ledger.studies.get("1.9")
    assert study is not None and study.state == "receiving" and study.instance_count == 3
    assert ledger.studies.last_instance_time("1.9") == study.last_received_at
    assert [s.study_uid for s in ledger.studies.to_examine()] == ["1.9"]


def test_study_lifecycle_records_rule_and_reasons(ledger: Ledger) -> None:
    ledger.instances.record(meta("1.9.1.1"))
    with pytest.raises(LedgerError, match="needs a rule"):
        ledger.studies.transition("1.9", "complete", "quiet")
    st = ledger.studies.transition("1.9", "complete", "10 s without new instances", rule="quiet_period")
    assert (st.state, st.rule) == ("complete", "quiet_period")
    with pytest.raises(LedgerError, match="is complete, not receiving"):
        ledger.studies.transition("1.9", "complete", "again", rule="force_deadline", expected_from=("receiving",))
    st = ledger.studies.transition("1.9", "processing", "job 1", pipeline="spect_mpi")
    assert st.run == 1 and st.pipeline == "spect_mpi"
    assert ledger.studies.transition("1.9", "done", "results sent").state == "done"
    # a late instance after done: back to receiving, next run supersedes
    ledger.instances.record(meta("1.9.1.2"))
    st = ledger.studies.get("1.9")
    assert st is not None and st.state == "receiving" and "after the study was done" in st.reason
    events = [(e.from_state, e.to_state, e.rule) for e in ledger.events.find("study", "1.9")]
    assert events == [(None, "receiving", None), ("receiving", "complete", "quiet_period"),
                      ("complete", "processing", None), ("processing", "done", None), ("done", "receiving", None)]


def test_instance_arriving_while_processing_reopens_the_study(ledger: Ledger) -> None:
    ledger.instances.record(meta("1.9.1.1"))
    ledger.studies.transition("1.9", "complete", "all series", rule="expected_series")
    ledger.studies.transition("1.9", "processing", "job")
    ledger.instances.record(meta("1.9.1.2", received_at=utcnow() + timedelta(seconds=1)))
    st = ledger.studies.transition("1.9", "done", "sent")
    assert st.state == "receiving" and "processed again" in st.reason


def test_jobs_outputs_sends_and_predecessors(ledger: Ledger) -> None:
    ledger.instances.record(meta("1.9.1.1"))
    ledger.studies.transition("1.9", "complete", "manual", rule="manual")
    ledger.studies.transition("1.9", "processing", "run 1")
    job = ledger.jobs.create("1.9", "spect_mpi")
    assert (job.state, job.run, job.attempts) == ("queued", 1, 0)
    job = ledger.jobs.transition(job.id, "running", "worker picked it up", task_id="t-1")
    job = ledger.jobs.transition(job.id, "running", "next step", task_id="t-2")
    assert job.attempts == 1 and job.task_id == "t-2"
    ledger.jobs.transition(job.id, "queued", "worker lost")
    job = ledger.jobs.transition(job.id, "running", "redelivered")
    assert job.attempts == 2
    ledger.jobs.transition(job.id, "reported", "3 outputs")
    sr = OutputMeta("2.25.1", "1.9", "2.25.10", SR34, "/outbox/sr.dcm", 1000)
    assert ledger.outputs.record(job.id, "spect_mpi", sr) is True
    assert ledger.outputs.record(job.id, "spect_mpi", sr) is False
    ledger.outputs.record(job.id, "spect_mpi", OutputMeta("2.25.2", "1.9", "2.25.11", SC, "/outbox/sc.dcm"))
    sends = ledger.sends.create("2.25.1", ["pacs", "archive"])
    assert [s.state for s in sends] == ["pending", "pending"]
    assert len(ledger.sends.create("2.25.1", ["pacs", "archive"])) == 2 and len(ledger.sends.find()) == 2
    assert len(ledger.sends.due()) == 2
    later = utcnow() + timedelta(minutes=5)
    retrying = ledger.sends.record_attempt(sends[0].id, "retrying", error="connection refused", next_attempt_at=later)
    assert retrying.attempts == 1 and retrying.next_attempt_at == later
    dead = ledger.sends.record_attempt(sends[1].id, "dead_letter", status=0xA900, error="rejected")
    assert dead.last_status == 0xA900
    assert ledger.sends.due() == [] and len(ledger.sends.due(later + timedelta(seconds=1))) == 1
    assert ledger.outputs.predecessors("1.9", "spect_mpi") == (("1.9", "2.25.10", SR34, "2.25.1"),)
    assert ledger.outputs.predecessors("1.9", "spect_mpi", before_run=1) == ()
    # operator retry of a job with dead-lettered results: resend, do not recompute
    job = ledger.jobs.retry(job.id)
    assert job.state == "reported" and ledger.sends.find(job_id=job.id, states=["dead_letter"]) == []
    # discard: unsent sends dead-lettered, study failed with the reason
    job = ledger.jobs.discard(job.id)
    assert job.state == "discarded"
    assert {s.state for s in ledger.sends.find(job_id=job.id)} == {"dead_letter"}
    study = ledger.studies.get("1.9")
    assert study is not None and study.state == "failed" and "discarded" in study.reason
    assert ledger.jobs.retry(job.id).state == "queued" and ledger.jobs.get(job.id).task_id is None  # type: ignore[union-attr]


def test_rejections_are_recorded(ledger: Ledger) -> None:
    ledger.rejections.record("data set cannot be parsed", 0xC000, calling_ae="PACS", peer_address="10.0.0.1",
                            sop_instance_uid="not a uid" * 20)
    (r,) = ledger.rejections.find()
    assert (r.status, r.calling_ae, len(r.sop_instance_uid)) == (0xC000, "PACS", 80)


def test_many_threads_record_concurrently(ledger: Ledger) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(40):
                ledger.instances.record(meta(f"1.9.{t}.{k}", series=f"1.9.{t}"))
                ledger.instances.record(meta(f"1.9.{t}.{k}", series=f"1.9.{t}"))  # duplicate
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert ledger.instances.count() == 320
    st = ledger.studies.get("1.9")
    assert st is not None and st.instance_count == 320


def test_admin_commands(tmp_path: Path, ledger_url: str, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARDIONODE_CONFIG", raising=False)
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "var", ledger_url=ledger_url)
    ledger = Ledger(ledger_url)
    ledger.instances.record(meta("1.9.1.1"))
    job = ledger.jobs.create("1.9", "spect_mpi")
    ledger.jobs.transition(job.id, "failed", error="ValueError: no LV found")
    ledger.rejections.record("SOP class 1.2.3 is not stored by this node", 0x0122, calling_ae="PACS")

    assert cli_main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "1.9" in out and "receiving" in out and "failed" in out and "no LV found" in out and "0x0122" in out

    assert cli_main(["--config", str(config), "complete", "1.9"]) == 1  # no pipeline accepts it: says why
    assert "no pipeline can process it" in capsys.readouterr().err
    assert cli_main(["--config", str(config), "complete", "1.9", "--pipeline", "spect_mpi"]) == 0
    study = ledger.studies.get("1.9")
    assert study is not None and (study.state, study.rule) == ("complete", "manual")
    assert cli_main(["--config", str(config), "complete", "7.7"]) == 1
    assert "no study 7.7" in capsys.readouterr().err

    assert cli_main(["--config", str(config), "retry", str(job.id)]) == 0
    assert ledger.jobs.get(job.id).state == "queued"  # type: ignore[union-attr]
    assert cli_main(["--config", str(config), "discard", str(job.id)]) == 0
    assert ledger.jobs.get(job.id).state == "discarded"  # type: ignore[union-attr]
    assert cli_main(["--config", str(config), "retry", "x"]) == 1
    audit = (tmp_path / "var" / "audit" / "audit.jsonl").read_text()
    assert '"event": "admin.complete"' in audit and '"event": "admin.discard"' in audit
    ledger.close()


def test_a_ledger_of_an_earlier_version_is_refused_in_words(ledger_url: str) -> None:
    """Series rows without routing attributes (the ledger before one extractor) are not silently misread."""
    database = make_url(ledger_url).database
    if ledger_url.startswith("sqlite") and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE series (series_uid VARCHAR(64) PRIMARY KEY, study_uid VARCHAR(64), "
                          "modality VARCHAR(16), description TEXT, instance_count INTEGER)"))
    engine.dispose()
    with pytest.raises(LedgerError, match="created by an earlier CardioNode .* move it aside"):
        Ledger(ledger_url)
