"""The node's side of the queue: send step tasks, look at their state, move bytes.

:class:`JobQueue` is all the node process needs from Celery and the artifact
store; the conductor (:mod:`node.queue.conductor`) uses it and the ledger.
Task ids are derived from the node, the job attempt and the step
(``cn-<node>-<job>.<attempt>-<step>``), so after a restart the node finds a
step's task from the ledger's ``task_id`` alone. ``<node>`` (a short digest of
the node's device UID) keeps two nodes, or a node whose ledger was reset,
from mistaking each other's tasks and artifacts in a shared Redis.
"""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, states

from node.queue.app import QueueSettings, create_app
from node.queue.artifacts import ArtifactStore
from node.queue.steps import StepMessage, input_key, job_prefix
from node.queue.supervision import StepOwner, owner_of
from node.queue.tasks import STEP_TASK

__all__ = ["StepState", "JobQueue", "is_disk_full", "node_tag", "job_key", "task_id_for", "parse_task_id"]

_TASK_ID_RE = re.compile(r"^cn-(?P<node>[0-9a-z]+)-(?P<job>\d+)\.(?P<attempt>\d+)-(?P<step>[a-z_]+)$")


def node_tag(device_uid: str) -> str:
    """A short, stable tag of the node (12 hex digits of SHA-256 of its device UID)."""
    return hashlib.sha256(device_uid.encode("ascii")).hexdigest()[:12]


def job_key(node: str, job_id: int, attempt: int) -> str:
    """The artifact key of a job attempt (``<node>-<job>.<attempt>``)."""
    return f"{node}-{int(job_id)}.{int(attempt)}"


def task_id_for(node: str, job_id: int, attempt: int, step: str) -> str:
    """The task id of ``step`` in attempt ``attempt`` (1-based) of job ``job_id`` of ``node``."""
    return f"cn-{job_key(node, job_id, attempt)}-{step}"


def parse_task_id(task_id: str) -> tuple[int, int, str]:
    """``(job_id, attempt, step)`` from a task id made by :func:`task_id_for`."""
    match = _TASK_ID_RE.match(task_id or "")
    if not match:
        raise ValueError(f"not a CardioNode task id: {task_id!r}")
    return int(match["job"]), int(match["attempt"]), match["step"]


def is_disk_full(error: object) -> bool:
    """Whether ``error`` (an exception, or a step's error in words) is "no space left on device" or
    "disk quota exceeded": a fault that passes when space returns."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return f"[Errno {errno.ENOSPC}]" in text or f"[Errno {errno.EDQUOT}]" in text


@dataclass(frozen=True)
class StepState:
    """Where a step task is: ``waiting`` (queued or running), ``done`` or ``failed``.

    ``result`` is the task's return value when done; ``error`` the exception
    in words when failed; ``celery_state`` the raw Celery state; ``owner`` the
    worker that took it (``RECEIVED``/``STARTED``, :mod:`node.queue.supervision`).
    """

    status: str
    celery_state: str
    result: dict[str, Any] | None = None
    error: str = ""
    owner: StepOwner | None = None
    disk_full: bool = False  # failed with ENOSPC/EDQUOT: transient, the step runs again when space returns


class JobQueue:
    """Submit pipeline steps to Celery and exchange artifacts with the workers."""

    def __init__(self, queue_settings: QueueSettings, device_uid: str, app: Celery | None = None) -> None:
        self.settings = queue_settings
        self.node = node_tag(device_uid)
        self.app = app or create_app(queue_settings)
        self.store: ArtifactStore = queue_settings.open_artifacts()

    def declare_queues(self) -> None:
        """Create the node's queues on the broker before any worker starts.

        kombu's SQLAlchemy transport creates a queue's row on first use; a
        worker and the node doing so at the same moment collide on the unique
        queue name, and the loser's publish fails. Declaring them once, up
        front, from the node removes the race.
        """
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            for queue in self.app.conf.task_queues:
                queue.bind(channel).declare()

    def upload_inputs(self, job_id: int, attempt: int, paths: Sequence[str | Path]) -> int:
        """Put the study's instance files in the artifact store for this attempt; returns bytes copied
        (a directory store on the spool's file system references the spool files: 0 bytes)."""
        key = job_key(self.node, job_id, attempt)
        return sum(self.store.put_file(input_key(key, index), Path(path)) for index, path in enumerate(paths))

    def submit(
        self,
        job_id: int,
        attempt: int,
        pipeline: str,
        pipeline_version: str,
        step: str,
        queue: str,
        previous: str = "",
        context: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> str:
        """Send one step task to ``queue`` and return its task id (deterministic).

        ``config`` and ``context`` are the :class:`StepMessage` fields of the same names.
        """
        message = StepMessage(
            job_key=job_key(self.node, job_id, attempt),
            pipeline=pipeline,
            pipeline_version=pipeline_version,
            step=step,
            previous=previous,
            context=context or {},
            config=config or {},
        )
        task_id = task_id_for(self.node, job_id, attempt, step)
        self.app.send_task(STEP_TASK, args=[message.to_dict()], task_id=task_id, queue=queue)
        return task_id

    def state(self, task_id: str) -> StepState:
        """The state of a step task, from the result backend."""
        result = self.app.AsyncResult(task_id)
        celery_state = result.state
        if celery_state == states.SUCCESS:
            value = result.result
            return StepState("done", celery_state, value if isinstance(value, dict) else {"value": value})
        if celery_state in (states.FAILURE, states.REVOKED):
            error = result.result
            words = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
            return StepState("failed", celery_state, error=words, disk_full=is_disk_full(error))
        return StepState("waiting", celery_state, owner=owner_of(celery_state, result.info))

    def forget(self, job_id: int, attempt: int, step: str) -> None:
        """Drop a finished step's result from the backend."""
        self.app.AsyncResult(task_id_for(self.node, job_id, attempt, step)).forget()

    def outputs_prefix(self, job_id: int, attempt: int) -> str:
        """The key prefix under which the report step of a job attempt writes its objects (ends with ``/``)."""
        return f"{job_prefix(job_key(self.node, job_id, attempt))}/outputs/"

    def fetch(self, key: str) -> bytes:
        """Bytes of an artifact written by a worker (e.g. an output object)."""
        return self.store.get(key)

    def cleanup(self, job_id: int, attempt: int) -> None:
        """Delete every artifact of a job attempt."""
        self.store.delete_prefix(job_prefix(job_key(self.node, job_id, attempt)))

    def close(self) -> None:
        self.app.close()
