"""Ingest: RSS/Atom feeds, JSON (array or lines) and CSV files into the article store.

Every file is parsed completely before anything is written, so a file that is not a feed, JSON or
CSV at all stops the run with one InputError and no changes. Items that are individually bad are
rejected (file + item number + reason) while the good ones are upserted, one transaction per file.
Articles are matched by guid and by normalised URL; an item whose stored fields hash to the same
content_hash as the stored row counts as unchanged and is not written.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import feedparser
from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml import ElementTree as DefusedElementTree
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import PRIORITIES, Article, normalise_url
from digest.clock import Clock
from digest.db import transaction
from digest.errors import InputError
from digest.limits import (
    MAX_ARTICLE_FIELD,
    MAX_DATE,
    MAX_INGEST_FILE_BYTES,
    MAX_TAG,
    MAX_TAGS,
    MIN_DATE,
    read_bounded,
)
from digest.text import CONTROL, describe, line_problem

FORMATS = ("auto", "feed", "json", "csv")

# Two IN lists per chunk stay under SQLite's oldest limit of 999 bound parameters.
CHUNK = 400

# Longer values are rejected (digest.limits, within the articles table's columns).
_MAX_LENGTH = MAX_ARTICLE_FIELD
# Long free text: control characters are dropped. Every other field is one line, where a
# control character other than a line break or tab rejects the item.
_MULTILINE = ("dek", "body", "image_caption")
# What content_hash covers: every field ingest stores.
_HASHED = (
    "guid",
    "url",
    "title",
    "dek",
    "body",
    "section",
    "byline",
    "published_at",
    "updated_at",
    "image_url",
    "image_alt",
    "image_caption",
    "tags",
    "source",
    "priority",
    "popularity",
)
_DEFAULTS: dict[str, Any] = {
    "dek": "",
    "body": None,
    "byline": None,
    "updated_at": None,
    "image_url": None,
    "image_alt": None,
    "image_caption": None,
    "tags": [],
    "source": None,
    "priority": "normal",
    "popularity": 0.0,
    "rank": None,
    "feed_position": None,
}
# Hashed only when set, so articles stored before these fields existed keep their hash.
_HASHED_IF_SET = ("rank",)
# JSON/CSV field names (and accepted aliases) -> Article attribute.
_FIELD_NAMES = {
    "guid": "guid",
    "id": "guid",
    "url": "url",
    "title": "title",
    "dek": "dek",
    "summary": "dek",
    "body": "body",
    "section": "section",
    "byline": "byline",
    "author": "byline",
    "published": "published_at",
    "updated": "updated_at",
    "image_url": "image_url",
    "image_alt": "image_alt",
    "image_caption": "image_caption",
    "tags": "tags",
    "source": "source",
    "priority": "priority",
    "popularity": "popularity",
    "rank": "rank",
}
_FEED_SUFFIXES = {".xml", ".rss", ".atom", ".rdf"}
_JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
_CSV_SUFFIXES = {".csv", ".tsv"}
_MRSS = "http://search.yahoo.com/mrss/"
_ITEM_TAGS = {
    "item",
    "{http://purl.org/rss/1.0/}item",
    "{http://my.netscape.com/rdf/simple/0.9/}item",
    "{http://www.w3.org/2005/Atom}entry",
    "{http://purl.org/atom/ns#}entry",
}
# C0 controls other than tab/newline/CR, and C1 controls: never text, and PostgreSQL refuses NUL.
_SUMMARY_TAGS = {
    "description",
    "{http://purl.org/rss/1.0/}description",
    "{http://my.netscape.com/rdf/simple/0.9/}description",
    "{http://www.w3.org/2005/Atom}summary",
}
# RSS 2.0 <author> is "email (Name)"; feedparser mis-splits emails with long top-level domains.
_RSS_AUTHOR = re.compile(r"\s*\S+@\S+\s*\((.+)\)\s*")
_DEK_FROM_BODY = 300
# ASCII whitespace only: str.split() would also eat no-break spaces (French « guillemets »).
_SPACES = re.compile(r"[ \t\n\r\f\v]+")


class FieldError(ValueError):
    """One field of one item is unusable; the message is the rejection reason."""


@dataclass
class IngestReport:
    """What one file did to the store."""

    path: Path
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    stored: bool = True  # False: --strict rolled the whole run back

    def summary(self) -> str:
        line = (
            f"{self.path.name}: {self.new} new, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.rejected} rejected"
        )
        return line if self.stored else f"{line} (nothing stored: --strict)"

    @property
    def all_rejected(self) -> bool:
        return self.rejected > 0 and not (self.new or self.updated or self.unchanged)


def check_reports(reports: list[IngestReport], *, strict: bool = False) -> None:
    """InputError (exit 1) when a file had every item rejected, or with `strict` when any item
    was; a run that stored part of a file otherwise succeeds (README, "Exit codes")."""
    rejected = sum(r.rejected for r in reports)
    if strict and rejected:
        raise InputError(f"--strict: {rejected} item(s) rejected, so nothing was stored")
    failed = [r for r in reports if r.all_rejected]
    if failed:
        names = ", ".join(str(r.path) for r in failed)
        others = " (the other files were stored)" if len(failed) < len(reports) else ""
        raise InputError(f"{names}: every item was rejected, nothing stored from it{others}")


class _Rejected(Exception):
    """Rolls a --strict run back."""


@dataclass
class _Item:
    where: str  # "item 3", "row 4", "line 2": how the user finds it in the file
    values: dict[str, Any]  # validated Article attributes this item provides


@dataclass
class _Parsed:
    path: Path
    items: list[_Item]
    rejections: list[str]


@dataclass(frozen=True)
class _Defaults:
    section: str | None
    source: str | None
    known_sections: Mapping[str, str] | None
    # Date-only `published`/`updated` values are midnight here (the newsletter's zone).
    timezone: tzinfo | None = None


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


# --- storing ---------------------------------------------------------------------------------


def content_hash(values: Mapping[str, Any]) -> str:
    """sha256 over the stored fields, so a re-ingest of the same content writes nothing."""
    canon: dict[str, Any] = {}
    for name in _HASHED:
        value = values.get(name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        elif name == "popularity":
            value = float(value or 0.0)
        canon[name] = value
    for name in _HASHED_IF_SET:
        if values.get(name) is not None:
            canon[name] = values[name]
    return _sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":")))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _stored(article: Article) -> dict[str, Any]:
    return {name: getattr(article, name) for name in (*_HASHED, *_HASHED_IF_SET)}


@contextmanager
def _stored_once(parsed: list[_Parsed]) -> Iterator[Callable[..., IngestReport]]:
    """_store, with a concurrent writer's IntegrityError turned into one InputError."""
    try:
        yield _store
    except IntegrityError:
        names = ", ".join(p.path.name for p in parsed)
        raise InputError(
            f"{names}: another process stored some of the same articles meanwhile; "
            "nothing from this file was saved, run the ingest again"
        ) from None


