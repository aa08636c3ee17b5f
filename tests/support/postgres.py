"""Throw-away PostgreSQL databases, one per test, on the server the tests use.

The server is at ``$CARDIONODE_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``, trust authentication on these
machines); that URL names the database the harness connects to for ``CREATE DATABASE``.
:func:`fresh_database` yields the URL of a new, empty database with a unique name and
drops it afterwards, closing any connection still open to it (a node process the test
left running, an engine not disposed), so tests never share a database.
:func:`server_problem` says why the server cannot be used, or None.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

__all__ = ["ADMIN_URL", "fresh_database", "server_problem"]

#: the server and the database the harness connects to for CREATE DATABASE / DROP DATABASE
ADMIN_URL = os.environ.get("CARDIONODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_engine() -> Engine:
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@functools.cache
def server_problem() -> str | None:
    """Why the PostgreSQL server at :data:`ADMIN_URL` cannot be used (first line of the driver's error), or None."""
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        return f"PostgreSQL at {make_url(ADMIN_URL).render_as_string(hide_password=True)} does not answer: {first_line}"
    finally:
        engine.dispose()
    return None


@contextmanager
def fresh_database(prefix: str = "cardionode_test") -> Iterator[str]:
    """A new empty database named ``<prefix>_<12 hex digits>`` on the test server; yields its URL (same
    user, password and driver as :data:`ADMIN_URL`) and drops it when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
