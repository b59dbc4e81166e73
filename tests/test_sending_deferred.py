"""One reader's trouble stays theirs: a temporary refusal of one recipient (greylisting, a full
mailbox, 451 after the message, a SendGrid 400 naming the address) defers that row on its own
backoff while the send goes on; a message that cannot be built fails alone; only the
provider's own trouble stops a send. SQLite and PostgreSQL, the real SMTP server and the
SendGrid stand-in."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.editions import Edition
from digest.errors import ProviderError
from digest.ledger import Delivery
from digest.sending import format_report, ledger_report
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE
from tests.test_sending_ledger import (
    edition,  # noqa: F401
    populate,
    rows,
    send,
    with_outbox,
    with_sendgrid,
    with_smtp,
)

GREYLISTED = "450 4.2.0 Greylisted, see https://postgrey.schweikert.ch/help/example.org.html"
FULL = "452 4.2.2 Mailbox full"


def by_state(sessions: sessionmaker[Session]) -> Counter[str]:
    return Counter(r.state for r in rows(sessions))


def row_of(sessions: sessionmaker[Session], email: str) -> Delivery:
    (found,) = [r for r in rows(sessions) if r.email == email]
    return found


def test_one_greylisted_reader_of_1000_is_deferred_and_delivered_by_a_later_run(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 1000, now)
    grey = email_for(300)
    smtp_server.refuse[grey] = GREYLISTED

    first = send(config, sessions, now, provider="smtp")
    assert first.sent_now == 999 and first.deferred_now == 1
    assert by_state(sessions) == Counter({"sent": 999, "deferred": 1})
    row = row_of(sessions, grey)
    assert row.last_error == f"SMTP {GREYLISTED}"
    assert row.next_attempt_at == now + timedelta(minutes=5)
    assert row.deferred_since == now and row.deferrals == 1
    assert first.edition_status == "frozen"  # someone is still waiting for their copy
    with sessions() as session:
        shown = format_report(
            ledger_report(session, config, "daily", EDITION_DATE), config.newsletter("daily")
        )
    assert f"{grey}  deferred  after 1 attempt(s): SMTP {GREYLISTED}" in shown
    assert "(next attempt 2026-03-10 10:05 UTC)" in shown
    with sessions() as session:
        assert ledger.unsettled(session, edition.id) == 1
        assert ledger.deferred_due(session, edition.id, now) == 0
        assert ledger.deferred_due(session, edition.id, now + timedelta(minutes=5)) == 1
        assert ledger.next_due(session, edition.id) == now + timedelta(minutes=5)

    # A run before the row is due sends nothing; the greylisting server lets it in later.
    assert send(config, sessions, now + timedelta(minutes=1), provider="smtp").sent_now == 0
    del smtp_server.refuse[grey]
    later = send(config, sessions, now + timedelta(minutes=5), provider="smtp")
    assert later.sent_now == 1 and later.edition_status == "sent"
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 1001)})
    assert row_of(sessions, grey).state == "sent"


def test_a_full_mailbox_backs_off_over_hours_then_fails_with_the_last_answer(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 5, now)
    full = email_for(2)
    smtp_server.refuse[full] = FULL

    at = now
    waits = []
    for _ in range(6):
        report = send(config, sessions, at, provider="smtp")
        row = row_of(sessions, full)
        assert row.state == "deferred" and report.deferred_now == 1
        assert row.next_attempt_at is not None
        waits.append(row.next_attempt_at - at)
        at = row.next_attempt_at
    minutes = [w.total_seconds() / 60 for w in waits]
    assert minutes == [5, 15, 45, 135, 240, 240]
    assert by_state(sessions) == Counter({"sent": 4, "deferred": 1})

    # Three days after the first refusal the next temporary answer is the last one.
    report = send(config, sessions, now + timedelta(days=3, minutes=1), provider="smtp")
    row = row_of(sessions, full)
    assert row.state == "failed" and report.failed_now == 1
    assert row.last_error == f"still refused after 72 hours of retries; last answer: SMTP {FULL}"
    assert report.edition_status == "sent"  # everyone's copy is accounted for
    assert smtp_server.counts()[full] == 0

    # --retry-failed after the reader made room: a fresh start, delivered.
    del smtp_server.refuse[full]
    again = send(config, sessions, now + timedelta(days=4), provider="smtp", retry_failed=True)
    assert again.sent_now == 1 and smtp_server.counts()[full] == 1


def test_the_maximum_age_is_configurable(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    from dataclasses import replace

    from digest.config import DeferralConfig

    config = replace(
        with_smtp(config, smtp_server),
        deferral=DeferralConfig(first_retry_minutes=1, max_backoff_hours=0.5, max_age_hours=1),
    )
    populate(sessions, 2, now)
    smtp_server.refuse[email_for(1)] = FULL
    send(config, sessions, now, provider="smtp")
    assert row_of(sessions, email_for(1)).next_attempt_at == now + timedelta(minutes=1)
    send(config, sessions, now + timedelta(minutes=61), provider="smtp")
    assert row_of(sessions, email_for(1)).state == "failed"


def test_20_percent_451_after_the_message_never_leaves_a_refused_reader_unknown(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server, connections=2)
    populate(sessions, 500, now)
    smtp_server.fail_rate = 0.2
    first = send(config, sessions, now, provider="smtp")
    states = by_state(sessions)
    assert states["unknown"] == 0 and states["pending"] == 0 and states["sending"] == 0
    assert 50 < states["deferred"] < 150 and states["sent"] == 500 - states["deferred"]
    assert first.sent_now == states["sent"] and first.deferred_now == states["deferred"]

    smtp_server.fail_rate = 0.0
    send(config, sessions, now + timedelta(minutes=5), provider="smtp")
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 501)})
    assert by_state(sessions) == Counter({"sent": 500})


def test_sendgrid_400_naming_one_address_defers_it_and_sends_everyone_else(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    populate(sessions, 30, now)
    sendgrid_server.answer(
        400,
        message="The to email does not contain a valid address.",
        field="personalizations.1.to.0.email",
    )
    config = with_sendgrid(config, sendgrid_server)
    report = send(config, sessions, now, provider="sendgrid")
    states = by_state(sessions)
    assert states == Counter({"sent": 29, "deferred": 1})
    assert report.sent_now == 29 and report.deferred_now == 1
    (deferred,) = [r for r in rows(sessions) if r.state == "deferred"]
    assert deferred.last_error == (
        "SendGrid 400: The to email does not contain a valid address. "
        "(personalizations.1.to.0.email)"
    )
    later = send(config, sessions, now + timedelta(minutes=5), provider="sendgrid")
    assert later.sent_now == 1 and later.edition_status == "sent"
    assert set(sendgrid_server.counts().values()) == {1}


def test_a_400_for_a_different_address_in_each_request_never_stops_the_send(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    populate(sessions, 20, now)
    for _ in range(8):  # more than RetryPolicy.attempts: naming someone is progress
        sendgrid_server.answer(400, message="bad address", field="personalizations.0.to.0.email")
    report = send(
        with_sendgrid(config, sendgrid_server), sessions, now, provider="sendgrid", batch_size=20
    )
    assert by_state(sessions) == Counter({"sent": 12, "deferred": 8})
    assert report.sent_now == 12


def _break_address(sessions: sessionmaker[Session], email: str) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Delivery).where(Delivery.email == email).values(email="reader\x07@example.org")
        )


@pytest.mark.parametrize("provider", ["outbox", "smtp", "sendgrid"])
def test_a_message_that_cannot_be_built_fails_alone(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    tmp_path: Path,
    smtp_server: SmtpServer,  # noqa: F811
    sendgrid_server: SendGridStandIn,  # noqa: F811
    provider: str,
) -> None:
    config = with_sendgrid(
        with_smtp(with_outbox(config, tmp_path / "out"), smtp_server), sendgrid_server
    )
    populate(sessions, 12, now)
    send(config, sessions, now, provider=provider, limit=0)  # the rows, nothing sent
    _break_address(sessions, email_for(5))
    report = send(config, sessions, now, provider=provider)
    assert report.sent_now == 11 and report.failed_now == 1
    (bad,) = [r for r in rows(sessions) if r.state == "failed"]
    assert bad.last_error is not None
    assert bad.last_error.startswith("cannot build the message for this recipient: HeaderError")
    assert "U+0007" in bad.last_error
    assert report.edition_status == "sent"


def test_sendgrid_rows_are_marked_handed_only_once_the_body_is_serialised(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash while the request body is being encoded (here: an error in json.dumps) leaves
    the rows claimable, not `unknown`: nothing had left the process."""
    populate(sessions, 10, now)
    real = json.dumps

    def crash(value: Any, *args: Any, **kw: Any) -> str:
        if isinstance(value, dict) and "personalizations" in value:
            raise MemoryError("killed while encoding")
        return real(value, *args, **kw)

    monkeypatch.setattr(json, "dumps", crash)
    config = with_sendgrid(config, sendgrid_server)
    with pytest.raises(MemoryError):
        send(config, sessions, now, provider="sendgrid")
    assert by_state(sessions) == Counter({"pending": 10})
    assert all(r.handed_at is None for r in rows(sessions))
    monkeypatch.setattr(json, "dumps", real)
    assert send(config, sessions, now, provider="sendgrid").sent_now == 10


