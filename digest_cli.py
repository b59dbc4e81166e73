"""`digest` command line: a thin click front over the library in digest/ and subscribers/.

Each command parses flags, calls one library function and prints its result. Library errors
(DigestError) become one `Error: ...` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from digest.clock import utcnow
from digest.errors import DigestError
from digest.limits import MAX_DATE, MIN_DATE

# `digest --help`, `digest <cmd> --help` and shell completion import nothing heavy: the
# database layer, templates, the web app and providers are imported by the commands that use
# them (tests/test_cli_startup.py holds this).
if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from digest.config import Config


class App:
    """What commands share: the config and the database, opened on first use."""

    def __init__(self, config_path: str | None, default_date: str | None = None) -> None:
        self.config_path = config_path
        # `digest --date D ...` or DIGEST_DATE: the date of every command that takes --date.
        self.default_date = default_date
        self._config: Config | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from digest.config import load_config

            self._config = load_config(self.config_path)
        return self._config

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            from digest.config import database_url
            from digest.db import ensure_schema, make_engine, session_factory

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
        except Exception as e:
            problem = _database_problem(e)
            if problem is None:
                raise
            raise click.ClickException(problem) from None


def _database_problem(error: Exception) -> str | None:
    """One line for a driver error (unreachable, read-only, out of space, refused a value);
    None for anything else. SQLAlchemy is looked at only when a command has loaded it."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import DBAPIError

    from digest.db import database_problem

    return database_problem(error) if isinstance(error, DBAPIError) else None


pass_app = click.make_pass_decorator(App)


def parse_date(value: str | None, newsletter_tz: Any = None) -> date:
    """--date YYYY-MM-DD, `today` or `tomorrow` (in the newsletter's time zone); without one,
    the group's --date / DIGEST_DATE, else today."""
    if value is None:
        ctx = click.get_current_context(silent=True)
        app = ctx.find_object(App) if ctx is not None else None
        value = app.default_date if app is not None else None
    today = utcnow().astimezone(newsletter_tz).date() if newsletter_tz else utcnow().date()
    if value in (None, "today"):
        return today
    if value == "tomorrow":
        return today + timedelta(days=1)
    assert value is not None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD, today or tomorrow)", param_hint="--date"
        ) from None
    if not MIN_DATE <= day <= MAX_DATE:
        raise click.BadParameter(
            f"{value} is outside {MIN_DATE.year}-{MAX_DATE.year}", param_hint="--date"
        )
    return day


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
    if not MIN_DATE <= parsed.date() <= MAX_DATE:
        raise click.BadParameter(
            f"{value} is outside {MIN_DATE.year}-{MAX_DATE.year}", param_hint="--since"
        )
    return parsed


@click.group(cls=DigestGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar="DIGEST_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: $DIGEST_CONFIG or ./digest.toml).",
)
@click.option(
    "--date",
    "default_date",
    envvar="DIGEST_DATE",
    help="Edition date for every command below (YYYY-MM-DD, today, tomorrow; $DIGEST_DATE).",
)
@click.version_option(package_name="digest")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, default_date: str | None) -> None:
    """digest: pick the day's top stories, render the email, send it with a ledger."""
    if config_path and not Path(config_path).is_file():
        # Named explicitly (flag or DIGEST_CONFIG): a typo must not pass silently, even for
        # commands that only need the database.
        raise click.BadParameter(f"{config_path}: no such config file", param_hint="--config")
    if default_date is not None:
        parse_date(default_date)  # a typo fails here, whatever the command
    ctx.obj = App(config_path, default_date)


# --- database --------------------------------------------------------------------------------


@cli.group()
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
@click.option("--force", is_flag=True, help="Pick again (the editor's changes are re-applied).")
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
        click.echo(format_edition(result.edition, nl))


json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")


@edition.command("show")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@json_option
@pass_app
def edition_show(app: App, newsletter: str, date_: str | None, as_json: bool):
    """Print the stored edition as an editor reads it: picks and why, changes, approval, proofs."""
    from digest.desk_view import show_edition, to_json

    nl = app.config.newsletter(newsletter)
    with app.sessions() as session:
        view = show_edition(session, app.config, nl, parse_date(date_, nl.tz))
        click.echo(to_json(view.as_json()) if as_json else view.text())


