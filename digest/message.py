"""The one place an email is built: MIME bytes for SMTP/outbox (the SendGrid request body is
SendGrid's dialect: digest.providers.sendgrid builds it from the same VariantMessage).

Everything that is the same for every recipient of a variant (From, Reply-To, List-Id,
Feedback-ID, the campaign headers, the MIME boundary and part headers, and their share of the
DKIM signature) is prepared once per variant in `VariantMessage`; per recipient only To,
Subject, Date, Message-ID, List-Unsubscribe, the two encoded bodies and, with a DKIM key
configured, the DKIM-Signature (digest.dkim) are produced. Building a message through
`email.message.EmailMessage` costs about 2 ms, which would cap an SMTP send near 500 messages/s; the bytes written here have the shape
`email.policy.SMTP` produces (CRLF line ends, quoted-printable bodies so no line passes 76
octets, RFC 2047 encoded words for non-ASCII headers), and the tests parse them back with the
stdlib `email` package.

Addresses go out in their wire form (wire_address): an internationalised domain in IDNA form,
so the message stays ASCII; only a non-ASCII mailbox name (`zoë@example.de`) is written as raw
UTF-8 in its header, as `email.policy.SMTPUTF8` (utf8=True) writes it (RFC 6532): an encoded
word cannot carry an address. Such a message needs a transport that takes UTF-8 (SMTPUTF8,
RFC 6531); providers check needs_smtputf8 before they hand it over.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from datetime import date, datetime
from email.charset import Charset
from email.header import Header
from email.utils import format_datetime, formataddr
from functools import lru_cache
from typing import NamedTuple, Protocol
from urllib.parse import quote

from digest import dkim
from digest.bounces.verp import verp_address
from digest.config import Config, NewsletterConfig
from digest.text import one_line

EDITION_HEADER = "X-Digest-Edition"
VARIANT_HEADER = "X-Digest-Variant"
PROOF_HEADER = "X-Digest-Proof"
_MAX_NAME = 200
# A display name is one encoded word (the stdlib parser puts a space between adjacent ones),
# so its UTF-8 is capped to keep the header line far below 998 octets.
_MAX_NAME_BYTES = 400
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*\Z")
_UTF8 = Charset("utf-8")

# The one rule for header values. Free text (names, subjects, titles) is cleaned: line breaks
# and tabs become a space, other control characters and bidi overrides are dropped
# (digest.text.one_line). Everything else (addresses, URLs, ids) cannot be cleaned into what
# was meant, so a value holding a control character or a line break is refused: HeaderError.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NOT_IN_ADDRESS = re.compile('[\\s<>,;:"()\\[\\]\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')


class HeaderError(ValueError):
    """A header value that cannot be made safe: an address, URL or id holding CR, LF or
    another control character. Raised by the builder for that one message."""


def refuse_unsafe(header: str, value: str) -> str:
    found = _UNSAFE.search(value)
    if found is not None:
        raise HeaderError(
            f"{header} header: {value[:80]!r} holds the control character "
            f"U+{ord(found.group()):04X}; refusing to build the message"
        )
    return value


def plain_address(header: str, address: str) -> str:
    # A List-Id's <list.example.org> is the one address-shaped value without an @.
    if _NOT_IN_ADDRESS.search(address) or ("@" not in address and header != "List-Id"):
        refuse_unsafe(header, address)
        raise HeaderError(f"{header} header: {address[:80]!r} is not a plain email address")
    return address


def display_name(name: str | None) -> str:
    """A name as a header shows it: one line, no control characters, single spaces, at most
    200 characters (and 400 UTF-8 bytes)."""
    if not name:
        return ""
    # Runs per recipient: the common name needs no cleaning, which str.isprintable proves
    # (false for every control character and every space but ASCII's). Runs of any spaces
    # become one: mail clients' address parsers fold them anyway (no-break ones included).
    shown = name.strip() if name.isprintable() and "  " not in name else _one_spaced(name)
    if len(shown) > _MAX_NAME // 2:
        shown = shown[:_MAX_NAME]
        if len(shown.encode("utf-8")) > _MAX_NAME_BYTES:
            shown = shown.encode("utf-8")[:_MAX_NAME_BYTES].decode("utf-8", "ignore")
        shown = shown.strip()
    return shown


def _one_spaced(name: str) -> str:
    return " ".join(one_line(name).split())


def wire_address(address: str) -> str:
    """An address as it goes on the wire: ASCII whenever it can be, so every server and API
    takes it — an internationalised domain in its IDNA form (`user@xn--bcher-kva.example`,
    RFC 5890); only a mailbox name that is not ASCII (`zoë@example.de`) stays UTF-8, and that
    needs SMTPUTF8 (RFC 6531) on the way (see needs_smtputf8)."""
    return address if address.isascii() else _international(address)


@lru_cache(maxsize=4096)
def _international(address: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as e:
        raise HeaderError(f"{address[:80]!r} is not a valid email address: {e}") from None
    return checked.ascii_email or checked.normalized


def needs_smtputf8(address: str) -> bool:
    """Whether the address has a non-ASCII mailbox name: only SMTPUTF8 (RFC 6531) carries
    it, in the envelope and in the message's own headers (RFC 6532)."""
    return not address.isascii() and not wire_address(address).isascii()


