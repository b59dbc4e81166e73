"""The send pipeline: edition → ledger rows for the audience → batches → provider → ledger.

Exactly-once rests on the ledger (digest.ledger): a row is claimed (committed) before any
provider call, marked `handed` the moment its message leaves for the provider, and settled after
the answer. A re-run — after Ctrl-C, kill -9 or a power cut — recovers rows a dead worker held:
never handed → sent again; handed without an answer → `unknown`, not resent unless asked. The
residual window is one message per SMTP connection (final dot written, reply not yet
recorded) and up to `in_flight` requests per SendGrid worker; those rows say `unknown`, they
are never silently resent. A refusal is recorded before the next message, so a refused
message is never `unknown`; one recipient's temporary refusal defers that row alone
(`deferred`, on its own backoff: digest.ledger), and only the provider's own trouble stops a
send (README: "The delivery ledger: states, deferrals, crash windows").
"""

from __future__ import annotations

import csv
import gc
import io
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

from sqlalchemy import Connection, Engine, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.types import TypeEngine

from digest import ledger
from digest.clock import Clock, utcnow
from digest.config import Config, NewsletterConfig
from digest.db import make_engine, session_factory, transaction
from digest.dkim import signer_for
from digest.editions import Edition, build_edition, freeze_edition, get_edition
from digest.errors import EXIT_UNDELIVERED, InputError, NotFound, ProviderError
from digest.ledger import DELIVERIES, Claimed
from digest.message import (
    Addressee,
    Content,
    VariantMessage,
    make_message_id,
    message_id_parts,
)
from digest.preflight import (
    CHECK_ERRORS,
    VariantCheck,
    audience_without_rows,
    check_full_audience,
    check_items,
    open_rows,
    refusal,
)
from digest.preview import PreviewMail, register_format, sample_personal
from digest.providers.base import (
    BUILD_ERRORS,
    Batch,
    Kind,
    Outcome,
    Outgoing,
    Provider,
    backoff,
    unbuildable,
)
from digest.render import (
    SLOTS,
    Links,
    Personal,
    Personalised,
    RenderedVariant,
    Renderer,
    check_size,
    personal_links,
    personal_values,
    personalise,
)
from digest.text import csv_row
from digest.tracking import send_renderer
from subscribers.audience import Recipient, audience

# Outcomes that settle a row (deferred rows wait for their next attempt, but the answer is
# recorded like any other); RETRY and AUTH hand the row back to this worker's own retries.
_FINAL = (Kind.ACCEPTED, Kind.FAILED, Kind.UNKNOWN, Kind.DEFER)
# Whole batches (of at least _STREAK_BATCH messages) in a row in which the provider refused
# every message, one by one, before the send stops: one recipient's server may say "later",
# a relay that says it to everyone (or 5xx to everyone: relaying denied) is the provider's
# trouble, and a million deferred or failed rows would be the wrong answer to it.
_STREAK = 3
_STREAK_BATCH = 10
_INSERT_CHUNK = 2000
_BUFFERED_ROWS = 50_000
_ROW_COLUMNS = (
    "subscriber_id",
    "email",
    "name",
    "sections",
    "variant",
    "subject",
)  # what a new row binds
_TEXT: TypeEngine[str] = DELIVERIES.c.email.type
_HANDED_WAIT = 0.02  # seconds; SendGrid checkpoints within a few ms of a batch's start

# A local-time wave's verdict on a recipient: True, theirs is this run; False, a later run's;
# a string, their send time passed while nothing ran: the reason their row is `skipped` with,
# so the ledger answers why they did not get this edition.
RecipientFilter = Callable[[Recipient], bool | str]


@dataclass(frozen=True)
class RetryPolicy:
    """429, 5xx and connection errors: exponential backoff with jitter, at most `attempts`
    tries per message in one run; Retry-After / X-RateLimit-Reset are honoured."""

    attempts: int = 6
    base: float = 1.0
    cap: float = 60.0


@dataclass
class SendOptions:
    provider: str | None = None
    dry_run: bool = False
    segments: tuple[str, ...] = ()
    limit: int | None = None
    workers: int = 1
    retry_failed: bool = False
    resend_unknown: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int | None = None  # default: the provider's own
    # False: deliver the rows the ledger has and add nobody (the scheduler's retries of an
    # earlier day's deferred rows: people who subscribed since get the current edition).
    add_recipients: bool = True
    # Local-time delivery (the scheduler's waves): which recipients get rows now.
    recipient_filter: RecipientFilter | None = None
    subject: str | None = None  # an A/B arm's subject template (digest.abtest)


@dataclass(frozen=True)
class ProgressEvent:
    sent: int
    failed: int
    unknown: int
    total: int  # rows this run may still deliver (after --limit)
    rate: float  # messages per second
    eta_seconds: float | None
    deferred: int = 0  # refused "for now" by the recipient's server: tried again later

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.unknown + self.deferred