@edition.command("list")
@click.argument("newsletter")
@click.option("--limit", default=30, show_default=True, type=click.IntRange(1, 10000))
@json_option
@pass_app
def edition_list(app: App, newsletter: str, limit: int, as_json: bool):
    """The latest editions: date, state, stories, approval, changes and ledger counts."""
    from digest.desk_view import list_editions, to_json

    nl = app.config.newsletter(newsletter)
    with app.sessions() as session:
        rows = list_editions(session, nl, limit=limit)
    if as_json:
        click.echo(to_json([r.as_json() for r in rows]))
        return
    for r in rows:
        click.echo(r.line())
    click.echo(f"{len(rows)} edition(s) of {nl.id}")


def _editor(by: str | None, *, required: bool = False) -> str:
    """--by, $DIGEST_EDITOR (the option's envvar), else the login name (not for approvals)."""
    from digest.desk import check_editor

    if by is None and not required:
        import getpass

        try:
            by = getpass.getuser()
        except (KeyError, OSError):
            by = None
    return check_editor(by)


def _desk_command(name: str, help_: str) -> Callable[[Callable[..., None]], click.Command]:
    """An `edition` subcommand that changes the draft: NEWSLETTER, --date and --by."""

    def wrap(fn: Callable[..., None]) -> click.Command:
        fn = click.option(
            "--by", envvar="DIGEST_EDITOR", help="Who makes the change ($DIGEST_EDITOR)."
        )(fn)
        fn = click.option("--date", "date_", help="Edition date (default today).")(fn)
        fn = click.argument("newsletter")(fn)
        return edition.command(name, help=help_)(pass_app(fn))

    return wrap


def _change(app: App, newsletter: str, date_: str | None, by: str | None, call: Any) -> None:
    from digest.db import transaction

    nl = app.config.newsletter(newsletter)
    who = _editor(by)
    with transaction(app.sessions) as session:
        result = call(session, nl, parse_date(date_, nl.tz), who)
    click.echo(result.message)


@_desk_command("drop", "Take a story out (by article id, URL or SECTION:RANK).")
@click.argument("story")
def edition_drop(app: App, newsletter, date_, by, story):
    from digest.desk import drop_story

    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: drop_story(s, nl, d, story, by=who, clock=utcnow),
    )


@_desk_command("move", "Move a story to place --to N (1 = top) of its section or --section.")
@click.argument("story")
@click.option("--to", "to", type=click.IntRange(1, 1000), help="Place in the section (1 = top).")
@click.option("--section", help="Move it to this section.")
def edition_move(app: App, newsletter, date_, by, story, to, section):
    from digest.desk import move_story

    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: move_story(
            s, nl, d, story, to=to, section=section, by=who, clock=utcnow
        ),
    )


@_desk_command("add", "Add a stored article the pick missed (by article id or URL).")
@click.argument("article")
@click.option("--section", help="Section to put it in (default: its own).")
@click.option(
    "--at", "at", type=click.IntRange(1, 1000), help="Place in the section (default last)."
)
def edition_add(app: App, newsletter, date_, by, article, section, at):
    from digest.desk import add_story

    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: add_story(
            s, nl, d, article, section=section, at=at, by=who, clock=utcnow
        ),
    )


@_desk_command("pin", "Pin a story at --at N (default the top); a rebuild keeps it there.")
@click.argument("story")
@click.option("--at", "at", default=1, show_default=True, type=click.IntRange(1, 1000))
def edition_pin(app: App, newsletter, date_, by, story, at):
    from digest.desk import pin_story

    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: pin_story(s, nl, d, story, at=at, by=who, clock=utcnow),
    )


@_desk_command("unpin", "Unpin a story (it stays where it is).")
@click.argument("story")
def edition_unpin(app: App, newsletter, date_, by, story):
    from digest.desk import pin_story

    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: pin_story(s, nl, d, story, pinned=False, by=who, clock=utcnow),
    )


def _text_or_clear(text: str | None, clear: bool, what: str) -> str | None:
    if clear == (text is not None):
        raise click.UsageError(f"give the {what} or --clear (not both)")
    return text


