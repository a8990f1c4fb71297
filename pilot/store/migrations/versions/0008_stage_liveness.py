"""evaluation stages keep what was seen of their host (a stage is advanced by any process, one step at a time)

Revision ID: 0008
Revises: 0002
Create Date: 2026-12-02 10:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_stage") as batch:
        batch.add_column(sa.Column("running_since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("last_seq", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True))
        batch.add_column(sa.Column("last_beat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_stage") as batch:
        batch.drop_column("last_beat_at")
        batch.drop_column("last_seq")
        batch.drop_column("running_since")
