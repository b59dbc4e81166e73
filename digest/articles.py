"""The article store: the Article model, URL normalisation and store queries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from digest.db import Base

PRIORITIES = ("normal", "boost", "pin")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes stored as UTC on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return (
            value.astimezone(UTC)
            if dialect.name != "sqlite"
            else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guid: Mapped[str] = mapped_column(String(512), unique=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    title: Mapped[str] = mapped_column(Text)
    dek: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str | None] = mapped_column(Text)
    section: Mapped[str] = mapped_column(String(100))
    byline: Mapped[str | None] = mapped_column(String(300))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    image_url: Mapped[str | None] = mapped_column(String(2048))
    image_alt: Mapped[str | None] = mapped_column(Text)
    image_caption: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    source: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    popularity: Mapped[float] = mapped_column(Float, default=0.0)
    # The newsroom's order: `rank` from a CMS export (1 = top of its section), and the item's
    # place in its feed at the last ingest (a weaker signal: feeds are often just newest first).
    rank: Mapped[int | None] = mapped_column(Integer)
    feed_position: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    modified_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # Selection reads one window of one newsletter's sections: this index serves it.
        Index("ix_articles_section_published", "section", "published_at"),
        Index("ix_articles_published", "published_at"),
    )


_TRACKING_PREFIXES = ("utm_",)
_TRACKING_KEYS = {"fbclid", "gclid", "mc_cid", "mc_eid"}
# Fragments that only track (AT Internet's #xtor=RSS-3, #utm_source=...) are dropped; any other
# fragment names a place in the page (a live-blog entry, a comment) and is kept.
_TRACKING_FRAGMENT = re.compile(r"(?i)(xtor|utm_[a-z]+|at_[a-z]+|ns_[a-z]+)=")


def normalise_url(url: str) -> str:
    """Canonical form used for uniqueness: lower-case scheme and host, default port, tracking
    parameters (utm_*, fbclid, ...) and tracking fragments (#xtor=...) dropped; the rest, with
    the fragment, is kept as published: two anchors of one live blog are two stories."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING_PREFIXES) and k.lower() not in _TRACKING_KEYS
    ]
    path = parts.path or "/"
    fragment = "" if _TRACKING_FRAGMENT.match(parts.fragment) else parts.fragment
    return urlunsplit((scheme, host, path, urlencode(query, doseq=True), fragment))


def list_articles(
    session: Session,
    *,
    section: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    text: str | None = None,
    limit: int = 50,
) -> Sequence[Article]:
    """Newest first, filtered by section (case-insensitive), time window and title text."""
    q = select(Article)
    if section:
        q = q.where(func.lower(Article.section) == section.lower())
    if since:
        q = q.where(Article.published_at >= since)
    if until:
        q = q.where(Article.published_at < until)
    if text:
        q = q.where(func.lower(Article.title).contains(text.lower(), autoescape=True))
    q = q.order_by(Article.published_at.desc(), Article.id.desc()).limit(limit)
    return session.scalars(q).all()
