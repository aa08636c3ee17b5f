"""Schema revisions (Alembic) on SQLite and PostgreSQL: an empty database, a ledger of the previous
release, older and newer revisions, and processes creating a ledger together.

The previous release's ledger is built from ``data/previous_release_<dialect>.sql`` (the DDL that
release ran, captured from its code) and ``data/previous_release_rows.sql`` (rows as its stores
wrote them). "Same schema as the models" is Alembic's own comparison
(:func:`alembic.autogenerate.compare_metadata`: tables, columns, types, nullability, indexes,
unique and foreign keys, and server defaults on PostgreSQL) finding no difference.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from node.cli import main as cli_main
from node.ledger import Ledger, LedgerSchemaError, OutputMeta, read_schema_status, upgrade_schema
from node.ledger.revisions import VERSION_TABLE, alembic_config, head_revision
from node.ledger.schema import Base
from tests.support import PYTHON
from tests.support.config import listener_config, write_config
from tests.support.node import node_env

DATA = Path(__file__).parent / "data"
SR34 = "1.2.840.10008.5.1.4.1.1.88.34"


def _dialect(url: str) -> str:
    return make_url(url).get_backend_name()


def _run_sql(url: str, path: Path) -> None:
    """Run the statements of ``path`` (``--`` comment lines, statements ending with ``;`` at a line's end)."""
    body = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("--"))
    statements = [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE) if s.strip()]
    database = make_url(url).database
    if _dialect(url) == "sqlite" and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
    engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()


def _previous_release_ledger(url: str, *, peer_text: bool = True) -> None:
    """The ledger the previous release left, with rows; without ``sends.peer_text`` for the release before it."""
    _run_sql(url, DATA / f"previous_release_{_dialect(url)}.sql")
    if not peer_text:
        _execute(url, "ALTER TABLE sends DROP COLUMN peer_text")
    _run_sql(url, DATA / "previous_release_rows.sql")
    if peer_text:
        _execute(url, "UPDATE sends SET peer_text = '<patient-name> already stored'")


def _differences(url: str) -> list[Any]:
    """Alembic's differences between the database at ``url`` and the models (``Base.metadata``).

    Server defaults are compared on PostgreSQL only: on SQLite Alembic reads the reflected
    ``DEFAULT ''`` of ``sends.peer_text`` as ``('')`` and reports a difference that is not one
    (the upgrade tests check that existing sends get ``''``).
    """
    engine = create_engine(url)
    with engine.connect() as connection:
        options = {"compare_type": True, "compare_server_default": _dialect(url) == "postgresql"}
        context = MigrationContext.configure(connection, opts=options)
        found = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(found)


def _config(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path / "db.toml", data_dir=tmp_path / "var", ledger_url=url)


