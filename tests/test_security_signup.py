"""The sign-up form answers the same, in the same time, for every address: new, active,
unsubscribed, suppressed, and whether or not the provider is up. The confirmation email leaves
from the background sender, never inside the request."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, SmtpConfig
from digest.web import create_app
from subscribers.service import suppress, unsubscribe
from tests.confirm_support import csrf_of, opt_in
from tests.fakes.smtp import free_port
from tests.web_support import add_reader, unlimited

FORM = "/subscribe/daily"


def _client(cfg: Config, sessions: sessionmaker[Session], now: datetime) -> FlaskClient:
    return create_app(unlimited(cfg), sessions, clock=fixed(now)).test_client()


def _provider_down(cfg: Config) -> Config:
    daily = replace(cfg.newsletter("daily"), provider="smtp")
    return replace(
        cfg,
        newsletters={**cfg.newsletters, "daily": daily},
        smtp=SmtpConfig(port=free_port(), timeout=2),  # nothing listens there
    )


@pytest.fixture
def cfg(config: Config, tmp_path: Path) -> Config:
    return opt_in(config, tmp_path / "outbox")


def test_every_address_gets_the_same_status_and_page_even_with_the_provider_down(
    cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    add_reader(sessions, cfg, "active@example.com", now)
    gone = add_reader(sessions, cfg, "gone@example.com", now)
    with sessions.begin() as s:
        unsubscribe(s, gone, "daily", reason="test", at=now)
        suppress(s, "blocked@example.com", "operator", now)
    answers = set()
    for config in (cfg, _provider_down(cfg)):
        client = _client(config, sessions, now)
        csrf = csrf_of(client.get(FORM).get_data(as_text=True))
        for email in ("new@example.com", "active@example.com", "gone@example.com",
                      "blocked@example.com"):  # fmt: skip
            r = client.post(FORM, data={"csrf": csrf, "email": email})
            answers.add((r.status_code, r.get_data(as_text=True)))
    assert len(answers) == 1
    ((status, body),) = answers
    assert status == 200 and "Check your inbox" in body


@pytest.mark.timing
def test_a_new_and_a_known_address_take_the_same_time(
    cfg: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    """Median response time of 30 sign-ups of new addresses and 30 of a known one, taken
    alternately so both see the same machine load, within 1.5x of each other."""
    add_reader(sessions, cfg, "known@example.com", now)
    client = _client(cfg, sessions, now)
    csrf = csrf_of(client.get(FORM).get_data(as_text=True))

    def timed(email: str) -> tuple[float, int, str]:
        start = time.perf_counter()
        r = client.post(FORM, data={"csrf": csrf, "email": email})
        return time.perf_counter() - start, r.status_code, r.get_data(as_text=True)

    for i in range(5):  # warm up templates, connections and caches
        timed(f"warm{i}@example.com")
        timed("known@example.com")
    new: list[float] = []
    known: list[float] = []
    answers = set()
    for i in range(30):
        for email, times in ((f"new{i}@example.com", new), ("known@example.com", known)):
            elapsed, status, body = timed(email)
            times.append(elapsed)
            answers.add((status, body))
    assert len(answers) == 1
    fast, slow = sorted([statistics.median(new), statistics.median(known)])
    assert slow <= 1.5 * fast, (
        f"median new {statistics.median(new) * 1000:.2f} ms, "
        f"known {statistics.median(known) * 1000:.2f} ms"
    )
