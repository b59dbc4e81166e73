"""One send worker: claims batches of ledger rows, builds their messages (digest.outgoing),
hands them to the provider, retries what the provider could not take, and stops the send when
the provider refuses everyone. Its ledger writes go through digest.ledger_writer."""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import one_writer
from digest.editions import Edition
from digest.errors import ProviderError
from digest.ledger import Claimed
from digest.ledger_writer import LedgerWriter
from digest.outgoing import MessageBuilder
from digest.providers import credentials_hint
from digest.providers.base import Batch, Kind, Outcome, Provider, backoff
from digest.render import Renderer
from digest.send_options import Progress, ProgressEvent, SendOptions

# Whole batches (of at least _STREAK_BATCH messages) in a row in which the provider refused
# every message, one by one, before the send stops: one recipient's server may say "later",
# a relay that says it to everyone (or 5xx to everyone: relaying denied) is the provider's
# trouble, and a million deferred or failed rows would be the wrong answer to it.
_STREAK = 3
_STREAK_BATCH = 10
_HANDED_WAIT = 0.02  # seconds; SendGrid checkpoints within a few ms of a batch's start
_AHEAD_BATCHES = 10  # pending rows, in batches, from which a worker claims ahead


class Delivery:
    """A batch with the provider: which of its rows are settled (committed), which this attempt
    recorded through checkpoints, how many were accepted and refused, and whether its first
    hand-over is committed (the next claim waits for that rather than contending with it for
    SQLite's write lock)."""

    def __init__(self) -> None:
        self.done: set[int] = set()
        self.recorded: set[int] = set()  # ids whose outcome this attempt already recorded
        self.accepted = self.refused = 0
        self.last_refusal = ""
        self.handed = threading.Event()
        self.future: Future[None] | None = None

    def result(self) -> None:
        assert self.future is not None
        self.future.result()


class Tally:
    """What a worker's committed outcomes add up to (shared by its delivery threads), and the
    streak of batches the provider refused message by message."""

    def __init__(self, observe: Callable[[int, int, int, int], None] | None = None) -> None:
        self.sent = self.failed = self.unknown = self.deferred = 0
        self._streak = 0
        self._lock = threading.Lock()
        self._observe = observe  # told (sent, failed, unknown, deferred) of each commit

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.unknown + self.deferred

    def counts(self) -> tuple[int, int, int, int]:
        return self.sent, self.failed, self.unknown, self.deferred

    def count(self, outcomes: Iterable[Outcome], delivery: Delivery | None) -> None:
        """Tally outcomes whose record was just committed."""
        sent = failed = unknown = deferred = 0
        for o in outcomes:
            if o.kind is Kind.ACCEPTED:
                sent += 1
            elif o.kind is Kind.FAILED:
                failed += 1
            elif o.kind is Kind.UNKNOWN:
                unknown += 1
            elif o.kind is Kind.DEFER:
                deferred += 1
            else:
                continue
            if delivery is not None:
                delivery.done.add(o.delivery_id)
                if o.kind is not Kind.ACCEPTED:
                    delivery.last_refusal = o.error or o.kind.value
        if delivery is not None:
            delivery.accepted += sent
            delivery.refused += failed + deferred
        with self._lock:
            self.sent += sent
            self.failed += failed
            self.unknown += unknown
            self.deferred += deferred
        if self._observe is not None and (sent or failed or unknown or deferred):
            self._observe(sent, failed, unknown, deferred)

    def refused_all(self, delivery: Delivery, size: int) -> bool:
        """True when the provider refused every message of _STREAK whole batches in a row
        (see _STREAK); one answered message resets the count."""
        with self._lock:
            if delivery.accepted:
                self._streak = 0
                return False
            if size < _STREAK_BATCH or delivery.refused < size:
                return False
            self._streak += 1
            return self._streak >= _STREAK


class _ClaimAhead:
    """The next batch, claimed on a thread of its own while the current one is prepared."""

    def __init__(self, ledger: LedgerWriter) -> None:
        self.ledger = ledger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest-claim")
        self._next: Future[list[Claimed]] | None = None

    def start(self, n: int) -> None:
        self._next = self._pool.submit(self.ledger.claim, n)

    def take(self, n: int) -> list[Claimed]:
        """The batch claimed ahead (or, the first time, one claimed now)."""
        if self._next is None:
            return self.ledger.claim(n)
        found, self._next = self._next, None
        return found.result()

    def close(self) -> None:
        """Stopping: rows claimed ahead were never prepared; they go back to pending."""
        try:
            if self._next is not None:
                try:
                    claimed = self._next.result()
                except Exception:  # its transaction rolled back: nothing was claimed
                    claimed = []
                if claimed:
                    self.ledger.release([c.id for c in claimed])
        finally:
            self._pool.shutdown(wait=True)


