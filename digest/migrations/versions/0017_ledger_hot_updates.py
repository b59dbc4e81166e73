"""ledger on PostgreSQL: no index names `state` (claims by id, deferred rows by their due
time) and the partitions keep room in their pages, so a row's updates are HOT

Each of a row's three updates in a send (claim, hand-over, settle) changed `state`, which the
partial indexes of pending, deferred and sent rows name in their predicates: every update was
a new row version with a new entry in every index. Without them (and with room in the page for
the new version) the updates are HOT. SQLite keeps its partial indexes: there the updates
rewrite the row in place anyway.

The ledger's foreign key to `editions` goes too, on PostgreSQL: its check was a query per row
written, half the time of the COPY of a send's new rows. The row creation holds the edition as
the check would (digest.ledger_rows.lock_rows), and a trigger on `editions` deletes an
edition's rows, as the key's ON DELETE CASCADE did (named to fire before the report counts'
trigger there, as the key's did: the ledger's delete trigger takes the edition's delivered
rows off before those counts are deleted).

The new indexes are built per partition with CREATE INDEX CONCURRENTLY (a ledger of years
takes a while, and sends go on meanwhile), then attached to the parent's index. The old ones
are dropped after.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (name, columns, predicate) as in digest.ledger_model.
_NEW = [
    ("ix_deliveries_claim", "edition_id, id", None),
    ("ix_deliveries_due", "edition_id, next_attempt_at", "next_attempt_at IS NOT NULL"),
]
_OLD = [
    ("ix_deliveries_pending", "edition_id, variant, id", "state = 'pending'"),
    ("ix_deliveries_deferred", "edition_id, next_attempt_at", "state = 'deferred'"),
    ("ix_deliveries_sent", "edition_id, variant, segment, subject, id", "state = 'sent'"),
]
_FILLFACTOR = 50  # digest.partitions.FILLFACTOR (a migration keeps the value it was written with)


def _partitions() -> list[str]:
    found = op.get_bind().execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'deliveries'::regclass ORDER BY c.relname"
        )
    )
    return list(found.scalars())


def _where(predicate: str | None) -> str:
    return "" if predicate is None else f" WHERE {predicate}"


def _invalid(index: str) -> bool:
    found = op.get_bind().execute(
        sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:i)"),
        {"i": index},
    )
    return bool(found.scalar())


def _own(partition: str, index: str) -> str:
    """A partition's index of the parent's `index`: deliveries_p202612_claim."""
    return f"{partition}_{index.removeprefix('ix_deliveries_')}"


_CASCADE = """CREATE OR REPLACE FUNCTION deliveries_edition_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries WHERE edition_id = OLD.id;
    RETURN NULL;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Everything before the concurrent builds is committed before them, so a run stopped
    # during a build (still at 0016) must be able to run again: each step is idempotent.
    op.execute("ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_edition_id_fkey")
    op.execute(_CASCADE)
    op.execute("DROP TRIGGER IF EXISTS deliveries_edition_cascade ON editions")
    op.execute(
        "CREATE TRIGGER deliveries_edition_cascade AFTER DELETE ON editions "
        "FOR EACH ROW EXECUTE FUNCTION deliveries_edition_cascade()"
    )
    partitions = _partitions()
    for name, columns, predicate in _NEW:
        # The parent's index, invalid until every partition's is attached.
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON ONLY deliveries ({columns}){_where(predicate)}"
        )
    with op.get_context().autocommit_block():
        for partition in partitions:
            for name, columns, predicate in _NEW:
                own = _own(partition, name)
                if _invalid(own):  # left by a build that was stopped
                    op.execute(f"DROP INDEX CONCURRENTLY {own}")
                op.execute(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {own} "
                    f"ON {partition} ({columns}){_where(predicate)}"
                )
    for partition in partitions:
        for name, _, _ in _NEW:
            op.execute(f"ALTER INDEX {name} ATTACH PARTITION {_own(partition, name)}")
        # New pages only: the rows already there are settled.
        op.execute(f"ALTER TABLE {partition} SET (fillfactor = {_FILLFACTOR})")
    for name, _, _ in _OLD:
        op.execute(f"DROP INDEX {name}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns, predicate in _OLD:
        op.execute(f"CREATE INDEX {name} ON deliveries ({columns}){_where(predicate)}")
    for name, _, _ in _NEW:
        op.execute(f"DROP INDEX {name}")
    for partition in _partitions():
        op.execute(f"ALTER TABLE {partition} RESET (fillfactor)")
    op.execute("DROP TRIGGER deliveries_edition_cascade ON editions")
    op.execute("DROP FUNCTION deliveries_edition_cascade()")
    op.execute(
        "ALTER TABLE deliveries ADD CONSTRAINT deliveries_edition_id_fkey FOREIGN KEY "
        "(edition_id) REFERENCES editions (id) ON DELETE CASCADE"
    )
