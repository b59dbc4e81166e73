"""Migrations: one head, the models match the migrated schema, and upgrades keep data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Engine, func, insert, inspect, select, text

from digest.articles import Article
from digest.db import Base, head_revisions, load_models, make_engine, session_factory, upgrade
from digest.partitions import include_name, include_object
from digest_cli import cli
from tests.factories import make_article


def test_migrations_have_a_single_head() -> None:
    assert head_revisions() == {"0018"}


def test_models_match_the_migrated_schema(engine: Engine) -> None:
    load_models()
    with engine.connect() as conn:
        # The monthly partitions of the ledger (PostgreSQL) are the database's, not models.
        opts = {"include_name": include_name, "include_object": include_object(conn.dialect.name)}
        context = MigrationContext.configure(conn, opts=opts)
        diff = compare_metadata(context, Base.metadata)
    # Index/constraint name differences would show here too: the schema is exactly the models.
    assert diff == []


def test_an_old_database_is_upgraded_in_place_keeping_its_data(
    tmp_path: Path, config_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    old = make_engine(url)
    upgrade(old, "0001")  # as the first release left it
    with session_factory(old)() as session:
        # Core, with the columns the first release had: the model has grown since.
        article = make_article(datetime(2026, 3, 10, 9, tzinfo=UTC), title="Kept across upgrades")
        old_columns = {c["name"] for c in inspect(old).get_columns("articles")}
        values = {
            c.name: getattr(article, c.name)
            for c in Article.__table__.columns
            if c.name in old_columns and c.name != "id"
        }
        session.execute(insert(Article.__table__).values(values))
        session.commit()
    old.dispose()

    result = CliRunner().invoke(
        cli, ["--config", str(config_path), "articles"], env={"DIGEST_DATABASE_URL": url}
    )
    assert result.exit_code == 0, result.output
    assert "Kept across upgrades" in result.output
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            "0018"
        ]
    with session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(Article)) == 1
