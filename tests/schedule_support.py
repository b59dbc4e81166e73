"""Helpers for the scheduling tests: a clock the test moves, and a stand-in send that records."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config
from digest.scheduler import Runner
from digest.sending import RecipientFilter, SendOptions
from subscribers.audience import Recipient


class MovingClock:
    """Answers `now`; the test moves it (never sleeps)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Summary:
    text: str

    def summary(self) -> str:
        return self.text


@dataclass
class FakeSend:
    """Records each call; with `audience`, delivers once per recipient the wave lets through
    (the ledger's exactly-once, in miniature)."""

    audience: list[Recipient] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    during: Callable[[], None] | None = None
    calls: list[tuple[str, date, datetime]] = field(default_factory=list)
    delivered: dict[int, datetime] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        newsletter_id: str,
        edition_date: date,
        *,
        clock: Clock,
        stop: threading.Event | None,
        recipients: RecipientFilter | None,
        options: SendOptions,
    ) -> Summary:
        with self.lock:
            self.calls.append((newsletter_id, edition_date, clock()))
        if self.during is not None:
            self.during()
        if newsletter_id in self.fail:
            raise self.fail[newsletter_id]
        sent = 0
        for r in self.audience:
            if r.subscriber_id in self.delivered or (recipients and not recipients(r)):
                continue
            self.delivered[r.subscriber_id] = clock()
            sent += 1
        return Summary(f"{sent} sent now")


def with_newsletter(config: Config, newsletter_id: str, **changes: Any) -> Config:
    nl = replace(config.newsletter(newsletter_id), **changes)
    return replace(config, newsletters={**config.newsletters, newsletter_id: nl})


def only(config: Config, newsletter_id: str, **changes: Any) -> Config:
    """The config with just this newsletter (changed as asked)."""
    nl = replace(config.newsletter(newsletter_id), **changes)
    return replace(config, newsletters={newsletter_id: nl})


def runner(
    config: Config,
    sessions: sessionmaker[Session],
    clock: Clock,
    send: FakeSend,
    **kwargs: Any,
) -> Runner:
    kwargs.setdefault("force", True)  # these tests are about time, not content
    return Runner(config, sessions, clock, send=send, **kwargs)


def at(hhmm: str) -> time:
    return time.fromisoformat(hhmm)
