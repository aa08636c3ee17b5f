"""Celery task definitions: a thin wrapper around :func:`node.queue.steps.run_step`.

One task, ``cardionode.step``, runs any step of any pipeline; the node sends it
to the queue the pipeline declares for that step (``cpu`` or ``gpu``). Its result is
:func:`node.queue.steps.run_step`'s, plus the step's wall-clock ``seconds`` and ``cpu_seconds``
in the worker (the node records them as metrics: :mod:`node.queue.conductor`). The task
id is chosen by the node (:func:`node.queue.dispatch.task_id_for`) so that the
node finds the result again after a restart from the ledger alone.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, signals

from node.queue.artifacts import ArtifactStore
from node.queue.steps import StepMessage, run_step
from node.queue.supervision import RECEIVED

__all__ = ["STEP_TASK", "register"]

STEP_TASK = "cardionode.step"

_log = logging.getLogger(__name__)


def register(app: Celery, store: ArtifactStore) -> None:
    """Register the node's tasks on ``app``; they read and write ``store``.

    Also records, in the worker's main process, which worker took each step message
    (state ``RECEIVED`` with the worker's node name, main pid and time; see
    :mod:`node.queue.supervision`), so that the node notices a step whose worker died.
    """

    def received(sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or getattr(request, "name", "") != STEP_TASK or sender is None or sender.app is not app:
            return
        try:
            app.backend.store_result(
                request.id, {"hostname": request.hostname, "pid": os.getpid(), "at": time.time()}, RECEIVED
            )
        except Exception:  # ownership is a hint for the node; the task runs anyway
            _log.warning("task %s: could not record its owner", request.id, exc_info=True)

    signals.task_received.connect(received, weak=False)

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
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_step(store, parsed)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        _log.info("job %s: step %s finished in %.3f s, %.3f s CPU", parsed.job_key, parsed.step, seconds, cpu_seconds)
        # the node observes these (node.telemetry JOB_DURATION, MODEL_INFERENCE): a worker exports no metrics itself
        return {**result, "seconds": round(seconds, 6), "cpu_seconds": round(cpu_seconds, 6)}
