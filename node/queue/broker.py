"""The broker as the operator's probes see it: does it answer, and how many messages wait per queue.

:func:`broker_reachable` answers ``/readyz`` (:mod:`node.web.health`) and the overview page;
:func:`queue_depths` feeds the ``cardionode_queue_depth`` gauge (:mod:`node.web.metrics`). Both
connect anew on each call, bounded by ``timeout_s``, and never raise for a broker that is down.
(A SQLite broker busy with a long write is waited for as the node waits for it, up to its
busy timeout: kombu keeps one engine per broker URL in a process, and the probe must not give
the node's engine other options.)

A Redis broker is asked with a ping (:func:`node.queue.artifacts.redis_problem`: password and
TLS as the node uses them, the password never shown). Any other broker (the default SQLite file
through kombu's SQLAlchemy transport, PostgreSQL, AMQP) is asked through kombu itself. A queue's
depth is kombu's own count of the messages no worker has taken yet (``queue_declare(passive=True)``):
for Redis the lengths of the queue's lists (one per priority step), for the SQLAlchemy transport
its visible rows (a taken message stays in the table, invisible, and is not counted).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kombu import Connection
from kombu.exceptions import ChannelError

from node.config import redact_url
from node.queue.app import QUEUES, SQLITE_TRANSPORT_OPTIONS, QueueSettings, is_redis_url
from node.queue.artifacts import redis_problem

__all__ = ["broker_reachable", "queue_depths"]

_log = logging.getLogger(__name__)


def _connection(queue_settings: QueueSettings, timeout_s: float) -> Connection:
    """A kombu connection to the broker of ``queue_settings`` (not yet connected), every wait bounded by ``timeout_s``."""
    url = queue_settings.broker_url
    options: dict[str, Any] = {}
    ssl: Any = None
    if is_redis_url(url):
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if url.startswith("rediss://"):
            ssl = queue_settings.redis_tls.redis_options()
    elif queue_settings.broker_is_sqlite:  # the node's own options: kombu shares one engine per URL in a process
        options = dict(SQLITE_TRANSPORT_OPTIONS)
    return Connection(url, connect_timeout=timeout_s, transport_options=options, ssl=ssl)


def broker_reachable(settings: Any, timeout_s: float = 2.0) -> tuple[bool, str]:
    """Whether the broker of ``settings`` (a :class:`node.config.Settings`) answers within ``timeout_s`` seconds.

    Returns ``(ok, words)``: ``words`` name the broker (password redacted) and, when it does not
    answer, why. A SQLite broker file that does not exist yet is not reachable (no node has
    declared its queues there).
    """
    queue_settings = QueueSettings.from_settings(settings)
    url = queue_settings.broker_url
    shown = redact_url(url)
    if is_redis_url(url):
        problem = redis_problem(url, queue_settings.redis_tls, "broker_url", timeout_s=timeout_s)
        return (True, f"{shown} answers") if problem is None else (False, problem[0])
    if _sqlite_file_missing(queue_settings):
        return False, f"{shown}: the broker database does not exist (has the node started?)"
    try:
        with _connection(queue_settings, timeout_s) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
            with connection.channel() as channel:  # the SQLAlchemy transport opens its database here
                channel.queue_declare(queue=QUEUES[0], passive=True)
    except Exception as exc:  # kombu and its transports raise their own kinds; the probe says what happened
        return False, f"{shown}: {type(exc).__name__}: {_without_secret(str(exc), url)[:300]}"
    return True, f"{shown} answers"


def _without_secret(text: str, url: str) -> str:
    """``text`` (an error that may quote the broker URL) with the URL's password replaced by ``***``."""
    password = urlsplit(url).password
    return text.replace(url, redact_url(url)).replace(password, "***") if password else text


def _sqlite_file_missing(queue_settings: QueueSettings) -> bool:
    """Whether the broker is a SQLite file that does not exist (connecting would create an empty one)."""
    if not queue_settings.broker_is_sqlite:
        return False
    path = queue_settings.broker_url.split(":///", 1)[-1]
    return path != ":memory:" and not path.startswith("file:") and not Path(path).is_file()


def queue_depths(settings: Any, timeout_s: float = 2.0) -> dict[str, int]:
    """Messages waiting (not taken by a worker) per queue (``cpu``, ``gpu``, ``io``) of the broker of
    ``settings``; an empty dict when the broker does not answer within ``timeout_s`` seconds
    (what is not known is not shown as zero)."""
    queue_settings = QueueSettings.from_settings(settings)
    if _sqlite_file_missing(queue_settings):
        return {}
    depths: dict[str, int] = {}
    try:
        with _connection(queue_settings, timeout_s) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
            for name in QUEUES:
                try:
                    with connection.channel() as channel:
                        depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except ChannelError:  # Redis: a queue with no message has no list, hence "not found"
                    depths[name] = 0
    except Exception as exc:  # a broker that is down: no depths rather than an error on /metrics
        _log.info("queue depths unknown: %s: %s", type(exc).__name__, str(exc)[:200])
        return {}
    return depths
