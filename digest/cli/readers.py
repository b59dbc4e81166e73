"""What readers read: `digest report` (clicks per story, section, variant, segment, subject)."""

from __future__ import annotations

import click

from digest.cli.base import App, parse_date, parse_since, pass_app


@click.command("report")
@click.argument("newsletter")
@click.option("--date", "date_", help="One edition (default: the latest sent).")
@click.option("--since", help="Every edition from this date (YYYY-MM-DD) on.")
@click.option("--csv", "as_csv", is_flag=True, help="One row per tracked link, as CSV.")
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON for scripts.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write a self-contained page with charts to this file.",
)
@pass_app
def report_cmd(app: App, newsletter, date_, since, as_csv, as_json, html_file):
    """Delivered, unique clickers and click rate per story, section, variant, segment and
    subject; top stories; the trend over the last editions. Bot and scanner clicks are not
    counted; opens, when tracked, are labelled unreliable."""
    from pathlib import Path

    from digest.report import build_report, format_report, report_csv, report_json
    from digest.report_html import report_html

    if date_ and since:
        raise click.UsageError("give --date or --since, not both")
    if as_csv and as_json:
        raise click.UsageError("give --csv or --json, not both")
    nl = app.config.newsletter(newsletter)
    day = parse_date(date_, nl.tz) if date_ else None
    start = parse_since(since).date() if since else None  # type: ignore[union-attr]
    with app.sessions() as session:
        r = build_report(session, app.config, nl.id, day=day, since=start)
    if html_file:
        try:
            Path(html_file).write_text(report_html(r, nl.title), encoding="utf-8")
        except OSError as e:
            raise click.ClickException(f"{html_file}: {e.strerror}") from None
    if as_csv:
        click.echo(report_csv(r), nl=False)
    elif as_json:
        click.echo(report_json(r))
    else:
        click.echo(format_report(r))
        if html_file:
            click.echo(f"wrote {html_file}")
