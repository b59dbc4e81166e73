"""What every command shares: the App (config and database, opened on first use), the error
mapping to one line and a documented exit code, date flags, and the `digest` group itself with
the list of its commands (COMMANDS), each loaded from its module when it is run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
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


# The commands of `digest`: name -> (module:attribute, the summary `digest --help` lists).
# A command's module is imported when the command is run or its own help is shown, so
# `digest --help` and completing a command name import none of them; each summary is the first
# sentence of the command's docstring (tests/test_cli_startup.py holds the two equal).
COMMANDS: dict[str, tuple[str, str]] = {
    "articles": ("store:articles", "List stored articles, newest first."),
    "bounces": (
        "service:bounces_cmd",
        "Read bounces (DSNs) and complaints (ARF) from the return path's mailbox.",
    ),
    "db": ("store:db", "Database schema."),
    "demo": (
        "store:demo",
        "Load the sample data, build today's edition and run the main job to the local outbox.",
    ),
    "doctor": (
        "service:doctor_cmd",
        "DNS records to publish (SPF, DKIM, DMARC) and a check of the configuration against the "
        "bulk-sender rules of Gmail, Yahoo and Microsoft.",
    ),
    "edition": (
        "editions:edition",
        "Build and inspect editions (the frozen pick of stories for a date).",
    ),
    "ingest": (
        "store:ingest",
        "Load articles from RSS/Atom feeds, JSON (array or lines) or CSV files.",
    ),
    "preview": ("sending:preview", "Show the stored edition's email exactly as a reader gets it."),
    "proof": (
        "editions:proof_cmd",
        "Send the stored edition, subject marked [PROOF], to the desk's own addresses.",
    ),
    "report": (
        "readers:report_cmd",
        "Delivered, unique clickers and click rate per story, section, variant, segment and "
        "subject; top stories; the trend over the last editions.",
    ),
    "schedule": (
        "service:schedule_group",
        "Send each newsletter at its send time in its time zone, until SIGTERM/SIGINT.",
    ),
    "segments": ("audience:segments_group", "Named segments from the config ([segments] rules)."),
    "send": (
        "sending:send_cmd",
        "Deliver the edition to its audience, exactly once per subscriber (safe to re-run).",
    ),
    "sends": (
        "sending:sends_group",
        "The delivery ledger: who got an edition, who did not, and why; prune old editions.",
    ),
    "serve": (
        "service:serve",
        "Run the subscriber web app: unsubscribe, preferences, archive, SendGrid webhook.",
    ),
    "subscribers": (
        "audience:subscribers_group",
        "Subscriber lists: add, import, export, unsubscribe, suppress, forget.",
    ),
    "unsubscribe": (
        "service:unsubscribe_mail",
        "Process unsubscribe requests sent to the List-Unsubscribe mailto address.",
    ),
}


def load_command(name: str) -> click.Command:
    """The command `name` of COMMANDS, importing its module (digest.cli.<module>)."""
    module, attribute = COMMANDS[name][0].split(":")
    # __import__, not importlib.import_module: `python -X importtime` lists what it loads.
    command = getattr(__import__(f"digest.cli.{module}", fromlist=[attribute]), attribute)
    assert isinstance(command, click.Command)
    return command


class DigestGroup(click.Group):
    """Loads each command when it is used (click's "lazily loading subcommands") and turns
    library errors into one clear line and a documented exit code."""

    _listing = False  # True while help or completion lists the commands by their summaries

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)
        if self._listing:  # its summary is all a list shows: the module stays unloaded
            return click.Command(cmd_name, help=COMMANDS[cmd_name][1], add_help_option=False)
        self.add_command(load_command(cmd_name), cmd_name)
        return self.commands[cmd_name]

    @contextmanager
    def _summaries(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with self._summaries():
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        with self._summaries():
            return super().shell_complete(ctx, incomplete)

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
    if config_path and not os.path.isfile(config_path):
        # Named explicitly (flag or DIGEST_CONFIG): a typo must not pass silently, even for
        # commands that only need the database.
        raise click.BadParameter(f"{config_path}: no such config file", param_hint="--config")
    if default_date is not None:
        parse_date(default_date)  # a typo fails here, whatever the command
    ctx.obj = App(config_path, default_date)
