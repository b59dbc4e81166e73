"""ledger counts: rows per edition, variant, segment, subject, state and whether a provider's
event resolved them, kept by triggers on the ledger (digest.report_counts), for every state,
not only `sent`: `digest sends report` of a million-row edition read the million rows (1.3 s on
SQLite, 1.9 s on PostgreSQL); it now adds a few hundred counters. `report_sent`, which kept
the delivered rows alone, is what `state = 'sent'` of the new table says, and goes.

Revision ID: 0018
Revises: 0017
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | Sequence[str] | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GROUP = "edition_id, variant, segment, subject, state, by_event"
_KEY = f"{_GROUP}, shard"
_COLS = f"{_KEY}, n"
# digest.ledger.RESOLVED_BY's rows, as digest.ledger_report looked for them (a migration keeps
# the text it was written with).
_PATTERN = "'%resolved by % event %'"


def _by_event(row: str) -> str:
    return f"CASE WHEN {row}last_error LIKE {_PATTERN} THEN 1 ELSE 0 END"


def _group(row: str) -> str:
    """The counted group of `row` (NEW or OLD, or the table's own columns when empty)."""
    p = f"{row}." if row else ""
    return (
        f"{p}edition_id, {p}variant, {p}segment, coalesce({p}subject, ''), {p}state, {_by_event(p)}"
    )


def _sqlite_upsert(row: str, delta: int) -> str:
    return (
        f"INSERT INTO ledger_counts ({_COLS}) VALUES ({_group(row)}, 0, {delta}) "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET n = ledger_counts.n + {delta}"
    )


_WATCHED = "state, edition_id, variant, segment, subject, last_error"
_MOVED = " OR ".join(
    [
        *(f"OLD.{c} IS NOT NEW.{c}" for c in ("state", "edition_id", "variant", "segment")),
        "coalesce(OLD.subject, '') IS NOT coalesce(NEW.subject, '')",
        f"{_by_event('OLD.')} <> {_by_event('NEW.')}",
    ]
)
# A row deleted with its edition leaves nothing to count (the edition's trigger deletes them).
_EDITION_LIVES = "EXISTS (SELECT 1 FROM editions WHERE editions.id = OLD.edition_id)"

_SQLITE = [
    f"""CREATE TRIGGER ledger_counts_insert AFTER INSERT ON deliveries
    BEGIN {_sqlite_upsert("NEW", 1)}; END""",
    f"""CREATE TRIGGER ledger_counts_update AFTER UPDATE OF {_WATCHED} ON deliveries
    WHEN {_MOVED}
    BEGIN {_sqlite_upsert("OLD", -1)}; {_sqlite_upsert("NEW", 1)}; END""",
    f"""CREATE TRIGGER ledger_counts_delete AFTER DELETE ON deliveries WHEN {_EDITION_LIVES}
    BEGIN {_sqlite_upsert("OLD", -1)}; END""",
    """CREATE TRIGGER ledger_counts_edition AFTER DELETE ON editions
    BEGIN DELETE FROM ledger_counts WHERE edition_id = OLD.id; END""",
]


# PostgreSQL: statement-level triggers over the transition tables, one upsert per group and
# statement (sorted) in this backend's shard, so that concurrent workers never wait on one
# counter; a hand-over (no group changes) adds nothing. A row-level upsert would update a
# counter once per delivery, each update walking the versions before it.
def _pg_delta(rows: str, sign: str, where: str = "") -> str:
    named = (
        "edition_id, variant, segment, coalesce(subject, '') AS subject, state, "
        f"{_by_event('')} AS by_event"
    )
    return f"SELECT {named}, {sign}1 AS d FROM {rows}{where}"


_PG_SOURCES = {
    "insert": _pg_delta("new_rows", "+"),
    "update": f"{_pg_delta('old_rows', '-')} UNION ALL {_pg_delta('new_rows', '+')}",
    "delete": _pg_delta(
        "old_rows", "-", " WHERE EXISTS (SELECT 1 FROM editions e WHERE e.id = edition_id)"
    ),
}
_PG_TABLES = {
    "insert": "NEW TABLE AS new_rows",
    "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "delete": "OLD TABLE AS old_rows",
}


def _pg_function(name: str) -> str:
    return f"""
CREATE FUNCTION ledger_counts_{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ledger_counts ({_COLS})
  SELECT {_GROUP}, pg_backend_pid(), sum(d)
  FROM ({_PG_SOURCES[name]}) AS delta
  GROUP BY {_GROUP}
  HAVING sum(d) <> 0
  ORDER BY {_GROUP}
  ON CONFLICT ({_KEY}) DO UPDATE SET n = ledger_counts.n + EXCLUDED.n;
  RETURN NULL;
END $$"""


def _pg_trigger(name: str) -> str:
    return (
        f"CREATE TRIGGER ledger_counts_{name} AFTER {name.upper()} ON deliveries "
        f"REFERENCING {_PG_TABLES[name]} FOR EACH STATEMENT EXECUTE FUNCTION "
        f"ledger_counts_{name}()"
    )


# Named to fire after deliveries_edition_cascade (migration 0017): the ledger's delete trigger
# finds the edition gone and takes nothing off, then the counters go.
_PG = [
    *(ddl for name in _PG_SOURCES for ddl in (_pg_function(name), _pg_trigger(name))),
    """CREATE FUNCTION ledger_counts_edition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM ledger_counts WHERE edition_id = OLD.id;
  RETURN NULL;
END $$""",
    """CREATE TRIGGER ledger_counts_edition AFTER DELETE ON editions FOR EACH ROW
    EXECUTE FUNCTION ledger_counts_edition()""",
]
_TRIGGERS = [
    ("insert", "deliveries"),
    ("update", "deliveries"),
    ("delete", "deliveries"),
    ("edition", "editions"),
]


def _migration_0014() -> Any:
    """Migration 0014, for the `report_sent` triggers a downgrade makes again."""
    path = Path(__file__).with_name("0014_report_counts.py")
    spec = importlib.util.spec_from_file_location("digest_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _drop_triggers(prefix: str) -> None:
    for name, table in _TRIGGERS:
        on = f" ON {table}" if _pg() else ""
        op.execute(f"DROP TRIGGER IF EXISTS {prefix}_{name}{on}")
        if _pg():
            op.execute(f"DROP FUNCTION IF EXISTS {prefix}_{name}()")


def upgrade() -> None:
    op.create_table(
        "ledger_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=False),
        sa.Column("segment", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("by_event", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "edition_id", "variant", "segment", "subject", "state", "by_event", "shard"
        ),
    )
    # The triggers first: on PostgreSQL making them locks the ledger against writes until the
    # migration commits, so the count below and the triggers see the same rows.
    for ddl in _PG if _pg() else _SQLITE:
        op.execute(ddl)
    op.execute(
        f"INSERT INTO ledger_counts ({_COLS}) SELECT {_group('')}, 0, count(*) "
        f"FROM deliveries GROUP BY {_group('')}"
    )
    _drop_triggers("report_sent")
    op.drop_table("report_sent")


def downgrade() -> None:
    m = _migration_0014()
    op.create_table(
        "report_sent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=False),
        sa.Column("segment", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("edition_id", "variant", "segment", "subject", "shard"),
    )
    if _pg():
        for ddl in m._PG:
            op.execute(ddl)
    else:
        for ddl in m._SQLITE:
            op.execute(ddl)
    op.execute(
        "INSERT INTO report_sent (edition_id, variant, segment, subject, shard, delivered) "
        "SELECT edition_id, variant, segment, subject, 0, sum(n) FROM ledger_counts "
        "WHERE state = 'sent' GROUP BY edition_id, variant, segment, subject HAVING sum(n) <> 0"
    )
    _drop_triggers("ledger_counts")
    op.drop_table("ledger_counts")