def test_an_empty_database_upgraded_has_the_models_schema(ledger_url: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert read_schema_status(ledger_url).state == "empty"
    assert cli_main(["--config", str(_config(tmp_path, ledger_url)), "db", "upgrade"]) == 0
    assert f"created at schema revision {head_revision()} (head)" in capsys.readouterr().out
    assert _differences(ledger_url) == []
    status = read_schema_status(ledger_url)
    assert (status.state, status.revision) == ("current", head_revision())
    assert cli_main(["--config", str(_config(tmp_path, ledger_url)), "db", "current"]) == 0
    assert f"schema revision {head_revision()} (head" in capsys.readouterr().out


def test_the_node_creates_an_empty_database_at_head(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    ledger.close()
    assert read_schema_status(ledger_url).state == "current"
    assert _differences(ledger_url) == []


def test_processes_opening_an_empty_database_together_create_it_once(ledger_url: str) -> None:
    opened: list[Ledger] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_ledger() -> None:
        try:
            start.wait()
            opened.append(Ledger(ledger_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_ledger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ledger in opened:
        ledger.close()
    assert errors == [] and len(opened) == 6
    engine = create_engine(ledger_url)
    with engine.connect() as connection:
        assert list(connection.execute(text("SELECT version_num FROM alembic_version"))) == [(head_revision(),)]
    engine.dispose()


def test_a_previous_release_ledger_is_refused_then_upgraded_with_its_rows(
        ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _previous_release_ledger(ledger_url)
    config = _config(tmp_path, ledger_url)
    with pytest.raises(LedgerSchemaError, match=r"before schema revisions .*`cardionode db upgrade`"):
        Ledger(ledger_url)
    assert cli_main(["--config", str(config), "status"]) == 1
    assert "`cardionode db upgrade`" in capsys.readouterr().err
    assert cli_main(["--config", str(config), "db", "current"]) == 1
    assert "before schema revisions" in capsys.readouterr().out

    assert cli_main(["--config", str(config), "db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert "match revision 0002" in out and f"upgraded to revision {head_revision()}" in out
    assert _differences(ledger_url) == []

    ledger = Ledger(ledger_url)
    try:
        study = ledger.studies.get("1.9")
        assert study is not None and (study.state, study.rule, study.run, study.instance_count) == (
            "done", "expected_series", 1, 2)
        (series,) = ledger.studies.summary("1.9").series
        assert series.image_type == ("ORIGINAL", "PRIMARY", "RECON TOMO") and series.instance_count == 2
        assert {i.sop_instance_uid for i in ledger.instances.of_study("1.9")} == {"1.9.1.1", "1.9.1.2"}
        (job,) = ledger.jobs.find()
        assert (job.id, job.state, job.task_id) == (1, "sent", "t-1")
        assert ledger.outputs.predecessors("1.9", "spect_mpi") == (("1.9", "2.25.10", SR34, "2.25.1"),)
        (send,) = ledger.sends.find()
        assert (send.state, send.attempts, send.peer_text) == ("sent", 2, "<patient-name> already stored")
        assert [e.to_state for e in ledger.events.find()] == ["receiving", "complete", "sent"]
        (rejection,) = ledger.rejections.find()
        assert rejection.status == 290 and rejection.calling_ae == "PACS"
        # the node goes on where the release left: new rows get new ids from the same sequences
        ledger.studies.transition("1.9", "complete", "operator", rule="manual")
        ledger.studies.transition("1.9", "processing", "run 2")
        new_job = ledger.jobs.create("1.9", "spect_mpi")
        assert new_job.id == 2 and new_job.run == 2
        ledger.outputs.record(new_job.id, "spect_mpi", OutputMeta("2.25.2", "1.9", "2.25.11", SR34, "/outbox/sr2.dcm"))
        (new_send,) = ledger.sends.create("2.25.2", ["pacs"])
        assert new_send.id == 2 and len(ledger.events.find()) == 7
        assert ledger.outputs.predecessors("1.9", "spect_mpi", before_run=2) == (("1.9", "2.25.10", SR34, "2.25.1"),)
    finally:
        ledger.close()
    assert cli_main(["--config", str(config), "status"]) == 0
    assert "1.9" in capsys.readouterr().out
    assert cli_main(["--config", str(config), "db", "upgrade"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_serve_and_listen_refuse_a_previous_release_ledger_in_words(tmp_path: Path) -> None:
    """The commands' wiring, on SQLite only: the refusal itself is the same on both (tests above)."""
    ledger_url = f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite'}"
    _previous_release_ledger(ledger_url)
    config, _ = listener_config(tmp_path, ledger_url=ledger_url, workers=[])
    for command_name in ("serve", "listen"):
        done = subprocess.run([PYTHON, "-m", "node.cli", "--config", str(config), command_name], env=node_env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (command_name, done.stderr[-2000:])
        assert f"cardionode {command_name}: the ledger at" in done.stderr
        assert "run `cardionode db upgrade`" in done.stderr and "Traceback" not in done.stderr
    assert read_schema_status(ledger_url).state == "unversioned"  # refusing changed nothing


def test_a_ledger_from_before_sends_peer_text_is_upgraded_through_both_revisions(ledger_url: str) -> None:
    _previous_release_ledger(ledger_url, peer_text=False)
    status = read_schema_status(ledger_url)
    assert (status.state, status.revision) == ("unversioned", "0001")
    before, after = upgrade_schema(ledger_url)
    assert (before.state, before.revision, after.state, after.revision) == (
        "unversioned", "0001", "current", head_revision())
    assert _differences(ledger_url) == []
    ledger = Ledger(ledger_url)
    try:
        (send,) = ledger.sends.find()
        assert send.peer_text == "" and send.state == "sent"
        dead = ledger.sends.record_attempt(send.id, "dead_letter", status=0xA900, error="destination answered 0xA900",
                                           peer_text="<patient-name> conflicts with existing record")
        assert dead.peer_text == "<patient-name> conflicts with existing record"
        assert "conflicts" not in " ".join(e.reason for e in ledger.events.recent(10))  # events: the node's words
    finally:
        ledger.close()


def test_a_failed_upgrade_changes_nothing(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording the revision of a ledger made before revisions, and every revision after it, is one transaction."""
    _previous_release_ledger(ledger_url, peer_text=False)
    real_upgrade = command.upgrade  # the function node.ledger.revisions calls

    def upgrade_then_fail(config: Any, target: str) -> None:
        real_upgrade(config, target)  # stamped 0001, then 0002 ran: sends.peer_text added
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(command, "upgrade", upgrade_then_fail)
    with pytest.raises(RuntimeError, match="disk is full"):
        upgrade_schema(ledger_url)
    monkeypatch.undo()
    status = read_schema_status(ledger_url)
    assert (status.state, status.revision) == ("unversioned", "0001")
    engine = create_engine(ledger_url)
    assert "peer_text" not in {c["name"] for c in inspect(engine).get_columns("sends")}
    assert VERSION_TABLE not in inspect(engine).get_table_names()
    engine.dispose()
    assert upgrade_schema(ledger_url)[1].state == "current"


def test_an_older_revision_is_refused_then_upgraded_and_downgrades_keep_rows(ledger_url: str) -> None:
    _previous_release_ledger(ledger_url)
    upgrade_schema(ledger_url)
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
    assert "peer_text" not in {c["name"] for c in inspect(engine).get_columns("sends")}
    engine.dispose()
    with pytest.raises(LedgerSchemaError, match=rf"at schema revision 0001 and this CardioNode needs revision {head_revision()}: "
                                                r"run `cardionode db upgrade`"):
        Ledger(ledger_url)
    before, after = upgrade_schema(ledger_url)
    assert (before.state, after.state) == ("behind", "current")
    assert _differences(ledger_url) == []
    ledger = Ledger(ledger_url)
    try:
        assert ledger.studies.get("1.9") is not None and [s.peer_text for s in ledger.sends.find()] == [""]
    finally:
        ledger.close()
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    engine.dispose()
    assert read_schema_status(ledger_url).state == "empty"


def test_revision_0003_adds_worklist_answers_and_its_downgrade_removes_them(ledger_url: str) -> None:
    """A ledger at 0002 with rows gains ``worklist_answers`` (empty: no study was looked up); a study's answer
    is then kept, and going back to 0002 drops the table and keeps every other row."""
    _previous_release_ledger(ledger_url)
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        command.stamp(alembic_config(connection), "0002")
        command.upgrade(alembic_config(connection), "0003")
    assert "worklist_answers" in inspect(engine).get_table_names()
    with engine.begin() as connection:
        assert list(connection.execute(text("SELECT count(*) FROM worklist_answers"))) == [(0,)]
        connection.execute(text(
            "INSERT INTO worklist_answers (study_uid, outcome, worklist, matched_by, attempts, error, patient_key, "
            "accession_number, pipeline, expected_series, clinical, steps, queried_at, updated_at) VALUES "
            "('1.9', 'found', 'ris', 'accession', 1, '', 'k', 'A1', 'spect_mpi', '[]', '{}', '[]', "
            "'2026-12-07 08:00:00', '2026-12-07 08:00:00')"))
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0002")
    assert "worklist_answers" not in inspect(engine).get_table_names()
    with engine.begin() as connection:
        assert list(connection.execute(text("SELECT state FROM studies WHERE study_uid = '1.9'"))) == [("done",)]
    engine.dispose()


def test_revision_0004_adds_workitems_and_subscriptions_and_its_downgrade_removes_them(ledger_url: str) -> None:
    """A ledger at 0003 with rows gains ``workitems`` and ``ups_subscriptions`` (empty); the stores use them
    (a claim decided in the write transaction, an event per state change); back to 0003 drops both tables and
    keeps every other row."""
    _previous_release_ledger(ledger_url)
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        command.stamp(alembic_config(connection), "0002")
        command.upgrade(alembic_config(connection), "0004")
    assert {"workitems", "ups_subscriptions"} <= set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
    engine.dispose()
    assert _differences(ledger_url) == []
    from node.ledger import WorkitemChange

    ledger = Ledger(ledger_url)
    try:
        assert ledger.workitems.create("1.2.3", state="SCHEDULED", label="SPECT", attributes={"00741000": {}})
        assert not ledger.workitems.create("1.2.3", state="SCHEDULED")
        claimed = ledger.workitems.change("1.2.3", lambda row: WorkitemChange(
            {"state": "IN PROGRESS", "transaction_uid": "9.9"}, "claimed") if row and row.state == "SCHEDULED" else None)
        again = ledger.workitems.change("1.2.3", lambda row: WorkitemChange(
            {"state": "IN PROGRESS", "transaction_uid": "8.8"}, "claimed") if row and row.state == "SCHEDULED" else None)
        assert claimed is not None and again is not None and again.transaction_uid == "9.9"
        assert [e.to_state for e in ledger.events.find("workitem", "1.2.3")] == ["SCHEDULED", "IN PROGRESS"]
        assert ledger.ups_subscriptions.subscribe("WATCHER", ["1.2.3"], True) == ["1.2.3"]
        assert ledger.ups_subscriptions.locked() == {"1.2.3"}
    finally:
        ledger.close()
    engine = create_engine(ledger_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0003")
    assert not {"workitems", "ups_subscriptions"} & set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        assert list(connection.execute(text("SELECT state FROM studies WHERE study_uid = '1.9'"))) == [("done",)]
    engine.dispose()


def test_a_newer_revision_is_refused_and_not_upgraded(ledger_url: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(ledger_url).close()
    _execute(ledger_url, "UPDATE alembic_version SET version_num = '0999'")
    with pytest.raises(LedgerSchemaError, match=r"revision 0999, which this CardioNode does not know .* newer CardioNode"):
        Ledger(ledger_url)
    assert cli_main(["--config", str(_config(tmp_path, ledger_url)), "db", "upgrade"]) == 1
    assert "newer CardioNode" in capsys.readouterr().err
    assert read_schema_status(ledger_url).revision == "0999"


def test_a_database_with_only_some_ledger_tables_is_not_taken_for_a_ledger(ledger_url: str) -> None:
    _run_sql(ledger_url, DATA / f"previous_release_{_dialect(ledger_url)}.sql")
    _execute(ledger_url, "DROP TABLE rejections", "DROP TABLE events")
    with pytest.raises(LedgerSchemaError, match=r"not events, rejections, .* not a CardioNode ledger"):
        Ledger(ledger_url)
    with pytest.raises(LedgerSchemaError, match="not a CardioNode ledger"):
        upgrade_schema(ledger_url)
