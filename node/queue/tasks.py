"""Celery task definitions: a thin wrapper around :func:`node.queue.steps.run_step`.

One task, ``cardionode.step``, runs any step of any pipeline; the node sends it
to the queue the pipeline declares for that step (``cpu`` or ``gpu``). The task
id is chosen by the node (:func:`node.queue.dispatch.task_id_for`) so that the
node finds the result again after a restart from the ledger alone.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from node.queue.artifacts import ArtifactStore
from node.queue.steps import StepMessage, run_step

__all__ = ["STEP_TASK", "register"]

STEP_TASK = "cardionode.step"

_log = logging.getLogger(__name__)


def register(app: Celery, store: ArtifactStore) -> None:
    """Register the node's tasks on ``app``; they read and write ``store``."""

    @app.task(name=STEP_TASK, bind=True)
    def step(self: Any, message: dict[str, Any]) -> dict[str, Any]:
        parsed = StepMessage.from_dict(message)
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        _log.info(
            "job %s: %s %s step %s%s",
            parsed.job_key,
            parsed.pipeline,
            parsed.pipeline_version,
            parsed.step,
            " (redelivered)" if redelivered else "",
        )
        return run_step(store, parsed)
