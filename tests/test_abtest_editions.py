"""A/B subjects set by the editor on one edition: they override the config's subjects, make an
A/B send of a newsletter that has none in its config, freeze with the edition, are checked in
one clear line, and show in `edition show`."""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.abtest import AbTest, ab_send, runs_ab
from digest.clock import fixed
from digest.config import AbTestConfig, Config
from digest.desk import check_ab_subjects, set_ab_subjects
from digest.errors import EditionFrozen, InputError
from digest.ledger import Delivery
from digest.sending import SendOptions
from digest_cli import cli
from tests.cli_support import set_cli_clock
from tests.clicks_support import FAST, tracked, tracked_toml
from tests.fakes.population import add_population
from tests.render_support import EDITION_DATE, store_edition

READERS = 40
D = ["--date", EDITION_DATE.isoformat()]


def subjects_of(sessions: sessionmaker[Session]) -> Counter[str | None]:
    with sessions() as session:
        return Counter(session.scalars(select(Delivery.subject)))


def step(config: Config, sessions: sessionmaker[Session], at: datetime):
    opts = SendOptions(retry=FAST, batch_size=5)
    return ab_send(config, sessions, "daily", EDITION_DATE, opts, clock=fixed(at))


@pytest.fixture
def stored(sessions: sessionmaker[Session], now: datetime) -> None:
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, READERS, now)


def test_the_editions_subjects_override_the_configs_and_freeze_with_it(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path, stored: None
) -> None:
    test = AbTestConfig(subjects=("Config A", "Config B"), sample=0.6, wait_minutes=30)
    ab = tracked(config, tmp_path, ab_test=dataclasses.replace(test, min_sample=1))
    nl = ab.newsletter("daily")
    with sessions.begin() as session:
        r = set_ab_subjects(
            session,
            nl,
            EDITION_DATE,
            ["Red", " Green ", "Blue: {lead}"],
            by="ana",
            clock=fixed(now),
        )
    assert r.message == ("daily 2026-03-10: A/B subjects 'Red' | 'Green' | 'Blue: {lead}'")
    first = step(ab, sessions, now)
    assert first.waiting
    sent = subjects_of(sessions)
    assert {s for s in sent if s} and not {"Config A", "Config B"} & set(sent)
    assert {"Red", "Green"} <= set(sent)
    assert any(s and s.startswith("Blue: ") for s in sent)  # its {lead} filled per variant
    with sessions() as session:
        state = session.get(AbTest, r.edition.id)
        assert state is not None and json.loads(state.subjects)[0] == "Red"
    # Sending started: the subjects are frozen with the edition.
    with sessions.begin() as session, pytest.raises(EditionFrozen, match="can no longer"):
        set_ab_subjects(session, nl, EDITION_DATE, ["X", "Y"], by="ana", clock=fixed(now))
    # The config's wait (30 minutes) still applies; nobody clicked: the first subject wins.
    done = step(ab, sessions, now + timedelta(minutes=31))
    assert done.winner == "Red" and done.edition_status == "sent"
    assert sum(subjects_of(sessions).values()) == READERS


def test_edition_subjects_make_an_ab_send_without_an_ab_test_in_the_config(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path, stored: None
) -> None:
    plain = tracked(config, tmp_path)
    assert not runs_ab(plain, sessions, "daily", EDITION_DATE)
    with sessions.begin() as session:
        set_ab_subjects(
            session,
            plain.newsletter("daily"),
            EDITION_DATE,
            ["One", "Two"],
            by="ana",
            clock=fixed(now),
        )
    assert runs_ab(plain, sessions, "daily", EDITION_DATE)
    first = step(plain, sessions, now)
    assert first.waiting  # the default wait: 120 minutes
    assert set(subjects_of(sessions)) <= {"One", "Two"}
    assert step(plain, sessions, now + timedelta(minutes=119)).waiting
    assert step(plain, sessions, now + timedelta(minutes=121)).winner == "One"