@dataclass
class SendReport:
    """What one run did (the `_now` counts and `created` are this run's own rows, never rows
    another sender added or settled) and where the edition stands after it."""

    newsletter: str
    edition_date: date
    provider: str
    counts: dict[str, int]
    sent_now: int = 0
    failed_now: int = 0
    unknown_now: int = 0
    deferred_now: int = 0
    created: int = 0
    skipped_now: int = 0
    missed_now: int = 0
    recovered: int = 0
    elapsed: float = 0.0
    dry_run: bool = False
    edition_status: str = ""
    stopped: bool = False
    segments: tuple[str, ...] = ()
    # Members of the full audience without a row (counted after a partial run), and when the
    # next deferred row is due.
    without_rows: int = 0
    next_attempt: datetime | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def undelivered(self) -> int:
        """Rows of the edition that did not reach their reader and are not on their way:
        failed, deferred or unknown."""
        c = self.counts
        return c.get("failed", 0) + c.get("deferred", 0) + c.get("unknown", 0)

    @property
    def exit_code(self) -> int:
        """0, or EXIT_UNDELIVERED (4) when the edition's ledger ends with failed, deferred or
        unknown rows: cron and the operator see that someone did not get it."""
        return EXIT_UNDELIVERED if not self.dry_run and self.undelivered else 0

    def summary(self) -> str:
        if self.dry_run:
            lines = [
                f"dry run of {self.newsletter} {self.edition_date}: {self.sent_now} message(s) "
                f"written to the outbox; the ledger was not touched"
            ]
            return "\n".join(lines + self.notes)
        rate = self.sent_now / self.elapsed if self.elapsed > 0 else 0.0
        state = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        deferred = f", deferred {self.deferred_now}" if self.deferred_now else ""
        lines = [
            f"{self.newsletter} {self.edition_date} via {self.provider}: sent {self.sent_now}, "
            f"failed {self.failed_now}, unknown {self.unknown_now}{deferred} in "
            f"{self.elapsed:.1f}s ({rate:.0f}/s)",
            f"ledger: {state or 'no rows'}; edition {self.edition_status}",
        ]
        if self.created:
            lines.append(f"{self.created} new recipient(s) added to the ledger")
        if self.skipped_now:
            lines.append(f"{self.skipped_now} row(s) skipped: no longer in the audience")
        if self.missed_now:
            lines.append(
                f"{self.missed_now} recipient(s) missed their local send time by more than "
                "catch_up_hours: recorded as skipped"
            )
        if self.recovered:
            lines.append(f"{self.recovered} row(s) recovered from an interrupted send")
        if self.stopped:
            lines.append("stopped before the end: run the same command again to continue")
        return "\n".join(lines + self._open_lines() + self._next_steps() + self.notes)

    def _command(self, *flags: str) -> str:
        return " ".join(["digest send", self.newsletter, f"--date {self.edition_date}", *flags])

    def _open_lines(self) -> list[str]:
        """Why the edition is still open, when it is."""
        if self.edition_status != "frozen":
            return []
        total = sum(self.counts.values())
        settled = sum(self.counts.get(state, 0) for state in ledger.SETTLED)
        lines = [
            f"edition open: {self.newsletter} {self.edition_date} has {settled} of {total} "
            "ledger row(s) settled; it is closed (sent) once every reader of its full audience "
            "has a settled row"
        ]
        if self.segments and self.without_rows:
            lines.append(
                f"this run was for segment(s) {', '.join(self.segments)}; {self.without_rows} "
                f"reader(s) of the full audience have no row yet: run `{self._command()}` to "
                "send them"
            )
        if not total:
            lines.append(
                "the audience is empty: nobody to send to; the edition stays open for its "
                "first reader"
                if not self.segments
                else f"segment {', '.join(self.segments)} matched nobody: no rows were added"
            )
        pending = self.counts.get("pending", 0)
        if pending and not self.stopped:
            lines.append(f"{pending} pending: run `{self._command()}` again to send them")
        return lines

    def _next_steps(self) -> list[str]:
        """For each kind of undelivered row: how many, and the command to run next."""
        c, out = self.counts, []
        report = f"digest sends report {self.newsletter} --date {self.edition_date}"
        if c.get("deferred"):
            when = f" (next attempt {self.next_attempt:%H:%M} UTC)" if self.next_attempt else ""
            out.append(
                f"{c['deferred']} deferred{when}: run `{self._command()}` again or let "
                "`digest schedule` do it"
            )
        if c.get("unknown"):
            out.append(
                f"{c['unknown']} unknown (handed over, no answer: they may have been "
                f"delivered): see `{report}`; `{self._command('--resend-unknown')}` only once "
                "you know they were not"
            )
        if c.get("failed"):
            out.append(
                f"{c['failed']} failed: see `{report}`; "
                f"`{self._command('--retry-failed')}` after fixing the cause"
            )
        if out:
            out.append(f"exit code {EXIT_UNDELIVERED}: not everyone got this edition")
        return out


Progress = Callable[[ProgressEvent], None]


def make_provider(config: Config, name: str, newsletter: NewsletterConfig) -> Provider:
    if name == "outbox":
        from digest.providers.outbox import OutboxProvider

        return OutboxProvider(config.outbox.dir, config.outbox.rate)
    if name == "smtp":
        from digest.providers.smtp import SmtpProvider

        return SmtpProvider(config.smtp, config.bounces.return_path or newsletter.from_email)
    if name == "sendgrid":
        from digest.providers.sendgrid import SendGridProvider

        return SendGridProvider(config.sendgrid)
    raise InputError(f"unknown provider {name!r} (choose outbox, smtp or sendgrid)")


