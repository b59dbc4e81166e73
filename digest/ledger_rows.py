"""New ledger rows (digest.ledger.add_rows): pending rows, and skipped ones for readers who missed
their send time.

Rows are inserted variant by variant: claims take one variant's rows in id order, so a batch's
rows then sit together in the table and each ledger update of a batch rewrites a few dozen pages
rather than ten times as many (measured: 15% of a send).

SQLite: the driver's executemany, a variant's chunk at a time, `ON CONFLICT DO NOTHING` skipping
rows another sender inserted first (the unique key decides). PostgreSQL: executemany would be
one INSERT per row (psycopg pipelines them, but each is executed, fires the statement-level
triggers of digest.report_counts and costs psycopg's Python per row: half of a 20,000-reader
send's ledger time). There a variant's chunk goes by COPY straight into the ledger, under a
lock on the edition's row creation (`lock_rows`, taken before the caller asks who has a row):
no other sender writes rows of the edition meanwhile, so there is nothing to skip (the unique
key still refuses a duplicate). Row creation for 100,000 readers took 1.9 s this way (bench/
scale.py) against 3.7 s with a COPY into a temporary table and an `INSERT … SELECT … ORDER BY
variant ON CONFLICT DO NOTHING` (whose sort went to disk, past `work_mem`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, literal_column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from digest.errors import NotFound
from digest.ledger_model import DELIVERIES

_INSERT_CHUNK = 2000
_BUFFERED_ROWS = 50_000
# PostgreSQL: the advisory lock's first key (the second is the edition's id), "dg".
_ROW_CREATION_LOCK = 0x6467
# What a new row binds: (subscriber_id, email, name, sections, variant, subject).
ROW_COLUMNS = ("subscriber_id", "email", "name", "sections", "variant", "subject")
_TEXT: TypeEngine[str] = DELIVERIES.c.email.type

Row = tuple[int, str, str | None, str, str, str]


def edition_date(session: Session, edition_id: int) -> date:
    from digest.editions import Edition

    found = session.get(Edition, edition_id)
    assert found is not None, edition_id
    return found.edition_date


def _insert(session: Session) -> Any:
    """INSERT that skips rows another process added a moment ago (unique edition+subscriber)."""
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(DELIVERIES).on_conflict_do_nothing()
    return postgresql.insert(DELIVERIES).on_conflict_do_nothing()


def lock_rows(session: Session, edition_id: int) -> None:
    """PostgreSQL: until this transaction ends, no other sender creates rows of the edition
    (it waits here, then finds this one's rows), and the edition cannot be deleted (FOR KEY
    SHARE, the lock a foreign key's check of each row would take: the ledger has no foreign
    key there, see digest.ledger_model). SQLite's write lock does the same."""
    if session.get_bind().dialect.name == "postgresql":
        lock = text(
            "SELECT pg_advisory_xact_lock(:k, id) FROM editions WHERE id = :e FOR KEY SHARE"
        )
        if session.execute(lock, {"k": _ROW_CREATION_LOCK, "e": edition_id}).first() is None:
            raise NotFound(f"edition {edition_id} was deleted before its rows were written")


def _bound(session: Session, values: dict[str, object]) -> dict[str, object]:
    """Column values as the driver gets them when bound (the column types' processing)."""
    dialect = session.get_bind().dialect
    out: dict[str, object] = {}
    for name, value in values.items():
        bind = DELIVERIES.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        out[name] = bind(value) if bind is not None else value
    return out


def _literals(session: Session, values: dict[str, object]) -> dict[str, Any]:
    """Column values as SQL literals (quoted and escaped by the dialect's literal processors).
    A value the driver would get as text (SQLite's timestamps) is rendered as that very text,
    so the stored value is the one a bound parameter gives."""
    dialect = session.get_bind().dialect
    out: dict[str, Any] = {}
    for name, stored in _bound(session, values).items():
        column_type = DELIVERIES.c[name].type
        if isinstance(stored, str):
            render = _TEXT.literal_processor(dialect)
        else:
            render = column_type.literal_processor(dialect)
        assert render is not None, name
        out[name] = literal_column(render(stored), column_type)
    return out


