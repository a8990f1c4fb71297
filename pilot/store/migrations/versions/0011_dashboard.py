"""dashboard users and sessions; a covering index for the dashboard's per-day record aggregates

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_user",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("token_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("revoked_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "dashboard_session",
        sa.Column("id_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("csrf", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["dashboard_user.id"]),
        sa.PrimaryKeyConstraint("id_sha256"),
    )
    with op.batch_alter_table("dashboard_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dashboard_session_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dashboard_session_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("execution_record", schema=None) as batch_op:
        batch_op.create_index(
            "ix_execution_record_ts_cover", ["ts", "domain", "model_version", "success"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("execution_record", schema=None) as batch_op:
        batch_op.drop_index("ix_execution_record_ts_cover")
    with op.batch_alter_table("dashboard_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dashboard_session_expires_at"))
        batch_op.drop_index(batch_op.f("ix_dashboard_session_user_id"))
    op.drop_table("dashboard_session")
    op.drop_table("dashboard_user")