def send_edition(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter_id: str,
    edition_date: date,
    options: SendOptions,
    *,
    clock: Clock,
    provider: Provider | None = None,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> SendReport:
    """Build (if missing) and freeze the edition, add ledger rows for the audience, deliver
    every pending row, settle each, and mark the edition sent once nothing is left.

    Safe to run concurrently (PostgreSQL) and to re-run after a crash. Content gates are the
    caller's business. `options.recipient_filter` chooses whom new rows are for (local-time
    waves); the edition is marked sent only once a run leaves nobody out."""
    nl = config.newsletter(newsletter_id)
    name = options.provider or nl.provider
    stop = stop or threading.Event()
    started = time.monotonic()
    if options.dry_run:
        return _dry_run(config, sessions, nl, edition_date, options, clock, provider)
    if provider is None:
        provider = make_provider(config, name, nl)
    if provider.name != "sendgrid":
        # Raw MIME is DKIM-signed: an unreadable key stops the send before anything changes.
        signer_for(config, nl)
    report = SendReport(nl.id, edition_date, provider.name, {}, segments=options.segments)

    with transaction(sessions) as session:
        if get_edition(session, nl.id, edition_date) is None:
            build_edition(session, config, nl, edition_date, clock=clock)  # kept if a check fails
    with transaction(sessions) as session:
        # Freezing and the first rows commit together, after the checks: see digest.preflight.
        edition, froze = _frozen_edition(session, nl, edition_date, clock)
        # Tracked links are stored in this transaction too (digest.tracking).
        renderer = send_renderer(session, config, nl, edition, options.subject)
        check = VariantCheck(config, nl, edition, renderer)
        check.edition_was_draft = froze
        try:
            left_out = _prepare_rows(session, config, nl, edition, check, options, report, clock)
        except CHECK_ERRORS as e:
            if froze:
                raise refusal(nl, edition, e) from e
            raise
    renderer = check.renderer

    workers = max(1, options.workers)
    bind = sessions.kw.get("bind")
    if workers > 1 and (bind is None or bind.dialect.name == "sqlite"):
        report.notes.append(
            f"note: SQLite runs one worker (asked for {workers}); "
            "several workers need PostgreSQL (FOR UPDATE SKIP LOCKED)"
        )
        workers = 1
    try:
        if workers == 1:
            w = _Worker(config, sessions, nl, edition, renderer, provider, options, clock, stop)
            w.progress = progress
            w.run(options.limit)
            report.sent_now, report.failed_now, report.unknown_now = w.sent, w.failed, w.unknown
            report.deferred_now = w.deferred
        else:
            assert isinstance(bind, Engine)
            totals = _run_processes(config, bind, nl, edition.id, name, options, stop, progress)
            report.sent_now, report.failed_now, report.unknown_now = totals
    finally:
        provider.close()

    report.stopped = stop.is_set()
    with transaction(sessions) as session:
        _close_if_complete(session, config, nl, edition.id, options, report, left_out, clock)
    report.elapsed = time.monotonic() - started
    return report


def _prepare_rows(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition: Edition,
    check: VariantCheck,
    options: SendOptions,
    report: SendReport,
    clock: Clock,
) -> int:
    """Recover rows a dead sender held, reopen what the options ask for, and add a row per
    audience member without one. When this run froze the edition, its checks run first: the
    template (even for an empty audience), and, for a partial run, every variant of the full
    audience. Returns how many recipients a local-time wave left for a later run."""
    if check.edition_was_draft:
        check_items(nl, edition)
        check.check(())
        if options.segments or options.recipient_filter is not None:
            check_full_audience(session, check)
    back, unknown = ledger.recover(session, edition.id, clock())
    report.recovered = back + unknown
    if options.retry_failed:
        ledger.reopen(session, edition.id, ["failed"])
    if options.resend_unknown:
        ledger.reopen(session, edition.id, ["unknown"])
    if edition.status == "sent":
        # Closed editions stay closed: people who subscribed since do not get an old issue.
        report.notes.append(_closed_note(session, edition))
        return 0
    if not options.add_recipients:
        return 0
    with _collector_paused():
        created = _create_rows(session, config, nl, edition.id, check, options, clock)
    report.created, report.skipped_now, report.missed_now, left_out = created
    return left_out


def _closed_note(session: Session, edition: Edition) -> str:
    counts = ledger.counts(session, edition.id)
    what = f"edition {edition.newsletter} {edition.edition_date}"
    if not counts.get("failed") and not counts.get("unknown"):
        return f"{what} was already sent to everyone"
    return (
        f"{what} is closed: every reader of its audience has a settled row (some failed or "
        "unknown, below); nobody new is added"
    )


def _close_if_complete(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition_id: int,
    options: SendOptions,
    report: SendReport,
    left_out: int,
    clock: Clock,
) -> None:
    """Mark the edition sent when every member of its full audience has a settled row, and
    fill in where it stands. A run for some segments closes it only when, counted, nobody of
    the full audience is without a row; a local-time wave that left people for later, a
    stopped run and an empty ledger never close it."""
    counts = ledger.counts(session, edition_id)
    if options.segments:
        report.without_rows = audience_without_rows(session, config, nl, edition_id)
    complete = (
        not left_out
        and not report.stopped
        and sum(counts.values()) > 0
        and open_rows(counts) == 0
        and report.without_rows == 0
    )
    if complete:
        session.execute(
            update(Edition)
            .where(Edition.id == edition_id, Edition.status == "frozen")
            .values(status="sent")
        )
    report.counts = counts
    report.edition_status = (
        session.scalar(select(Edition.status).where(Edition.id == edition_id)) or ""
    )
    if counts.get("deferred"):
        report.next_attempt = ledger.next_due(session, edition_id)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Row creation keeps a few objects per audience member alive for a while, none in
    reference cycles: the cyclic collector would walk them over and over (about 10% of the
    creation). What cycles it leaves are collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _frozen_edition(
    session: Session, nl: NewsletterConfig, edition_date: date, clock: Clock
) -> tuple[Edition, bool]:
    """The edition, frozen in the caller's transaction (which commits it only once the rows
    are in), and whether this call froze it. On PostgreSQL the freeze locks the edition's row,
    so a concurrent sender waits here and then finds it frozen."""
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}")  # deleted since the build
    froze = freeze_edition(session, edition, clock=clock)
    return _load(session, edition.id), froze


def _load(session: Session, edition_id: int) -> Edition:
    edition = session.scalars(
        select(Edition).options(selectinload(Edition.items)).where(Edition.id == edition_id)
    ).one()
    return edition


def _insert(session: Session) -> Any:
    """INSERT that skips rows another process added a moment ago (unique edition+subscriber)."""
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(DELIVERIES).on_conflict_do_nothing()
    return postgresql.insert(DELIVERIES).on_conflict_do_nothing()


def _literals(session: Session, values: dict[str, object]) -> dict[str, Any]:
    """Column values as SQL literals (quoted and escaped by the dialect's literal processors).
    A value the driver would get as text (SQLite's timestamps) is rendered as that very text,
    so the stored value is the one a bound parameter gives."""
    dialect = session.get_bind().dialect
    out: dict[str, Any] = {}
    for name, value in values.items():
        column_type = DELIVERIES.c[name].type
        bind = column_type.dialect_impl(dialect).bind_processor(dialect)
        stored = bind(value) if bind is not None else value
        if isinstance(stored, str):
            render = _TEXT.literal_processor(dialect)
            value = stored
        else:
            render = column_type.literal_processor(dialect)
        assert render is not None, name
        out[name] = literal_column(render(value), column_type)
    return out