@pytest.mark.parametrize(
    ("subjects", "message"),
    [
        (["Only one"], "give 2 to 4 A/B subjects, not 1"),
        (["1", "2", "3", "4", "5"], "give 2 to 4 A/B subjects, not 5"),
        (["Fine", "   "], "A/B subject 2 is empty"),
        (["Fine", "two\nlines"], "A/B subject 2 contains the control character"),
        (["Fine", "x" * 201], "A/B subject 2 is 201 characters; at most 200"),
        (["Same", "same "], "A/B subject 2 repeats subject 1"),
        (["Fine", "{nope}"], "A/B subject 2"),
    ],
)
def test_bad_subjects_are_one_clear_error(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    stored: None,
    subjects: list[str],
    message: str,
) -> None:
    nl = tracked(config, tmp_path).newsletter("daily")
    with sessions() as session, pytest.raises(InputError) as caught:
        set_ab_subjects(session, nl, EDITION_DATE, subjects, by="ana", clock=fixed(now))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_subjects_need_click_tracking(
    config: Config, sessions: sessionmaker[Session], now: datetime, stored: None
) -> None:
    with sessions() as session, pytest.raises(InputError, match="set track_clicks = true"):
        set_ab_subjects(
            session, config.newsletter("daily"), EDITION_DATE, ["A", "B"], by="a", clock=fixed(now)
        )


def test_cli_sets_shows_and_clears_the_subjects(
    sessions: sessionmaker[Session],
    db_url: str,
    now: datetime,
    tmp_path: Path,
    stored: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tracked_toml(tmp_path)
    set_cli_clock(monkeypatch, fixed(now))

    def run(*args: str):
        return CliRunner().invoke(
            cli, ["--config", str(path), "edition", *args], env={"DIGEST_DATABASE_URL": db_url}
        )

    r = run("subjects", "daily", *D, "--by", "ana", "Morning brief", "Today: {lead}")
    assert r.exit_code == 0, r.output
    assert r.output == "daily 2026-03-10: A/B subjects 'Morning brief' | 'Today: {lead}'\n"
    shown = run("show", "daily", *D)
    assert "A/B subjects (this edition): Morning brief | Today: {lead}\n" in shown.output
    assert "ana: A/B subjects 'Morning brief'" in shown.output  # the desk's log
    data = json.loads(run("show", "daily", *D, "--json").output)
    assert data["ab_subjects"] == ["Morning brief", "Today: {lead}"]

    bad = run("subjects", "daily", *D, "--by", "ana", "Just one")
    assert (bad.exit_code, bad.output) == (1, "Error: give 2 to 4 A/B subjects, not 1\n")
    usage = run("subjects", "daily", *D, "--by", "ana")
    assert usage.exit_code == 2 and "give two to four SUBJECTS, or --clear" in usage.output

    cleared = run("subjects", "daily", *D, "--by", "ana", "--clear")
    assert cleared.output == "daily 2026-03-10: A/B subjects removed\n"
    assert "A/B subjects (this edition)" not in run("show", "daily", *D).output
    assert json.loads(run("show", "daily", *D, "--json").output)["ab_subjects"] == []


_NOT_IN_A_HEADER = ("Cc", "Cs", "Zl", "Zp")


@given(st.lists(st.text(max_size=250), max_size=6))
@example(["0", "\ud7fc"])  # unassigned in this Python's Unicode tables
@example(["a", "b\u200d"])
@example(["{", "{title!r}"])
@example(["{{literal}}", "Today: {lead}", "\u202eevil"])
def test_any_text_is_a_subject_list_or_one_clear_error(subjects: list[str]) -> None:
    try:
        values = check_ab_subjects(subjects)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert 2 <= len(values) <= 4 and len({v.casefold() for v in values}) == len(values)
    for v in values:
        assert v and v == v.strip() and len(v) <= 200 and v.encode("utf-8")
        # A header line: no control character, line or paragraph separator, lone surrogate or
        # bidi override. (Not str.isprintable: a zero-width joiner in an emoji, or a letter
        # newer than this Python's Unicode tables, is a fine subject.)
        assert not [c for c in v if unicodedata.category(c) in _NOT_IN_A_HEADER]
        assert not set(v) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
