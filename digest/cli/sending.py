"""Commands that render and send: `digest preview`, `digest send`, `digest sends ...`."""

from __future__ import annotations

from datetime import date
from typing import Any

import click

from digest.cli.base import App, parse_date, pass_app
from digest.clock import utcnow
from digest.providers import NAMES as PROVIDER_NAMES

# --- preview (rendering) ---------------------------------------------------------------------


@click.command()
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today in the newsletter's zone).")
@click.option("--segment", help="Preview as the first member of this segment.")
@click.option("--subscriber", help="Preview exactly what this subscriber (email or id) gets.")
@click.option(
    "--format", "fmt", default="html", show_default=True, help="html, text or eml (as sent)."
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE, not stdout.")
@click.option("--open", "open_", is_flag=True, help="Open the preview in the default browser.")
@click.option("--serve", is_flag=True, help="Serve all variants on 127.0.0.1, fresh on reload.")
@click.option(
    "--port", default=8025, show_default=True, type=click.IntRange(0, 65535), help="For --serve."
)
@pass_app
def preview(app: App, newsletter, date_, segment, subscriber, fmt, output, open_, serve, port):
    """Show the stored edition's email exactly as a reader gets it."""
    import os
    import tempfile
    import webbrowser
    from pathlib import Path

    from digest.preview import PreviewServer, preview_mail, render_preview

    nl = app.config.newsletter(newsletter)
    day = parse_date(date_, nl.tz)
    if serve:
        server = PreviewServer(app.config, app.sessions, nl, day, port=port)
        click.echo(f"previewing {nl.id} {day} at {server.url} (Ctrl-C to stop)")
        if open_:
            webbrowser.open(server.url)
        server.run()
        return
    with app.sessions() as session:
        mail = preview_mail(session, app.config, nl, day, segment=segment, subscriber=subscriber)
        document = render_preview(mail, fmt)
    if mail.size_warning:
        click.echo(f"warning: {mail.size_warning}", err=True)
    if open_ and not output:
        suffix = ".html" if fmt == "html" else f".{fmt}.txt"
        handle, output = tempfile.mkstemp(prefix="digest-preview-", suffix=suffix)
        os.close(handle)
    if output:
        Path(output).write_bytes(document.encode("utf-8"))
        click.echo(f"wrote {output}", err=True)
        if open_:
            webbrowser.open(Path(output).resolve().as_uri())
    else:
        click.echo(document, nl=False)


# --- sending ---------------------------------------------------------------------------------


def _send_progress_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
        transient=False,
    )


