"""``cardionode worker``: a Celery worker for the node's queues, on any machine that reaches the broker.

The worker reads the same configuration as the node (``--config`` or
``$CARDIONODE_CONFIG``): broker, result backend, artifact store and the
pipeline modules to load. It is stateless with respect to the ledger: it reads
a job's instances from the artifact store and writes its results there.

Examples::

    cardionode worker --queues gpu --concurrency 1      # one per GPU
    cardionode worker --queues cpu,io --concurrency 4
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from node.queue.app import QUEUES, QueueSettings, connection_problems, create_app

__all__ = ["parse_queues", "worker_argv", "worker_main"]


def parse_queues(text: str) -> list[str]:
    """The queue names in ``text`` (comma-separated); raises ``ValueError`` for unknown ones."""
    names = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise ValueError(f"--queues {text!r}: use a comma-separated subset of {', '.join(QUEUES)}")
    return names


def worker_argv(queues: list[str], concurrency: int) -> list[str]:
    """Celery ``worker`` arguments for these queues and number of processes."""
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency}: at least 1 worker process is needed")
    name = f"cardionode-{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    return [
        "worker",
        f"--queues={','.join(queues)}",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        "--loglevel=INFO",
        f"--hostname={name}",
        "--without-gossip",
        "--without-mingle",
    ]


def worker_main(args: argparse.Namespace) -> int:
    """Run a worker until it is stopped (SIGTERM: finish the current tasks, then exit).

    2 without starting when the configuration is wrong, or a Redis server of the queue refuses
    the worker (wrong or missing password, TLS failure); an unreachable one is retried.
    """
    from node.config import ConfigError, load_settings
    from node.dicom.logs import LogOptions, setup_logging
    from node.pipelines import registry

    try:
        settings = load_settings(getattr(args, "config", None))
        queues = parse_queues(args.queues)
        argv = worker_argv(queues, int(args.concurrency))
    except (ConfigError, ValueError) as exc:
        print(f"cardionode worker: {exc}", file=sys.stderr)
        return 2
    log_options = LogOptions.from_settings(settings)
    setup_logging(settings.log_dir, f"worker-{'-'.join(queues)}", options=log_options)
    queue_settings = QueueSettings.from_settings(settings)
    refused, unreachable = connection_problems(queue_settings)
    for problem in unreachable:  # Celery keeps trying to connect
        logging.getLogger("node.queue.worker").warning("%s; retrying", problem)
    if refused:
        for problem in refused:
            print(f"cardionode worker: {problem}", file=sys.stderr)
        return 2
    failed = registry.load_modules(settings.pipeline_modules)
    for module, error in failed.items():
        print(f"cardionode worker: pipeline module {module} not loaded: {error}", file=sys.stderr)
    registry.all_pipelines()  # import the shipped pipelines now: the pool processes inherit them
    app = create_app(queue_settings)
    app.worker_main(argv if log_options.library_banners else ["--quiet", *argv])  # banner: log_level_libraries
    return 0
