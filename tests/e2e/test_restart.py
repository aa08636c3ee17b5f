"""Issue 13 item 7: a restart resumes only unfinished jobs, and silently for the finished ones.

``cardionode serve`` (SQLite broker, its own local worker, the flow test pipeline) processes
:data:`N_STUDIES` studies; the node is stopped (SIGTERM), then killed (SIGKILL), and started
again each time. Every step the worker runs is counted from the worker's side: its log line
``job <key>: <pipeline> <version> step <step>`` (:mod:`node.queue.tasks`) and the rows the
worker writes to the result backend (``RECEIVED``, ``STARTED``, ``SUCCESS``/``FAILURE``; the
conductor forgets those of a collected job). A restart must run no step of a finished job,
write no ERROR line, and leave the ledger's jobs and their events as they were. A further
study sent after the restart is the positive control (the worker consumes and runs steps), and
the checks wait until the broker holds no message the worker has not taken and finished. Last, a job interrupted
mid-step by ``kill -9`` resumes, and its interrupted step runs exactly once more.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for

pytestmark = pytest.mark.network

#: studies processed before the first restart (the issue measured 3 ghost steps and 3 ERRORs per study)
N_STUDIES = 3
#: the worker's record of each step it runs (node.queue.tasks)
_STEP_LINE = re.compile(r" node\.queue\.tasks .*?job (?P<job>\S+): \S+ \S+ step (?P<step>[a-z_]+)")


def _worker_logs(data: Path) -> list[Path]:
    return sorted((data / "logs").glob("worker-*.log"))


def _log_offsets(data: Path) -> dict[Path, int]:
    """Where each log file ends now (bytes): what a restart writes comes after."""
    return {path: path.stat().st_size for path in sorted((data / "logs").glob("*.log"))}


def _since(offsets: dict[Path, int], data: Path) -> dict[Path, str]:
    """What each log file of the data directory gained since ``offsets``."""
    text: dict[Path, str] = {}
    for path in sorted((data / "logs").glob("*.log")):
        with open(path, "rb") as handle:
            handle.seek(offsets.get(path, 0))
            text[path] = handle.read().decode("utf-8", errors="replace")
    return text


def _steps_run(logs: dict[Path, str]) -> Counter[tuple[str, str]]:
    """(job key, step) -> how many times a worker ran it, from the worker logs in ``logs``."""
    runs: Counter[tuple[str, str]] = Counter()
    for path, text in logs.items():
        if path.name.startswith("worker-"):
            runs.update((m["job"], m["step"]) for m in _STEP_LINE.finditer(text))
    return runs


def _error_lines(logs: dict[Path, str], stdout: str) -> list[str]:
    lines = [line for text in (*logs.values(), stdout) for line in text.splitlines()]
    return [line for line in lines if " ERROR " in line or "Traceback" in line]


def _task_rows(data: Path) -> list[tuple[str, str]]:
    """(task id, state) of every row of the result backend."""
    path = data / "results.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        if not db.execute("SELECT name FROM sqlite_master WHERE name = 'celery_taskmeta'").fetchone():
            return []
        return [(str(task), str(state)) for task, state in db.execute("SELECT task_id, status FROM celery_taskmeta")]


def _ledger(data: Path) -> tuple[list[tuple[int, str, int]], int]:
    """((job id, state, attempts) of every job, number of job events) from the ledger."""
    with sqlite3.connect(data / "ledger.sqlite") as db:
        jobs = [(int(i), str(s), int(a)) for i, s, a in db.execute("SELECT id, state, attempts FROM jobs ORDER BY id")]
        events = int(db.execute("SELECT COUNT(*) FROM events WHERE entity = 'job'").fetchone()[0])
    return jobs, events


def _queue_drained(data: Path) -> bool:
    """Whether the worker took every message of the broker and finished what it took (no visible
    message in the SQLite broker, no ``RECEIVED``/``STARTED`` row in the result backend), and the
    conductor collected the newest job (it forgets the result rows of a job's steps last)."""
    with sqlite3.connect(data / "broker.sqlite") as db:
        waiting = int(db.execute("SELECT COUNT(*) FROM kombu_message WHERE visible = 1").fetchone()[0])
    with sqlite3.connect(data / "ledger.sqlite") as db:
        (newest,) = db.execute("SELECT MAX(id) FROM jobs").fetchone()
    rows = _task_rows(data)
    return (waiting == 0 and not [row for row in rows if row[1] in ("RECEIVED", "STARTED")]
            and not [row for row in rows if re.match(rf"cn-[0-9a-z]+-{newest}\.", row[0])])


def _reported(data: Path, count: int) -> bool:
    jobs, _ = _ledger(data)
    return sum(1 for _, state, _ in jobs if state == "reported") >= count


def _restart_quietly(node: NodeProcess, data: Path, files: list[Path], jobs_before: int, how: str) -> None:
    """Stop the node (``how``: "stop" SIGTERM, "kill" SIGKILL), start it again, send one more study
    and check that the restart ran no step of the finished jobs and logged no error."""
    finished = {key for key, _ in _steps_run({path: path.read_text() for path in _worker_logs(data)})}
    if how == "stop":
        node.stop()
    else:
        node.kill()
    ledger_before = _ledger(data)
    assert [state for _, state, _ in ledger_before[0]] == ["reported"] * jobs_before, ledger_before
    offsets, stdout_offset = _log_offsets(data), len(node.output())
    node.start()
    storescu(node.port, files, check=True)  # the positive control: the worker consumes while it runs
    wait_for(lambda: _reported(data, jobs_before + 1), 90, f"the study sent after the restart ({how}) to be reported")
    wait_for(lambda: _queue_drained(data), 60, "the worker to take and finish every message of the broker")
    logs = _since(offsets, data)
    runs = _steps_run(logs)
    ghosts = {run: n for run, n in runs.items() if run[0] in finished}
    assert ghosts == {}, f"after a {how}: steps of finished jobs run again: {ghosts}"
    assert len({key for key, _ in runs}) == 1 and set(runs.values()) == {1}, runs
    assert sorted(step for _, step in runs) == ["analyse", "predict", "report"], runs
    errors = _error_lines(logs, node.output()[stdout_offset:])
    assert errors == [], f"after a {how}: {len(errors)} ERROR lines: {errors[:6]}"
    jobs_after, events_after = _ledger(data)
    assert jobs_after[:jobs_before] == ledger_before[0], "a finished job changed in the ledger"
    assert events_after - ledger_before[1] == _events_of_last_job(data), "the finished jobs gained ledger events"
    assert _task_rows(data) == [], "the result backend holds rows of steps run after the jobs were collected"
    assert "task message(s) taken by workers" not in node.output()[stdout_offset:], "a finished step was restored"


def _events_of_last_job(data: Path) -> int:
    with sqlite3.connect(data / "ledger.sqlite") as db:
        (job,) = db.execute("SELECT MAX(id) FROM jobs").fetchone()
        return int(db.execute("SELECT COUNT(*) FROM events WHERE entity = 'job' AND entity_id = ?",
                              (str(job),)).fetchone()[0])


@pytest.mark.slow  # about 2 min: three starts of the node and six studies
def test_restart_after_processed_studies_runs_no_finished_step(tmp_path: Path, seed: int) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "release").write_text("")  # analyse runs through until the last part of the test
    port = free_port()
    data = tmp_path / "data"
    config = write_config(tmp_path / "node.toml", **serve_settings(data, port, []))
    node = NodeProcess(config, port, tmp_path / "node-stdout.log", mode="serve",
                       env={"FLOWTEST_HOLD_DIR": str(hold)})
    studies = [write_nm_study(tmp_path / f"study-{k}", 2, seed + k, frames=2, size=32).paths
               for k in range(N_STUDIES + 3)]
    try:
        node.start()
        for files in studies[:N_STUDIES]:
            storescu(port, files, check=True)
        wait_for(lambda: _reported(data, N_STUDIES), 120, f"{N_STUDIES} studies to be reported")
        before = _steps_run({p: p.read_text() for p in _worker_logs(data)})
        assert len(before) == 3 * N_STUDIES and set(before.values()) == {1}, before

        _restart_quietly(node, data, studies[N_STUDIES], N_STUDIES, "stop")
        _restart_quietly(node, data, studies[N_STUDIES + 1], N_STUDIES + 1, "kill")

        # a job interrupted mid-step: its analyse runs once more after the restart, nothing else again
        (hold / "release").unlink()
        for started in hold.glob("started-*"):
            started.unlink()
        storescu(port, studies[N_STUDIES + 2], check=True)
        wait_for(lambda: sorted(hold.glob("started-*")), 60, "the analyse step to start")
        node.kill()
        for started in hold.glob("started-*"):
            started.unlink()
        offsets = _log_offsets(data)
        node.start()
        wait_for(lambda: sorted(hold.glob("started-*")), 60, "the interrupted analyse step to run again")
        (hold / "release").write_text("")
        wait_for(lambda: _reported(data, N_STUDIES + 3), 90, "the interrupted job to be reported")
        wait_for(lambda: _queue_drained(data), 60, "the worker to take and finish every message of the broker")
        runs = _steps_run(_since(offsets, data))
        assert len({key for key, _ in runs}) == 1 and set(runs.values()) == {1}, runs
        assert sorted(step for _, step in runs) == ["analyse", "predict", "report"], runs
        assert len(list(hold.glob("started-*"))) == 1
        assert "restored 1 task message" in node.output()
        jobs, _ = _ledger(data)
        assert [state for _, state, _ in jobs] == ["reported"] * (N_STUDIES + 3)
        assert len(list((data / "outbox").rglob("*.dcm"))) == 2 * (N_STUDIES + 3)
    finally:
        (hold / "release").write_text("")
        node.stop()