def _create_rows(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition_id: int,
    check: VariantCheck,
    options: SendOptions,
    clock: Clock,
) -> tuple[int, int, int, int]:
    """One pending row per audience member not yet in the ledger (a skipped one for those the
    recipient filter says missed their send time); pending rows of people who left the
    audience since become skipped/suppressed. Returns (created pending, skipped, missed, left
    out by the recipient filter for a later run)."""
    existing = ledger.existing_subscribers(session, edition_id)
    segments, wave = options.segments, options.recipient_filter
    segment = ",".join(segments)
    left_out = 0
    now = clock()
    variants: dict[tuple[tuple[str, ...], tuple[int, ...]], tuple[str, str, str]] = {}
    # Rows are inserted variant by variant: claims take one variant's rows in id order, so
    # a batch's rows then sit together in the table and each ledger update of a batch
    # rewrites a few dozen pages rather than ten times as many (measured: 15% of a send).
    pending: dict[str, list[tuple[object, ...]]] = {}
    buffered = 0
    present: set[int] = set()
    missed: list[dict[str, object]] = []
    created = 0
    # What every new row shares is rendered into the statement once: bound per row, SQLAlchemy
    # would process it 100,000 times (the timestamp's conversion alone was 10% of the insert).
    shared = {
        "edition_id": edition_id,
        "segment": segment,
        "state": "pending",
        "attempts": 0,
        "created_at": now,
    }
    insert = _insert(session).values(_literals(session, shared))
    # The rows go to the driver's executemany as they are (plain ints, strings and None): the
    # per-row parameter processing of SQLAlchemy cost a third of the insert.
    compiled = insert.compile(dialect=session.get_bind().dialect, column_keys=list(_ROW_COLUMNS))
    order = compiled.positiontup
    if order is not None:
        assert tuple(order) == _ROW_COLUMNS, order
    sql = str(compiled)
    conn = session.connection()

    def flush(variant: str) -> None:
        nonlocal created, buffered
        rows = pending.pop(variant)
        if order is None:  # named parameters (psycopg)
            params: Any = [dict(zip(_ROW_COLUMNS, r, strict=True)) for r in rows]
        else:
            params = rows
        # The rows this run added: a row another sender inserted first is skipped by the
        # unique key and not counted (executemany sums the rows each insert wrote).
        created += max(conn.exec_driver_sql(sql, params).rowcount, 0)
        buffered -= len(rows)

    for r in audience(session, config, nl, segments):
        if r.subscriber_id in existing:
            present.add(r.subscriber_id)
            continue
        verdict = True if wave is None else wave(r)
        if verdict is False:
            left_out += 1
            continue
        v = variants.get((r.sections, r.blocks))
        if v is None:
            check.check(r.sections, r.blocks)  # refuses a variant Gmail would clip, a bad header
            rendered = check.renderer.variant(r.sections, r.blocks)
            v = variants[(r.sections, r.blocks)] = (
                rendered.key,
                ledger.encode_variant(rendered.sections, rendered.blocks),
                rendered.subject[:300],
            )
        row = (r.subscriber_id, r.email, r.name, v[1], v[0], v[2])
        if verdict is not True:  # rare (a scheduler that was down): plain bound rows
            settled = {"state": "skipped", "settled_at": now, "last_error": verdict}
            missed.append(shared | dict(zip(_ROW_COLUMNS, row, strict=True)) | settled)
            continue
        rows = pending.setdefault(v[0], [])
        rows.append(row)
        buffered += 1
        if len(rows) >= _INSERT_CHUNK:
            flush(v[0])
        elif buffered >= _BUFFERED_ROWS:  # many small variants: bound the memory
            flush(max(pending, key=lambda k: len(pending[k])))
    for variant in list(pending):
        flush(variant)
    # RETURNING names the rows written (a bulk INSERT's rowcount is not reliable on psycopg).
    added = _insert(session).returning(DELIVERIES.c.id)
    missed_count = len(conn.execute(added, missed).all()) if missed else 0
    # Only rows from an earlier run can belong to someone who has left since.
    gone = ledger.pending_of(session, edition_id, sorted(existing - present), segment)
    skipped = ledger.leave_audience(session, gone, now)
    return created, skipped, missed_count, left_out


# --- one worker ------------------------------------------------------------------------------


