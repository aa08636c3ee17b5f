"""``sends.peer_text``: what the destination said at a send's last attempt (protected, never in events or logs).

Revision 0002, after 0001. Existing sends get ``''`` (the column's server default).
Before schema revisions the node added this column in place when it opened a
ledger that lacked it; such a ledger is stamped at 0002 by ``cardionode db upgrade``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sends") as batch_op:
        batch_op.add_column(sa.Column("peer_text", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("sends") as batch_op:
        batch_op.drop_column("peer_text")
