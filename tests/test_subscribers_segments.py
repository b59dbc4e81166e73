"""Segment rules: the grammar, its errors, and every operator evaluated by the database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from digest.config import Config
from digest.errors import ConfigError, NotFound
from subscribers.audience import audience
from subscribers.segments import (
    And,
    Compare,
    DateCompare,
    InSections,
    Not,
    Or,
    Rule,
    TagContains,
    parse_rule,
    render,
)
from subscribers.service import add_subscriber, set_preferences


def test_parses_each_condition_and_precedence() -> None:
    rule = parse_rule(
        'region = "Tampa Bay" or not tags contains "VIP" and "business" in sections '
        "and (created before 2025-01-01 or confirmed AFTER 2025-06-30)"
    )
    assert rule == Or(
        Compare("region", "=", "Tampa Bay"),
        And(
            And(Not(TagContains("vip")), InSections("business")),
            Or(
                DateCompare("created", "before", date(2025, 1, 1)),
                DateCompare("confirmed", "after", date(2025, 6, 30)),
            ),
        ),
    )


def test_strings_keep_escaped_quotes() -> None:
    assert parse_rule(r'name = "Ann \"Nan\" Lee"') == Compare("name", "=", 'Ann "Nan" Lee')


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('region ~ "x"', "segments.s: unknown operator '~' at character 8 after 'region'"),
        ('region like "x"', "unknown operator 'like' at character 8 after 'region'"),
        ('tags = "vip"', "unknown operator '=' at character 6 for tags (expected 'contains')"),
        ("created on 2025-01-01", "unknown operator 'on' at character 9 for created"),
        ('"News" within sections', "unknown operator 'within' at character 8 after a string"),
        ('region = "x" and', "rule ends too early"),
        ('(region = "x"', "missing ')' for the '(' at character 1"),
        ('region = "x', "unterminated string at character 10"),
        ("created before 2025-02-30", "'2025-02-30' is not a valid date"),
        ("", "empty rule"),
        ('region = "x" region = "y"', "unexpected 'region' at character 14"),
    ],
)
def test_syntax_errors_name_the_segment_and_the_spot(rule: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_rule(rule, "s")
    assert message in str(err.value)
    assert str(err.value).startswith("segments.s: ")


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_ident = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda s: (
        s
        not in {
            "and",
            "or",
            "not",
            "in",
            "contains",
            "before",
            "after",
            "sections",
            "tags",
            "created",
            "confirmed",
        }
    )
)
_leaf = st.one_of(
    st.builds(Compare, _ident, st.sampled_from(["=", "!="]), _text),
    st.builds(InSections, _text),
    st.builds(TagContains, _text.map(str.lower)),
    st.builds(
        DateCompare,
        st.sampled_from(["created", "confirmed"]),
        st.sampled_from(["before", "after"]),
        st.dates(min_value=date(1970, 1, 1), max_value=date(2199, 12, 31)),
    ),
)
_rules: st.SearchStrategy[Rule] = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(Not, inner), st.builds(And, inner, inner), st.builds(Or, inner, inner)
    ),
    max_leaves=8,
)


@given(_rules)
def test_render_then_parse_gives_the_same_rule(rule: Rule) -> None:
    assert parse_rule(render(rule)) == rule


@given(st.text(max_size=40))
def test_any_text_parses_or_gives_a_config_error(text: str) -> None:
    try:
        parse_rule(text, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("segments.fuzz: ")
        assert "\n" not in str(e)


# --- evaluated in SQL ----------------------------------------------------------------------


def _with_segments(config: Config, **rules: str) -> Config:
    return dataclasses.replace(config, segments=rules)


@pytest.fixture
def people(session: Session, config: Config, now: datetime) -> Config:
    daily = config.newsletter("daily")
    old = datetime(2024, 6, 1, tzinfo=UTC)
    add_subscriber(
        session,
        daily,
        "ann@example.com",
        at=old,
        name="Ann",
        attributes={"region": "Tampa Bay", "plan": "pro"},
        tags=["VIP"],
    )
    add_subscriber(
        session,
        daily,
        "bob@example.com",
        at=now,
        name="Bob",
        attributes={"region": "Orlando"},
        sections=["Business", "News"],
    )
    add_subscriber(
        session,
        daily,
        "cy@example.com",
        at=now,
        attributes={"plan": "free"},
        tags=["press"],
        sections=["Health"],
        timezone="Europe/Berlin",
    )
    session.commit()
    return config


def _emails(session: Session, config: Config, rule: str) -> list[str]:
    cfg = _with_segments(config, s=rule)
    return [r.email for r in audience(session, cfg, cfg.newsletter("daily"), ["s"])]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ('region = "Tampa Bay"', ["ann@example.com"]),
        ('region = "tampa bay"', []),
        ('region != "Tampa Bay"', ["bob@example.com", "cy@example.com"]),
        ('name = "Bob"', ["bob@example.com"]),
        ('name != "Bob"', ["ann@example.com", "cy@example.com"]),
        ('timezone = "Europe/Berlin"', ["cy@example.com"]),
        ('tags contains "vip"', ["ann@example.com"]),
        ('not tags contains "vip"', ["bob@example.com", "cy@example.com"]),
        ('"Business" in sections', ["ann@example.com", "bob@example.com"]),
        ('"health" in sections', ["ann@example.com", "cy@example.com"]),
        ("created before 2025-01-01", ["ann@example.com"]),
        ("created after 2025-01-01", ["bob@example.com", "cy@example.com"]),
        ("created after 2026-03-10", []),
        ("confirmed before 2026-03-11", ["ann@example.com", "bob@example.com", "cy@example.com"]),
        ('plan = "pro" or tags contains "press"', ["ann@example.com", "cy@example.com"]),
        ('plan = "free" and "Health" in sections', ["cy@example.com"]),
        ('not (region = "Orlando" or plan = "free")', ["ann@example.com"]),
    ],
)
def test_every_operator_selects_in_sql(
    session: Session, people: Config, rule: str, expected: list[str]
) -> None:
    assert _emails(session, people, rule) == expected


def test_section_choice_changes_membership_of_section_segment(
    session: Session, people: Config
) -> None:
    daily = people.newsletter("daily")
    ann = audience(session, people, daily)
    ann_id = next(r.subscriber_id for r in ann if r.email == "ann@example.com")
    set_preferences(session, ann_id, daily, ["Health"])
    session.commit()
    assert _emails(session, people, '"Business" in sections') == ["bob@example.com"]


def test_overlapping_segments_give_each_person_once(session: Session, people: Config) -> None:
    cfg = _with_segments(
        people, a='tags contains "vip"', b='region = "Tampa Bay"', c='"Business" in sections'
    )
    got = [r.email for r in audience(session, cfg, cfg.newsletter("daily"), ["a", "b", "c"])]
    assert got == ["ann@example.com", "bob@example.com"]


def test_unknown_attribute_is_a_config_error(session: Session, people: Config) -> None:
    with pytest.raises(
        ConfigError, match=r"segments.s: unknown attribute 'regoin' \(known: .*region"
    ):
        _emails(session, people, 'regoin = "Tampa Bay"')


def test_unknown_section_is_a_config_error(session: Session, people: Config) -> None:
    with pytest.raises(ConfigError, match="segments.s: unknown section 'Sports'"):
        _emails(session, people, '"Sports" in sections')


def test_unknown_segment_name_is_reported(session: Session, people: Config) -> None:
    with pytest.raises(NotFound, match=r"unknown segment 'nope' \(configured: tampa, vip\)"):
        list(audience(session, people, people.newsletter("daily"), ["nope"]))


def test_configured_segments_work(session: Session, people: Config) -> None:
    got = [r.email for r in audience(session, people, people.newsletter("daily"), ["tampa"])]
    assert got == ["ann@example.com"]
