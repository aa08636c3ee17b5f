"""``worklist_answers``: what the modality worklist said about each study (node.workflow.worklist).

Revision 0003, after 0002. A new table, one row per study: the lookup's outcome
(``found`` | ``not_found`` | ``down``), the worklist asked, how the study was matched,
every scheduled procedure step returned (JSON), the facts the pipelines use
(``clinical``, JSON), the pipeline and expected series the scheduled protocol names,
a hash of the patient identifier (never the identifier) and the accession number
(indexed: the keys that pair studies of one order or one patient). Existing studies
get no row: they were never looked up.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLE = "worklist_answers"
_INDEXED = ("outcome", "patient_key", "accession_number")


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("worklist", sa.String(length=64), nullable=False),
        sa.Column("matched_by", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("patient_key", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=True),
        sa.Column("expected_series", sa.JSON(), nullable=False),
        sa.Column("clinical", sa.JSON(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("queried_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_uid"], ["studies.study_uid"]),
        sa.PrimaryKeyConstraint("study_uid"),
    )
    for column in _INDEXED:
        op.create_index(f"ix_{_TABLE}_{column}", _TABLE, [column], unique=False)


def downgrade() -> None:
    for column in _INDEXED:
        op.drop_index(f"ix_{_TABLE}_{column}", table_name=_TABLE)
    op.drop_table(_TABLE)
