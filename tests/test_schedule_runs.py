"""The scheduler decides what is due from the clock: DST days, catch-up, claims, failures."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.runs import ScheduledRun, claim_run, get_run
from digest.scheduler import build_schedule, next_send, run_due, schedule_status, send_instant
from tests.schedule_support import FakeSend, MovingClock, at, only, runner


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "send_time", "day", "expected"),
    [
        # Spring forward, 02:00 → 03:00: 02:30 does not exist; it goes out at 03:30 EDT.
        (
            "America/New_York",
            "02:30",
            date(2026, 3, 8),
            [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)],
        ),
        # Fall back, 02:00 → 01:00: 01:30 happens twice; it goes out the first time (EDT).
        (
            "America/New_York",
            "01:30",
            date(2026, 11, 1),
            [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
        (
            "America/New_York",
            "06:30",
            date(2026, 3, 8),
            [utc(2026, 3, 7, 11, 30), utc(2026, 3, 8, 10, 30), utc(2026, 3, 9, 10, 30)],
        ),
        (
            "Europe/Berlin",
            "02:30",
            date(2026, 3, 29),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)],
        ),
        (
            "Europe/Berlin",
            "02:30",
            date(2026, 10, 25),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
    ],
)
def test_fires_once_a_day_at_the_right_instant_across_dst(
    sessions: sessionmaker[Session],
    config: Config,
    zone: str,
    send_time: str,
    day: date,
    expected: list[datetime],
) -> None:
    cfg = only(config, "daily", timezone=zone, send_time=at(send_time))
    clock = MovingClock(utc(day.year, day.month, day.day) - timedelta(days=1))
    send = FakeSend()
    r = runner(cfg, sessions, clock, send)
    # A check every 15 minutes for three days, as the scheduler's retry pass does.
    while clock.now < utc(day.year, day.month, day.day) + timedelta(days=2):
        run_due(r, "daily")
        clock.now += timedelta(minutes=15)
    assert [c[2] for c in send.calls] == expected
    assert [c[1] for c in send.calls] == [day - timedelta(days=1), day, day + timedelta(days=1)]


def test_send_instant_and_next_send_on_a_dst_day(config: Config) -> None:
    nl = only(config, "daily", send_time=at("06:30")).newsletter("daily")
    assert send_instant(nl, date(2026, 3, 7)) == utc(2026, 3, 7, 11, 30)  # EST
    assert send_instant(nl, date(2026, 3, 8)) == utc(2026, 3, 8, 10, 30)  # EDT
    d, when = next_send(nl, utc(2026, 3, 8, 10, 30))
    assert (d, when) == (date(2026, 3, 9), utc(2026, 3, 9, 10, 30))


def test_schedule_jobs_use_each_newsletters_zone(
    sessions: sessionmaker[Session], config: Config
) -> None:
    r = runner(config, sessions, MovingClock(utc(2026, 3, 10)), FakeSend())
    jobs = {(sorted(j.tags)[0], j.unit): j for j in build_schedule(r).jobs if "retry" not in j.tags}
    daily = jobs[("daily", "days")]
    assert str(daily.at_time) == "06:30:00" and str(daily.at_time_zone) == "America/New_York"
    strict = jobs[("strict", "days")]
    assert str(strict.at_time) == "07:00:00" and str(strict.at_time_zone) == "Europe/Berlin"


def test_catch_up_inside_the_grace_period_sends_once(
    sessions: sessionmaker[Session], config: Config
) -> None:
    cfg = only(config, "daily")  # 06:30 New York = 10:30 UTC on 2026-03-10; grace 6 h
    clock = MovingClock(utc(2026, 3, 10, 15, 0))  # the process was down until 4.5 h late
    send = FakeSend()
    r = runner(cfg, sessions, clock, send)
    (first,) = run_due(r, "daily")
    assert (first.outcome, first.edition_date) == ("sent", date(2026, 3, 10))
    clock.now += timedelta(minutes=15)
    (again,) = run_due(r, "daily")
    assert again.outcome == "finished"
    assert len(send.calls) == 1


def test_missed_beyond_the_grace_period_is_skipped_with_a_log_line(
    sessions: sessionmaker[Session], config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = only(config, "daily", catch_up_hours=2.0)
    clock = MovingClock(utc(2026, 3, 10, 13, 0))  # 2.5 h late
    send = FakeSend()
    with caplog.at_level(logging.INFO, logger="digest.scheduler"):
        (result,) = run_due(runner(cfg, sessions, clock, send), "daily")
    assert result.outcome == "skipped"
    assert send.calls == []
    assert "missed: due 2026-03-10 10:30 UTC, 2.5 h ago, beyond catch_up_hours = 2" in (caplog.text)
    with sessions() as s:
        run = get_run(s, "daily", date(2026, 3, 10))
        assert run is not None and run.status == "skipped"
        assert "digest send daily --date 2026-03-10" in run.result


def test_exception_in_one_newsletter_does_not_stop_another(
    sessions: sessionmaker[Session], config: Config
) -> None:
    # Both due: daily at 10:30 UTC, strict (Berlin 07:00) at 06:00 UTC.
    clock = MovingClock(utc(2026, 3, 10, 11, 0))
    send = FakeSend(fail={"daily": RuntimeError("boom")})
    r = runner(config, sessions, clock, send)
    sched = build_schedule(r)
    sched.run_all()  # schedule would let an escaping exception stop the loop here
    assert {c[0] for c in send.calls} == {"daily", "strict"}
    with sessions() as s:
        daily = get_run(s, "daily", date(2026, 3, 10))
        strict = get_run(s, "strict", date(2026, 3, 10))
        assert daily is not None and daily.status == "failed"
        assert daily.result.startswith("unexpected RuntimeError: boom (at ")
        assert strict is not None and strict.status == "done"


def test_failed_run_is_retried_within_grace(
    sessions: sessionmaker[Session], config: Config
) -> None:
    cfg = only(config, "daily")
    clock = MovingClock(utc(2026, 3, 10, 10, 30))
    send = FakeSend(fail={"daily": RuntimeError("provider down")})
    r = runner(cfg, sessions, clock, send)
    assert run_due(r, "daily")[0].outcome == "failed"
    send.fail.clear()
    clock.now += timedelta(minutes=15)
    assert run_due(r, "daily")[0].outcome == "sent"
    with sessions() as s:
        run = get_run(s, "daily", date(2026, 3, 10))
        assert run is not None and (run.status, run.attempts) == ("done", 2)


def test_gate_blocks_unattended_send_and_force_overrides(
    sessions: sessionmaker[Session], config: Config
) -> None:
    cfg = only(config, "daily")
    clock = MovingClock(utc(2026, 3, 10, 10, 30))
    send = FakeSend()
    (blocked,) = run_due(runner(cfg, sessions, clock, send, force=False), "daily")
    assert blocked.outcome == "blocked"
    assert "not sending daily 2026-03-10: the edition has no stories" in blocked.message
    assert send.calls == []
    (forced,) = run_due(runner(cfg, sessions, clock, send, force=True), "daily")
    assert forced.outcome == "sent" and len(send.calls) == 1


def test_two_schedulers_racing_send_once(sessions: sessionmaker[Session], config: Config) -> None:
    cfg = only(config, "daily")
    clock = MovingClock(utc(2026, 3, 10, 10, 30))
    send = FakeSend()
    start = threading.Barrier(4)
    outcomes: list[str] = []

    errors: list[BaseException] = []

    def scheduler(n: int) -> None:
        r = runner(cfg, sessions, clock, send, owner=f"host-{n}:{n}")
        start.wait()
        try:
            outcomes.extend(res.outcome for res in run_due(r, "daily"))
        except BaseException as e:  # surfaced below with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=scheduler, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(send.calls) == 1
    # The losers find it claimed ("busy") or, if they look late, already done ("finished").
    assert sorted(outcomes)[-1] == "sent"
    assert set(sorted(outcomes)[:-1]) <= {"busy", "finished"} and len(outcomes) == 4


def test_live_claim_is_respected_and_stale_claim_taken_over(
    sessions: sessionmaker[Session], config: Config
) -> None:
    cfg = only(config, "daily")
    clock = MovingClock(utc(2026, 3, 10, 10, 30))
    send = FakeSend()
    day = date(2026, 3, 10)
    assert claim_run(sessions, "daily", day, owner="elsewhere:1", clock=clock) is not None
    clock.now += timedelta(minutes=2)
    assert run_due(runner(cfg, sessions, clock, send), "daily")[0].outcome == "busy"
    clock.now += timedelta(minutes=10)  # no heartbeat for 12 minutes: that process is gone
    assert run_due(runner(cfg, sessions, clock, send), "daily")[0].outcome == "sent"
    assert len(send.calls) == 1


def test_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(
    sessions: sessionmaker[Session], config: Config
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    owner = f"{socket.gethostname()}:{gone.stdout.strip()}"
    clock = MovingClock(utc(2026, 3, 10, 10, 30))
    assert claim_run(sessions, "daily", date(2026, 3, 10), owner=owner, clock=clock)
    send = FakeSend()
    assert run_due(runner(only(config, "daily"), sessions, clock, send), "daily")[0].ok
    assert len(send.calls) == 1
    assert owner != f"{socket.gethostname()}:{os.getpid()}"


def test_status_shows_next_run_in_zone_and_last_result(
    sessions: sessionmaker[Session], config: Config
) -> None:
    clock = MovingClock(utc(2026, 3, 10, 10, 45))
    run_due(runner(config, sessions, clock, FakeSend()), "daily")
    lines = [line for st in schedule_status(config, sessions, clock=clock) for line in st.lines()]
    assert lines[0] == "daily: next 2026-03-11 at 2026-03-11 06:30 EDT (America/New_York)"
    assert lines[1].startswith("  last: 2026-03-10 done at 2026-03-10 10:45 UTC by ")
    assert lines[1].endswith(": 0 sent now")
    assert lines[2] == "strict: next 2026-03-11 at 2026-03-11 07:00 CET (Europe/Berlin)"
    assert lines[3] == "  last: never run"
    with sessions() as s:
        assert len(s.scalars(select(ScheduledRun)).all()) == 1
