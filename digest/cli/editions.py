"""Commands of the editor's desk: `digest edition ...` and `digest proof`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from digest.cli.base import App, parse_date, pass_app
from digest.clock import utcnow
from digest.providers import NAMES as PROVIDER_NAMES

# --- editions --------------------------------------------------------------------------------


@click.group()
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


@_desk_command(
    "subjects",
    "Two to four A/B subjects for this edition (in place of [ab_test] subjects); --clear.",
)
@click.argument("subjects", nargs=-1)
@click.option("--clear", is_flag=True, help="Remove them (the config's [ab_test] applies).")
def edition_subjects(app: App, newsletter, date_, by, subjects, clear):
    from digest.desk import set_ab_subjects

    if clear == bool(subjects):
        raise click.UsageError("give two to four SUBJECTS, or --clear")
    _change(
        app,
        newsletter,
        date_,
        by,
        lambda s, nl, d, who: set_ab_subjects(s, nl, d, subjects, by=who, clock=utcnow),
    )


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


@click.command("proof")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@click.option("--to", "to", multiple=True, help="Address(es), comma-separated (default: proof_to).")
@click.option("--segment", help="Only the variant of this segment's first member.")
@click.option("--subscriber", help="Only the variant this subscriber (email or id) gets.")
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
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


# --- the edition's lifecycle: reopening an edition nobody was handed ------------------------


@edition.command("reopen")
@click.argument("newsletter")
@click.option("--date", "date_", help="Edition date (default today).")
@click.option("--by", envvar="DIGEST_EDITOR", help="Who reopens it ($DIGEST_EDITOR).")
@pass_app
def edition_reopen(app: App, newsletter: str, date_: str | None, by: str | None):
    """Make a frozen edition a draft again when no message of it reached a provider."""
    from digest.db import transaction
    from digest.editions import reopen_edition

    nl = app.config.newsletter(newsletter)
    who = _editor(by)
    with transaction(app.sessions) as session:
        click.echo(reopen_edition(session, nl, parse_date(date_, nl.tz), who, clock=utcnow))
