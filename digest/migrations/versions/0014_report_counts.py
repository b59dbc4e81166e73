"""report counts: delivered rows per edition, variant, segment and subject, kept by triggers
on the ledger (digest.report_counts), so `digest report` does not count a million rows; the
section of a story's clicks copied into click_events, so its count reads one index

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "edition_id, variant, segment, subject, shard"
_COLS = f"{_KEY}, delivered"


def _upsert(row: str, shard: str, delta: int, when: str = "") -> str:
    """Add `delta` to the group of `row` (NEW or OLD) in `shard` (if `when` holds)."""
    values = (
        f"{row}.edition_id, {row}.variant, {row}.segment, coalesce({row}.subject, ''), "
        f"{shard}, {delta}"
    )
    source = f"SELECT {values} WHERE {when}" if when else f"VALUES ({values})"
    return (
        f"INSERT INTO report_sent ({_COLS}) {source} "
        f"ON CONFLICT ({_KEY}) DO UPDATE SET delivered = report_sent.delivered + {delta}"
    )


# An update matters when the row enters or leaves `sent`, or a sent row changes group.
_MOVED = (
    "(OLD.state = 'sent') <> (NEW.state = 'sent') OR (OLD.state = 'sent' AND ("
    "OLD.edition_id <> NEW.edition_id OR OLD.variant <> NEW.variant "
    "OR OLD.segment <> NEW.segment OR coalesce(OLD.subject, '') <> coalesce(NEW.subject, '')))"
)
# A row deleted with its edition (the cascade) leaves nothing to count.
_EDITION_LIVES = "EXISTS (SELECT 1 FROM editions WHERE editions.id = OLD.edition_id)"
_COLUMNS = "state, edition_id, variant, segment, subject"

_SQLITE = [
    f"""CREATE TRIGGER report_sent_insert AFTER INSERT ON deliveries WHEN NEW.state = 'sent'
    BEGIN {_upsert("NEW", "0", 1)}; END""",
    f"""CREATE TRIGGER report_sent_update AFTER UPDATE OF {_COLUMNS} ON deliveries
    WHEN {_MOVED}
    BEGIN
      {_upsert("OLD", "0", -1, "OLD.state = 'sent'")};
      {_upsert("NEW", "0", 1, "NEW.state = 'sent'")};
    END""",
    f"""CREATE TRIGGER report_sent_delete AFTER DELETE ON deliveries
    WHEN OLD.state = 'sent' AND {_EDITION_LIVES}
    BEGIN {_upsert("OLD", "0", -1)}; END""",
    """CREATE TRIGGER report_sent_edition AFTER DELETE ON editions
    BEGIN DELETE FROM report_sent WHERE edition_id = OLD.id; END""",
]


# PostgreSQL: statement-level triggers over the transition tables, one upsert per group and
# statement (sorted, in this backend's shard). A row-level upsert would update one counter row
# once per delivery, and PostgreSQL keeps every version of that row until the transaction ends:
# each update then walks all the versions before it (quadratic in a bulk settle).
def _pg_delta(rows: str, sign: str, where: str = "state = 'sent'") -> str:
    return (
        f"SELECT edition_id, variant, segment, coalesce(subject, '') AS subject, {sign}1 AS d "
        f"FROM {rows} WHERE {where}"
    )


_PG_LIVES = "state = 'sent' AND EXISTS (SELECT 1 FROM editions e WHERE e.id = edition_id)"
_PG_SOURCES = {
    "insert": _pg_delta("new_rows", "+"),
    "update": f"{_pg_delta('old_rows', '-')} UNION ALL {_pg_delta('new_rows', '+')}",
    "delete": _pg_delta("old_rows", "-", _PG_LIVES),
}


def _pg_function(op_name: str) -> str:
    return f"""
CREATE FUNCTION report_sent_{op_name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO report_sent ({_COLS})
  SELECT edition_id, variant, segment, subject, pg_backend_pid(), sum(d)
  FROM ({_PG_SOURCES[op_name]}) AS delta
  GROUP BY edition_id, variant, segment, subject
  HAVING sum(d) <> 0
  ORDER BY edition_id, variant, segment, subject
  ON CONFLICT ({_KEY}) DO UPDATE SET delivered = report_sent.delivered + EXCLUDED.delivered;
  RETURN NULL;
END $$"""


def _pg_trigger(op_name: str) -> str:
    tables = {
        "insert": "NEW TABLE AS new_rows",
        "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "delete": "OLD TABLE AS old_rows",
    }[op_name]
    return (
        f"CREATE TRIGGER report_sent_{op_name} AFTER {op_name.upper()} ON deliveries "
        f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION report_sent_{op_name}()"
    )


_PG = [
    *(ddl for name in _PG_SOURCES for ddl in (_pg_function(name), _pg_trigger(name))),
    """CREATE FUNCTION report_sent_edition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM report_sent WHERE edition_id = OLD.id;
  RETURN NULL;
END $$""",
    """CREATE TRIGGER report_sent_edition AFTER DELETE ON editions FOR EACH ROW
    EXECUTE FUNCTION report_sent_edition()""",
]


def upgrade() -> None:
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
    op.execute(
        f"INSERT INTO report_sent ({_COLS}) "
        "SELECT edition_id, variant, segment, coalesce(subject, ''), 0, count(*) "
        "FROM deliveries WHERE state = 'sent' "
        "GROUP BY edition_id, variant, segment, coalesce(subject, '')"
    )
    for ddl in _PG if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(ddl)
    with op.batch_alter_table("click_events") as batch:
        batch.add_column(sa.Column("section", sa.String(length=100), nullable=True))
    op.execute(
        "UPDATE click_events SET section = (SELECT section FROM tracked_links "
        "WHERE tracked_links.id = click_events.link_id AND tracked_links.kind = 'story')"
    )
    op.create_index(
        "ix_click_events_sections",
        "click_events",
        ["edition_id", "kind", "counted", "section", "delivery_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_click_events_sections", table_name="click_events")
    with op.batch_alter_table("click_events") as batch:
        batch.drop_column("section")
    for trigger, table in (
        ("report_sent_insert", "deliveries"),
        ("report_sent_update", "deliveries"),
        ("report_sent_delete", "deliveries"),
        ("report_sent_edition", "editions"),
    ):
        on = f" ON {table}" if op.get_bind().dialect.name == "postgresql" else ""
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}{on}")
    if op.get_bind().dialect.name == "postgresql":
        for name in (*_PG_SOURCES, "edition"):
            op.execute(f"DROP FUNCTION IF EXISTS report_sent_{name}()")
    op.drop_table("report_sent")
