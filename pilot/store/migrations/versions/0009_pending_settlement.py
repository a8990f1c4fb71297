"""pending settlements (spend settled at an estimate, re-read from the provider later)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_settlement",
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("estimate_usd", sa.Float(), nullable=False),
        sa.Column("provider_usd", sa.Float(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("label"),
    )
    with op.batch_alter_table("pending_settlement", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pending_settlement_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pending_settlement_done"), ["done"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pending_settlement", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pending_settlement_done"))
        batch_op.drop_index(batch_op.f("ix_pending_settlement_run_id"))
    op.drop_table("pending_settlement")