def _store_file(sessions: sessionmaker[Session], parsed: _Parsed, clock: Clock) -> IngestReport:
    with _stored_once([parsed]) as store, transaction(sessions) as session:
        return store(session, parsed, clock)


def _store(session: Session, parsed: _Parsed, clock: Clock) -> IngestReport:
    report = IngestReport(parsed.path, rejections=list(parsed.rejections))
    report.rejected = len(parsed.rejections)
    name = parsed.path.name
    by_guid: dict[str, Article] = {}
    by_url: dict[str, Article] = {}
    for start in range(0, len(parsed.items), CHUNK):
        chunk = parsed.items[start : start + CHUNK]
        _prefetch(session, chunk, by_guid, by_url)
        for item in chunk:
            outcome = _upsert(session, item, by_guid, by_url, clock)
            if outcome in ("new", "updated", "unchanged"):
                setattr(report, outcome, getattr(report, outcome) + 1)
            else:
                report.rejected += 1
                report.rejections.append(f"{name}: {item.where}: {outcome}")
    return report


def _prefetch(
    session: Session, chunk: list[_Item], by_guid: dict[str, Article], by_url: dict[str, Article]
) -> None:
    """One query for the stored articles any item of the chunk could match."""
    guids = {i.values["guid"] for i in chunk} - by_guid.keys()
    urls = {i.values["url"] for i in chunk} - by_url.keys()
    if not guids and not urls:
        return
    query = select(Article).where(or_(Article.guid.in_(guids), Article.url.in_(urls)))
    for article in session.scalars(query):
        by_guid[article.guid] = article
        by_url[article.url] = article


