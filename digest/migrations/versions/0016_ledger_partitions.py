"""ledger partitions: the edition's date on deliveries and click_events (on PostgreSQL both
become tables partitioned by it, a month a partition), the unique key of a row includes it,
click_events.delivery_id loses its foreign key (see digest.clicks), and edition_summaries
keeps the figures of pruned editions (digest.summaries)

Revision ID: 0016
Revises: 0015
"""

import importlib.util
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UQ = "uq_deliveries_edition_subscriber"
_NAMES = {
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}
# The partial indexes of the ledger (as in digest.ledger_model).
_DELIVERY_INDEXES: list[tuple[str, list[str], str | None]] = [
    ("ix_deliveries_pending", ["edition_id", "variant", "id"], "state = 'pending'"),
    ("ix_deliveries_deferred", ["edition_id", "next_attempt_at"], "state = 'deferred'"),
    (
        "ix_deliveries_sent",
        ["edition_id", "variant", "segment", "subject", "id"],
        "state = 'sent'",
    ),
]
_CLICK_INDEXES: list[tuple[str, list[str], str | None]] = [
    ("ix_click_events_links", ["edition_id", "kind", "counted", "link_id", "delivery_id"], None),
    (
        "ix_click_events_readers",
        ["edition_id", "kind", "counted", "variant", "segment", "subject", "delivery_id"],
        None,
    ),
    (
        "ix_click_events_sections",
        ["edition_id", "kind", "counted", "section", "delivery_id"],
        None,
    ),
    ("ix_click_events_delivery", ["delivery_id", "clicked_at"], None),
]


def _counts_migration() -> Any:
    """Migration 0014, for the ledger's report-count triggers it defines."""
    path = Path(__file__).with_name("0014_report_counts.py")
    spec = importlib.util.spec_from_file_location("digest_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _indexes(table: str, indexes: list[tuple[str, list[str], str | None]], drop: bool) -> None:
    for name, columns, where in indexes:
        if drop:
            op.drop_index(name, table_name=table)
            continue
        clause = {} if where is None else {"sqlite_where": sa.text(where)}
        clause |= {} if where is None else {"postgresql_where": sa.text(where)}
        op.create_index(name, table, columns, **clause)  # type: ignore[arg-type]


def _summaries() -> None:
    op.create_table(
        "edition_summaries",
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("edition_date", sa.Date(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("clicks", sa.Integer(), nullable=False),
        sa.Column("summarised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["edition_id"], ["editions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("edition_id"),
    )


def _sqlite_upgrade() -> None:
    _fill = (
        "UPDATE {t} SET edition_date = "
        "(SELECT edition_date FROM editions WHERE editions.id = {t}.edition_id)"
    )
    for table in ("deliveries", "click_events"):
        op.add_column(table, sa.Column("edition_date", sa.Date(), nullable=True))
        op.execute(_fill.format(t=table))
    # Clicks first: rebuilding deliveries drops it, and with foreign keys on SQLite would
    # cascade that drop to every click that still had a key to it.
    _indexes("click_events", _CLICK_INDEXES, drop=True)
    with op.batch_alter_table("click_events", naming_convention=_NAMES) as batch:
        batch.alter_column("edition_date", existing_type=sa.Date(), nullable=False)
        batch.drop_constraint("fk_click_events_delivery_id_deliveries", type_="foreignkey")
    _indexes("click_events", _CLICK_INDEXES, drop=False)
    # The table is rebuilt (a SQLite constraint cannot be altered): its triggers and partial
    # indexes go with it and are made again.
    _indexes("deliveries", _DELIVERY_INDEXES, drop=True)
    with op.batch_alter_table("deliveries", naming_convention=_NAMES) as batch:
        batch.alter_column("edition_date", existing_type=sa.Date(), nullable=False)
        batch.drop_constraint("uq_deliveries_edition_id", type_="unique")
        batch.create_unique_constraint(_UQ, ["edition_id", "subscriber_id", "edition_date"])
    _indexes("deliveries", _DELIVERY_INDEXES, drop=False)
    for ddl in _counts_migration()._SQLITE[:3]:  # the ledger's three (editions keeps its own)
        op.execute(ddl)


def _months(table: str) -> list[date]:
    from digest.clock import utcnow
    from digest.partitions import month_of, months_ahead

    found = op.get_bind().execute(
        sa.text(
            f"SELECT DISTINCT date_trunc('month', e.edition_date)::date FROM {table} t "
            "JOIN editions e ON e.id = t.edition_id"
        )
    )
    return sorted({month_of(m) for (m,) in found} | set(months_ahead(utcnow().date())))


def _pg_partition(table: str, months: list[date]) -> None:
    """`table` becomes partitioned by edition_date: a new table, its monthly partitions (every
    month with rows, this month and the next few) and a DEFAULT one, the rows copied with
    their edition's date, the sequence handed over, the old table dropped, then its keys and
    indexes (built once, after the copy)."""
    from digest.partitions import next_month, partition_name

    old = f"{table}_unpartitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS, edition_date DATE NOT NULL) "
        "PARTITION BY RANGE (edition_date)"
    )
    for month in months:
        op.execute(
            f"CREATE TABLE {partition_name(table, month)} PARTITION OF {table} "
            f"FOR VALUES FROM ('{month}') TO ('{next_month(month)}')"
        )
    op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    op.execute(
        f"INSERT INTO {table} SELECT o.*, e.edition_date FROM {old} o "
        "JOIN editions e ON e.id = o.edition_id"
    )
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, edition_date)")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_edition_id_fkey FOREIGN KEY (edition_id) "
        "REFERENCES editions (id) ON DELETE CASCADE"
    )


def _pg_upgrade() -> None:
    fks = op.get_bind().execute(
        sa.text(
            "SELECT conname FROM pg_constraint WHERE contype = 'f' "
            "AND conrelid = 'click_events'::regclass AND confrelid = 'deliveries'::regclass"
        )
    )
    for (name,) in list(fks):
        op.execute(f'ALTER TABLE click_events DROP CONSTRAINT "{name}"')
    months = sorted(set(_months("deliveries")) | set(_months("click_events")))
    _pg_partition("deliveries", months)
    op.execute(
        f"ALTER TABLE deliveries ADD CONSTRAINT {_UQ} "
        "UNIQUE (edition_id, subscriber_id, edition_date)"
    )
    _indexes("deliveries", _DELIVERY_INDEXES, drop=False)
    # Statement-level triggers on the partitioned table see every partition's rows in their
    # transition tables (the functions of 0014 are kept; the triggers went with the old table).
    counts = _counts_migration()
    for name in ("insert", "update", "delete"):
        op.execute(counts._pg_trigger(name))
    _pg_partition("click_events", months)
    op.execute(
        "ALTER TABLE click_events ADD CONSTRAINT click_events_link_id_fkey FOREIGN KEY (link_id) "
        "REFERENCES tracked_links (id) ON DELETE CASCADE"
    )
    _indexes("click_events", _CLICK_INDEXES, drop=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()
    _summaries()


def _pg_unpartition(table: str) -> None:
    old = f"{table}_partitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS)")
    op.execute(f"ALTER TABLE {table} DROP COLUMN edition_date")
    columns = ", ".join(
        c["name"] for c in sa.inspect(op.get_bind()).get_columns(table) if c["name"]
    )
    op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {old}")
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    op.execute(f"DROP TABLE {old}")  # with its partitions
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id)")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_edition_id_fkey FOREIGN KEY (edition_id) "
        "REFERENCES editions (id) ON DELETE CASCADE"
    )


