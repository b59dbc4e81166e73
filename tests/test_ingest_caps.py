"""Ingest caps every text field a story shows (title, dek, byline, URL, image alt): one story
with a 5 MB title is rejected with one line naming the file, the item, the field and the limit,
and the rest of the file is stored, so no single story can make an edition unsendable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.limits import MAX_ARTICLE_FIELD
from digest_cli import cli

HUGE = 5 * 1024 * 1024
PUBLISHED = "2026-03-10T08:00:00Z"


def ingest(db_url: str, config: Path, path: Path) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(config), "ingest", str(path)], env={"DIGEST_DATABASE_URL": db_url}
    )


def stored(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as s:
        assert s.scalar(select(func.max(func.length(Article.title)))) <= MAX_ARTICLE_FIELD["title"]
        return sorted(s.scalars(select(Article.url)))


def rss(items: list[dict[str, str]]) -> str:
    def item(fields: dict[str, str]) -> str:
        return "<item>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items()) + "</item>"

    body = "".join(item(i) for i in items)
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>Wire</title>{body}</channel></rss>'


def feed_item(n: int, **fields: str) -> dict[str, str]:
    return {
        "title": f"Story {n}",
        "link": f"https://news.example/{n}",
        "pubDate": "Tue, 10 Mar 2026 08:00:00 GMT",
        "category": "News",
        **fields,
    }


def json_item(n: int, **fields: str) -> dict[str, str]:
    return {
        "url": f"https://news.example/{n}",
        "title": f"Story {n}",
        "section": "News",
        "published": PUBLISHED,
        **fields,
    }


def assert_one_rejection(result: Result, line: str) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip() == f"rejected: {line}"  # one short line, not 5 MB of title


def test_a_5_mb_title_in_a_feed_rejects_that_item_alone(
    db_url: str, config_path: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "wire.xml"
    items = [feed_item(1), feed_item(2, title="T" * HUGE), feed_item(3)]
    path.write_text(rss(items), encoding="utf-8")
    result = ingest(db_url, config_path, path)
    assert_one_rejection(result, "wire.xml: item 2: title is longer than 500 characters")
    assert stored(sessions) == ["https://news.example/1", "https://news.example/3"]


def test_a_5_mb_title_in_json_rejects_that_item_alone(
    db_url: str, config_path: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "wire.json"
    items = [json_item(1), json_item(2, title="T" * HUGE), json_item(3)]
    path.write_text(json.dumps(items), encoding="utf-8")
    result = ingest(db_url, config_path, path)
    assert_one_rejection(result, "wire.json: item 2: title is longer than 500 characters")
    assert stored(sessions) == ["https://news.example/1", "https://news.example/3"]


def test_a_5_mb_title_in_csv_rejects_that_row_alone(
    db_url: str, config_path: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "wire.csv"
    rows = ["url,title,section,published"]
    rows += [f"https://news.example/{n},Story {n},News,{PUBLISHED}" for n in (1, 2, 3)]
    rows[2] = rows[2].replace("Story 2", "T" * HUGE)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = ingest(db_url, config_path, path)
    assert_one_rejection(result, "wire.csv: row 3: title is longer than 500 characters")
    assert stored(sessions) == ["https://news.example/1", "https://news.example/3"]


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"author": "B" * HUGE}, "byline is longer than 300 characters"),
        ({"link": "https://news.example/" + "u" * HUGE}, "url is longer than 2048 characters"),
    ],
)
def test_a_huge_byline_or_link_in_a_feed_rejects_that_item_alone(
    db_url: str,
    config_path: Path,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    fields: dict[str, str],
    reason: str,
) -> None:
    path = tmp_path / "wire.xml"
    path.write_text(rss([feed_item(1), feed_item(2, **fields)]), encoding="utf-8")
    result = ingest(db_url, config_path, path)
    assert_one_rejection(result, f"wire.xml: item 2: {reason}")
    assert stored(sessions) == ["https://news.example/1"]


def test_a_feed_shortens_an_overlong_summary_and_image_alt_rather_than_drop_the_story(
    db_url: str, config_path: Path, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A feed's summary is often the whole story and its alt text a caption: shortened to the
    cap with an ellipsis (JSON and CSV, written for digest, are rejected instead)."""
    path = tmp_path / "wire.xml"
    alt = "A " * HUGE
    extra = f'<media:content url="https://img.example/1.jpg" medium="image"/><media:description>{alt}</media:description>'
    doc = rss([feed_item(1, description="Word " * 400_000)]).replace(
        'version="2.0"', 'version="2.0" xmlns:media="http://search.yahoo.com/mrss/"'
    )
    path.write_text(doc.replace("</item>", extra + "</item>"), encoding="utf-8")
    result = ingest(db_url, config_path, path)
    assert result.exit_code == 0, result.output
    with sessions() as s:
        article = s.scalars(select(Article)).one()
    assert article.dek.endswith("…") and len(article.dek) <= MAX_ARTICLE_FIELD["dek"] + 1
    assert article.image_alt is not None and article.image_alt.endswith("…")
    assert len(article.image_alt) <= MAX_ARTICLE_FIELD["image_alt"] + 1
