"""Scheduled runs: one row per (newsletter, edition date) that a process claims before sending.

The ledger already makes each recipient's delivery exactly-once; the claim makes the whole run
happen once, so two schedulers, a restart, or `digest send --if-due` from cron don't start two
full runs, and it records how the last run ended. A claim is a lease: the holder refreshes its
heartbeat while it works, and a claim whose holder stopped heartbeating (or, on this host, whose
process is gone) is taken over.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Date, Integer, String, Text, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from digest.articles import UTCDateTime
from digest.clock import Clock
from digest.db import Base

# claimed: taken, not started. running: sending. waiting: local-time delivery between waves.
# done / failed / skipped: finished (failed runs may be claimed again within the grace period).
STATUSES = ("claimed", "running", "waiting", "done", "failed", "skipped")
ACTIVE = ("claimed", "running")
FINAL = ("done", "skipped")

HEARTBEAT_EVERY = timedelta(seconds=30)
STALE_AFTER = timedelta(minutes=5)


class ScheduledRun(Base):
    __tablename__ = "scheduled_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(63))
    edition_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10))
    claimed_by: Mapped[str] = mapped_column(String(255))
    # Bumped on every claim: the holder's token, so a taken-over holder can no longer write.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("newsletter", "edition_date"),)


@dataclass(frozen=True)
class Claim:
    run_id: int
    newsletter: str
    edition_date: date
    owner: str
    attempt: int


def owner_id() -> str:
    """Who holds a claim: host:pid (an operator can find the process from it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(run: ScheduledRun, now: datetime, stale_after: timedelta = STALE_AFTER) -> bool:
    """An active claim whose holder stopped heartbeating or whose process is gone."""
    return run.status in ACTIVE and (
        now - run.heartbeat_at > stale_after or _process_gone(run.claimed_by)
    )


def get_run(session: Session, newsletter: str, edition_date: date) -> ScheduledRun | None:
    return session.scalars(
        select(ScheduledRun).where(
            ScheduledRun.newsletter == newsletter, ScheduledRun.edition_date == edition_date
        )
    ).one_or_none()


def last_run(session: Session, newsletter: str) -> ScheduledRun | None:
    return session.scalars(
        select(ScheduledRun)
        .where(ScheduledRun.newsletter == newsletter)
        .order_by(ScheduledRun.edition_date.desc())
        .limit(1)
    ).one_or_none()


def claim_run(
    sessions: sessionmaker[Session],
    newsletter: str,
    edition_date: date,
    *,
    owner: str,
    clock: Clock,
    stale_after: timedelta = STALE_AFTER,
) -> Claim | None:
    """Claim the run, or None when it is finished or another live process holds it.

    Atomic on every backend: the first claim is an INSERT guarded by the unique constraint; a
    claim of a failed, waiting or stale run is an UPDATE conditional on the attempt seen.
    """
    now = clock()
    with sessions() as session:
        run = ScheduledRun(
            newsletter=newsletter,
            edition_date=edition_date,
            status="claimed",
            claimed_by=owner,
            attempts=1,
            heartbeat_at=now,
            started_at=now,
            result="",
        )
        session.add(run)
        try:
            session.commit()
            return Claim(run.id, newsletter, edition_date, owner, 1)
        except IntegrityError:
            session.rollback()
        existing = get_run(session, newsletter, edition_date)
        if existing is None or existing.status in FINAL:
            return None
        if existing.status in ACTIVE and not is_stale(existing, now, stale_after):
            return None
        taken = session.execute(
            update(ScheduledRun)
            .where(ScheduledRun.id == existing.id, ScheduledRun.attempts == existing.attempts)
            .values(
                status="claimed",
                claimed_by=owner,
                attempts=existing.attempts + 1,
                heartbeat_at=now,
                started_at=now,
                finished_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if getattr(taken, "rowcount", 0) != 1:
            return None
        return Claim(existing.id, newsletter, edition_date, owner, existing.attempts + 1)


def _update_held(sessions: sessionmaker[Session], claim: Claim, **values: object) -> bool:
    """Write to the run only while this claim still holds it; False when it was taken over."""
    with sessions() as session:
        result = session.execute(
            update(ScheduledRun)
            .where(
                ScheduledRun.id == claim.run_id,
                ScheduledRun.attempts == claim.attempt,
                ScheduledRun.claimed_by == claim.owner,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return getattr(result, "rowcount", 0) == 1


def mark_running(sessions: sessionmaker[Session], claim: Claim, *, clock: Clock) -> bool:
    return _update_held(sessions, claim, status="running", heartbeat_at=clock())


def beat(sessions: sessionmaker[Session], claim: Claim, *, clock: Clock) -> bool:
    return _update_held(sessions, claim, heartbeat_at=clock())


def finish_run(
    sessions: sessionmaker[Session], claim: Claim, status: str, result: str, *, clock: Clock
) -> bool:
    """End (or, with status "waiting", pause) the run, recording its one-line result."""
    if status not in STATUSES or status in ACTIVE:
        raise ValueError(f"not a finishing status: {status}")
    now = clock()
    return _update_held(
        sessions,
        claim,
        status=status,
        result=result[:2000],
        heartbeat_at=now,
        finished_at=None if status == "waiting" else now,
    )


@contextmanager
def keep_alive(
    sessions: sessionmaker[Session],
    claim: Claim,
    *,
    clock: Clock,
    every: timedelta = HEARTBEAT_EVERY,
    lost: threading.Event | None = None,
) -> Iterator[None]:
    """Refresh the claim's heartbeat in a background thread while the body runs; set `lost`
    if another process took the run over (the ledger still prevents double sends)."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every.total_seconds()):
            try:
                held = beat(sessions, claim, clock=clock)
            except Exception:  # a failed heartbeat (database blip) must not kill the send
                continue
            if not held:
                if lost is not None:
                    lost.set()
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{claim.newsletter}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
