"""Start-up recovery of the SQLite broker (:mod:`node.queue.recovery`): the ledger decides.

Real SQLite broker and result backend, step messages sent by the node's :class:`JobQueue` and
taken as a worker takes them (:func:`tests.support.worker.take_step`), a real ledger. Only the
current step of a ``running`` job whose task has not finished comes back, once; the messages of
collected jobs (their results forgotten by the conductor) and every other message are deleted.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from celery import states

from node.config import Settings
from node.ledger import Ledger
from node.queue.app import QueueSettings
from node.queue.dispatch import JobQueue
from node.queue.recovery import restore_unfinished, unfinished_steps
from tests.support.nm import write_nm_study
from tests.support.worker import record_instances, take_step


def _rows(data: Path) -> list[tuple[str, int]]:
    """(task id, visible) of every message in the SQLite broker."""
    with sqlite3.connect(data / "broker.sqlite") as db:
        return [(json.loads(payload)["headers"]["id"], int(visible))
                for payload, visible in db.execute("SELECT payload, visible FROM kombu_message ORDER BY id")]


def test_only_unfinished_steps_the_ledger_waits_for_come_back_once(tmp_path: Path, seed: int) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    ledger = Ledger.from_settings(settings)
    queue_settings = QueueSettings.from_settings(settings)
    queue = JobQueue(queue_settings, settings.effective_device_uid())
    study_uid, _, files = write_nm_study(tmp_path / "study", 1, seed)
    record_instances(ledger, files)
    jobs = [ledger.jobs.create(study_uid, "flowtest_nm") for _ in range(4)]
    try:
        def send(job_id: int, step: str) -> str:
            return queue.submit(job_id, 1, "flowtest_nm", "1.0", step, "cpu", config={})

        collected = send(jobs[0].id, "report")  # taken and finished; the conductor forgot its result
        taken_twice = send(jobs[1].id, "analyse")  # taken, redelivered once (a second row), then the node died
        finished = send(jobs[2].id, "predict")  # taken and succeeded; the conductor has not seen it yet
        for _ in range(3):
            take_step(queue, "cpu")
        queue.submit(jobs[1].id, 1, "flowtest_nm", "1.0", "analyse", "cpu", config={})
        take_step(queue, "cpu")
        abandoned = send(jobs[3].id, "analyse")  # never taken; its job was discarded meanwhile
        queue.app.backend.store_result(finished, {"result": "key"}, states.SUCCESS)
        queue.app.backend.store_result(taken_twice, {"hostname": "gone", "pid": 1, "at": 0.0}, "STARTED")
        for job, task_id in ((jobs[1], taken_twice), (jobs[2], finished)):
            ledger.jobs.transition(job.id, "running", "a step", task_id=task_id)
        ledger.jobs.transition(jobs[0].id, "reported", "collected", task_id=collected)
        ledger.jobs.transition(jobs[3].id, "discarded", "by an operator", task_id=abandoned)
        assert sorted(set(_rows(queue_settings.data_dir))) == sorted(
            {(collected, 0), (taken_twice, 0), (finished, 0), (abandoned, 1)})

        waited = unfinished_steps(ledger)
        assert waited == {taken_twice, finished}
        assert restore_unfinished(queue.app, queue_settings.broker_url, waited) == (1, 4)
        assert _rows(queue_settings.data_dir) == [(taken_twice, 1)]
        assert take_step(queue, "cpu")[0] == taken_twice  # what a worker gets: the unfinished step, once
        assert restore_unfinished(queue.app, queue_settings.broker_url, set()) == (0, 1)
        assert _rows(queue_settings.data_dir) == []
    finally:
        queue.close()
        ledger.close()