def _upsert(
    session: Session,
    item: _Item,
    by_guid: dict[str, Article],
    by_url: dict[str, Article],
    clock: Clock,
) -> str:
    """Insert or update one item; returns new/updated/unchanged or a rejection reason."""
    values = item.values
    found_by_guid = by_guid.get(values["guid"])
    found_by_url = by_url.get(values["url"])
    if found_by_guid and found_by_url and found_by_guid is not found_by_url:
        return (
            f"guid {values['guid']!r} and url {values['url']!r} belong to two different "
            "stored articles"
        )
    existing = found_by_guid or found_by_url
    now = clock()
    if existing is None:
        merged = {**_DEFAULTS, **values}
        article = Article(
            **merged, content_hash=content_hash(merged), ingested_at=now, modified_at=now
        )
        session.add(article)
        by_guid[article.guid] = article
        by_url[article.url] = article
        return "new"
    # The first guid seen for an article stays its stable id; fields the input does not carry
    # (a feed has no priority or popularity) keep what is stored.
    values = dict(values)
    position = values.pop("feed_position", existing.feed_position)
    if found_by_guid is existing and _same_page(values["url"], existing.url):
        # Two sources of one story often differ only by an anchor: keep the stored link
        # rather than flip between them on every ingest.
        values["url"] = existing.url
    merged = {**_stored(existing), **values, "guid": existing.guid}
    digest = content_hash(merged)
    # The place in its feed moves as newer items arrive: kept current, not a change of content.
    existing.feed_position = position
    if digest == existing.content_hash:
        return "unchanged"
    old_url = existing.url
    for name, value in merged.items():
        if getattr(existing, name) != value:
            setattr(existing, name, value)
    existing.content_hash = digest
    existing.modified_at = now
    if old_url != existing.url:
        by_url.pop(old_url, None)
        by_url[existing.url] = existing
    return "updated"


def _same_page(a: str, b: str) -> bool:
    return a.partition("#")[0] == b.partition("#")[0]


# --- parsing: shared -------------------------------------------------------------------------


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


