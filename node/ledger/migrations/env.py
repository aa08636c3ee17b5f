"""Alembic's environment for the ledger: run the revisions on the connection the node passes.

:mod:`node.ledger.revisions` opens the transaction (and, on PostgreSQL, takes the
ledger's write lock) and passes its connection in ``config.attributes["connection"]``;
the revisions run inside that transaction, so a failed upgrade changes nothing.
On SQLite the operations run in batch mode (a table is altered by copying it).
"""

from __future__ import annotations

from alembic import context

from node.ledger.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the ledger's revisions run on a connection given by node.ledger.revisions; use `cardionode db upgrade`"
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
