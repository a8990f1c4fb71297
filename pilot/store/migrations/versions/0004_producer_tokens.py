"""producer tokens, and the producer of each execution record

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02 10:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "producer_token",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("scopes", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("producer_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_producer_token_name"), ["name"], unique=False)
    with op.batch_alter_table("execution_record", schema=None) as batch_op:
        batch_op.add_column(sa.Column("producer", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.create_index(batch_op.f("ix_execution_record_producer"), ["producer"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("execution_record", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_execution_record_producer"))
        batch_op.drop_column("producer")
    with op.batch_alter_table("producer_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_producer_token_name"))
    op.drop_table("producer_token")
