"""Selection: which stories make an edition, on windows, pins, dedupe, no-repeat and order."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from digest.clock import fixed
from digest.config import Config, NewsletterConfig, SelectionWeights
from digest.editions import build_edition, freeze_edition
from digest.selection import Candidate, edition_window, pick, score
from tests.factories import add_article

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
W = SelectionWeights()


def cand(i: int, section: str = "News", hours_old: float = 1.0, **kw: object) -> Candidate:
    end = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)
    values: dict[str, object] = {
        "id": i,
        "section": section,
        "title": f"Headline {i} about subject {i * 31}",
        "dek": f"Dek {i} describes event {i * 17} with detail {i * 13}.",
        "url": f"https://news.example/{i}",
        "published_at": end - timedelta(hours=hours_old),
        "popularity": 100.0,
    }
    values.update(kw)
    return Candidate(**values)  # type: ignore[arg-type]


def picks_by_section(picks: list) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for p in picks:
        out.setdefault(p.section, []).append(p.candidate.id)
    return out


END = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)


def test_window_is_wall_clock_on_spring_forward_day(config: Config) -> None:
    nl = config.newsletter("daily")  # America/New_York, 06:30, 24 h
    start, end = edition_window(nl, date(2026, 3, 8))  # US clocks go forward at 02:00
    assert end == datetime(2026, 3, 8, 6, 30, tzinfo=NY)
    assert start == datetime(2026, 3, 7, 6, 30, tzinfo=NY)
    assert (end - start).total_seconds() == 24 * 3600  # same zone: wall-clock difference
    real_hours = (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds() / 3600
    assert real_hours == 23


def test_window_on_fall_back_day_in_berlin(config: Config) -> None:
    nl = config.newsletter("strict")  # Europe/Berlin, 07:00
    start, end = edition_window(nl, date(2026, 10, 25))
    assert end.astimezone(UTC) == datetime(2026, 10, 25, 6, 0, tzinfo=UTC)
    assert start.astimezone(UTC) == datetime(2026, 10, 24, 5, 0, tzinfo=UTC)


def test_window_boundaries_on_dst_day_pick_the_right_articles(
    session: Session, config: Config
) -> None:
    nl = config.newsletter("daily")
    start, end = edition_window(nl, date(2026, 3, 8))
    inside_first = add_article(session, start.astimezone(UTC), title="Opens the window")
    add_article(session, start.astimezone(UTC) - timedelta(seconds=1), title="Just before")
    inside_last = add_article(
        session, end.astimezone(UTC) - timedelta(seconds=1), title="Closes the window"
    )
    add_article(session, end.astimezone(UTC), title="At send time is too late")
    result = build_edition(session, config, nl, date(2026, 3, 8), clock=fixed(END))
    ids = {i.article_id for i in result.edition.items}
    assert ids == {inside_first.id, inside_last.id}


def test_score_decays_with_age_and_boost_multiplies() -> None:
    fresh = score(cand(1, hours_old=0), END, W)
    half = score(cand(1, hours_old=W.half_life_hours), END, W)
    assert half == pytest.approx(fresh / 2)
    boosted = score(cand(1, hours_old=0, priority="boost"), END, W)
    assert boosted == pytest.approx(fresh * W.boost)
    floor = score(cand(1, hours_old=0, popularity=0), END, W)
    assert floor == pytest.approx(W.popularity_floor)


def test_pins_come_first_then_score(config: Config) -> None:
    nl = config.newsletter("daily")
    cs = [
        cand(1, popularity=1000),
        cand(2, popularity=5, priority="pin"),
        cand(3, popularity=500),
        cand(4, popularity=800),
    ]
    assert picks_by_section(pick(cs, nl, W, END))["News"] == [2, 1, 4]


def test_re_headlined_wire_story_is_dropped_keeping_the_better_one(config: Config) -> None:
    nl = config.newsletter("daily")
    dek = "The central bank raised rates by a quarter point on Tuesday, citing stubborn inflation."
    wire = cand(1, title="Fed raises rates a quarter point", dek=dek, popularity=300)
    ours = cand(
        2, title="Your mortgage is about to cost more", dek=dek, popularity=900, section="Business"
    )
    other = cand(3, title="Storm heads for the coast", popularity=100)
    result = picks_by_section(pick([wire, ours, other], nl, W, END))
    assert result == {"News": [3], "Business": [2]}


def test_distinct_stories_with_similar_titles_both_stay(config: Config) -> None:
    nl = config.newsletter("daily")
    a = cand(
        1,
        title="Fire closes highway in Orlando",
        dek="Crews battled a brush fire that shut Interstate 4 near downtown Orlando.",
    )
    b = cand(
        2,
        title="Fire closes highway in Tampa",
        dek="A tanker truck caught fire on I-275, stranding commuters for hours in Tampa.",
    )
    assert picks_by_section(pick([a, b], nl, W, END))["News"] == [1, 2]


def test_thin_and_empty_sections_keep_config_order(config: Config) -> None:
    nl = config.newsletter("daily")  # News(3), Business(2), Health(2), Entertainment(2)
    cs = [
        cand(1, "Entertainment"),
        cand(2, "News"),
        cand(3, "Business"),
        cand(4, "Business"),
        cand(5, "Business"),
        cand(6, "Sports"),
    ]
    picks = pick(cs, nl, W, END)
    assert [p.section for p in picks] == ["News", "Business", "Business", "Entertainment"]
    assert [p.rank for p in picks] == [1, 1, 2, 1]


def test_section_names_match_case_insensitively(config: Config) -> None:
    nl = config.newsletter("daily")
    picks = pick([cand(1, "business")], nl, W, END)
    assert [p.section for p in picks] == ["Business"]


def test_selection_is_deterministic_whatever_the_input_order(config: Config) -> None:
    nl = config.newsletter("daily")
    cs = [cand(i, ["News", "Business", "Health"][i % 3], popularity=100) for i in range(30)]
    first = pick(cs, nl, W, END)
    second = pick(list(reversed(cs)), nl, W, END)
    assert [(p.section, p.candidate.id) for p in first] == [
        (p.section, p.candidate.id) for p in second
    ]


def test_no_repeat_across_editions_including_re_headlined(session: Session, config: Config) -> None:
    nl: NewsletterConfig = config.newsletter("daily")
    day1, day2 = date(2026, 3, 9), date(2026, 3, 10)
    _, end1 = edition_window(nl, day1)
    late = end1.astimezone(UTC) - timedelta(hours=1)
    dek = "Officials confirmed the bridge will close for repairs for six weeks starting Monday."
    story = add_article(
        session, late, title="Bridge to close for six weeks", dek=dek, popularity=1000
    )
    first = build_edition(session, config, nl, day1, clock=fixed(END)).edition
    assert [i.article_id for i in first.items] == [story.id]
    # Today's window holds a re-headlined version of yesterday's story.
    rewrite = add_article(
        session,
        end1.astimezone(UTC) + timedelta(hours=2),
        title="Commuters face six weeks without the bridge",
        dek=dek,
    )
    fresh = add_article(session, end1.astimezone(UTC) + timedelta(hours=3), title="New mayor")

    draft_day2 = build_edition(session, config, nl, day2, clock=fixed(END)).edition
    # Day 1 is still a draft: nothing went out, so nothing is excluded yet.
    assert rewrite.id in {i.article_id for i in draft_day2.items}

    freeze_edition(session, first, clock=fixed(END))
    rebuilt = build_edition(session, config, nl, day2, clock=fixed(END), force=True).edition
    ids = {i.article_id for i in rebuilt.items}
    assert ids == {fresh.id}
    assert rewrite.id not in ids


def test_story_in_two_overlapping_windows_goes_out_once(session: Session, config: Config) -> None:
    from dataclasses import replace

    nl = replace(config.newsletter("daily"), lookback_hours=48)
    day1, day2 = date(2026, 3, 9), date(2026, 3, 10)
    _, end1 = edition_window(nl, day1)
    story = add_article(session, end1.astimezone(UTC) - timedelta(hours=1), popularity=1000)
    first = build_edition(session, config, nl, day1, clock=fixed(END)).edition
    freeze_edition(session, first, clock=fixed(END))
    second = build_edition(session, config, nl, day2, clock=fixed(END)).edition
    assert story.id in {i.article_id for i in first.items}
    assert story.id not in {i.article_id for i in second.items}