@_desk_command("headline", "The story's headline in this email (the stored article is kept).")
@click.argument("story")
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Back to the stored headline.")
def edition_headline(app: App, newsletter, date_, by, story, text, clear):
    from digest.desk import set_headline

    value = _text_or_clear(text, clear, "headline")
    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: set_headline(s, nl, d, story, value, by=who, clock=utcnow),
    )


@_desk_command("blurb", 'The story\'s blurb in this email ("" for none).')
@click.argument("story")
@click.argument("text", required=False)
@click.option("--clear", is_flag=True, help="Back to the stored blurb.")
def edition_blurb(app: App, newsletter, date_, by, story, text, clear):
    from digest.desk import set_blurb

    value = _text_or_clear(text, clear, "blurb")
    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: set_blurb(s, nl, d, story, value, by=who, clock=utcnow),
    )


@_desk_command(
    "note", "The editor's note above the stories (Markdown: paragraphs, links, *emphasis*)."
)
@click.argument("text", required=False)
@click.option(
    "--file",
    "file_",
    type=click.File("r", encoding="utf-8"),
    help="Read it from FILE (- for stdin).",
)
@click.option("--clear", is_flag=True, help="Remove the note.")
def edition_note(app: App, newsletter, date_, by, text, file_, clear):
    from digest.desk import set_note

    if file_ is not None:
        if text is not None:
            raise click.UsageError("give the note or --file, not both")
        text = file_.read()
    value = _text_or_clear(text, clear, "note")
    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: set_note(s, nl, d, value, by=who, clock=utcnow),
    )


def _wording_command(field: str) -> None:
    @_desk_command(
        field,
        f"This edition's {field} ({{title}} {{lead}} {{date}} {{headlines}} as in the config).",
    )
    @click.argument("text", required=False)
    @click.option("--clear", is_flag=True, help=f"Back to the newsletter's {field}.")
    def command(app: App, newsletter, date_, by, text, clear):
        from digest.desk import set_wording

        value = _text_or_clear(text, clear, field)
        _change(
            app,
            newsletter,
            date_,
            by,
            lambda s, nl, d, who: set_wording(s, nl, d, field, value, by=who, clock=utcnow),
        )


_wording_command("subject")
_wording_command("preheader")


@edition.command("approve")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@click.option("--by", envvar="DIGEST_EDITOR", help="Who signs it off (required; $DIGEST_EDITOR).")
@click.option("--withdraw", is_flag=True, help="Withdraw the approval.")
@pass_app
def edition_approve(app: App, newsletter, date_, by, withdraw):
    """Sign the draft off as it is now; any later change withdraws the approval."""
    from digest.db import transaction
    from digest.desk import approve

    nl = app.config.newsletter(newsletter)
    who = _editor(by, required=True)
    with transaction(app.sessions) as session:
        result = approve(
            session, nl, parse_date(date_, nl.tz), by=who, clock=utcnow, withdraw=withdraw
        )
    click.echo(result.message)


@cli.command("proof")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@click.option("--to", "to", multiple=True, help="Address(es), comma-separated (default: proof_to).")
@click.option("--segment", help="Only the variant of this segment's first member.")
@click.option("--subscriber", help="Only the variant this subscriber (email or id) gets.")
@click.option(
    "--provider",
    type=click.Choice(["outbox", "smtp", "sendgrid"]),
    help="Provider for the proof (default: the newsletter's).",
)
@click.option("--by", envvar="DIGEST_EDITOR", help="Who sends it ($DIGEST_EDITOR).")
@pass_app
def proof_cmd(app: App, newsletter, date_, to, segment, subscriber, provider, by):
    """Send the stored edition, subject marked [PROOF], to the desk's own addresses.

    Every variant the audience gets, or one (--segment / --subscriber). Proofs are recorded
    apart from the readers' ledger and never freeze the edition."""
    from digest.proofs import send_proof

    nl = app.config.newsletter(newsletter)
    report = send_proof(
        app.config,
        app.sessions,
        nl,
        parse_date(date_, nl.tz),
        to,
        by=_editor(by),
        clock=utcnow,
        segment=segment,
        subscriber=subscriber,
        provider_name=provider,
    )
    click.echo(report.summary())


# --- demo ------------------------------------------------------------------------------------


