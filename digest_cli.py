"""`digest` command line: a thin click front over the library in digest/ and subscribers/.

Each command parses flags, calls one library function and prints its result. Library errors
(DigestError) become one `Error: ...` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import utcnow
from digest.config import Config, database_url, load_config
from digest.db import ensure_schema, make_engine, session_factory
from digest.errors import DigestError


class App:
    """What commands share: the config and the database, opened on first use."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            engine = make_engine(database_url())
            ensure_schema(engine)
            self._sessions = session_factory(engine)
        return self._sessions


class _ExitError(click.ClickException):
    """A ClickException carrying the library error's documented exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares it a class variable


class DigestGroup(click.Group):
    """Turns library errors into one clear line and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DigestError as e:
            raise _ExitError(str(e), e.exit_code) from None
        except OperationalError as e:
            raise click.ClickException(f"database error: {e.orig}") from None


pass_app = click.make_pass_decorator(App)


def parse_date(value: str | None, newsletter_tz: Any = None) -> date:
    """--date YYYY-MM-DD, `today` or `tomorrow` (in the newsletter's time zone)."""
    today = utcnow().astimezone(newsletter_tz).date() if newsletter_tz else utcnow().date()
    if value in (None, "today"):
        return today
    if value == "tomorrow":
        return today + timedelta(days=1)
    assert value is not None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD, today or tomorrow)", param_hint="--date"
        ) from None


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time", param_hint="--since"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


@click.group(cls=DigestGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="DIGEST_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $DIGEST_CONFIG or ./digest.toml).",
)
@click.version_option(package_name="digest")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """digest: pick the day's top stories, render the email, send it with a ledger."""
    ctx.obj = App(config_path)


# --- database --------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema (keeps existing data)."""
    from digest.db import current_revisions, upgrade

    engine = make_engine(database_url())
    upgrade(engine)
    click.echo(f"database at {', '.join(sorted(current_revisions(engine)))}: {engine.url!r}")


# --- articles --------------------------------------------------------------------------------


@cli.command()
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
@pass_app
def ingest(app: App, files: tuple[str, ...], section: str | None, source: str | None, fmt: str):
    """Load articles from RSS/Atom feeds, JSON (array or lines) or CSV files."""
    from digest.ingest import ingest_files

    strict = {s.casefold(): s for nl in app.config.newsletters.values() for s in nl.section_names}
    strict_on = any(nl.strict_sections for nl in app.config.newsletters.values())
    reports = ingest_files(
        app.sessions,
        [Path(f) for f in files],
        section=section,
        source=source,
        fmt=fmt,
        known_sections=strict if strict_on else None,
        clock=utcnow,
    )
    for report in reports:
        for rejection in report.rejections:
            click.echo(f"rejected: {rejection}", err=True)
        click.echo(report.summary())


@cli.command()
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


# --- editions --------------------------------------------------------------------------------


@cli.group()
def edition() -> None:
    """Build and inspect editions (the frozen pick of stories for a date)."""


@edition.command("build")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date in the newsletter's time zone (default today).")
@click.option("--force", is_flag=True, help="Rebuild an existing draft edition.")
@pass_app
def edition_build(app: App, newsletter: str, date_: str | None, force: bool):
    """Pick the top stories per section and store them as the edition."""
    from digest.editions import build_edition, format_edition

    nl = app.config.newsletter(newsletter)
    with app.sessions() as session:
        result = build_edition(
            session, app.config, nl, parse_date(date_, nl.tz), clock=utcnow, force=force
        )
        session.commit()
        click.echo(result.message)
        click.echo(format_edition(result.edition))


@edition.command("show")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@pass_app
def edition_show(app: App, newsletter: str, date_: str | None):
    """Print the stored edition as an editor reads it."""
    from digest.editions import format_edition, load_edition

    nl = app.config.newsletter(newsletter)
    with app.sessions() as session:
        click.echo(format_edition(load_edition(session, nl.id, parse_date(date_, nl.tz))))


# --- demo ------------------------------------------------------------------------------------


@cli.command()
@pass_app
def demo(app: App):
    """Load the sample data, build today's edition and run the main job to the local outbox."""
    from digest.demo import run_demo

    for line in run_demo(app.config, app.sessions, clock=utcnow):
        click.echo(line)


# --- commands from other areas register below (subscribers, render, send, schedule, web) ----


def main() -> None:
    cli(prog_name="digest")


if __name__ == "__main__":
    main()
