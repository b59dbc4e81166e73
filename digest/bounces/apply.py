"""`digest bounces --from-mbox|--from-maildir PATH`: apply what the bounce mailbox says.

A report is matched to the message it answers, never guessed from its wording:

1. the VERP return path it was delivered to (or that the original names as its envelope
   sender): `bounces+<row>-<hmac>@…` names the ledger row (digest.bounces.verp);
2. else a signed unsubscribe token in the quoted original (its List-Unsubscribe header) names
   the subscriber and newsletter, and the original's Message-ID the edition;
3. else the original's Message-ID (`<newsletter.YYYYMMDD.subscriber@from-domain>`, or a
   confirmation email's) names the row, accepted only when the report names that row's own
   address as the failed recipient.

Then, per recipient: a hard bounce suppresses the address at once (reason `bounced: <status>
<diagnostic>`) and marks the row `failed`; a soft bounce marks the row `failed` and counts, and
`bounces.soft_bounce_limit` (3) soft bounces of different messages within
`bounces.soft_bounce_days` (30) of each other suppress; a block (the receiver refusing the
sender or the message: 5.7.x) marks the row and suppresses nothing; a complaint (ARF abuse,
fraud, virus) suppresses as `complained`. Delay warnings, delivery notices, auto-replies and
DMARC failure reports change nothing. Each report is recorded once (by its Message-ID), so
reading the mailbox again changes nothing more. The mailbox itself is never changed.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.bounces.models import BounceEvent
from digest.bounces.parse import FAILING, Failure, Report, read_report
from digest.bounces.verp import read_verp
from digest.clock import Clock
from digest.config import Config
from digest.editions import get_edition
from digest.ledger import Delivery
from digest.mailto import MailboxReport, apply_each
from subscribers.models import Subscriber, email_hash, normalise_email
from subscribers.service import suppress
from subscribers.tokens import InvalidToken, read_token, site_secret

_TOKEN = re.compile(r"/u/([A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,})")
_EDITION_ID = re.compile(r"^([a-z0-9][a-z0-9_-]{0,62})\.(\d{8})\.(\d{1,18})@(.+)$")
_CONFIRM_ID = re.compile(r"^confirm\.([a-z0-9][a-z0-9_-]{0,62})\.(\d{1,18})\.\d+@(.+)$")


@dataclass(frozen=True)
class Match:
    """Whom a report is about: the address as sent, and the ledger row when there is one."""

    email: str
    how: str  # verp | token | message-id | confirmation
    delivery: Delivery | None = None


def process_bounces(
    config: Config, sessions: sessionmaker[Session], path: Path, *, clock: Clock
) -> MailboxReport:
    """Apply every bounce and complaint in the mailbox, one transaction per message."""
    secret = site_secret(config)

    def handle(session: Session, msg: email.message.Message) -> str:
        at = clock()
        return apply_report(
            session, config, secret, read_report(msg), at=at, arrived=_date(msg, at)
        )

    return apply_each(sessions, path, handle)


def apply_report(
    session: Session, config: Config, secret: str, r: Report, *, at: datetime, arrived: datetime
) -> str:
    """Apply one report in the caller's transaction; returns what became of it (a count label)."""
    ignored = {
        "auto-reply": "auto-reply (ignored)",
        "other": "not a bounce (ignored)",
        "not-spam": "not-spam report (ignored)",
        "auth-failure": "DMARC failure report (ignored)",
    }
    if r.kind in ignored:
        return ignored[r.kind]
    failing = [f for f in r.failures if f.kind in (*FAILING, "complaint")]
    if not failing:
        waiting = any(f.kind == "delayed" for f in r.failures)
        return "delay warning (ignored)" if waiting else "delivery notice (ignored)"
    match = find_match(session, config, secret, r)
    if match is None:
        return "unmatched (no VERP address or Message-ID of ours)"
    failure = next((f for f in failing if f.recipient == match.email), None)
    if failure is None:
        failure = failing[0]
    hashed = email_hash(match.email)
    seen = session.scalar(
        select(BounceEvent.id).where(
            BounceEvent.fingerprint == r.fingerprint, BounceEvent.email_hash == hashed
        )
    )
    if seen is not None:
        return "already processed"
    row = match.delivery
    session.add(
        BounceEvent(
            fingerprint=r.fingerprint,
            kind=failure.kind,
            email=match.email,
            email_hash=hashed,
            delivery_id=row.id if row else None,
            edition_id=row.edition_id if row else None,
            status=failure.status,
            diagnostic=failure.diagnostic,
            received_at=arrived,
            created_at=at,
        )
    )
    session.flush()
    what = _describe(failure)
    if failure.kind == "complaint":
        suppress(session, match.email, "complained", at)
        return "complaint: suppressed"
    if row is not None and row.state in ("sent", "unknown"):
        row.state, row.settled_at = "failed", at
        row.last_error = f"{'blocked' if failure.kind == 'blocked' else 'bounce'}: {what}"[:2000]
    if failure.kind == "hard":
        suppress(session, match.email, "bounced", at, detail=what)
        return "hard bounce: suppressed"
    if failure.kind == "blocked":
        return "blocked by the receiver (not suppressed)"
    n = _soft_count(session, config, hashed, arrived)
    if n >= config.bounces.soft_bounce_limit:
        days = config.bounces.soft_bounce_days
        suppress(
            session,
            match.email,
            "bounced",
            at,
            detail=f"{n} soft bounces in {days:g} days; last {what}",
        )
        return "soft bounce: suppressed (limit reached)"
    return "soft bounce (counted)"


