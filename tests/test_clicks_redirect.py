"""Tracked links: what a tracked send contains, and what `/r/<token>` answers (signature,
tampering, open-redirect attempts, old editions, HEAD), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent
from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition
from digest.render import Renderer
from digest.tracking import TrackedLink, link_part
from digest.web import create_app
from tests.clicks_support import outbox, path_of, send, tracked
from tests.fakes.population import add_population
from tests.render_support import store_edition
from tests.web_support import SECRET, unlimited


@pytest.fixture
def setup(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> tuple[Config, Edition]:
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        edition = store_edition(session)
        add_population(session, 6, now)
    report = send(config, sessions, now)
    assert report.sent_now == 6
    return config, edition


def client(config: Config, sessions: sessionmaker[Session], at: datetime) -> FlaskClient:
    return create_app(unlimited(config), sessions, clock=fixed(at)).test_client()


def events(sessions: sessionmaker[Session]) -> list[ClickEvent]:
    with sessions() as session:
        return list(session.scalars(select(ClickEvent).order_by(ClickEvent.id)))


def test_every_content_link_is_tracked_and_personal_links_are_not(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session]
) -> None:
    config, edition = setup
    mails = outbox(config)
    assert len(mails) == 6
    for mail in mails:
        assert mail.html_links and mail.text_links
        assert set(mail.html_links) == set(mail.text_links)
        # The story links are tracked; unsubscribe, preferences and the web version are not.
        assert "/u/" in mail.html and "/p/" in mail.html and "/archive/" in mail.html
        for section in ("news", "business", "health", "entertainment"):
            assert f"https://news.example/{section}/" not in mail.html + mail.text
        assert not any("/u/" in u or "/p/" in u for u in mail.html_links)
    with sessions() as session:
        stored = list(
            session.scalars(select(TrackedLink).where(TrackedLink.edition_id == edition.id))
        )
    assert {link.kind for link in stored} == {"story"}
    assert len(stored) == len(edition.items)
    # The link half is one of the stored links; the reader half is each reader's own.
    halves = {f"{config.site.base_url}/r/{link_part(SECRET, link.id)}" for link in stored}
    for mail in mails:
        assert {u.rsplit(".", 2)[0] for u in mail.html_links} <= halves
        assert len({u.rsplit(".", 2)[1] for u in mail.html_links}) == 1
    readers = [mail.html_links[0].rsplit(".", 2)[1] for mail in mails]
    assert len(set(readers)) == len(mails)


def test_the_redirect_answers_302_to_the_stored_target_with_utm(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, edition = setup
    web = client(config, sessions, now + timedelta(minutes=5))
    nl = config.newsletter("daily")
    with sessions() as session:
        stored = session.get(Edition, edition.id)
        assert stored is not None
        renderer = Renderer(config, nl, stored)
        targets = {renderer.link(i.url) for i in stored.items}
    mail = outbox(config)[0]
    seen = set()
    for url in mail.html_links:
        response = web.get(path_of(url))
        assert response.status_code == 302
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        seen.add(response.headers["Location"])
    assert seen <= targets and len(seen) == len(set(mail.html_links))
    assert all("utm_source=digest" in t and "utm_campaign=daily-2026-03-10" in t for t in seen)
    assert {e.source for e in events(sessions)} == {"redirect"}


def _variants(token: str) -> list[str]:
    """Damaged forms of a token: each character changed, parts cut, swapped or added."""
    out = []
    for i, ch in enumerate(token):
        if ch != ".":
            out.append(token[:i] + ("A" if ch != "A" else "B") + token[i + 1 :])
    parts = token.split(".")
    out += [".".join(parts[:3]), token + ".x", ".".join([parts[0], parts[1], parts[3], parts[2]])]
    out += ["", "0.AAAAAAAA.WzEsImRhaWx5Il0.AAAAAAAAAAA", "x" * 500]
    return out


def test_tampered_or_unknown_tokens_get_the_404_page(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, _ = setup
    web = client(config, sessions, now + timedelta(minutes=5))
    token = path_of(outbox(config)[0].html_links[0])[len("/r/") :]
    for bad in _variants(token):
        response = web.get("/r/" + bad)
        assert response.status_code == 404, bad
        assert "Location" not in response.headers
    assert events(sessions) == []


def test_a_link_half_of_another_reader_or_edition_is_refused(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, _ = setup
    web = client(config, sessions, now + timedelta(minutes=5))
    a, b = outbox(config)[:2]
    link_a, reader_a = a.html_links[0].rsplit("/r/", 1)[1].split(".", 2)[:2], a.html_links[0]
    reader_b = b.html_links[0].rsplit(".", 2)[1:]
    # A's link with B's reader half is B's own valid link: it counts for B, never for A.
    mixed = ".".join([*link_a, *reader_b])
    assert web.get("/r/" + mixed).status_code == 302
    # A stored link id that was never signed (the next id) is refused.
    with sessions() as session:
        top = max(session.scalars(select(TrackedLink.id)))
    forged = f"{top + 1:x}.{link_part(SECRET, top).split('.')[1]}." + ".".join(reader_b)
    assert web.get("/r/" + forged).status_code == 404
    assert reader_a  # (kept for the message on failure)


@pytest.mark.parametrize(
    "path",
    [
        "/r/https://evil.example/",
        "/r/%2F%2Fevil.example",
        "/r/..%2F..%2Fu%2Fx",
        "/r/1.AAAAAAAA.aHR0cHM6Ly9ldmlsLmV4YW1wbGU.AAAAAAAAAAA",
        "/r/?url=https://evil.example",
    ],
)
def test_open_redirect_attempts_never_leave_the_stored_targets(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime, path: str
) -> None:
    config, _ = setup
    web = client(config, sessions, now)
    response = web.get(path)
    location = response.headers.get("Location", "")
    # werkzeug may first merge the path's slashes (308 to a path of this site): never off-site.
    assert urlsplit(location).netloc in ("", "localhost"), location
    assert web.get(path, follow_redirects=True).status_code == 404


def test_links_of_old_editions_keep_working(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    config, edition = setup
    old = outbox(config)[0].html_links[0]
    with sessions.begin() as session:
        e = session.get(Edition, edition.id)
        assert e is not None
        e.status = "archived"  # whatever happened to it since, its links stay stored
    web = client(config, sessions, now + timedelta(days=400))
    response = web.get(path_of(old))
    assert response.status_code == 302
    assert response.headers["Location"].startswith("https://")


def test_head_is_answered_and_flagged_not_counted(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, _ = setup
    web = client(config, sessions, now + timedelta(minutes=5))
    url = path_of(outbox(config)[0].html_links[0])
    assert web.head(url, headers={"User-Agent": "Mozilla/5.0"}).status_code == 302
    assert web.post(url).status_code == 405
    (event,) = events(sessions)
    assert (event.flag, event.counted) == ("head", False)


def test_the_access_log_never_shows_a_click_token() -> None:
    from digest.web import redact

    assert redact('"GET /r/1x.AbCdEfGh.WzEsImRhaWx5Il0.abc HTTP/1.1"') == '"GET /r/… HTTP/1.1"'


def test_resending_after_a_crash_reuses_the_same_links(
    setup: tuple[Config, Edition], sessions: sessionmaker[Session], now: datetime
) -> None:
    config, edition = setup
    with sessions() as session:
        before = sorted(session.scalars(select(TrackedLink.id)))
    send(config, sessions, now)  # a re-run stores nothing new
    with sessions() as session:
        assert sorted(session.scalars(select(TrackedLink.id))) == before


def test_the_editors_note_links_are_tracked_too(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        edition = store_edition(session)
        edition.note = "Polls close at 8. [Where to vote](https://vote.example/where?x=1)"
        add_population(session, 2, now)
    send(config, sessions, now)
    with sessions() as session:
        note = session.scalars(select(TrackedLink).where(TrackedLink.kind == "note")).one()
    assert note.url.startswith("https://vote.example/where?x=1&utm_source=digest")
    mail = outbox(config)[0]
    assert "vote.example" not in mail.html and "vote.example" not in mail.text
    web = client(config, sessions, now + timedelta(minutes=5))
    targets = {web.get(path_of(u)).headers["Location"] for u in mail.html_links}
    assert note.url in targets
