"""Recovering messages of workers that died with the node (SQLite broker only).

kombu's SQLAlchemy transport marks a message invisible when a worker takes it
and never shows it again: acknowledging only forgets it in the worker's
memory, so the broker keeps a row for every step ever run. A worker killed
outright (``kill -9`` of the node and its local workers, power loss) leaves its
unfinished message invisible for ever. Redis has a visibility timeout for
this; the SQLite broker has this module.

:func:`restore_unfinished` runs when ``cardionode serve`` starts, *before* it
starts its workers (with a SQLite broker every worker is a local one). The
ledger is the one source of truth of what is unfinished: the current step of
every ``running`` job (its ``task_id``, :func:`unfinished_steps`). A message of
such a step whose task has not finished according to the result backend is
kept, visible, once; every other message is deleted: the steps of finished,
failed or discarded jobs (the conductor forgets their results once it
collected them, so the result backend alone cannot tell them from unfinished
ones) and steps the conductor will send again itself (a job left ``queued``,
or a step whose successor it had sent but not yet recorded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection

from celery import Celery, states
from sqlalchemy import create_engine, inspect, text

from node.ledger import Ledger

__all__ = ["restore_unfinished", "unfinished_steps"]

_log = logging.getLogger(__name__)


def _task_id(payload: str) -> str | None:
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    return headers.get("id") or properties.get("correlation_id")


def unfinished_steps(ledger: Ledger) -> set[str]:
    """The task ids the ledger waits for: the current step of every ``running`` job."""
    return {job.task_id for job in ledger.jobs.find(states=("running",)) if job.task_id}


def restore_unfinished(app: Celery, broker_url: str, waited_for: Collection[str]) -> tuple[int, int]:
    """Keep one visible message per unfinished step the ledger waits for; delete every other step message.

    ``waited_for``: the task ids of the steps the ledger waits for
    (:func:`unfinished_steps`). Such a step whose task has not finished according
    to the result backend keeps one visible row: a visible one if it has one
    (kombu puts a rejected message back as a *new* row and leaves the taken row
    invisible), else its newest taken row made visible again. Every other row
    with a task id is deleted: a step that finished (the conductor moves its job
    on from the result), or one the ledger does not wait for. ``broker_url`` is a
    ``sqla+sqlite:///...`` URL. Returns ``(restored, deleted)``: rows made visible
    again and rows deleted. Must not run while a worker consumes from this broker.
    """
    if not broker_url.startswith("sqla+"):
        return 0, 0
    engine = create_engine(broker_url[len("sqla+") :])
    try:
        if not inspect(engine).has_table("kombu_message"):
            return 0, 0
        restored = deleted = 0
        with engine.begin() as connection:
            rows_of: dict[str, list[tuple[int, bool]]] = {}
            for row_id, visible, payload in connection.execute(
                text("SELECT id, visible, payload FROM kombu_message ORDER BY id")
            ):
                task_id = _task_id(payload)
                if task_id is None:
                    if not visible:  # taken, and nobody can tell what it was
                        connection.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": row_id})
                        deleted += 1
                    continue
                rows_of.setdefault(task_id, []).append((row_id, bool(visible)))
            for task_id, rows in rows_of.items():
                keep: int | None = None
                if task_id in waited_for and app.AsyncResult(task_id).state not in states.READY_STATES:
                    visible_rows = [row_id for row_id, visible in rows if visible]
                    keep = visible_rows[-1] if visible_rows else rows[-1][0]
                    if not visible_rows:
                        connection.execute(text("UPDATE kombu_message SET visible = 1 WHERE id = :id"), {"id": keep})
                        restored += 1
                for row_id, _ in rows:
                    if row_id != keep:
                        connection.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": row_id})
                        deleted += 1
        if restored:
            _log.warning("restored %d task message(s) taken by workers that stopped before finishing", restored)
        return restored, deleted
    finally:
        engine.dispose()
