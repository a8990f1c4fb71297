"""gateway calls: what the capture gateway proxied, joined later with outcomes

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_call",
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("session_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("endpoint", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("model_version", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("producer", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("ts", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("upstream_status", sa.Integer(), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("record_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("feedback", sa.JSON(), nullable=False),
        sa.Column("ingested_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("labelled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("gateway_call", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gateway_call_model_version"), ["model_version"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_call_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_gateway_call_ts"), ["ts"], unique=False)
        batch_op.create_index("ix_gateway_call_session_ts", ["session_id", "ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("gateway_call", schema=None) as batch_op:
        batch_op.drop_index("ix_gateway_call_session_ts")
        batch_op.drop_index(batch_op.f("ix_gateway_call_ts"))
        batch_op.drop_index(batch_op.f("ix_gateway_call_status"))
        batch_op.drop_index(batch_op.f("ix_gateway_call_model_version"))
    op.drop_table("gateway_call")
