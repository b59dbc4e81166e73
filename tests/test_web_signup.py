"""The public sign-up form /subscribe/<newsletter>: always double opt-in, the same answer
whatever the address's state, and the form, rate-limit and logging rules of the other pages.
The form only queues a sign-up; `deliver` runs the confirmation sender as digest serve does."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, SmtpConfig
from digest.confirmations import CONFIRM_COOLDOWN, SignUpDelivery, deliver_sign_ups
from digest.web import create_app, make_form_token
from digest.web_models import SignupRequest
from subscribers.models import Consent, Subscriber
from subscribers.service import suppress, unsubscribe
from tests.confirm_support import csrf_of, link_path, opt_in, parse
from tests.fakes.smtp import free_port
from tests.web_support import SECRET, add_reader, membership, unlimited

FORM = "/subscribe/daily"
CHECK_INBOX = "Check your inbox"
DESCRIPTION = "The morning's local news in five minutes."


@pytest.fixture
def cfg(config: Config, tmp_path: Path) -> Config:
    """Outbox provider, and a newsletter that skips double opt-in for CLI sign-ups."""
    base = opt_in(config, tmp_path / "outbox")
    daily = replace(base.newsletter("daily"), double_opt_in=False, description=DESCRIPTION)
    return replace(base, newsletters={**base.newsletters, "daily": daily})


@pytest.fixture
def client(cfg: Config, sessions: sessionmaker[Session], now: datetime) -> FlaskClient:
    return create_app(unlimited(cfg), sessions, clock=fixed(now)).test_client()


def outbox(cfg: Config) -> list[Path]:
    folder = cfg.outbox.dir
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def recipients(cfg: Config) -> list[str]:
    return sorted(str(parse(f.read_bytes())["To"]) for f in outbox(cfg))


def post(client: FlaskClient, email: str, **fields: str):  # type: ignore[no-untyped-def]
    page = client.get(FORM)
    assert page.status_code == 200
    data = {"csrf": csrf_of(page.get_data(as_text=True)), "email": email, **fields}
    return client.post(FORM, data=data)


def deliver(cfg: Config, sessions: sessionmaker[Session], at: datetime) -> SignUpDelivery:
    """One pass of the confirmation sender, as digest serve runs every few seconds."""
    return deliver_sign_ups(cfg, sessions, clock=fixed(at))


def queued(sessions: sessionmaker[Session]) -> list[SignupRequest]:
    with sessions() as s:
        return list(s.scalars(select(SignupRequest).order_by(SignupRequest.id)))


def subscriber(sessions: sessionmaker[Session], email: str) -> Subscriber | None:
    with sessions() as s:
        return s.scalar(select(Subscriber).where(Subscriber.email == email))


def test_the_form_names_the_newsletter_and_asks_for_consent(client: FlaskClient) -> None:
    r = client.get(FORM)
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "Subscribe to The Test Gazette" in html
    assert DESCRIPTION.replace("'", "&#39;") in html
    assert 'type="email"' in html and 'for="email"' in html and 'for="name"' in html
    assert "you agree to receive The Test Gazette" in html
    assert r.headers["Cache-Control"] == "no-store"
    assert client.get("/subscribe/nope").status_code == 404


def test_signing_up_emails_a_link_that_confirms_even_without_double_opt_in_configured(
    client: FlaskClient, cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    r = post(client, "New@Example.com", name="Nia")
    assert r.status_code == 200 and CHECK_INBOX in r.get_data(as_text=True)
    # The request itself only queued the sign-up: nothing stored about the person, no email.
    assert subscriber(sessions, "new@example.com") is None and outbox(cfg) == []
    assert [q.email for q in queued(sessions)] == ["new@example.com"]
    assert deliver(cfg, sessions, now).sent == 1
    sub = subscriber(sessions, "new@example.com")
    assert sub is not None and sub.source == "web" and sub.name == "Nia"
    assert membership(sessions, sub.id).status == "pending"  # not active on a form post alone

    (file,) = outbox(cfg)
    msg = parse(file.read_bytes())
    assert msg["To"] == "new@example.com"
    path = link_path(msg)
    page = client.get(path)
    assert client.post(path, data={"csrf": csrf_of(page.get_data(as_text=True))}).status_code == 200
    assert membership(sessions, sub.id).status == "active"
    with sessions() as s:
        (consent,) = s.scalars(select(Consent).where(Consent.subscriber_id == sub.id))
    assert consent.method == "double_opt_in"


def test_every_known_address_gets_the_same_page_and_suppressed_ones_no_email(
    client: FlaskClient, cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    fresh = post(client, "fresh@example.com").get_data(as_text=True)
    deliver(cfg, sessions, now)
    assert len(outbox(cfg)) == 1

    active = add_reader(sessions, cfg, "active@example.com", now)
    gone = add_reader(sessions, cfg, "gone@example.com", now)
    with sessions() as s, s.begin():
        unsubscribe(s, gone, "daily", reason="test", at=now)
        suppress(s, "blocked@example.com", "operator", now)
        suppress(s, "bounced@example.com", "bounced", now)
    for email in ("fresh@example.com", "active@example.com", "blocked@example.com"):
        r = post(client, email)
        assert r.status_code == 200 and r.get_data(as_text=True) == fresh, email
    # No email for the active or suppressed address, and none again for the pending one
    # within the cooldown (the link it got minutes ago still works).
    assert deliver(cfg, sessions, now) == SignUpDelivery(skipped=3)
    assert membership(sessions, active).status == "active"
    assert subscriber(sessions, "blocked@example.com") is None
    assert recipients(cfg) == ["fresh@example.com"]

    r = post(client, "bounced@example.com")
    assert r.get_data(as_text=True) == fresh
    r = post(client, "gone@example.com")
    assert r.get_data(as_text=True) == fresh
    assert deliver(cfg, sessions, now) == SignUpDelivery(sent=1, skipped=1)
    # Signing up again after leaving is the person's own request: it needs a new confirmation.
    assert membership(sessions, gone).status == "pending"
    assert recipients(cfg) == ["fresh@example.com", "gone@example.com"]
    # After the cooldown, signing up again sends a fresh link (its file is rewritten).
    post(client, "fresh@example.com")
    assert deliver(cfg, sessions, now + CONFIRM_COOLDOWN * 2).sent == 1


def test_a_filled_honeypot_is_accepted_silently_and_changes_nothing(
    client: FlaskClient, cfg: Config, sessions: sessionmaker[Session]
) -> None:
    r = post(client, "bot@example.com", website="https://spam.example")
    assert r.status_code == 200 and CHECK_INBOX in r.get_data(as_text=True)
    assert subscriber(sessions, "bot@example.com") is None
    assert outbox(cfg) == [] and queued(sessions) == []


def test_posts_without_the_form_token_or_from_another_site_are_refused(
    client: FlaskClient, cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    csrf = csrf_of(client.get(FORM).get_data(as_text=True))
    email = {"email": "nia@example.com"}
    refused = [
        client.post(FORM, data=email),
        client.post(FORM, data={**email, "csrf": "forged"}),
        client.post(
            FORM, data={**email, "csrf": make_form_token(SECRET, "other", now.timestamp())}
        ),
        client.post(FORM, data={**email, "csrf": csrf}, headers={"Origin": "https://evil.example"}),
    ]
    assert [r.status_code for r in refused] == [403] * 4
    assert subscriber(sessions, "nia@example.com") is None and outbox(cfg) == []
    same_site = client.post(
        FORM, data={**email, "csrf": csrf}, headers={"Origin": "https://news.example"}
    )
    assert same_site.status_code == 200


@pytest.mark.parametrize("email", ["", "not-an-address", "nia@", "a b@example.com"])
def test_an_invalid_address_shows_the_form_again_with_one_error(
    client: FlaskClient, cfg: Config, email: str
) -> None:
    r = post(client, email, name="Nia")
    html = r.get_data(as_text=True)
    assert r.status_code == 400
    assert html.count("Please enter a valid email address") == 1
    assert 'aria-invalid="true"' in html and 'value="Nia"' in html
    assert 'name="csrf"' in html and outbox(cfg) == []


def test_sign_ups_are_rate_limited_per_client(
    cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    app = create_app(unlimited(cfg, token_requests_per_minute=1.0), sessions, clock=fixed(now))
    client = app.test_client()
    csrf = csrf_of(client.get(FORM).get_data(as_text=True))
    codes = [
        client.post(FORM, data={"csrf": csrf, "email": f"r{i}@example.com"}).status_code
        for i in range(12)
    ]
    assert codes[0] == 200 and codes[-1] == 429
    other = app.test_client()
    r = other.get(FORM, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert r.status_code == 200


def test_a_provider_outage_is_retried_by_the_sender_and_never_logs_the_address(
    client: FlaskClient,
    cfg: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = replace(cfg.newsletter("daily"), provider="smtp")
    broken = replace(
        cfg,
        newsletters={**cfg.newsletters, "daily": down},
        smtp=SmtpConfig(port=free_port(), timeout=2),  # nothing listens there
    )
    with caplog.at_level(logging.DEBUG):
        r = post(client, "reader@example.org")
        assert r.status_code == 200 and CHECK_INBOX in r.get_data(as_text=True)
        assert deliver(broken, sessions, now) == SignUpDelivery(retrying=1)
        (waiting,) = queued(sessions)
        assert waiting.attempts == 1 and waiting.next_attempt_at > now
        assert deliver(cfg, sessions, now) == SignUpDelivery()  # not due yet
        # Once the provider is back, the next pass after the backoff sends the link.
        assert deliver(cfg, sessions, waiting.next_attempt_at).sent == 1
    assert len(outbox(cfg)) == 1
    assert "reader@example.org" not in caplog.text


def test_a_sign_up_is_dropped_after_a_day_of_provider_failures(
    client: FlaskClient, cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    broken = replace(
        cfg,
        newsletters={**cfg.newsletters, "daily": replace(cfg.newsletter("daily"), provider="smtp")},
        smtp=SmtpConfig(port=free_port(), timeout=2),
    )
    post(client, "reader@example.org")
    assert deliver(broken, sessions, now).retrying == 1
    assert deliver(broken, sessions, now + timedelta(hours=25)).dropped == 1
    assert queued(sessions) == []
