"""Migration 0016 on a populated database: ledger rows and clicks in several months keep their
counts and their report counts exactly; on PostgreSQL they end up in their month's partition,
the report-count triggers still count; the downgrade gives the rows back as they were."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from digest.db import _alembic_config, make_engine, upgrade

PG_URL = os.environ.get("DIGEST_TEST_POSTGRES_URL")
DATES = (date(2025, 11, 5), date(2025, 12, 20), date(2026, 2, 3))
STATES = ("sent", "sent", "sent", "failed", "pending", "unknown", "sent", "deferred")
AT = datetime(2026, 2, 3, 6, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def old_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database at 0015 (the schema before partitions)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/old.db")
        upgrade(engine, "0015")
        yield engine
        engine.dispose()
        return
    if not PG_URL:
        pytest.skip("PostgreSQL tests need DIGEST_TEST_POSTGRES_URL (set by .ci/run)")
    admin = create_engine(make_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"digest_issue18p_mig_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(PG_URL).set(database=name).render_as_string(False))
    upgrade(engine, "0015")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _populate(conn: Connection) -> None:
    for n, day in enumerate(DATES, start=1):
        conn.execute(
            text(
                "INSERT INTO editions (id, newsletter, edition_date, status, built_at, frozen_at, "
                "window_start, window_end, fingerprint) VALUES (:id, 'daily', :d, 'sent', :at, "
                ":at, :at, :at, '')"
            ),
            {"id": n, "d": day, "at": AT},
        )
        rows = [
            {
                "e": n,
                "s": s,
                "email": f"r{s}@example.org",
                "state": STATES[(s + n) % len(STATES)],
                "variant": f"v{s % 3}",
                "segment": "" if s % 2 else "local",
                "subject": None if s % 4 else "Subject B",
                "at": AT,
            }
            for s in range(1, 41)
        ]
        conn.execute(
            text(
                "INSERT INTO deliveries (edition_id, subscriber_id, email, sections, variant, "
                "segment, state, attempts, created_at, subject) VALUES (:e, :s, :email, "
                "'[\"news\"]', :variant, :segment, :state, 1, :at, :subject)"
            ),
            rows,
        )
    ids = conn.execute(
        text("SELECT id, edition_id, variant FROM deliveries WHERE state = 'sent' ORDER BY id")
    ).all()
    conn.execute(
        text(
            "INSERT INTO click_events (edition_id, delivery_id, kind, variant, segment, "
            "clicked_at, source, agent, counted) VALUES (:e, :d, 'click', :v, '', :at, "
            "'redirect', 'browser', :c)"
        ),
        [{"e": e, "d": d, "v": v, "at": AT, "c": d % 3 != 0} for d, e, v in ids[::2]],
    )


def _figures(conn: Connection) -> dict[str, object]:
    def rows(sql: str) -> list[tuple[object, ...]]:
        return [tuple(r) for r in conn.execute(text(sql))]

    return {
        "states": rows(
            "SELECT edition_id, state, count(*) FROM deliveries GROUP BY edition_id, state "
            "ORDER BY 1, 2"
        ),
        "ids": rows("SELECT count(*), sum(id), max(id) FROM deliveries"),
        # The delivered counts: report_sent's before migration 0018, ledger_counts' after.
        "sent": rows(
            "SELECT edition_id, variant, segment, subject, sum(delivered) FROM report_sent "
            "GROUP BY edition_id, variant, segment, subject HAVING sum(delivered) <> 0 "
            "ORDER BY 1, 2, 3, 4"
        )
        if not inspect(conn).has_table("ledger_counts")
        else rows(
            "SELECT edition_id, variant, segment, subject, sum(n) FROM ledger_counts "
            "WHERE state = 'sent' GROUP BY edition_id, variant, segment, subject "
            "HAVING sum(n) <> 0 ORDER BY 1, 2, 3, 4"
        ),
        "clicks": rows(
            "SELECT edition_id, counted, count(*), count(DISTINCT delivery_id) FROM click_events "
            "GROUP BY edition_id, counted ORDER BY 1, 2"
        ),
    }


def test_the_migration_keeps_every_row_and_count(old_engine: Engine) -> None:
    with old_engine.begin() as conn:
        _populate(conn)
    with old_engine.connect() as conn:
        before = _figures(conn)
    assert len(before["states"]) > 6 and before["clicks"]  # type: ignore[arg-type]

    upgrade(old_engine)
    with old_engine.connect() as conn:
        assert _figures(conn) == before
        # 0018: every state counted, as the rows stand.
        kept = conn.execute(
            text(
                "SELECT edition_id, state, sum(n) FROM ledger_counts GROUP BY edition_id, state "
                "HAVING sum(n) <> 0 ORDER BY 1, 2"
            )
        ).all()
        assert [tuple(r) for r in kept] == before["states"]
        dates = conn.execute(
            text("SELECT DISTINCT edition_id, edition_date FROM deliveries ORDER BY 1")
        ).all()
        assert [(e, date.fromisoformat(str(d))) for e, d in dates] == list(enumerate(DATES, 1))
        if old_engine.dialect.name == "postgresql":
            for table, month in (("deliveries", "202511"), ("click_events", "202512")):
                n = conn.execute(text(f"SELECT count(*) FROM {table}_p{month}")).scalar()
                assert n and n > 0, (table, month)
            assert conn.execute(text("SELECT count(*) FROM deliveries_default")).scalar() == 0
            # 0017: the claim and due indexes built on every partition (CONCURRENTLY), then
            # attached: the parent's are valid, and the partial indexes by state are gone.
            indexes = conn.execute(
                text(
                    "SELECT c.relname, i.indisvalid FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 'deliveries'::regclass"
                )
            ).all()
            assert dict(indexes) == {
                "deliveries_pkey": True,
                "uq_deliveries_edition_subscriber": True,
                "ix_deliveries_claim": True,
                "ix_deliveries_due": True,
            }
            claim_indexes = conn.execute(
                text(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = "
                    "'ix_deliveries_claim'::regclass"
                )
            ).scalar()
            partitions = conn.execute(
                text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'deliveries'::regclass")
            ).scalar()
            assert claim_indexes == partitions
    # The report-count triggers count on the migrated (partitioned) table; new ids go on.
    with old_engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET state = 'sent' WHERE state = 'pending'"))
        conn.execute(
            text(
                "INSERT INTO deliveries (edition_id, edition_date, subscriber_id, email, sections, "
                "variant, segment, state, attempts, created_at) VALUES (3, :d, 99, 'n@x.org', "
                "'[]', 'v0', '', 'sent', 1, :at)"
            ),
            {"d": DATES[2], "at": AT},
        )
    with old_engine.connect() as conn:
        sent = conn.execute(text("SELECT count(*) FROM deliveries WHERE state = 'sent'")).scalar()
        counted = conn.execute(
            text("SELECT sum(n) FROM ledger_counts WHERE state = 'sent'")
        ).scalar()
        assert sent == counted
        assert conn.execute(text("SELECT max(id) FROM deliveries")).scalar() == (
            before["ids"][0][2] + 1  # type: ignore[index]
        )
        after = _figures(conn)

    command.downgrade(_alembic_config(old_engine), "0015")
    with old_engine.connect() as conn:
        assert _figures(conn) == after
    upgrade(old_engine)  # and up again
    with old_engine.connect() as conn:
        assert _figures(conn) == after


def test_0017_runs_again_after_it_was_stopped_during_its_index_builds(old_engine: Engine) -> None:
    # The concurrent builds run outside the migration's transaction: what came before them is
    # committed, and a build stopped half way leaves an invalid index behind.
    if old_engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL behaviour")
    with old_engine.begin() as conn:
        _populate(conn)
    upgrade(old_engine, "0016")
    with old_engine.begin() as conn:
        before = _figures(conn)
        conn.execute(text("ALTER TABLE deliveries DROP CONSTRAINT deliveries_edition_id_fkey"))
        conn.execute(text("CREATE INDEX ix_deliveries_claim ON ONLY deliveries (edition_id, id)"))
        conn.execute(text("CREATE INDEX deliveries_p202511_claim ON deliveries_p202511 (id)"))
        # What a stopped CREATE INDEX CONCURRENTLY leaves: an index marked invalid.
        conn.execute(
            text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'deliveries_p202511_claim'::regclass"
            )
        )
    upgrade(old_engine)
    with old_engine.connect() as conn:
        assert _figures(conn) == before
        invalid = conn.execute(
            text(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid "
                "WHERE t.relname LIKE 'deliveries%' AND NOT i.indisvalid"
            )
        ).all()
        assert invalid == []
        columns = conn.execute(
            text("SELECT pg_get_indexdef('deliveries_p202511_claim'::regclass)")
        ).scalar()
        assert "(edition_id, id)" in str(columns)
