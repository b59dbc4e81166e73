"""The subscriber pages: one-click unsubscribe, preferences, the archive, and link security."""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.web import create_app, make_form_token
from subscribers.audience import sections_for
from tests.web_support import SECRET, add_edition, add_reader, membership, token, unlimited

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def client(config: Config, sessions: sessionmaker[Session], now: datetime) -> FlaskClient:
    return create_app(unlimited(config), sessions, clock=fixed(now)).test_client()


@pytest.fixture
def ann(sessions: sessionmaker[Session], config: Config, now: datetime) -> int:
    return add_reader(sessions, config, "ann@example.com", now, name="Ann Reader")


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "the form carries a form token"
    return m.group(1)


# --- unsubscribe -------------------------------------------------------------------------------


def test_one_click_post_unsubscribes_at_once_without_redirect_or_cookie(client, sessions, ann):
    r = client.post(f"/u/{token(ann, 'unsubscribe')}", data=ONE_CLICK)
    assert r.status_code == 200
    assert "Set-Cookie" not in r.headers
    assert "Location" not in r.headers
    assert "You’re unsubscribed" in r.get_data(as_text=True)
    m = membership(sessions, ann)
    assert m.status == "unsubscribed"
    assert m.unsubscribe_reason == "unsubscribe link"


def test_one_click_accepts_multipart_body_as_rfc_8058_allows(client, sessions, ann):
    r = client.post(
        f"/u/{token(ann, 'unsubscribe')}", data=ONE_CLICK, content_type="multipart/form-data"
    )
    assert r.status_code == 200
    assert membership(sessions, ann).status == "unsubscribed"


def test_one_click_is_idempotent(client, sessions, ann, now):
    url = f"/u/{token(ann, 'unsubscribe')}"
    first = client.post(url, data=ONE_CLICK)
    at = membership(sessions, ann).unsubscribed_at
    second = client.post(url, data=ONE_CLICK)
    assert first.status_code == second.status_code == 200
    assert first.get_data() == second.get_data()
    assert membership(sessions, ann).unsubscribed_at == at == now


def test_get_shows_a_confirm_button_and_never_unsubscribes(client, sessions, ann):
    url = f"/u/{token(ann, 'unsubscribe')}"
    for _ in range(3):  # a mail scanner may follow the link several times
        r = client.get(url)
        assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert '<form method="post"' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "Set-Cookie" not in r.headers
    assert r.headers["Cache-Control"] == "no-store"
    assert membership(sessions, ann).status == "active"
    client.head(url)
    assert membership(sessions, ann).status == "active"


def test_unsubscribe_page_shows_no_address_or_name(client, ann):
    page = client.get(f"/u/{token(ann, 'unsubscribe')}").get_data(as_text=True)
    assert "ann@example.com" not in page and "Ann" not in page


def test_post_without_the_one_click_body_changes_nothing(client, sessions, ann):
    r = client.post(f"/u/{token(ann, 'unsubscribe')}", data={"List-Unsubscribe": "yes"})
    assert r.status_code == 400
    assert membership(sessions, ann).status == "active"


def test_unsubscribe_touches_only_the_newsletter_of_the_link(client, sessions, config, now):
    sid = add_reader(sessions, config, "bo@example.com", now)
    add_reader(sessions, config, "bo@example.com", now, newsletter="strict")
    client.post(f"/u/{token(sid, 'unsubscribe', 'strict')}", data=ONE_CLICK)
    assert membership(sessions, sid, "strict").status == "unsubscribed"
    assert membership(sessions, sid, "daily").status == "active"


# --- tokens: tampered, foreign, unknown ---------------------------------------------------------


def test_tampered_foreign_and_orphaned_tokens_get_the_same_404(client, sessions, ann):
    good = token(ann, "unsubscribe")
    cases = {
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "foreign secret": token(ann, "unsubscribe", secret="another-site"),
        "other purpose": token(ann, "confirm"),
        "garbage": "not-a-token",
        "unknown newsletter": token(ann, "unsubscribe", "nope"),
    }
    bodies = set()
    for name, bad in cases.items():
        r = client.post(f"/u/{bad}", data=ONE_CLICK)
        assert r.status_code == 404, name
        assert client.get(f"/u/{bad}").status_code == 404, name
        bodies.add(r.get_data())
    assert len(bodies) == 1
    assert membership(sessions, ann).status == "active"


def test_unsubscribe_of_a_subscriber_who_no_longer_exists_looks_like_success(client):
    """A forgotten subscriber's old link answers exactly like a live one (no enumeration)."""
    r = client.post(f"/u/{token(999_999, 'unsubscribe')}", data=ONE_CLICK)
    assert r.status_code == 200
    assert "You’re unsubscribed" in r.get_data(as_text=True)