class RowAdder:
    """Buffers new rows per variant and writes them in chunks; `finish()` writes the rest and
    returns (pending rows this run added, skipped rows added). A row another sender inserted
    first is skipped by the unique key and not counted."""

    def __init__(self, session: Session, edition_id: int, segment: str, now: datetime) -> None:
        self.session = session
        self.now = now
        # What every new row shares is rendered into the statement once: bound per row,
        # SQLAlchemy would process it 100,000 times (the timestamp's conversion alone was 10%
        # of the insert).
        self.shared = {
            "edition_id": edition_id,
            "segment": segment,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            # The partition key (migration 0016): the edition's date, the same for every row.
            "edition_date": edition_date(session, edition_id),
        }
        self._conn = session.connection()
        self._pending: dict[str, list[Row]] = {}
        self._buffered = 0
        self._missed: list[dict[str, object]] = []
        self.created = 0
        self._copy: _Copier | None = None
        if self._conn.dialect.name == "postgresql":
            self._copy = _Copier(self._conn, _bound(session, self.shared))
            return
        insert = _insert(session).values(_literals(session, self.shared))
        # The rows go to the driver's executemany as they are (plain ints, strings and None):
        # the per-row parameter processing of SQLAlchemy cost a third of the insert.
        compiled = insert.compile(dialect=self._conn.dialect, column_keys=list(ROW_COLUMNS))
        self._order = compiled.positiontup
        if self._order is not None:
            assert tuple(self._order) == ROW_COLUMNS, self._order
        self._sql = str(compiled)

    def add(self, row: Row) -> None:
        """A pending row (its variant key is row[4])."""
        rows = self._pending.setdefault(row[4], [])
        rows.append(row)
        self._buffered += 1
        if len(rows) >= _INSERT_CHUNK:
            self._flush(row[4])
        elif self._buffered >= _BUFFERED_ROWS:  # many small variants: bound the memory
            self._flush(max(self._pending, key=lambda k: len(self._pending[k])))

    def skip(self, row: Row, reason: str) -> None:
        """A row settled as skipped at once (rare: a scheduler that was down): bound rows."""
        settled = {"state": "skipped", "settled_at": self.now, "last_error": reason}
        self._missed.append(self.shared | dict(zip(ROW_COLUMNS, row, strict=True)) | settled)

    def _flush(self, variant: str) -> None:
        rows = self._pending.pop(variant)
        self._buffered -= len(rows)
        if self._copy is not None:
            self.created += self._copy.write(rows)
            return
        if self._order is None:  # named parameters
            params: Any = [dict(zip(ROW_COLUMNS, r, strict=True)) for r in rows]
        else:
            params = rows
        # executemany sums the rows each insert wrote.
        self.created += max(self._conn.exec_driver_sql(self._sql, params).rowcount, 0)

    def finish(self) -> tuple[int, int]:
        for variant in list(self._pending):
            self._flush(variant)
        if not self._missed:
            return self.created, 0
        # RETURNING names the rows written (a bulk INSERT's rowcount is not reliable on psycopg).
        added = _insert(self.session).returning(DELIVERIES.c.id)
        return self.created, len(self._conn.execute(added, self._missed).all())


class _Copier:
    """PostgreSQL: chunks of new rows COPYed into the ledger (see the module's notes)."""

    def __init__(self, conn: Connection, shared: dict[str, object]) -> None:
        self._conn = conn
        self._shared = tuple(shared.values())
        columns = ", ".join((*shared, *ROW_COLUMNS))
        self._copy = f"COPY {DELIVERIES.name} ({columns}) FROM STDIN"

    def write(self, rows: list[Row]) -> int:
        cursor = self._conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        shared = self._shared
        with cursor.copy(self._copy) as copy:
            for row in rows:
                copy.write_row(shared + row)
        return len(rows)


def add_rows(session: Session, edition_id: int, segment: str, now: datetime) -> RowAdder:
    """A writer of new rows of one edition, in the caller's transaction."""
    return RowAdder(session, edition_id, segment, now)