def _decode(path: Path, data: bytes, what: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: UTF-16 text; {what} must be UTF-8 (save it as UTF-8)")
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: binary data, not {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (invalid byte at offset {e.start}); {what} must be UTF-8"
        ) from None


def _build(where: str, raw: Mapping[str, Any], defaults: _Defaults) -> _Item | str:
    """Validate one item's raw fields; an _Item, or the reason it is rejected."""
    try:
        return _Item(where, _validate(raw, defaults))
    except FieldError as e:
        return str(e)


def _validate(raw: Mapping[str, Any], defaults: _Defaults) -> dict[str, Any]:
    values: dict[str, Any] = {}
    url = parse_url(raw.get("url"))
    values["url"] = url
    title = _one_line(clean_text(raw.get("title"), "title"))
    if not title:
        raise FieldError("no title")
    values["title"] = title
    if "date_error" in raw:
        raise FieldError(raw["date_error"])
    if raw.get("published_at") is None:
        raise FieldError("no published date")
    values["published_at"] = parse_datetime(raw["published_at"], "published", defaults.timezone)
    guid = clean_text(raw.get("guid"), "guid", allow_number=True)
    # Without a guid the URL is the id; one too long for the guid column is hashed to fit.
    fallback = url if len(url) <= _MAX_LENGTH["guid"] else f"sha256:{_sha256(url)}"
    values["guid"] = guid or fallback
    values["section"] = pick_section(
        raw.get("sections") or [], defaults.section, defaults.known_sections
    )
    for name in ("dek", "body", "byline", "image_alt", "image_caption", "source"):
        if name in raw:
            value = clean_text(raw[name], name, multiline=name in _MULTILINE)
            if name in ("byline", "source", "image_alt"):
                value = _one_line(value)
            values[name] = value or _DEFAULTS[name]
    if raw.get("image_url"):
        values["image_url"] = parse_url(raw["image_url"], "image_url")
    elif "image_url" in raw:
        values["image_url"] = None
    if not values.get("source") and defaults.source:
        values["source"] = defaults.source
    if "updated_at" in raw:
        updated = raw["updated_at"]
        values["updated_at"] = (
            None if _blank(updated) else parse_datetime(updated, "updated", defaults.timezone)
        )
    if "tags" in raw:
        values["tags"] = parse_tags(raw["tags"])
    if "priority" in raw:
        values["priority"] = parse_priority(raw["priority"])
    if "popularity" in raw:
        values["popularity"] = parse_popularity(raw["popularity"])
    if "rank" in raw:
        values["rank"] = parse_rank(raw["rank"])
    if "feed_position" in raw:
        values["feed_position"] = raw["feed_position"]
    for name, limit in _MAX_LENGTH.items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > limit:
            raise FieldError(f"{name} is longer than {limit} characters")
    return values


def _one_line(text: str | None) -> str | None:
    """Headlines, bylines and sources are one line: feeds often wrap them in newlines."""
    return _SPACES.sub(" ", text).strip() if text else text


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def clean_text(
    value: object, name: str, *, allow_number: bool = False, multiline: bool = False
) -> str | None:
    """Text as stored: stripped, lone surrogates replaced; None if empty. A control character
    (NUL, ESC, C1 ...; line breaks and tabs are fine) rejects a one-line field and is dropped
    from `multiline` text."""
    if value is None:
        return None
    if allow_number and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise FieldError(f"{name} must be text, not {type(value).__name__}")
    # Lone surrogates (possible in JSON "\\ud800") cannot be stored as UTF-8: replace them.
    text = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    found = CONTROL.search(text)
    if found is not None:
        if not multiline:
            raise FieldError(f"{name} contains the control character {describe(found.group())}")
        text = CONTROL.sub("", text)
    text = text.replace("\r\n", "\n").strip()
    return text or None


def parse_url(value: object, name: str = "url") -> str:
    """An absolute http(s) URL in its normalised form (see digest.articles.normalise_url)."""
    text = clean_text(value, name)
    if not text:
        raise FieldError(f"no {'link' if name == 'url' else name}")
    try:
        normal = normalise_url(text)
        ok = normal.startswith(("http://", "https://")) and bool(
            normal.split("/", 3)[2].strip(":@")
        )
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in text):
        raise FieldError(f"{name} {_quote(text)} is not an absolute http(s) URL")
    return normal


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_datetime(value: object, name: str = "published", zone: tzinfo | None = None) -> datetime:
    """ISO 8601 with a UTC offset (or Z), returned in UTC. Times without an offset are refused:
    guessing the zone would shift stories across edition windows. A date alone (CMS exports
    write `2026-01-26`) is midnight of that day in `zone`, the newsletter's time zone."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        parsed = value
    else:
        if _blank(value):
            raise FieldError(f"no {name} date")
        if not isinstance(value, str):
            raise FieldError(f"{name} date must be ISO 8601 text, not {type(value).__name__}")
        text = value.strip()
        if _DATE_ONLY.fullmatch(text):
            return _local_midnight(text, name, zone)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise FieldError(
                f"{name} date {_quote(text)} is not ISO 8601 (e.g. 2026-03-10T08:30:00-05:00)"
            ) from None
        if parsed.tzinfo is None:
            raise FieldError(f"{name} date {_quote(text)} has no UTC offset (add Z or e.g. -05:00)")
    try:
        moment = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise FieldError(f"{name} date {_quote(str(value))} is out of range") from None
    return _in_range(moment, name)


def _in_range(moment: datetime, name: str) -> datetime:
    if not MIN_DATE <= moment.date() <= MAX_DATE:
        raise FieldError(
            f"{name} date {moment.date().isoformat()} is outside {MIN_DATE.year}-{MAX_DATE.year}"
        )
    return moment


def _local_midnight(text: str, name: str, zone: tzinfo | None) -> datetime:
    if zone is None:
        raise FieldError(
            f"{name} date {_quote(text)} has no time, and the newsletters use several time "
            "zones: pass --timezone to read it as midnight there"
        )
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FieldError(f"{name} date {_quote(text)} is not a calendar date") from None
    return datetime.combine(day, datetime.min.time(), tzinfo=zone).astimezone(UTC)


def parse_rank(value: object) -> int | None:
    """The story's place in its section on the newsroom's page: a whole number from 1; empty
    means none."""
    if _blank(value):
        return None
    number = _as_number(value)
    if number is None or not number.is_integer() or not 1 <= number <= 1_000_000:
        raise FieldError(f"rank {_quote(value)} is not a whole number from 1 (1 = top story)")
    return int(number)


def parse_tags(value: object) -> list[str]:
    """A JSON list of strings, or one string split on "|" (or on commas when it has no "|")."""
    if value is None:
        return []
    if isinstance(value, str):
        parts: list[object] = list(value.split("|" if "|" in value else ","))
    elif isinstance(value, list):
        parts = list(value)
    else:
        raise FieldError(f"tags must be a list or text, not {type(value).__name__}")
    tags: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise FieldError(f"tags must be text, not {type(part).__name__}")
        tag = _one_line(clean_text(part, "tags"))
        if tag and len(tag) > MAX_TAG:
            raise FieldError(f"a tag is longer than {MAX_TAG} characters")
        if tag and tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise FieldError(f"more than {MAX_TAGS} tags")
    return tags


def parse_priority(value: object) -> str:
    """normal, boost or pin (any case); empty means normal."""
    if _blank(value):
        return "normal"
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return value.strip().lower()
    raise FieldError(f"priority {_quote(value)} is not one of {', '.join(PRIORITIES)}")


def _as_number(value: object) -> float | None:
    """A JSON number or the text of one (CSV cells), else None."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            return None
    return None


