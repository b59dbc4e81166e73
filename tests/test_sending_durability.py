"""The commit that marks a row handed is durable: a database power cut right after the bytes
went out must not forget the mark, or a re-run would send the message again. Statements are
captured per transaction on the engine the send uses (PostgreSQL: `synchronous_commit = off`
would make the commit forgettable; SQLite never issues it)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition
from digest.sending import SendOptions, send_edition
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE
from tests.test_sending_ledger import FAST, edition, populate, with_sendgrid, with_smtp  # noqa: F401


class Transactions:
    """The statements of every committed transaction on an engine, in commit order."""

    def __init__(self, engine: Engine) -> None:
        self.committed: list[list[str]] = []
        self._open: dict[int, list[str]] = {}

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            self._open.setdefault(id(conn), []).append(" ".join(sql.split()))

        @event.listens_for(engine, "commit")
        def _commit(conn: Any) -> None:
            self.committed.append(self._open.pop(id(conn), []))

        @event.listens_for(engine, "rollback")
        def _rollback(conn: Any) -> None:
            self._open.pop(id(conn), None)

    def handing_over(self) -> list[list[str]]:
        return [t for t in self.committed if any("SET handed_at" in s for s in t)]


def _fast(transaction: list[str]) -> bool:
    return any("synchronous_commit" in s.lower() and "off" in s.lower() for s in transaction)


def test_smtp_hand_over_marks_are_committed_durably(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    populate(sessions, 8, now)
    engine = sessions.kw["bind"]
    captured = Transactions(engine)

    report = send_edition(
        with_smtp(config, smtp_server),
        sessions,
        "daily",
        EDITION_DATE,
        SendOptions(provider="smtp", retry=FAST),
        clock=fixed(now),
    )

    assert report.sent_now == 8
    assert smtp_server.counts() == Counter({email_for(i): 1 for i in range(1, 9)})
    handing = captured.handing_over()
    assert len(handing) == 8  # one mark per message, just before its final dot
    assert not [t for t in handing if _fast(t)]


def test_sendgrid_hand_over_marks_are_committed_durably(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    populate(sessions, 30, now)
    captured = Transactions(sessions.kw["bind"])

    report = send_edition(
        with_sendgrid(config, sendgrid_server),
        sessions,
        "daily",
        EDITION_DATE,
        SendOptions(provider="sendgrid", retry=FAST),
        clock=fixed(now),
    )

    assert report.sent_now == 30
    handing = captured.handing_over()
    assert handing and not [t for t in handing if _fast(t)]
