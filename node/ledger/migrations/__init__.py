"""The ledger's schema revisions, run by Alembic (``env.py``, ``versions/``).

:mod:`node.ledger.revisions` points Alembic at this package as a package resource
(``node.ledger:migrations``), so the revisions are found the same way in a checkout
and in an installed wheel. Revisions form one line, oldest first:

* ``0001`` (``versions/v0001_baseline.py``), the baseline: the ledger as CardioNode
  created it since series rows carry their routing attributes (the oldest ledger
  the node can read; an older one is refused, see :mod:`node.ledger.schema`);
* ``0002`` (``versions/v0002_sends_peer_text.py``): ``sends.peer_text``, what a
  destination said at the last attempt (added in place by the node before revisions
  existed).
* ``0003`` (``versions/v0003_worklist_answers.py``): ``worklist_answers``, what the
  modality worklist said about each study (:mod:`node.ledger.worklist`).
* ``0004`` (``versions/v0004_workitems.py``): ``workitems`` and ``ups_subscriptions``, the
  UPS work items of the node's UPS SCP and who receives their event reports.

A change to the tables in :mod:`node.ledger.schema` comes with a new revision
whose ``down_revision`` is the current head. To draft one, against a scratch
database brought to the current head::

    from alembic import command
    from sqlalchemy import create_engine
    from node.ledger.revisions import alembic_config
    from node.ledger.schema import upgrade_schema

    upgrade_schema("sqlite:////tmp/draft.sqlite")
    with create_engine("sqlite:////tmp/draft.sqlite").begin() as connection:
        command.revision(alembic_config(connection), "what changes", autogenerate=True,
                         rev_id="0003")

then rename the file to ``vNNNN_<what>.py``, read and complete it (autogenerate
does not see renames or data moves) and add a test to ``tests/ledger/test_migrations.py``.
On SQLite the operations run in batch mode (``render_as_batch``): SQLite alters a
table by copying it. The node's SQLite connections enforce foreign keys and the
revisions run inside one transaction, where SQLite cannot turn that off: a revision
that copies a table other tables reference starts with ``PRAGMA defer_foreign_keys = ON``.
"""

__all__ = []