class _Worker:
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
        self.sessions = sessions
        self.nl = nl
        self.edition = edition
        self.renderer = renderer
        self.provider = provider
        self.options = options
        self.clock = clock
        self.stop = stop
        self.worker = ledger.worker_id() + f":{threading.get_ident() % 100000}"
        self.batch_size = options.batch_size or provider.batch_size
        self.progress: Progress | None = None
        self.sent = self.failed = self.unknown = self.deferred = 0
        d = config.deferral
        self.deferral = ledger.DeferralPolicy(
            timedelta(minutes=d.first_retry_minutes),
            timedelta(hours=d.max_backoff_hours),
            timedelta(hours=d.max_age_hours),
        )
        self._streak = 0  # batches in a row the provider refused message by message
        # Rows deferred before (claimed again): when their first deferral was.
        self._deferred_since: dict[int, datetime] = {}
        self._variants: dict[tuple[tuple[str, ...], tuple[int, ...]], _Variant] = {}
        self._links = Links(config, nl, edition)
        self._message_id = message_id_parts(nl, edition.edition_date)
        self._started = time.monotonic()
        self._remaining = 0
        # One long-lived connection per thread for the ledger's writes, Core statements: a
        # Session per transaction cost more than the statements of a small batch.
        self._local = threading.local()
        self._connections: list[Connection] = []
        # SQLite has one writer: the claiming thread and the delivery thread take turns on a
        # lock, which wakes the waiter at once; the driver's busy handler would sleep 1-100 ms
        # between retries (measured: mark-handed took 23 ms a batch instead of 9).
        bind = sessions.kw.get("bind")
        sqlite_db = bind is None or bind.dialect.name == "sqlite"
        self._writer: AbstractContextManager[Any] = threading.Lock() if sqlite_db else nullcontext()
        # Requests a worker may have with the provider at once (SendGrid: `in_flight`): the
        # provider's round trips overlap each other and the preparation of the next batch.
        self.in_flight = max(1, provider.in_flight)
        self._current = threading.local()  # the _Delivery a delivery thread is working on
        self._tally = threading.Lock()

    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "connection", None)
        if conn is None:
            conn = self._local.connection = self.sessions.kw["bind"].connect()
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer:
            conn = self._connection()
            with conn.begin():
                yield conn

    def run(self, limit: int | None) -> None:
        """Claim, prepare and deliver batch after batch. The next batch is claimed and
        personalised while up to `in_flight` batches are with the provider (a delivery thread
        each), so the provider's round trips overlap the CPU work; progress is reported per
        delivered batch."""
        with self._write() as conn:
            # Deferred rows whose time has come are claimed like pending ones.
            ledger.wake_deferred(conn, self.edition.id, self.clock())
        with self.sessions() as session:
            self._remaining = ledger.pending(session, self.edition.id)
        if limit is not None:
            self._remaining = min(self._remaining, limit)
        taken = 0
        in_flight: deque[_Delivery] = deque()
        pool = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="digest-deliver")
        # Everything alive now (modules, SQLAlchemy's metadata, the rendered variants) outlives
        # the loop: frozen, the collector stops re-walking it on every full collection, while
        # each batch allocates thousands of short-lived objects (about 9% of a SendGrid send).
        gc.freeze()
        try:
            while not self.stop.is_set() and (limit is None or taken < limit):
                n = self.batch_size if limit is None else min(self.batch_size, limit - taken)
                if in_flight:
                    # Bounded: a provider that never checkpoints (the outbox) only costs this.
                    in_flight[-1].handed.wait(_HANDED_WAIT)
                claimed = self._claim(n)
                if not claimed:
                    break
                taken += len(claimed)
                try:
                    delivery = _Delivery()
                    batches = self._prepare(claimed, delivery)
                    while in_flight and (len(in_flight) >= self.in_flight or self.stop.is_set()):
                        # A provider error of an earlier batch stops here.
                        in_flight.popleft().result()
                        self._report()
                    if self.stop.is_set():
                        raise _Stopped
                except BaseException:
                    with self._write() as session:
                        ledger.release(session, [c.id for c in claimed], self.worker, self.clock())
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
            pool.shutdown(wait=True)
            for conn in self._connections:
                conn.close()

    def _claim(self, n: int) -> list[Claimed]:
        with self._write() as session:
            now = self.clock()
            claimed = ledger.claim(session, self.edition.id, self.worker, n, now)
            # Nothing pending: rows deferred earlier in a long send may be due by now.
            if not claimed and ledger.wake_deferred(session, self.edition.id, now):
                claimed = ledger.claim(session, self.edition.id, self.worker, n, now)
        for c in claimed:
            if c.deferred_since is not None:
                self._deferred_since[c.id] = c.deferred_since
        return claimed

    def _report(self) -> None:
        if self.progress is None:
            return
        elapsed = time.monotonic() - self._started
        done = self.sent + self.failed + self.unknown + self.deferred
        rate = done / elapsed if elapsed > 0 else 0.0
        left = max(self._remaining - done, 0)
        eta = left / rate if rate > 0 else None
        self.progress(
            ProgressEvent(
                self.sent, self.failed, self.unknown, self._remaining, rate, eta, self.deferred
            )
        )

    def _variant(self, sections: tuple[str, ...], blocks: tuple[int, ...]) -> _Variant:
        v = self._variants.get((sections, blocks))
        if v is None:
            rendered = self.renderer.variant(sections, blocks)
            message = VariantMessage(self.config, self.nl, self.edition.edition_date, rendered.key)
            v = self._variants[(sections, blocks)] = _Variant(
                rendered, message, self._links.view_url, _plain_links(self.config)
            )
        return v

    def _prepare(self, claimed: list[Claimed], delivery: _Delivery) -> list[Batch]:
        groups: dict[tuple[tuple[str, ...], tuple[int, ...]], list[Claimed]] = {}
        for c in claimed:
            groups.setdefault((c.sections, c.blocks), []).append(c)
        batches: list[Batch] = []
        unbuilt: list[Outcome] = []
        for pair, rows in groups.items():
            batch = self._batch(self._variant(*pair), rows, unbuilt)
            if batch.messages:
                batches.append(batch)
        if unbuilt:
            # Settled now: these rows never reach the provider; their batch goes on without them.
            with self._write() as session:
                self._settle(session, unbuilt)
            self._count(unbuilt, delivery)  # a batch nobody's message builds counts as refused
        return batches

    def _deliver(self, delivery: _Delivery, claimed: list[Claimed], batches: list[Batch]) -> None:
        self._current.delivery = delivery
        try:
            for batch in batches:
                self._send_with_retries(batch)
            self._judge(delivery, len(claimed))
        finally:
            # Anything still held (stop, auth failure, an error) is let go: back to pending
            # when it never reached the provider, `unknown` when it did.
            held = [c.id for c in claimed if c.id not in delivery.done]
            try:
                if held:
                    with self._write() as session:
                        ledger.release(session, held, self.worker, self.clock())
            finally:
                delivery.handed.set()

    def _batch(self, v: _Variant, rows: list[Claimed], unbuilt: list[Outcome]) -> Batch:
        """The batch of these rows; a row whose message cannot be personalised goes to
        `unbuilt` (failed, with the reason) and the others go on."""
        when = self.clock()
        links = self._links
        for c in rows if v.template is not None and not v.verified else ():
            try:
                personal = links.personal(c.subscriber_id, c.email, c.name)
                subs = v.substitutions(
                    c.name, c.email, personal.unsubscribe_url, personal.preferences_url
                )
                v.verify(personalise(v.rendered, personal), subs)
                break
            except BUILD_ERRORS:
                continue  # that reader fails below; the check needs a reader who can be built
        template = v.template
        prefix, suffix = self._message_id
        messages: list[Outgoing] = []
        substitutions: list[dict[str, str]] = []
        # Per recipient: this loop is most of what a send costs the sender besides the ledger.
        for c in rows:
            try:
                unsubscribe, preferences = links.urls(c.subscriber_id)
                message_id = f"{prefix}{c.subscriber_id}{suffix}"
                to = Addressee(c.email, c.name, unsubscribe, message_id, c.id)
                if template is not None:
                    subs = v.substitutions(c.name, c.email, unsubscribe, preferences)
                    substitutions.append(subs)
                    messages.append(Outgoing(to, template))
                else:
                    personal = Personal(c.email, c.name, unsubscribe, preferences, links.view_url)
                    messages.append(Outgoing(to, personalise(v.rendered, personal)))
            except BUILD_ERRORS as e:
                unbuilt.append(unbuildable(c.id, e))
        return Batch(v.message, messages, when, template=template, substitutions=substitutions)

    def _checkpoint(self, handed: Sequence[int], settled: Sequence[Outcome]) -> None:
        """Called by the provider just before messages leave (SMTP: once per message, before
        the final dot) and with every refusal as it comes: one commit records both."""
        delivery: _Delivery = self._current.delivery
        with self._write() as session:
            if not handed:
                # Settles alone may be forgotten by a database power cut (the row falls back
                # to handed, then `unknown`: no resend); a hand-over mark must not be.
                ledger.fast_commits(session)
            if handed:
                ledger.mark_handed(session, handed, self.worker, self.clock())
            recorded = self._settle(session, settled) if settled else []
        delivery.recorded.update(o.delivery_id for o in settled)
        self._count(recorded, delivery)
        delivery.handed.set()

    def _settle(self, session: Connection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Record outcomes: final ones settle their rows (deferred ones on the backoff); a
        RETRY or AUTH answer means the provider does not have the message, so the row is no
        longer `handed` (a crash from here on may send it again safely). Returns the final
        outcomes as recorded (a deferral past the maximum age is a failure)."""
        final = [o for o in outcomes if o.kind in _FINAL]
        if self._deferred_since:
            final = [self._aged(o) for o in final]
        if final:
            ledger.settle(
                session, final, self.worker, self.provider.name, self.clock(), self.deferral
            )
        back = [o.delivery_id for o in outcomes if o.kind in (Kind.AUTH, Kind.RETRY)]
        if back:
            ledger.unhand(session, back, self.worker)
        return final

    def _aged(self, o: Outcome) -> Outcome:
        """A temporary answer to a row first deferred more than the maximum age ago fails it."""
        since = self._deferred_since.get(o.delivery_id)
        if o.kind is Kind.DEFER and self.deferral.expired(since, self.clock()):
            return o._replace(kind=Kind.FAILED, error=self.deferral.final_error(o.error))
        return o

    def _count(self, outcomes: Iterable[Outcome], delivery: _Delivery | None) -> None:
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
        with self._tally:
            self.sent += sent
            self.failed += failed
            self.unknown += unknown
            self.deferred += deferred

    def _send_with_retries(self, batch: Batch) -> None:
        """Deliver a batch, retrying what the provider answered RETRY (its own trouble: 429,
        5xx, a lost connection) with backoff. A round in which some messages got an answer
        does not count as an attempt: only a provider that answers nothing but "later" runs
        out of attempts, and then the send stops with those rows pending."""
        policy = self.options.retry
        delivery: _Delivery = self._current.delivery
        attempt = 1
        while True:
            delivery.recorded.clear()
            outcomes = self.provider.send(batch, self._checkpoint)
            rest = [o for o in outcomes if o.delivery_id not in delivery.recorded]
            if rest:
                with self._write() as session:
                    rest = self._settle(session, rest)
                self._count(rest, delivery)
            auth = [o for o in outcomes if o.kind is Kind.AUTH]
            if auth:
                raise ProviderError(
                    f"{self.provider.name} refused the credentials ({auth[0].error}); check "
                    f"{self._credentials_hint()}. Nothing more was sent; unsent rows stay pending"
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

    def _judge(self, delivery: _Delivery, size: int) -> None:
        """Stop the send when the provider refused every message of _STREAK whole batches in
        a row (see _STREAK); one answered message resets the count."""
        with self._tally:
            if delivery.accepted:
                self._streak = 0
                return
            if size < _STREAK_BATCH or delivery.refused < size:
                return
            self._streak += 1
            if self._streak < _STREAK:
                return
        raise ProviderError(
            f"{self.provider.name} refused every message of {_STREAK} batches in a row (last "
            f"answer: {delivery.last_refusal}); stopping: the refused rows say why, the rest "
            "stay pending. Run the same command again once the cause is fixed"
        )

    def _credentials_hint(self) -> str:
        if self.provider.name == "sendgrid":
            return f"the API key in ${self.config.sendgrid.api_key_env}"
        if self.provider.name == "smtp":
            return (
                f"providers.smtp.username and ${self.config.smtp.password_env} "
                f"for {self.config.smtp.host}:{self.config.smtp.port}"
            )
        return "the provider's credentials"


def _subset(batch: Batch, ids: set[int]) -> Batch:
    keep = [i for i, m in enumerate(batch.messages) if m.delivery_id in ids]
    return Batch(
        batch.variant,
        [batch.messages[i] for i in keep],
        batch.when,
        template=batch.template,
        substitutions=[batch.substitutions[i] for i in keep] if batch.substitutions else [],
    )


class _Delivery:
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


class _Stopped(Exception):
    """The stop event was set while the next batch was being prepared."""


class _Variant:
    """A rendered variant and the same variant with tags in place of the personal values:
    SendGrid fills the tags server-side (one request per variant batch), SMTP and the outbox
    fill them into pre-encoded MIME pieces (digest.message)."""

    def __init__(
        self,
        rendered: RenderedVariant,
        message: VariantMessage,
        view_url: str,
        plain: frozenset[str] = frozenset(),
    ) -> None:
        self.rendered = rendered
        self.message = message
        self.template: Content | None = None
        self.verified = False
        nonce = rendered.nonce
        self._html_tags = {s: f"%%{nonce}h{i}%%" for i, s in enumerate(SLOTS)}
        # Slots in `plain` read the same escaped for HTML as in text: one tag serves both.
        self._text_tags = {
            s: self._html_tags[s] if s in plain else f"%%{nonce}t{i}%%" for i, s in enumerate(SLOTS)
        }
        self.view_url = view_url
        # The web-version link is the same for every reader: it goes into the template itself,
        # two substitutions fewer per recipient (verify() still compares with personalise()).
        html = personalise(rendered, _tag_personal(self._html_tags, view_url)).html
        text_ = personalise(rendered, _tag_personal(self._text_tags, view_url)).text
        self.template = Personalised(rendered.subject, html, text_)
        # (HTML tag, text tag, slot index) of the slots the template uses; one tag when shared.
        self._tags = [
            (self._html_tags[s], self._text_tags[s], i)
            for i, s in enumerate(SLOTS)
            if self._html_tags[s] in html or self._text_tags[s] in text_
        ]

    def substitutions(
        self, name: str | None, email: str, unsubscribe_url: str, preferences_url: str
    ) -> dict[str, str]:
        # personal_values() decides how each value is shown and escaped, as for personalise().
        raw, escaped = personal_values(
            name,
            email,
            unsubscribe_url,
            preferences_url,
            self.view_url,
            self.rendered.name_fallback,
        )
        out: dict[str, str] = {}
        for html_tag, text_tag, i in self._tags:
            out[html_tag] = escaped[i]
            if text_tag != html_tag:
                out[text_tag] = raw[i]
            elif raw[i] != escaped[i]:
                raise AssertionError(f"{SLOTS[i]} needs HTML escaping: it cannot share one tag")
        return out

    def verify(self, expected: Personalised, subs: dict[str, str]) -> None:
        """Check once that substitution reproduces personalise() exactly; otherwise send this
        variant one message per recipient."""
        assert self.template is not None
        got = [self.template.subject, self.template.html, self.template.text]
        for tag, value in subs.items():
            got = [g.replace(tag, value) for g in got]
        self.verified = True
        if got != [expected.subject, expected.html, expected.text]:
            self.template = None


def _plain_links(config: Config) -> frozenset[str]:
    """The signed links when HTML escaping leaves them alone: tokens are URL-safe base64 and
    dots, so that holds whenever it holds for the site's base URL."""
    base = config.site.base_url
    return (
        frozenset({"unsubscribe_url", "preferences_url"}) if escape(base) == base else frozenset()
    )


def _tag_personal(tags: dict[str, str], view_url: str) -> Personal:
    return Personal(
        email=tags["email"],
        name=tags["first_name"],
        unsubscribe_url=tags["unsubscribe_url"],
        preferences_url=tags["preferences_url"],
        view_url=view_url,
        click=tags["click"],
    )


# --- several worker processes (PostgreSQL) ---------------------------------------------------


def _run_processes(
    config: Config,
    engine: Engine,
    nl: NewsletterConfig,
    edition_id: int,
    provider_name: str,
    options: SendOptions,
    stop: threading.Event,
    progress: Progress | None,
) -> tuple[int, int, int]:
    ctx = multiprocessing.get_context("spawn")
    url = engine.url.render_as_string(hide_password=False)
    child_stop = ctx.Event()
    errors = ctx.Queue()
    results = ctx.Queue()
    share = None if options.limit is None else -(-options.limit // options.workers)
    procs = [
        ctx.Process(
            target=_worker_process,
            args=(config, url, nl.id, edition_id, provider_name, options, share, child_stop),
            kwargs={"errors": errors, "results": results},
            daemon=True,
        )
        for _ in range(options.workers)
    ]
    for p in procs:
        p.start()
    factory = session_factory(engine)
    started = time.monotonic()
    with factory() as session:
        base = ledger.counts(session, edition_id)
    total = base["pending"] if share is None else min(base["pending"], options.limit or 0)
    while any(p.is_alive() for p in procs):
        if stop.wait(0.5):
            child_stop.set()
        if progress is not None:
            with factory() as session:
                now = ledger.counts(session, edition_id)
            sent, failed, unknown = (now[s] - base[s] for s in ("sent", "failed", "unknown"))
            elapsed = time.monotonic() - started
            rate = (sent + failed + unknown) / elapsed if elapsed else 0.0
            left = max(total - sent - failed - unknown, 0)
            progress(
                ProgressEvent(sent, failed, unknown, total, rate, left / rate if rate else None)
            )
    for p in procs:
        p.join()
    totals = [0, 0, 0]
    while not results.empty():
        for i, n in enumerate(results.get()):
            totals[i] += n
    if not errors.empty():
        raise ProviderError(errors.get())
    return totals[0], totals[1], totals[2]


def _worker_process(
    config: Config,
    url: str,
    newsletter_id: str,
    edition_id: int,
    provider_name: str,
    options: SendOptions,
    limit: int | None,
    stop: Any,
    *,
    errors: Any,
    results: Any,
) -> None:
    from digest.errors import DigestError
    from digest.lifeline import die_with_parent

    die_with_parent()  # kill -9 of `digest send` stops its workers too
    engine = make_engine(url)
    sessions = session_factory(engine)
    nl = config.newsletter(newsletter_id)
    try:
        provider = make_provider(config, provider_name, nl)
        with transaction(sessions) as session:
            edition = _load(session, edition_id)
            renderer = send_renderer(session, config, nl, edition, options.subject)
        w = _Worker(config, sessions, nl, edition, renderer, provider, options, utcnow, stop)
        try:
            w.run(limit)
        finally:
            provider.close()
        results.put((w.sent, w.failed, w.unknown))
    except DigestError as e:
        errors.put(str(e))
    finally:
        engine.dispose()


# --- dry run ---------------------------------------------------------------------------------


def _dry_run(
    config: Config,
    sessions: sessionmaker[Session],
    nl: NewsletterConfig,
    edition_date: date,
    options: SendOptions,
    clock: Clock,
    provider: Provider | None,
) -> SendReport:
    """Everything a send does except freezing and the ledger: each message goes to the outbox
    folder (or the given provider) with a made-up delivery number."""
    from digest.providers.outbox import OutboxProvider

    out = provider or OutboxProvider(config.outbox.dir / "dry-run")
    report = SendReport(nl.id, edition_date, out.name, {}, dry_run=True)
    with transaction(sessions) as session:
        edition = get_edition(session, nl.id, edition_date)
        if edition is None:
            edition = build_edition(session, config, nl, edition_date, clock=clock).edition
            session.flush()
        edition = _load(session, edition.id)
        renderer = Renderer(config, nl, edition)
        links = Links(config, nl, edition)
        when = clock()
        by_variant: dict[str, tuple[VariantMessage, list[Outgoing]]] = {}
        for n, r in enumerate(audience(session, config, nl, options.segments), start=1):
            if options.limit is not None and n > options.limit:
                break
            rendered = renderer.variant(r.sections, r.blocks)
            check_size(rendered)
            personal = links.personal(r.subscriber_id, r.email, r.name)
            to = Addressee(
                r.email,
                r.name,
                personal.unsubscribe_url,
                make_message_id(nl, edition_date, r.subscriber_id),
                delivery_id=n,
            )
            slot = by_variant.get(rendered.key)
            if slot is None:
                vm = VariantMessage(config, nl, edition_date, rendered.key)
                slot = by_variant[rendered.key] = (vm, [])
            slot[1].append(Outgoing(to, personalise(rendered, personal)))
        for vm, messages in by_variant.values():
            outcomes = out.send(Batch(vm, messages, when), lambda handed, settled: None)
            report.sent_now += sum(o.kind is Kind.ACCEPTED for o in outcomes)
            report.failed_now += sum(o.kind is not Kind.ACCEPTED for o in outcomes)
    report.counts = {"written": report.sent_now}
    report.edition_status = edition.status
    return report


# --- reports and previews --------------------------------------------------------------------


def ledger_report(
    session: Session, config: Config, newsletter_id: str, edition_date: date
) -> ledger.LedgerReport:
    """`digest sends report`: the edition's ledger by state, segment and variant."""
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    return ledger.report(session, edition.id)


def variant_label(r: ledger.LedgerReport, variant: str, nl: NewsletterConfig) -> str:
    """A variant as a reader of the report knows it: its sections, and the segment blocks it
    shows (by the segment they are for, as the config names them now)."""
    label = ", ".join(r.variant_sections.get(variant, ()))
    shown = [
        nl.blocks[i].segment if i < len(nl.blocks) else f"block #{i + 1}"
        for i in r.variant_blocks.get(variant, ())
    ]
    if shown:
        label += f"; block for {', '.join(shown)}"
    return label


def ledger_csv(session: Session, config: Config, newsletter_id: str, edition_date: date) -> str:
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    out = io.StringIO()
    rows = map(csv_row, ledger.csv_rows(session, edition.id))  # formula-safe cells
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def format_report(r: ledger.LedgerReport, nl: NewsletterConfig) -> str:
    def states(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no rows"

    total = sum(r.counts.values())
    lines = [
        f"{r.newsletter} {r.edition_date} (edition {r.edition_status}): {total} recipient(s)",
        f"  {r.approval}",
        f"  {states(r.counts)}",
        "by segment:",
        *(f"  {seg}: {states(c)}" for seg, c in sorted(r.by_segment.items())),
        "by variant:",
        *(
            f"  {v} ({variant_label(r, v, nl)}): {states(c)}"
            for v, c in sorted(r.by_variant.items())
        ),
    ]
    if r.resolved:
        lines.append(f"resolved by provider events (no answer had come back): {states(r.resolved)}")
    if r.failures:
        lines.append("not delivered:")
        lines += [
            f"  {f.email}  {f.state}  after {f.attempts} attempt(s): {f.error}"
            + (
                f" (next attempt {f.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
                if f.next_attempt_at
                else ""
            )
            for f in r.failures
        ]
    return "\n".join(lines)


def preview_eml(mail: PreviewMail) -> str:
    """`digest preview --format eml`: the message exactly as the send builds it for that
    reader (only Date differs: it is the preview's time)."""
    nl, edition = mail.newsletter, mail.edition
    if mail.recipient is not None:
        personal = personal_links(mail.config, nl, edition, mail.recipient)
        subscriber_id = mail.recipient.subscriber_id
    else:
        personal = sample_personal(mail.config, nl, edition)
        subscriber_id = 0
    to = Addressee(
        personal.email,
        personal.name,
        personal.unsubscribe_url,
        make_message_id(nl, edition.edition_date, subscriber_id),
    )
    message = VariantMessage(mail.config, nl, edition.edition_date, mail.variant.key)
    # The send's own path (template + substitutions), so the bytes are the same.
    v = _Variant(mail.variant, message, personal.view_url, _plain_links(mail.config))
    subs = v.substitutions(
        personal.name, personal.email, personal.unsubscribe_url, personal.preferences_url
    )
    v.verify(personalise(mail.variant, personal), subs)
    # UTF-8: a non-ASCII mailbox is written as such (RFC 6532); everything else is ASCII.
    if v.template is None:
        return message.mime(mail.mail, to, utcnow()).decode("utf-8")
    return message.mime(v.template, to, utcnow(), subs).decode("utf-8")


register_format("eml", preview_eml)
