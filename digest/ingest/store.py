"""Storing parsed items: upserts matched by guid and normalised URL, one transaction per file.

An item whose stored fields hash to the same content_hash as the stored row counts as unchanged
and is not written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import Clock
from digest.db import transaction
from digest.errors import InputError
from digest.ingest.fields import _DEFAULTS, _Item, _Parsed, _sha256

# Two IN lists per chunk stay under SQLite's oldest limit of 999 bound parameters.
CHUNK = 400
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
# Hashed only when set, so articles stored before these fields existed keep their hash.
_HASHED_IF_SET = ("rank",)


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
