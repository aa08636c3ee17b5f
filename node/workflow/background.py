"""Work the assembler starts per study and never waits for (worklist lookups, two-day pairings).

:class:`StudyTasks` runs at most one task per study at a time on a small thread pool made at
first use, logs (never raises) what a task's bug throws — the study's completeness rule decides
anyway — and can be waited for (tests) and closed (shutdown). The policy of *when* a task is due
stays with its owner (:class:`node.workflow.worklist.WorklistLookups`,
:class:`node.workflow.pairing.Pairer`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from node.dicom.logs import hash_identifier

__all__ = ["StudyTasks"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


class StudyTasks(Generic[T]):
    """``work(study_uid)`` on background threads, one task per study at a time.

    ``name`` names the work in thread names and log lines (``worklist lookup``, ``pairing``);
    ``workers`` is the pool's size.
    """

    def __init__(self, name: str, work: Callable[[str], T], *, workers: int = 1) -> None:
        self.name = name
        self._work = work
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future[T | None]] = {}
        self._lock = threading.Lock()

    def running(self, study_uid: str) -> bool:
        """Whether a task of ``study_uid`` is under way."""
        with self._lock:
            future = self._pending.get(study_uid)
            return future is not None and not future.done()

    def start(self, study_uid: str) -> bool:
        """Start a task of ``study_uid`` unless one is under way or the tasks are closed; whether one started."""
        with self._lock:
            future = self._pending.get(study_uid)
            if future is not None and not future.done():
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                                thread_name_prefix=self.name.replace(" ", "-"))
            self._pending[study_uid] = self._pool.submit(self._run, study_uid)
        return True

    def _run(self, study_uid: str) -> T | None:
        try:
            return self._work(study_uid)
        except Exception:  # a bug here must not stop the conductor; the study's rule decides anyway
            _log.exception("%s of study %s failed", self.name, hash_identifier(study_uid))
            return None

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the tasks under way (tests, shutdown)."""
        with self._lock:
            futures = list(self._pending.values())
        for future in futures:
            future.exception(timeout=timeout_s)

    def close(self) -> None:
        """Take no more tasks; those under way finish within their own timeouts."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