def _pg_downgrade() -> None:
    _pg_unpartition("click_events")
    _pg_unpartition("deliveries")
    op.execute(
        "ALTER TABLE deliveries ADD CONSTRAINT deliveries_edition_id_subscriber_id_key "
        "UNIQUE (edition_id, subscriber_id)"
    )
    _indexes("deliveries", _DELIVERY_INDEXES, drop=False)
    counts = _counts_migration()
    for name in ("insert", "update", "delete"):
        op.execute(counts._pg_trigger(name))
    op.execute(
        "ALTER TABLE click_events ADD CONSTRAINT click_events_link_id_fkey FOREIGN KEY (link_id) "
        "REFERENCES tracked_links (id) ON DELETE CASCADE"
    )
    op.execute(
        "ALTER TABLE click_events ADD CONSTRAINT click_events_delivery_id_fkey FOREIGN KEY "
        "(delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE"
    )
    _indexes("click_events", _CLICK_INDEXES, drop=False)


def downgrade() -> None:
    op.drop_table("edition_summaries")
    if op.get_bind().dialect.name == "postgresql":
        _pg_downgrade()
        return
    _indexes("deliveries", _DELIVERY_INDEXES, drop=True)
    with op.batch_alter_table("deliveries", naming_convention=_NAMES) as batch:
        batch.drop_constraint(_UQ, type_="unique")
        batch.create_unique_constraint(None, ["edition_id", "subscriber_id"])
        batch.drop_column("edition_date")
    _indexes("deliveries", _DELIVERY_INDEXES, drop=False)
    for ddl in _counts_migration()._SQLITE[:3]:
        op.execute(ddl)
    _indexes("click_events", _CLICK_INDEXES, drop=True)
    with op.batch_alter_table("click_events") as batch:
        batch.drop_column("edition_date")
        batch.create_foreign_key(None, "deliveries", ["delivery_id"], ["id"], ondelete="CASCADE")
    _indexes("click_events", _CLICK_INDEXES, drop=False)
