"""Fuzzing ingest: any feed, JSON or CSV file is stored (one-line fields free of control
characters) or refused with a DigestError, and a refused file changes nothing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.errors import DigestError
from digest.ingest import ingest_files
from digest.text import CONTROL, LINE_BREAKS
from tests.fuzz_support import (
    ARTICLE_FIELDS,
    csv_document,
    feed_document,
    fuzz_settings,
    json_document,
    snapshot,
)

pytestmark = pytest.mark.fuzz
NOW = datetime(2026, 3, 10, 10, tzinfo=UTC)
KNOWN = {"news": "News", "business": "Business"}
_files = itertools.count()


def _ingest_any(
    engine: Engine,
    sessions: sessionmaker[Session],
    folder: Path,
    suffix: str,
    data: bytes,
    fmt: str,
    strict: bool,
) -> None:
    path = folder / f"in{next(_files)}{suffix}"
    path.write_bytes(data)
    before = snapshot(engine)
    try:
        reports = ingest_files(
            sessions,
            [path],
            fmt=fmt,
            section="News",
            known_sections=KNOWN,
            clock=fixed(NOW),
            strict=strict,
        )
    except DigestError as e:
        assert str(e) and "\n" not in str(e)
        assert snapshot(engine) == before
        return
    (report,) = reports
    assert all("\n" not in r for r in report.rejections)
    if not report.stored:
        assert snapshot(engine) == before
    with sessions() as s:
        for article in s.scalars(select(Article)):
            for name in ("title", "section", "byline", "source", "image_alt", "guid", "url"):
                value = getattr(article, name) or ""
                assert not CONTROL.search(value), (name, value)
                if name not in ("guid", "url"):  # one line (bidi marks may stay: render drops them)
                    assert not LINE_BREAKS.search(value), (name, value)
            assert article.section in KNOWN.values()


@fuzz_settings(25)
@given(data=json_document(), strict=st.booleans())
def test_any_json_is_stored_or_refused_cleanly(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, data: bytes, strict: bool
) -> None:
    _ingest_any(engine, sessions, tmp_path, ".json", data, "auto", strict)


@fuzz_settings(25)
@given(data=csv_document(ARTICLE_FIELDS[:12]), strict=st.booleans())
def test_any_csv_is_stored_or_refused_cleanly(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, data: bytes, strict: bool
) -> None:
    _ingest_any(engine, sessions, tmp_path, ".csv", data, "csv", strict)


@fuzz_settings(25)
@given(data=feed_document(), strict=st.booleans())
def test_any_feed_is_stored_or_refused_cleanly(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, data: bytes, strict: bool
) -> None:
    _ingest_any(engine, sessions, tmp_path, ".xml", data, "feed", strict)


@fuzz_settings(15)
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["auto", "feed", "json", "csv"]))
def test_any_bytes_in_any_format_are_stored_or_refused_cleanly(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, data: bytes, fmt: str
) -> None:
    _ingest_any(engine, sessions, tmp_path, ".bin", data, fmt, False)
