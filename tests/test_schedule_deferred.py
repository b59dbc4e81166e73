"""Deferred rows (a per-recipient temporary failure, retried later) keep the edition open: the
send says so and exits 4, the scheduler keeps the run waiting, sends again when a deferred row
is due and does nothing before. Real send pipeline and outbox; SQLite and PostgreSQL.

The ledger's deferred_due()/next_due() answer from the rows' next attempt; here a stand-in
answers from one time the test moves, and the send turns due rows back to pending as the
send loop's claim of a due deferred row does."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import Clock
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery
from digest.runs import get_run
from digest.scheduler import Runner, exit_code, run_due
from digest.sending import RecipientFilter, SendOptions, SendReport, send_edition
from tests.fakes.population import add_population, email_for
from tests.render_support import EDITION_DATE, store_edition
from tests.schedule_support import MovingClock, Summary, only
from tests.test_sending_ledger import rows, send, with_outbox

DUE = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)  # daily: 06:30 New York
RETRY_AT = DUE + timedelta(hours=1)


class DeferredLedger:
    """deferred_due / next_due as the ledger answers them, from one next-attempt time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.next_attempt = RETRY_AT
        monkeypatch.setattr(ledger, "deferred_due", self.deferred_due, raising=False)
        monkeypatch.setattr(ledger, "next_due", self.next_due, raising=False)

    @staticmethod
    def _deferred(session: Session, edition_id: int) -> int:
        return int(
            session.scalar(
                select(func.count()).where(
                    Delivery.edition_id == edition_id, Delivery.state == "deferred"
                )
            )
            or 0
        )

    def deferred_due(self, session: Session, edition_id: int, now: datetime) -> int:
        return self._deferred(session, edition_id) if self.next_attempt <= now else 0

    def next_due(self, session: Session, edition_id: int) -> datetime | None:
        return self.next_attempt if self._deferred(session, edition_id) else None


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> DeferredLedger:
    return DeferredLedger(monkeypatch)


@pytest.fixture
def config(config: Config, tmp_path: Path) -> Config:
    return with_outbox(only(config, "daily"), tmp_path / "out")


@pytest.fixture
def edition(sessions: sessionmaker[Session], now: datetime) -> Edition:
    with sessions.begin() as session:
        e = store_edition(session)
        add_population(session, 4, now)
    return e


def defer(sessions: sessionmaker[Session], email: str) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.email == email)
            .values(state="deferred", attempts=1, last_error="450 4.2.0 Greylisted")
        )


class Sends:
    """The scheduler's send: the real pipeline for the test's edition, each call recorded;
    a deferred row that is due goes back to pending first (the send loop's claim)."""

    def __init__(self, deferred: DeferredLedger) -> None:
        self.deferred = deferred
        self.calls: list[tuple[date, SendOptions]] = []

    def __call__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        newsletter_id: str,
        edition_date: date,
        *,
        clock: Clock,
        stop: threading.Event | None,
        recipients: RecipientFilter | None,
        options: SendOptions,
    ) -> Any:
        self.calls.append((edition_date, options))
        if edition_date != EDITION_DATE:
            return Summary("another day")
        if self.deferred.next_attempt <= clock():
            with sessions.begin() as session:
                session.execute(
                    update(Delivery).where(Delivery.state == "deferred").values(state="pending")
                )
        options = dataclasses.replace(options, recipient_filter=recipients)
        return send_edition(
            config, sessions, newsletter_id, edition_date, options, clock=clock, stop=stop
        )


def scheduler(
    config: Config, sessions: sessionmaker[Session], clock: Clock, sends: Sends
) -> Runner:
    return Runner(config, sessions, clock, send=sends, force=True)


def test_deferred_rows_keep_the_edition_open_and_the_send_exits_4_saying_what_next(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    deferred: DeferredLedger,
) -> None:
    send(config, sessions, now, limit=0)
    defer(sessions, email_for(2))

    report = send(config, sessions, now)

    assert report.sent_now == 3 and report.counts["deferred"] == 1
    assert report.edition_status == "frozen"
    assert report.exit_code == 4
    assert report.next_attempt == RETRY_AT
    assert (
        "1 deferred (next attempt 11:30 UTC): run `digest send daily --date 2026-03-10` "
        "again or let `digest schedule` do it"
    ) in report.summary()


