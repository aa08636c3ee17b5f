"""The ledger tests run on both databases the node supports: an SQLite file and PostgreSQL.

``ledger_url`` is parametrised: ``sqlite`` is a fresh file per test; ``postgresql`` is a
fresh database per test (:func:`tests.support.postgres.fresh_database`), dropped afterwards.
The PostgreSQL variant is skipped, with the reason, only when the server does not answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.ledger import Ledger
from tests.support.postgres import fresh_database, server_problem


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: an SQLite file under ``tmp_path/var``, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite'}"
        return
    problem = server_problem()
    if problem:
        pytest.skip(problem)
    with fresh_database() as url:
        yield url


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(ledger_url)
    yield led
    led.close()