@cli.command()
@pass_app
def demo(app: App):
    """Load the sample data, build today's edition and run the main job to the local outbox."""
    from digest.demo import run_demo

    for line in run_demo(app.config, app.sessions, clock=utcnow):
        click.echo(line)


# --- commands from other areas register below (subscribers, render, send, schedule, web) ----


# --- subscribers -----------------------------------------------------------------------------


def _pick_newsletter(app: App, newsletter_id: str | None) -> Any:
    """--newsletter, or the only configured newsletter when there is just one."""
    if newsletter_id is None:
        if len(app.config.newsletters) != 1:
            known = ", ".join(sorted(app.config.newsletters))
            raise click.UsageError(f"pass --newsletter (one of: {known})")
        return next(iter(app.config.newsletters.values()))
    return app.config.newsletter(newsletter_id)


def _attrs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--attr")
        out[key.strip()] = value.strip()
    return out


newsletter_option = click.option(
    "--newsletter", "-n", "newsletter_id", help="Newsletter id (default: the only one)."
)


@cli.group("subscribers")
def subscribers_group() -> None:
    """Subscriber lists: add, import, export, unsubscribe, suppress, forget."""


@subscribers_group.command("add")
@click.argument("email")
@newsletter_option
@click.option("--name")
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--attr", "attrs", multiple=True, help="Attribute NAME=VALUE (repeatable).")
@click.option("--section", "sections", multiple=True, help="Section to receive, in order.")
@click.option("--timezone", help="IANA time zone, e.g. Europe/Berlin.")
@pass_app
def subscribers_add(app: App, email, newsletter_id, name, tags, attrs, sections, timezone):
    """Put an address on a list as active (you vouch for their consent)."""
    from digest.db import transaction
    from subscribers.service import add_subscriber

    nl = _pick_newsletter(app, newsletter_id)
    with transaction(app.sessions) as session:
        sub = add_subscriber(
            session,
            nl,
            email,
            at=utcnow(),
            name=name,
            attributes=_attrs(attrs),
            tags=tags,
            sections=sections,
            timezone=timezone,
        )
        click.echo(f"added {sub.email} (id {sub.id}) to {nl.id}")


@subscribers_group.command("subscribe")
@click.argument("email")
@newsletter_option
@click.option("--name")
@click.option(
    "--no-email", is_flag=True, help="Print the confirmation link instead of emailing it."
)
@pass_app
def subscribers_subscribe(app: App, email, newsletter_id, name, no_email):
    """Sign someone up as they would themselves. With double opt-in they stay pending and get a
    confirmation email through the newsletter's provider; running it again resends it."""
    from digest.confirmations import sign_up

    nl = _pick_newsletter(app, newsletter_id)
    done = sign_up(
        app.config, app.sessions, nl, email, at=utcnow(), name=name, send_email=not no_email
    )
    result = done.subscription
    if result.status == "pending" and done.sent_via:
        click.echo(
            f"{result.email} is pending on {nl.id}; confirmation email sent via {done.sent_via}"
        )
    elif result.status == "pending":
        click.echo(f"{result.email} is pending on {nl.id}; confirmation link: {result.confirm_url}")
    else:
        click.echo(f"{result.email} is subscribed to {nl.id}")


@subscribers_group.command("send-confirmations")
@pass_app
def subscribers_send_confirmations(app: App):
    """Email the confirmation links of sign-ups queued by the web form (digest serve does
    this every few seconds by itself; use this from cron when the form runs elsewhere)."""
    from digest.confirmations import deliver_sign_ups

    click.echo(deliver_sign_ups(app.config, app.sessions, clock=utcnow).summary())


@subscribers_group.command("confirm")
@click.argument("token")
@pass_app
def subscribers_confirm(app: App, token):
    """Confirm a double opt-in with the token from the confirmation link."""
    from digest.db import transaction
    from subscribers.service import confirm

    with transaction(app.sessions) as session:
        result = confirm(session, app.config, token, at=utcnow())
    click.echo(f"{result.email} is {result.status} on {result.newsletter}")


