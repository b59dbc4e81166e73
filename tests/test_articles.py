"""The article store from the CLI: `digest articles` filters, and URL normalisation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from digest.articles import normalise_url
from digest_cli import cli
from tests.factories import add_article

T = datetime(2026, 3, 10, 9, tzinfo=UTC)


def test_articles_lists_newest_first_and_filters(
    session: Session, config_path: Path, db_url: str
) -> None:
    add_article(session, T - timedelta(days=2), title="Old budget story", section="Business")
    add_article(session, T - timedelta(hours=1), title="Budget passes", section="News")
    add_article(session, T, title="Mortgage rates fall", section="Business", priority="pin")
    session.commit()

    def run(*args: str) -> list[str]:
        result = CliRunner().invoke(
            cli,
            ["--config", str(config_path), "articles", *args],
            env={"DIGEST_DATABASE_URL": db_url},
        )
        assert result.exit_code == 0, result.output
        return result.output.splitlines()

    everything = run()
    assert "Mortgage rates fall" in everything[0] and "📌" in everything[0]
    assert everything[-1] == "3 article(s)"
    assert [line for line in run("--section", "business") if "budget" in line.lower()] == [
        line for line in everything if "Old budget" in line
    ]
    assert run("--since", "2026-03-09", "--text", "BUDGET")[-1] == "1 article(s)"
    bad = CliRunner().invoke(
        cli,
        ["--config", str(config_path), "articles", "--since", "yesterday"],
        env={"DIGEST_DATABASE_URL": db_url},
    )
    assert bad.exit_code == 2 and "'yesterday' is not an ISO date or time" in bad.output


def test_url_normalisation_drops_tracking_only_and_keeps_anchors() -> None:
    assert (
        normalise_url("HTTPS://News.Example:443/a/b?id=7&utm_source=x&fbclid=1#top")
        == "https://news.example/a/b?id=7#top"
    )
    # Tracking fragments go; an anchor (a live-blog entry) is part of the link.
    assert normalise_url("https://news.example/a#xtor=RSS-3208") == "https://news.example/a"
    assert normalise_url("https://news.example/a#utm_source=feed") == "https://news.example/a"
    assert normalise_url("https://news.example/live#post-12") == "https://news.example/live#post-12"
    assert normalise_url("https://news.example/a#") == "https://news.example/a"
    assert (
        normalise_url("http://news.example:8080/x?b=2&a=1") == "http://news.example:8080/x?b=2&a=1"
    )
    assert normalise_url("https://news.example") == "https://news.example/"


@given(
    st.from_regex(
        r"https?://[a-zA-Z0-9.-]{1,20}(/[a-z0-9/]{0,20})?(\?[a-z]=[0-9])?", fullmatch=True
    )
)
def test_url_normalisation_is_idempotent(url: str) -> None:
    once = normalise_url(url)
    assert normalise_url(once) == once
