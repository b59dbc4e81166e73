"""Helpers shared by the tests/test_web_*.py modules: subscribers, editions, a live server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.editions import Edition, EditionItem
from digest.web import make_web_server
from subscribers.models import Subscriber
from subscribers.service import add_subscriber
from subscribers.tokens import make_token
from tests.factories import add_article

SECRET = "test-secret-key"


def unlimited(config: Config, **web: Any) -> Config:
    """The test config without per-client rate limiting (tests send many requests)."""
    return replace(config, web=replace(config.web, **{"token_requests_per_minute": 0.0, **web}))


def add_reader(
    sessions: sessionmaker[Session],
    config: Config,
    email: str,
    at: datetime,
    newsletter: str = "daily",
    **fields: Any,
) -> int:
    with sessions() as s, s.begin():
        sub = add_subscriber(s, config.newsletter(newsletter), email, at=at, **fields)
        return sub.id


def token(subscriber_id: int, purpose: str, newsletter: str = "daily", secret: str = SECRET) -> str:
    return make_token(secret, subscriber_id, newsletter, purpose)


def membership(sessions: sessionmaker[Session], subscriber_id: int, newsletter: str = "daily"):
    with sessions() as s:
        sub = s.get(Subscriber, subscriber_id)
        assert sub is not None
        m = sub.membership(newsletter)
        assert m is not None
        return m


def add_edition(
    session: Session, newsletter: str, day: date, status: str, at: datetime, **story: Any
) -> Edition:
    article = add_article(session, at, **story)
    edition = Edition(
        newsletter=newsletter,
        edition_date=day,
        status=status,
        built_at=at,
        frozen_at=at if status != "draft" else None,
        window_start=at,
        window_end=at,
        fingerprint=f"fp-{day}",
    )
    edition.items.append(
        EditionItem.snapshot(
            article, section=article.section, section_position=0, rank=0, score=1.0, reason="test"
        )
    )
    session.add(edition)
    session.flush()
    return edition


@contextmanager
def live_server(app: Flask) -> Iterator[str]:
    """The app on a real threaded HTTP server on 127.0.0.1 (a free port); yields its base URL."""
    server = make_web_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
