"""The scaled-out node on real components: a listener node and two remote workers without a shared disk.

DESIGN section 4, "scaled out": ``cardionode serve`` with ``workers = []`` (listener,
completeness, conductor and sender only) keeps its ledger on a fresh PostgreSQL
database (:func:`tests.support.postgres.fresh_database`); broker, result backend and
artifact store are one Redis database on the shared server at 127.0.0.1:6379; two
``cardionode worker --queues cpu,gpu,io`` processes (:class:`~tests.support.node.WorkerProcess`)
each have their own configuration file and data directory, and no ``ledger_url``: a
worker that touched a ledger would leave a ``ledger.sqlite`` in its own data directory,
which :meth:`ScaledOutNode.worker_files` shows. Each test names its own Redis database
number (the other tests use 13 to 15), which is emptied before and after::

    with scaled_out(tmp_path, [destination], redis_db=12) as cluster:
        storescu(cluster.node.port, files, check=True)
        ...
        assert cluster.ledger_rows("SELECT state FROM jobs") == [("reported",)]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from tests.support.config import serve_settings, write_config
from tests.support.node import NodeProcess, WorkerProcess
from tests.support.ports import free_port
from tests.support.postgres import fresh_database

__all__ = ["REDIS_SERVER", "ScaledOutNode", "scaled_out"]

#: the shared Redis server of these machines (no password; each test uses a database number of its own)
REDIS_SERVER = "redis://127.0.0.1:6379"


@dataclass
class ScaledOutNode:
    """A running scaled-out set-up: the node (``serve``, no local workers), its remote workers,
    the PostgreSQL ledger URL and the Redis URL of broker, results and artifacts."""

    node: NodeProcess
    workers: list[WorkerProcess]
    ledger_url: str
    redis_url: str
    data_dir: Path  # the node's data directory (spool, outbox)

    def ledger_rows(self, query: str) -> list[tuple[Any, ...]]:
        """The rows of an SQL ``query`` on the node's ledger (PostgreSQL)."""
        engine = create_engine(self.ledger_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(query))]
        finally:
            engine.dispose()

    def worker_files(self, index: int) -> list[str]:
        """Every file in worker ``index``'s data directory, relative to it, except its logs."""
        data = Path(self.workers[index].config).parent / "data"
        return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                      if p.is_file() and p.relative_to(data).parts[0] != "logs")

    def worker_of_pid(self, pid: int) -> int:
        """The index of the worker whose process group holds ``pid`` (a pool process or the main one)."""
        group = os.getpgid(pid)
        for index, worker in enumerate(self.workers):
            if worker.process is not None and worker.process.pid == group:
                return index
        raise AssertionError(f"pid {pid} (group {group}) belongs to none of the workers")


@contextmanager
def scaled_out(tmp: Path, destinations: list[dict[str, Any]], redis_db: int, *, port: int | None = None,
               env: dict[str, str] | None = None, workers: int = 2, **settings: Any) -> Iterator[ScaledOutNode]:
    """Start the scaled-out set-up under ``tmp`` and stop it (and drop its database) afterwards.

    ``destinations``, ``port`` (default: a free one) and ``settings`` go to
    :func:`tests.support.config.serve_settings` (``settings`` override its defaults, e.g.
    ``visibility_timeout_s`` or ``pipelines``); ``env``: extra environment of the node and of the
    workers; ``redis_db``: the Redis database number of this test (emptied before and after).
    The node runs from ``tmp/node``, worker ``i`` from ``tmp/worker-<i>``, each with its own
    configuration file and ``data`` folder.
    """
    redis_url = f"{REDIS_SERVER}/{int(redis_db)}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    node_port = free_port() if port is None else port
    with ExitStack() as stack:
        stack.callback(client.close)
        stack.callback(client.flushdb)
        ledger_url = stack.enter_context(fresh_database("cardionode_scaleout"))
        shared = {"broker_url": redis_url, "result_backend": redis_url, "artifact_store": redis_url, **settings}
        node_dir = tmp / "node"
        node_dir.mkdir(parents=True)
        node_config = write_config(node_dir / "node.toml", **serve_settings(
            node_dir / "data", node_port, destinations, **{**shared, "ledger_url": ledger_url, "workers": []}))
        node = NodeProcess(node_config, node_port, node_dir / "node.log", env, mode="serve")
        remote: list[WorkerProcess] = []
        for index in range(workers):
            folder = tmp / f"worker-{index}"
            folder.mkdir(parents=True)
            config = write_config(folder / "worker.toml", **serve_settings(
                folder / "data", node_port, destinations, **shared))
            process = NodeProcess(config, 0, folder / "worker.log", env, mode="worker")
            assert isinstance(process, WorkerProcess)
            remote.append(process)
        for process in [node, *remote]:
            stack.callback(process.stop)  # stopped in reverse order: workers, then the node
        node.start()
        for process in remote:
            process.start()
        yield ScaledOutNode(node, remote, ledger_url, redis_url, node_dir / "data")
