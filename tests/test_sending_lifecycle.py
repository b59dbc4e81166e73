"""The edition's lifecycle around a send: a part of the audience (--segment, --limit) leaves the
edition open, only everyone's settled row closes it; what a run reports is what it did.
SQLite and PostgreSQL, through the outbox and the real SMTP server."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text, true
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.config import Config
from digest.editions import Edition
from digest.errors import NotFound
from digest.sending import SendReport
from subscribers.models import Tag
from tests.fakes.fixtures import smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population, email_for
from tests.fakes.smtp import SmtpServer
from tests.test_sending_ledger import rows, send, with_outbox, with_smtp

AUDIENCE = 21


@pytest.fixture
def edition(sessions: sessionmaker[Session], now: datetime) -> Edition:
    from tests.render_support import store_edition

    with sessions.begin() as session:
        e = store_edition(session)
    return e


@pytest.fixture
def members(sessions: sessionmaker[Session], now: datetime) -> list[int]:
    """21 readers of `daily`; the fifth is the one vip."""
    with sessions.begin() as session:
        ids = add_population(session, AUDIENCE, now)
        session.add(Tag(subscriber_id=ids[4], tag="vip"))
    return ids


def status(sessions: sessionmaker[Session], edition: Edition) -> str:
    with sessions() as session:
        return session.scalars(select(Edition.status).where(Edition.id == edition.id)).one()


@pytest.mark.parametrize("provider", ["outbox", "smtp"])
def test_a_segment_send_leaves_the_edition_open_and_the_full_send_reaches_all_21(
    provider: str,
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if provider == "smtp":
        server: SmtpServer = request.getfixturevalue("smtp_server")
        config = with_smtp(config, server)
    else:
        config = with_outbox(config, tmp_path / "out")

    vip = send(config, sessions, now, provider=provider, segments=("vip",))

    assert vip.sent_now == 1 and vip.counts["sent"] == 1
    assert vip.edition_status == "frozen" == status(sessions, edition)
    assert "already sent" not in vip.summary()
    assert "edition open" in vip.summary()
    assert "daily 2026-03-10 has 1 of 1 ledger row(s) settled" in vip.summary()
    assert (
        "this run was for segment(s) vip; 20 reader(s) of the full audience have no row yet: "
        "run `digest send daily --date 2026-03-10` to send them"
    ) in vip.summary()

    full = send(config, sessions, now, provider=provider)

    assert full.created == AUDIENCE - 1 and full.sent_now == AUDIENCE - 1
    assert full.counts["sent"] == AUDIENCE
    assert full.edition_status == "sent" == status(sessions, edition)
    if provider == "smtp":
        assert server.counts() == Counter({email_for(i): 1 for i in range(1, AUDIENCE + 1)})
    else:
        assert len(list((tmp_path / "out").glob("*.eml"))) == AUDIENCE
    again = send(config, sessions, now, provider=provider)
    assert again.sent_now == 0 and "was already sent to everyone" in again.summary()


def test_a_segment_that_matches_nobody_does_not_close_the_edition(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    config = dataclasses.replace(
        config, segments={**config.segments, "press": 'tags contains "press"'}
    )

    nobody = send(config, sessions, now, segments=("press",))

    assert nobody.created == 0 and nobody.sent_now == 0
    assert nobody.edition_status == "frozen"
    assert "segment press matched nobody" in nobody.summary()
    full = send(config, sessions, now)
    assert full.sent_now == AUDIENCE and full.edition_status == "sent"


def test_the_last_segment_that_completes_the_audience_closes_the_edition(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    with sessions.begin() as session:
        session.add_all(Tag(subscriber_id=i, tag="vip") for i in members if i != members[4])

    report = send(config, sessions, now, segments=("vip",))

    assert report.sent_now == AUDIENCE and report.edition_status == "sent"


def test_limit_sends_part_and_leaves_the_edition_open_until_the_rest_is_sent(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")

    part = send(config, sessions, now, limit=5)

    assert part.sent_now == 5 and part.edition_status == "frozen"
    assert "16 pending" in part.summary()
    assert part.exit_code == 0  # asked for part: nothing went wrong
    rest = send(config, sessions, now)
    assert rest.sent_now == AUDIENCE - 5 and rest.edition_status == "sent"
    assert len(list((tmp_path / "out").glob("*.eml"))) == AUDIENCE


def test_an_empty_audience_leaves_the_edition_open_for_its_first_reader(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    first = send(config, sessions, now)
    assert first.edition_status == "frozen" and "nobody to send to" in first.summary()
    with sessions.begin() as session:
        add_population(session, 2, now)
    second = send(config, sessions, now)
    assert second.sent_now == 2 and second.edition_status == "sent"


def test_concurrent_senders_report_the_rows_they_added_not_the_rows_they_found(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if sessions.kw["bind"].dialect.name == "postgresql":
        pytest.skip("PostgreSQL: the row-creation lock keeps the second sender from reading first")
    config = with_outbox(config, tmp_path / "out")
    first = send(config, sessions, now, limit=0)
    assert first.created == AUDIENCE
    # The second sender read the ledger before the first one's rows were committed: it
    # inserts the same 21 rows, which the unique key turns into nothing.
    monkeypatch.setattr(ledger, "has_rows", lambda session, edition_id: True)
    monkeypatch.setattr(ledger, "without_row", lambda edition_id: true())

    second = send(config, sessions, now)

    assert second.created == 0
    assert second.sent_now == AUDIENCE
    assert "new recipient" not in second.summary()
    assert len(rows(sessions)) == AUDIENCE


def test_a_second_sender_waits_for_the_first_ones_rows_before_asking_who_has_one(
    sessions: sessionmaker[Session], edition: Edition
) -> None:
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("SQLite's one write lock does this")
    with sessions.begin() as first:
        ledger.lock_rows(first, edition.id)
        with sessions() as second, second.begin():
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                ledger.lock_rows(second, edition.id)
        with sessions() as other, other.begin():  # another edition's creation goes on
            other.execute(text("SET LOCAL lock_timeout = '200ms'"))
            another = other.execute(
                text(
                    "INSERT INTO editions (newsletter, edition_date, status, built_at, "
                    "frozen_at, window_start, window_end, fingerprint) SELECT newsletter, "
                    "edition_date + 1, status, built_at, frozen_at, window_start, window_end, "
                    "fingerprint FROM editions WHERE id = :e RETURNING id"
                ),
                {"e": edition.id},
            ).scalar_one()
            ledger.lock_rows(other, another)
            with pytest.raises(NotFound, match="was deleted"):  # no key: the lock checks
                ledger.lock_rows(other, another + 1)
    with sessions.begin() as later:  # the first one's transaction ended: free
        later.execute(text("SET LOCAL lock_timeout = '200ms'"))
        ledger.lock_rows(later, edition.id)


def test_two_senders_at_once_add_and_send_each_row_once_between_them(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    members: list[int],
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    reports: list[SendReport] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def sender() -> None:
        try:
            start.wait()
            reports.append(send(config, sessions, now, batch_size=3))
        except BaseException as e:  # pragma: no cover - shown by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert sum(r.created for r in reports) == AUDIENCE
    assert sum(r.sent_now for r in reports) == AUDIENCE
    assert len(list((tmp_path / "out").glob("*.eml"))) == AUDIENCE
    assert {r.state for r in rows(sessions)} == {"sent"}
    assert status(sessions, edition) == "sent"
