"""Commands for the audience: `digest subscribers ...` and `digest segments ...`."""

from __future__ import annotations

from typing import Any

import click

from digest.cli.base import App, pass_app
from digest.clock import utcnow

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


@click.group("subscribers")
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
    from subscribers.service import reach_note

    note = reach_note(sub.email)
    if note:
        click.echo(note)


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
    from pathlib import Path

    from digest.db import transaction
    from subscribers.importing import check_import, import_csv

    nl = _pick_newsletter(app, newsletter_id)
    with transaction(app.sessions) as session:
        report = import_csv(session, nl, Path(file), at=utcnow())
        for line in report.error_lines():
            click.echo(f"rejected: {line}", err=True)
        click.echo(report.summary())
        for note in report.notes():
            click.echo(note)
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


@click.group("segments")
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
