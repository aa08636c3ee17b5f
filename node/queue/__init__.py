"""The work queue: the only package that knows Celery.

* :mod:`node.queue.app` — the Celery app (queues ``cpu``, ``gpu``, ``io``; late acks, prefetch 1)
* :mod:`node.queue.tasks` — the one task, ``cardionode.step``
* :mod:`node.queue.steps` — running a pipeline step against the artifact store
* :mod:`node.queue.artifacts` — directory or Redis store for instances and results (password, TLS)
* :mod:`node.queue.codec` — step results as JSON and ``.npy`` arrays, never pickles (an allow-list of types)
* :mod:`node.queue.dispatch` — the node's side: submit steps, read their state
* :mod:`node.queue.conductor` — drives jobs from ``queued`` to ``reported``
* :mod:`node.queue.broker` — does the broker answer, messages waiting per queue (health and metrics)
* :mod:`node.queue.recovery` — restores tasks of workers killed with the node (SQLite broker)
* :mod:`node.queue.worker` — ``cardionode worker``
"""

#: the package's modules (this face imports none of them, so that importing one does not start Celery)
__all__ = [
    "app",
    "artifacts",
    "broker",
    "codec",
    "conductor",
    "dispatch",
    "recovery",
    "steps",
    "tasks",
    "worker",
]
