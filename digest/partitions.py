"""Monthly partitions of the ledger on PostgreSQL.

`deliveries` and `click_events` are partitioned by RANGE of `edition_date` (migration 0016),
one partition a month, named `<table>_pYYYYMM`. A partition must exist before a row of its
month is written, so they are made ahead: by `digest db upgrade` (the current month and
AHEAD_MONTHS more), by the scheduler once a day, and on demand, before a send writes the rows
of an edition whose month has none (checked once per process and month: `ensure_for`).

A DEFAULT partition (`<table>_default`) is the safety net: a row of a month nobody made a
partition for still lands somewhere instead of failing a send. It stays empty in normal use.
PostgreSQL refuses a partition for a month with rows in the DEFAULT one, so making that month
moves them out first (`_move_out_of_default`); `sends prune` never drops the DEFAULT one.
SQLite has plain tables: every function here does nothing there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

TABLES = ("deliveries", "click_events")
AHEAD_MONTHS = 3
# Room left in each page of a ledger partition: a row's claim, hand-over and settle each write
# a new version of it, which stays in the same page (a HOT update, no new index entries) only
# when the page has room. Full pages made each update a new version elsewhere plus an entry in
# every index. Clicks are only ever inserted.
FILLFACTOR = {"deliveries": 50, "click_events": 100}
_made: set[tuple[str, date]] = set()  # (database url, month) known to have partitions
_lock = threading.Lock()


def month_of(day: date) -> date:
    return day.replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_p{month:%Y%m}"


def months_ahead(today: date, ahead: int = AHEAD_MONTHS) -> list[date]:
    out = [month_of(today)]
    for _ in range(ahead):
        out.append(next_month(out[-1]))
    return out


def is_partition(name: str | None) -> bool:
    """A table that is a monthly (or the DEFAULT) partition, not a model's table."""
    return name is not None and any(
        name == f"{t}_default" or (name.startswith(f"{t}_p") and name[len(t) + 2 :].isdigit())
        for t in TABLES
    )


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Alembic's filter: partitions are the database's, not the models' (autogenerate and the
    schema test compare the models with the parent tables only)."""
    return not (type_ == "table" and is_partition(name))


def include_object(dialect: str) -> Any:
    """Alembic's filter of the models' objects: an index or key made on one database only
    (`ddl_if`, which autogenerate does not know) is compared on that database only."""

    def include(obj: object, _name: str | None, _type: str, reflected: bool, _to: object) -> bool:
        only = None if reflected else getattr(obj, "_ddl_if", None)
        return only is None or only.dialect in (None, dialect)

    return include


def partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE relname = 'deliveries' AND relkind = 'p'")
    ).scalar()
    return kind is not None


def refresh_statistics(conn: Connection, day: date) -> None:
    """ANALYZE the partition of `day` (PostgreSQL; in the caller's transaction, whose own new
    rows it counts). A morning's rows arrive in one transaction, before autovacuum's analyze
    notices them, and a second segment's send or a crash re-run minutes later was planned for
    an empty table: its anti-join over the edition took 16 s at 30,000 readers instead of
    0.6 s, and grows with the square of the list."""
    if not partitioned(conn):
        return
    name = partition_name("deliveries", month_of(day))
    found = conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar()
    conn.execute(text(f"ANALYZE {name if found is not None else 'deliveries_default'}"))


def create_month(conn: Connection, month: date) -> bool:
    """The partitions of `month` on every partitioned table (True: some were new). Idempotent
    and safe against a concurrent sender doing the same (IF NOT EXISTS, and a lost race
    is the partition existing)."""
    new = False
    for table in TABLES:
        name = partition_name(table, month)
        exists = conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar()
        if exists is not None:
            continue
        bounds = f"FOR VALUES FROM ('{month.isoformat()}') TO ('{next_month(month).isoformat()}')"
        if _in_default(conn, table, month):
            moved = _move_out_of_default(conn, table, name, month, bounds)
            log.warning("%s: %d row(s) of %s moved out of %s_default", name, moved, month, table)
        else:
            conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} {bounds} "
                    f"WITH (fillfactor = {FILLFACTOR[table]})"
                )
            )
        new = True
    return new


def _month_rows(table: str, month: date) -> str:
    return (
        f"{table}_default WHERE edition_date >= '{month.isoformat()}' "
        f"AND edition_date < '{next_month(month).isoformat()}'"
    )


def _in_default(conn: Connection, table: str, month: date) -> bool:
    return bool(
        conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {_month_rows(table, month)})")).scalar()
    )


def _move_out_of_default(conn: Connection, table: str, name: str, month: date, bounds: str) -> int:
    """The month's partition, made from the rows that fell into the DEFAULT one (its
    partition could not be made in time: a lock not had). In the caller's transaction: the
    DEFAULT partition is locked so no row of the month lands there meanwhile, the rows are
    moved into a new table, which is then attached (with the parent's indexes and keys).
    A move, not an insert or delete through the parent: the report counts kept by triggers
    (digest.report_counts) do not change, and neither do the rows' ids."""
    conn.execute(text(f"LOCK TABLE {table}_default IN ACCESS EXCLUSIVE MODE"))
    columns = ", ".join(
        conn.execute(
            text(
                "SELECT quote_ident(attname) FROM pg_attribute "
                "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum"
            ),
            {"t": table},
        ).scalars()
    )
    conn.execute(
        text(
            f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            f"WITH (fillfactor = {FILLFACTOR[table]})"
        )
    )
    moved = conn.execute(
        text(
            f"WITH gone AS (DELETE FROM {_month_rows(table, month)} RETURNING {columns}) "
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM gone"
        )
    ).rowcount
    conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} {bounds}"))
    return int(moved)


