"""Ingesting JSON (array or lines) and CSV exports: fields, rejections, whole-file errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.errors import InputError
from digest.ingest import IngestReport, ingest_files

FEEDS = Path(__file__).parent / "data" / "feeds"
KNOWN = {s.casefold(): s for s in ("News", "Business", "Health", "Entertainment")}


def ingest(
    sessions: sessionmaker[Session], *paths: Path, at: datetime, **kwargs: Any
) -> list[IngestReport]:
    kwargs.setdefault("section", None)
    kwargs.setdefault("source", None)
    kwargs.setdefault("fmt", "auto")
    kwargs.setdefault("known_sections", KNOWN)
    return ingest_files(sessions, list(paths), clock=fixed(at), **kwargs)


def by_guid(sessions: sessionmaker[Session]) -> dict[str, Article]:
    with sessions() as s:
        return {a.guid: a for a in s.scalars(select(Article))}


def snapshot(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sessions() as s:
        rows = s.scalars(select(Article).order_by(Article.id))
        return [{c.key: getattr(a, c.key) for c in Article.__table__.columns} for a in rows]


def write_json(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def story(**fields: Any) -> dict[str, Any]:
    base = {
        "url": "https://x.example/a",
        "title": "A story",
        "section": "News",
        "published": "2026-03-10T06:00:00Z",
    }
    return {**base, **fields}


@pytest.mark.parametrize("name", ["articles.json", "articles.jsonl"])
def test_json_array_and_json_lines(
    sessions: sessionmaker[Session], now: datetime, name: str
) -> None:
    (report,) = ingest(sessions, FEEDS / name, at=now)
    assert report.summary() == f"{name}: 3 new, 0 updated, 0 unchanged, 0 rejected"
    rows = by_guid(sessions)
    fire = rows["cms-1"]
    assert fire.url == "https://news.example/news/fire"
    assert fire.section == "News"  # "news" in the file, configured spelling stored
    assert (fire.title, fire.dek, fire.body) == (
        "Warehouse fire contained",
        "Crews worked through the night.",
        "<p>Full body</p>",
    )
    assert fire.published_at == datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
    assert fire.updated_at == datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
    assert (fire.image_url, fire.image_alt, fire.image_caption) == (
        "https://img.news.example/fire.jpg",
        "Firefighters at the scene",
        "Photo: City FD",
    )
    assert fire.tags == ["fire", "city"]
    assert (fire.byline, fire.source, fire.priority, fire.popularity) == (
        "Ana Lima",
        "News Example",
        "pin",
        1520.0,
    )
    rates = rows["42"]  # numeric "id" accepted as the guid
    assert (rates.dek, rates.byline) == ("The bank held rates at 4%.", "Ben Ode")
    assert (rates.tags, rates.priority, rates.popularity) == (["economy", "rates"], "boost", 87.5)
    flu = rows["https://news.example/health/flu"]  # no guid: the normalised URL stands in
    assert flu.title == "Flu season peaks early 🤧"
    assert (flu.priority, flu.popularity, flu.tags, flu.dek) == ("normal", 0.0, [], "")


def test_csv_with_bom_crlf_quoted_commas_and_multiline_cells(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    data = (FEEDS / "articles.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    (report,) = ingest(sessions, FEEDS / "articles.csv", at=now)
    assert report.summary() == "articles.csv: 3 new, 0 updated, 0 unchanged, 0 rejected"
    rows = by_guid(sessions)
    mayor = rows["csv-1"]
    assert mayor.title == 'Mayor says "no", then "yes"'
    assert (mayor.dek, mayor.byline, mayor.image_alt) == (
        "Short, sharp, and quoted",
        "Smith, Jo",
        "A podium, empty",
    )
    assert (mayor.tags, mayor.priority, mayor.popularity) == (["local", "politics"], "pin", 10.0)
    shares = rows["csv-2"]
    assert shares.dek == "Line one\nline two"
    assert shares.tags == ["a", "b"]  # "a|b|a": split on |, duplicates dropped
    assert shares.published_at == datetime(2026, 3, 10, 3, 0, tzinfo=UTC)
    assert (shares.priority, shares.popularity, shares.image_url) == ("normal", 0.0, None)
    award = rows["csv-3"]
    assert (award.title, award.byline) == ("רות כהן wins award 🎬", "רות כהן")


def test_json_and_csv_twice_change_nothing(sessions: sessionmaker[Session], now: datetime) -> None:
    files = [FEEDS / "articles.json", FEEDS / "articles.csv"]
    ingest(sessions, *files, at=now)
    before = snapshot(sessions)
    again = ingest(sessions, *files, at=now + timedelta(days=1))
    assert [r.summary() for r in again] == [
        "articles.json: 0 new, 0 updated, 3 unchanged, 0 rejected",
        "articles.csv: 0 new, 0 updated, 3 unchanged, 0 rejected",
    ]
    assert snapshot(sessions) == before


def test_each_rejection_reason_names_file_item_and_reason(
    sessions: sessionmaker[Session], now: datetime
) -> None:
    (report,) = ingest(sessions, FEEDS / "rejects.json", at=now)
    assert (report.new, report.rejected) == (1, 10)
    assert report.rejections == [
        "rejects.json: item 2: no link",
        "rejects.json: item 3: no title",
        "rejects.json: item 4: published date 'yesterday' is not ISO 8601"
        " (e.g. 2026-03-10T08:30:00-05:00)",
        "rejects.json: item 5: no published date",
        "rejects.json: item 6: published date '2026-03-10T06:00:00' has no UTC offset"
        " (add Z or e.g. -05:00)",
        "rejects.json: item 7: unknown section 'Astrology'"
        " (configured: Business, Entertainment, Health, News)",
        "rejects.json: item 8: priority 'urgent' is not one of normal, boost, pin",
        "rejects.json: item 9: popularity -3 is not a number of 0 or more",
        "rejects.json: item 10: url 'ftp://r.example/file' is not an absolute http(s) URL",
        "rejects.json: item 11: not a JSON object",
    ]
    assert list(by_guid(sessions)) == ["https://r.example/ok"]


def test_csv_rejections_use_spreadsheet_row_numbers(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "url,title,section,published,popularity\n"
        "https://c.example/1,One,News,2026-03-10T01:00:00Z,5\n"
        "https://c.example/2,,News,2026-03-10T01:00:00Z,5\n"
        "https://c.example/3,Three,News,2026-03-10T01:00:00Z,lots\n"
        "https://c.example/4,Four,News,2026-03-10T01:00:00Z,5,extra\n",
        encoding="utf-8",
    )
    (report,) = ingest(sessions, path, at=now)
    assert report.rejections == [
        "export.csv: row 3: no title",
        "export.csv: row 4: popularity 'lots' is not a number of 0 or more",
        "export.csv: row 5: 6 fields but the header has 5",
    ]
    assert report.new == 1


def test_fields_too_long_for_the_store_are_rejected(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = write_json(
        tmp_path / "long.json", [story(byline="B" * 301), story(url="https://x.example/b")]
    )
    (report,) = ingest(sessions, path, at=now)
    assert report.rejections == ["long.json: item 1: byline is longer than 300 characters"]
    assert report.new == 1


def test_a_long_url_without_guid_gets_a_hashed_guid(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    url = "https://x.example/" + "a" * 1000
    path = write_json(tmp_path / "long-url.json", [story(url=url)])
    (first,) = ingest(sessions, path, at=now)
    (second,) = ingest(sessions, path, at=now)
    assert (first.new, second.unchanged) == (1, 1)
    (guid,) = by_guid(sessions)
    assert guid.startswith("sha256:") and len(guid) == 71


def test_same_story_twice_in_one_file_is_one_article(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = write_json(
        tmp_path / "dupes.json",
        [
            story(title="First headline"),
            story(url="https://X.example/a?utm_source=nl#xtor=RSS-3", title="Second headline"),
        ],
    )
    (report,) = ingest(sessions, path, at=now)
    assert (report.new, report.updated) == (1, 1)
    (article,) = by_guid(sessions).values()
    assert article.title == "Second headline"


def test_guid_and_url_of_two_different_articles_is_rejected(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    first = write_json(
        tmp_path / "first.json",
        [story(guid="g1", url="https://x.example/1"), story(guid="g2", url="https://x.example/2")],
    )
    ingest(sessions, first, at=now)
    clash = write_json(tmp_path / "clash.json", [story(guid="g1", url="https://x.example/2")])
    (report,) = ingest(sessions, clash, at=now)
    assert report.rejections == [
        "clash.json: item 1: guid 'g1' and url 'https://x.example/2' belong to two different"
        " stored articles"
    ]


def test_a_story_found_by_url_keeps_its_first_guid(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    ingest(sessions, write_json(tmp_path / "a.json", [story()]), at=now)
    (report,) = ingest(sessions, write_json(tmp_path / "b.json", [story(guid="cms-9")]), at=now)
    assert report.unchanged == 1
    assert list(by_guid(sessions)) == ["https://x.example/a"]


def test_json_wrapped_in_an_articles_key_and_lines_with_unicode_separators(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    wrapped = tmp_path / "export.json"
    wrapped.write_text(json.dumps({"articles": [story()]}))
    lines = tmp_path / "export.jsonl"
    records = [
        story(url="https://x.example/b", dek="one\u2028two"),
        story(url="https://x.example/c"),
    ]
    lines.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    reports = ingest(sessions, wrapped, lines, at=now)
    assert [(r.new, r.rejected) for r in reports] == [(1, 0), (2, 0)]
    assert by_guid(sessions)["https://x.example/b"].dek == "one\u2028two"


def test_headlines_bylines_and_sources_are_one_line(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    record = story(title="\n  Two\n   lines\u00a0» ", byline="Jo\n Smith", source=" Wire\t Co ")
    (report,) = ingest(sessions, write_json(tmp_path / "w.json", [record]), at=now)
    assert report.new == 1
    (article,) = by_guid(sessions).values()
    assert (article.title, article.byline, article.source) == (
        "Two lines\u00a0»",
        "Jo Smith",
        "Wire Co",
    )


def test_non_strict_sections_keep_the_given_name(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = write_json(tmp_path / "s.json", [story(section="Crime")])
    (report,) = ingest(sessions, path, known_sections=None, at=now)
    assert report.new == 1
    assert [a.section for a in by_guid(sessions).values()] == ["Crime"]


def test_control_characters_reject_a_title_and_are_dropped_from_long_text(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = tmp_path / "ctl.json"
    # ASCII JSON with escapes: a NUL, a C1 control and a lone surrogate, none storable as text.
    items = [
        story(title="Nul\u0000 in a headline"),
        story(url="https://x.example/c1", title="C1\u0085 in a headline"),
        story(
            url="https://x.example/ok", title="  Wrapped\n headline ", dek="C1\u0085 \ud800x\u0000"
        ),
    ]
    path.write_text(json.dumps(items))
    (report,) = ingest(sessions, path, at=now)
    assert report.new == 1
    assert report.rejections == [
        "ctl.json: item 1: title contains the control character U+0000 (NUL)",
        "ctl.json: item 2: title contains the control character U+0085 (NEXT LINE)",
    ]
    (article,) = by_guid(sessions).values()
    assert (article.title, article.dek) == ("Wrapped headline", "C1 \ufffdx")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("broken.json", b'[{"url": "https://x.example/a",', "broken.json: not valid JSON"),
        (
            "broken.jsonl",
            b'{"url": "https://x.example/a"}\n{"url": \n',
            "broken.jsonl: line 2: not valid JSON",
        ),
        ("scalar.json", b"42", "scalar.json: JSON must be an array of objects"),
        (
            "huge.json",
            b"[" + b"1" * 5000 + b"]",
            "huge.json: JSON cannot be read (Exceeds the limit",
        ),
        ("deep.json", b"[" * 100_000, "deep.json: JSON cannot be read"),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image.png: binary data"),
        ("latin1.csv", "url,title\nhttps://x.example/é,Café\n".encode("latin-1"), "not UTF-8"),
        ("names.csv", b"name,email\nAda,ada@example.com\n", "must name url and title"),
        ("excel.csv", "url,title\n".encode("utf-16"), "excel.csv: UTF-16 text"),
        ("empty.csv", b"", "must name url and title"),
    ],
)
def test_files_that_cannot_be_read_as_a_whole_are_one_error(
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    name: str,
    content: bytes,
    message: str,
) -> None:
    good = write_json(tmp_path / "good.json", [story()])
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(InputError) as err:
        ingest(sessions, good, bad, at=now)
    assert message in str(err.value)
    assert str(bad) in str(err.value)
    assert "\n" not in str(err.value)
    assert snapshot(sessions) == []


def test_missing_file_is_one_error(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match=r"missing.json: cannot read the file"):
        ingest(sessions, tmp_path / "missing.json", at=now)


def test_format_flag_overrides_the_file_name(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    path = tmp_path / "export.txt"
    path.write_text(json.dumps([story()]))
    with pytest.raises(InputError, match="not an RSS or Atom feed"):
        ingest(sessions, path, fmt="feed", at=now)
    (report,) = ingest(sessions, path, fmt="json", at=now)
    assert report.new == 1


def test_many_items_are_stored_in_batches(
    sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    records = [story(url=f"https://x.example/{n}", title=f"Story {n}") for n in range(1000)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    (first,) = ingest(sessions, path, at=now)
    records[500]["title"] = "Changed"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    (second,) = ingest(sessions, path, at=now)
    assert first.new == 1000
    assert (second.new, second.updated, second.unchanged) == (0, 1, 999)