def find_match(session: Session, config: Config, secret: str, r: Report) -> Match | None:
    """The row (or, for a confirmation email, the subscriber) a report is about; None when
    nothing in it is provably ours."""
    candidates = list(r.envelope)
    if r.original is not None:
        candidates += [a for _, a in getaddresses(r.original.get_all("Return-Path") or []) if a]
    for address in candidates:
        rid = read_verp(config, secret, address)
        row = session.get(Delivery, rid) if rid is not None else None
        if row is not None and "@" in row.email:  # not a row `forget` erased
            return Match(normalise_email(row.email), "verp", row)
    ids = r.message_ids
    for token in _tokens(r):
        try:
            data = read_token(secret, token, "unsubscribe")
        except InvalidToken:
            continue
        for message_id in ids:
            row = _edition_row(session, config, message_id)
            if row is not None and row.subscriber_id == data.subscriber_id and "@" in row.email:
                return Match(normalise_email(row.email), "token", row)
    for message_id in ids:
        row = _edition_row(session, config, message_id)
        if row is not None and normalise_email(row.email) in r.recipients:
            return Match(normalise_email(row.email), "message-id", row)
        confirmed_to = _confirmation_address(session, config, message_id)
        if confirmed_to is not None and confirmed_to in r.recipients:
            return Match(confirmed_to, "confirmation")
    return None


def _tokens(r: Report) -> list[str]:
    """Unsubscribe tokens in the quoted original's List-Unsubscribe (or anywhere in the text of
    a plain bounce's copy): signed, so wherever they are found they are proof."""
    texts = [r.text]
    if r.original is not None:
        texts += [str(v) for v in r.original.get_all("List-Unsubscribe") or []]
    return list(dict.fromkeys(t for text in texts for t in _TOKEN.findall(text)))


def _edition_row(session: Session, config: Config, message_id: str) -> Delivery | None:
    m = _EDITION_ID.match(message_id.lower())
    if m is None or m.group(1) not in config.newsletters:
        return None
    nl = config.newsletters[m.group(1)]
    if m.group(4) != nl.from_email.rpartition("@")[2].lower():
        return None
    try:
        day = date(int(m.group(2)[:4]), int(m.group(2)[4:6]), int(m.group(2)[6:]))
    except ValueError:
        return None
    edition = get_edition(session, nl.id, day)
    if edition is None:
        return None
    return session.scalar(
        select(Delivery).where(
            Delivery.edition_id == edition.id, Delivery.subscriber_id == int(m.group(3))
        )
    )


def _confirmation_address(session: Session, config: Config, message_id: str) -> str | None:
    m = _CONFIRM_ID.match(message_id.lower())
    if m is None or m.group(1) not in config.newsletters:
        return None
    sub = session.get(Subscriber, int(m.group(2)))
    return normalise_email(sub.email) if sub is not None else None


def _soft_count(session: Session, config: Config, hashed: str, arrived: datetime) -> int:
    """Soft bounces of different messages (an edition counts once) within the window before
    this one."""
    since = arrived - timedelta(days=config.bounces.soft_bounce_days)
    per_message = func.coalesce(BounceEvent.edition_id, -BounceEvent.id)
    n = session.scalar(
        select(func.count(func.distinct(per_message))).where(
            BounceEvent.email_hash == hashed,
            BounceEvent.kind == "soft",
            BounceEvent.received_at >= since,
            BounceEvent.received_at <= arrived,
        )
    )
    return int(n or 0)


def _describe(f: Failure) -> str:
    return " ".join(p for p in (f.status, f.diagnostic) if p)[:180]


def _date(msg: email.message.Message, at: datetime) -> datetime:
    """When the report was written (its Date), so soft bounces are counted by when they
    happened, not by when the mailbox was read; `at` when it has none or an absurd one."""
    try:
        when = parsedate_to_datetime(str(msg.get("Date") or ""))
    except (TypeError, ValueError, IndexError):
        return at
    if when.tzinfo is None or when > at + timedelta(days=1) or when < at - timedelta(days=3650):
        return at
    return when
