"""``workitems.run``: the study's processing run that performs a work item the node claimed from a task manager.

Revision 0005, after 0004. One nullable column (:attr:`node.ledger.schema.Workitem.run`);
existing work items (the node's own UPS SCP's) keep NULL. The completeness rule
``ups_inputs`` needs no revision: the rules are a Python tuple, not a database constraint.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workitems") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workitems") as batch:
        batch.drop_column("run")
