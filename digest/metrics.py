"""What to watch (README "What to monitor"): Prometheus metrics of the ledger and the send path.

Two kinds, each in a CollectorRegistry of its own app or scheduler (never prometheus_client's
global one, so two apps in one process, as in the tests, neither share nor clash):

- read from the database when scraped (LedgerCollector): per newsletter, ledger rows by state
  and the deferrals recorded on them (one GROUP BY over `deliveries`), clicks stored (one over
  `click_events`), of the editions of the last `ledger_days`. A reading is kept
  `cache_seconds`, so a scrape storm, or several Prometheus servers, cost one reading per
  period. The same numbers whichever process is scraped, `digest serve` or `digest schedule`.
- counted by this process as it sends (SendMetrics, the send path's SendObserver): messages by
  outcome and the time of each provider call.

Importing this module imports prometheus_client: only `digest serve`, `digest schedule` with a
metrics port and the WSGI app do.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent
from digest.clock import Clock
from digest.config import Config, MetricsConfig
from digest.editions import Edition
from digest.errors import ConfigError
from digest.ledger import STATES, Delivery
from digest.providers import NAMES as PROVIDERS

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "failed", "unknown", "deferred")
CLICK_KINDS = ("click", "open")
# Seconds of one provider call: an SMTP message to a near relay takes milliseconds, a
# 1,000-recipient SendGrid request a few hundred, a struggling provider up to its timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class _Counts:
    """One reading of the database (`ok` False when it failed)."""

    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (newsletter, state)
    deferrals: dict[str, int] = field(default_factory=dict)
    clicks: dict[tuple[str, str, bool], int] = field(default_factory=dict)  # (nl, kind, counted)
    ok: bool = True
    seconds: float = 0.0


def read_counts(session: Session, since: date, newsletters: Iterable[str] = ()) -> _Counts:
    """Rows by state with their deferrals, and clicks stored, of the editions dated `since`
    or later: one GROUP BY each, through the indexes that lead with the edition, so the cost
    follows the recent editions' size, not the years of ledger behind them. `newsletters`
    get a zero for every series even before their first edition."""
    started = time.perf_counter()
    recent = select(Edition.id, Edition.newsletter).where(Edition.edition_date >= since)
    newsletter_of = {eid: nl for eid, nl in session.execute(recent)}
    names = {*newsletters, *newsletter_of.values()}
    rows = {(nl, state): 0 for nl in names for state in STATES}
    deferrals = dict.fromkeys(names, 0)
    clicks = {(nl, k, c): 0 for nl in names for k in CLICK_KINDS for c in (True, False)}
    if newsletter_of:
        ids = list(newsletter_of)
        by_state = (
            select(Delivery.edition_id, Delivery.state, func.count(), func.sum(Delivery.deferrals))
            .where(Delivery.edition_id.in_(ids))
            .group_by(Delivery.edition_id, Delivery.state)
        )
        for eid, state, n, deferred in session.execute(by_state):
            nl = newsletter_of[eid]
            rows[(nl, state)] = rows.get((nl, state), 0) + int(n)
            deferrals[nl] += int(deferred or 0)
        by_kind = (
            select(ClickEvent.edition_id, ClickEvent.kind, ClickEvent.counted, func.count())
            .where(ClickEvent.edition_id.in_(ids))
            .group_by(ClickEvent.edition_id, ClickEvent.kind, ClickEvent.counted)
        )
        for eid, kind, counted, n in session.execute(by_kind):
            key = (newsletter_of[eid], kind, bool(counted))
            clicks[key] = clicks.get(key, 0) + int(n)
    return _Counts(rows, deferrals, clicks, seconds=time.perf_counter() - started)


class LedgerCollector(Collector):
    """The database's numbers, read at scrape time at most once per `cache_seconds` (a scrape
    arriving while another reads waits for that reading instead of starting its own)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: MetricsConfig,
        clock: Clock,
        newsletters: Iterable[str] = (),
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl = config.cache_seconds
        self._days = config.ledger_days
        self._clock = clock
        self._newsletters = tuple(newsletters)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._counts = _Counts(ok=False)
        self.queries = 0  # readings made (tests, and a check of the cache)

    def describe(self) -> Iterable[Metric]:
        return list(_families(None))

    def collect(self) -> Iterable[Metric]:
        return list(_families(self._current()))

    def _current(self) -> _Counts:
        with self._lock:
            now = self._monotonic()
            if self._read_at is None or now - self._read_at >= self._ttl:
                self._counts = self._read()
                self._read_at = self._monotonic()
            return self._counts

    def _read(self) -> _Counts:
        self.queries += 1
        try:
            since = (self._clock() - timedelta(days=self._days)).date()
            with self._sessions() as session:
                return read_counts(session, since, self._newsletters)
        except SQLAlchemyError as e:
            # Said once per period in the log; the scrape shows digest_database_up 0.
            log.warning("metrics: cannot read the ledger: %s", type(e).__name__)
            return _Counts(ok=False)


