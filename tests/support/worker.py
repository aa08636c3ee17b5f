"""A worker in the test's own process: take step messages off the broker and run them as Celery would.

Tests that drive the real :class:`~node.queue.conductor.Conductor` step by step play the
worker's part with these, so that they can look at (or tamper with) the artifact store
between two steps::

    conductor.tick()
    task_id, message = take_step(queue, "cpu")
    outcome = run_taken_step(queue, task_id, message)   # stored in the result backend

:func:`record_instances` puts a folder's files in the ledger as the listener would.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from celery import states

from node.ledger import InstanceMeta, Ledger
from node.pipelines.routing import routing_attributes
from node.queue.dispatch import JobQueue
from node.queue.steps import StepMessage, run_step

__all__ = ["record_instances", "run_taken_step", "take_step", "work_step"]


def record_instances(ledger: Ledger, files: Iterable[Path]) -> None:
    """Record each DICOM file in ``ledger`` with its routing attributes, as the listener does on C-STORE."""
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ledger.instances.record(InstanceMeta(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                                            str(ds.SeriesInstanceUID), str(path), path.stat().st_size,
                                            routing=routing_attributes(ds)))


def take_step(queue: JobQueue, name: str, timeout_s: float = 10.0) -> tuple[str, StepMessage]:
    """The next step message on broker queue ``name``, as a worker receives it: (task id, message)."""
    with queue.app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue.app.amqp.queues[name])
        try:
            received = simple.get(timeout=timeout_s)
            received.ack()
        finally:
            simple.close()
    args, _kwargs, _embed = received.decode()
    return received.headers["id"], StepMessage.from_dict(json.loads(json.dumps(args[0])))


def run_taken_step(queue: JobQueue, task_id: str, message: StepMessage) -> dict[str, Any] | Exception:
    """Run ``message`` against the queue's artifact store and store its outcome in the result backend
    (SUCCESS with the return value, or FAILURE with the exception, as Celery's task tracer does);
    returns the value or the exception."""
    try:
        value = run_step(queue.store, message)
    except Exception as exc:
        queue.app.backend.mark_as_failure(task_id, exc)
        return exc
    queue.app.backend.store_result(task_id, value, states.SUCCESS)
    return value


def work_step(queue: JobQueue, name: str) -> StepMessage:
    """Take the next message on ``name``, run it and store its outcome; returns the message."""
    task_id, message = take_step(queue, name)
    run_taken_step(queue, task_id, message)
    return message
