"""The one rule for headers: whatever text a name, subject or newsletter title holds, the built
message carries exactly the headers that were meant, for SMTP/outbox bytes and SendGrid bodies
alike; addresses and URLs holding a line break are refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, SendGridConfig, SmtpConfig, load_config
from digest.message import Addressee, HeaderError, TransactionalMessage, VariantMessage
from digest.providers.sendgrid import sendgrid_body, sendgrid_personalization
from digest.render import Personalised
from digest.sending import SendOptions, send_edition
from digest.text import one_line
from subscribers.models import Subscriber
from tests.conftest import DATA
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population, email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import USERNAME, SmtpServer
from tests.render_support import EDITION_DATE, store_edition

CONFIG = load_config(DATA / "digest.toml")  # hypothesis tests take no function-scoped fixtures
WHEN = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)
DAY = date(2026, 3, 10)
CONTENT = Personalised(subject="Today", html="<p>Hello</p>\n", text="Hello\n")
INJECTION = "Friend\r\nBcc: victim@evil.example\r\nX-Injected: 1\r\n\r\nforged body"
DIGEST_HEADERS = [
    "From",
    "Reply-To",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "MIME-Version",
    "List-Id",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "X-Digest-Edition",
    "X-Digest-Variant",
    "Content-Type",
]
# Any text, lone surrogates left out (no stored value can hold one: they cannot be encoded).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
HOSTILE = st.lists(
    st.sampled_from(
        ["\r\n", "\n", "\r", "\x00", "\t", "\x85", "\u2028", "\u202e", "=?utf-8?q?=0D=0A?="]
    )
    | TEXT,
    max_size=6,
).map("".join)


def parsed(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.SMTP)
    assert isinstance(msg, EmailMessage)
    return msg


def build(config: Config, title: str, name: str, subject: str) -> bytes:
    nl = replace(config.newsletter("daily"), title=title, from_name=title)
    message = VariantMessage(config, nl, DAY, "v-1")
    to = Addressee(
        "ann@example.com", name, "https://news.example/u/tok", "daily.20260310.7@x.example", 7
    )
    return message.mime(replace(CONTENT, subject=subject), to, WHEN)


def shown(name: str) -> str:
    """The name intact apart from its control characters; runs of spaces are one space; cut
    to the documented 200 characters and 400 UTF-8 bytes (at a character)."""
    text = " ".join(one_line(name).split())[:200]
    return text.encode("utf-8")[:400].decode("utf-8", "ignore").strip()


def display(msg: EmailMessage, header: str) -> str:
    (address,) = msg[header].addresses
    return str(address.display_name)


@settings(max_examples=200, deadline=None)
@given(name=HOSTILE, title=HOSTILE, subject=HOSTILE)
@example(name=INJECTION, title="Gazette\r\nBcc: x@evil.example", subject="Hi\nX-Injected: 1")
@example(name="=?utf-8?q?a=0D=0ABcc:_x@evil.example?=", title="T", subject="=?utf-8?b?DQo=?=")
def test_any_name_title_and_subject_give_exactly_the_headers_meant(
    name: str, title: str, subject: str
) -> None:
    raw = build(CONFIG, title, name, subject)
    msg = parsed(raw)
    assert list(msg.keys()) == DIGEST_HEADERS
    assert not msg.defects
    for header in DIGEST_HEADERS:
        assert not msg[header].defects, header
    assert display(msg, "To") == shown(name)
    assert msg["To"].addresses[0].addr_spec == "ann@example.com"
    assert display(msg, "From") == shown(title)
    assert str(msg["Subject"]) == one_line(subject)
    assert str(msg["List-Id"]).endswith("<daily.news.example>")
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hello\n"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_the_name_is_intact_apart_from_control_characters(config: Config) -> None:
    msg = parsed(build(config, "The Test Gazette", "Zoë \u202eO'Brien\r\n (Ed.)", "Hi"))
    assert display(msg, "To") == "Zoë O'Brien (Ed.)"


@settings(max_examples=100, deadline=None)
@given(name=HOSTILE, title=HOSTILE, subject=HOSTILE)
@example(name=INJECTION, title="Gazette\r\nBcc: x@evil.example", subject="Hi\r\nBcc: y")
def test_sendgrid_bodies_carry_no_control_character_in_names_or_subjects(
    name: str, title: str, subject: str
) -> None:
    nl = replace(CONFIG.newsletter("daily"), title=title, from_name=title)
    message = VariantMessage(CONFIG, nl, DAY, "v-1")
    to = Addressee("ann@example.com", name, "https://news.example/u/tok", "m@x.example", 7)
    body = sendgrid_body(
        message,
        replace(CONTENT, subject=subject),
        [sendgrid_personalization(message, to, subject=subject)],
    )
    (p,) = body["personalizations"]
    values = [
        body["subject"],
        body["from"].get("name", ""),
        p["subject"],
        p["to"][0].get("name", ""),
        *body["headers"].values(),
        *p["headers"].values(),
    ]
    assert all(one_line(v) == v for v in values), values
    assert p["to"][0].get("name", "") == shown(name)
    assert body["subject"] == one_line(subject)


def test_a_confirmation_email_follows_the_same_rule(config: Config) -> None:
    nl = replace(config.newsletter("daily"), title=INJECTION, from_name=INJECTION)
    to = Addressee("ann@example.com", INJECTION, "", "confirm.1@x.example", 1)
    raw = TransactionalMessage(config, nl, "confirm").mime(
        replace(CONTENT, subject=INJECTION), to, WHEN
    )
    msg = parsed(raw)
    assert list(msg.keys()) == [
        "From",
        "Reply-To",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Feedback-ID",
        "Content-Type",
    ]
    assert display(msg, "To") == shown(INJECTION)
    head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert not [line for line in head if line.startswith((b"Bcc", b"X-Injected"))]


@pytest.mark.parametrize(
    "field, value",
    [
        ("email", "ann@example.com\r\nBcc: victim@evil.example"),
        ("email", "ann@example.com>, <victim@evil.example"),
        ("unsubscribe_url", "https://news.example/u/t\r\nX-Injected: 1"),
        ("message_id", "m@x.example>\r\nBcc: v@evil.example"),
    ],
)
def test_addresses_urls_and_ids_with_line_breaks_are_refused(
    config: Config, field: str, value: str
) -> None:
    message = VariantMessage(config, config.newsletter("daily"), DAY, "v-1")
    to = Addressee("ann@example.com", "Ann", "https://news.example/u/tok", "m@x.example", 7)
    to = to._replace(**{field: value})
    with pytest.raises(HeaderError):
        message.mime(CONTENT, to, WHEN)
    if field != "message_id":  # SendGrid sets the Message-ID itself
        with pytest.raises(HeaderError):
            sendgrid_personalization(message, to)


def test_a_reply_to_or_from_address_with_a_line_break_is_refused(config: Config) -> None:
    to = Addressee("ann@example.com", "Ann", "https://news.example/u/tok", "m@x.example", 7)
    for key in ("from_email", "reply_to"):
        nl = replace(config.newsletter("daily"), **{key: "a@news.example\r\nBcc: v@evil.example"})
        with pytest.raises(HeaderError):
            VariantMessage(config, nl, DAY, "v-1").mime(CONTENT, to, WHEN)
        with pytest.raises(HeaderError):
            sendgrid_body(VariantMessage(config, nl, DAY, "v-1"), CONTENT, [])


# --- end to end: names stored before entry points cleaned them still build safe messages -----


def _legacy_names(sessions: sessionmaker[Session], now: datetime) -> dict[str, str]:
    """Subscribers whose names hold injections, written straight to the table (as an older
    version, or another tool, could have left them)."""
    with sessions.begin() as session:
        store_edition(session)
        ids = add_population(session, 3, now)
        names = {email_for(1): INJECTION, email_for(2): "Bare\nLF", email_for(3): "Bare\rCR"}
        for sid, (email, name) in zip(ids, names.items(), strict=True):
            session.execute(update(Subscriber).where(Subscriber.id == sid).values(name=name))
            assert session.get(Subscriber, sid).email == email  # type: ignore[union-attr]
    return names


def _send(config: Config, sessions: sessionmaker[Session], now: datetime, provider: str) -> None:
    options = SendOptions(provider=provider)
    report = send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))
    assert report.sent_now == 3


def test_smtp_messages_to_hostile_names_carry_exactly_the_headers_meant(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    names = _legacy_names(sessions, now)
    smtp = SmtpConfig(port=smtp_server.port, security="starttls", username=USERNAME, timeout=5)
    _send(replace(config, smtp=smtp), sessions, now, "smtp")
    for rcpts, raw in smtp_server.received:
        assert rcpts in ([email_for(1)], [email_for(2)], [email_for(3)])
        msg = parsed(raw)
        assert list(msg.keys()) == DIGEST_HEADERS
        assert display(msg, "To") == shown(names[rcpts[0]])
        assert msg["To"].addresses[0].addr_spec == rcpts[0]
        assert msg.get_body(("html",)) is not None and msg.get_body(("plain",)) is not None


def test_sendgrid_requests_to_hostile_names_carry_no_line_break(
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    names = _legacy_names(sessions, now)
    sg = SendGridConfig(host=sendgrid_server.url, timeout=2.0)
    _send(replace(config, sendgrid=sg), sessions, now, "sendgrid")
    delivered = {d.email: d for d in sendgrid_server.delivered()}
    assert {e: d.name for e, d in delivered.items()} == {e: shown(n) for e, n in names.items()}
    for d in delivered.values():
        assert all(one_line(v) == v for v in (d.subject, *d.headers.values()))