@subscribers_group.command("unsubscribe")
@click.argument("email")
@click.option("--newsletter", "-n", "newsletter_id", help="Only this newsletter (default: all).")
@click.option("--reason", default="operator", show_default=True)
@pass_app
def subscribers_unsubscribe(app: App, email, newsletter_id, reason):
    """Take an address off one newsletter, or off every newsletter."""
    from digest.db import transaction
    from subscribers.audience import find_subscriber
    from subscribers.service import unsubscribe

    if newsletter_id is not None:
        app.config.newsletter(newsletter_id)
    with transaction(app.sessions) as session:
        sub = find_subscriber(session, email)
        changed = unsubscribe(session, sub.id, newsletter_id, reason=reason, at=utcnow())
    where = newsletter_id or "all newsletters"
    click.echo(f"{sub.email} {'unsubscribed from' if changed else 'was already off'} {where}")


@subscribers_group.command("remove")
@click.argument("email")
@pass_app
def subscribers_remove(app: App, email):
    """Delete a subscriber record (no suppression: the address may be added again)."""
    from digest.db import transaction
    from subscribers.service import remove

    with transaction(app.sessions) as session:
        remove(session, email)
    click.echo(f"removed {email.strip().lower()}")


@subscribers_group.command("suppress")
@click.argument("email")
@click.option("--reason", default="operator", show_default=True)
@pass_app
def subscribers_suppress(app: App, email, reason):
    """Never send to this address again, even if it is imported later."""
    from digest.db import transaction
    from subscribers.service import suppress

    with transaction(app.sessions) as session:
        row = suppress(session, email, reason, utcnow())
        click.echo(f"suppressed {email.strip().lower()} ({row.reason})")


@subscribers_group.command("forget")
@click.argument("email")
@pass_app
def subscribers_forget(app: App, email):
    """Erase everything about a person; keep only a one-way hash so imports skip them."""
    from digest.db import transaction
    from subscribers.service import forget

    with transaction(app.sessions) as session:
        existed = forget(session, email, at=utcnow())
    what = "erased" if existed else "no subscriber found; suppressed"
    click.echo(f"{what}: the address is kept only as a one-way hash on the suppression list")


@subscribers_group.command("preferences")
@click.argument("email")
@newsletter_option
@click.option("--section", "sections", multiple=True, help="Sections to receive, in order.")
@click.option("--pause/--resume", "paused", default=None, help="Pause or resume delivery.")
@pass_app
def subscribers_preferences(app: App, email, newsletter_id, sections, paused):
    """Choose sections (and their order) or pause/resume a subscriber's newsletter."""
    from digest.db import transaction
    from subscribers.audience import find_subscriber
    from subscribers.service import set_preferences

    nl = _pick_newsletter(app, newsletter_id)
    with transaction(app.sessions) as session:
        sub = find_subscriber(session, email)
        chosen = set_preferences(session, sub.id, nl, sections or None, paused)
        member = sub.membership(nl.id)
        state = " (paused)" if member is not None and member.paused else ""
    click.echo(f"{sub.email} gets {', '.join(chosen)} from {nl.id}{state}")


@subscribers_group.command("list")
@click.option("--newsletter", "-n", "newsletter_id", help="Only members of this newsletter.")
@click.option(
    "--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced", "complained"])
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@pass_app
def subscribers_list(app: App, newsletter_id, status, limit):
    """List subscribers, oldest first."""
    from subscribers.service import list_subscribers

    if newsletter_id is not None:
        app.config.newsletter(newsletter_id)
    with app.sessions() as session:
        rows = list_subscribers(session, newsletter=newsletter_id, status=status, limit=limit)
        for sub in rows:
            lists = ", ".join(
                f"{m.newsletter}:{m.status}{'/paused' if m.paused else ''}" for m in sub.memberships
            )
            click.echo(
                f"{sub.id:>7}  {sub.email:<40} {sub.status:<12} {sub.name or '-'}  [{lists}]"
            )
        click.echo(f"{len(rows)} subscriber(s)")


@subscribers_group.command("show")
@click.argument("email")
@pass_app
def subscribers_show(app: App, email):
    """Everything stored about one subscriber (by address or id)."""
    from subscribers.audience import find_subscriber
    from subscribers.service import describe_subscriber

    with app.sessions() as session:
        for line in describe_subscriber(session, app.config, find_subscriber(session, email)):
            click.echo(line)


