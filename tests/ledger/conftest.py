"""The ledger tests run on both databases the node supports: an SQLite file and PostgreSQL.

``ledger_url`` is parametrised: ``sqlite`` is a fresh file per test; ``postgresql`` is a
fresh schema per test on the server at ``$CARDIONODE_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://root@127.0.0.1:5432/test``), dropped afterwards. The PostgreSQL
variant is skipped, with the reason, only when the server does not answer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from node.ledger import Ledger

POSTGRES_URL = os.environ.get("CARDIONODE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty ledger database: an SQLite file under ``tmp_path/var``, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite'}"
        return
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    schema = f"cardionode_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string(hide_password=True)} does not answer: "
                    f"{str(exc.orig).strip().splitlines()[0]}")
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(ledger_url)
    yield led
    led.close()
