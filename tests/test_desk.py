"""The editor's desk: shaping a draft from the CLI and the library, every change logged with
who and when, refused once the edition is frozen; approval and its withdrawal."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.config import Config
from digest.desk import (
    add_story,
    approve,
    drop_story,
    find_item,
    move_story,
    pin_story,
    set_blurb,
    set_headline,
    set_note,
    set_wording,
)
from digest.editions import build_edition, freeze_edition, load_edition
from digest.errors import EditionFrozen, GateClosed, InputError, NotFound
from digest.gates import check_gates
from digest.preview import preview_mail
from digest.selection import edition_window
from digest_cli import cli
from tests.cli_support import set_cli_clock
from tests.factories import add_article

DAY = date(2026, 3, 10)
AT = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
CLOCK = fixed(AT)


def seed(session: Session, config: Config) -> list[Article]:
    """Four News stories (the pick keeps three), two Business, one Health; one story outside
    the window for `add`."""
    _, end = edition_window(config.newsletter("daily"), DAY)
    t = end.astimezone(UTC)
    out = [
        add_article(session, t - timedelta(hours=h), title=title, section=section, popularity=pop)
        for h, title, section, pop in [
            (1, "Bridge vote tonight", "News", 900),
            (2, "School budget passes", "News", 800),
            (3, "Storm moves east", "News", 700),
            (4, "Library hours extended", "News", 100),
            (2, "Markets rally", "Business", 500),
            (3, "Port posts record year", "Business", 400),
            (1, "Flu season peaks", "Health", 300),
        ]
    ]
    out.append(
        add_article(session, t - timedelta(days=3), title="Old investigation", section="News")
    )
    session.commit()
    return out


@pytest.fixture
def built(session: Session, config: Config) -> list[Article]:
    articles = seed(session, config)
    build_edition(session, config, config.newsletter("daily"), DAY, clock=CLOCK)
    session.commit()
    return articles


def titles(session: Session, section: str) -> list[str]:
    edition = load_edition(session, "daily", DAY)
    return [
        i.shown_title for i in sorted(edition.items, key=lambda i: i.rank) if i.section == section
    ]


# --- library -----------------------------------------------------------------------------------


def test_drop_move_add_pin_change_the_draft_and_log_who_and_when(
    session: Session, config: Config, built: list[Article]
) -> None:
    nl = config.newsletter("daily")
    assert titles(session, "News") == [
        "Bridge vote tonight",
        "School budget passes",
        "Storm moves east",
    ]
    r = drop_story(session, nl, DAY, "News:2", by="ana", clock=CLOCK)
    assert r.message == "daily 2026-03-10: dropped 'School budget passes' (News 2)"
    move_story(session, nl, DAY, str(built[2].id), to=1, by="lee", clock=CLOCK)
    add_story(session, nl, DAY, built[7].url, at=2, by="ana", clock=CLOCK)
    pin_story(session, nl, DAY, "Business:2", by="ana", clock=fixed(AT + timedelta(minutes=5)))
    session.commit()
    assert titles(session, "News") == [
        "Storm moves east",
        "Old investigation",
        "Bridge vote tonight",
    ]
    assert titles(session, "Business") == ["Port posts record year", "Markets rally"]
    edition = load_edition(session, "daily", DAY)
    assert [(e.by, e.action) for e in edition.edits] == [
        ("ana", "drop"),
        ("lee", "move"),
        ("ana", "add"),
        ("ana", "pin"),
    ]
    assert edition.edits[-1].at == AT + timedelta(minutes=5)
    added = find_item(edition, str(built[7].id))
    assert added.reason == "added by ana"
    # The stored articles are untouched.
    assert session.get(Article, built[1].id) is not None


def test_story_references_by_id_url_and_section_rank(
    session: Session, config: Config, built: list[Article]
) -> None:
    edition = load_edition(session, "daily", DAY)
    by_id = find_item(edition, str(built[0].id))
    assert find_item(edition, built[0].url) is by_id
    assert find_item(edition, "news:1") is by_id
    assert find_item(edition, "News #1") is by_id
    with pytest.raises(NotFound, match=r"no story 'News:9' in daily 2026-03-10 \(see `digest"):
        find_item(edition, "News:9")
    with pytest.raises(InputError, match="is not a story: give an article id"):
        find_item(edition, "the bridge one")


def test_overrides_change_the_email_not_the_article(
    session: Session, config: Config, built: list[Article]
) -> None:
    nl = config.newsletter("daily")
    set_headline(session, nl, DAY, "News:1", "  Bridge vote:\nwhat to know ", by="ana", clock=CLOCK)
    set_blurb(session, nl, DAY, "News:1", "Council meets at 7 p.m.", by="ana", clock=CLOCK)
    set_blurb(session, nl, DAY, "Business:1", "", by="ana", clock=CLOCK)
    set_note(
        session,
        nl,
        DAY,
        "Big night for the *city*. [Watch live](https://news.example/live)",
        by="ana",
        clock=CLOCK,
    )
    set_wording(session, nl, DAY, "subject", "Tonight: {lead}", by="ana", clock=CLOCK)
    set_wording(session, nl, DAY, "preheader", "Plus {headlines}", by="ana", clock=CLOCK)
    session.commit()
    mail = preview_mail(session, config, nl, DAY)
    assert mail.mail.subject == "Tonight: Bridge vote: what to know"
    assert mail.variant.preheader.startswith("Plus Markets rally")
    html, text = mail.mail.html, mail.mail.text
    assert ">Bridge vote: what to know</a>" in html and "Bridge vote tonight" not in html
    assert "Council meets at 7 p.m." in html
    assert "Big night for the <em>city</em>." in html
    assert 'href="https://news.example/live?utm_source=digest&amp;utm_medium=email' in html
    # The text twin: the link after its label, on a line of its own (wrapped at 78).
    assert (
        "Big night for the city. Watch live\n<https://news.example/live?utm_source=digest" in text
    )
    assert session.get(Article, built[0].id).title == "Bridge vote tonight"  # type: ignore[union-attr]
    # Clearing returns to the stored wording.
    set_headline(session, nl, DAY, "News:1", None, by="ana", clock=CLOCK)
    set_wording(session, nl, DAY, "subject", None, by="ana", clock=CLOCK)
    session.commit()
    mail = preview_mail(session, config, nl, DAY)
    assert mail.mail.subject == "The Test Gazette: Bridge vote tonight"


def test_bad_edits_are_one_clear_error(
    session: Session, config: Config, built: list[Article]
) -> None:
    nl = config.newsletter("daily")
    with pytest.raises(InputError, match=r"unknown field \{author\}"):
        set_wording(session, nl, DAY, "subject", "By {author}", by="ana", clock=CLOCK)
    with pytest.raises(InputError, match="the headline is 301 characters; at most 300"):
        set_headline(session, nl, DAY, "News:1", "x" * 301, by="ana", clock=CLOCK)
    with pytest.raises(InputError, match="already in the edition"):
        add_story(session, nl, DAY, str(built[0].id), by="ana", clock=CLOCK)
    with pytest.raises(NotFound, match="no article 'https://nowhere.example/x' in the store"):
        add_story(session, nl, DAY, "https://nowhere.example/x", by="ana", clock=CLOCK)
    with pytest.raises(InputError, match="'Sports' is not a section of daily"):
        move_story(session, nl, DAY, "News:1", to=None, section="Sports", by="ana", clock=CLOCK)
    with pytest.raises(InputError, match="the note is 2001 characters; at most 2000"):
        set_note(session, nl, DAY, "a" * 2001, by="ana", clock=CLOCK)


def test_a_frozen_edition_refuses_every_change(
    session: Session, config: Config, built: list[Article]
) -> None:
    nl = config.newsletter("daily")
    freeze_edition(session, load_edition(session, "daily", DAY), clock=CLOCK)
    session.commit()
    for change in (
        lambda: drop_story(session, nl, DAY, "News:1", by="ana", clock=CLOCK),
        lambda: set_note(session, nl, DAY, "Hi", by="ana", clock=CLOCK),
        lambda: approve(session, nl, DAY, by="ana", clock=CLOCK),
    ):
        with pytest.raises(
            EditionFrozen,
            match="is frozen .sending started 2026-03-10 09:00 UTC.: it can no longer be changed",
        ):
            change()


def test_a_rebuild_picks_again_and_keeps_the_editors_changes(
    session: Session, config: Config, built: list[Article]
) -> None:
    nl = config.newsletter("daily")
    drop_story(session, nl, DAY, "News:1", by="ana", clock=CLOCK)
    add_story(session, nl, DAY, str(built[7].id), section="Health", at=1, by="ana", clock=CLOCK)
    set_headline(session, nl, DAY, "Business:1", "Stocks soar", by="ana", clock=CLOCK)
    approve(session, nl, DAY, by="ed", clock=CLOCK)
    session.commit()
    result = build_edition(session, config, nl, DAY, clock=CLOCK, force=True)
    session.commit()
    assert "3 editor's change(s) re-applied" in result.message
    assert "approval by ed withdrawn" in result.message
    # The dropped story stays out; the next one fills its place.
    assert titles(session, "News") == [
        "School budget passes",
        "Storm moves east",
        "Library hours extended",
    ]
    assert titles(session, "Health") == ["Old investigation", "Flu season peaks"]
    assert titles(session, "Business")[0] == "Stocks soar"
    assert load_edition(session, "daily", DAY).approved_by is None


def test_approval_is_required_withdrawn_by_edits_and_limited_to_approvers(
    session: Session, config: Config, built: list[Article]
) -> None:
    from dataclasses import replace

    nl = replace(config.newsletter("daily"), approval="required", approvers=("Ana", "Lee"))
    cfg = replace(config, newsletters={**config.newsletters, "daily": nl})
    edition = load_edition(session, "daily", DAY)
    with pytest.raises(GateClosed) as held:
        check_gates(session, cfg, nl, edition, clock=CLOCK)
    assert str(held.value).startswith(
        "not sending daily 2026-03-10: waiting for approval: one of Ana, Lee must approve it "
        "with `digest edition approve daily --date 2026-03-10 --by NAME`"
    )
    with pytest.raises(InputError, match="bob may not approve daily: approvers are Ana, Lee"):
        approve(session, nl, DAY, by="bob", clock=CLOCK)
    assert approve(session, nl, DAY, by="ana", clock=CLOCK).message == (
        "daily 2026-03-10: approved (6 stories)"
    )
    check_gates(session, cfg, nl, edition, clock=CLOCK)  # passes now
    r = set_note(session, nl, DAY, "One more thing", by="lee", clock=CLOCK)
    assert r.message.endswith("note set (3 words) (approval by ana withdrawn)")
    with pytest.raises(GateClosed, match="waiting for approval"):
        check_gates(session, cfg, nl, edition, clock=CLOCK)


# --- CLI ---------------------------------------------------------------------------------------


def run(config_path: Path, db_url: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["--config", str(config_path), *args],
        env={"DIGEST_DATABASE_URL": db_url, "DIGEST_EDITOR": "", **env},
    )


def test_cli_edits_show_their_log_and_json(
    config_path: Path, db_url: str, built: list[Article], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_cli_clock(monkeypatch, CLOCK)
    d = ["--date", "2026-03-10"]
    steps = [
        ("edition", "drop", "daily", "News:3", *d, "--by", "ana"),
        ("edition", "move", "daily", "Business:2", "--to", "1", *d, "--by", "ana"),
        ("edition", "add", "daily", str(built[7].id), "--section", "News", *d, "--by", "lee"),
        ("edition", "pin", "daily", "News:2", *d, "--by", "lee"),
        ("edition", "pin", "daily", "Business:2", *d, "--by", "lee"),
        ("edition", "unpin", "daily", "Business:1", *d, "--by", "lee"),
        ("edition", "headline", "daily", "News:2", "Vote tonight", *d, "--by", "ana"),
        ("edition", "blurb", "daily", "News:2", "What to know.", *d, "--by", "ana"),
        ("edition", "note", "daily", "Hello *readers*.", *d, "--by", "ana"),
        ("edition", "subject", "daily", "Tonight: {lead}", *d, "--by", "ana"),
        ("edition", "preheader", "daily", "{headlines}", *d, "--by", "ana"),
    ]
    for args in steps:
        result = run(config_path, db_url, *args)
        assert result.exit_code == 0, (args, result.output)
        assert result.output.startswith("daily 2026-03-10: ")
    shown = run(config_path, db_url, "edition", "show", "daily", *d)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "subject (this edition): Tonight: {lead}" in out
    assert "editor's note:\n  Hello *readers*." in out
    assert "  1. School budget passes  [pinned]\n" in out
    assert "  2. Vote tonight\n" in out
    assert "  1. Markets rally\n" in out  # pinned, then unpinned: it stays where it is
    assert "headline for the email (stored: Bridge vote tonight)" in out
    assert "2026-03-10 09:00 UTC  ana: dropped 'Storm moves east' (News 3)" in out
    assert "2026-03-10 09:00 UTC  lee: added 'Old investigation' at News 3" in out
    data = json.loads(run(config_path, db_url, "edition", "show", "daily", *d, "--json").output)
    news = data["sections"][0]
    assert news["name"] == "News"
    assert [s["title"] for s in news["stories"]] == [
        "School budget passes",
        "Bridge vote tonight",
        "Old investigation",
    ]
    assert news["stories"][0]["pinned"] and not news["stories"][1]["pinned"]
    assert news["stories"][1]["headline"] == "Vote tonight"
    assert news["stories"][1]["blurb"] == "What to know."
    assert [c["action"] for c in data["changes"]][:3] == ["drop", "move", "add"]
    assert data["approval"] == {"required": False, "by": None, "at": None}


def test_cli_approve_list_and_the_default_date(
    config_path: Path, db_url: str, built: list[Article], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_cli_clock(monkeypatch, CLOCK)
    no_name = run(config_path, db_url, "edition", "approve", "daily", "--date", "2026-03-10")
    assert no_name.exit_code == 1
    assert no_name.output.strip() == "Error: say who you are: --by NAME (or set DIGEST_EDITOR)"
    # The date once, for every command: on the group or in DIGEST_DATE.
    ok = run(
        config_path, db_url, "--date", "2026-03-10", "edition", "approve", "daily", "--by", "Ana"
    )
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == "daily 2026-03-10: approved (6 stories)"
    listed = run(config_path, db_url, "edition", "list", "daily", DIGEST_DATE="2026-03-10")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[0].startswith(
        "2026-03-10  draft     6 stories in  3 sections  approved by Ana"
    )
    rows = json.loads(run(config_path, db_url, "edition", "list", "daily", "--json").output)
    assert rows == [
        {
            "date": "2026-03-10",
            "status": "draft",
            "stories": 6,
            "sections": 3,
            "approved_by": "Ana",
            "approved_at": "2026-03-10T09:00:00Z",
            "changes": 1,
            "deliveries": {},
        }
    ]
    shown = run(config_path, db_url, "edition", "show", "daily", DIGEST_DATE="2026-03-10")
    assert "approved by Ana at 2026-03-10 09:00 UTC" in shown.output
    bad = run(config_path, db_url, "--date", "someday", "edition", "list", "daily")
    assert bad.exit_code == 2 and "'someday' is not a date" in bad.output


def test_cli_refuses_edits_of_a_frozen_edition_in_one_line(
    session: Session, config_path: Path, db_url: str, built: list[Article]
) -> None:
    freeze_edition(session, load_edition(session, "daily", DAY), clock=CLOCK)
    session.commit()
    result = run(
        config_path,
        db_url,
        "edition",
        "drop",
        "daily",
        "News:1",
        "--date",
        "2026-03-10",
        "--by",
        "ana",
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: edition daily 2026-03-10 is frozen (sending started 2026-03-10 09:00 UTC): "
        "it can no longer be changed\n"
    )


def test_cli_usage_errors(config_path: Path, db_url: str, built: list[Article]) -> None:
    both = run(
        config_path,
        db_url,
        "edition",
        "headline",
        "daily",
        "News:1",
        "X",
        "--clear",
        "--date",
        "2026-03-10",
    )
    assert both.exit_code == 2 and "give the headline or --clear (not both)" in both.output
    nowhere = run(
        config_path,
        db_url,
        "edition",
        "move",
        "daily",
        "News:1",
        "--date",
        "2026-03-10",
        "--by",
        "a",
    )
    assert nowhere.exit_code == 1 and "say where: --to N" in nowhere.output


def test_every_desk_command_has_help() -> None:
    for name in (
        "drop",
        "move",
        "add",
        "pin",
        "unpin",
        "headline",
        "blurb",
        "note",
        "subject",
        "preheader",
        "approve",
        "list",
        "show",
    ):
        result = CliRunner().invoke(cli, ["edition", name, "--help"])
        assert result.exit_code == 0, name
        assert "NEWSLETTER" in result.output
    assert CliRunner().invoke(cli, ["proof", "--help"]).exit_code == 0


def test_import_needs_no_newsletter_flag_with_one_newsletter(
    tmp_path: Path, db_url: str, sessions: sessionmaker[Session]
) -> None:
    cfg = tmp_path / "one.toml"
    cfg.write_text(
        '[newsletters.solo]\ntitle = "Solo"\nfrom_email = "solo@news.example"\n'
        'sections = [{ name = "News" }]\n'
    )
    people = tmp_path / "people.csv"
    people.write_text("email,name\nann@example.com,Ann\n")
    result = CliRunner().invoke(
        cli,
        ["--config", str(cfg), "subscribers", "import", str(people)],
        env={"DIGEST_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    assert "→ solo: 1 added" in result.output
    with sessions() as s:
        from subscribers.models import Subscriber

        assert s.scalars(select(Subscriber.email)).all() == ["ann@example.com"]