@subscribers_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@newsletter_option
@click.option("--strict", is_flag=True, help="Import nothing (exit 1) if any row is rejected.")
@pass_app
def subscribers_import(app: App, file, newsletter_id, strict):
    """Import a CSV (email, name, sections, tags, timezone, any attribute columns).

    Exit 1 when every row is rejected (or, with --strict, any row); nothing is imported then."""
    from digest.db import transaction
    from subscribers.importing import check_import, import_csv

    nl = _pick_newsletter(app, newsletter_id)
    with transaction(app.sessions) as session:
        report = import_csv(session, nl, Path(file), at=utcnow())
        for line in report.error_lines():
            click.echo(f"rejected: {line}", err=True)
        click.echo(report.summary())
        check_import(report, strict=strict)  # raising rolls the import back


@subscribers_group.command("export")
@click.option("--newsletter", "-n", "newsletter_id", help="Only members of this newsletter.")
@click.option("--segment", "segments", multiple=True, help="Only this segment (repeatable).")
@click.option("--output", "-o", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@pass_app
def subscribers_export(app: App, newsletter_id, segments, output):
    """Write subscribers as CSV (to stdout unless --output)."""
    from subscribers.importing import export_csv

    nl = app.config.newsletter(newsletter_id) if newsletter_id else None
    with app.sessions() as session, click.open_file(output, "w", encoding="utf-8") as out:
        count = export_csv(session, app.config, out, newsletter=nl, segments=segments)
    if output != "-":
        click.echo(f"wrote {count} subscriber(s) to {output}")


@cli.group("segments")
def segments_group() -> None:
    """Named segments from the config ([segments] rules)."""


@segments_group.command("list")
@pass_app
def segments_list(app: App):
    """Every configured segment and its rule (each rule is checked)."""
    from subscribers.segments import parse_rule

    for name, rule in sorted(app.config.segments.items()):
        parse_rule(rule, name)
        click.echo(f"{name:<20} {rule}")
    click.echo(f"{len(app.config.segments)} segment(s)")


@segments_group.command("show")
@click.argument("name")
@click.option("--newsletter", "-n", "newsletter_id", help="Only this newsletter (default: all).")
@pass_app
def segments_show(app: App, name, newsletter_id):
    """How many of each newsletter's audience a segment selects, with a sample."""
    from subscribers.audience import segment_counts
    from subscribers.segments import segment_rule

    rule = segment_rule(app.config, name)
    newsletters = (
        [app.config.newsletter(newsletter_id)] if newsletter_id else app.config.newsletters.values()
    )
    click.echo(f"{name}: {rule}")
    with app.sessions() as session:
        for c in segment_counts(session, app.config, name, list(newsletters)):
            sample = f": {', '.join(c.sample)}{', ...' if c.count > len(c.sample) else ''}"
            click.echo(f"  {c.newsletter}: {c.count} recipient(s){sample if c.sample else ''}")


# --- preview (rendering) ---------------------------------------------------------------------


@cli.command()
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

    import digest.sending  # noqa: F401  (registers --format eml)
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

    from digest.sending import send_edition

    stop = threading.Event()

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\nstopping after the current batch (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        with _send_progress_bar() as bar:
            task = bar.add_task("send", total=None, detail="")

            def progress(e: Any) -> None:
                bar.update(
                    task,
                    completed=e.done,
                    total=e.total,
                    detail=f"sent {e.sent} · failed {e.failed} · unknown {e.unknown} · "
                    f"{e.rate:.0f}/s",
                )

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
        signal.signal(signal.SIGINT, previous)


@cli.command("send")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today in the newsletter's zone).")
@click.option("--dry-run", is_flag=True, help="Write every message to the outbox; no ledger.")
@click.option(
    "--provider",
    type=click.Choice(["outbox", "smtp", "sendgrid"]),
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
    """Deliver the edition to its audience, exactly once per subscriber (safe to re-run)."""
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
        if r.outcome in ("finished", "busy"):
            click.echo(f"{r.newsletter} {r.edition_date}: nothing to do ({r.message})")
    return exit_code(results)


@cli.group("sends")
def sends_group() -> None:
    """The delivery ledger: who got an edition, who did not, and why."""


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


# --- web -------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@pass_app
def serve(app: App, host: str, port: int):
    """Run the subscriber web app: unsubscribe, preferences, archive, SendGrid webhook."""
    from digest.web import serve as serve_web

    serve_web(
        app.config,
        app.sessions,
        host=host,
        port=port,
        clock=utcnow,
        on_ready=lambda url: click.echo(f"serving on {url} (Ctrl-C to stop)"),
    )


@cli.command("unsubscribe")
@click.option(
    "--from-mbox",
    "mbox",
    required=True,
    type=click.Path(),
    help="mbox file or maildir folder of mail sent to the List-Unsubscribe address.",
)
@pass_app
def unsubscribe_mail(app: App, mbox: str):
    """Process unsubscribe requests sent to the List-Unsubscribe mailto address."""
    from digest.mailto import process_mailbox

    click.echo(process_mailbox(app.config, app.sessions, Path(mbox), clock=utcnow).summary())


@cli.command("doctor")
@click.argument("newsletter")
@click.option(
    "--provider",
    type=click.Choice(["outbox", "smtp", "sendgrid"]),
    help="Check for this provider (default: the newsletter's).",
)
@click.option(
    "--dns", "check_dns", is_flag=True, help="Also look the records up in DNS (needs network)."
)
@click.pass_context
def doctor_cmd(ctx: click.Context, newsletter: str, provider: str | None, check_dns: bool):
    """DNS records to publish (SPF, DKIM, DMARC) and a check of the configuration against the
    bulk-sender rules of Gmail, Yahoo and Microsoft. Exit code 1 when something fails."""
    from digest.doctor import diagnose, dns_lookup

    app = ctx.find_object(App)
    assert app is not None
    lookup = dns_lookup if check_dns else None
    diagnosis = diagnose(app.config, newsletter, provider=provider, lookup=lookup)
    click.echo("\n".join(diagnosis.lines()))
    ctx.exit(1 if diagnosis.failed else 0)


@cli.command("bounces")
@click.option(
    "--from-mbox",
    "mbox",
    type=click.Path(),
    help="mbox file (or maildir folder) the bounces and complaints arrive in.",
)
@click.option("--from-maildir", "maildir", type=click.Path(), help="maildir folder of them.")
@pass_app
def bounces_cmd(app: App, mbox: str | None, maildir: str | None):
    """Read bounces (DSNs) and complaints (ARF) from the return path's mailbox.

    Hard bounces and complaints suppress the address; soft bounces are counted and suppress
    after bounces.soft_bounce_limit. The mailbox is not changed; reading it again changes
    nothing more.
    """
    from digest.bounces.apply import process_bounces

    if (mbox is None) == (maildir is None):
        raise click.UsageError("give one of --from-mbox FILE or --from-maildir FOLDER")
    path = Path(mbox or maildir or "")
    if maildir is not None and not path.is_dir():
        raise click.BadParameter(f"{path}: not a maildir folder", param_hint="--from-maildir")
    click.echo(process_bounces(app.config, app.sessions, path, clock=utcnow).summary())


# --- scheduling ------------------------------------------------------------------------------


@cli.group("schedule", invoke_without_command=True)
@click.option("--log-json", is_flag=True, help="Log one JSON object per line (for machines).")
@click.pass_context
def schedule_group(ctx: click.Context, log_json: bool):
    """Send each newsletter at its send time in its time zone, until SIGTERM/SIGINT.

    Exit codes: 0 stopped cleanly by a signal; 1 cannot start (database); 2 config error;
    130 a second signal cut the current batch short (a restart continues it).
    """
    if ctx.invoked_subcommand is not None:
        return
    from digest.scheduler import Runner, configure_logging, serve

    app = ctx.find_object(App)
    assert app is not None
    configure_logging(log_json)
    ctx.exit(serve(Runner(app.config, app.sessions, utcnow)))


@schedule_group.command("status")
@pass_app
def schedule_status_cmd(app: App):
    """Next run of each newsletter (in its time zone) and how its last run ended."""
    from digest.scheduler import schedule_status

    for status in schedule_status(app.config, app.sessions, clock=utcnow):
        for line in status.lines():
            click.echo(line)


def main() -> None:
    cli(prog_name="digest")


if __name__ == "__main__":
    main()
