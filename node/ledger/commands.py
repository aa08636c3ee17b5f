"""``cardionode db upgrade`` and ``cardionode db current``: the ledger's schema revision, for the operator.

Both use the ledger of the configuration (``--config``, else ``$CARDIONODE_CONFIG``,
else the embedded defaults: :func:`node.config.config_path`). ``upgrade`` brings the
ledger to this CardioNode's revision (:func:`node.ledger.schema.upgrade_schema`), which
is what upgrading a node means for its ledger: stop the node, install the new
CardioNode, run ``cardionode db upgrade``, start the node. ``current`` says which
revision the ledger is at and changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from node.config import ConfigError, load_settings
from node.ledger.schema import LedgerSchemaError, SchemaStatus, read_schema_status, refusal, upgrade_schema

__all__ = ["db_main", "describe_status"]


def describe_status(status: SchemaStatus, where: str) -> str:
    """One line on the ledger at ``where``: its revision against this CardioNode's, and what to do if any."""
    if status.state == "current":
        return f"ledger at {where}: schema revision {status.revision} (head, the revision of this CardioNode)"
    if status.state == "empty":
        return (f"ledger at {where}: empty; the node creates its tables at revision {status.head} when it starts "
                "(or run `cardionode db upgrade`)")
    return refusal(status, where)


def db_main(args: argparse.Namespace) -> int:
    """``cardionode db ACTION``: ``upgrade`` or ``current``.

    Returns 0 when the ledger is (now) at this CardioNode's revision, or empty for
    ``current``; 1 when it is at another revision or cannot be upgraded, or the
    database does not answer; 2 when the configuration cannot be read.
    """
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"cardionode db: {exc}", file=sys.stderr)
        return 2
    url = settings.effective_ledger_url
    where = make_url(url).render_as_string(hide_password=True)
    try:
        if args.action == "current":
            return _current(url, where)
        return _upgrade(url, where)
    except LedgerSchemaError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"PROBLEM: cannot use the ledger at {where}: {reason}", file=sys.stderr)
        return 1


def _current(url: str, where: str) -> int:
    database = make_url(url).database
    if url.startswith("sqlite") and database and database != ":memory:" and not Path(database).exists():
        print(f"ledger at {where}: no database yet; the node creates it when it starts (or run `cardionode db upgrade`)")
        return 0
    status = read_schema_status(url)
    print(describe_status(status, where))
    return 0 if status.state in ("current", "empty") else 1


def _upgrade(url: str, where: str) -> int:
    before, after = upgrade_schema(url)
    if before.state == "current":
        print(f"ledger at {where}: already at schema revision {after.revision} (head); nothing to do")
    elif before.state == "empty":
        print(f"ledger at {where}: created at schema revision {after.revision} (head)")
    elif before.state == "unversioned":
        print(f"ledger at {where}: made before schema revisions (its tables match revision {before.revision}); "
              f"upgraded to revision {after.revision} (head), every record kept")
    else:
        print(f"ledger at {where}: upgraded from schema revision {before.revision} to {after.revision} (head), "
              "every record kept")
    return 0
