"""`digest ingest` as a user runs it: counts on stdout, rejections and errors on stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest_cli import cli

FEEDS = Path(__file__).parent / "data" / "feeds"
Invoke = Callable[..., Result]


@pytest.fixture
def run(db_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config_path), "ingest", *args])

    return invoke


def count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Article)) or 0


def test_ingest_prints_counts_per_file(run: Invoke, sessions: sessionmaker[Session]) -> None:
    result = run(str(FEEDS / "articles.json"), str(FEEDS / "articles.csv"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "articles.json: 3 new, 0 updated, 0 unchanged, 0 rejected",
        "articles.csv: 3 new, 0 updated, 0 unchanged, 0 rejected",
    ]
    again = run(str(FEEDS / "articles.json"))
    assert again.stdout.splitlines() == ["articles.json: 0 new, 0 updated, 3 unchanged, 0 rejected"]
    assert count(sessions) == 6


def test_rejections_are_listed_and_good_items_go_in(
    run: Invoke, sessions: sessionmaker[Session]
) -> None:
    # The test config has a strict newsletter, so unknown sections are rejected.
    result = run(str(FEEDS / "rss2_media.xml"))
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "rejected: rss2_media.xml: item 2: unknown section 'world'"
        " (configured: Business, Entertainment, Health, News)"
    ]
    assert result.stdout.splitlines() == [
        "rss2_media.xml: 2 new, 0 updated, 0 unchanged, 1 rejected"
    ]
    assert count(sessions) == 2


@pytest.mark.parametrize("name", ["not_a_feed.txt", "truncated.xml"])
def test_a_non_feed_file_is_one_error_line_and_changes_nothing(
    run,
    sessions: sessionmaker[Session],
    name: str,
) -> None:
    result = run(str(FEEDS / "articles.json"), str(FEEDS / name))
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {FEEDS / name}: not ")
    assert "Traceback" not in result.output
    assert count(sessions) == 0


def test_unknown_format_is_refused_by_the_flag(run: Invoke) -> None:
    result = run("--format", "xls", str(FEEDS / "articles.json"))
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.stderr