def parse_popularity(value: object) -> float:
    """A finite number >= 0 (views, clicks); empty means 0."""
    if _blank(value):
        return 0.0
    number = _as_number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise FieldError(f"popularity {_quote(value)} is not a number of 0 or more")
    return number


def pick_section(
    candidates: Iterable[str], fallback: str | None, known: Mapping[str, str] | None
) -> str:
    """The item's first usable section, else the fallback (--section). With `known`, only a
    configured section is usable, stored in its configured spelling."""
    names = [c for c in (_one_line(clean_text(c, "section")) for c in candidates) if c]
    if fallback and fallback.strip():
        names.append(fallback.strip())
    if known is None:
        if not names:
            raise FieldError("no section (give one in the item or pass --section)")
        return names[0]
    for name in names:
        canonical = known.get(name.casefold())
        if canonical:
            return canonical
    if not names:
        raise FieldError("no section (give one in the item or pass --section)")
    return _unknown_section(names[0], known)


def _unknown_section(name: str, known: Mapping[str, str]) -> str:
    allowed = ", ".join(sorted(known.values()))
    raise FieldError(f"unknown section {_quote(name)} (configured: {allowed})")


def _quote(value: object) -> str:
    """A value as a rejection quotes it: repr, cut to about 80 characters."""
    try:
        shown = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return f"a {type(value).__name__} too long to show"
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


# --- JSON ------------------------------------------------------------------------------------


def _parse_json(path: Path, data: bytes, defaults: _Defaults) -> _Parsed:
    text = _decode(path, data, "a JSON file")
    records: list[tuple[str, object]]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as first:
        records = list(_json_lines(path, text, first))
    except (ValueError, RecursionError) as e:  # numbers too long, nesting too deep
        raise InputError(f"{path}: JSON cannot be read ({_first_line(e)})") from None
    else:
        if isinstance(doc, dict) and isinstance(_wrapped(doc), list):
            doc = _wrapped(doc)  # {"articles": [...]}, as some CMS exports wrap the list
        if isinstance(doc, list):
            records = [(f"item {n}", rec) for n, rec in enumerate(doc, 1)]
        elif isinstance(doc, dict):
            records = [("line 1", doc)]
        else:
            raise InputError(f"{path}: JSON must be an array of objects or one object per line")
    parsed = _Parsed(path, [], [])
    for where, record in records:
        if not isinstance(record, dict):
            parsed.rejections.append(f"{path.name}: {where}: not a JSON object")
            continue
        built = _build(where, _record_fields(record), defaults)
        _collect(parsed, built, where)
    return parsed


def _wrapped(doc: dict[str, Any]) -> object:
    return doc.get("articles", doc.get("items")) if len(doc) == 1 else None