class _Stopped(Exception):
    """The stop event was set while the next batch was being prepared."""


def _subset(batch: Batch, ids: set[int]) -> Batch:
    keep = [i for i, m in enumerate(batch.messages) if m.delivery_id in ids]
    return Batch(
        batch.variant,
        [batch.messages[i] for i in keep],
        batch.when,
        template=batch.template,
        substitutions=[batch.substitutions[i] for i in keep] if batch.substitutions else [],
    )


class Worker:
    """Claims batches of rows and delivers them until nothing is pending, the limit is reached
    or `stop` is set (the batch in hand is finished first)."""

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        nl: NewsletterConfig,
        edition: Edition,
        renderer: Renderer,
        provider: Provider,
        options: SendOptions,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.provider = provider
        self.options = options
        self.clock = clock
        self.stop = stop
        self.batch_size = options.batch_size or provider.batch_size
        self.progress: Progress | None = None
        self.observer = options.observer
        self.tally = Tally(
            None
            if self.observer is None
            else functools.partial(self.observer.recorded, provider.name)
        )
        self.ledger = LedgerWriter(sessions, edition.id, provider.name, clock, config.deferral)
        self._one_writer = one_writer(sessions)
        self.builder = MessageBuilder(config, nl, edition, renderer)
        self._started = time.monotonic()
        self._remaining = 0
        # Requests a worker may have with the provider at once (SendGrid: `in_flight`): the
        # provider's round trips overlap each other and the preparation of the next batch.
        self.in_flight = max(1, provider.in_flight)
        self._current = threading.local()  # the Delivery a delivery thread is working on

    def run(self, limit: int | None) -> None:
        """Claim, prepare and deliver batch after batch. The next batch is claimed and
        personalised while up to `in_flight` batches are with the provider (a delivery thread
        each), so the provider's round trips overlap the CPU work; progress is reported per
        delivered batch."""
        self._remaining = self.ledger.pending()
        if limit is not None:
            self._remaining = min(self._remaining, limit)
        taken = 0
        in_flight: deque[Delivery] = deque()
        pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="digest-deliver")
        # Where writers do not queue for one lock (PostgreSQL), the next batch is claimed
        # while this one is prepared: a claim is a round trip of 20-30 ms a batch of 1,000
        # that the preparing thread otherwise waits out (a quarter of a send). Not for a
        # short list, where the batch held ahead would be another worker's whole share.
        ahead = None
        if not self._one_writer and self._remaining >= _AHEAD_BATCHES * self.batch_size:
            ahead = _ClaimAhead(self.ledger)
        # Everything alive now (modules, SQLAlchemy's metadata, the rendered variants) outlives
        # the loop: frozen, the collector stops re-walking it on every full collection, while
        # each batch allocates thousands of short-lived objects (about 9% of a SendGrid send).
        gc.freeze()
        try:
            while not self.stop.is_set() and (limit is None or taken < limit):
                n = self.batch_size if limit is None else min(self.batch_size, limit - taken)
                if in_flight and ahead is None:
                    # Without claim ahead (SQLite, a short list) the claim waits for the last
                    # batch's hand-over rather than contend with it (SQLite: for the write
                    # lock). Bounded: a provider that never checkpoints (the outbox) only
                    # costs this.
                    in_flight[-1].handed.wait(_HANDED_WAIT)
                claimed = ahead.take(n) if ahead is not None else self.ledger.claim(n)
                if not claimed:
                    break
                taken += len(claimed)
                if ahead is not None and (limit is None or taken < limit):
                    ahead.start(self.batch_size if limit is None else min(n, limit - taken))
                try:
                    delivery = Delivery()
                    batches = self._prepare(claimed, delivery)
                    while in_flight and (len(in_flight) >= self.in_flight or self.stop.is_set()):
                        # A provider error of an earlier batch stops here.
                        in_flight.popleft().result()
                        self._report()
                    if self.stop.is_set():
                        raise _Stopped
                except BaseException:
                    self.ledger.release([c.id for c in claimed])
                    if self.stop.is_set() and not in_flight:
                        break
                    raise
                delivery.future = pool.submit(self._deliver, delivery, claimed, batches)
                in_flight.append(delivery)
            while in_flight:
                in_flight.popleft().result()
                self._report()
        finally:
            gc.unfreeze()
            try:
                if ahead is not None:
                    ahead.close()  # a batch claimed ahead and never delivered goes back
            finally:
                pool.shutdown(wait=True)
                self.ledger.close()

    def _report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self._started
        t = self.tally
        rate = t.done / elapsed if elapsed > 0 else 0.0
        self.progress(ProgressEvent(t.sent, t.failed, t.unknown, self._remaining, rate, t.deferred))

    def _prepare(self, claimed: list[Claimed], delivery: Delivery) -> list[Batch]:
        unbuilt: list[Outcome] = []
        batches = self.builder.batches(claimed, self.clock(), unbuilt)
        if unbuilt:
            # Settled now: these rows never reach the provider; their batch goes on without them.
            self.ledger.settle(unbuilt)
            self.tally.count(unbuilt, delivery)  # a batch nobody's message builds counts as refused
        return batches

    def _deliver(self, delivery: Delivery, claimed: list[Claimed], batches: list[Batch]) -> None:
        self._current.delivery = delivery
        try:
            for batch in batches:
                self._send_with_retries(batch)
            if self.tally.refused_all(delivery, len(claimed)):
                raise ProviderError(
                    f"{self.provider.name} refused every message of {_STREAK} batches in a row "
                    f"(last answer: {delivery.last_refusal}); stopping: the refused rows say "
                    "why, the rest stay pending. Run the same command again once the cause is "
                    "fixed"
                )
        finally:
            # Anything still held (stop, auth failure, an error) is let go: back to pending
            # when it never reached the provider, `unknown` when it did.
            held = [c.id for c in claimed if c.id not in delivery.done]
            try:
                if held:
                    self.ledger.release(held)
            finally:
                delivery.handed.set()

    def _checkpoint(self, handed: Sequence[int], settled: Sequence[Outcome]) -> None:
        """Called by the provider just before messages leave (SMTP: once per message, before
        the final dot) and with every refusal as it comes: one commit records both."""
        delivery: Delivery = self._current.delivery
        recorded = self.ledger.checkpoint(handed, settled)
        delivery.recorded.update(o.delivery_id for o in settled)
        self.tally.count(recorded, delivery)
        delivery.handed.set()

    def _send_with_retries(self, batch: Batch) -> None:
        """Deliver a batch, retrying what the provider answered RETRY (its own trouble: 429,
        5xx, a lost connection) with backoff. A round in which some messages got an answer
        does not count as an attempt: only a provider that answers nothing but "later" runs
        out of attempts, and then the send stops with those rows pending."""
        policy = self.options.retry
        delivery: Delivery = self._current.delivery
        attempt = 1
        while True:
            delivery.recorded.clear()
            started = time.perf_counter()
            try:
                outcomes = self.provider.send(batch, self._checkpoint)
            finally:
                if self.observer is not None:
                    self.observer.provider_call(self.provider.name, time.perf_counter() - started)
            rest = [o for o in outcomes if o.delivery_id not in delivery.recorded]
            if rest:
                self.tally.count(self.ledger.settle(rest), delivery)
            auth = [o for o in outcomes if o.kind is Kind.AUTH]
            if auth:
                raise ProviderError(
                    f"{self.provider.name} refused the credentials ({auth[0].error}); check "
                    f"{credentials_hint(self.config, self.provider.name)}. Nothing more was "
                    "sent; unsent rows stay pending"
                )
            retry = [o for o in outcomes if o.kind is Kind.RETRY]
            if not retry:
                return
            progress = len(retry) < len(outcomes)
            if not progress and attempt >= policy.attempts:
                # The provider is down or throttling hard: stop rather than fail anyone.
                raise ProviderError(
                    f"{self.provider.name} kept answering {retry[0].error} after "
                    f"{policy.attempts} attempts; unsent rows stay pending: run the same "
                    "command again later"
                )
            delay = backoff(
                attempt,
                policy.base,
                policy.cap,
                max((o.retry_after for o in retry if o.retry_after is not None), default=None),
            )
            if self.stop.wait(delay):
                return  # stopping: the rows still held go back to pending
            if not progress:
                attempt += 1
            batch = _subset(batch, {o.delivery_id for o in retry})


def load_for_send(session: Session, edition_id: int) -> Edition:
    """The edition with its items loaded (the renderer reads them after the session ends)."""
    return session.scalars(
        select(Edition).options(selectinload(Edition.items)).where(Edition.id == edition_id)
    ).one()
