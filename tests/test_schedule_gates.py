"""Content gates: a stale store, a thin section or a repeat of the last edition blocks a send."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from digest.clock import fixed
from digest.config import Config, GateConfig, NewsletterConfig
from digest.editions import build_edition, freeze_edition
from digest.errors import GateClosed
from digest.gates import check_gates
from digest.selection import edition_window
from tests.factories import add_article

DAY = date(2026, 3, 10)


def send_time(nl: NewsletterConfig, day: date = DAY) -> datetime:
    return edition_window(nl, day)[1].astimezone(UTC)


def check(session: Session, config: Config, nl: NewsletterConfig, day: date = DAY) -> None:
    at = fixed(send_time(nl, day))
    edition = build_edition(session, config, nl, day, clock=at).edition
    check_gates(session, config, nl, edition, clock=at)


def test_fresh_full_edition_passes(session: Session, config: Config) -> None:
    nl = config.newsletter("daily")
    add_article(session, send_time(nl) - timedelta(hours=2))
    add_article(session, send_time(nl) - timedelta(hours=3), section="Business")
    check(session, config, nl)


def test_stale_store_blocks_and_says_how_old(session: Session, config: Config) -> None:
    nl = replace(config.newsletter("daily"), gates=GateConfig(max_article_age_hours=2))
    add_article(session, send_time(nl) - timedelta(hours=5))
    # A story in a section this newsletter does not carry does not make the store fresh.
    add_article(session, send_time(nl) - timedelta(minutes=5), section="Weather")
    with pytest.raises(GateClosed) as err:
        check(session, config, nl)
    message = str(err.value)
    assert "not sending daily 2026-03-10" in message
    assert "stale: newest article in its sections is 5.0 h old" in message
    assert "gates.max_article_age_hours = 2" in message
    assert "--force" in message and "\n" not in message


def test_section_below_minimum_blocks_unless_minimums_are_off(
    session: Session, config: Config
) -> None:
    nl = config.newsletter("daily")  # News has min = 1
    add_article(session, send_time(nl) - timedelta(hours=1), section="Business")
    with pytest.raises(GateClosed, match="section below its minimum: News has 0 of min 1"):
        check(session, config, nl)
    relaxed = replace(nl, gates=GateConfig(enforce_section_minimums=False))
    check(session, config, relaxed)


def test_empty_edition_blocks(session: Session, config: Config) -> None:
    nl = replace(config.newsletter("daily"), gates=GateConfig(enforce_section_minimums=False))
    add_article(session, send_time(nl) + timedelta(minutes=1))  # after the window: fresh, unpicked
    with pytest.raises(GateClosed, match="the edition has no stories"):
        check(session, config, nl)


def test_repeat_of_previous_sent_edition_blocks_unless_allowed(
    session: Session, config: Config
) -> None:
    # A 48-hour lookback lets two drafts built together pick the same stories.
    nl = replace(config.newsletter("daily"), lookback_hours=48)
    yesterday = DAY - timedelta(days=1)
    topics = ("Council passes budget", "Bridge reopens early", "Schools add buses")
    for hours, title in zip((30, 31, 32), topics, strict=True):
        add_article(session, send_time(nl) - timedelta(hours=hours), title=title, dek=title)
    add_article(
        session,
        send_time(nl) - timedelta(hours=1),
        section="Health",
        title="Clinic extends hours",
        dek="Walk-ins welcome until nine.",
    )
    at = fixed(send_time(nl, yesterday))
    previous = build_edition(session, config, nl, yesterday, clock=at).edition
    today = build_edition(session, config, nl, DAY, clock=at).edition
    freeze_edition(session, previous, clock=at)
    with pytest.raises(GateClosed, match=r"repeats the edition of 2026-03-09 \(3 of 4 stories\)"):
        check_gates(session, config, nl, today, clock=fixed(send_time(nl)))
    allowed = replace(nl, gates=GateConfig(refuse_repeat=False))
    check_gates(session, config, allowed, today, clock=fixed(send_time(nl)))


def test_identical_fingerprint_is_a_repeat(session: Session, config: Config) -> None:
    nl = config.newsletter("daily")
    add_article(session, send_time(nl) - timedelta(hours=1))
    at = fixed(send_time(nl))
    today = build_edition(session, config, nl, DAY, clock=at).edition
    previous = build_edition(session, config, nl, DAY - timedelta(days=1), clock=at).edition
    previous.fingerprint = today.fingerprint
    freeze_edition(session, previous, clock=at)
    with pytest.raises(GateClosed, match="same stories"):
        check_gates(session, config, nl, today, clock=at)


def test_edition_already_sending_is_not_judged_again(session: Session, config: Config) -> None:
    nl = config.newsletter("daily")
    at = fixed(send_time(nl))
    edition = build_edition(session, config, nl, DAY, clock=at).edition  # empty, store empty
    freeze_edition(session, edition, clock=at)
    check_gates(session, config, nl, edition, clock=at)
