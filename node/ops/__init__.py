"""The operator's view of the node: the status model and admin actions (CLI now, the web page later).

:func:`status_snapshot` (:mod:`node.ops.status`) reads where everything stands into a
:class:`StatusSnapshot`; :mod:`node.ops.admin` holds the `cardionode status`, ``retry``,
``discard`` and ``complete`` commands; :mod:`node.ops.running` the lock that tells whether a
node runs; :mod:`node.ops.preflight` `cardionode config check` and `cardionode echo`.
"""

from node.ops.admin import complete_main, discard_main, format_status, format_table, retry_main, status_main
from node.ops.status import StatusSnapshot, status_snapshot

__all__ = [
    "StatusSnapshot",
    "complete_main",
    "discard_main",
    "format_status",
    "format_table",
    "retry_main",
    "status_main",
    "status_snapshot",
]
