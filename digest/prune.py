"""`digest sends prune --older-than 400d`: keep the ledger to the months that matter.

First every edition to prune gets its summary (digest.summaries: what the reports show of it),
each in its own transaction; only then do its rows go. On PostgreSQL the unit is the monthly
partition: every month that ends on or before the cut is pruned, its partitions of
click_events and deliveries detached and dropped (a catalogue change, whatever the number of
rows; nothing is deleted row by row, so nothing is vacuumed afterwards). Rows of those months
in the DEFAULT partition are deleted. On SQLite every edition dated before the cut is pruned,
its rows deleted CHUNK rows per transaction, so writers (a send, the click recorder) wait for
one chunk at most. A prune that stops half-way is finished by running it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from digest.db import transaction
from digest.editions import Edition
from digest.errors import InputError
from digest.ledger_model import LedgerCount
from digest.partitions import TABLES, forget, month_of, partitioned
from digest.summaries import EditionSummary, summarise

CHUNK = 10_000
_AGE = re.compile(r"(\d+)d")


def parse_age(value: str) -> timedelta:
    """`400d` → 400 days (InputError for anything else)."""
    found = _AGE.fullmatch(value.strip())
    if found is None or int(found.group(1)) < 1:
        raise InputError(f"--older-than {value!r}: give a number of days, like 400d")
    return timedelta(days=int(found.group(1)))


@dataclass
class PruneReport:
    cut: date
    dry_run: bool
    editions: list[tuple[str, date]] = field(default_factory=list)
    rows: int = 0
    clicks: int = 0
    partitions: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would prune" if self.dry_run else "pruned"
        head = (
            f"{verb} {len(self.editions)} edition(s) dated before {self.cut}: "
            f"{self.rows} ledger row(s), {self.clicks} click event(s)"
        )
        lines = [head]
        if self.partitions:
            lines.append(
                f"  partitions {'to drop' if self.dry_run else 'dropped'}: "
                + ", ".join(self.partitions)
            )
        lines.append("  their figures stay in `digest sends report` and `digest report`")
        return "\n".join(lines)


def _cut(conn: Connection, now: datetime, age: timedelta) -> date:
    day = (now - age).date()
    # PostgreSQL drops whole months: the last month that ends on or before `day`.
    return month_of(day) if partitioned(conn) else day


def _months(conn: Connection, table: str) -> dict[date, str]:
    """The monthly partitions of `table`, by month."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
    ).scalars()
    out: dict[date, str] = {}
    for name in names:
        tail = name[len(table) + 2 :]
        if name.startswith(f"{table}_p") and tail.isdigit() and len(tail) == 6:
            out[date(int(tail[:4]), int(tail[4:]), 1)] = name
    return out


def _count(session: Session, table: str, ids: list[int]) -> int:
    if not ids:
        return 0
    found = session.execute(
        text(f"SELECT count(*) FROM {table} WHERE edition_id IN ({','.join(map(str, ids))})")
    ).scalar()
    return int(found or 0)


def prune(
    sessions: sessionmaker[Session], now: datetime, age: timedelta, *, dry_run: bool = False
) -> PruneReport:
    bind = sessions.kw["bind"]
    assert isinstance(bind, Engine)
    with bind.connect() as conn:
        cut = _cut(conn, now, age)
        pg = partitioned(conn)
    report = PruneReport(cut, dry_run)
    with sessions() as session:
        old = list(
            session.execute(
                select(Edition.id, Edition.newsletter, Edition.edition_date)
                .where(Edition.edition_date < cut)
                .order_by(Edition.edition_date, Edition.id)
            )
        )
        ids = [e.id for e in old]
        report.editions = [(e.newsletter, e.edition_date) for e in old]
        report.rows = _count(session, "deliveries", ids)
        report.clicks = _count(session, "click_events", ids)
    if pg:
        with bind.connect() as conn:
            months = {t: _months(conn, t) for t in TABLES}
        report.partitions = sorted(n for t in TABLES for m, n in months[t].items() if m < cut)
    if dry_run:
        return report
    for edition_id in ids:  # the summaries first: the reports read them from now on
        with transaction(sessions) as session:
            summarise(session, edition_id, now)
    if pg:
        _drop_partitions(bind, report.partitions)
    # SQLite; on PostgreSQL what the DEFAULT partition held (deleted from the partition
    # itself: the parent's report-count triggers do not fire, the summary is the truth now).
    _delete_rows(bind, ids, [f"{t}_default" for t in TABLES] if pg else list(TABLES))
    # The kept counts of the pruned editions' rows: their summaries say it all now.
    with transaction(sessions) as session:
        session.execute(delete(LedgerCount).where(LedgerCount.edition_id.in_(ids)))
    return report


def _drop_partitions(engine: Engine, names: list[str]) -> None:
    """Clicks first (their month of the ledger goes right after), one transaction each."""
    forget(engine)
    ordered = sorted(names, key=lambda n: (not n.startswith("click_events"), n))
    with engine.connect() as conn:
        for name in ordered:
            parent = "click_events" if name.startswith("click_events") else "deliveries"
            with conn.begin():
                conn.execute(text(f"ALTER TABLE {parent} DETACH PARTITION {name}"))
                conn.execute(text(f"DROP TABLE {name}"))


def _delete_rows(engine: Engine, ids: list[int], tables: list[str]) -> None:
    """Clicks, then ledger rows, of each edition, CHUNK rows a transaction."""
    with engine.connect() as conn:
        for edition_id in ids:
            for table in sorted(tables):
                while True:
                    with conn.begin():
                        gone = conn.execute(
                            text(
                                f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
                                f"WHERE edition_id = :e LIMIT {CHUNK})"
                            ),
                            {"e": edition_id},
                        ).rowcount
                    if gone < CHUNK:
                        break


def pruned_editions(session: Session) -> int:
    return len(session.scalars(select(EditionSummary.edition_id)).all())
