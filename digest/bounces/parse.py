"""What a message in the bounce mailbox says: a delivery status notification (RFC 3464), a
complaint (an ARF feedback report, RFC 5965), a bounce in one of the older plain-text shapes
(qmail and Yahoo's "failure notice", Exim's "Mail delivery failed"), an auto-reply, or none of
these. Pure functions over `email.message.Message`; nothing here touches the database.

Each failed recipient is classified by its enhanced status code (RFC 3463), the server's reply
code when there is no enhanced one:

| class | codes | meaning |
| --- | --- | --- |
| hard | 5.x.x except below; 5xx | the address does not work (no such user or domain, disabled) |
| soft | 4.x.x, 5.2.2; 4xx, 552 | try again later (mailbox full, greylisting, server busy) |
| blocked | 5.7.x, 5.6.x, 5.3.4 | the receiver refused the sender or the message (policy, DMARC, reputation, content, size): not the reader's address's fault |
| delayed | Action: delayed | still being retried by the sending server: nothing has failed yet |
"""

from __future__ import annotations

import email.message
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.header import Header, decode_header
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from digest.mailto import header_text, text_parts

FAILING = ("hard", "soft", "blocked")
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<![\d.])([45])(\d\d)(?:[ :-]|$)", re.MULTILINE)
# Unicode-aware: internationalised addresses (RFC 6531) come back in UTF-8 DSNs.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@\w(?:[\w.-]*\w)?")
_SPACES = re.compile(r"\s+")
_DIAGNOSTIC_LIMIT = 500
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "mailer_daemon")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|delivery (?:status notification|failure|has failed|"
    r"failed|problem)|mail delivery failed|failure notice|could not be delivered|"
    r"unzustellbar|nicht zustellbar|non remis|no entregado|non recapitabile",
    re.IGNORECASE,
)
_AUTO_SUBJECT = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|out of (?:the )?office|autoreply|"
    r"abwesenheit|vacation|away from|respuesta autom|r[ée]ponse automatique|"
    r"automatische antwort|i am out|i'm out)",
    re.IGNORECASE,
)
# Where a plain-text bounce starts its copy of the original message.
_COPY_MARKERS = re.compile(
    r"^(?:-+ ?(?:Below this line is a copy of the message|This is a copy of the message|"
    r"Original message follows|Undelivered message follows)|Original message headers:|"
    r"-+ ?Original message ?-+|------ This is a copy of the message, including all the headers)",
    re.IGNORECASE | re.MULTILINE,
)
_PERMANENT = re.compile(r"permanent (?:error|failure)|I've given up|giving up", re.IGNORECASE)
_TEMPORARY = re.compile(
    r"temporary (?:error|failure)|has been delayed|not yet been delivered|will (?:continue to|"
    r"keep) try|still trying|message (?:is )?delayed",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Failure:
    """One recipient a report is about."""

    recipient: str | None  # the address named (lower-case), if any
    status: str | None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the server's words, on one line
    kind: str  # hard | soft | blocked | delayed | delivered


@dataclass(frozen=True)
class Report:
    """What one message says. kind: `bounce` (DSN or plain-text), `complaint` (ARF abuse,
    fraud, virus, other), `not-spam` (ARF), `auth-failure` (a DMARC forensic report, not a
    complaint), `auto-reply`, or `other`."""

    kind: str
    fingerprint: str
    failures: tuple[Failure, ...] = ()
    # The original message as the report quotes it (headers at least), when it does.
    original: email.message.Message | None = None
    # Addresses the report was delivered to or names as the original's envelope sender:
    # where a VERP return path shows up.
    envelope: tuple[str, ...] = ()
    feedback_type: str | None = None
    text: str = field(default="", repr=False)  # the human-readable part, for token search

    @property
    def message_ids(self) -> tuple[str, ...]:
        """Message-IDs of the original message the report is about (without <>)."""
        found: list[str] = []
        if self.original is not None:
            found += [_strip_id(v) for v in self.original.get_all("Message-ID") or []]
        found += [_strip_id(m) for m in re.findall(r"(?im)^Message-ID:\s*(<[^>\s]+>)", self.text)]
        return tuple(dict.fromkeys(f for f in found if f))

    @property
    def recipients(self) -> set[str]:
        return {f.recipient for f in self.failures if f.recipient is not None}


def read_report(msg: email.message.Message) -> Report:
    """Classify and read one message of the bounce mailbox. Never raises on odd input."""
    fingerprint = _fingerprint(msg)
    parts = list(_walk(msg))
    types = {p.get_content_type() for p in parts}
    if "message/feedback-report" in types:
        return _arf(msg, parts, fingerprint)
    if types & {"message/delivery-status", "message/global-delivery-status"}:
        return _dsn(msg, parts, fingerprint)
    if _looks_like_bounce(msg):
        return _plain_bounce(msg, parts, fingerprint)
    if _auto_reply(msg):
        return Report("auto-reply", fingerprint)
    return Report("other", fingerprint)


def classify(status: str | None, diagnostic: str = "") -> tuple[str | None, str]:
    """(enhanced status, hard|soft|blocked) from a Status field and/or the server's reply."""
    enhanced = _ENHANCED.search(diagnostic)
    if status is None or (status.endswith(".0.0") and enhanced and enhanced[1] == status[0]):
        status = enhanced.group(0) if enhanced else status
    if status is not None:
        klass, subject, detail = status.split(".")
        if klass == "2":
            return status, "delivered"
        if klass == "4":
            return status, "soft"
        if subject in ("6", "7") or (subject, detail) == ("3", "4"):
            return status, "blocked"
        if (subject, detail) == ("2", "2"):
            return status, "soft"
        return status, "hard"
    basic = _BASIC.search(diagnostic)
    if basic is not None:
        code = basic.group(1) + basic.group(2)
        return None, "soft" if code[0] == "4" or code == "552" else "hard"
    if _PERMANENT.search(diagnostic):
        return None, "hard"
    return None, "soft"


# --- RFC 3464 delivery status notifications ---------------------------------------------------


def _dsn(msg: email.message.Message, parts: list[email.message.Message], fp: str) -> Report:
    failures: list[Failure] = []
    for part in parts:
        if part.get_content_type() not in (
            "message/delivery-status",
            "message/global-delivery-status",
        ):
            continue
        for block in _field_blocks(part):
            if not any(block.get(k) for k in ("Final-Recipient", "Original-Recipient", "Action")):
                continue  # the per-message block
            failures.append(_recipient_failure(block))
    return Report(
        "bounce",
        fp,
        tuple(failures),
        original=_original(parts),
        envelope=_envelope(msg),
        text=_human_text(msg),
    )


def _recipient_failure(block: email.message.Message) -> Failure:
    recipient = _address_field(block.get("Final-Recipient")) or _address_field(
        block.get("Original-Recipient")
    )
    action = _one_line(block.get("Action")).lower()
    status_m = _ENHANCED.search(_one_line(block.get("Status")))
    diagnostic = _one_line(block.get("Diagnostic-Code"))
    diagnostic = re.sub(r"^(?:smtp|x-[\w-]+|x-unix)\s*;\s*", "", diagnostic, flags=re.IGNORECASE)
    status, kind = classify(status_m.group(0) if status_m else None, diagnostic)
    if action in ("delivered", "relayed", "expanded"):
        kind = "delivered"
    elif action == "delayed":
        kind = "delayed"
    diagnostic = diagnostic or _one_line(block.get("Status")) or action
    return Failure(recipient, status, diagnostic[:_DIAGNOSTIC_LIMIT], kind)


def _field_blocks(part: email.message.Message) -> Iterator[email.message.Message]:
    """The header blocks of a delivery-status part (the stdlib parses message/delivery-status
    into a list of them; the UTF-8 global variant comes as text)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, email.message.Message):
                yield block
                # Unknown message/* types (the global variant, feedback reports) are read as
                # one enclosed message: its headers the first block, its body the others.
                rest = block.get_payload(decode=True)
                if isinstance(rest, bytes) and rest.strip():
                    yield from _text_blocks(rest.decode("utf-8", "replace"))
        return
    raw = part.get_payload(decode=True)
    yield from _text_blocks(
        raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    )


def _text_blocks(text: str) -> Iterator[email.message.Message]:
    for chunk in re.split(r"\r?\n\s*\r?\n", text):
        if chunk.strip():
            yield HeaderParser().parsestr(chunk.strip() + "\n")


def _address_field(value: object) -> str | None:
    """`rfc822; ann@example.com` (RFC 3464 address fields) → ann@example.com."""
    text = _one_line(value)
    if not text:
        return None
    text = text.partition(";")[2] if ";" in text else text
    found = _ADDRESS.search(text)
    return found.group(0).lower() if found else None


# --- RFC 5965 feedback reports (complaints) -----------------------------------------------


def _arf(msg: email.message.Message, parts: list[email.message.Message], fp: str) -> Report:
    fields = email.message.Message()
    for part in parts:
        if part.get_content_type() == "message/feedback-report":
            # The stdlib reads an unknown message/* part as an enclosed message: its headers
            # are the report's fields.
            fields = next(_field_blocks(part), fields)
            break
    feedback = _one_line(fields.get("Feedback-Type")).lower() or "other"
    kind = {"not-spam": "not-spam", "auth-failure": "auth-failure"}.get(feedback, "complaint")
    recipient = _address_field(fields.get("Original-Rcpt-To"))
    envelope = _envelope(msg)
    mail_from = _address_field(fields.get("Original-Mail-From"))
    original = _original(parts)
    if original is not None:
        envelope += tuple(a for _, a in getaddresses(original.get_all("Return-Path") or []) if a)
    return Report(
        kind,
        fp,
        (Failure(recipient, None, f"feedback report: {feedback}", kind),),
        original=original,
        envelope=envelope + ((mail_from,) if mail_from else ()),
        feedback_type=feedback,
        text=_human_text(msg),
    )


# --- plain-text bounces ----------------------------------------------------------------------


def _looks_like_bounce(msg: email.message.Message) -> bool:
    sender = parseaddr(header_text(msg, "From"))
    local = sender[1].partition("@")[0].lower()
    name = sender[0].lower()
    return (
        msg.get("X-Failed-Recipients") is not None
        or local in _BOUNCE_SENDERS
        or "mail delivery" in name
        or header_text(msg, "Return-Path").strip() == "<>"
        or (bool(_BOUNCE_SUBJECT.search(header_text(msg, "Subject"))) and not _auto_reply(msg))
    )


def _plain_bounce(
    msg: email.message.Message, parts: list[email.message.Message], fp: str
) -> Report:
    text = _human_text(msg)
    human, copy = _split_copy(text)
    failed = [
        a.strip().lower()
        for a in ",".join(msg.get_all("X-Failed-Recipients") or []).split(",")
        if "@" in a
    ]
    failures = list(_plain_failures(human, failed))
    if not failures:
        if _TEMPORARY.search(human) and not _PERMANENT.search(human):
            kind = "delayed"
            status = None
        else:
            status, kind = classify(None, human)
        first = next((line.strip() for line in human.splitlines() if line.strip()), "")
        targets: list[str | None] = list(failed) or [None]
        failures = [Failure(a, status, _one_line(first)[:_DIAGNOSTIC_LIMIT], kind) for a in targets]
    original = _original(parts) or (HeaderParser().parsestr(copy) if copy else None)
    return Report(
        "bounce", fp, tuple(failures), original=original, envelope=_envelope(msg), text=text
    )


def _plain_failures(human: str, failed: list[str]) -> Iterator[Failure]:
    """Recipient paragraphs of qmail/Yahoo (`<ann@example.com>:` then the reply) and Exim
    (an indented address, then the indented reply) bounces."""
    lines = human.splitlines()
    temporary = bool(_TEMPORARY.search(human)) and not _PERMANENT.search(human)
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*<?([^\s<>]+@[^\s<>:]+)>?:?\s*(.*)$", line)
        if m is None or (failed and m.group(1).lower() not in failed):
            continue
        address = m.group(1).lower().rstrip(".")
        if address in seen or not _ADDRESS.fullmatch(address):
            continue
        reply = [m.group(2)] + list(_paragraph(lines[i + 1 :]))
        diagnostic = _one_line(" ".join(reply))
        if not diagnostic and not failed:
            continue  # an address mentioned in passing, not a recipient paragraph
        seen.add(address)
        status, kind = classify(None, diagnostic or human)
        if temporary:
            kind = "delayed"  # a warning: the sending server is still trying
        yield Failure(address, status, diagnostic[:_DIAGNOSTIC_LIMIT], kind)


def _paragraph(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if not line.strip() or re.match(r"^\s*<?[^\s<>]+@[^\s<>:]+>?:\s*$", line):
            return
        yield line.strip()


def _split_copy(text: str) -> tuple[str, str]:
    """(the explanation, the quoted copy of the original's headers) of a plain bounce."""
    m = _COPY_MARKERS.search(text)
    if m is None:
        return text, ""
    rest = text[m.end() :].split("\n", 1)[1] if "\n" in text[m.end() :] else ""
    return text[: m.start()], rest.lstrip("\r\n")


# --- auto-replies and common helpers -------------------------------------------------------------


def _auto_reply(msg: email.message.Message) -> bool:
    auto = header_text(msg, "Auto-Submitted").strip().lower()
    return (
        auto.startswith("auto-replied")
        or msg.get("X-Autoreply") is not None
        or msg.get("X-Autorespond") is not None
        or header_text(msg, "X-Autogenerated").lower() == "reply"
        or header_text(msg, "Precedence").strip().lower() == "auto_reply"
        or bool(_AUTO_SUBJECT.search(header_text(msg, "Subject").strip()))
        or auto.startswith("auto-generated")
    )


def _walk(msg: email.message.Message) -> Iterator[email.message.Message]:
    """Every part, without descending into enclosed messages (their parts are not the
    report's)."""
    yield msg
    payload = msg.get_payload()
    if msg.is_multipart() and msg.get_content_maintype() == "multipart":
        for part in payload if isinstance(payload, list) else []:
            if isinstance(part, email.message.Message):
                yield from _walk(part)


def _original(parts: list[email.message.Message]) -> email.message.Message | None:
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global", "message/global-headers"):
            payload = part.get_payload()
            if (
                isinstance(payload, list)
                and payload
                and isinstance(payload[0], email.message.Message)
            ):
                return payload[0]
        if ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
            return HeaderParser().parsestr(text.lstrip("\r\n"))
    return None


def _envelope(msg: email.message.Message) -> tuple[str, ...]:
    """Where the report was delivered: the VERP address, when the original had one."""
    found: list[str] = []
    for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To"):
        for value in msg.get_all(name) or []:
            found += [a.lower() for _, a in getaddresses([str(value)]) if "@" in a]
    return tuple(dict.fromkeys(found))


def _human_text(msg: email.message.Message) -> str:
    """The text/plain parts outside any enclosed message (the explanation)."""
    out = []
    for part in _walk(msg):
        if part.get_content_type() == "text/plain":
            out += list(text_parts(part))
    return "\n".join(out).replace("\r\n", "\n")


def _fingerprint(msg: email.message.Message) -> str:
    own = _strip_id(str(msg.get("Message-ID") or ""))
    if own:
        return hashlib.sha256(b"id:" + own.encode("utf-8", "replace")).hexdigest()
    try:
        raw = msg.as_bytes()
    except (UnicodeError, LookupError, ValueError, TypeError):
        raw = str(msg.items()).encode("utf-8", "replace")
    return hashlib.sha256(b"raw:" + raw[:65536]).hexdigest()


def _strip_id(value: str) -> str:
    return value.strip().strip("<>").strip()


def _one_line(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Header):
        # Raw 8-bit bytes in a field (RFC 6532's UTF-8 DSNs): the stdlib hands them over as
        # an `unknown-8bit` Header; read them as UTF-8.
        text = "".join(
            part.decode("utf-8", "replace") if isinstance(part, bytes) else part
            for part, _ in decode_header(value)
        )
    else:
        text = str(value)
    return _SPACES.sub(" ", text).strip()
