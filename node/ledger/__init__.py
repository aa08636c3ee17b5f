"""The node's durable state: instances, studies, series, jobs, outputs, sends, rejections, events."""

from node.ledger.store import *  # noqa: F401,F403  (split into schema and stores below)
from node.ledger.store import __all__  # noqa: F401