def mailbox(name: str | None, address: str, header: str = "To") -> str:
    """`Name <address>` for a header, or the bare address when there is no name. A name that
    is not ASCII, or that looks like an RFC 2047 encoded word ("=?"), is sent encoded, so no
    reader decodes text the name only pretended to be. The address is its wire form: ASCII,
    or UTF-8 for a non-ASCII mailbox name (an encoded word cannot carry an address)."""
    address = wire_address(plain_address(header, address))
    shown = display_name(name)
    if not shown:
        return address
    if shown.isascii() and "=?" not in shown:
        # formataddr quotes specials, but refuses an address that is not ASCII.
        quoted = formataddr((shown, "a@b"))
        return f"{quoted[: -len('<a@b>')]}<{address}>"
    return f"{_UTF8.header_encode(shown)} <{address}>"


class Content(Protocol):
    """A personalised email body (digest.render.Personalised has this shape)."""

    @property
    def subject(self) -> str: ...
    @property
    def html(self) -> str: ...
    @property
    def text(self) -> str: ...


class Addressee(NamedTuple):
    """Who one message goes to, and the per-recipient header values."""

    email: str
    name: str | None
    unsubscribe_url: str
    message_id: str  # without angle brackets
    delivery_id: int | None = None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2] or "localhost"


def message_id_parts(newsletter: NewsletterConfig, edition_date: date) -> tuple[str, str]:
    """(prefix, suffix) of an edition's Message-IDs: prefix + subscriber id + suffix."""
    return f"{newsletter.id}.{edition_date:%Y%m%d}.", f"@{domain_of(newsletter.from_email)}"


def make_message_id(newsletter: NewsletterConfig, edition_date: date, subscriber_id: int) -> str:
    """Stable per (edition, subscriber): a resent `unknown` message carries the same Message-ID,
    so receiving systems that deduplicate on it show one copy."""
    prefix, suffix = message_id_parts(newsletter, edition_date)
    return f"{prefix}{subscriber_id}{suffix}"


def campaign_id(newsletter: NewsletterConfig, edition_date: date) -> str:
    return f"{newsletter.id}/{edition_date.isoformat()}"


def feedback_id(config: Config, newsletter: NewsletterConfig, kind: str, edition: str) -> str:
    """Gmail's Feedback-ID, one per message: campaign (the kind of mail: `digest`, `confirm`),
    newsletter, edition and sender id, so its feedback loop reports spam rates per each."""
    sender = config.site.sender_id or domain_of(newsletter.from_email)
    return f"{kind}:{newsletter.id}:{edition}:{sender}"


