"""Alembic environment: the engine comes from ``Store.migrate`` (config.attributes), never from a URL in a file."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import pilot.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
engine = config.attributes.get("connection_engine")
if engine is None:  # `alembic -x url=...` from a shell, for autogenerate
    from sqlalchemy import create_engine

    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
