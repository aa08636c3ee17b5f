"""A ledger written before a column was added gets the column when opened (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from node.ledger import InstanceMeta, Ledger, OutputMeta

NM = "1.2.840.10008.5.1.4.1.1.20"
SC = "1.2.840.10008.5.1.4.1.1.7"


def test_a_ledger_without_sends_peer_text_gets_it(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.instances.record(InstanceMeta(sop_instance_uid="1.9.1.1", sop_class_uid=NM, study_uid="1.9",
                                         series_uid="1.9.1", path="/spool/a.dcm", size_bytes=1,
                                         routing={"sop_class_uid": NM}))
    ledger.studies.transition("1.9", "complete", "manual", rule="manual")
    ledger.studies.transition("1.9", "processing", "run 1")
    job = ledger.jobs.create("1.9", "spect_mpi")
    ledger.outputs.record(job.id, "spect_mpi", OutputMeta("2.25.1", "1.9", "2.25.10", SC, "/outbox/sc.dcm"))
    (send,) = ledger.sends.create("2.25.1", ["pacs"])
    ledger.close()
    engine = create_engine(ledger_url)
    with engine.begin() as conn:  # as an earlier CardioNode wrote it
        conn.execute(text("ALTER TABLE sends DROP COLUMN peer_text"))
    assert "peer_text" not in {c["name"] for c in inspect(engine).get_columns("sends")}
    engine.dispose()

    reopened, again = Ledger(ledger_url), Ledger(ledger_url)  # a second opener finds the column there
    try:
        assert [s.peer_text for s in reopened.sends.find()] == [""]
        dead = reopened.sends.record_attempt(send.id, "dead_letter", status=0xA900, error="destination answered 0xA900",
                                             peer_text="<patient-name> conflicts with existing record")
        assert dead.peer_text == "<patient-name> conflicts with existing record"
        assert "conflicts" not in " ".join(e.reason for e in reopened.events.recent(10))  # events: the node's words
    finally:
        reopened.close()
        again.close()
