"""The Celery application: broker, result backend, queues and delivery guarantees.

Queues: ``cpu`` (loading, quantification, building DICOM results), ``gpu``
(deep-learning models) and ``io`` (network-bound steps a pipeline may declare;
the node sends its results itself, from its outbox, so that a send never
depends on a worker). Delivery is at-least-once and jobs are idempotent:

* ``task_acks_late``: a message is acknowledged only after its task finished,
  so a worker that dies mid-task leaves the message to be delivered again;
* ``task_reject_on_worker_lost``: a pool process killed mid-task (OOM, SIGKILL)
  puts its message back at once;
* ``worker_prefetch_multiplier = 1``: a worker holds one message per process,
  so a long GPU job does not hide waiting work from other workers.

Default broker and result backend are SQLite files in the data directory
(kombu's SQLAlchemy transport, Celery's database backend): nothing to install.
A ``redis://`` broker URL switches broker, result backend and (unless
configured otherwise) the artifact store to Redis, for workers on other
machines. A password goes in the URL (``redis://:PASSWORD@host:6379/0``);
``rediss://`` URLs speak TLS and always verify the server's certificate
(:class:`~node.queue.artifacts.RedisTLS`: CA file, client certificate and key).
Messages and results are JSON only (``accept_content``): neither the broker nor
the result backend ever unpickles what it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from node.queue.artifacts import ArtifactStore, RedisTLS, open_store, redis_problem

__all__ = ["QUEUES", "SQLITE_TRANSPORT_OPTIONS", "QueueSettings", "create_app", "connection_problems", "is_redis_url"]

#: the queues every worker may consume
QUEUES: tuple[str, ...] = ("cpu", "gpu", "io")
#: kombu's options of the SQLite broker (handed to create_engine; kombu keeps one engine per URL and process,
#: so whoever connects to the broker in the node process passes the same: node.queue.broker)
SQLITE_TRANSPORT_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}
#: seconds between two polls of an empty queue by a worker on the SQLite broker (kombu's default: 1 s)
SQLITE_POLLING_INTERVAL_S = 0.1


def is_redis_url(url: str) -> bool:
    """Whether ``url`` names a Redis server (``redis://`` or ``rediss://``)."""
    return url.startswith(("redis://", "rediss://"))


@dataclass(frozen=True)
class QueueSettings:
    """What the queue layer needs from :class:`node.config.Settings`.

    ``visibility_timeout_s``: seconds after which Redis hands an unacknowledged
    message to another worker (the longest job must finish within it).
    ``redis_tls``: TLS options of every ``rediss://`` URL.
    """

    data_dir: Path
    broker_url: str
    result_backend: str
    artifact_store: str
    visibility_timeout_s: float = 3600.0
    redis_tls: RedisTLS = RedisTLS()

    @classmethod
    def from_settings(cls, settings: Any) -> QueueSettings:
        """Resolve the defaults of a :class:`node.config.Settings`: SQLite files under
        ``data_dir`` unless URLs are given; Redis for results when the broker is Redis."""
        return cls(
            data_dir=Path(settings.data_dir).resolve(),
            broker_url=settings.effective_broker_url,
            result_backend=settings.effective_result_backend,
            artifact_store=settings.effective_artifact_store,
            visibility_timeout_s=float(settings.visibility_timeout_s),
            redis_tls=RedisTLS(settings.redis_tls.ca, settings.redis_tls.cert, settings.redis_tls.key,
                               settings.redis_tls.check_hostname),
        )

    @property
    def broker_is_sqlite(self) -> bool:
        return self.broker_url.startswith("sqla+sqlite")

    def open_artifacts(self) -> ArtifactStore:
        return open_store(self.artifact_store, self.redis_tls)


def connection_problems(queue_settings: QueueSettings) -> tuple[list[str], list[str]]:
    """Connect to each Redis server of the broker, result backend and artifact store once.

    Returns ``(refused, unreachable)`` in words, passwords redacted: servers that refused
    this client (wrong or missing password, TLS failure: the configuration must change)
    and servers that did not answer (down or unreachable: Celery keeps retrying). Both
    are empty when every server answers or none is Redis.
    """
    refused: list[str] = []
    unreachable: list[str] = []
    names: dict[str, list[str]] = {}
    for what, url in (("broker_url", queue_settings.broker_url), ("result_backend", queue_settings.result_backend),
                      ("artifact_store", queue_settings.artifact_store)):
        if is_redis_url(url):
            names.setdefault(url, []).append(what)
    for url, settings_names in names.items():
        problem = redis_problem(url, queue_settings.redis_tls, " and ".join(settings_names))
        if problem is not None:
            (refused if problem[1] else unreachable).append(problem[0])
    return refused, unreachable


def _poll_sqlite_broker_every(seconds: float) -> None:
    """Make consumers of the SQLite broker look at an empty queue every ``seconds`` seconds.

    kombu's virtual transports sleep ``polling_interval`` seconds (default 1 s) between polls
    of empty queues, so each step waited half a second on average for its worker. The usual
    ``polling_interval`` transport option cannot be used with the SQLAlchemy transport (it hands
    every transport option to ``create_engine``), so the transport's class default is set: a
    process of the node talks to one broker. A poll is one indexed SELECT per queue.
    """
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    kombu_sqlalchemy.Transport.polling_interval = seconds


def create_app(queue_settings: QueueSettings) -> Celery:
    """A configured Celery app with the node's tasks registered.

    The app reads nothing from the environment; both the node process and
    ``cardionode worker`` build it from the same settings.
    """
    queue_settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("cardionode", broker=queue_settings.broker_url, backend=queue_settings.result_backend)
    transport_options: dict[str, Any] = {}
    if is_redis_url(queue_settings.broker_url):
        transport_options = {
            "visibility_timeout": queue_settings.visibility_timeout_s,
            # look for unacknowledged messages of dead workers every few seconds
            "unacked_restore_interval": max(1, min(10, int(queue_settings.visibility_timeout_s // 4) or 1)),
            "unacked_restore_throttle": 1,
        }
    elif queue_settings.broker_is_sqlite:
        transport_options = dict(SQLITE_TRANSPORT_OPTIONS)
        _poll_sqlite_broker_every(SQLITE_POLLING_INTERVAL_S)
    tls_options = queue_settings.redis_tls.redis_options()
    if queue_settings.broker_url.startswith("rediss://"):
        app.conf.broker_use_ssl = tls_options
    if queue_settings.result_backend.startswith("rediss://"):
        app.conf.redis_backend_use_ssl = tls_options
    app.conf.update(
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_exchange="cpu",
        task_default_routing_key="cpu",
        task_default_queue="cpu",
        task_create_missing_queues=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_lost_wait=3.0,  # seconds to wait for the result of a pool process that died
        worker_redirect_stdouts=False,
        timezone="UTC",
    )
    if queue_settings.result_backend.startswith("db+sqlite"):
        app.conf.database_engine_options = {"connect_args": {"timeout": 30}}
    from node.queue import tasks

    tasks.register(app, queue_settings.open_artifacts())
    return app
