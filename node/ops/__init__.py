"""The operator's view of the node: the status model and admin actions, for the CLI and the web page alike.

:func:`status_snapshot` (:mod:`node.ops.status`) reads where everything stands into a
:class:`StatusSnapshot`; :mod:`node.ops.admin` holds the `cardionode status`, ``retry``,
``discard`` and ``complete`` commands and the actions they and the web page share
(:func:`retry_job`, :func:`discard_job`, :func:`complete_study`, each audited with its actor); :mod:`node.ops.running` the lock that tells whether a
node runs; :mod:`node.ops.preflight` `cardionode config check` and `cardionode echo`.
:mod:`node.ops.results` reads a study's results back from the outbox (the study page, ``status
--study UID --results``); it is not imported here, so that `cardionode status` loads no imaging code.
"""

from node.ops.admin import (
    ActionResult,
    complete_main,
    complete_study,
    discard_job,
    discard_main,
    format_status,
    format_table,
    retry_job,
    retry_main,
    status_main,
)
from node.ops.status import StatusSnapshot, status_snapshot

__all__ = [
    "ActionResult",
    "StatusSnapshot",
    "complete_main",
    "complete_study",
    "discard_job",
    "discard_main",
    "format_status",
    "format_table",
    "retry_job",
    "retry_main",
    "status_main",
    "status_snapshot",
]
