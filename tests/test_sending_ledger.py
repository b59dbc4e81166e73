"""send_edition end to end with the ledger, on SQLite and PostgreSQL, through the outbox, a
real SMTP server and the SendGrid stand-in."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import Counter
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, DeferralConfig, SendGridConfig, SmtpConfig
from digest.editions import Edition
from digest.errors import ProviderError
from digest.ledger import Delivery, claim, mark_handed
from digest.ledger_writer import LedgerWriter
from digest.render import Renderer, personal_links, personalise
from digest.sending import ProgressEvent, RetryPolicy, SendOptions, SendReport, send_edition
from subscribers.audience import recipient
from subscribers.service import suppress, unsubscribe
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population, email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import USERNAME, SmtpServer
from tests.render_support import EDITION_DATE, store_edition

FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)


@pytest.fixture
def edition(sessions: sessionmaker[Session], now: datetime) -> Edition:
    with sessions.begin() as session:
        e = store_edition(session)
    return e


def populate(sessions: sessionmaker[Session], n: int, now: datetime) -> list[int]:
    with sessions.begin() as session:
        return add_population(session, n, now)


def rows(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def send(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    **kw: object,
) -> SendReport:
    options = SendOptions(retry=FAST, **kw)  # type: ignore[arg-type]
    return send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))


def with_outbox(config: Config, folder: Path) -> Config:
    return dataclasses.replace(config, outbox=dataclasses.replace(config.outbox, dir=folder))


def with_smtp(config: Config, server: SmtpServer, **kw: Any) -> Config:
    smtp = SmtpConfig(port=server.port, security="starttls", username=USERNAME, timeout=5, **kw)
    return dataclasses.replace(config, smtp=smtp)


def with_sendgrid(config: Config, server: SendGridStandIn, **kw: object) -> Config:
    kw.setdefault("timeout", 1.0)
    sg = SendGridConfig(host=server.url, **kw)  # type: ignore[arg-type]
    return dataclasses.replace(config, sendgrid=sg)


def test_outbox_send_writes_each_recipient_once_and_rerun_sends_nothing(
    config: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 12, now)

    first = send(config, sessions, now)
    again = send(config, sessions, now)

    assert first.sent_now == 12 and first.counts["sent"] == 12
    assert first.edition_status == "sent"
    assert again.sent_now == 0 and again.created == 0
    assert "was already sent to everyone" in again.summary()
    with sessions.begin() as session:  # someone subscribes after the edition went out
        add_population(session, 1, now, start=100)
    assert send(config, sessions, now).created == 0
    assert len(list((tmp_path / "out").glob("*.eml"))) == 12
    ledger = rows(sessions)
    assert {r.state for r in ledger} == {"sent"}
    assert len({r.variant for r in ledger}) == 10
    assert all(r.provider == "outbox" and r.attempts == 1 for r in ledger)


def test_smtp_send_delivers_personalised_messages_over_starttls_and_auth(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 25, now)
    report = send_edition(
        config, sessions, "daily", EDITION_DATE, SendOptions(provider="smtp"), clock=fixed(now)
    )

    assert report.sent_now == 25
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 26)})
    assert len(smtp_server.logins) == 1  # one connection for the whole send
    nl = config.newsletter("daily")
    with sessions() as session:
        stored = session.get(Edition, edition.id)
        assert stored is not None
        renderer = Renderer(config, nl, stored)
        by_to = {m["To"].addresses[0].addr_spec: m for m in smtp_server.messages()}
        for r in rows(sessions):
            msg: EmailMessage = by_to[r.email]
            rec = recipient(session, config, nl, r.subscriber_id)
            personal = personal_links(config, nl, stored, rec)
            expected = personalise(renderer.variant(rec.sections), personal)
            text, html = msg.iter_parts()
            assert html.get_content().replace("\r\n", "\n") == expected.html
            assert text.get_content().replace("\r\n", "\n") == expected.text
            assert msg["Subject"] == expected.subject
            assert msg["List-Unsubscribe"].startswith(f"<{personal.unsubscribe_url}>")
            assert msg["Message-ID"] == f"<daily.20260310.{r.subscriber_id}@news.example>"
            assert r.provider_message_id and r.provider_message_id.startswith("Q")
    for _, raw in smtp_server.received:
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_smtp_connections_deliver_batches_side_by_side_each_recipient_once(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server, connections=3)
    populate(sessions, 60, now)
    smtp_server.delay = 0.03  # a relay that takes its time: batches overlap

    report = send(config, sessions, now, provider="smtp", batch_size=10)

    assert report.sent_now == 60 and report.counts["sent"] == 60
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 61)})
    # Three messages were with the relay at once, each on its own connection, and each
    # connection logged in once (a delivery thread reuses its own for its next batch).
    assert smtp_server.most_busy == 3
    assert len(smtp_server.logins) == 3
    with sessions() as session:
        ids = session.scalars(select(Delivery.provider_message_id)).all()
    assert len(set(ids)) == 60  # each its own queue id


def test_sendgrid_send_batches_with_substitutions_that_match_personalise(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    config = with_sendgrid(config, sendgrid_server)
    populate(sessions, 30, now)
    report = send(config, sessions, now, provider="sendgrid")

    assert report.sent_now == 30
    assert sendgrid_server.rejected == []
    # 10 variants of 3 readers each: one request per variant
    assert sendgrid_server.requests == 10
    nl = config.newsletter("daily")
    by_email = {d.email: d for d in sendgrid_server.delivered()}
    with sessions() as session:
        stored = session.get(Edition, edition.id)
        assert stored is not None
        renderer = Renderer(config, nl, stored)
        for r in rows(sessions):
            d = by_email[r.email]
            rec = recipient(session, config, nl, r.subscriber_id)
            expected = personalise(
                renderer.variant(rec.sections), personal_links(config, nl, stored, rec)
            )
            assert (d.subject, d.html, d.text) == (expected.subject, expected.html, expected.text)
            assert d.custom_args["delivery_id"] == str(r.id)
            assert r.provider_message_id == d.message_id


def test_wrong_sendgrid_key_stops_the_send_with_one_clear_error_and_marks_nothing_sent(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.revoked")
    populate(sessions, 5, now)
    with pytest.raises(ProviderError) as err:
        send(with_sendgrid(config, sendgrid_server), sessions, now, provider="sendgrid")
    assert "sendgrid refused the credentials (SendGrid 401" in str(err.value)
    assert "$SENDGRID_API_KEY" in str(err.value)
    assert "\n" not in str(err.value)
    assert {r.state for r in rows(sessions)} == {"pending"}
    assert all(r.handed_at is None for r in rows(sessions))


def test_timeout_leaves_rows_unknown_and_only_resend_unknown_sends_them_again(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    config = with_sendgrid(config, sendgrid_server, timeout=0.5)
    populate(sessions, 3, now)
    sendgrid_server.answer(202, hang=1.5)
    sendgrid_server.answer(202, hang=1.5)
    sendgrid_server.answer(202, hang=1.5)
    first = send(config, sessions, now, provider="sendgrid")
    assert first.counts["unknown"] == 3 and first.edition_status == "sent"
    assert "no answer from" in (rows(sessions)[0].last_error or "")

    assert send(config, sessions, now, provider="sendgrid").sent_now == 0
    again = send(config, sessions, now, provider="sendgrid", resend_unknown=True)
    assert again.sent_now == 3
    assert {r.state for r in rows(sessions)} == {"sent"}


def test_a_refused_recipient_fails_with_the_reason_and_retry_failed_tries_again(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 4, now)
    smtp_server.refuse[email_for(2)] = "550 5.1.1 mailbox unavailable"
    report = send(config, sessions, now, provider="smtp")
    assert report.counts == {**report.counts, "sent": 3, "failed": 1}
    failed = [r for r in rows(sessions) if r.state == "failed"]
    assert failed[0].email == email_for(2)
    assert failed[0].last_error == "SMTP 550 5.1.1 mailbox unavailable"

    del smtp_server.refuse[email_for(2)]
    assert send(config, sessions, now, provider="smtp").sent_now == 0
    assert send(config, sessions, now, provider="smtp", retry_failed=True).sent_now == 1
    assert smtp_server.counts()[email_for(2)] == 1


def test_429_and_503_are_retried_with_backoff_until_accepted(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    populate(sessions, 10, now)
    sendgrid_server.answer(429, reset_in=0)
    sendgrid_server.answer(503)
    report = send(with_sendgrid(config, sendgrid_server), sessions, now, provider="sendgrid")
    assert report.sent_now == 10
    assert sum(sendgrid_server.counts().values()) == 10
    assert max(r.attempts for r in rows(sessions)) == 3


def test_provider_down_stops_the_send_and_keeps_rows_pending(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    populate(sessions, 3, now)
    for _ in range(FAST.attempts):
        sendgrid_server.answer(500)
    with pytest.raises(ProviderError, match="kept answering SendGrid 500"):
        send(with_sendgrid(config, sendgrid_server), sessions, now, provider="sendgrid")
    assert {r.state for r in rows(sessions)} == {"pending"}


def test_stop_finishes_the_batch_in_hand_and_a_rerun_completes(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 120, now)  # enough batches to claim ahead (PostgreSQL)
    stop = threading.Event()
    seen: list[int] = []

    def progress(event: ProgressEvent) -> None:
        seen.append(event.sent)
        stop.set()

    first = send_edition(
        config,
        sessions,
        "daily",
        EDITION_DATE,
        SendOptions(batch_size=10),
        clock=fixed(now),
        progress=progress,
        stop=stop,
    )
    assert first.sent_now == 10 and first.stopped and first.edition_status == "frozen"
    assert seen == [10]
    # Nothing is left held: a batch claimed ahead (PostgreSQL) went back to pending.
    assert first.counts["sending"] == 0 and first.counts["pending"] == 110
    second = send(config, sessions, now, batch_size=10)
    assert second.sent_now == 110 and second.edition_status == "sent"


def test_limit_sends_at_most_n(
    config: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 8, now)
    report = send(config, sessions, now, limit=3)
    assert report.sent_now == 3 and report.counts["pending"] == 5


def test_rows_a_dead_worker_held_are_resent_unless_handed_over(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 4, now)
    send(config, sessions, now, limit=0)  # creates the rows, sends nothing
    dead = f"{os.uname().nodename[:80]}:999999"  # no such pid on this machine
    with sessions.begin() as session:
        held = claim(session, edition.id, dead, 2, now)
        mark_handed(session, [held[0].id], dead, now)

    report = send(config, sessions, now)
    states = {r.id: r.state for r in rows(sessions)}
    assert report.recovered == 2
    assert states[held[0].id] == "unknown"  # may have been delivered: not resent
    assert states[held[1].id] == "sent"
    assert report.sent_now == 3


def test_people_who_leave_before_their_turn_are_skipped_or_suppressed(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    ids = populate(sessions, 4, now)
    send(config, sessions, now, limit=0)
    with sessions.begin() as session:
        unsubscribe(session, ids[0], "daily", reason="test", at=now)
        suppress(session, email_for(2), "bounced", now)
    report = send(config, sessions, now)
    by_sub = {r.subscriber_id: r for r in rows(sessions)}
    assert by_sub[ids[0]].state == "skipped"
    assert by_sub[ids[1]].state == "suppressed"
    assert report.sent_now == 2


def test_sqlite_runs_one_worker_and_says_so(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    if sessions.kw["bind"].dialect.name != "sqlite":
        pytest.skip("SQLite behaviour")
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 3, now)
    report = send(config, sessions, now, workers=4)
    assert report.sent_now == 3
    assert "SQLite runs one worker (asked for 4)" in report.summary()


def test_dry_run_writes_messages_without_touching_the_ledger(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    tmp_path: Path,
) -> None:
    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 3, now)
    report = send(config, sessions, now, dry_run=True)
    assert report.sent_now == 3
    assert rows(sessions) == []
    assert len(list((tmp_path / "out" / "dry-run").glob("*.eml"))) == 3
    with sessions() as session:
        assert session.scalar(select(Edition.status)) == "draft"


def test_smtp_451_after_the_message_defers_that_reader_and_a_later_run_delivers_them(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 40, now)
    smtp_server.fail_rate = 0.2  # 451 after the message
    first = send(config, sessions, now, provider="smtp")
    deferred = [r for r in rows(sessions) if r.state == "deferred"]
    assert deferred and first.deferred_now == len(deferred)
    assert first.sent_now == 40 - len(deferred)  # the others went on at full speed
    assert first.counts["unknown"] == 0  # a refused message is never "maybe delivered"
    assert first.edition_status == "frozen"  # not everyone has their copy yet
    assert all(r.last_error == "SMTP 451 4.3.0 stand-in temporary failure" for r in deferred)
    assert "deferred" in first.summary() and "10:05 UTC" in first.summary()

    smtp_server.fail_rate = 0.0
    assert send(config, sessions, now, provider="smtp").sent_now == 0  # not due yet
    later = send(config, sessions, now + timedelta(minutes=6), provider="smtp")
    assert later.sent_now == len(deferred)
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 41)})
    assert later.edition_status == "sent"
    assert {r.state for r in rows(sessions)} == {"sent"}


def test_forget_erases_the_address_from_the_ledger_and_skips_unsent_rows(
    config: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    from subscribers.service import forget

    config = with_outbox(config, tmp_path / "out")
    populate(sessions, 4, now)
    send(config, sessions, now, limit=2)  # two sent, two still pending
    before = rows(sessions)
    sent = next(r for r in before if r.state == "sent")
    pending = next(r for r in before if r.state == "pending")
    with sessions.begin() as session:
        assert forget(session, sent.email, at=now)
        assert forget(session, pending.email, at=now)
    after = {r.id: r for r in rows(sessions)}
    assert after[sent.id].state == "sent" and after[sent.id].email.startswith("erased-")
    assert after[sent.id].name is None
    assert after[pending.id].state == "skipped" and "@" not in after[pending.id].email
    send(config, sessions, now)
    assert len(list((tmp_path / "out").glob("*.eml"))) == 3


def test_claims_walk_the_partial_index_of_pending_rows_on_sqlite(
    sessions: sessionmaker[Session], edition: Edition, now: datetime
) -> None:
    # SQLite uses a partial index only when the query's condition is a literal; a bound
    # 'pending' would silently fall back to scanning the edition's rows at every claim.
    engine = sessions.kw["bind"]
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite behaviour")
    with sessions.begin() as session:
        session.add(
            Delivery(
                edition_id=edition.id,
                subscriber_id=1,
                email=email_for(1),
                sections='["News"]',
                variant="v",
                created_at=now,
            )
        )
    seen: list[tuple[str, object]] = []

    def record(conn: object, cursor: object, statement: str, params: object, *_: object) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with sessions.begin() as session:
            assert len(claim(session, edition.id, "w:1", 10, now)) == 1
    finally:
        event.remove(engine, "before_cursor_execute", record)
    statement, params = next(s for s in seen if s[0].startswith("UPDATE deliveries"))
    with engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()  # type: ignore[arg-type]
    assert any("ix_deliveries_pending" in str(row[-1]) for row in plan), plan


def _ledger_rows(sessions: sessionmaker[Session], edition: Edition, n: int, now: datetime) -> None:
    with sessions.begin() as session:
        session.add_all(
            Delivery(
                edition_id=edition.id,
                subscriber_id=i,
                email=email_for(i),
                sections='["News"]',
                variant="v",
                created_at=now,
            )
            for i in range(1, n + 1)
        )


def test_rows_let_go_behind_a_workers_last_claim_are_still_claimed(
    sessions: sessionmaker[Session], edition: Edition, now: datetime
) -> None:
    # PostgreSQL claims in id order from where the worker's last claim ended: a batch let go
    # (a stopped delivery) lies behind it, and must not be left pending when the send ends.
    _ledger_rows(sessions, edition, 30, now)
    writer = LedgerWriter(sessions, edition.id, "outbox", fixed(now), DeferralConfig())
    try:
        first, second = writer.claim(10), writer.claim(10)
        writer.release([c.id for c in first])
        rest = [writer.claim(10), writer.claim(10), writer.claim(10)]
    finally:
        writer.close()
    claimed = [c.id for c in second] + [c.id for batch in rest for c in batch]
    assert sorted(claimed) == [r.id for r in rows(sessions)]  # everyone once, nobody twice
    assert rest[-1] == []
    assert {r.state for r in rows(sessions)} == {"sending"}


def test_no_postgresql_index_of_the_ledger_names_its_state(engine: Any) -> None:
    # A row's claim, hand-over and settle change `state`: an index naming it (in its columns
    # or its predicate) turns each of those updates from HOT into a new entry in every index.
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL behaviour")
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname LIKE 'deliveries%%'"
        ).all()
        fillfactors = conn.exec_driver_sql(
            "SELECT c.relname, c.reloptions FROM pg_inherits h "
            "JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = 'deliveries'::regclass"
        ).all()
    assert {name for name, _ in found} >= {"ix_deliveries_claim", "ix_deliveries_due"}
    assert [d for _, d in found if "state" in d] == []
    assert fillfactors and all("fillfactor=50" in (options or []) for _, options in fillfactors), (
        fillfactors
    )
