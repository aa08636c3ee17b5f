"""``workitems`` and ``ups_subscriptions``: the UPS work items of the node's UPS SCP and who watches them.

Revision 0004, after 0003. Two new tables (:class:`node.ledger.schema.Workitem`,
:class:`node.ledger.schema.UpsSubscription`); existing rows are untouched (no ledger
had work items before).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workitems",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("performer_ae", sa.String(length=16), nullable=False),
        sa.Column("input_readiness", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("worklist_label", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("progress_description", sa.Text(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
    )
    op.create_index("ix_workitems_state", "workitems", ["state"], unique=False)
    op.create_index("ix_workitems_study_uid", "workitems", ["study_uid"], unique=False)
    op.create_table(
        "ups_subscriptions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("ups_uid", sa.String(length=64), nullable=False),
        sa.Column("deletion_lock", sa.Boolean(), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ae_title", "ups_uid", name="uq_ups_subscription"),
    )
    op.create_index("ix_ups_subscriptions_ae_title", "ups_subscriptions", ["ae_title"], unique=False)
    op.create_index("ix_ups_subscriptions_ups_uid", "ups_subscriptions", ["ups_uid"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ups_subscriptions_ups_uid", table_name="ups_subscriptions")
    op.drop_index("ix_ups_subscriptions_ae_title", table_name="ups_subscriptions")
    op.drop_table("ups_subscriptions")
    op.drop_index("ix_workitems_study_uid", table_name="workitems")
    op.drop_index("ix_workitems_state", table_name="workitems")
    op.drop_table("workitems")
