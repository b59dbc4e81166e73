"""A send worker's writes to the ledger: claims, hand-over marks, settles and releases.

One long-lived connection per thread, Core statements: a Session per transaction cost more than
the statements of a small batch. On SQLite the claiming thread and the delivery threads take
turns on one lock, which wakes the waiter at once; the driver's busy handler would sleep
1-100 ms between retries (measured: mark-handed took 23 ms a batch instead of 9).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import Clock
from digest.config import DeferralConfig
from digest.db import writer_lock
from digest.ledger import Claimed
from digest.providers.base import Kind, Outcome

# Outcomes that settle a row (deferred rows wait for their next attempt, but the answer is
# recorded like any other); RETRY and AUTH hand the row back to this worker's own retries.
FINAL = (Kind.ACCEPTED, Kind.FAILED, Kind.UNKNOWN, Kind.DEFER)


class LedgerWriter:
    """The ledger writes of one worker (all its threads) for one edition."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        edition_id: int,
        provider_name: str,
        clock: Clock,
        deferral: DeferralConfig,
    ) -> None:
        self.sessions = sessions
        self.edition_id = edition_id
        self.provider_name = provider_name
        self.clock = clock
        self.worker = ledger.worker_id() + f":{threading.get_ident() % 100000}"
        self.deferral = ledger.DeferralPolicy(
            timedelta(minutes=deferral.first_retry_minutes),
            timedelta(hours=deferral.max_backoff_hours),
            timedelta(hours=deferral.max_age_hours),
        )
        # Rows deferred before (claimed again): when their first deferral was.
        self._deferred_since: dict[int, datetime] = {}
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._writer = writer_lock(sessions)
        # PostgreSQL: the last id this worker claimed; its next claim looks past it first.
        self._cursor = 0
        self._by_cursor = sessions.kw["bind"].dialect.name == "postgresql"

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "connection", None)
        if conn is None:
            conn = self._local.connection = self.sessions.kw["bind"].connect()
            self._connections.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer:
            conn = self._connection()
            with conn.begin():
                yield conn

    def close(self) -> None:
        for conn in self._connections:
            conn.close()

    def pending(self) -> int:
        """Rows this worker may deliver now; deferred rows whose time has come count too."""
        with self.write() as conn:
            ledger.wake_deferred(conn, self.edition_id, self.clock())
        with self.sessions() as session:
            return ledger.pending(session, self.edition_id)

    def claim(self, n: int) -> list[Claimed]:
        with self.write() as conn:
            now = self.clock()
            edition = self.edition_id
            claimed = ledger.claim(conn, edition, self.worker, n, now, self._cursor)
            if not claimed and self._cursor:
                # Nothing past the cursor: a row behind it may be pending again (another
                # worker let it go), so the last word is a pick from the start.
                self._cursor = 0
                claimed = ledger.claim(conn, edition, self.worker, n, now)
            # Nothing pending: rows deferred earlier in a long send may be due by now.
            if not claimed and ledger.wake_deferred(conn, edition, now):
                claimed = ledger.claim(conn, edition, self.worker, n, now)
            if claimed and self._by_cursor:
                self._cursor = claimed[-1].id  # sorted by id
        for c in claimed:
            if c.deferred_since is not None:
                self._deferred_since[c.id] = c.deferred_since
        return claimed

    def release(self, ids: list[int]) -> None:
        """Let rows go: back to pending when never handed over, `unknown` when they were."""
        with self.write() as conn:
            ledger.release(conn, ids, self.worker, self.clock())

    def checkpoint(self, handed: Sequence[int], settled: Sequence[Outcome]) -> list[Outcome]:
        """Mark `handed` as with the provider and record `settled`, in one commit; returns the
        final outcomes as recorded."""
        with self.write() as conn:
            if not handed:
                # Settles alone may be forgotten by a database power cut (the row falls back
                # to handed, then `unknown`: no resend); a hand-over mark must not be.
                ledger.fast_commits(conn)
            if handed:
                ledger.mark_handed(conn, handed, self.worker, self.clock())
            return self._settle(conn, settled) if settled else []

    def settle(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        with self.write() as conn:
            return self._settle(conn, outcomes)

    def _settle(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Record outcomes: final ones settle their rows (deferred ones on the backoff); a
        RETRY or AUTH answer means the provider does not have the message, so the row is no
        longer `handed` (a crash from here on may send it again safely). Returns the final
        outcomes as recorded (a deferral past the maximum age is a failure)."""
        final = [o for o in outcomes if o.kind in FINAL]
        if self._deferred_since:
            final = [self._aged(o) for o in final]
        if final:
            ledger.settle(conn, final, self.worker, self.provider_name, self.clock(), self.deferral)
        back = [o.delivery_id for o in outcomes if o.kind in (Kind.AUTH, Kind.RETRY)]
        if back:
            ledger.unhand(conn, back, self.worker)
        return final

    def _aged(self, o: Outcome) -> Outcome:
        """A temporary answer to a row first deferred more than the maximum age ago fails it."""
        since = self._deferred_since.get(o.delivery_id)
        if o.kind is Kind.DEFER and self.deferral.expired(since, self.clock()):
            return o._replace(kind=Kind.FAILED, error=self.deferral.final_error(o.error))
        return o