def test_the_scheduler_waits_for_a_deferred_row_then_sends_it_and_closes_the_edition(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    deferred: DeferredLedger,
) -> None:
    send(config, sessions, now, limit=0)
    defer(sessions, email_for(2))
    sends = Sends(deferred)
    clock = MovingClock(DUE + timedelta(minutes=1))
    runner = scheduler(config, sessions, clock, sends)

    first = run_due(runner, "daily")

    assert [r.outcome for r in first] == ["deferred"]
    assert first[0].undelivered == 1 and exit_code(first) == 4
    with sessions() as session:
        run = get_run(session, "daily", EDITION_DATE)
        assert run is not None and run.status == "waiting"
    # Every retry pass before the next attempt: nothing is sent, nothing re-rendered.
    for minutes in (15, 30, 45):
        clock.now = DUE + timedelta(minutes=minutes)
        again = run_due(runner, "daily")
        assert [r.outcome for r in again] == ["deferred"]
        assert "waiting: 1 deferred row(s), next attempt 2026-03-10 11:30 UTC" in again[0].message
    assert len(sends.calls) == 1

    clock.now = RETRY_AT + timedelta(minutes=1)
    due = run_due(runner, "daily")

    assert [r.outcome for r in due] == ["sent"] and exit_code(due) == 0
    assert len(sends.calls) == 2
    assert {r.state for r in rows(sessions)} == {"sent"}
    with sessions() as session:
        assert session.scalars(select(Edition.status)).one() == "sent"
    assert [r.outcome for r in run_due(runner, "daily")] == ["finished"]


def test_deferred_rows_are_retried_past_the_catch_up_limit_and_on_the_next_day(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    deferred: DeferredLedger,
) -> None:
    send(config, sessions, now, limit=0)
    defer(sessions, email_for(2))
    sends = Sends(deferred)
    clock = MovingClock(DUE + timedelta(minutes=1))
    runner = scheduler(config, sessions, clock, sends)
    assert [r.outcome for r in run_due(runner, "daily")] == ["deferred"]
    deferred.next_attempt = DUE + timedelta(hours=25)  # backed off past tomorrow's send
    with sessions.begin() as session:
        add_population(session, 1, now, start=50)  # subscribes in the meantime

    clock.now = DUE + timedelta(hours=8)  # beyond catch_up_hours: still not "missed"
    late = run_due(runner, "daily")
    assert [r.outcome for r in late] == ["deferred"]
    clock.now = deferred.next_attempt + timedelta(minutes=1)
    next_day = run_due(runner, "daily")

    assert [(r.edition_date, r.outcome) for r in next_day] == [
        (EDITION_DATE + timedelta(days=1), "sent"),
        (EDITION_DATE, "sent"),
    ]
    retry_options = [o for d, o in sends.calls if d == EDITION_DATE][-1]
    assert retry_options.add_recipients is False
    ledger_rows = rows(sessions)
    assert {r.state for r in ledger_rows} == {"sent"}
    assert email_for(50) not in {r.email for r in ledger_rows}  # gets the current edition


def test_a_report_without_deferred_rows_finishes_the_run(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    deferred: DeferredLedger,
) -> None:
    sends = Sends(deferred)
    runner = scheduler(config, sessions, MovingClock(DUE + timedelta(minutes=1)), sends)
    results = run_due(runner, "daily")
    assert [r.outcome for r in results] == ["sent"] and exit_code(results) == 0
    with sessions() as session:
        assert session.scalars(select(Edition.status)).one() == "sent"


def test_send_report_counts_deferred_as_undelivered() -> None:
    report = SendReport("daily", EDITION_DATE, "outbox", {"sent": 3, "deferred": 2})
    assert report.undelivered == 2 and report.exit_code == 4
