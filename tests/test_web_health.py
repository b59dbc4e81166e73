"""What a monitor sees of `digest serve`: /healthz (database reachable, schema current) and the
Prometheus exposition of /metrics (the ledger's counts), on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import ClickEvent
from digest.clock import fixed
from digest.config import Config
from digest.db import head_revisions, make_engine, session_factory, upgrade
from digest.ledger import Delivery
from digest.web import create_app
from tests.render_support import store_edition
from tests.web_support import add_edition

# A known ledger: rows by state, and how many temporary refusals each deferred row had.
LEDGER = {"sent": 7, "failed": 2, "deferred": 3, "unknown": 1, "pending": 4, "suppressed": 1}
DEFERRALS_EACH = 2


def make_app(config: Config, sessions: sessionmaker[Session], now: datetime, **metrics) -> Flask:
    config = dataclasses.replace(config, metrics=dataclasses.replace(config.metrics, **metrics))
    return create_app(config, sessions, clock=fixed(now))


@pytest.fixture
def client(config: Config, sessions: sessionmaker[Session], now: datetime) -> FlaskClient:
    return make_app(config, sessions, now).test_client()


def add_rows(session: Session, edition_id: int, now: datetime, start: int = 0) -> int:
    """The LEDGER's rows for one edition; returns the id of one of its sent rows."""
    n = start
    for state, count in LEDGER.items():
        for _ in range(count):
            n += 1
            session.add(
                Delivery(
                    edition_id=edition_id,
                    subscriber_id=n,
                    email=f"r{n}@example.org",
                    sections="[]",
                    variant="v",
                    state=state,
                    created_at=now,
                    deferrals=DEFERRALS_EACH if state == "deferred" else 0,
                )
            )
    session.flush()
    sent = session.scalars(
        select(Delivery.id).where(Delivery.edition_id == edition_id, Delivery.state == "sent")
    ).first()
    assert sent is not None
    return sent


def fill_ledger(sessions: sessionmaker[Session], now: datetime, clicks: int = 0) -> None:
    """The LEDGER for today's edition of `daily`, and `clicks` clicks, every other one flagged."""
    with sessions.begin() as session:
        edition = store_edition(session)
        sent = add_rows(session, edition.id, now)
        for i in range(clicks):
            session.add(
                ClickEvent(
                    edition_id=edition.id,
                    delivery_id=sent,
                    kind="click",
                    clicked_at=now,
                    source="redirect",
                    agent="browser" if i % 2 == 0 else "scanner",
                    flag=None if i % 2 == 0 else "scanner",
                    counted=i % 2 == 0,
                )
            )


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rows_by_state(found: dict, newsletter: str = "daily") -> dict[str, float]:
    out = {}
    for (name, labels), value in found.items():
        if name == "digest_ledger_rows" and dict(labels)["newsletter"] == newsletter:
            out[dict(labels)["state"]] = value
    return out


# --- /healthz ----------------------------------------------------------------------------------


def test_healthz_is_ok_when_the_database_answers_and_its_schema_is_current(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.get_json() == {"status": "ok", "schema": sorted(head_revisions())}


@pytest.fixture
def behind(engine: Engine) -> Iterator[str]:
    """The database stamped at the revision before head (as after `pip install -U digest`
    without `digest db upgrade`); restored afterwards."""
    (head,) = head_revisions()
    older = f"{int(head) - 1:04d}"
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": older})
    yield older
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})


def test_healthz_is_503_with_the_reason_when_the_schema_is_behind(client, behind):
    r = client.get("/healthz")
    assert r.status_code == 503
    body = r.get_json()
    (head,) = head_revisions()
    assert body["status"] == "unavailable"
    assert body["schema"] == [behind] and body["needs"] == [head]
    assert body["reason"] == (
        f"database schema is at {behind}, this version needs {head}: run `digest db upgrade`"
    )


