"""Alembic's mechanics for the ledger: the revisions, the one a database is at, moving it to another.

The revisions are the package :mod:`node.ledger.migrations`, found as the package
resource ``node.ledger:migrations`` (a checkout and an installed wheel alike). Every
function here works on a :class:`sqlalchemy.engine.Connection` that the caller opened
in a transaction; the revisions run inside it and commit with it. What the node does
with a database at a given revision (create it, refuse it, upgrade it) is decided in
:mod:`node.ledger.schema`, not here.
"""

from __future__ import annotations

import functools

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

__all__ = [
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "head_revision",
    "is_known",
    "stamp",
    "upgrade",
]

#: where Alembic finds env.py and versions/: the package resource node/ledger/migrations
SCRIPT_LOCATION = "node.ledger:migrations"
#: the table in which Alembic records a database's revision
VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the ledger's revisions that runs them on ``connection``.

    Parameters
    ----------
    connection : sqlalchemy.engine.Connection or None
        An open connection, in a transaction the caller commits; None for a
        configuration that only reads the revisions.
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision, the one this CardioNode's tables are at."""
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no revisions found at {SCRIPT_LOCATION}; the node package is incomplete")
    return head


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this CardioNode's revisions (False for one a newer CardioNode wrote)."""
    try:
        return _script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the database's :data:`VERSION_TABLE`; None when it has none."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, target: str = "head") -> None:
    """Run the revisions from the database's current one up to ``target``, in ``connection``'s transaction."""
    command.upgrade(alembic_config(connection), target)


def stamp(connection: Connection, revision: str) -> None:
    """Record that the database is at ``revision`` without running anything (a ledger made before revisions)."""
    command.stamp(alembic_config(connection), revision)
