"""Ingest: RSS/Atom feeds, JSON (array or lines) and CSV files into the article store.

Every file is parsed completely before anything is written, so a file that is not a feed, JSON or
CSV at all stops the run with one InputError and no changes. Items that are individually bad are
rejected (file + item number + reason) while the good ones are upserted, one transaction per file.
Articles are matched by guid and by normalised URL; an item whose stored fields hash to the same
content_hash as the stored row counts as unchanged and is not written.

The package's rooms: `fields` (one item's fields, validated and capped), `feed`, `jsonfile` and
`csvfile` (one format each), `store` (upserts). HTML-to-text and the other text cleaning live in
digest.text, shared with rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.db import transaction
from digest.errors import InputError
from digest.ingest.csvfile import _parse_csv
from digest.ingest.feed import _parse_feed, first_image
from digest.ingest.fields import (
    FieldError,
    _Defaults,
    _Parsed,
    clean_text,
    parse_datetime,
    parse_popularity,
    parse_priority,
    parse_rank,
    parse_record,
    parse_tags,
    parse_url,
    pick_section,
)
from digest.ingest.jsonfile import _parse_json
from digest.ingest.store import (
    CHUNK,
    IngestReport,
    _Rejected,
    _store_file,
    _stored_once,
    check_reports,
    content_hash,
)
from digest.limits import MAX_INGEST_FILE_BYTES, read_bounded
from digest.text import html_to_text, line_problem

__all__ = [
    "CHUNK",
    "FORMATS",
    "FieldError",
    "IngestReport",
    "check_reports",
    "clean_text",
    "content_hash",
    "first_image",
    "html_to_text",
    "ingest_files",
    "parse_datetime",
    "parse_popularity",
    "parse_priority",
    "parse_rank",
    "parse_record",
    "parse_tags",
    "parse_url",
    "pick_section",
]

FORMATS = ("auto", "feed", "json", "csv")
_FEED_SUFFIXES = {".xml", ".rss", ".atom", ".rdf"}
_JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
_CSV_SUFFIXES = {".csv", ".tsv"}


def ingest_files(
    sessions: sessionmaker[Session],
    paths: list[Path],
    *,
    section: str | None = None,
    source: str | None = None,
    fmt: str = "auto",
    known_sections: Mapping[str, str] | None = None,
    timezone: tzinfo | None = None,
    clock: Clock,
    strict: bool = False,
) -> list[IngestReport]:
    """Upsert the articles of every file; one report per file, in the order given.

    `section`/`source` apply to items that carry none. `known_sections` (casefolded name ->
    configured name) makes sections strict: an item whose section is not configured is rejected,
    and a configured one is stored in its configured spelling. A date without a time
    (`2026-01-26`) is midnight in `timezone`; without one such items are rejected. Each file is
    stored in its own transaction; with `strict` all files are one transaction, rolled back if
    any item is rejected (the reports then say `stored = False`).
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    for flag, value in (("--section", section), ("--source", source)):
        problem = line_problem(value) if value else None
        if problem:
            raise InputError(f"{flag}: must be one line of text: it {problem}")
    defaults = _Defaults(section, source, known_sections, timezone)
    parsed = [_parse_file(path, fmt, defaults) for path in paths]
    if not strict:
        return [_store_file(sessions, p, clock) for p in parsed]
    try:
        with _stored_once(parsed) as store, transaction(sessions) as session:
            reports = [store(session, p, clock) for p in parsed]
            if any(r.rejected for r in reports):
                raise _Rejected
    except _Rejected:
        for r in reports:
            r.stored = False
    return reports


def _parse_file(path: Path, fmt: str, defaults: _Defaults) -> _Parsed:
    data = read_bounded(path, MAX_INGEST_FILE_BYTES, "feed, JSON or CSV file")
    kind = fmt if fmt != "auto" else _sniff(path, data)
    if kind == "feed":
        return _parse_feed(path, data, defaults)
    if kind == "json":
        return _parse_json(path, data, defaults)
    return _parse_csv(path, data, defaults, sniffed=fmt == "auto")


def _sniff(path: Path, data: bytes) -> str:
    suffix = path.suffix.lower()
    if suffix in _FEED_SUFFIXES:
        return "feed"
    if suffix in _JSON_SUFFIXES:
        return "json"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<") or head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "feed"
    if head.startswith((b"[", b"{")):
        return "json"
    return "csv"
