"""What to watch (README "What to monitor"): Prometheus metrics of the ledger and the send path.

Two kinds, each in a CollectorRegistry of its own app or scheduler (never prometheus_client's
global one, so two apps in one process, as in the tests, neither share nor clash):

- read from the database when scraped (LedgerCollector): ledger rows by state and the
  deferrals recorded on them (one GROUP BY over `deliveries`), clicks stored (one over
  `click_events`). The result is kept `cache_seconds`, so a scrape storm, or several
  Prometheus servers, cost one pair of queries per period. The same numbers whichever process
  is scraped, `digest serve` or `digest schedule`.
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
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent
from digest.config import MetricsConfig
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
    """One reading of the database: None when it failed."""

    rows: dict[str, int] = field(default_factory=dict)
    deferrals: int = 0
    clicks: dict[tuple[str, bool], int] = field(default_factory=dict)
    ok: bool = True
    seconds: float = 0.0


def read_counts(session: Session) -> _Counts:
    """The ledger's rows by state with their deferrals, and the clicks stored: two GROUP BYs."""
    started = time.perf_counter()
    rows: dict[str, int] = dict.fromkeys(STATES, 0)
    deferrals = 0
    by_state = select(Delivery.state, func.count(), func.coalesce(func.sum(Delivery.deferrals), 0))
    for state, n, deferred in session.execute(by_state.group_by(Delivery.state)):
        rows[state] = rows.get(state, 0) + int(n)
        deferrals += int(deferred)
    clicks = dict.fromkeys(((k, c) for k in CLICK_KINDS for c in (True, False)), 0)
    by_kind = select(ClickEvent.kind, ClickEvent.counted, func.count()).group_by(
        ClickEvent.kind, ClickEvent.counted
    )
    for kind, counted, n in session.execute(by_kind):
        clicks[(kind, bool(counted))] = int(n)
    return _Counts(rows, deferrals, clicks, seconds=time.perf_counter() - started)


class LedgerCollector(Collector):
    """The database's numbers, read at scrape time at most once per `cache_seconds` (a scrape
    arriving while another reads waits for that reading instead of starting its own)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        cache_seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl = cache_seconds
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
            with self._sessions() as session:
                return read_counts(session)
        except SQLAlchemyError as e:
            # Said once per period in the log; the scrape shows digest_database_up 0.
            log.warning("metrics: cannot read the ledger: %s", type(e).__name__)
            return _Counts(ok=False)


def _families(counts: _Counts | None) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "digest_database_up", "1 when the last reading of the ledger's counts succeeded"
    )
    rows = GaugeMetricFamily(
        "digest_ledger_rows", "Delivery rows in the ledger, by state", labels=["state"]
    )
    deferrals = GaugeMetricFamily(
        "digest_ledger_deferrals",
        "Temporary refusals recorded on the ledger's rows (the sum of every row's deferrals)",
    )
    clicks = GaugeMetricFamily(
        "digest_clicks",
        "Click (and open) events stored; counted=false: flagged as a machine",
        labels=["kind", "counted"],
    )
    seconds = GaugeMetricFamily(
        "digest_ledger_query_seconds", "How long the last reading of the ledger's counts took"
    )
    if counts is not None:
        up.add_metric([], 1 if counts.ok else 0)
        if counts.ok:
            for state, n in sorted(counts.rows.items()):
                rows.add_metric([state], n)
            deferrals.add_metric([], counts.deferrals)
            for (kind, counted), n in sorted(counts.clicks.items()):
                clicks.add_metric([kind, "true" if counted else "false"], n)
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
    sessions: sessionmaker[Session], config: MetricsConfig
) -> tuple[CollectorRegistry, LedgerCollector]:
    """A registry of its own with the ledger's numbers (`digest serve`'s /metrics)."""
    registry = CollectorRegistry()
    collector = LedgerCollector(sessions, config.cache_seconds)
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

    def __init__(self, sessions: sessionmaker[Session], config: MetricsConfig) -> None:
        assert config.port is not None
        self.registry, self.collector = ledger_registry(sessions, config)
        self.sends = SendMetrics(self.registry)
        try:
            self._server, self._thread = start_http_server(
                config.port, addr=config.host, registry=self.registry
            )
        except OSError as e:
            raise ConfigError(
                f"metrics.port: cannot serve metrics on {config.host}:{config.port}: "
                f"{e.strerror or e}"
            ) from None
        self.host = config.host
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> SchedulerMetrics:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
