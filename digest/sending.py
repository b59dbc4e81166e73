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

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import one_writer, transaction
from digest.dkim import signer_for
from digest.editions import Edition, build_edition, freeze_edition, get_edition
from digest.errors import EXIT_UNDELIVERED, EditionPruned, NotFound
from digest.ledger import Claimed
from digest.ledger_report import format_report, ledger_csv, ledger_report, variant_label
from digest.outgoing import MessageBuilder
from digest.partitions import ensure_for
from digest.preflight import (
    CHECK_ERRORS,
    VariantCheck,
    audience_without_rows,
    check_full_audience,
    check_items,
    open_rows,
    refusal,
)
from digest.providers import make_provider
from digest.providers.base import Kind, Outcome, Provider
from digest.render import Renderer, check_size
from digest.same_day import same_day
from digest.send_options import (
    Progress,
    ProgressEvent,
    RecipientFilter,
    RetryPolicy,
    SendOptions,
)
from digest.send_rows import collector_paused, create_rows
from digest.send_worker import Worker, load_for_send
from digest.tracking import send_renderer
from subscribers.audience import audience

__all__ = [
    "Progress",
    "ProgressEvent",
    "RecipientFilter",
    "RetryPolicy",
    "SendOptions",
    "SendReport",
    "format_report",
    "ledger_csv",
    "ledger_report",
    "make_provider",
    "send_edition",
    "variant_label",
]


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
    seen_today: int = 0  # readers sent every story of their copy today in another newsletter
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
        if self.seen_today:
            lines.append(
                f"{self.seen_today} recipient(s) were sent every story of their copy today in "
                "another newsletter: recorded as skipped"
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


def refuse_pruned(session: Session, newsletter: str, edition_date: date) -> None:
    """A pruned edition's ledger, which says who got it, is gone: sending it again would send
    it to everyone again."""
    from digest.summaries import pruned_on

    edition = get_edition(session, newsletter, edition_date)
    when = pruned_on(session, edition.id) if edition is not None else None
    if when is not None:
        raise EditionPruned(
            f"edition {newsletter} {edition_date} was pruned on {when:%Y-%m-%d} "
            "(`digest sends prune`): its ledger is gone, so it is never sent again"
        )


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
        refuse_pruned(session, nl.id, edition_date)
    # The month's ledger partition (PostgreSQL), made before the send's transaction locks the
    # ledger (creating a partition locks the whole table).
    ensure_for(sessions.kw["bind"], edition_date)
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
    if workers > 1 and one_writer(sessions):
        report.notes.append(
            f"note: SQLite runs one worker (asked for {workers}); "
            "several workers need PostgreSQL (FOR UPDATE SKIP LOCKED)"
        )
        workers = 1
    try:
        if workers == 1:
            w = Worker(config, sessions, nl, edition, renderer, provider, options, clock, stop)
            w.progress = progress
            w.run(options.limit)
            totals = w.tally.counts()
        else:
            from digest.send_processes import run_processes

            bind = sessions.kw["bind"]
            assert isinstance(bind, Engine)
            totals = run_processes(
                config, bind, nl, edition, renderer, name, options, stop, progress
            )
        report.sent_now, report.failed_now, report.unknown_now, report.deferred_now = totals
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
    with collector_paused():
        created = create_rows(session, config, nl, edition.id, check, options, clock)
    report.created, report.skipped_now, report.missed_now, left_out, report.seen_today = created
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
    return load_for_send(session, edition.id), froze


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
    """Everything a send does except freezing and the ledger: each message is built as the
    send builds it (digest.outgoing) and goes to the outbox folder (or the given provider)
    with a made-up delivery number."""
    from digest.providers.outbox import OutboxProvider

    out = provider or OutboxProvider(config.outbox.dir / "dry-run")
    report = SendReport(nl.id, edition_date, out.name, {}, dry_run=True)
    with transaction(sessions) as session:
        edition = get_edition(session, nl.id, edition_date)
        if edition is None:
            edition = build_edition(session, config, nl, edition_date, clock=clock).edition
            session.flush()
        edition = load_for_send(session, edition.id)
        renderer = Renderer(config, nl, edition)
        builder = MessageBuilder(config, nl, edition, renderer)
        today = same_day(session, config, nl, edition, clock())  # as the send would leave out
        rows: list[Claimed] = []
        for n, r in enumerate(audience(session, config, nl, options.segments), start=1):
            if options.limit is not None and n > options.limit:
                break
            skip = today.left_out(renderer, r) if today is not None else ()
            if skip is None:  # nothing new for them today: the send skips them
                continue
            check_size(builder.variant(r.sections, r.blocks, skip).rendered)
            rows.append(
                Claimed(n, r.subscriber_id, r.email, r.name, r.sections, "", r.blocks, skip=skip)
            )
        unbuilt: list[Outcome] = []
        for batch in builder.batches(rows, clock(), unbuilt):
            outcomes = out.send(batch, lambda handed, settled: None)
            report.sent_now += sum(o.kind is Kind.ACCEPTED for o in outcomes)
            report.failed_now += sum(o.kind is not Kind.ACCEPTED for o in outcomes)
        report.failed_now += len(unbuilt)
    report.counts = {"written": report.sent_now}
    report.edition_status = edition.status
    return report