def ensure_months(engine: Engine, months: Iterable[date]) -> list[date]:
    """Create what is missing of the partitions of `months`, each month in its own
    transaction; returns the months that got new partitions."""
    made: list[date] = []
    with engine.connect() as conn:
        if not partitioned(conn):
            return made
        conn.commit()
        for month in sorted({month_of(m) for m in months}):
            try:
                with conn.begin():
                    # Creating a partition locks the parent table: rather than wait behind a
                    # long transaction (or a caller's own), give up; the DEFAULT one takes the
                    # rows and the next try (the scheduler's daily run) makes it.
                    conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                    if create_month(conn, month):
                        made.append(month)
                with _lock:
                    _made.add((str(engine.url), month))
            except DBAPIError as e:  # a lock not had, or rows of that month in the DEFAULT one
                log.warning("no partition for %s: %s", month, str(e.orig).splitlines()[0])
    return made


def ensure_ahead(engine: Engine, today: date) -> list[date]:
    """`digest db upgrade` and the scheduler's daily job: this month and the next few."""
    return ensure_months(engine, months_ahead(today))


def made_ahead(engine: Engine, today: date) -> str | None:
    """The scheduler's daily job: what it made, as its log line (None: nothing was missing)."""
    made = ensure_ahead(engine, today)
    return "ledger partitions made for " + ", ".join(f"{m:%Y-%m}" for m in made) if made else None


def ensure_for(engine: Any, day: date) -> None:
    """Before a send writes rows dated `day`: its month's partition, made in its own
    transaction if missing (a cheap check, then remembered for the life of the process)."""
    if not isinstance(engine, Engine) or engine.dialect.name != "postgresql":
        return
    key = (str(engine.url), month_of(day))
    with _lock:
        if key in _made:
            return
    ensure_months(engine, [day])  # remembered once it exists (a failure is tried again)


def forget(engine: Engine) -> None:
    """After a prune dropped partitions: check again before the next send (another process
    that still remembers a dropped month writes into the DEFAULT partition, the safety net)."""
    with _lock:
        _made.difference_update({k for k in _made if k[0] == str(engine.url)})
