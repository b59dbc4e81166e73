"""Click events: stored once between the redirect and SendGrid's click events, and bot or
scanner clicks flagged and not counted (the rule in digest.clicks), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent, agent_class
from digest.clock import fixed
from digest.config import Config
from digest.ledger import Delivery
from digest.web import apply_events, create_app
from tests.clicks_support import Sent, outbox, path_of, send, tracked
from tests.fakes.population import add_population
from tests.render_support import store_edition
from tests.web_support import unlimited

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile"


@pytest.fixture
def sent(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> tuple[Config, list[Sent]]:
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 4, now)
    send(config, sessions, now)
    return config, outbox(config)


def click(
    config: Config,
    sessions: sessionmaker[Session],
    url: str,
    at: datetime,
    agent: str = BROWSER,
    method: str = "GET",
) -> int:
    web = create_app(unlimited(config), sessions, clock=fixed(at)).test_client()
    return web.open(path_of(url), method=method, headers={"User-Agent": agent}).status_code


def stored(sessions: sessionmaker[Session]) -> list[tuple[str | None, bool, str]]:
    with sessions() as session:
        rows = session.scalars(select(ClickEvent).order_by(ClickEvent.id))
        return [(e.flag, e.counted, e.source) for e in rows]


def delivery_of(sessions: sessionmaker[Session], email: str) -> Delivery:
    with sessions() as session:
        row = session.scalars(select(Delivery).where(Delivery.email == email)).one()
        return row


def test_a_readers_click_is_counted_with_the_delivery_it_came_from(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    mail = mails[0]
    assert click(config, sessions, mail.html_links[0], now + timedelta(minutes=3)) == 302
    with sessions() as session:
        (event,) = session.scalars(select(ClickEvent))
        delivery = session.get(Delivery, event.delivery_id)
        assert delivery is not None
    assert delivery.email == mail.to
    assert (event.flag, event.counted, event.agent) == (None, True, "browser")
    assert event.subject == delivery.subject and delivery.subject
    assert event.variant == delivery.variant


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0 (compatible; Mimecast URL Protect)",
        "Proofpoint URL Defense",
        "BarracudaCentral link scanner",
        "Microsoft Office Existence Discovery",
        "python-requests/2.31",
        "curl/8.5.0",
        "",
    ],
)
def test_scanner_and_non_browser_agents_are_flagged(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime, agent: str
) -> None:
    config, mails = sent
    click(config, sessions, mails[0].html_links[0], now + timedelta(minutes=3), agent)
    assert stored(sessions) == [("scanner", False, "redirect")]


def test_user_agent_classes() -> None:
    assert agent_class(BROWSER) == "browser"
    assert agent_class("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0") == "browser"
    assert agent_class("Mozilla/5.0 (compatible; SafeLinks)") == "scanner"
    assert agent_class("  ") == "none"


def test_a_click_seconds_after_delivery_is_flagged_early(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    click(config, sessions, mails[0].html_links[0], now + timedelta(seconds=4))
    click(config, sessions, mails[1].html_links[0], now + timedelta(seconds=11))
    assert stored(sessions) == [("early", False, "redirect"), (None, True, "redirect")]


def test_several_links_of_one_message_within_a_second_are_all_flagged(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    links = sorted(set(mails[0].html_links))
    assert len(links) >= 3
    t = now + timedelta(minutes=10)
    for i, url in enumerate(links[:3]):
        click(config, sessions, url, t + timedelta(milliseconds=300 * i))
    # The same reader clicking another story a minute later is a reader.
    click(config, sessions, links[0], t + timedelta(minutes=1))
    assert stored(sessions) == [("burst", False, "redirect")] * 3 + [(None, True, "redirect")]


def test_the_same_link_twice_is_two_clicks_but_one_clicker(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    url = mails[0].html_links[0]
    click(config, sessions, url, now + timedelta(minutes=5))
    click(config, sessions, url, now + timedelta(minutes=5, seconds=0.5))
    assert stored(sessions) == [(None, True, "redirect")] * 2


def _sendgrid(
    sessions: sessionmaker[Session], config: Config, mail: Sent, url: str, at: datetime, n: int
) -> dict[str, int]:
    row = delivery_of(sessions, mail.to)
    event = {
        "event": "click",
        "email": mail.to,
        "delivery_id": str(row.id),
        "url": url,
        "timestamp": int(at.timestamp()),
        "useragent": BROWSER,
        "sg_event_id": f"click-{n}",
    }
    with sessions.begin() as session:
        return apply_events(session, [event], at=at, config=config).counts


def test_a_click_reported_by_the_redirect_and_by_sendgrid_is_stored_once(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    mail, url = mails[0], mails[0].html_links[0]
    t = now + timedelta(minutes=5)
    click(config, sessions, url, t)
    assert _sendgrid(sessions, config, mail, url, t + timedelta(seconds=20), 1) == {
        "click (duplicate)": 1
    }
    # The webhook's redelivery of the same event changes nothing either.
    assert _sendgrid(sessions, config, mail, url, t + timedelta(seconds=20), 1) == {"duplicate": 1}
    # SendGrid first, the redirect a moment later: still one.
    other = mails[1]
    _sendgrid(sessions, config, other, other.html_links[0], t, 2)
    click(config, sessions, other.html_links[0], t + timedelta(seconds=3))
    # A click an hour later is another click.
    assert _sendgrid(sessions, config, mail, url, t + timedelta(hours=1), 3) == {
        "click (counted)": 1
    }
    assert stored(sessions) == [
        (None, True, "redirect"),
        (None, True, "sendgrid"),
        (None, True, "sendgrid"),
    ]


def test_sendgrid_clicks_on_unknown_links_or_foreign_tokens_are_not_stored(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, mails = sent
    t = now + timedelta(minutes=5)
    assert _sendgrid(sessions, config, mails[0], "https://elsewhere.example/", t, 1) == {
        "click (unknown link)": 1
    }
    # Another reader's tracked link reported for this delivery.
    assert _sendgrid(sessions, config, mails[0], mails[1].html_links[0], t, 2) == {
        "click (unknown link)": 1
    }
    assert stored(sessions) == []


def test_opens_are_stored_only_with_track_opens(
    sent: tuple[Config, list[Sent]], sessions: sessionmaker[Session], now: datetime
) -> None:
    import dataclasses

    config, mails = sent
    row = delivery_of(sessions, mails[0].to)
    event = {
        "event": "open",
        "email": mails[0].to,
        "delivery_id": str(row.id),
        "timestamp": int(now.timestamp()) + 60,
    }
    with sessions.begin() as session:
        got = apply_events(session, [event], at=now, config=config).counts
    assert got == {"ignored": 1}
    nl = dataclasses.replace(config.newsletter("daily"), track_opens=True)
    opens = dataclasses.replace(config, newsletters={**config.newsletters, "daily": nl})
    with sessions.begin() as session:
        assert apply_events(session, [event], at=now, config=opens).counts == {"open": 1}
    with sessions() as session:
        assert [e.kind for e in session.scalars(select(ClickEvent))] == ["open"]
