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

_PG_FUNCTION = f"""
CREATE FUNCTION report_sent_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' AND OLD.state = 'sent' AND {_EDITION_LIVES} THEN
    {_upsert("OLD", "pg_backend_pid()", -1)};
  END IF;
  IF TG_OP <> 'DELETE' AND NEW.state = 'sent' THEN
    {_upsert("NEW", "pg_backend_pid()", 1)};
  END IF;
  RETURN NULL;
END $$"""
_PG = [
    _PG_FUNCTION,
    """CREATE TRIGGER report_sent_insert AFTER INSERT ON deliveries FOR EACH ROW
    WHEN (NEW.state = 'sent') EXECUTE FUNCTION report_sent_count()""",
    f"""CREATE TRIGGER report_sent_update AFTER UPDATE OF {_COLUMNS} ON deliveries FOR EACH ROW
    WHEN ({_MOVED}) EXECUTE FUNCTION report_sent_count()""",
    """CREATE TRIGGER report_sent_delete AFTER DELETE ON deliveries FOR EACH ROW
    WHEN (OLD.state = 'sent') EXECUTE FUNCTION report_sent_count()""",
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
        op.execute("DROP FUNCTION IF EXISTS report_sent_count()")
        op.execute("DROP FUNCTION IF EXISTS report_sent_edition()")
    op.drop_table("report_sent")
