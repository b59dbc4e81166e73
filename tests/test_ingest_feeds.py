"""Ingesting RSS 0.9x/1.0/2.0 and Atom feeds: fields, encodings, broken input, re-ingest."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.errors import InputError
from digest.ingest import IngestReport, ingest_files

FEEDS = Path(__file__).parent / "data" / "feeds"
KNOWN = {s.casefold(): s for s in ("News", "Business", "Health", "Entertainment")}


def ingest(
    sessions: sessionmaker[Session], *names: str | Path, at: datetime, **kwargs: Any
) -> list[IngestReport]:
    paths = [n if isinstance(n, Path) else FEEDS / n for n in names]
    kwargs.setdefault("section", None)
    kwargs.setdefault("source", None)
    kwargs.setdefault("fmt", "auto")
    kwargs.setdefault("known_sections", None)
    return ingest_files(sessions, paths, clock=fixed(at), **kwargs)


def by_url(sessions: sessionmaker[Session]) -> dict[str, Article]:
    with sessions() as s:
        return {a.url: a for a in s.scalars(select(Article))}


def snapshot(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as s:
        rows = s.scalars(select(Article).order_by(Article.id))
        return [{c.key: getattr(a, c.key) for c in Article.__table__.columns} for a in rows]


def test_rss2_with_media_thumbnail_content_and_enclosure(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "rss2_media.xml", at=now)
    assert report.summary() == "rss2_media.xml: 3 new, 0 updated, 0 unchanged, 0 rejected"
    rows = by_url(sessions)
    bridge = rows["https://herald.example/news/bridge-plan#top"]  # utm_* dropped, anchor kept
    assert bridge.guid == "herald-1001"
    assert bridge.title == "Council approves bridge & tunnel plan"
    assert bridge.dek == 'The vote was 7–2 after a "long" night.'
    assert bridge.body == "<p>Full story about the <em>bridge</em>.</p>"
    assert bridge.section == "News"
    assert bridge.tags == ["Transport"]
    assert bridge.byline == "Jo Rivera"
    assert bridge.published_at == datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert bridge.updated_at is None
    assert bridge.image_url == "https://img.herald.example/bridge-thumb.jpg"
    assert bridge.image_alt == "Aerial view of the old bridge at dusk"
    assert bridge.source == "The Example Herald"
    assert (bridge.priority, bridge.popularity) == ("normal", 0.0)
    assert bridge.ingested_at == bridge.modified_at == now

    greeting = rows["https://herald.example/world/greetings"]
    assert greeting.title == "مرحبا بالعالم — שלום 世界 🎉"
    assert greeting.dek == "Greetings in Arabic, Hebrew and Chinese: مرحبا, שלום, 你好 😀"
    assert greeting.guid == "https://herald.example/world/greetings"
    assert greeting.byline == "Layla Haddad"
    assert greeting.image_url == "https://img.herald.example/greetings.jpg"
    assert greeting.image_alt == "Crowd waving flags"

    markets = rows["https://herald.example/business/markets"]
    assert markets.image_url == "https://img.herald.example/markets.png"
    assert markets.image_alt is None
    assert markets.section == "Business"


def test_atom_html_content_is_body_and_summary_becomes_plain_dek(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "atom_html.xml", at=now)
    assert (report.new, report.rejected) == (2, 0)
    rows = by_url(sessions)
    clinic = rows["https://atom.example/health/clinic"]
    assert clinic.title == "Clinic opens new wing"
    assert clinic.dek == "Patients & staff welcome it. Second para."
    assert "<h2>A new wing</h2>" in clinic.body
    assert "&amp; a garden" in clinic.body  # HTML kept as HTML: rendering escapes or trusts it
    assert "alert(" not in clinic.body  # feedparser's sanitiser drops scripts
    assert clinic.byline == "Sam O'Neil"
    assert clinic.published_at == datetime(2026, 3, 10, 6, 45, tzinfo=UTC)
    assert clinic.updated_at == datetime(2026, 3, 10, 7, 5, tzinfo=UTC)
    assert clinic.source == "Atom Times"

    festival = rows["https://atom.example/entertainment/festival"]
    assert festival.published_at == datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    assert festival.body and "<strong>twelve</strong>" in festival.body
    assert festival.dek.startswith("Forty films from twelve countries")
    assert "<" not in festival.dek


@pytest.mark.parametrize(
    ("name", "url", "title", "dek"),
    [
        (
            "latin1.xml",
            "https://journal.example/café",
            "Café crème à Montréal: «\u00a0Olé\u00a0»",
            "Naïve résumé über ß, © 2026",
        ),
        (
            "cp1252.xml",
            "https://quotes.example/smart",
            "“Smart” quotes — and the € price",
            "It’s ‘here’ …",
        ),
    ],
)
def test_non_utf8_feeds_come_through_intact(
    sessions: sessionmaker[Session], now: datetime, name: str, url: str, title: str, dek: str
) -> None:
    assert b'encoding="' in (FEEDS / name).read_bytes()[:60]
    (report,) = ingest(sessions, name, at=now)
    assert report.new == 1
    article = by_url(sessions)[url]
    assert (article.title, article.dek) == (title, dek)


def test_rss1_feed_with_dublin_core_dates(sessions: sessionmaker[Session], now: datetime) -> None:
    (report,) = ingest(sessions, "rss1.rdf", section="Business", at=now)
    assert report.new == 2
    rows = by_url(sessions)
    one, two = rows["https://rdf.example/news/one"], rows["https://rdf.example/news/two"]
    assert one.published_at == datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
    assert (one.section, one.byline, one.dek) == ("News", "A. Writer", "One of two.")
    assert two.section == "Business"  # no <dc:subject>: --section applies
    assert one.source == two.source == "RDF Daily"


def test_broken_dates_are_rejected_and_good_items_go_in(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "broken_dates.xml", at=now)
    assert (report.new, report.rejected) == (1, 3)
    assert report.rejections == [
        "broken_dates.xml: item 2: unparseable date 'sometime last week'",
        "broken_dates.xml: item 3: no date",
        "broken_dates.xml: item 4: unparseable date 'Tue, 45 Foo 2026 99:99:99 +0000'",
    ]
    assert list(by_url(sessions)) == ["https://dates.example/good"]


def test_malformed_feed_is_recovered_when_items_can_be_read(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "malformed.xml", at=now)
    assert report.new == 2
    rows = by_url(sessions)
    assert rows["https://sloppy.example/a"].title == "Unescaped & ampersand survives"
    assert rows["https://sloppy.example/a"].source == "Sloppy & Sons"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "truncated.xml",
            "truncated.xml: not an RSS or Atom feed (<unknown>:3:18: no element found)",
        ),
        ("not_a_feed.txt", "not_a_feed.txt: not a feed, JSON or CSV file"),
    ],
)
def test_a_file_that_is_no_feed_is_one_error_and_changes_nothing(
    sessions: sessionmaker[Session], now: datetime, name: str, message: str
) -> None:
    # A good feed listed first is not written either: every file is read before any is stored.
    with pytest.raises(InputError) as err:
        ingest(sessions, "rss2_media.xml", name, at=now)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert snapshot(sessions) == []


def test_html_page_is_not_a_feed(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    page = tmp_path / "index.xml"
    page.write_text("<!doctype html><html><body><p>Hello</p></body></html>")
    with pytest.raises(InputError, match=r"index.xml: not an RSS or Atom feed"):
        ingest(sessions, page, at=now)


def test_empty_but_valid_feed_reports_zero(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    feed = tmp_path / "empty.xml"
    feed.write_text('<rss version="2.0"><channel><title>Quiet</title></channel></rss>')
    (report,) = ingest(sessions, feed, at=now)
    assert report.summary() == "empty.xml: 0 new, 0 updated, 0 unchanged, 0 rejected"


def test_ingesting_the_same_feeds_twice_changes_nothing(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    names = ("rss2_media.xml", "atom_html.xml", "rss1.rdf", "latin1.xml", "cp1252.xml")
    first = ingest(sessions, *names, section="News", at=now)
    before = snapshot(sessions)
    second = ingest(sessions, *names, section="News", at=now + timedelta(hours=2))
    assert sum(r.new for r in first) == len(before) == 9
    assert [(r.new, r.updated, r.rejected) for r in second] == [(0, 0, 0)] * len(names)
    assert sum(r.unchanged for r in second) == 9
    assert snapshot(sessions) == before


def test_changed_item_is_updated_in_place(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    feed = tmp_path / "herald.xml"
    shutil.copy(FEEDS / "rss2_media.xml", feed)
    ingest(sessions, feed, at=now)
    old = by_url(sessions)["https://herald.example/news/bridge-plan#top"]

    text = feed.read_text(encoding="utf-8")
    text = text.replace("Council approves bridge", "Council finally approves bridge")
    # The story moved: same guid, new URL.
    text = text.replace("news/bridge-plan?", "news/2026/bridge-plan?")
    feed.write_text(text, encoding="utf-8")
    later = now + timedelta(hours=1)
    (report,) = ingest(sessions, feed, at=later)

    assert (report.new, report.updated, report.unchanged) == (0, 1, 2)
    rows = by_url(sessions)
    assert len(rows) == 3
    moved = rows["https://herald.example/news/2026/bridge-plan#top"]
    assert moved.id == old.id
    assert moved.title == "Council finally approves bridge & tunnel plan"
    assert moved.ingested_at == now
    assert moved.modified_at == later
    assert moved.content_hash != old.content_hash


def test_feed_reingest_keeps_editor_priority_and_popularity(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    ingest(sessions, "rss2_media.xml", at=now)
    pin = tmp_path / "pin.json"
    pin.write_text(
        '[{"guid": "herald-1001", "url": "https://herald.example/news/bridge-plan",'
        ' "title": "Council approves bridge & tunnel plan", "section": "News",'
        ' "published": "2026-03-10T12:00:00Z", "priority": "pin", "popularity": 900}]'
    )
    (report,) = ingest(sessions, pin, at=now)
    assert report.updated == 1
    (again,) = ingest(sessions, "rss2_media.xml", at=now + timedelta(hours=1))
    # The JSON's link lacks the feed's #top: matched by guid, the stored link stays (no
    # flip-flop between two sources of one story).
    bridge = by_url(sessions)["https://herald.example/news/bridge-plan#top"]
    assert (bridge.priority, bridge.popularity) == ("pin", 900.0)
    # Fields the JSON left out (dek, body, image) kept what the feed had stored.
    assert bridge.dek.startswith("The vote was")
    assert bridge.image_url == "https://img.herald.example/bridge-thumb.jpg"
    assert (again.updated, again.unchanged) == (0, 3)


def test_strict_sections_reject_unknown_and_canonicalise_case(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "rss2_media.xml", known_sections={"news": "News"}, at=now)
    assert report.new == 1
    assert report.rejections == [
        "rss2_media.xml: item 2: unknown section 'world' (configured: News)",
        "rss2_media.xml: item 3: unknown section 'Business' (configured: News)",
    ]
    (again,) = ingest(
        sessions, "rss2_media.xml", section="news", known_sections={"news": "News"}, at=now
    )
    # --section fills in where the feed's categories are not configured sections.
    assert (again.new, again.unchanged, again.rejected) == (2, 1, 0)
    assert {a.section for a in by_url(sessions).values()} == {"News"}


def test_items_without_any_section_are_rejected(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, "rss1.rdf", at=now)
    assert report.rejections == [
        "rss1.rdf: item 2: no section (give one in the item or pass --section)"
    ]


def test_source_flag_overrides_the_feed_title(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    ingest(sessions, "atom_html.xml", source="Wire", at=now)
    assert {a.source for a in by_url(sessions).values()} == {"Wire"}