def _json_lines(path: Path, text: str, first: json.JSONDecodeError) -> Iterator[tuple[str, object]]:
    # One document (an array, or a single line) with a syntax error: report where it is.
    if "\n" not in text.strip() or text.lstrip().startswith("["):
        raise InputError(
            f"{path}: not valid JSON ({first.msg} at line {first.lineno} column {first.colno})"
        )
    # "\n" only: str.splitlines() would also split inside strings holding U+2028 and friends.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {number}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        except (ValueError, RecursionError) as e:
            raise InputError(
                f"{path}: line {number}: JSON cannot be read ({_first_line(e)})"
            ) from None


def parse_record(
    record: Mapping[str, object],
    *,
    section: str | None = None,
    source: str | None = None,
    known_sections: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Article fields from one JSON object or CSV row (field names as in the README); raises
    FieldError with the rejection reason."""
    return _validate(_record_fields(record), _Defaults(section, source, known_sections))


def _first_line(error: BaseException) -> str:
    return str(error).split(";")[0].splitlines()[0] if str(error) else type(error).__name__


def _record_fields(record: Mapping[str, object]) -> dict[str, Any]:
    """JSON/CSV field names -> the raw fields _validate reads. Unknown names are ignored."""
    raw: dict[str, Any] = {}
    for key, value in record.items():
        name = _FIELD_NAMES.get(str(key).strip().lower())
        if name is None:
            continue
        if name == "section":
            raw["sections"] = [value] if not _blank(value) else []
        elif name in ("guid", "dek", "byline") and name in raw and not _blank(raw[name]):
            continue  # "id" and "guid" both given: the first non-empty one wins
        else:
            raw[name] = value
    return raw


def _collect(parsed: _Parsed, built: _Item | str, where: str) -> None:
    if isinstance(built, _Item):
        parsed.items.append(built)
    else:
        parsed.rejections.append(f"{parsed.path.name}: {where}: {built}")


# --- CSV -------------------------------------------------------------------------------------


def _parse_csv(path: Path, data: bytes, defaults: _Defaults, *, sniffed: bool) -> _Parsed:
    what = "a feed, JSON or CSV file" if sniffed else "a CSV file"
    text = _decode(path, data, what)
    first_line = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first_line:
        delimiter = "\t" if "\t" in first_line else ";" if ";" in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise InputError(f"{path}: not {what} ({e})") from None
    names = [h.strip().lower() for h in header or []]
    fields = {_FIELD_NAMES.get(n) for n in names}
    if "url" not in fields or "title" not in fields:
        found = ", ".join(repr(n) for n in names[:8] if n) or "nothing"
        raise InputError(
            f"{path}: not {what}: a CSV header row must name url and title columns (found {found})"
        )
    duplicated = sorted({n for n in names if n and names.count(n) > 1})
    if duplicated:
        raise InputError(f"{path}: CSV header repeats column {duplicated[0]!r}")
    parsed = _Parsed(path, [], [])
    row_number = 1
    try:
        for row in reader:
            row_number += 1
            where = f"row {row_number}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(names):
                parsed.rejections.append(
                    f"{path.name}: {where}: {len(row)} fields but the header has {len(names)}"
                )
                continue
            record = dict(zip(names, row, strict=False))
            _collect(parsed, _build(where, _record_fields(record), defaults), where)
    except csv.Error as e:
        raise InputError(f"{path}: row {row_number + 1}: not valid CSV ({e})") from None
    return parsed


# --- feeds -----------------------------------------------------------------------------------


def _parse_feed(path: Path, data: bytes, defaults: _Defaults) -> _Parsed:
    root = _xml_root(path, data)  # first: refuses entity declarations before feedparser reads
    # A file object, never bytes or str: feedparser would treat those as a URL or file name.
    doc = feedparser.parse(io.BytesIO(data), sanitize_html=True, resolve_relative_uris=True)
    entries = doc.get("entries") or []
    if not entries and (doc.get("bozo") or not doc.get("version")):
        problem = doc.get("bozo_exception")
        detail = f" ({' '.join(str(problem).split())})" if problem else ""
        raise InputError(f"{path}: not an RSS or Atom feed{detail}")
    feed_title = _text_of(doc.get("feed", {}), "title")
    source = defaults.source or feed_title
    media = _media_texts(root, len(entries))
    parsed = _Parsed(path, [], [])
    for number, entry in enumerate(entries, 1):
        where = f"item {number}"
        extra = media[number - 1] if media else _MediaText()
        try:
            raw = _entry_fields(entry, extra, source, defaults)
        except FieldError as e:
            _collect(parsed, str(e), where)
            continue
        raw["feed_position"] = number  # the feed's own order: a weaker editorial rank
        _collect(parsed, _build(where, raw, defaults), where)
    return parsed


@dataclass
class _MediaText:
    """media:description / media:title of one item, read beside feedparser, which files them
    under the item's own summary, content and title."""

    alt: str | None = None
    descriptions: set[str] = field(default_factory=set)
    summary: str | None = None  # the item's own description/summary, as it is in the file


_ENTITY_DECLARATION = re.compile(
    b"|".join(re.escape("<!ENTITY".encode(codec)) for codec in ("utf-8", "utf-16-le", "utf-16-be"))
)


def _xml_root(path: Path, data: bytes) -> ElementTree.Element | None:
    """The parsed document, or None when it is malformed (feedparser's loose parse may still
    read its items). A feed that declares entities is refused: feedparser's XML parser
    expands them (a billion-laughs feed grows to gigabytes) and no real feed needs one. An
    external DTD or entity is never fetched (defusedxml refuses; expat fetches nothing)."""
    try:
        root: ElementTree.Element = DefusedElementTree.fromstring(
            data, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
        return root
    except DefusedXmlException as e:
        name = getattr(e, "name", None) if isinstance(e, EntitiesForbidden) else None
        what = f"entity {name!r}" if name else "an external reference"
        raise _entities_refused(path, what) from None
    except (ElementTree.ParseError, ValueError, LookupError):
        if _ENTITY_DECLARATION.search(data):
            raise _entities_refused(path, "an entity") from None
        return None


def _entities_refused(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: the feed declares {what} (<!ENTITY>); refused: XML entities can expand to "
        "gigabytes or read local files, and feeds do not need them"
    )


def _media_texts(root: ElementTree.Element | None, count: int) -> list[_MediaText] | None:
    if root is None:
        return None  # malformed XML: feedparser's loose parse still gives the items
    items = [el for el in root.iter() if el.tag in _ITEM_TAGS]
    if len(items) != count:
        return None
    texts: list[_MediaText] = []
    for item in items:
        descriptions = [
            (el.text or "").strip() for el in item.iter(f"{{{_MRSS}}}description") if el.text
        ]
        titles = [(el.text or "").strip() for el in item.iter(f"{{{_MRSS}}}title") if el.text]
        alt = next((t for t in descriptions + titles if t), None)
        own = next((el.text for el in item if el.tag in _SUMMARY_TAGS and el.text), None)
        texts.append(_MediaText(alt, {d for d in descriptions if d}, own))
    return texts


def _entry_fields(
    entry: dict[str, Any], media: _MediaText, source: str | None, defaults: _Defaults
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "url": entry.get("link"),
        "title": _text_of(entry, "title"),
        "guid": entry.get("id") or None,
    }
    try:
        raw["published_at"] = _entry_date(entry)
    except FieldError as e:
        raw["date_error"] = str(e)  # reported after the link and title checks
    # dict.get: FeedParserDict.get("updated...") falls back to the published date.
    updated = dict.get(entry, "updated_parsed")
    if updated and dict.get(entry, "published_parsed"):
        raw["updated_at"] = _struct_to_utc(updated)
    terms = [t.get("term") or t.get("label") for t in entry.get("tags") or []]
    terms = [t.strip() for t in terms if isinstance(t, str) and t.strip()]
    raw["sections"] = terms
    try:
        section = pick_section(terms, defaults.section, defaults.known_sections).casefold()
    except FieldError:
        section = None  # _validate rejects the item with the reason
    raw["tags"] = [t for t in terms if t.casefold() != section]
    body = _entry_body(entry, media)
    raw["body"] = body
    summary = entry.get("summary")
    if summary in media.descriptions:  # feedparser filed media:description as the summary
        summary = media.summary
    dek = html_to_text(summary) if summary else ""
    if summary and body and summary == body:
        dek = _shorten(dek, _DEK_FROM_BODY)  # feedparser copies Atom content into summary
    raw["dek"] = _shorten(dek, MAX_ARTICLE_FIELD["dek"])  # a feed's summary may be the story
    raw["byline"] = _byline(entry)
    item_source = entry.get("source", {}).get("title") if entry.get("source") else None
    raw["source"] = item_source or source
    image_url, image_alt = _entry_image(entry, media)
    if image_url is None:
        # Photo posts (tumblr and the like) carry their picture only in the HTML.
        image_url, image_alt = first_image(body or entry.get("summary") or "")
    raw["image_url"] = image_url
    raw["image_alt"] = _shorten(image_alt, MAX_ARTICLE_FIELD["image_alt"]) if image_alt else None
    raw["image_caption"] = None
    return raw


def _byline(entry: Mapping[str, Any]) -> str | None:
    author = entry.get("author")
    if not isinstance(author, str):
        return None
    match = _RSS_AUTHOR.fullmatch(author)
    if match:
        return match[1]
    return None if "@" in author and " " not in author.strip() else author


def _text_of(context: Mapping[str, Any], key: str) -> str | None:
    value = context.get(key)
    if not isinstance(value, str):
        return None
    detail = context.get(f"{key}_detail") or {}
    if detail.get("type") in ("text/html", "application/xhtml+xml"):
        return html_to_text(value)
    return value


def _entry_date(entry: dict[str, Any]) -> datetime:
    for key in ("published", "updated", "created"):
        parsed = dict.get(entry, f"{key}_parsed")
        if parsed:
            return _struct_to_utc(parsed)
        if dict.get(entry, key):
            raise FieldError(f"unparseable date {_quote(dict.get(entry, key))}")
    raise FieldError("no date")


def _struct_to_utc(value: time.struct_time) -> datetime:
    """feedparser's *_parsed are UTC struct_times; timegm avoids datetime's leap-second error."""
    try:
        moment = datetime.fromtimestamp(calendar.timegm(value), UTC)
    except (OverflowError, ValueError, OSError):
        raise FieldError(
            f"date {time.strftime('%Y-%m-%d %H:%M:%S', value)} is out of range"
        ) from None
    return _in_range(moment, "published")


def _entry_body(entry: Mapping[str, Any], media: _MediaText) -> str | None:
    contents = [
        c
        for c in entry.get("content") or []
        if c.get("value") and c["value"] not in media.descriptions
    ]
    for wanted in ("text/html", "application/xhtml+xml", None):
        for content in contents:
            if wanted is None or content.get("type") == wanted:
                return str(content["value"])
    return None


def _entry_image(entry: Mapping[str, Any], media: _MediaText) -> tuple[str | None, str | None]:
    """Largest first: media:content (image), media:thumbnail, then an image enclosure."""
    for content in entry.get("media_content") or []:
        kind = str(content.get("type") or "")
        if content.get("url") and (content.get("medium") == "image" or kind.startswith("image/")):
            return content["url"], media.alt
    for thumb in entry.get("media_thumbnail") or []:
        if thumb.get("url"):
            return thumb["url"], media.alt
    for link in entry.get("links") or []:
        kind = str(link.get("type") or "")
        if link.get("rel") == "enclosure" and kind.startswith("image/") and link.get("href"):
            return link["href"], media.alt
    return None, None


# --- HTML to text ----------------------------------------------------------------------------


class _FirstImage(HTMLParser):
    """The first <img> of an HTML fragment with an http(s) src that is not a tracking pixel."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: tuple[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img" or self.found is not None:
            return
        a = dict(attrs)
        src = (a.get("src") or "").strip()
        if not src.lower().startswith(("http://", "https://")):
            return
        if a.get("width") in ("0", "1") or a.get("height") in ("0", "1"):
            return
        self.found = (src, (a.get("alt") or "").strip() or None)


def first_image(html: str) -> tuple[str | None, str | None]:
    """(src, alt) of the first real image in an item's HTML, or (None, None)."""
    if "<img" not in html.lower():
        return None, None
    parser = _FirstImage()
    parser.feed(html)
    parser.close()
    return parser.found or (None, None)


class _TextExtractor(HTMLParser):
    """Visible text of an HTML fragment: tags dropped, entities decoded, blocks spaced."""

    _SKIP = {"script", "style", "template", "noscript"}
    _BLOCK = {
        "p",
        "br",
        "div",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "td",
        "th",
        "blockquote",
        "figure",
        "figcaption",
        "section",
        "article",
        "hr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment on one line (for deks and HTML titles)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return _SPACES.sub(" ", "".join(parser.parts)).strip()


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}…"