def list_id(newsletter: NewsletterConfig) -> str:
    """RFC 2919: `Title <id.domain>`, the angle brackets even without a title."""
    value = f"{newsletter.id}.{domain_of(newsletter.from_email)}"
    shown = mailbox(newsletter.title, value, "List-Id")
    return shown if shown != value else f"<{value}>"


def list_unsubscribe(unsubscribe_url: str, mailto: str | None) -> str:
    """RFC 2369/8058 value: the one-click URL first, then a mailto carrying the same token."""
    refuse_unsafe("List-Unsubscribe", unsubscribe_url)
    if mailto:
        _checked_mailto(mailto)
    parts = [f"<{unsubscribe_url}>"]
    if mailto:
        token = unsubscribe_url.rstrip("/").rpartition("/")[2]
        # Signed tokens are URL-safe already; quote() costs ~20 µs a message otherwise.
        token = token if _URL_SAFE.match(token) else quote(token, safe="")
        parts.append(f"<mailto:{mailto}?subject=unsubscribe%20{token}>")
    return ", ".join(parts)


@lru_cache(maxsize=16)
def _checked_mailto(mailto: str) -> str:
    return plain_address("List-Unsubscribe", mailto)


def _fold(name: str, value: str, *, text: bool = False, utf8: bool = False) -> bytes:
    """One header line, folded at spaces to 78 columns; non-ASCII text as RFC 2047 encoded
    words. (email.policy.SMTP's own folder puts a long value on a continuation line, which
    the stdlib parser then reads back with a leading space.) `text` (a subject) is cleaned
    first and encoded also when it merely looks like an encoded word; any other value holding
    a control character is refused. `utf8`: the value is written as UTF-8 (RFC 6532), for an
    address an encoded word cannot carry."""
    if text:
        value = one_line(value)
    refuse_unsafe(name, value)
    if (not value.isascii() and not utf8) or (text and "=?" in value):
        value = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
        return f"{name}: {value}\r\n".encode("ascii")
    line = f"{name}: {value}"
    if len(line) <= 78:
        return f"{line}\r\n".encode()
    lines: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        if len(current) + 1 + len(word) > 78 and current.strip() and current != f"{name}:":
            lines.append(current)
            current = ""
        current += " " + word
    lines.append(current)
    return ("\r\n".join(lines) + "\r\n").encode()


_header_line = lru_cache(maxsize=1024)(_fold)


def _message_id_line(message_id: str) -> bytes:
    if _NOT_IN_ADDRESS.search(message_id):
        raise HeaderError(f"Message-ID {message_id[:80]!r} holds a space or control character")
    return b"Message-ID: <" + message_id.encode("ascii") + b">\r\n"


@lru_cache(maxsize=16)
def _date_line(when: datetime) -> bytes:
    # A batch's messages share their time: formatted once, not once a message.
    return b"Date: " + format_datetime(when).encode("ascii") + b"\r\n"


def _address_header(name: str, display: str | None, email: str) -> bytes:
    value = mailbox(display, email, name)
    return _fold(name, value, utf8=not value.isascii())


def _list_unsubscribe_line(value: str) -> bytes:
    """Fold between the URIs: the stdlib would turn long URLs into encoded words, which mail
    clients do not decode in List-Unsubscribe."""
    return ("List-Unsubscribe: " + value.replace(", ", ",\r\n ") + "\r\n").encode("ascii")


def _qp(body: str) -> bytes:
    """Quoted-printable with CRLF line ends; binascii does it in C (the stdlib's
    email.quoprimime is pure Python and ten times slower)."""
    data = body.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n"
    # b2a_qp writes CRLF soft breaks only when the first line ending it meets is CRLF: the
    # appended one guarantees that for one-line bodies; it is taken off again below.
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)[:-2]


def _sender_headers(newsletter: NewsletterConfig) -> bytes:
    head = [_address_header("From", newsletter.from_name, newsletter.from_email)]
    if newsletter.reply_to:
        head.append(_address_header("Reply-To", None, newsletter.reply_to))
    return b"".join(head)