def run_send(app: App, newsletter_id: str, day: date, options: Any) -> Any:
    """send_edition with a progress bar; the first Ctrl-C finishes the batch in hand and stops
    cleanly, a second one aborts (the ledger still knows what was handed over)."""
    import signal
    import threading

    from digest.abtest import ab_send, runs_ab
    from digest.sending import send_edition

    # A/B subjects (issue 15, the config's or the edition's): one step (the sample, or the
    # winner once it is due); run `digest send` again, or let `digest schedule` do it.
    ab = not options.dry_run and runs_ab(app.config, app.sessions, newsletter_id, day)
    stop = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after the current batch (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    if ab:
        try:
            return ab_send(
                app.config, app.sessions, newsletter_id, day, options, clock=utcnow, stop=stop
            )
        finally:
            signal.signal(signal.SIGINT, previous)
    # Shown from the first delivered batch on: a send refused by its checks prints only its
    # error line.
    bar = _send_progress_bar()
    task: Any = None

    def progress(e: Any) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("send", total=None, detail="")
        bar.update(
            task,
            completed=e.done,
            total=e.total,
            detail=f"sent {e.sent} · failed {e.failed} · unknown {e.unknown} · {e.rate:.0f}/s",
        )

    try:
        return send_edition(
            app.config,
            app.sessions,
            newsletter_id,
            day,
            options,
            clock=utcnow,
            progress=progress,
            stop=stop,
        )
    finally:
        if task is not None:
            bar.stop()
        signal.signal(signal.SIGINT, previous)


@click.command("send")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today in the newsletter's zone).")
@click.option("--dry-run", is_flag=True, help="Write every message to the outbox; no ledger.")
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
    help="Provider for this run (default: the newsletter's).",
)
@click.option("--segment", "segments", multiple=True, help="Only this segment (repeatable).")
@click.option("--limit", type=click.IntRange(0, None), help="Send at most N messages this run.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (PostgreSQL; SQLite runs one).",
)
@click.option("--retry-failed", is_flag=True, help="Send again to rows that failed.")
@click.option("--resend-unknown", is_flag=True, help="Send again to rows whose fate is unknown.")
@click.option("--force", is_flag=True, help="Send even if a content gate says no.")
@click.option(
    "--if-due",
    is_flag=True,
    help="Only if the edition is due now and not yet sent (cron, systemd timers).",
)
@pass_app
def send_cmd(
    app: App,
    newsletter,
    date_,
    dry_run,
    provider,
    segments,
    limit,
    workers,
    retry_failed,
    resend_unknown,
    force,
    if_due,
):
    """Deliver the edition to its audience, exactly once per subscriber (safe to re-run).

    The edition closes (sent) once every member of its full audience has a settled row; a
    --segment or --limit run leaves it open for the next full send. Exit codes: 0 done; 1 the
    send failed (nothing frozen when its checks fail); 2 configuration; 3 held back (a gate,
    approval); 4 it ended with failed, deferred or unknown rows (the summary says what next).
    """
    from digest.sending import SendOptions

    nl = app.config.newsletter(newsletter)
    options = SendOptions(
        provider=provider,
        dry_run=dry_run,
        segments=tuple(segments),
        limit=limit,
        workers=workers,
        retry_failed=retry_failed,
        resend_unknown=resend_unknown,
    )
    if if_due:
        click.get_current_context().exit(_send_if_due(app, nl.id, options, force, date_, dry_run))
    day = parse_date(date_, nl.tz)
    if not dry_run:
        from digest.scheduler import prepare_edition

        prepare_edition(app.config, app.sessions, nl, day, clock=utcnow, gates=not force)
    report = run_send(app, nl.id, day, options)
    click.echo(report.summary())
    # 4: the send ran to its end but someone did not get the edition (README, exit codes).
    click.get_current_context().exit(report.exit_code)


def _send_if_due(app: App, newsletter_id: str, options: Any, force, date_, dry_run) -> int:
    """`send --if-due`: the scheduler's run for one newsletter (see README, Scheduled sends)."""
    from digest.scheduler import Runner, configure_logging, exit_code, run_once

    if date_ or dry_run:
        raise click.UsageError("--if-due sends the edition due now: drop --date / --dry-run")
    configure_logging(json_lines=False)
    results = run_once(
        Runner(app.config, app.sessions, utcnow, options=options, force=force), newsletter_id
    )
    for r in results:
        # A run waiting for its deferred rows' next attempt sent nothing and logged quietly.
        if r.outcome in ("finished", "busy") or (r.outcome == "deferred" and not r.undelivered):
            click.echo(f"{r.newsletter} {r.edition_date}: nothing to do ({r.message})")
    return exit_code(results)


@click.group("sends")
def sends_group() -> None:
    """The delivery ledger: who got an edition, who did not, and why; prune old editions."""


@sends_group.command("report")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today in the newsletter's zone).")
@click.option("--csv", "as_csv", is_flag=True, help="Every recipient's row as CSV.")
@pass_app
def sends_report(app: App, newsletter, date_, as_csv):
    """Counts by state, segment and variant; the failures with their reasons."""
    from digest.sending import format_report, ledger_csv, ledger_report

    nl = app.config.newsletter(newsletter)
    day = parse_date(date_, nl.tz)
    with app.sessions() as session:
        if as_csv:
            click.echo(ledger_csv(session, app.config, nl.id, day), nl=False)
        else:
            click.echo(format_report(ledger_report(session, app.config, nl.id, day), nl))


@sends_group.command("prune")
@click.option(
    "--older-than", "older_than", required=True, help="Age of the editions to prune, e.g. 400d."
)
@click.option("--dry-run", is_flag=True, help="Say what would go; change nothing.")
@pass_app
def sends_prune(app: App, older_than, dry_run):
    """Summarise, then drop, the ledger rows and clicks of editions older than --older-than
    (PostgreSQL: whole monthly partitions). Reports keep showing them; they are never re-sent."""
    from digest.prune import parse_age, prune

    age = parse_age(older_than)
    click.echo(prune(app.sessions, utcnow(), age, dry_run=dry_run).summary())
