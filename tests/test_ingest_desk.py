"""Ingest for the desk: rank, feed order, date-only dates, photo posts, anchors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.ingest import FieldError, ingest_files, parse_rank
from digest_cli import cli

NOW = datetime(2026, 1, 26, 12, 0, tzinfo=UTC)
NY = ZoneInfo("America/New_York")


def ingest(sessions: sessionmaker[Session], path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return ingest_files(sessions, [path], clock=fixed(NOW), **kw)  # type: ignore[arg-type]


def articles(sessions: sessionmaker[Session]) -> dict[str, Article]:
    with sessions() as s:
        return {a.guid: a for a in s.scalars(select(Article))}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def item(**kw: object) -> dict[str, object]:
    return {"url": "https://x.example/a", "title": "A", "section": "News",
            "published": "2026-01-26T05:00:00Z", **kw}  # fmt: skip


def test_rank_from_json_and_csv_and_its_rejections(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    data = [
        item(guid="a", url="https://x.example/a", rank=1),
        item(guid="b", url="https://x.example/b", rank="2"),
        item(guid="c", url="https://x.example/c", rank=0),
        item(guid="d", url="https://x.example/d", rank="second"),
        item(guid="e", url="https://x.example/e", rank=1.5),
    ]
    (report,) = ingest(sessions, write(tmp_path / "cms.json", json.dumps(data)))
    assert report.rejections == [
        "cms.json: item 3: rank 0 is not a whole number from 1 (1 = top story)",
        "cms.json: item 4: rank 'second' is not a whole number from 1 (1 = top story)",
        "cms.json: item 5: rank 1.5 is not a whole number from 1 (1 = top story)",
    ]
    csv = write(
        tmp_path / "cms.csv",
        "guid,url,title,section,published,Rank\n"
        "f,https://x.example/f,F,News,2026-01-26T05:00:00Z,3\n"
        "a,https://x.example/a,A,News,2026-01-26T05:00:00Z,\n",
    )
    (again,) = ingest(sessions, csv)
    assert (again.new, again.updated) == (1, 1)
    stored = articles(sessions)
    assert (stored["b"].rank, stored["f"].rank) == (2, 3)
    assert stored["a"].rank is None  # an empty cell clears it


@given(st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=12), st.none()))
def test_parse_rank_gives_a_whole_number_from_1_or_a_reason(value: object) -> None:
    try:
        rank = parse_rank(value)
    except FieldError as e:
        assert str(e).startswith("rank ")
    else:
        assert rank is None or (isinstance(rank, int) and rank >= 1)


FEED = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Photo blog</title>
{items}
</channel></rss>"""


def feed_item(n: int, description: str = "") -> str:
    return (
        f"<item><title>Post {n}</title><link>https://blog.example/post/{n}</link>"
        f"<guid>post-{n}</guid><category>Arts</category>"
        f"<pubDate>Mon, 26 Jan 2026 0{n}:00:00 GMT</pubDate>"
        f"<description>{description}</description></item>"
    )


def test_feed_order_is_stored_as_a_weaker_rank_and_moves_without_counting_as_an_update(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = tmp_path / "blog.xml"
    write(path, FEED.format(items="".join(feed_item(n) for n in (3, 2, 1))))
    ingest(sessions, path)
    assert {g: a.feed_position for g, a in articles(sessions).items()} == {
        "post-3": 1,
        "post-2": 2,
        "post-1": 3,
    }
    # A newer post arrives on top: the others move down; their content did not change.
    write(path, FEED.format(items="".join(feed_item(n) for n in (4, 3, 2, 1))))
    (report,) = ingest(sessions, path)
    assert (report.new, report.updated, report.unchanged) == (1, 0, 3)
    assert articles(sessions)["post-1"].feed_position == 4


def test_photo_posts_get_the_first_image_of_their_html(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    html = (
        '&lt;img src="https://px.example/t.gif" width="1" height="1"&gt;'
        '&lt;p&gt;&lt;img src="https://64.media.example/photo_1280.jpg" alt="Harbor at dawn"&gt;'
        "&lt;/p&gt;&lt;p&gt;Caption&lt;/p&gt;"
    )
    write(
        tmp_path / "photos.xml", FEED.format(items=feed_item(1, html) + feed_item(2, "Text only"))
    )
    ingest(sessions, tmp_path / "photos.xml")
    stored = articles(sessions)
    assert stored["post-1"].image_url == "https://64.media.example/photo_1280.jpg"
    assert stored["post-1"].image_alt == "Harbor at dawn"
    assert stored["post-2"].image_url is None


def test_a_date_without_a_time_is_local_midnight(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    path = write(
        tmp_path / "cms.json", json.dumps([item(published="2026-01-26", updated="2026-01-27")])
    )
    (report,) = ingest(sessions, path, timezone=NY)
    assert report.rejected == 0
    (a,) = articles(sessions).values()
    assert a.published_at == datetime(2026, 1, 26, 5, 0, tzinfo=UTC)  # midnight EST
    assert a.updated_at == datetime(2026, 1, 27, 5, 0, tzinfo=UTC)
    (none,) = ingest(
        sessions, write(tmp_path / "b.json", json.dumps([item(guid="b", published="2026-01-26")]))
    )
    assert none.rejections == [
        "b.json: item 1: published date '2026-01-26' has no time, and the newsletters use "
        "several time zones: pass --timezone to read it as midnight there"
    ]
    (bad,) = ingest(
        sessions,
        write(tmp_path / "c.json", json.dumps([item(guid="c", published="2026-02-30")])),
        timezone=NY,
    )
    assert bad.rejections == ["c.json: item 1: published date '2026-02-30' is not a calendar date"]


def test_cli_reads_dates_in_the_newsletters_zone_or_in_timezone(
    tmp_path: Path, db_url: str, sessions: sessionmaker[Session], config_path: Path
) -> None:
    path = write(tmp_path / "cms.json", json.dumps([item(published="2026-01-26")]))
    env = {"DIGEST_DATABASE_URL": db_url}
    # The test config's newsletters use two zones (New York, Berlin): the date is refused...
    mixed = CliRunner().invoke(cli, ["--config", str(config_path), "ingest", str(path)], env=env)
    assert "has no time, and the newsletters use several time zones" in mixed.output
    # ... unless --timezone says which.
    ok = CliRunner().invoke(
        cli,
        ["--config", str(config_path), "ingest", str(path), "--timezone", "Europe/Berlin"],
        env=env,
    )
    assert "1 new" in ok.output, ok.output
    (a,) = articles(sessions).values()
    assert a.published_at == datetime(2026, 1, 25, 23, 0, tzinfo=UTC)
    bad = CliRunner().invoke(
        cli, ["--config", str(config_path), "ingest", str(path), "--timezone", "Mars/Base"], env=env
    )
    assert bad.exit_code == 1 and "'Mars/Base' is not an IANA time zone" in bad.output


def test_items_with_different_guids_never_merge_over_an_anchor(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    live = [
        item(guid="live-1", url="https://x.example/live#post-1", title="9:02 Polls open"),
        item(guid="live-2", url="https://x.example/live#post-2", title="9:40 Turnout high"),
    ]
    path = write(tmp_path / "live.json", json.dumps(live))
    (first,) = ingest(sessions, path)
    assert first.new == 2
    (again,) = ingest(sessions, path)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 2)
    assert {a.url for a in articles(sessions).values()} == {
        "https://x.example/live#post-1",
        "https://x.example/live#post-2",
    }