def _part_frames(boundary: str) -> tuple[bytes, bytes, bytes]:
    """The opening lines of the text part and of the HTML part, and the closing boundary."""
    b = boundary.encode("ascii")
    text_open = (
        b"--" + b + b"\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    html_open = (
        b"--" + b + b"\r\n"
        b'Content-Type: text/html; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return text_open, html_open, b"--" + b + b"--\r\n"


class _Pieces:
    """A body split at substitution tags, static pieces already quoted-printable. Every piece
    is encoded on its own and followed by a soft line break, so each starts at column 0 and
    no line passes 76 octets whatever the values' lengths."""

    def __init__(self, body: str, tags: tuple[str, ...]) -> None:
        pattern = re.compile("(" + "|".join(re.escape(t) for t in tags) + ")") if tags else None
        parts = pattern.split(body) if pattern else [body]
        self.pieces: list[tuple[str | None, bytes]] = []  # (tag, b"") or (None, encoded text)
        for i, part in enumerate(parts):
            if i % 2:
                self.pieces.append((part, b""))
            elif part:
                self.pieces.append((None, _qp(part)))

    def fill(self, values: dict[str, str]) -> bytes:
        out = (_qp(values[tag]) if tag is not None else enc for tag, enc in self.pieces)
        return b"=\r\n".join(o for o in out if o)


class _Template:
    def __init__(self, content: Content, tags: tuple[str, ...]) -> None:
        self.content = content
        self.subject = content.subject
        self.subject_tags = [t for t in tags if t in content.subject]
        self.text = _Pieces(content.text, tags)
        self.html = _Pieces(content.html, tags)


class VariantMessage:
    """Headers and MIME frame shared by every recipient of one variant of one edition."""

    def __init__(
        self,
        config: Config,
        newsletter: NewsletterConfig,
        edition_date: date,
        variant_key: str,
        *,
        proof: bool = False,
    ) -> None:
        self.config = config
        self.newsletter = newsletter
        self.edition_date = edition_date
        self.variant_key = variant_key
        # A proof (digest.proofs) says so in a header and is no ledger row to webhooks.
        self.proof = proof
        self.campaign = campaign_id(newsletter, edition_date)
        self.list_id = list_id(newsletter)
        seed = f"{self.campaign}\0{variant_key}".encode()
        # '=' never occurs unescaped in quoted-printable text, so the boundary cannot collide.
        self.boundary = f"==digest-{hashlib.sha256(seed).hexdigest()[:24]}=="
        self.feedback_id = feedback_id(config, newsletter, "digest", f"{edition_date:%Y%m%d}")
        self._head = _sender_headers(newsletter)
        frame = [
            b"MIME-Version: 1.0\r\n",
            _header_line("List-Id", self.list_id),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            _header_line("Feedback-ID", self.feedback_id),
            _header_line(EDITION_HEADER, self.campaign),
            _header_line(VARIANT_HEADER, variant_key),
            _header_line(PROOF_HEADER, "yes") if proof else b"",
            _header_line("Content-Type", f'multipart/alternative; boundary="{self.boundary}"'),
        ]
        self._frame = b"".join(frame) + b"\r\n"
        self._text_open, self._html_open, self._close = _part_frames(self.boundary)
        self._templates: dict[int, _Template] = {}
        self._dkim = dkim.MessageSigning(config, newsletter, [self._head, *frame], _OWN_HEADERS)
        self._verp_secret: str | None = None
        if config.bounces.verp:
            from subscribers.tokens import site_secret

            self._verp_secret = site_secret(config)

    def envelope_sender(self, to: Addressee) -> str | None:
        """The SMTP envelope sender (MAIL FROM) for this recipient: a VERP address naming
        the ledger row with `bounces.verp`, else None (the provider's own)."""
        if self._verp_secret is None or to.delivery_id is None:
            return None
        return verp_address(self.config, self._verp_secret, to.delivery_id)

    def mime(
        self,
        content: Content,
        to: Addressee,
        when: datetime,
        substitutions: dict[str, str] | None = None,
    ) -> bytes:
        """The complete RFC 5322 message, CRLF line ends, every line at most 998 octets.

        With `substitutions`, `content` is a template holding their tags: its static text is
        quoted-printable-encoded once (cached) and only the values are encoded per message,
        pieces joined by soft line breaks — about ten times cheaper than encoding 40 KB."""
        if substitutions is None:
            subject, text, html = content.subject, _qp(content.text), _qp(content.html)
        else:
            t = self._template(content, tuple(substitutions))
            subject = t.subject
            for tag in t.subject_tags:
                subject = subject.replace(tag, substitutions[tag])
            text = t.text.fill(substitutions)
            html = t.html.fill(substitutions)
        own = [
            _address_header("To", to.name, to.email),
            _header_line("Subject", subject, text=True),
            _date_line(when),
            _message_id_line(to.message_id),
            _list_unsubscribe_line(
                list_unsubscribe(to.unsubscribe_url, self.config.site.unsubscribe_mailto)
            ),
        ]
        # The CRLF before each boundary belongs to the boundary (RFC 2046), so a body's own
        # final newline survives the round trip.
        body = b"".join(
            [self._text_open, text, b"\r\n", self._html_open, html, b"\r\n", self._close]
        )
        return self._dkim.message([self._head, *own, self._frame], own, body, when)

    def _template(self, content: Content, tags: tuple[str, ...]) -> _Template:
        cached = self._templates.get(id(content))
        if cached is None or cached.content is not content:
            cached = _Template(content, tags)
            self._templates[id(content)] = cached
        return cached


_OWN_HEADERS = ("To", "Subject", "Date", "Message-ID", "List-Unsubscribe")


class TransactionalMessage:
    """A message one person asked for, such as the double opt-in confirmation: From, Reply-To,
    To, Subject, Date, Message-ID and text + HTML parts. It is not bulk mail, so it carries no
    List-Id, List-Unsubscribe or List-Unsubscribe-Post. It offers the methods providers call on
    a `VariantMessage`, so it travels in an ordinary `Batch` (never with a substitution
    template); `Addressee.unsubscribe_url` is not used."""

    def __init__(self, config: Config, newsletter: NewsletterConfig, purpose: str) -> None:
        self.newsletter = newsletter
        self.purpose = purpose
        # Names the outbox files and the SendGrid category, like an edition's campaign does.
        self.campaign = f"{purpose}/{newsletter.id}"
        self.boundary = f"==digest-{hashlib.sha256(self.campaign.encode()).hexdigest()[:24]}=="
        self.feedback_id = feedback_id(config, newsletter, purpose, "signup")
        self._head = _sender_headers(newsletter)
        frame = [
            b"MIME-Version: 1.0\r\n",
            _header_line("Feedback-ID", self.feedback_id),
            _header_line("Content-Type", f'multipart/alternative; boundary="{self.boundary}"'),
        ]
        self._frame = b"".join(frame) + b"\r\n"
        self._text_open, self._html_open, self._close = _part_frames(self.boundary)
        self._dkim = dkim.MessageSigning(config, newsletter, [self._head, *frame], _OWN_HEADERS[:4])

    def envelope_sender(self, to: Addressee) -> str | None:
        return None  # bounces.return_path, as for every message without a ledger row

    def mime(self, content: Content, to: Addressee, when: datetime) -> bytes:
        """The complete RFC 5322 message, CRLF line ends (see VariantMessage.mime)."""
        own = [
            _address_header("To", to.name, to.email),
            _fold("Subject", content.subject, text=True),
            _date_line(when),
            _message_id_line(to.message_id),
        ]
        body = b"".join(
            [
                self._text_open,
                _qp(content.text),
                b"\r\n",
                self._html_open,
                _qp(content.html),
                b"\r\n",
                self._close,
            ]
        )
        return self._dkim.message([self._head, *own, self._frame], own, body, when)
