"""Celery task ids and worker arguments."""

from __future__ import annotations

import pytest

from node.queue.dispatch import parse_task_id, task_id_for
from node.queue.worker import parse_queues, worker_argv


def test_task_ids_round_trip() -> None:
    assert parse_task_id(task_id_for("0a1b2c", 17, 2, "predict")) == (17, 2, "predict")
    with pytest.raises(ValueError):
        parse_task_id("someone-elses-task")


def test_worker_arguments() -> None:
    assert parse_queues("gpu") == ["gpu"]
    with pytest.raises(ValueError):
        parse_queues("gpu,video")
    argv = worker_argv(["gpu"], 1)
    assert "--queues=gpu" in argv and "--concurrency=1" in argv
