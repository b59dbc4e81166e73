"""A ledger kept for years: monthly partitions on PostgreSQL (made by `db upgrade`, by the
scheduler and before a send that needs one), and `digest sends prune`, after which both
reports still show a pruned edition exactly as before and the edition is never sent again."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent
from digest.config import Config
from digest.errors import EditionPruned
from digest.ledger import Delivery, encode_variant
from digest.ledger_model import LedgerCount
from digest.ledger_report import format_report as format_ledger
from digest.ledger_report import ledger_csv, ledger_report
from digest.partitions import ensure_for, ensure_months, months_ahead, partition_name
from digest.prune import prune
from digest.report import build_report, format_report, report_json
from digest.scheduler import Runner, partitions_job
from digest_cli import cli
from tests.clicks_support import send, tracked
from tests.fakes.population import add_population
from tests.render_support import EDITION_DATE, store_edition
from tests.test_report_counts import _click


def _later(now: datetime) -> datetime:
    """Far enough on that the tests' edition (March 2026) is older than 400 days."""
    return now + timedelta(days=450)


@pytest.fixture
def sent(config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path) -> Config:
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 12, now)
    assert send(config, sessions, now).sent_now == 12
    with sessions.begin() as session:
        for n in range(1, 5):
            _click(session, n, now + timedelta(minutes=5 + n))
    return config


def _reports(config: Config, session: Session) -> tuple[str, str, str]:
    nl = config.newsletter("daily")
    ledger = format_ledger(ledger_report(session, config, "daily", EDITION_DATE), nl)
    report = build_report(session, config, "daily", day=EDITION_DATE)
    return ledger, format_report(report), report_json(report)


def _rows(session: Session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(Delivery)) or 0,
        session.scalar(select(func.count()).select_from(ClickEvent)) or 0,
    )


