"""`unknown` rows resolved by what SendGrid reports later: the stand-in took the requests but
the sender timed out, then the stand-in posts signed Event Webhook events to the web app (a
real HTTP server), as SendGrid does; the rows settle, say how, and `sends report` counts them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery
from digest.sending import format_report, ledger_report
from digest.web import create_app
from digest_cli import cli
from subscribers.service import add_subscriber
from tests.fakes.fixtures import sendgrid_server  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.render_support import EDITION_DATE
from tests.test_sending_ledger import edition, populate, send, with_sendgrid  # noqa: F401
from tests.web_support import live_server, unlimited

WEBHOOK = "/webhooks/sendgrid"


@pytest.fixture
def webhook(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """The web app on a live server, trusting the stand-in's webhook key; yields its URL."""
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", sendgrid_server.webhook_public_key)
    app = create_app(unlimited(config), sessions, clock=fixed(now))
    sendgrid_server.webhook_clock = now.timestamp  # the app's clock
    with live_server(app) as base:
        yield base + WEBHOOK


def with_sendgrid_timeout(config: Config, sg: SendGridStandIn) -> Config:
    return with_sendgrid(config, sg, timeout=0.4)


def by_email(sessions: sessionmaker[Session]) -> dict[str, Delivery]:
    with sessions() as session:
        return {d.email: d for d in session.scalars(select(Delivery))}


def report_text(config: Config, sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        r = ledger_report(session, config, "daily", EDITION_DATE)
        return format_report(r, config.newsletter("daily"))


def unknown_send(
    config: Config, sessions: sessionmaker[Session], now: datetime, sg: SendGridStandIn, n: int
) -> None:
    populate(sessions, n, now)
    for _ in range(n):
        sg.answer(202, hang=1.2)
    from digest.sending import SendOptions, send_edition
    from tests.test_sending_ledger import FAST

    report = send_edition(
        with_sendgrid_timeout(config, sg),
        sessions,
        "daily",
        EDITION_DATE,
        SendOptions(provider="sendgrid", retry=FAST, batch_size=1),
        clock=fixed(now),
    )
    assert report.counts["unknown"] == n


def test_processed_and_delivered_events_resolve_unknown_rows_as_sent(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
) -> None:
    unknown_send(config, sessions, now, sendgrid_server, 3)
    at = (now - timedelta(minutes=2)).timestamp()

    assert sendgrid_server.post_events(webhook, sendgrid_server.events("processed", at=at)) == 200
    assert sendgrid_server.post_events(webhook, sendgrid_server.events("delivered", at=at)) == 200

    rows = by_email(sessions)
    assert {d.state for d in rows.values()} == {"sent"}
    for d in rows.values():
        assert d.last_error == "resolved by SendGrid event processed at 2026-03-10 09:58:00 UTC"
        assert d.provider_message_id and d.provider_message_id.startswith("sg-")
    text = report_text(config, sessions)
    assert "resolved by provider events (no answer had come back): sent 3" in text


def test_a_bounce_or_drop_resolves_an_unknown_row_as_failed_and_says_so(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
) -> None:
    unknown_send(config, sessions, now, sendgrid_server, 3)
    at = now.timestamp()
    sg = sendgrid_server
    bounce = sg.events("bounce", emails={email_for(1)}, at=at, reason="550 no such user")
    drop = sg.events("dropped", emails={email_for(2)}, at=at, reason="Invalid")
    deferred = sg.events("deferred", emails={email_for(3)}, at=at, response="451 try later")

    assert sg.post_events(webhook, bounce + drop + deferred) == 200

    rows = by_email(sessions)
    stamp = "2026-03-10 10:00:00 UTC"
    assert (rows[email_for(1)].state, rows[email_for(1)].last_error) == (
        "failed",
        f"bounce: 550 no such user (resolved by SendGrid event bounce at {stamp})",
    )
    assert rows[email_for(2)].state == "failed"
    assert rows[email_for(2)].last_error == (
        f"dropped: Invalid (resolved by SendGrid event dropped at {stamp})"
    )
    # Deferred: the receiving server asked SendGrid to retry; SendGrid has the message.
    assert rows[email_for(3)].state == "sent"
    assert "resolved by provider events (no answer had come back): sent 1, failed 2" in (
        report_text(config, sessions)
    )


def test_a_bounce_after_processed_keeps_the_row_counted_as_resolved(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
) -> None:
    unknown_send(config, sessions, now, sendgrid_server, 1)
    sg, at = sendgrid_server, now.timestamp()
    sg.post_events(webhook, sg.events("processed", at=at))
    sg.post_events(webhook, sg.events("bounce", at=at, reason="mailbox full"))

    (row,) = by_email(sessions).values()
    assert row.state == "failed" and row.last_error is not None
    assert row.last_error.startswith("bounce: mailbox full (resolved by SendGrid event bounce")
    assert "(no answer had come back): failed 1" in report_text(config, sessions)


def test_rows_the_provider_answered_are_not_counted_as_resolved(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
) -> None:
    populate(sessions, 2, now)
    send(with_sendgrid_timeout(config, sendgrid_server), sessions, now, provider="sendgrid")
    sg = sendgrid_server
    sg.post_events(webhook, sg.events("delivered", at=now.timestamp()))
    sg.post_events(webhook, sg.events("bounce", emails={email_for(1)}, at=now.timestamp()))

    rows = by_email(sessions)
    assert rows[email_for(2)].state == "sent" and rows[email_for(2)].last_error is None
    assert (rows[email_for(1)].state, rows[email_for(1)].last_error) == ("failed", "bounce: bounce")
    assert "resolved by provider events" not in report_text(config, sessions)


def test_an_event_for_an_internationalised_domain_finds_its_row(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
) -> None:
    with sessions.begin() as session:
        add_subscriber(session, config.newsletter("daily"), "user@bücher.example", at=now)
    sendgrid_server.answer(202, hang=1.2)
    send(with_sendgrid_timeout(config, sendgrid_server), sessions, now, provider="sendgrid")
    events = sendgrid_server.events("delivered", at=now.timestamp())
    assert [e["email"] for e in events] == ["user@xn--bcher-kva.example"]  # as SendGrid says

    sendgrid_server.post_events(webhook, events)

    assert by_email(sessions)["user@bücher.example"].state == "sent"


def test_sends_report_cli_names_the_resolved_rows(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    webhook: str,
    db_url: str,
    config_path: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unknown_send(config, sessions, now, sendgrid_server, 2)
    sendgrid_server.post_events(webhook, sendgrid_server.events("processed", at=now.timestamp()))
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))

    result = CliRunner().invoke(cli, ["sends", "report", "daily", "--date", "2026-03-10"])

    assert result.exit_code == 0, result.output
    assert "resolved by provider events (no answer had come back): sent 2" in result.stdout
