"""Double opt-in: signing up sends one confirmation email through the configured provider,
and its link confirms the subscription on the web (GET shows a button, POST confirms)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, SendGridConfig, SmtpConfig
from digest.confirmations import sign_up
from digest.errors import InputError, ProviderError
from digest.web import create_app
from subscribers.audience import audience
from subscribers.models import Consent, Subscriber
from subscribers.service import add_subscriber, suppress
from tests.confirm_support import csrf_of, link_path, opt_in, parse
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import USERNAME, SmtpServer, free_port
from tests.web_support import unlimited


def emails(sessions: sessionmaker[Session], config: Config) -> list[str]:
    with sessions() as s:
        return [r.email for r in audience(s, config, config.newsletter("daily"))]


def status(sessions: sessionmaker[Session], email: str) -> tuple[str, str | None]:
    with sessions() as s:
        sub = s.scalars(select(Subscriber).where(Subscriber.email == email)).one()
        m = sub.membership("daily")
        return sub.status, m.status if m else None


def outbox_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def test_signup_emails_a_link_that_confirms_only_on_post(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    cfg = opt_in(config, tmp_path / "outbox")
    done = sign_up(cfg, sessions, cfg.newsletter("daily"), "New@Example.com", at=now, name="Nia")
    assert done.sent_via == "outbox" and done.subscription.status == "pending"
    assert emails(sessions, cfg) == []

    (file,) = outbox_files(tmp_path / "outbox")
    msg = parse(file.read_bytes())
    assert msg["To"] == "new@example.com"
    assert msg["From"] == "Test Gazette <daily@news.example>"
    assert msg["Reply-To"] == "editors@news.example"
    assert msg["Subject"] == "Confirm your subscription to The Test Gazette"
    assert msg["Date"] is not None and msg["Message-ID"].endswith("@news.example>")
    # Not bulk mail: nothing that would offer a one-click unsubscribe.
    for header in ("List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        assert msg[header] is None
    path = link_path(msg)

    client = create_app(
        unlimited(cfg), sessions, clock=fixed(now + timedelta(hours=1))
    ).test_client()
    for _ in range(2):  # mail scanners follow links, some more than once
        page = client.get(path)
        assert page.status_code == 200
        assert "Confirm subscription" in page.get_data(as_text=True)
        assert page.headers["Cache-Control"] == "no-store"
    assert status(sessions, "new@example.com") == ("pending", "pending")
    assert emails(sessions, cfg) == []

    csrf = csrf_of(page.get_data(as_text=True))
    first = client.post(path, data={"csrf": csrf})
    assert first.status_code == 200
    assert "You’re subscribed" in first.get_data(as_text=True)
    assert emails(sessions, cfg) == ["new@example.com"]
    again = client.post(path, data={"csrf": csrf})  # a double click changes nothing more
    assert again.status_code == 200 and again.get_data() == first.get_data()
    with sessions() as s:
        sub = s.scalars(select(Subscriber).where(Subscriber.email == "new@example.com")).one()
        assert sub.confirmed_at == now + timedelta(hours=1)
        methods = s.scalars(select(Consent.method).where(Consent.subscriber_id == sub.id))
        assert list(methods) == ["double_opt_in"]


def test_html_part_escapes_the_newsletter_title(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    cfg = opt_in(config, tmp_path / "outbox")
    daily = cfg.newsletters["daily"]
    evil = replace(daily, title='<script>alert("x")</script> & Co')
    cfg = replace(cfg, newsletters={**cfg.newsletters, "daily": evil})
    sign_up(cfg, sessions, evil, "a@example.com", at=now)
    (file,) = outbox_files(tmp_path / "outbox")
    html = parse(file.read_bytes()).get_body(("html",))
    assert html is not None
    body = html.get_content()
    assert "<script>" not in body and "&lt;script&gt;" in body and "&amp; Co" in body


def test_confirmation_over_real_smtp_with_starttls_and_auth(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    smtp = SmtpConfig(port=smtp_server.port, security="starttls", username=USERNAME, timeout=5)
    cfg = opt_in(config, tmp_path / "outbox", provider="smtp", smtp=smtp)
    done = sign_up(cfg, sessions, cfg.newsletter("daily"), "reader@example.org", at=now)
    assert done.sent_via == "smtp"
    assert smtp_server.counts() == {"reader@example.org": 1}
    assert smtp_server.logins  # authenticated after STARTTLS
    (msg,) = smtp_server.messages()
    assert msg["To"] == "reader@example.org"
    path = link_path(msg)
    client = create_app(unlimited(cfg), sessions, clock=fixed(now)).test_client()
    csrf = csrf_of(client.get(path).get_data(as_text=True))
    assert client.post(path, data={"csrf": csrf}).status_code == 200
    assert emails(sessions, cfg) == ["reader@example.org"]
    assert outbox_files(tmp_path / "outbox") == []


def test_confirmation_through_sendgrid_carries_no_ledger_id(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    sg = SendGridConfig(host=sendgrid_server.url, timeout=2.0)
    cfg = opt_in(config, tmp_path / "outbox", provider="sendgrid", sendgrid=sg)
    done = sign_up(cfg, sessions, cfg.newsletter("daily"), "reader@example.org", at=now)
    assert done.sent_via == "sendgrid"
    assert sendgrid_server.rejected == []  # the body is valid for the v3 API
    (d,) = sendgrid_server.delivered()
    assert d.email == "reader@example.org"
    # The Event Webhook matches delivery_id against the edition ledger: it must not be here.
    assert d.custom_args == {"purpose": "confirm"}
    assert "List-Unsubscribe" not in d.headers
    assert "/confirm/" in d.text and "/confirm/" in d.html


def test_provider_failure_is_one_error_and_the_person_stays_pending_until_resent(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    down = SmtpConfig(port=free_port(), timeout=2)  # nothing listens there
    cfg = opt_in(config, tmp_path / "outbox", provider="smtp", smtp=down)
    daily = cfg.newsletter("daily")
    with pytest.raises(ProviderError) as e:
        sign_up(cfg, sessions, daily, "reader@example.org", at=now)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("smtp did not take the confirmation email to reader@example.org")
    assert "run `digest subscribers subscribe reader@example.org -n daily` again" in message
    assert status(sessions, "reader@example.org") == ("pending", "pending")

    fixed_cfg = opt_in(config, tmp_path / "outbox")
    later = now + timedelta(minutes=5)
    done = sign_up(
        fixed_cfg, sessions, fixed_cfg.newsletter("daily"), "reader@example.org", at=later
    )
    assert done.sent_via == "outbox" and done.subscription.status == "pending"
    assert len(outbox_files(tmp_path / "outbox")) == 1


def test_no_email_returns_the_link_and_sends_nothing(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    cfg = opt_in(config, tmp_path / "outbox")
    done = sign_up(
        cfg, sessions, cfg.newsletter("daily"), "a@example.com", at=now, send_email=False
    )
    assert done.sent_via is None
    assert done.subscription.confirm_url is not None
    assert done.subscription.confirm_url.startswith("https://news.example/confirm/")
    assert outbox_files(tmp_path / "outbox") == []


def test_already_active_gets_no_email_and_suppressed_is_refused(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    cfg = opt_in(config, tmp_path / "outbox")
    daily = cfg.newsletter("daily")
    with sessions() as s, s.begin():
        add_subscriber(s, daily, "ann@example.com", at=now)
        suppress(s, "gone@example.com", "bounced", now)
    done = sign_up(cfg, sessions, daily, "ANN@example.com", at=now)
    assert done.subscription.status == "active" and done.sent_via is None
    with pytest.raises(InputError, match="gone@example.com is on the suppression list"):
        sign_up(cfg, sessions, daily, "gone@example.com", at=now)
    assert outbox_files(tmp_path / "outbox") == []
    assert emails(sessions, cfg) == ["ann@example.com"]


def test_without_double_opt_in_signup_is_active_and_sends_nothing(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    cfg = opt_in(config, tmp_path / "outbox")
    strict = cfg.newsletter("strict")  # double_opt_in is off there
    done = sign_up(cfg, sessions, strict, "a@example.com", at=now)
    assert done.subscription.status == "active" and done.sent_via is None
    assert outbox_files(tmp_path / "outbox") == []
