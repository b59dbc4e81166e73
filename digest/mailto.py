"""The mailto: half of List-Unsubscribe: read unsubscribe requests from a mailbox.

Every email's List-Unsubscribe header offers `mailto:<site.unsubscribe_mailto>?subject=
unsubscribe%20<token>` next to the one-click URL (digest/message.py), the token being the same
signed unsubscribe token as in the link. A mail client that uses the mailto sends a message with
that subject, and `digest unsubscribe --from-mbox FILE` processes the mailbox it lands in:

1. A valid unsubscribe token in the subject (or else the body) unsubscribes that subscriber
   from that newsletter; the token is the authority, whoever sends it.
2. Without a token, a message from a subscriber's own address that says "unsubscribe" (subject
   or body) unsubscribes them from every newsletter: the address is shared by all lists.
3. Automatic mail (bounces, vacation replies: Auto-Submitted, Precedence, empty or
   MAILER-DAEMON sender) is skipped.

The mailbox is only read, never changed; running it again changes nothing more.
"""

from __future__ import annotations

import email.message
import mailbox
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config
from digest.db import transaction
from digest.errors import InputError, NotFound
from subscribers.models import Subscriber, normalise_email
from subscribers.service import unsubscribe
from subscribers.tokens import InvalidToken, read_token, site_secret

# itsdangerous URL-safe tokens: base64url payload, '.', base64url signature.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}")
_BODY_LIMIT = 64 * 1024
REASON = "unsubscribe email"


@dataclass
class MailboxReport:
    """Counts of what became of each message of a mailbox (`unsubscribe`, `bounces`)."""

    path: Path
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
        return f"{self.path}: {total} message(s)" + (f": {parts}" if parts else "")


def open_mailbox(path: Path) -> mailbox.Mailbox:
    """A maildir (a folder with cur/ and new/) or an mbox file; InputError otherwise."""
    if path.is_dir():
        if not (path / "cur").is_dir() or not (path / "new").is_dir():
            raise InputError(f"{path}: a folder, but not a maildir (no cur/ and new/ inside)")
        return mailbox.Maildir(path, create=False)
    if not path.is_file():
        raise InputError(f"{path}: no such mbox file or maildir folder")
    return mailbox.mbox(path, create=False)


def each_message(path: Path) -> Iterator[email.message.Message | None]:
    """The messages of an mbox file or a maildir, in order; None for one that cannot be read.
    The mailbox is only read."""
    box = open_mailbox(path)
    try:
        for key in box.iterkeys():
            try:
                yield box.get_message(key)
            except (OSError, ValueError):
                yield None
    finally:
        box.close()


def apply_each(
    sessions: sessionmaker[Session],
    path: Path,
    handle: Callable[[Session, email.message.Message], str],
) -> MailboxReport:
    """Run `handle` on every message of the mailbox, one transaction each, counting what it
    says became of them."""
    report = MailboxReport(path)
    for msg in each_message(path):
        if msg is None:
            report.add("unreadable")
            continue
        with transaction(sessions) as session:
            report.add(handle(session, msg))
    return report


def process_mailbox(
    config: Config, sessions: sessionmaker[Session], path: Path, *, clock: Clock
) -> MailboxReport:
    """Apply every unsubscribe request in the mailbox, one transaction per message."""
    secret = site_secret(config)
    return apply_each(sessions, path, lambda s, msg: _process(s, config, secret, msg, clock))


def _process(
    session: Session, config: Config, secret: str, msg: email.message.Message, clock: Clock
) -> str:
    if _automatic(msg):
        return "automatic (skipped)"
    subject = header_text(msg, "Subject")
    body = _body(msg)
    for text in (subject, body):
        # unquote: a token copied from a mailto: link may still read `unsubscribe%20<token>`.
        for candidate in _TOKEN.findall(unquote(text)):
            try:
                data = read_token(secret, candidate, "unsubscribe")
            except InvalidToken:
                continue
            if data.newsletter not in config.newsletters:
                continue
            return _unsubscribe(session, data.subscriber_id, data.newsletter, clock)
    sender = normalise_email(parseaddr(header_text(msg, "From"))[1])
    if "unsubscribe" not in f"{subject}\n{body}".lower() or "@" not in sender:
        return "not an unsubscribe request"
    sub_id = session.scalar(select(Subscriber.id).where(Subscriber.email == sender))
    if sub_id is None:
        return "unknown sender"
    return _unsubscribe(session, sub_id, None, clock)


def _unsubscribe(session: Session, subscriber_id: int, newsletter: str | None, clock: Clock) -> str:
    try:
        changed = unsubscribe(session, subscriber_id, newsletter, reason=REASON, at=clock())
    except NotFound:
        return "already unsubscribed"
    return "unsubscribed" if changed else "already unsubscribed"


def _automatic(msg: email.message.Message) -> bool:
    auto = header_text(msg, "Auto-Submitted").strip().lower()
    precedence = header_text(msg, "Precedence").strip().lower()
    sender = parseaddr(header_text(msg, "From"))[1].lower()
    return (
        (auto not in ("", "no"))
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or not sender
        or sender.startswith(("mailer-daemon@", "postmaster@"))
    )


def header_text(msg: email.message.Message, name: str) -> str:
    """A header decoded (RFC 2047) to text; "" when absent."""
    raw = msg.get(name)
    if raw is None:
        return ""
    try:
        return str(make_header(decode_header(str(raw))))
    except (UnicodeError, LookupError, ValueError):
        return str(raw)


def text_parts(msg: email.message.Message, limit: int = _BODY_LIMIT) -> Iterator[str]:
    """Each text/* part decoded (by its charset, else UTF-8), at most `limit` bytes of it."""
    for part in msg.walk():
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            yield payload[:limit].decode(charset, errors="replace")
        except LookupError:
            yield payload[:limit].decode("utf-8", errors="replace")


def _body(msg: email.message.Message) -> str:
    return "\n".join(text_parts(msg))[:_BODY_LIMIT]
