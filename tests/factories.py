"""Small builders for test data (articles and editions) shared by the test modules."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from digest.articles import Article, normalise_url

_seq = itertools.count(1)


def make_article(published_at: datetime, **fields: Any) -> Article:
    n = next(_seq)
    url = normalise_url(fields.pop("url", f"https://news.example/story/{n}"))
    values: dict[str, Any] = {
        "guid": fields.pop("guid", url),
        "url": url,
        "title": f"Story number {n}",
        # The topic is not a bare number: it could equal another story's number, and the two
        # deks would then look alike enough for selection to drop one as a duplicate.
        "dek": f"A one-sentence summary of story {n} about topic t{n * 7919 % 1000}.",
        "section": "News",
        "byline": "By A. Reporter",
        "published_at": published_at,
        "source": "Test Gazette",
        "priority": "normal",
        "popularity": 100.0,
        "tags": [],
        "ingested_at": published_at,
        "modified_at": published_at,
    }
    values.update(fields)
    values.setdefault(
        "content_hash", hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()
    )
    return Article(**values)


def add_article(session: Session, published_at: datetime, **fields: Any) -> Article:
    article = make_article(published_at, **fields)
    session.add(article)
    session.flush()
    return article
