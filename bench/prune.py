"""Benchmark: `digest sends prune` of a month of editions on PostgreSQL.

    .venv/bin/python bench/prune.py --database postgresql+psycopg://postgres@127.0.0.1/postgres \
        [--rows 1000000] [--editions 30]

A fresh database gets --editions daily editions in one month (March 2024) and --rows ledger
rows between them, written by INSERT … SELECT generate_series (a few seconds a million), a
click for one row in ten, and the report counts the triggers keep. Then the prune a year and
more later is timed (summaries of every edition, then the month's partitions detached and
dropped), and the reports of an edition are checked to be the same after it. Goal: a month of
1,000,000 rows pruned in ≤ 10 s. Printed: rows, seconds to populate, seconds to prune.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from send import drop_database, fresh_database  # noqa: E402  (bench/send.py)
from sqlalchemy import text  # noqa: E402

from digest.db import make_engine, session_factory, upgrade  # noqa: E402
from digest.ledger_report import report  # noqa: E402
from digest.prune import prune  # noqa: E402

MONTH = date(2024, 3, 1)
AT = datetime(2024, 3, 1, 6, tzinfo=UTC)


def populate(url: str, rows: int, editions: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    per = rows // editions
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO editions (id, newsletter, edition_date, status, built_at, "
                "frozen_at, window_start, window_end, fingerprint) "
                "SELECT n, 'daily', CAST(:m AS date) + (n - 1), 'sent', :at, :at, :at, :at, '' "
                "FROM generate_series(1, :k) AS n"
            ),
            {"m": MONTH, "at": AT, "k": editions},
        )
        conn.execute(
            text(
                f"CREATE TABLE deliveries_p{MONTH:%Y%m} PARTITION OF deliveries "
                f"FOR VALUES FROM ('{MONTH}') TO ('2024-04-01')"
            )
        )
        conn.execute(
            text(
                f"CREATE TABLE click_events_p{MONTH:%Y%m} PARTITION OF click_events "
                f"FOR VALUES FROM ('{MONTH}') TO ('2024-04-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (edition_id, edition_date, subscriber_id, email, "
                "sections, variant, segment, state, attempts, created_at) "
                "SELECT e.id, e.edition_date, s, 'r' || s || '@example.org', '[\"news\"]', "
                "'v' || (s % 4), '', CASE WHEN s % 50 = 0 THEN 'failed' ELSE 'sent' END, 1, :at "
                "FROM editions e, generate_series(1, :per) AS s"
            ),
            {"per": per, "at": AT},
        )
        conn.execute(
            text(
                "INSERT INTO click_events (edition_id, edition_date, delivery_id, kind, variant, "
                "segment, clicked_at, source, agent, counted) "
                "SELECT edition_id, edition_date, id, 'click', variant, '', :at, 'redirect', "
                "'browser', true FROM deliveries WHERE id % 10 = 0"
            ),
            {"at": AT},
        )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a PostgreSQL URL (admin database)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--editions", type=int, default=30)
    args = parser.parse_args()
    url = fresh_database(args.database, Path("."), "issue18p_prune")
    try:
        started = time.monotonic()
        populate(url, args.rows, args.editions)
        filled = time.monotonic() - started
        sessions = session_factory(make_engine(url))
        with sessions() as session:
            before = report(session, 1)
        started = time.monotonic()
        done = prune(sessions, datetime(2025, 6, 1, tzinfo=UTC), timedelta(days=400))
        took = time.monotonic() - started
        with sessions() as session:
            assert report(session, 1) == before, "the report changed"
        print(
            f"{done.rows} rows, {done.clicks} clicks in {len(done.editions)} editions: "
            f"populated in {filled:.1f} s, pruned in {took:.2f} s (goal ≤ 10 s)"
        )
    finally:
        drop_database(args.database, url)


if __name__ == "__main__":
    main()
