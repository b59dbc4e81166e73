"""Commands that run beside a send: `digest serve`, `digest unsubscribe`, `digest doctor`,
`digest bounces` and `digest schedule ...`."""

from __future__ import annotations

import click

from digest.cli.base import App, pass_app
from digest.clock import utcnow
from digest.providers import NAMES as PROVIDER_NAMES

# --- web -------------------------------------------------------------------------------------


@click.command()
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


@click.command("unsubscribe")
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
    from pathlib import Path

    from digest.mailto import process_mailbox

    click.echo(process_mailbox(app.config, app.sessions, Path(mbox), clock=utcnow).summary())


@click.command("doctor")
@click.argument("newsletter")
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
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


@click.command("bounces")
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
    from pathlib import Path

    from digest.bounces.apply import process_bounces

    if (mbox is None) == (maildir is None):
        raise click.UsageError("give one of --from-mbox FILE or --from-maildir FOLDER")
    path = Path(mbox or maildir or "")
    if maildir is not None and not path.is_dir():
        raise click.BadParameter(f"{path}: not a maildir folder", param_hint="--from-maildir")
    click.echo(process_bounces(app.config, app.sessions, path, clock=utcnow).summary())


# --- scheduling ------------------------------------------------------------------------------


@click.group("schedule", invoke_without_command=True)
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
