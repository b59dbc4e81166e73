"""The confirmation page /confirm/<token>: what a damaged, expired, forged or stale link shows,
and the same form, rate-limit and logging rules as the unsubscribe and preference pages."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.web import create_app, make_form_token, redact
from subscribers.audience import audience
from subscribers.service import forget, subscribe, suppress, unsubscribe
from subscribers.tokens import make_token
from tests.confirm_support import csrf_of, opt_in
from tests.web_support import SECRET, membership, unlimited

INVALID = "This link doesn’t work"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def cfg(config: Config, tmp_path: Path) -> Config:
    return opt_in(config, tmp_path / "outbox")


@pytest.fixture
def clock(now: datetime) -> Clock:
    return Clock(now)


@pytest.fixture
def client(cfg: Config, sessions: sessionmaker[Session], clock: Clock) -> FlaskClient:
    return create_app(unlimited(cfg), sessions, clock=clock).test_client()


def pending(sessions: sessionmaker[Session], cfg: Config, at: datetime) -> tuple[int, str]:
    """A pending signup: (subscriber id, path of its confirmation link)."""
    with sessions() as s, s.begin():
        sub = subscribe(s, cfg, cfg.newsletter("daily"), "nia@example.com", at=at)
    assert sub.confirm_token is not None
    return sub.subscriber_id, f"/confirm/{sub.confirm_token}"


def press(client: FlaskClient, path: str, **headers: str):  # type: ignore[no-untyped-def]
    page = client.get(path)
    assert page.status_code == 200
    return client.post(path, data={"csrf": csrf_of(page.get_data(as_text=True))}, headers=headers)


def test_damaged_forged_or_foreign_links_show_the_invalid_link_page(client, sessions, cfg, now):
    sub_id, path = pending(sessions, cfg, now)
    token = path.rpartition("/")[2]
    bad = {
        "damaged": token[:-3] + "xyz",
        "truncated": token[:10],
        "other purpose": make_token(SECRET, sub_id, "daily", "unsubscribe"),
        "other secret": make_token("other", sub_id, "daily", "confirm", issued_at=now),
        "unknown newsletter": make_token(SECRET, sub_id, "weekly", "confirm", issued_at=now),
        "unknown subscriber": make_token(SECRET, sub_id + 99, "daily", "confirm", issued_at=now),
    }
    for name, forged in bad.items():
        form = {"csrf": make_form_token(SECRET, forged, now.timestamp())}
        for method in (client.get, client.post):
            r = method(f"/confirm/{forged}", data=form)
            assert r.status_code == 404, name
            assert INVALID in r.get_data(as_text=True), name
    assert membership(sessions, sub_id).status == "pending"


def test_an_expired_link_shows_the_invalid_link_page_and_confirms_nothing(
    client, sessions, cfg, now, clock
):
    sub_id, path = pending(sessions, cfg, now)
    page = client.get(path)
    clock.at = now + timedelta(days=7, minutes=1)
    assert INVALID in client.get(path).get_data(as_text=True)
    # Shown in time, pressed too late: refused all the same.
    r = client.post(path, data={"csrf": csrf_of(page.get_data(as_text=True))})
    assert r.status_code == 404 and INVALID in r.get_data(as_text=True)
    assert membership(sessions, sub_id).status == "pending"
    clock.at = now + timedelta(days=6)
    assert press(client, path).status_code == 200
    assert membership(sessions, sub_id).status == "active"


def test_post_needs_the_pages_form_token_and_our_origin(client, sessions, cfg, now):
    sub_id, path = pending(sessions, cfg, now)
    token = path.rpartition("/")[2]
    other = make_token(SECRET, sub_id, "strict", "confirm", issued_at=now)
    for csrf in (None, "garbage", make_form_token(SECRET, other, now.timestamp())):
        r = client.post(path, data={} if csrf is None else {"csrf": csrf})
        assert r.status_code == 403
    csrf = make_form_token(SECRET, token, now.timestamp())
    r = client.post(path, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    assert membership(sessions, sub_id).status == "pending"
    r = client.post(path, data={"csrf": csrf}, headers={"Origin": "https://news.example"})
    assert r.status_code == 200
    assert membership(sessions, sub_id).status == "active"


def test_revisiting_after_confirming_says_so_without_a_button(client, sessions, cfg, now):
    _, path = pending(sessions, cfg, now)
    press(client, path)
    page = client.get(path).get_data(as_text=True)
    assert "You’re subscribed" in page and "<form" not in page


def test_an_old_link_never_undoes_a_later_unsubscribe(client, sessions, cfg, now):
    sub_id, path = pending(sessions, cfg, now)
    press(client, path)
    with sessions() as s, s.begin():
        unsubscribe(s, sub_id, "daily", reason="link", at=now)
    page = client.get(path)
    assert page.status_code == 200 and "Nothing was changed" in page.get_data(as_text=True)
    r = client.post(path, data={"csrf": make_form_token(SECRET, path[9:], now.timestamp())})
    assert r.status_code == 200 and "Nothing was changed" in r.get_data(as_text=True)
    assert membership(sessions, sub_id).status == "unsubscribed"


def test_a_forgotten_subscribers_link_is_invalid(client, sessions, cfg, now):
    _, path = pending(sessions, cfg, now)
    page = client.get(path)
    with sessions() as s, s.begin():
        forget(s, "nia@example.com", at=now)
    assert client.get(path).status_code == 404
    r = client.post(path, data={"csrf": csrf_of(page.get_data(as_text=True))})
    assert r.status_code == 404 and INVALID in r.get_data(as_text=True)


def test_an_address_suppressed_before_confirming_never_receives_mail(client, sessions, cfg, now):
    _, path = pending(sessions, cfg, now)
    with sessions() as s, s.begin():
        suppress(s, "nia@example.com", "bounced", now)  # the confirmation email bounced
    press(client, path)
    with sessions() as s:
        assert list(audience(s, cfg, cfg.newsletter("daily"))) == []


def test_confirmation_pages_are_rate_limited_per_client(cfg, sessions, now):
    app = create_app(unlimited(cfg, token_requests_per_minute=1.0), sessions, clock=lambda: now)
    client = app.test_client()
    _, path = pending(sessions, cfg, now)
    codes = [client.get(path).status_code for _ in range(12)]
    assert codes[0] == 200 and codes[-1] == 429


def test_logs_carry_no_confirmation_token(client, sessions, cfg, now, caplog):
    caplog.set_level(logging.DEBUG)
    _, path = pending(sessions, cfg, now)
    press(client, path)
    assert path[9:] not in caplog.text
    assert redact(f"GET {path} HTTP/1.1") == "GET /confirm/… HTTP/1.1"