def test_preference_link_of_unknown_subscriber_is_the_invalid_link_page(client, ann):
    unknown = client.get(f"/p/{token(999_999, 'preferences')}")
    forged = client.get(f"/p/{token(ann, 'preferences', secret='x')}")
    assert unknown.status_code == forged.status_code == 404
    assert unknown.get_data() == forged.get_data()


def test_a_preferences_token_cannot_unsubscribe(client, sessions, ann):
    r = client.post(f"/u/{token(ann, 'preferences')}", data=ONE_CLICK)
    assert r.status_code == 404
    assert membership(sessions, ann).status == "active"


# --- preferences ------------------------------------------------------------------------------


def test_preferences_page_lists_sections_in_the_subscribers_order(client, sessions, config, now):
    sid = add_reader(sessions, config, "cy@example.com", now, sections=["Health", "News"])
    page = client.get(f"/p/{token(sid, 'preferences')}").get_data(as_text=True)
    names = re.findall(r'name="section" value="([^"]+)"( checked)?', page)
    assert names == [
        ("Health", " checked"),
        ("News", " checked"),
        ("Business", ""),
        ("Entertainment", ""),
    ]
    assert "cy@example.com" not in page


def _save(client, url, page, **fields):
    data = {"csrf": csrf_of(page), "order": re.findall(r'name="order" value="([^"]+)"', page)}
    data.update(fields)
    return client.post(url, data=data)


def test_preferences_save_sections_in_order_and_pause(client, sessions, config, ann):
    url = f"/p/{token(ann, 'preferences')}"
    page = client.get(url).get_data(as_text=True)
    r = _save(client, url, page, section=["Business", "News"], delivery="paused")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert "Saved" in r.get_data(as_text=True)
    with sessions() as s:
        assert sections_for(s, config.newsletter("daily"), [ann])[ann] == ("News", "Business")
    assert membership(sessions, ann).paused is True


def test_moving_a_section_reorders_and_saves(client, sessions, config, ann):
    url = f"/p/{token(ann, 'preferences')}"
    page = client.get(url).get_data(as_text=True)
    r = _save(client, url, page, section=["News", "Business"], move="down:0", delivery="active")
    assert r.status_code == 200
    with sessions() as s:
        assert sections_for(s, config.newsletter("daily"), [ann])[ann] == ("Business", "News")
    shown = re.findall(r'name="order" value="([^"]+)"', r.get_data(as_text=True))
    assert shown == ["Business", "News", "Health", "Entertainment"]


def test_nothing_chosen_and_not_paused_is_refused(client, sessions, config, ann):
    url = f"/p/{token(ann, 'preferences')}"
    page = client.get(url).get_data(as_text=True)
    r = _save(client, url, page, delivery="active")
    assert r.status_code == 400
    assert "at least one section" in r.get_data(as_text=True)
    with sessions() as s:
        assert (
            sections_for(s, config.newsletter("daily"), [ann])[ann]
            == config.newsletter("daily").section_names
        )


def test_preferences_post_without_or_with_a_foreign_form_token_is_refused(
    client, sessions, config, ann, now
):
    url = f"/p/{token(ann, 'preferences')}"
    order = list(config.newsletter("daily").section_names)
    base = {"order": order, "section": ["Health"], "delivery": "paused"}
    other = token(ann + 1, "preferences")
    bad_tokens = {
        "missing": None,
        "garbage": "x",
        "for another link": make_form_token(SECRET, other, now.timestamp()),
        "expired": make_form_token(
            SECRET, token(ann, "preferences"), (now - timedelta(days=1)).timestamp()
        ),
        "foreign secret": make_form_token("other", token(ann, "preferences"), now.timestamp()),
    }
    for name, csrf in bad_tokens.items():
        data = dict(base) if csrf is None else {**base, "csrf": csrf}
        assert client.post(url, data=data).status_code == 403, name
    assert membership(sessions, ann).paused is False


def test_preferences_post_from_another_site_is_refused(client, sessions, ann):
    url = f"/p/{token(ann, 'preferences')}"
    page = client.get(url).get_data(as_text=True)
    data = {
        "csrf": csrf_of(page),
        "order": re.findall(r'name="order" value="([^"]+)"', page),
        "delivery": "paused",
        "section": ["News"],
    }
    for origin in ("https://evil.example", "null"):
        r = client.post(url, data=data, headers={"Origin": origin})
        assert r.status_code == 403
    assert membership(sessions, ann).paused is False
    ok = client.post(url, data=data, headers={"Origin": "https://news.example"})
    assert ok.status_code == 200
    assert membership(sessions, ann).paused is True


def test_preferences_of_an_unsubscribed_member_offer_nothing_to_change(client, sessions, ann):
    client.post(f"/u/{token(ann, 'unsubscribe')}", data=ONE_CLICK)
    page = client.get(f"/p/{token(ann, 'preferences')}").get_data(as_text=True)
    assert "not subscribed" in page
    assert "<form" not in page


