"""Run claims: one holder at a time, takeover of a silent holder, a taken-over holder is fenced."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from digest.runs import beat, claim_run, finish_run, get_run, keep_alive, mark_running
from tests.schedule_support import MovingClock

DAY = date(2026, 3, 10)


def test_second_claim_waits_for_a_live_holder_and_takes_over_a_silent_one(
    sessions: sessionmaker[Session],
) -> None:
    clock = MovingClock(datetime(2026, 3, 10, 10, 30, tzinfo=UTC))
    first = claim_run(sessions, "daily", DAY, owner="a:1", clock=clock)
    assert first is not None and first.attempt == 1
    assert mark_running(sessions, first, clock=clock)
    clock.now += timedelta(minutes=4)
    assert beat(sessions, first, clock=clock)
    clock.now += timedelta(minutes=4)  # 4 minutes since the last heartbeat: still alive
    assert claim_run(sessions, "daily", DAY, owner="b:2", clock=clock) is None
    clock.now += timedelta(minutes=2)  # 6 minutes of silence: presumed dead
    second = claim_run(sessions, "daily", DAY, owner="b:2", clock=clock)
    assert second is not None and second.attempt == 2
    # The old holder wakes up: it can neither heartbeat nor record a result any more.
    assert not beat(sessions, first, clock=clock)
    assert not finish_run(sessions, first, "done", "late", clock=clock)
    assert finish_run(sessions, second, "done", "sent 5", clock=clock)
    with sessions() as s:
        run = get_run(s, "daily", DAY)
        assert run is not None
        assert (run.status, run.claimed_by, run.result) == ("done", "b:2", "sent 5")
    assert claim_run(sessions, "daily", DAY, owner="c:3", clock=clock) is None


def test_failed_run_can_be_claimed_again(sessions: sessionmaker[Session]) -> None:
    clock = MovingClock(datetime(2026, 3, 10, 10, 30, tzinfo=UTC))
    first = claim_run(sessions, "daily", DAY, owner="a:1", clock=clock)
    assert first is not None
    finish_run(sessions, first, "failed", "provider down", clock=clock)
    again = claim_run(sessions, "daily", DAY, owner="a:1", clock=clock)
    assert again is not None and again.attempt == 2


def test_keep_alive_reports_a_lost_claim(sessions: sessionmaker[Session]) -> None:
    clock = MovingClock(datetime(2026, 3, 10, 10, 30, tzinfo=UTC))
    mine = claim_run(sessions, "daily", DAY, owner="a:1", clock=clock)
    assert mine is not None
    clock.now += timedelta(minutes=10)
    assert claim_run(sessions, "daily", DAY, owner="b:2", clock=clock) is not None
    lost = threading.Event()
    with keep_alive(sessions, mine, clock=clock, every=timedelta(milliseconds=1), lost=lost):
        assert lost.wait(10)  # set by the heartbeat thread's first beat
