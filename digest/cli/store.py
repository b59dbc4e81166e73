"""Commands for the store: `digest db`, `digest ingest`, `digest articles`, `digest demo`."""

from __future__ import annotations

import click

from digest.cli.base import App, parse_since, pass_app
from digest.clock import utcnow

# --- database --------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema (keeps existing data)."""
    from digest.config import database_url
    from digest.db import current_revisions, make_engine, upgrade

    engine = make_engine(database_url())
    upgrade(engine)
    click.echo(f"database at {', '.join(sorted(current_revisions(engine)))}: {engine.url!r}")


# --- articles --------------------------------------------------------------------------------


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--section", help="Section for items whose feed gives none.")
@click.option("--source", help="Source name for items that carry none (default: the feed title).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "feed", "json", "csv"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--timezone",
    help="Zone of dates given without a time (default: the newsletters' own, when they share one).",
)
@click.option(
    "--strict", is_flag=True, help="Store nothing (exit 1) if any item of any file is rejected."
)
@pass_app
def ingest(
    app: App,
    files: tuple[str, ...],
    section: str | None,
    source: str | None,
    fmt: str,
    timezone: str | None,
    strict: bool,
):
    """Load articles from RSS/Atom feeds, JSON (array or lines) or CSV files.

    Exit 1 when a file has every item rejected (or, with --strict, any item)."""
    from pathlib import Path
    from zoneinfo import ZoneInfo

    from digest.ingest import check_reports, ingest_files
    from subscribers.service import check_timezone

    known = {s.casefold(): s for nl in app.config.newsletters.values() for s in nl.section_names}
    strict_on = any(nl.strict_sections for nl in app.config.newsletters.values())
    reports = ingest_files(
        app.sessions,
        [Path(f) for f in files],
        section=section,
        source=source,
        fmt=fmt,
        known_sections=known if strict_on else None,
        timezone=ZoneInfo(check_timezone(zone))
        if (zone := timezone or app.config.common_timezone)
        else None,
        clock=utcnow,
        strict=strict,
    )
    for report in reports:
        for rejection in report.rejections:
            click.echo(f"rejected: {rejection}", err=True)
        click.echo(report.summary())
    check_reports(reports, strict=strict)


@click.command()
@click.option("--section", help="Only this section.")
@click.option("--since", help="Published at or after (ISO date or time, UTC when no zone).")
@click.option("--text", "text_", help="Text in the title (case-insensitive).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@pass_app
def articles(app: App, section: str | None, since: str | None, text_: str | None, limit: int):
    """List stored articles, newest first."""
    from digest.articles import list_articles

    with app.sessions() as session:
        rows = list_articles(
            session, section=section, since=parse_since(since), text=text_, limit=limit
        )
        for a in rows:
            flag = {"pin": "📌 ", "boost": "+ "}.get(a.priority, "")
            click.echo(
                f"{a.published_at:%Y-%m-%d %H:%M}Z  {a.section:<15.15} {flag}{a.title}  "
                f"({a.source or '-'}, pop {a.popularity:g})"
            )
        click.echo(f"{len(rows)} article(s)")


# --- demo ------------------------------------------------------------------------------------


@click.command()
@pass_app
def demo(app: App):
    """Load the sample data, build today's edition and run the main job to the local outbox."""
    from digest.demo import run_demo

    for line in run_demo(app.config, app.sessions, clock=utcnow):
        click.echo(line)