def test_healthz_is_503_on_an_empty_database(config, now, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    r = make_app(config, session_factory(engine), now).test_client().get("/healthz")
    assert r.status_code == 503
    assert "none (empty database)" in r.get_json()["reason"]
    engine.dispose()


def unreachable_url(db_url: str, tmp_path: Path) -> str:
    if db_url.startswith("sqlite"):
        folder = tmp_path / "a-folder"  # a folder is no database file: cannot be opened
        folder.mkdir()
        return f"sqlite:///{folder}"
    return "postgresql+psycopg://digest:hunter2@127.0.0.1:1/digest"  # nothing listens on 1


def test_healthz_is_503_when_the_database_is_unreachable_and_tells_no_secret(
    config, now, db_url, tmp_path, caplog
):
    url = unreachable_url(db_url, tmp_path)
    engine = make_engine(url)
    r = make_app(config, session_factory(engine), now).test_client().get("/healthz")
    assert r.status_code == 503
    assert r.get_json() == {
        "status": "unavailable",
        "reason": "database unreachable",
        "needs": sorted(head_revisions()),
    }
    body = r.get_data(as_text=True)
    for secret in ("hunter2", "127.0.0.1", "a-folder", "sqlite", "postgres"):
        assert secret not in body
    assert "healthz: database unreachable" in caplog.text  # the detail is in the log
    engine.dispose()


def test_healthz_and_metrics_are_not_rate_limited(config, sessions, now):
    assert config.web.token_requests_per_minute > 0
    client = make_app(config, sessions, now).test_client()
    for _ in range(40):  # the token links' burst is 10
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics_show_the_exact_counts_of_a_known_ledger(client, sessions, now):
    fill_ledger(sessions, now, clicks=5)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    found = samples(r.get_data(as_text=True))
    assert rows_by_state(found) == {
        "pending": 4,
        "sending": 0,
        "deferred": 3,
        "sent": 7,
        "failed": 2,
        "suppressed": 1,
        "skipped": 0,
        "unknown": 1,
    }
    assert rows_by_state(found, "strict") == dict.fromkeys(rows_by_state(found), 0)
    assert found[("digest_ledger_deferrals", (("newsletter", "daily"),))] == 3 * DEFERRALS_EACH
    daily = ("newsletter", "daily")
    assert found[("digest_clicks", (("counted", "true"), ("kind", "click"), daily))] == 3
    assert found[("digest_clicks", (("counted", "false"), ("kind", "click"), daily))] == 2
    assert found[("digest_clicks", (("counted", "true"), ("kind", "open"), daily))] == 0
    assert found[("digest_database_up", ())] == 1


def test_metrics_count_the_editions_of_the_last_ledger_days_only(config, sessions, now):
    fill_ledger(sessions, now)
    with sessions.begin() as session:
        old = add_edition(session, "daily", now.date() - timedelta(days=4), "sent", now)
        add_rows(session, old.id, now, start=1000)  # last week's ledger: history, not news
    found = samples(make_app(config, sessions, now).test_client().get("/metrics").text)
    assert rows_by_state(found)["sent"] == LEDGER["sent"]
    found = samples(
        make_app(config, sessions, now, ledger_days=5).test_client().get("/metrics").text
    )
    assert rows_by_state(found)["sent"] == 2 * LEDGER["sent"]


def test_a_scrape_storm_reads_the_database_once_per_cache_period(config, sessions, now):
    app = make_app(config, sessions, now, cache_seconds=60)
    client = app.test_client()
    assert rows_by_state(samples(client.get("/metrics").get_data(as_text=True)))["sent"] == 0
    fill_ledger(sessions, now)
    for _ in range(20):
        found = samples(client.get("/metrics").get_data(as_text=True))
    assert rows_by_state(found)["sent"] == 0  # the cached reading
    assert app.extensions["digest.watch"].collector.queries == 1


def test_without_a_cache_each_scrape_reads_the_ledger_anew(config, sessions, now):
    client = make_app(config, sessions, now, cache_seconds=0).test_client()
    assert rows_by_state(samples(client.get("/metrics").get_data(as_text=True)))["sent"] == 0
    fill_ledger(sessions, now)
    assert rows_by_state(samples(client.get("/metrics").get_data(as_text=True)))["sent"] == 7


def test_two_apps_in_one_process_keep_their_own_metrics(config, sessions, now, tmp_path):
    fill_ledger(sessions, now)
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other)
    first = make_app(config, sessions, now).test_client()
    second = make_app(config, session_factory(other), now).test_client()
    assert rows_by_state(samples(first.get("/metrics").get_data(as_text=True)))["sent"] == 7
    assert rows_by_state(samples(second.get("/metrics").get_data(as_text=True)))["sent"] == 0
    other.dispose()


def test_metrics_say_the_database_is_down_instead_of_failing(config, now, db_url, tmp_path):
    engine = make_engine(unreachable_url(db_url, tmp_path))
    r = make_app(config, session_factory(engine), now).test_client().get("/metrics")
    assert r.status_code == 200
    found = samples(r.get_data(as_text=True))
    assert found[("digest_database_up", ())] == 0
    assert rows_by_state(found) == {}  # no stale or made-up counts
    engine.dispose()


def test_metrics_ask_for_the_bearer_token_when_one_is_set(config, sessions, now, monkeypatch):
    monkeypatch.setenv("DIGEST_METRICS_TOKEN", "s3cret-token")
    client = make_app(config, sessions, now).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
    )
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    assert "digest_ledger_rows" in ok.get_data(as_text=True)
    assert client.get("/healthz").status_code == 200  # health needs no token