def _families(counts: _Counts | None) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "digest_database_up", "1 when the last reading of the ledger's counts succeeded"
    )
    recent = "of the editions of the last [metrics] ledger_days days"
    rows = GaugeMetricFamily(
        "digest_ledger_rows", f"Ledger rows by state {recent}", labels=["newsletter", "state"]
    )
    deferrals = GaugeMetricFamily(
        "digest_ledger_deferrals",
        f"Temporary refusals recorded on the ledger rows {recent}",
        labels=["newsletter"],
    )
    clicks = GaugeMetricFamily(
        "digest_clicks",
        f"Click (and open) events stored {recent}; counted=false: flagged as a machine",
        labels=["newsletter", "kind", "counted"],
    )
    seconds = GaugeMetricFamily(
        "digest_ledger_query_seconds", "How long the last reading of the ledger's counts took"
    )
    if counts is not None:
        up.add_metric([], 1 if counts.ok else 0)
        if counts.ok:
            for (nl, state), n in sorted(counts.rows.items()):
                rows.add_metric([nl, state], n)
            for nl, n in sorted(counts.deferrals.items()):
                deferrals.add_metric([nl], n)
            for (nl, kind, counted), n in sorted(counts.clicks.items()):
                clicks.add_metric([nl, kind, "true" if counted else "false"], n)
            seconds.add_metric([], counts.seconds)
    yield from (up, rows, deferrals, clicks, seconds)


class SendMetrics:
    """The send path's own counts in this process (a digest.send_options.SendObserver)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sends = Counter(
            "digest_sends",
            "Messages whose outcome this process recorded in the ledger, by provider and outcome",
            ["provider", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "digest_provider_request_seconds",
            "Time of one call of a provider with a batch (a SendGrid request, an SMTP batch)",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for provider in PROVIDERS:  # every series from zero, so rate() sees the first sends
            self.latency.labels(provider)
            for outcome in OUTCOMES:
                self.sends.labels(provider, outcome)

    def provider_call(self, provider: str, seconds: float) -> None:
        self.latency.labels(provider).observe(seconds)

    def recorded(self, provider: str, sent: int, failed: int, unknown: int, deferred: int) -> None:
        for outcome, n in zip(OUTCOMES, (sent, failed, unknown, deferred), strict=True):
            if n:
                self.sends.labels(provider, outcome).inc(n)


def ledger_registry(
    sessions: sessionmaker[Session], config: Config, clock: Clock
) -> tuple[CollectorRegistry, LedgerCollector]:
    """A registry of its own with the ledger's numbers (`digest serve`'s /metrics)."""
    registry = CollectorRegistry()
    collector = LedgerCollector(sessions, config.metrics, clock, config.newsletters)
    registry.register(collector)
    return registry, collector


def bearer_ok(expected: str | None, authorization: str | None) -> bool:
    """True when no token is configured, or the Authorization header carries it."""
    if expected is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8"), expected.encode("utf-8")
    )


class SchedulerMetrics:
    """`digest schedule`'s metrics: the ledger's numbers and the send path's counts, served by
    prometheus_client's own HTTP server on [metrics] host and port until close()."""

    def __init__(self, sessions: sessionmaker[Session], config: Config, clock: Clock) -> None:
        metrics = config.metrics
        assert metrics.port is not None
        self.registry, self.collector = ledger_registry(sessions, config, clock)
        self.sends = SendMetrics(self.registry)
        try:
            self._server, self._thread = start_http_server(
                metrics.port, addr=metrics.host, registry=self.registry
            )
        except OSError as e:
            raise ConfigError(
                f"metrics.port: cannot serve metrics on {metrics.host}:{metrics.port}: "
                f"{e.strerror or e}"
            ) from None
        self.host = metrics.host
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> SchedulerMetrics:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