# --- rate limiting ------------------------------------------------------------------------------


def test_token_endpoints_are_rate_limited_per_client(config, sessions, now, ann):
    clock_now = [now]
    app = create_app(
        unlimited(config, token_requests_per_minute=60.0), sessions, clock=lambda: clock_now[0]
    )
    client = app.test_client()
    url = f"/u/{token(ann, 'unsubscribe')}"
    codes = [client.get(url).status_code for _ in range(15)]
    assert codes[:10] == [200] * 10
    assert codes[-1] == 429
    limited = client.get(url)
    assert int(limited.headers["Retry-After"]) >= 1
    other = client.get(url, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200
    clock_now[0] = now + timedelta(seconds=5)
    assert client.get(url).status_code == 200


def test_genuine_one_click_posts_are_never_rate_limited(config, sessions, now, ann):
    """Gmail and Yahoo send one-click POSTs from a few servers of their own; losing one to a
    rate limit would leave a reader subscribed against their will."""
    app = create_app(unlimited(config, token_requests_per_minute=1.0), sessions, clock=fixed(now))
    client = app.test_client()
    forged = token(ann, "unsubscribe", secret="guess")
    codes = [client.post(f"/u/{forged}", data=ONE_CLICK).status_code for _ in range(12)]
    assert codes[0] == 404 and codes[-1] == 429
    assert client.get(f"/u/{token(ann, 'unsubscribe')}").status_code == 429
    r = client.post(f"/u/{token(ann, 'unsubscribe')}", data=ONE_CLICK)
    assert r.status_code == 200
    assert membership(sessions, ann).status == "unsubscribed"


# --- archive --------------------------------------------------------------------------------


def test_archive_shows_sent_editions_without_personal_data(client, sessions, config, now, ann):
    with sessions() as s, s.begin():
        add_edition(s, "daily", date(2026, 3, 9), "sent", now, title="Bridge reopens downtown")
        add_edition(s, "daily", date(2026, 3, 10), "frozen", now, title="Council votes today")
        add_edition(s, "daily", date(2026, 3, 11), "draft", now, title="Secret draft story")
    index = client.get("/archive/daily/")
    assert index.status_code == 200
    listing = index.get_data(as_text=True)
    assert "2026-03-10" in listing and "2026-03-09" in listing
    assert "2026-03-11" not in listing
    page = client.get("/archive/daily/2026-03-09")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Bridge reopens downtown" in html
    for personal in ("ann@example.com", "Ann", "/u/", "/p/", token(ann, "unsubscribe")):
        assert personal not in html
    assert "%%dg" not in html
    assert client.get("/archive/daily/2026-03-10").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/archive/daily/2026-03-11",  # draft
        "/archive/daily/2026-03-12",  # none
        "/archive/daily/2026-3-9",
        "/archive/daily/yesterday",
        "/archive/nope/2026-03-09",
        "/archive/nope/",
    ],
)
def test_archive_drafts_and_unknown_editions_404(client, sessions, now, path):
    with sessions() as s, s.begin():
        add_edition(s, "daily", date(2026, 3, 11), "draft", now)
    assert client.get(path).status_code == 404


def test_archive_escapes_untrusted_article_text(client, sessions, now):
    with sessions() as s, s.begin():
        add_edition(s, "daily", date(2026, 3, 9), "sent", now, title="<script>alert(1)</script>")
    html = client.get("/archive/daily/2026-03-09").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


# --- headers and logs ---------------------------------------------------------------------------


def test_pages_send_protective_headers(client, ann):
    r = client.get(f"/u/{token(ann, 'unsubscribe')}")
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert 'src="http' not in r.get_data(as_text=True)  # no external assets


def test_logs_carry_no_token_or_address(client, ann, caplog):
    caplog.set_level(logging.DEBUG)
    client.post(f"/u/{token(ann, 'unsubscribe')}", data=ONE_CLICK)
    client.get(f"/p/{token(ann, 'preferences')}")
    text = caplog.text
    assert token(ann, "unsubscribe") not in text
    assert "ann@example.com" not in text
    assert "unsubscribe via link: newsletter=daily" in text


def test_redacting_handler_removes_tokens_from_the_access_log():
    from digest.web import redact

    line = "POST /u/WzEsImRhaWx5Il0.abc HTTP/1.1 and GET /p/xyz?x=1"
    assert redact(line) == "POST /u/… HTTP/1.1 and GET /p/…?x=1"


def test_unknown_paths_and_methods_get_a_plain_page(client):
    missing = client.get("/u/")
    assert missing.status_code == 404
    assert "<title>Not Found" in missing.get_data(as_text=True)
    assert client.put("/webhooks/sendgrid").status_code == 405
