"""The unsubscribe and preferences pages in real headless Chromium at phone width (375 px).

Screenshots go to test-artifacts/ (web-*.png) for people to look at.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from digest.clock import fixed
from digest.confirmations import deliver_sign_ups
from digest.web import create_app
from subscribers.audience import sections_for
from tests.confirm_support import opt_in
from tests.web_support import add_edition, add_reader, live_server, membership, token, unlimited

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DIGEST_BROWSER", "/usr/bin/chromium")
PHONE = {"width": 375, "height": 740}


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (set DIGEST_BROWSER)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        yield context.new_page()
        context.close()
        browser.close()


def fits_the_phone(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page scrolls sideways ({width}px)"
    small = page.evaluate(
        """[...document.querySelectorAll('button, input[type=checkbox], input[type=radio]')]
           .map(e => e.closest('label') || e)
           .filter(e => e.getBoundingClientRect().height < 44).length"""
    )
    assert small == 0, "every control has a tap target of at least 44 px"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unsubscribe_page_on_a_phone(page, config, sessions, now, artifacts_dir):
    sid = add_reader(sessions, config, "kim@example.com", now)
    app = create_app(unlimited(config), sessions, clock=fixed(now))
    with live_server(app) as base:
        response = page.goto(f"{base}/u/{token(sid, 'unsubscribe')}")
        assert response is not None and response.status == 200
        assert page.title() == "Unsubscribe · The Test Gazette"
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-unsubscribe.png", full_page=True)
        assert membership(sessions, sid).status == "active"  # loading the page changed nothing
        page.get_by_role("button", name="Unsubscribe").click()
        page.get_by_role("heading", name="You’re unsubscribed").wait_for()
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-unsubscribed.png", full_page=True)
    assert membership(sessions, sid).status == "unsubscribed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_preferences_page_on_a_phone(page, config, sessions, now, artifacts_dir):
    sid = add_reader(sessions, config, "lee@example.com", now)
    app = create_app(unlimited(config), sessions, clock=fixed(now))
    with live_server(app) as base:
        page.goto(f"{base}/p/{token(sid, 'preferences')}")
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-preferences.png", full_page=True)
        page.get_by_role("checkbox", name="Health").uncheck()
        page.get_by_role("button", name="Move Business up").click()
        page.get_by_role("status").wait_for()
        page.get_by_role("radio", name="Pause for now").check()
        page.get_by_role("button", name="Save preferences").click()
        page.get_by_role("status").wait_for()
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-preferences-saved.png", full_page=True)
    nl = config.newsletter("daily")
    with sessions() as s:
        assert sections_for(s, nl, [sid])[sid] == ("Business", "News", "Entertainment")
    assert membership(sessions, sid).paused is True


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_archive_and_invalid_link_pages_on_a_phone(page, config, sessions, now, artifacts_dir):
    with sessions() as s, s.begin():
        add_edition(s, "daily", date(2026, 3, 9), "sent", now, title="Bridge reopens downtown")
        add_edition(s, "daily", date(2026, 3, 10), "sent", now, title="Council votes today")
    app = create_app(unlimited(config), sessions, clock=fixed(now))
    with live_server(app) as base:
        page.goto(f"{base}/archive/daily/")
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-archive-index.png", full_page=True)
        page.get_by_role("link", name="Monday, March 9, 2026").click()
        page.get_by_role("link", name="Bridge reopens downtown").wait_for()
        page.screenshot(path=artifacts_dir / "web-archive-edition.png", full_page=True)
        response = page.goto(f"{base}/u/not-a-real-token")
        assert response is not None and response.status == 404
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-invalid-link.png", full_page=True)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_signup_form_on_a_phone(page, config, sessions, now, artifacts_dir, tmp_path):
    cfg = opt_in(config, tmp_path / "outbox")
    app = create_app(unlimited(cfg), sessions, clock=fixed(now))
    with live_server(app) as base:
        page.goto(f"{base}/subscribe/daily")
        assert page.title() == "Subscribe · The Test Gazette"
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-subscribe.png", full_page=True)
        page.get_by_label("Email address").fill("not an address")
        page.get_by_label("Name").fill("Kim")
        page.get_by_role("button", name="Subscribe").click()
        page.get_by_role("alert").wait_for()
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-subscribe-error.png", full_page=True)
        page.get_by_label("Email address").fill("kim@example.com")
        page.get_by_role("button", name="Subscribe").click()
        page.get_by_role("heading", name="Check your inbox").wait_for()
        fits_the_phone(page)
        page.screenshot(path=artifacts_dir / "web-subscribe-sent.png", full_page=True)
    # The page only queued the sign-up; the confirmation sender (digest serve runs it every
    # few seconds) emails the link.
    assert deliver_sign_ups(cfg, sessions, clock=fixed(now)).sent == 1
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
