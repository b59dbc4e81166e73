"""Unattended daily sends: what is due when, and the `schedule` loop that asks.

All decisions live in `run_due()`, which reads time only through the injected clock: which
edition is due, whether it is within the catch-up grace period, whether another process holds it
(digest.runs), the content gates (digest.gates), then digest.sending.send_edition. The loop in
`serve()` is wiring: `schedule` jobs at each newsletter's send time in its time zone, plus a
periodic retry pass. Because run_due() is idempotent, a job that fires twice (a DST fall-back)
or late (a busy loop, a restart) can neither double-send nor miss.
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from types import FrameType
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import transaction
from digest.editions import build_edition, get_edition, load_edition
from digest.errors import EXIT_UNDELIVERED, DigestError, GateClosed
from digest.gates import check_gates
from digest.preflight import open_rows
from digest.runs import (
    FINAL,
    STALE_AFTER,
    Claim,
    ScheduledRun,
    claim_run,
    finish_run,
    get_run,
    is_stale,
    keep_alive,
    last_run,
    mark_running,
    owner_id,
)
from digest.schedule_log import JsonFormatter as JsonFormatter
from digest.schedule_log import TextFormatter as TextFormatter
from digest.schedule_log import configure_logging as configure_logging
from digest.schedule_log import event as _event
from digest.send_times import due_edition, wave
from digest.send_times import local_delivery as local_delivery
from digest.send_times import next_send as next_send
from digest.send_times import send_instant as send_instant
from digest.sending import RecipientFilter, SendOptions, send_edition

# With local-time delivery a subscriber gets edition D at the first send_time on their own
# clock at or after the newsletter's send instant: within one local day (at most 25 h).
LOCAL_SPAN = timedelta(hours=25)
RETRY_EVERY_MINUTES = 15
# How far back the retry job looks for editions still open for deferred rows (the ledger
# fails a deferred row once it is older than its maximum age, which closes the edition).
DEFERRED_DAYS = 3


class Report(Protocol):
    def summary(self) -> str: ...


class SendFn(Protocol):
    """digest.sending.send_edition, or a stand-in with the same call (tests)."""

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
    ) -> Report: ...


def _send(
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
    if recipients is not None:
        options = replace(options, recipient_filter=recipients)
    from digest.abtest import ab_send, runs_ab

    if runs_ab(config, sessions, newsletter_id, edition_date):  # A/B subjects (issue 15)
        return ab_send(
            config, sessions, newsletter_id, edition_date, options, clock=clock, stop=stop
        )
    return send_edition(
        config, sessions, newsletter_id, edition_date, options, clock=clock, stop=stop
    )


@dataclass(frozen=True)
class RunResult:
    """What one look at one edition did. `outcome` is one of: sent, waiting (local-time waves
    remain), deferred (the edition is open for deferred rows, retried when due), interrupted,
    blocked (a gate), failed, skipped (missed beyond catch-up), busy (another process holds
    it), finished (done or given up earlier). `undelivered`: failed, deferred and unknown rows
    of the edition after the send."""

    newsletter: str
    edition_date: date
    outcome: str
    message: str
    undelivered: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome not in ("blocked", "failed", "interrupted")


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Runner:
    """What run_due needs besides the newsletter; one per scheduler process or CLI call."""

    config: Config
    sessions: sessionmaker[Session]
    clock: Clock
    # Stand-in for send_edition (tests); by default send_edition with `options`.
    send: SendFn | None = None
    options: SendOptions = field(default_factory=SendOptions)
    stop: threading.Event = field(default_factory=threading.Event)
    owner: str = field(default_factory=owner_id)
    force: bool = False
    stale_after: timedelta = STALE_AFTER


def run_due(runner: Runner, newsletter_id: str) -> list[RunResult]:
    """Send what is due of one newsletter now, at most once, and record the result.

    Never raises for a problem of the run itself (gate, provider, bug): it is logged and
    recorded in the run's row, so one newsletter cannot stop the others.
    """
    newsletter = runner.config.newsletter(newsletter_id)
    now = runner.clock()
    day, at = due_edition(newsletter, now)
    if not newsletter.local_time_delivery:
        current = [day]
        results = [_run_edition(runner, newsletter, day, at, now, local=False)]
    else:
        current, results = [], []
        grace = timedelta(hours=newsletter.catch_up_hours)
        for d in (day - timedelta(days=1), day):
            start = send_instant(newsletter, d)
            if now < start + LOCAL_SPAN + grace:
                current.append(d)
                results.append(_run_edition(runner, newsletter, d, start, now, local=True))
    # Earlier editions still open for deferred rows: their retries, adding nobody new.
    for d in _deferred_days(runner, newsletter, day, current):
        results.append(_run_edition(runner, newsletter, d, send_instant(newsletter, d), now))
    return results


def _deferred_days(
    runner: Runner, nl: NewsletterConfig, day: date, current: list[date]
) -> list[date]:
    """Dates before `day` (at most DEFERRED_DAYS back) whose run waits for deferred rows."""
    with runner.sessions() as session:
        days = session.scalars(
            select(ScheduledRun.edition_date).where(
                ScheduledRun.newsletter == nl.id,
                ScheduledRun.status == "waiting",
                ScheduledRun.edition_date >= day - timedelta(days=DEFERRED_DAYS),
                ScheduledRun.edition_date < day,
            )
        )
        return sorted(d for d in days if d not in current)


def deferred_wait(
    sessions: sessionmaker[Session], nl: NewsletterConfig, d: date, now: datetime
) -> str | None:
    """Why a run can wait: the edition is open only for deferred rows, none of them due
    before `now` (the reason names the next attempt). None: there is something to send."""
    with sessions() as session:
        edition = get_edition(session, nl.id, d)
        if edition is None or edition.status != "frozen":
            return None
        counts = ledger.counts(session, edition.id)
        deferred = counts.get("deferred", 0)
        if (
            not deferred
            or open_rows(counts) > deferred
            or ledger.deferred_due(session, edition.id, now)
        ):
            return None
        at = ledger.next_due(session, edition.id)
        if at is None or at <= now:
            return None
        return f"{deferred} deferred row(s), next attempt {at:%Y-%m-%d %H:%M} UTC"


def _result(
    nl: NewsletterConfig, d: date, outcome: str, message: str, level: int = logging.INFO
) -> RunResult:
    _event(level, outcome, nl.id, d, message)
    return RunResult(nl.id, d, outcome, message)


def _run_edition(
    runner: Runner,
    nl: NewsletterConfig,
    d: date,
    at: datetime,
    now: datetime,
    *,
    local: bool | None = None,
) -> RunResult:
    """One look at edition `d`. `local` None: a retry of an earlier edition's deferred rows
    (nobody new is added; no waves, no catch-up limit)."""
    grace = timedelta(hours=nl.catch_up_hours)
    late = now - at
    with runner.sessions() as session:
        existing = get_run(session, nl.id, d)
        if existing is not None and existing.status in FINAL:
            return RunResult(nl.id, d, "finished", f"{existing.status}: {existing.result}")
        if (
            existing is not None
            and existing.status in ("claimed", "running")
            and not is_stale(existing, now, runner.stale_after)
        ):
            return _result(nl, d, "busy", f"held by {existing.claimed_by}", logging.DEBUG)
    waiting = existing is not None and existing.status == "waiting"
    if waiting and (not local or now >= at + LOCAL_SPAN):
        # Open for deferred rows only: nothing to do before the next one is due.
        reason = deferred_wait(runner.sessions, nl, d, now)
        if reason is not None:
            return _result(nl, d, "deferred", f"waiting: {reason}", logging.DEBUG)
    if not local and not waiting and late > grace:
        return _missed(runner, nl, d, at, now, existing)

    claim = claim_run(
        runner.sessions,
        nl.id,
        d,
        owner=runner.owner,
        clock=runner.clock,
        stale_after=runner.stale_after,
    )
    if claim is None:
        return _result(nl, d, "busy", "claimed by another process", logging.DEBUG)
    if existing is not None and existing.status != "waiting":
        _event(
            logging.WARNING,
            "retry",
            nl.id,
            d,
            f"taking over from {existing.claimed_by} (was {existing.status})",
        )
    mark_running(runner.sessions, claim, clock=runner.clock)
    if local and late > grace and existing is None:
        _event(
            logging.WARNING,
            "catch-up",
            nl.id,
            d,
            f"recipients due before {now - grace:%Y-%m-%d %H:%M} UTC are beyond "
            f"catch_up_hours = {nl.catch_up_hours:g} and skipped (recorded in the ledger)",
        )
    _event(logging.INFO, "start", nl.id, d, f"sending (due {at:%Y-%m-%d %H:%M} UTC)")
    return _send_claimed(runner, nl, d, at, now, claim, local=local, waiting=waiting)


def _send_claimed(
    runner: Runner,
    nl: NewsletterConfig,
    d: date,
    at: datetime,
    now: datetime,
    claim: Claim,
    *,
    local: bool | None,
    waiting: bool,
) -> RunResult:
    """The claimed run of edition `d`: build and judge it, send this run's recipients, and
    record how it ended (never raises: the outcome is in the run's row)."""
    grace = timedelta(hours=nl.catch_up_hours)
    recipients = wave(nl, d, now - grace, now) if local else None
    options = replace(runner.options, add_recipients=False) if local is None else runner.options
    status, outcome, level = "failed", "failed", logging.ERROR
    undelivered = 0
    try:
        with keep_alive(runner.sessions, claim, clock=runner.clock):
            # Later waves of a local-time run go on without judging the edition again.
            prepare_edition(
                runner.config,
                runner.sessions,
                nl,
                d,
                clock=runner.clock,
                gates=not runner.force and not waiting,
            )
            report = (runner.send or _send)(
                runner.config,
                runner.sessions,
                nl.id,
                d,
                clock=runner.clock,
                stop=runner.stop,
                recipients=recipients,
                options=options,
            )
        message = "; ".join(report.summary().splitlines())
        undelivered = int(getattr(report, "undelivered", 0))
        if runner.stop.is_set():
            status, outcome, level = "failed", "interrupted", logging.WARNING
            message = f"interrupted, resumes on the next run: {message}"
        elif (local and now < at + LOCAL_SPAN) or getattr(report, "waiting", False):
            # Local-time waves remain, or an A/B test waits for its winner (digest.abtest).
            status, outcome, level = "waiting", "waiting", logging.INFO
        elif _open_for_deferred(report):
            # Not done: the retry job sends the deferred rows when they are due.
            status, outcome, level = "waiting", "deferred", logging.WARNING
        else:
            status, outcome, level = "done", "sent", logging.INFO
    except GateClosed as e:
        outcome, level, message = "blocked", logging.WARNING, str(e)
    except DigestError as e:
        message = str(e)
    except Exception as e:  # a bug in one newsletter's run must not stop the scheduler
        message = f"unexpected {_describe(e)}"
    finish_run(runner.sessions, claim, status, message, clock=runner.clock)
    _event(level, outcome, nl.id, d, message)
    return RunResult(nl.id, d, outcome, message, undelivered)


def _open_for_deferred(report: Report) -> bool:
    """The send left the edition open with deferred rows (a stand-in report has no counts)."""
    counts: dict[str, int] = getattr(report, "counts", {}) or {}
    return getattr(report, "edition_status", "") == "frozen" and counts.get("deferred", 0) > 0


def _describe(e: BaseException) -> str:
    """Type, message and where it was raised, on one line (for a bug report)."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}".replace("\n", " ")


def prepare_edition(
    config: Config,
    sessions: sessionmaker[Session],
    nl: NewsletterConfig,
    d: date,
    *,
    clock: Clock,
    gates: bool = True,
) -> None:
    """Before a send: build the edition if nobody did (kept even when a gate then
    closes, for the editor to look at) and check its gates (GateClosed)."""
    with transaction(sessions) as session:
        if get_edition(session, nl.id, d) is None:
            build_edition(session, config, nl, d, clock=clock)
    if gates:
        with sessions() as session:
            check_gates(session, config, nl, load_edition(session, nl.id, d), clock=clock)


def _missed(
    runner: Runner,
    nl: NewsletterConfig,
    d: date,
    at: datetime,
    now: datetime,
    existing: ScheduledRun | None,
) -> RunResult:
    if existing is not None and existing.status == "failed":
        # Already reported when it failed; a retry pass past the grace period stays quiet.
        return RunResult(nl.id, d, "finished", f"failed: {existing.result}")
    claim = claim_run(
        runner.sessions,
        nl.id,
        d,
        owner=runner.owner,
        clock=runner.clock,
        stale_after=runner.stale_after,
    )
    if claim is None:
        return RunResult(nl.id, d, "busy", "claimed by another process")
    hours = (now - at).total_seconds() / 3600
    message = (
        f"missed: due {at:%Y-%m-%d %H:%M} UTC, {hours:.1f} h ago, beyond catch_up_hours = "
        f"{nl.catch_up_hours:g}; send it by hand with `digest send {nl.id} --date {d}`"
    )
    finish_run(runner.sessions, claim, "skipped", message, clock=runner.clock)
    return _result(nl, d, "skipped", message, logging.WARNING)


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewsletterStatus:
    newsletter: str
    timezone: str
    next_date: date
    next_at: datetime  # in the newsletter's time zone
    local_time_delivery: bool
    last: ScheduledRun | None

    def lines(self) -> Iterator[str]:
        mode = " (local-time waves from then on)" if self.local_time_delivery else ""
        yield (
            f"{self.newsletter}: next {self.next_date} at {self.next_at:%Y-%m-%d %H:%M %Z} "
            f"({self.timezone}){mode}"
        )
        if self.last is None:
            yield "  last: never run"
        else:
            r = self.last
            when = r.finished_at or r.heartbeat_at
            yield (
                f"  last: {r.edition_date} {r.status} at {when:%Y-%m-%d %H:%M} UTC "
                f"by {r.claimed_by}: {r.result or '-'}"
            )


def schedule_status(
    config: Config, sessions: sessionmaker[Session], *, clock: Clock
) -> list[NewsletterStatus]:
    now = clock()
    out = []
    with sessions() as session:
        for nl in config.newsletters.values():
            d, at = next_send(nl, now)
            out.append(
                NewsletterStatus(
                    nl.id,
                    nl.timezone,
                    d,
                    at.astimezone(nl.tz),
                    nl.local_time_delivery,
                    last_run(session, nl.id),
                )
            )
    return out


# --- the loop ---------------------------------------------------------------------------------


def build_schedule(runner: Runner) -> Any:
    """A schedule.Scheduler with each newsletter's jobs (returned for inspection in tests)."""
    import schedule

    sched = schedule.Scheduler()
    for nl in runner.config.newsletters.values():
        job = _job(runner, nl.id)
        if nl.local_time_delivery:
            # Each wave also retries what failed or was abandoned in the hour before.
            sched.every().hour.at(f":{nl.send_time:%M}").do(job).tag(nl.id, "waves")
        else:
            sched.every().day.at(f"{nl.send_time:%H:%M}", nl.timezone).do(job).tag(nl.id)
            # Retries a failed run within the grace period and takes over a stale claim.
            sched.every(RETRY_EVERY_MINUTES).minutes.do(job).tag(nl.id, "retry")
    sched.every().day.at("00:30").do(partitions_job(runner)).tag("partitions")  # PostgreSQL
    return sched


def partitions_job(runner: Runner) -> Callable[[], None]:
    def job() -> None:
        from digest.partitions import made_ahead

        try:  # a failed run is retried tomorrow (and a send makes the month it needs)
            note = made_ahead(runner.sessions.kw["bind"], runner.clock().date())
        except Exception as e:
            _event(logging.ERROR, "error", "*", None, f"ledger partitions: {_describe(e)}")
            return
        if note:
            _event(logging.INFO, "partitions", "*", None, note)

    return job


def _job(runner: Runner, newsletter_id: str) -> Callable[[], None]:
    def job() -> None:
        if runner.stop.is_set():
            return
        try:
            run_due(runner, newsletter_id)
        except Exception as e:  # schedule lets a job's exception stop run_pending()
            _event(logging.ERROR, "error", newsletter_id, None, _describe(e))

    return job


@contextmanager
def exported(runner: Runner) -> Iterator[Runner]:
    """The runner, its metrics served on [metrics] host:port while inside (digest.metrics);
    unchanged when no port is configured. ConfigError when the port cannot be bound."""
    if runner.config.metrics.port is None:
        yield runner
        return
    from digest.metrics import SchedulerMetrics

    with SchedulerMetrics(runner.sessions, runner.config, runner.clock) as metrics:
        host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
        url = f"http://{host}:{metrics.port}/metrics"
        _event(logging.INFO, "metrics", "*", None, f"metrics on {url}")
        yield replace(runner, options=replace(runner.options, observer=metrics.sends))


def serve(runner: Runner, *, poll_seconds: float = 30.0) -> int:
    """Run until SIGTERM/SIGINT: catch up at start, then the jobs. Returns the exit code: 0
    after a clean stop, 130 when a second signal cut the current batch short."""
    with exported(runner) as watched:
        return _loop(watched, poll_seconds)


def _loop(runner: Runner, poll_seconds: float) -> int:
    sched = build_schedule(runner)
    names = ", ".join(runner.config.newsletters)
    try:
        with handle_signals(runner.stop):
            _event(logging.INFO, "started", "*", None, f"scheduler {runner.owner} for {names}")
            partitions_job(runner)()
            for nid in runner.config.newsletters:
                _job(runner, nid)()
            while not runner.stop.is_set():
                sched.run_pending()
                idle = sched.idle_seconds
                wait = poll_seconds if idle is None else max(0.0, min(idle, poll_seconds))
                runner.stop.wait(wait)
    except KeyboardInterrupt:
        _event(logging.WARNING, "stopped", "*", None, "stopped at once on a second signal")
        return EXIT_INTERRUPTED
    _event(logging.INFO, "stopped", "*", None, "stopped on signal")
    return 0


def run_once(runner: Runner, newsletter_id: str) -> list[RunResult]:
    """run_due for `digest send --if-due` (cron, systemd timers): SIGTERM/SIGINT finish the
    current batch, as in the scheduler."""
    with handle_signals(runner.stop):
        return run_due(runner, newsletter_id)


def exit_code(results: list[RunResult]) -> int:
    """3 when a gate held the edition back, 1 when a run failed or was interrupted, 4 when a
    send ended with failed, deferred or unknown rows, else 0 (sent, nothing due, already done,
    or another process is on it)."""
    if any(r.outcome == "blocked" for r in results):
        return GateClosed.exit_code
    if not all(r.ok for r in results):
        return 1
    return EXIT_UNDELIVERED if any(r.undelivered for r in results) else 0


EXIT_INTERRUPTED = 130


@contextmanager
def handle_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` (sending finishes its batch); a second one interrupts."""
    handler = _on_signal(stop)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _on_signal(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now, the ledger stays consistent
        _event(
            logging.INFO,
            "stopping",
            "*",
            None,
            f"{signal.Signals(signum).name}: finishing the current batch",
        )
        stop.set()

    return handle