def test_prune_drops_the_rows_and_both_reports_stay_the_same(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions() as session:
        before = _reports(sent, session)
        assert _rows(session) == (12, 4)
    done = prune(sessions, _later(now), timedelta(days=400))
    assert done.editions == [("daily", EDITION_DATE)] and done.rows == 12 and done.clicks == 4
    with sessions() as session:
        assert _rows(session) == (0, 0)
        assert _reports(sent, session) == before
        # Nor are the rows' kept counts left behind: the summary has them.
        assert session.scalar(select(func.count()).select_from(LedgerCount)) == 0
    again = prune(sessions, _later(now), timedelta(days=400))  # nothing left to drop
    assert again.rows == 0
    with sessions() as session:
        assert _reports(sent, session) == before


def test_a_dry_run_prunes_nothing_and_a_recent_edition_is_kept(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    dry = prune(sessions, _later(now), timedelta(days=400), dry_run=True)
    assert dry.rows == 12 and "would prune 1 edition" in dry.summary()
    kept = prune(sessions, now + timedelta(days=30), timedelta(days=400))
    assert kept.editions == []
    with sessions() as session:
        assert _rows(session) == (12, 4)


def test_a_pruned_edition_is_never_sent_again(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    prune(sessions, _later(now), timedelta(days=400))
    with pytest.raises(EditionPruned, match="was pruned on .*never sent again"):
        send(sent, sessions, _later(now))
    with sessions() as session:
        assert _rows(session) == (0, 0)


def test_the_rows_of_a_pruned_edition_as_csv_are_refused_not_an_empty_file(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions() as session:
        assert "reader000001@example.org" in ledger_csv(session, sent, "daily", EDITION_DATE)
    prune(sessions, _later(now), timedelta(days=400))
    with sessions() as session, pytest.raises(EditionPruned, match="was pruned on .*summary"):
        ledger_csv(session, sent, "daily", EDITION_DATE)


def test_the_cli_prunes_and_refuses_a_bad_age(
    tmp_path: Path, config_path: Path, db_url: str
) -> None:
    env = {"DIGEST_DATABASE_URL": db_url}
    bad = CliRunner().invoke(
        cli, ["--config", str(config_path), "sends", "prune", "--older-than", "soon"], env=env
    )
    assert bad.exit_code != 0
    assert "give a number of days, like 400d" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    ok = CliRunner().invoke(
        cli,
        ["--config", str(config_path), "sends", "prune", "--older-than", "400d", "--dry-run"],
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    assert "would prune 0 edition(s)" in ok.output


# --- partitions (PostgreSQL) -------------------------------------------------------------------


def _partitions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent IN ('deliveries'::regclass, 'click_events'::regclass)"
                )
            ).scalars()
        )


def _pg(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("partitions are PostgreSQL's (SQLite keeps plain tables)")


def test_db_upgrade_made_this_month_and_the_next_ones(engine: Engine) -> None:
    _pg(engine)
    names = _partitions(engine)
    for month in months_ahead(date.today()):
        assert {partition_name("deliveries", month), partition_name("click_events", month)} <= names
    assert {"deliveries_default", "click_events_default"} <= names


def test_a_send_makes_the_partition_of_its_month_first(
    sent: Config, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    _pg(engine)
    assert partition_name("deliveries", EDITION_DATE.replace(day=1)) in _partitions(engine)
    with engine.connect() as conn:  # the rows are in March's partition, not the DEFAULT one
        march = conn.execute(text("SELECT count(*) FROM deliveries_p202603")).scalar()
        default = conn.execute(text("SELECT count(*) FROM deliveries_default")).scalar()
    assert (march, default) == (12, 0)
    ensure_for(engine, date(2031, 7, 4))
    assert "deliveries_p203107" in _partitions(engine)


def test_a_month_whose_rows_fell_into_the_default_partition_gets_them_back(
    engine: Engine, sessions: sessionmaker[Session], now: datetime
) -> None:
    """Its partition could not be made in time (a lock not had): the rows went to the DEFAULT
    partition, and making the month later moves them into it, ids and counts unchanged."""
    _pg(engine)
    late = date(2035, 5, 10)
    with sessions.begin() as session:
        edition = store_edition(session)
        for n in range(1, 4):
            session.add(
                Delivery(
                    edition_id=edition.id,
                    edition_date=late,
                    subscriber_id=n,
                    email=f"r{n}@example.org",
                    sections=encode_variant(["News"], []),
                    variant="v",
                    segment="",
                    state="sent",
                    created_at=now,
                )
            )
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM deliveries_default ORDER BY id")).scalars().all()
    assert len(ids) == 3

    assert ensure_months(engine, [late]) == [late.replace(day=1)]

    with engine.connect() as conn:
        moved = conn.execute(text("SELECT id FROM deliveries_p203505 ORDER BY id")).scalars().all()
        left = conn.execute(text("SELECT count(*) FROM deliveries_default")).scalar()
        counted = conn.execute(
            text("SELECT sum(n) FROM ledger_counts WHERE edition_id = :e AND state = 'sent'"),
            {"e": edition.id},
        ).scalar()
    assert moved == ids and left == 0 and counted == 3
    assert "deliveries_p203505" in _partitions(engine)


def test_the_scheduler_makes_partitions_ahead(
    config: Config, engine: Engine, sessions: sessionmaker[Session]
) -> None:
    _pg(engine)
    day = datetime(2032, 1, 15, 3, 0, tzinfo=UTC)
    partitions_job(Runner(config, sessions, lambda: day))()
    names = _partitions(engine)
    assert {"deliveries_p203201", "deliveries_p203204", "click_events_p203202"} <= names


def test_a_large_row_creation_leaves_fresh_statistics_for_the_next_run(
    config: Config,
    engine: Engine,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second segment's send or a crash re-run minutes later is planned from them: without,
    PostgreSQL planned its anti-join for an empty table (16 s instead of 0.6 s at 30,000)."""
    _pg(engine)
    import digest.send_rows

    monkeypatch.setattr(digest.send_rows, "_FRESH_STATISTICS", 20)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 40, now)
    assert send(tracked(config, tmp_path), sessions, now).sent_now == 40
    with engine.connect() as conn:
        analysed, tuples = conn.execute(
            text(
                "SELECT s.last_analyze IS NOT NULL, c.reltuples FROM pg_stat_user_tables s "
                "JOIN pg_class c ON c.oid = s.relid WHERE s.relname = 'deliveries_p202603'"
            )
        ).one()
    assert analysed and tuples == 40
