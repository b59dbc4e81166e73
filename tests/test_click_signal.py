"""The click signal on a fixed store: a topic readers clicked lifts its stories in tomorrow's
pick, a section's multiplier stays within floor and ceiling, the exploration share keeps a
slot for a story without history, and the reason says why."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from digest.clicks import ClickEvent
from digest.clock import fixed
from digest.config import ClickSignalConfig, Config
from digest.editions import Edition, build_edition
from digest.ledger import Delivery, encode_variant
from digest.tracking import TrackedLink
from tests.factories import add_article

YESTERDAY = date(2026, 3, 9)
TODAY = date(2026, 3, 10)
SENT_AT = datetime(2026, 3, 9, 11, 30, tzinfo=UTC)


def _history(session: Session, clicks: dict[str, tuple[str, str, int]]) -> None:
    """Yesterday's edition to 100 readers (News and Business); per tag: (section, …, clickers)."""
    edition = Edition(
        newsletter="daily",
        edition_date=YESTERDAY,
        status="sent",
        built_at=SENT_AT,
        frozen_at=SENT_AT,
        window_start=SENT_AT,
        window_end=SENT_AT,
        fingerprint="y",
    )
    session.add(edition)
    session.flush()
    session.execute(
        insert(Delivery),
        [
            {
                "edition_id": edition.id,
                "subscriber_id": i,
                "email": f"r{i}@example.org",
                "sections": encode_variant(("News", "Business"), ()),
                "variant": "v-1",
                "segment": "",
                "state": "sent",
                "attempts": 1,
                "created_at": SENT_AT,
                "handed_at": SENT_AT,
                "settled_at": SENT_AT,
            }
            for i in range(1, 101)
        ],
    )
    ids = list(range(1, 101))
    for tag, (section, _label, clickers) in clicks.items():
        article = add_article(session, SENT_AT - timedelta(hours=2), section=section, tags=[tag])
        link = TrackedLink(
            edition_id=edition.id,
            url_hash=f"{tag:0>40}"[:40],
            url=f"https://news.example/{tag}",
            kind="story",
            section=section,
            article_id=article.id,
            label=tag,
        )
        session.add(link)
        session.flush()
        from sqlalchemy import select

        delivery_ids = list(
            session.scalars(
                select(Delivery.id).where(Delivery.edition_id == edition.id).order_by(Delivery.id)
            )
        )[:clickers]
        for d in delivery_ids:
            session.add(
                ClickEvent(
                    edition_id=edition.id,
                    delivery_id=d,
                    link_id=link.id,
                    kind="click",
                    variant="v-1",
                    segment="",
                    clicked_at=SENT_AT + timedelta(minutes=30),
                    source="redirect",
                    agent="browser",
                    counted=True,
                )
            )
    assert ids


def _config(config: Config, **signal: float) -> Config:
    cfg = ClickSignalConfig(min_delivered=1, **signal)  # type: ignore[arg-type]
    nl = dataclasses.replace(config.newsletter("daily"), click_signal=cfg)
    return dataclasses.replace(config, newsletters={**config.newsletters, "daily": nl})


@pytest.fixture
def store(session: Session, now: datetime) -> Session:
    # Yesterday: "sports" stories drew 30 of 100 readers, "politics" 2, Business 8.
    _history(
        session,
        {
            "sports": ("News", "", 30),
            "politics": ("News", "", 2),
            "markets": ("Business", "", 8),
        },
    )
    t = now - timedelta(hours=2)
    add_article(session, t, title="Council politics story", tags=["politics"], popularity=100)
    add_article(session, t, title="Harbour sports story", tags=["sports"], popularity=80)
    add_article(session, t, title="Unknown topic story", tags=["weather"], popularity=20)
    add_article(session, t, title="Old politics follow-up", tags=["politics"], popularity=90)
    add_article(
        session, t, title="Markets story", section="Business", tags=["markets"], popularity=50
    )
    session.flush()
    return session


def _picked(session: Session, config: Config, now: datetime) -> list[tuple[str, str, str]]:
    nl = config.newsletter("daily")
    result = build_edition(session, config, nl, TODAY, clock=fixed(now), force=True)
    return [
        (i.section, i.title, i.reason)
        for i in sorted(result.edition.items, key=lambda i: (i.section_position, i.rank))
    ]


def test_without_the_signal_popularity_alone_orders_the_pick(
    store: Session, config: Config, now: datetime
) -> None:
    news = [t for s, t, _ in _picked(store, config, now) if s == "News"]
    assert news == ["Council politics story", "Old politics follow-up", "Harbour sports story"]


def test_a_clicked_topic_lifts_its_story_and_the_reason_says_why(
    store: Session, config: Config, now: datetime
) -> None:
    picked = _picked(store, _config(config, exploration=0.0), now)
    news = [(t, r) for s, t, r in picked if s == "News"]
    assert news[0][0] == "Harbour sports story"
    assert "News stories drew" in news[0][1] and "its topics" in news[0][1]
    assert "in the last 1 edition" in news[0][1]
    # The weakly clicked topic is held down, never below the floor.
    politics = dict(news)["Council politics story"]
    pct = int(politics.split("; ")[-1].split("%")[0])
    assert -40 <= pct < 0


def test_the_exploration_share_keeps_a_slot_for_a_story_without_history(
    store: Session, config: Config, now: datetime
) -> None:
    closed = [t for s, t, _ in _picked(store, _config(config, exploration=0.0), now) if s == "News"]
    assert "Unknown topic story" not in closed
    explored = [
        t for s, t, _ in _picked(store, _config(config, exploration=0.3), now) if s == "News"
    ]
    assert "Unknown topic story" in explored and len(explored) == 3


def test_floor_and_ceiling_bound_every_multiplier(
    store: Session, config: Config, now: datetime
) -> None:
    from digest.articles import Article
    from digest.selection import load_candidates
    from digest.signal import apply_signal

    cfg = _config(config, weight=2.0, floor=0.7, ceiling=1.3)
    nl = cfg.newsletter("daily")
    start, end = now - timedelta(hours=24), now + timedelta(hours=1)
    out = apply_signal(store, nl, TODAY, load_candidates(store, start, end))
    assert out and all(0.7 <= c.signal <= 1.3 for c in out)
    assert {round(c.signal, 2) for c in out} & {0.7, 1.3}
    _ = Article