def test_a_relay_that_refuses_everyone_stops_after_three_batches(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 100, now)
    for i in range(1, 101):
        smtp_server.refuse[email_for(i)] = "550 5.7.1 Relaying denied"
    with pytest.raises(ProviderError, match="refused every message of 3 batches in a row"):
        send(config, sessions, now, provider="smtp", batch_size=10)
    states = by_state(sessions)
    # The refused rows say why; the rest of the list was not failed by a broken relay.
    assert states == Counter({"failed": 30, "pending": 70})


def test_421_stops_the_send_with_rows_pending(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    populate(sessions, 3, now)
    for i in range(1, 4):
        smtp_server.refuse[email_for(i)] = "421 4.3.2 Service shutting down"
    with pytest.raises(ProviderError, match="kept answering SMTP 421"):
        send(config, sessions, now, provider="smtp")
    assert by_state(sessions) == Counter({"pending": 3})


def test_deferred_rows_of_people_who_leave_are_skipped(
    config: Any,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    from subscribers.service import unsubscribe

    config = with_smtp(config, smtp_server)
    ids = populate(sessions, 3, now)
    smtp_server.refuse[email_for(3)] = GREYLISTED
    send(config, sessions, now, provider="smtp")
    with sessions.begin() as session:
        unsubscribe(session, ids[2], "daily", reason="test", at=now)
    del smtp_server.refuse[email_for(3)]
    report = send(config, sessions, now + timedelta(hours=1), provider="smtp")
    assert report.sent_now == 0 and report.skipped_now == 1
    assert by_state(sessions) == Counter({"sent": 2, "skipped": 1})


def test_deferral_settings_are_checked(config_path: Path) -> None:
    import tomllib

    from digest.config import parse_config
    from digest.errors import ConfigError

    raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    ok = parse_config({**raw, "deferral": {"max_age_hours": 24}}, config_path)
    assert ok.deferral.max_age_hours == 24 and ok.deferral.first_retry_minutes == 5
    for bad, needle in [
        ({"max_age_hours": 0}, "deferral.max_age_hours: must be at least 1.0"),
        ({"first_retry_minutes": 60, "max_backoff_hours": 0.5}, "must be at least first_retry"),
        ({"retries": 3}, "retries"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parse_config({**raw, "deferral": bad}, config_path)
