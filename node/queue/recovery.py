"""Recovering messages of workers that died with the node (SQLite broker only).

kombu's SQLAlchemy transport marks a message invisible when a worker takes it
and never shows it again: acknowledging only forgets it in the worker's
memory. A worker killed outright (``kill -9`` of the node and its local
workers, power loss) therefore leaves its unfinished message invisible for
ever. Redis has a visibility timeout for this; the SQLite broker has this
module.

:func:`restore_unfinished` runs when ``cardionode serve`` starts, *before* it
starts its workers (with a SQLite broker every worker is a local one): each
invisible message whose task has not finished according to the result backend
is made visible again (once per task), and every other taken message is
deleted (the table would otherwise grow with every task).
"""

from __future__ import annotations

import json
import logging

from celery import Celery, states
from sqlalchemy import create_engine, inspect, text

__all__ = ["restore_unfinished"]

_log = logging.getLogger(__name__)


def _task_id(payload: str) -> str | None:
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    return headers.get("id") or properties.get("correlation_id")


def restore_unfinished(app: Celery, broker_url: str) -> tuple[int, int]:
    """Make unfinished taken messages visible again (one per task); delete the others.

    kombu puts a rejected message back as a *new* row and leaves the taken row
    invisible, so one task may have several rows: a task that finished loses
    its invisible rows; an unfinished task with a visible row keeps only that;
    an unfinished task with only invisible rows gets its newest one back.
    ``broker_url`` is a ``sqla+sqlite:///...`` URL. Returns ``(restored,
    deleted)``. Must not run while a worker consumes from this broker.
    """
    if not broker_url.startswith("sqla+"):
        return 0, 0
    engine = create_engine(broker_url[len("sqla+") :])
    try:
        if not inspect(engine).has_table("kombu_message"):
            return 0, 0
        restored = deleted = 0
        with engine.begin() as connection:
            rows = connection.execute(text("SELECT id, visible, payload FROM kombu_message ORDER BY id")).all()
            visible_tasks = {_task_id(payload) for _, visible, payload in rows if visible}
            taken: dict[str | None, list[int]] = {}
            for row_id, visible, payload in rows:
                if not visible:
                    taken.setdefault(_task_id(payload), []).append(row_id)
            for task_id, row_ids in taken.items():
                finished = task_id is not None and app.AsyncResult(task_id).state in states.READY_STATES
                keep = None if finished or task_id in visible_tasks or task_id is None else row_ids[-1]
                for row_id in row_ids:
                    if row_id == keep:
                        connection.execute(text("UPDATE kombu_message SET visible = 1 WHERE id = :id"), {"id": row_id})
                        restored += 1
                    else:
                        connection.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": row_id})
                        deleted += 1
        if restored:
            _log.warning("restored %d task message(s) taken by workers that stopped before finishing", restored)
        return restored, deleted
    finally:
        engine.dispose()
