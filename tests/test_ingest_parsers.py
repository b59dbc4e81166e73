"""The JSON/CSV field parsers: documented values parse, anything else is a FieldError (a
rejection reason), never a traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.errors import InputError
from digest.ingest import (
    FieldError,
    html_to_text,
    parse_datetime,
    parse_popularity,
    parse_priority,
    parse_record,
    parse_tags,
)

FIELDS = [
    "guid", "id", "url", "title", "dek", "summary", "body", "section", "byline", "author",
    "published", "updated", "image_url", "image_alt", "image_caption", "tags", "source",
    "priority", "popularity", "unknown",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
text_ish = st.text() | st.sampled_from(
    ["", " ", "2026-03-10T06:00:00Z", "2026-03-10T06:00:00", "https://x.example/a", "pin", "1e400"]
)


def rejects_cleanly(fn: Any, value: object) -> Any:
    try:
        return fn(value)
    except FieldError as e:
        message = str(e)
        assert message and "\n" not in message
        return None


@given(st.one_of(text_ish, json_values))
def test_any_value_is_a_date_or_a_rejection(value: object) -> None:
    parsed = rejects_cleanly(parse_datetime, value)
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)
    ),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_iso_dates_with_any_offset_are_stored_as_the_same_instant(
    moment: datetime, offset_minutes: int
) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert parse_datetime(local.isoformat()) == moment
    assert parse_datetime(local.isoformat()).tzinfo is UTC


def test_dates_without_offset_are_refused() -> None:
    with pytest.raises(FieldError, match="has no UTC offset"):
        parse_datetime("2026-03-10T06:00:00")
    assert parse_datetime("2026-03-10T06:00:00Z") == datetime(2026, 3, 10, 6, tzinfo=UTC)
    assert parse_datetime("2026-03-10T01:00:00-05:00") == datetime(2026, 3, 10, 6, tzinfo=UTC)


@given(st.one_of(text_ish, json_values))
def test_any_value_is_tags_or_a_rejection(value: object) -> None:
    tags = rejects_cleanly(parse_tags, value)
    if tags is not None:
        assert all(isinstance(t, str) and t and t == t.strip() for t in tags)
        assert len(tags) == len(set(tags))


@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="|,", blacklist_categories=("Cc",)),
            min_size=1,
            max_size=100,
        ),
        max_size=5,
    )
)
def test_pipe_separated_tags_round_trip(tags: list[str]) -> None:
    expected = list(dict.fromkeys(tag for t in tags for tag in parse_tags([t])))
    assert parse_tags("|".join(tags) + "|") == expected


def test_tag_forms() -> None:
    assert parse_tags("a|b, c|a") == ["a", "b, c"]
    assert parse_tags("local, politics") == ["local", "politics"]
    assert parse_tags(["x", " x ", ""]) == ["x"]
    with pytest.raises(FieldError, match="tags must be text"):
        parse_tags(["x", 3])


@given(st.one_of(text_ish, json_values))
def test_any_value_is_a_priority_or_a_rejection(value: object) -> None:
    priority = rejects_cleanly(parse_priority, value)
    assert priority in (None, "normal", "boost", "pin")


def test_popularity_forms() -> None:
    assert parse_popularity("1e3") == 1000.0
    assert parse_popularity(7) == 7.0
    for bad in ("nan", "inf", True, 10**5000, "-1", [1]):
        with pytest.raises(FieldError, match="is not a number of 0 or more"):
            parse_popularity(bad)


@pytest.mark.parametrize(
    ("value", "expected"), [("PIN", "pin"), (" boost ", "boost"), ("", "normal"), (None, "normal")]
)
def test_priority_forms(value: object, expected: str) -> None:
    assert parse_priority(value) == expected


@given(st.one_of(text_ish, json_values, st.integers(min_value=10**300)))
def test_any_value_is_a_popularity_or_a_rejection(value: object) -> None:
    number = rejects_cleanly(parse_popularity, value)
    if number is not None:
        assert number >= 0 and number != float("inf")


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(FIELDS), st.one_of(text_ish, json_values), max_size=12))
def test_any_record_gives_article_fields_or_a_rejection(record: dict[str, Any]) -> None:
    known = {"news": "News", "business": "Business"}
    fields = rejects_cleanly(
        lambda r: parse_record(r, section="News", known_sections=known), record
    )
    if fields is not None:
        assert fields["url"].startswith(("http://", "https://"))
        assert fields["title"] and fields["section"] in ("News", "Business")
        assert fields["published_at"].tzinfo is UTC
        assert len(fields["guid"]) <= 512


@given(st.text())
def test_html_to_text_accepts_any_text(html: str) -> None:
    text = html_to_text(html)
    assert "\n" not in text and not text.startswith(" ") and not text.endswith(" ")


def test_html_to_text_decodes_entities_and_drops_scripts() -> None:
    html = "<p>Fish &amp; chips</p><script>alert('x')</script><p>&lt;b&gt; is literal</p>"
    assert html_to_text(html) == "Fish & chips <b> is literal"
    assert html_to_text("<p>«\u00a0Olé\u00a0»\n  <br>next</p>") == "«\u00a0Olé\u00a0» next"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_a_traceback(tmp_path_factory: Any, data: bytes) -> None:
    """Whatever the file holds, reading it is a clean report or one InputError (no database
    is touched before every file parses, so this runs without one)."""
    from digest.ingest import _Defaults, _parse_file

    path: Path = tmp_path_factory.mktemp("bytes") / "input"
    path.write_bytes(data)
    for fmt in ("auto", "feed", "json", "csv"):
        try:
            parsed = _parse_file(path, fmt, _Defaults(None, None, None))
        except InputError as e:
            assert "\n" not in str(e)
        else:
            assert all(r.startswith("input: ") for r in parsed.rejections)


def test_json_lines_of_objects_parse(tmp_path: Path) -> None:
    from digest.ingest import _Defaults, _parse_file

    path = tmp_path / "x.jsonl"
    rows = [{"url": f"https://x.example/{n}", "title": "T", "section": "S",
             "published": "2026-03-10T00:00:00Z"} for n in range(3)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    parsed = _parse_file(path, "auto", _Defaults(None, None, None))
    assert [i.where for i in parsed.items] == ["line 1", "line 2", "line 3"]
