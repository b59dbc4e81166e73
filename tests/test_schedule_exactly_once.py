"""The scheduler with the real send pipeline: SIGTERM mid-send then a restart delivers each
recipient exactly once; local-time waves reach each recipient once, at their own send time."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery
from digest.providers.base import Batch, Checkpoint, Outcome
from digest.providers.outbox import OutboxProvider
from digest.runs import claim_run, finish_run, get_run
from digest.scheduler import Report, Runner, run_due, serve
from digest.sending import RecipientFilter, SendOptions, send_edition
from subscribers.models import Subscriber
from tests.fakes.population import add_population
from tests.render_support import EDITION_DATE, store_edition
from tests.schedule_support import MovingClock, only

DUE = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)  # daily: 06:30 New York


class CountingOutbox(OutboxProvider):
    """The outbox, counting every message handed to it; can raise SIGTERM after a batch."""

    batch_size = 5

    def __init__(self, folder: Path, seen: Counter[str], kill_after: int | None = None) -> None:
        super().__init__(folder)
        self.seen = seen
        self.kill_after = kill_after
        self.batches = 0

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        outcomes = super().send(batch, checkpoint)
        self.seen.update(
            m.to.email for m in batch.messages if batch.variant.edition_date == EDITION_DATE
        )
        self.batches += 1
        if self.kill_after is not None and self.batches == self.kill_after:
            os.kill(os.getpid(), signal.SIGTERM)  # as systemd stopping the service would
        return outcomes


def real_send(
    provider: Callable[[], OutboxProvider],
) -> Callable[..., Report]:
    def send(
        config: Config,
        sessions: sessionmaker[Session],
        newsletter_id: str,
        edition_date: date,
        *,
        clock: Clock,
        stop: threading.Event | None,
        recipients: RecipientFilter | None,
        options: SendOptions,
    ) -> Report:
        options = dataclasses.replace(options, recipient_filter=recipients)
        return send_edition(
            config,
            sessions,
            newsletter_id,
            edition_date,
            options,
            clock=clock,
            stop=stop,
            provider=provider(),
        )

    return send


def setup(
    sessions: sessionmaker[Session], config: Config, tmp_path: Path, n: int, **changes: object
) -> Config:
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, n, DUE - timedelta(days=30))
    cfg = only(config, "daily", **changes)
    return dataclasses.replace(cfg, outbox=dataclasses.replace(cfg.outbox, dir=tmp_path / "out"))


def local_time_readers(
    sessions: sessionmaker[Session], config: Config, tmp_path: Path, zones: list[str | None]
) -> Config:
    """One reader per zone on a local-time newsletter; the runs of the days around
    EDITION_DATE are done already (these tests follow one edition's waves)."""
    cfg = setup(sessions, config, tmp_path, len(zones), local_time_delivery=True)
    with sessions.begin() as s:
        ids = s.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
        for sid, zone in zip(ids, zones, strict=True):
            s.execute(update(Subscriber).where(Subscriber.id == sid).values(timezone=zone))
    for other in (EDITION_DATE - timedelta(days=1), EDITION_DATE + timedelta(days=1)):
        claim = claim_run(sessions, "daily", other, owner="other:1", clock=lambda: DUE)
        assert claim is not None
        finish_run(sessions, claim, "done", "elsewhere", clock=lambda: DUE)
    return cfg


def wave_runner(
    cfg: Config, sessions: sessionmaker[Session], clock: Clock, tmp_path: Path, seen: Counter[str]
) -> Runner:
    send = real_send(lambda: CountingOutbox(tmp_path / "out", seen))
    return Runner(cfg, sessions, clock, send=send, force=True)


def test_sigterm_mid_send_then_restart_delivers_each_recipient_once(
    sessions: sessionmaker[Session], config: Config, tmp_path: Path
) -> None:
    cfg = setup(sessions, config, tmp_path, 23)
    seen: Counter[str] = Counter()
    clock = MovingClock(DUE + timedelta(minutes=1))
    first = Runner(
        cfg,
        sessions,
        clock,
        send=real_send(lambda: CountingOutbox(tmp_path / "out", seen, kill_after=1)),
        owner="box:1",
    )
    assert serve(first, poll_seconds=0.01) == 0  # returns once SIGTERM stopped it
    assert first.stop.is_set()
    # Signalled during the first provider call: the claimed batch of 5 was finished, no more.
    assert sum(seen.values()) == 5
    with sessions() as s:
        run = get_run(s, "daily", EDITION_DATE)
        assert run is not None and run.status == "failed"
        assert run.result.startswith("interrupted, resumes on the next run")

    clock.now += timedelta(minutes=3)  # restarted by systemd, well within the grace period
    again = Runner(
        cfg, sessions, clock, send=real_send(lambda: CountingOutbox(tmp_path / "out", seen))
    )
    (result,) = run_due(again, "daily")
    assert result.outcome == "sent", result.message
    assert len(seen) == 23 and set(seen.values()) == {1}
    with sessions() as s:
        states = Counter(d.state for d in s.scalars(select(Delivery)))
        assert states == {"sent": 23}
        assert s.scalars(select(Edition.status)).one() == "sent"
        run = get_run(s, "daily", EDITION_DATE)
        assert run is not None and (run.status, run.attempts) == ("done", 2)
    # A later pass (a second scheduler, cron's --if-due) finds nothing to do.
    assert run_due(again, "daily")[0].outcome == "finished"
    assert sum(seen.values()) == 23


def test_local_time_waves_reach_each_recipient_once_at_their_send_time(
    sessions: sessionmaker[Session], config: Config, tmp_path: Path
) -> None:
    zones = [
        None,
        "America/New_York",
        "America/Los_Angeles",
        "Europe/London",
        "Asia/Tokyo",
        "Asia/Kolkata",
        "Not/AZone",
    ]
    cfg = local_time_readers(sessions, config, tmp_path, zones)
    seen: Counter[str] = Counter()
    first_wave: dict[str, datetime] = {}
    clock = MovingClock(DUE)
    runner = wave_runner(cfg, sessions, clock, tmp_path, seen)
    statuses = []
    # The hourly wave job, at :30 past each hour, for a day and a half.
    while clock.now <= DUE + timedelta(hours=36):
        results = run_due(runner, "daily")
        statuses.append([r.outcome for r in results if r.edition_date == EDITION_DATE])
        for email in seen:
            first_wave.setdefault(email, clock.now)
        clock.now += timedelta(hours=1)
    with sessions() as s:
        zone_of = {e: z for e, z in s.execute(select(Subscriber.email, Subscriber.timezone))}
    by_zone = {zone_of[e]: at for e, at in first_wave.items()}
    assert set(seen.values()) == {1} and len(seen) == len(zones)
    assert by_zone == {
        None: DUE,  # the newsletter's zone
        "Not/AZone": DUE,
        "America/New_York": DUE,
        "America/Los_Angeles": datetime(2026, 3, 10, 13, 30, tzinfo=UTC),  # 06:30 PDT
        "Europe/London": datetime(2026, 3, 11, 6, 30, tzinfo=UTC),  # next 06:30 GMT
        "Asia/Tokyo": datetime(2026, 3, 10, 21, 30, tzinfo=UTC),  # 06:30 JST on the 11th
        # 06:30 IST is 01:00 UTC: the 01:30 wave picks it up.
        "Asia/Kolkata": datetime(2026, 3, 11, 1, 30, tzinfo=UTC),
    }
    assert statuses[0] == ["waiting"] and statuses[24] == ["waiting"]
    assert ["sent"] in statuses  # the run ends once every zone's send time has passed
    with sessions() as s:
        run = get_run(s, "daily", EDITION_DATE)
        assert run is not None and run.status == "done"
        assert s.scalar(select(Edition.status).where(Edition.edition_date == EDITION_DATE)) == (
            "sent"
        )


def test_readers_whose_local_time_passed_while_nothing_ran_are_recorded_as_skipped(
    sessions: sessionmaker[Session], config: Config, tmp_path: Path
) -> None:
    """The scheduler comes up 8 hours after the New York send time (catch_up_hours = 6):
    readers due more than 6 hours ago get a `skipped` ledger row saying why, later zones get
    their wave, and the edition still ends `sent`."""
    zones = [None, "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Europe/London"]
    cfg = local_time_readers(sessions, config, tmp_path, zones)
    seen: Counter[str] = Counter()
    clock = MovingClock(DUE + timedelta(hours=8))
    runner = wave_runner(cfg, sessions, clock, tmp_path, seen)
    (first,) = [r for r in run_due(runner, "daily") if r.edition_date == EDITION_DATE]
    assert first.outcome == "waiting"
    assert "2 recipient(s) missed their local send time" in first.message
    while clock.now <= DUE + timedelta(hours=36):
        clock.now += timedelta(hours=1)
        run_due(runner, "daily")
    with sessions() as s:
        zone_of = {e: z for e, z in s.execute(select(Subscriber.email, Subscriber.timezone))}
        rows = {zone_of[d.email]: d for d in s.scalars(select(Delivery))}
        assert {z: d.state for z, d in rows.items()} == {
            None: "skipped",
            "America/New_York": "skipped",
            "America/Los_Angeles": "sent",  # 13:30 UTC: 5 hours ago when the scheduler came up
            "Asia/Tokyo": "sent",
            "Europe/London": "sent",
        }
        missed = rows["America/New_York"]
        assert missed.last_error == (
            "missed: local send time 2026-03-10 10:30 UTC passed more than "
            "catch_up_hours = 6 before a run"
        )
        assert missed.settled_at == DUE + timedelta(hours=8) and missed.attempts == 0
        assert s.scalar(select(Edition.status).where(Edition.edition_date == EDITION_DATE)) == (
            "sent"
        )
    assert sorted(zone_of[e] or "" for e in seen) == [
        "America/Los_Angeles",
        "Asia/Tokyo",
        "Europe/London",
    ]
    assert set(seen.values()) == {1}
