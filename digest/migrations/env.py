"""Alembic environment: the engine is handed in by digest.db.upgrade (no alembic.ini needed)."""

from alembic import context
from sqlalchemy import create_engine

from digest.config import database_url
from digest.db import Base, load_models

load_models()
from digest.partitions import include_name, include_object  # noqa: E402

target_metadata = Base.metadata
engine = context.config.attributes.get("engine") or create_engine(database_url())

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,  # the ledger's partitions are not models (autogenerate)
        include_object=include_object(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
