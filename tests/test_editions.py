"""Editions from the CLI: build, show, rebuild with --force, frozen once sending starts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition, EditionItem, build_edition, freeze_edition, load_edition
from digest.selection import edition_window
from digest_cli import cli
from tests.factories import add_article

DAY = date(2026, 3, 10)


def run(config_path: Path, db_url: str, *args: str):
    return CliRunner().invoke(
        cli, ["--config", str(config_path), *args], env={"DIGEST_DATABASE_URL": db_url}
    )


def seed(session: Session, config: Config) -> None:
    _, end = edition_window(config.newsletter("daily"), DAY)
    t = end.astimezone(UTC)
    add_article(
        session, t - timedelta(hours=1), title="Pinned & <important>", priority="pin", popularity=1
    )
    add_article(session, t - timedelta(hours=2), title="Markets rally", section="Business")
    add_article(session, t - timedelta(hours=3), title="Quiet day", popularity=50)
    session.commit()


def test_build_then_show_prints_sections_ranks_and_reasons(
    session: Session, config: Config, config_path: Path, db_url: str
) -> None:
    seed(session, config)
    built = run(config_path, db_url, "edition", "build", "daily", "--date", "2026-03-10")
    assert built.exit_code == 0, built.output
    assert "built edition daily 2026-03-10: 3 stories in 2 sections" in built.output
    shown = run(config_path, db_url, "edition", "show", "daily", "--date", "2026-03-10")
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    news = lines.index("NEWS")
    assert lines[news + 1] == "  1. Pinned & <important>"
    assert "pinned by editor" in lines[news + 2]
    assert lines.index("BUSINESS") > news


def test_second_build_keeps_draft_and_force_rebuilds(
    session: Session, config: Config, config_path: Path, db_url: str
) -> None:
    seed(session, config)
    run(config_path, db_url, "edition", "build", "daily", "--date", "2026-03-10")
    again = run(config_path, db_url, "edition", "build", "daily", "--date", "2026-03-10")
    assert "already built" in again.output and "--force" in again.output
    forced = run(
        config_path, db_url, "edition", "build", "daily", "--date", "2026-03-10", "--force"
    )
    assert "rebuilt edition" in forced.output
    assert session.scalar(select(func.count()).select_from(Edition)) == 1
    assert session.scalar(select(func.count()).select_from(EditionItem)) == 3


def test_frozen_edition_cannot_be_rebuilt(
    session: Session, config: Config, config_path: Path, db_url: str
) -> None:
    seed(session, config)
    clock = fixed(datetime(2026, 3, 10, 11, tzinfo=UTC))
    edition = build_edition(session, config, config.newsletter("daily"), DAY, clock=clock).edition
    assert freeze_edition(session, edition, clock=clock) is True
    assert freeze_edition(session, edition, clock=clock) is False
    session.commit()
    result = run(
        config_path, db_url, "edition", "build", "daily", "--date", "2026-03-10", "--force"
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: edition daily 2026-03-10 is frozen (sending started 2026-03-10 11:00 UTC); "
        "it can no longer be rebuilt; nobody was handed it yet: "
        "`digest edition reopen daily --date 2026-03-10` makes it a draft again"
    )


def test_edition_snapshot_survives_article_edits(session: Session, config: Config) -> None:
    seed(session, config)
    clock = fixed(datetime(2026, 3, 10, 11, tzinfo=UTC))
    edition = build_edition(session, config, config.newsletter("daily"), DAY, clock=clock).edition
    edition.items[0].title  # noqa: B018 - loaded before the change
    from digest.articles import Article

    article = session.get(Article, edition.items[0].article_id)
    assert article is not None
    article.title = "Changed after approval"
    session.commit()
    assert load_edition(session, "daily", DAY).items[0].title == "Pinned & <important>"


def test_show_missing_edition_and_unknown_newsletter(config_path: Path, db_url: str) -> None:
    missing = run(config_path, db_url, "edition", "show", "daily", "--date", "2026-03-10")
    assert missing.exit_code == 1
    assert "no edition of daily for 2026-03-10: run `digest edition build daily" in missing.output
    unknown = run(config_path, db_url, "edition", "show", "weekly")
    assert unknown.exit_code == 2
    assert "unknown newsletter 'weekly' (configured: daily, strict)" in unknown.output
    bad_date = run(config_path, db_url, "edition", "show", "daily", "--date", "10/03/2026")
    assert bad_date.exit_code == 2 and "is not a date" in bad_date.output


def test_an_edition_built_concurrently_is_reused_without_losing_the_callers_work(
    sessions, config: Config, monkeypatch
) -> None:
    """Another process stores the same edition between our check and our insert: we use
    theirs, and only our insert is undone, not the rest of the caller's transaction."""
    import digest.editions as editions

    clock = fixed(datetime(2026, 3, 10, 11, tzinfo=UTC))
    nl = config.newsletter("daily")
    with sessions() as session:
        seed(session, config)  # commits
    with sessions.begin() as session:
        theirs = build_edition(session, config, nl, DAY, clock=clock).edition.id
    real = editions.get_edition
    missed: list[bool] = []

    def stale_check(*args: object) -> Edition | None:
        if not missed:  # the first look misses the edition the other process just stored
            missed.append(True)
            return None
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(editions, "get_edition", stale_check)
    with sessions.begin() as session:
        mine = add_article(session, datetime(2026, 3, 1, tzinfo=UTC), title="Caller's own work")
        result = build_edition(session, config, nl, DAY, clock=clock)
        assert result.built is False and result.edition.id == theirs
        assert "built concurrently" in result.message
    with sessions() as session:
        from digest.articles import Article

        assert session.get(Article, mine.id) is not None
        assert session.scalar(select(func.count()).select_from(Edition)) == 1
