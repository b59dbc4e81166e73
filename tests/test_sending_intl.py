"""Internationalised addresses: `zoë@example.de` (a non-ASCII mailbox name, RFC 6531/6532) and
`user@bücher.example` (an internationalised domain, RFC 5890), through every provider, the
preview, `subscribers add` and `subscribers import`."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from email import message_from_string, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery
from digest.message import Addressee, VariantMessage, needs_smtputf8, wire_address
from digest.providers.sendgrid import NO_UTF8_MAILBOX
from digest.providers.smtp import NO_SMTPUTF8
from digest.render import Personalised
from digest.sending import SendOptions, send_edition
from digest_cli import cli
from subscribers.models import Subscriber, normalise_email
from subscribers.service import add_subscriber
from tests.fakes.fixtures import sendgrid_server, tls_cert  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE
from tests.test_sending_ledger import (  # noqa: F401
    FAST,
    edition,
    populate,
    with_outbox,
    with_sendgrid,
    with_smtp,
)

ZOE = "zoë@example.de"
BOOKS = "user@bücher.example"
BOOKS_WIRE = "user@xn--bcher-kva.example"


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_string(raw.decode("utf-8"), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def add_readers(sessions: sessionmaker[Session], config: Config, now: datetime) -> None:
    populate(sessions, 3, now)
    nl = config.newsletter("daily")
    with sessions.begin() as session:
        add_subscriber(session, nl, ZOE, at=now, name="Zoë Müller")
        add_subscriber(session, nl, BOOKS, at=now, name="Bea")


def states(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str | None]]:
    with sessions() as session:
        rows = session.execute(select(Delivery.email, Delivery.state, Delivery.last_error))
        return {email: (state, error) for email, state, error in rows}


def send(config: Config, sessions: sessionmaker[Session], now: datetime, provider: str):
    options = SendOptions(provider=provider, retry=FAST)
    return send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))


# --- the message ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "Zoe", "Zoë Müller", 'Zo "the" ë'])
def test_a_non_ascii_mailbox_is_written_in_utf8_headers(config: Config, name: str | None) -> None:
    v = VariantMessage(config, config.newsletter("daily"), EDITION_DATE, "v-1")
    to = Addressee(ZOE, name, "https://news.example/u/t", "m.1@news.example", 1)
    raw = v.mime(Personalised("Hi", "<p>Hi</p>", "Hi"), to, datetime(2026, 3, 10))
    msg = parse(raw)
    (address,) = msg["To"].addresses
    assert address.addr_spec == ZOE
    assert address.display_name == (name or "")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_an_internationalised_domain_goes_in_idna_form(config: Config) -> None:
    assert wire_address(BOOKS) == BOOKS_WIRE and not needs_smtputf8(BOOKS)
    assert needs_smtputf8(ZOE) and not needs_smtputf8("ann@example.org")
    v = VariantMessage(config, config.newsletter("daily"), EDITION_DATE, "v-1")
    to = Addressee(BOOKS, "Bea", "https://news.example/u/t", "m.1@news.example", 1)
    raw = v.mime(Personalised("Hi", "<p>Hi</p>", "Hi"), to, datetime(2026, 3, 10))
    assert raw.isascii()
    assert parse(raw)["To"].addresses[0].addr_spec == BOOKS_WIRE


def test_the_stored_form_is_one_per_address() -> None:
    assert normalise_email("Zoe\u0308@Example.DE") == ZOE  # decomposed, mixed case
    assert normalise_email("USER@XN--BCHER-KVA.example") == BOOKS


# --- providers -----------------------------------------------------------------------------


@pytest.mark.parametrize("smtputf8", [True, False])
def test_smtp_uses_smtputf8_when_offered_and_fails_that_row_alone_when_not(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    tls_cert: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    smtputf8: bool,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "s3cret-pass")
    add_readers(sessions, config, now)
    with SmtpServer(*tls_cert, smtputf8=smtputf8) as server:
        report = send(with_smtp(config, server), sessions, now, "smtp")
        counts = server.counts()
        messages = {m["To"].addresses[0].addr_spec: m for m in server.messages()}

    plain = {email_for(i): 1 for i in range(1, 4)}
    got = states(sessions)
    assert got[BOOKS][0] == "sent" and messages[BOOKS_WIRE]["To"].addresses[0].username == "user"
    if smtputf8:
        assert counts == Counter({**plain, ZOE: 1, BOOKS_WIRE: 1})
        assert report.sent_now == 5 and got[ZOE] == ("sent", None)
        zoe = messages[ZOE]
        assert zoe["To"].addresses[0].display_name == "Zoë Müller"
    else:
        assert counts == Counter({**plain, BOOKS_WIRE: 1})
        assert report.sent_now == 4 and report.failed_now == 1
        assert got[ZOE] == ("failed", NO_SMTPUTF8)


def test_sendgrid_takes_the_idna_domain_and_fails_a_non_ascii_mailbox_alone(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    add_readers(sessions, config, now)

    report = send(with_sendgrid(config, sendgrid_server), sessions, now, "sendgrid")

    assert sendgrid_server.rejected == []  # the stand-in (as SendGrid) 400s non-ASCII addresses
    assert sendgrid_server.counts() == Counter(
        {**{email_for(i): 1 for i in range(1, 4)}, BOOKS_WIRE: 1}
    )
    got = states(sessions)
    assert got[ZOE] == ("failed", NO_UTF8_MAILBOX)
    assert got[BOOKS][0] == "sent"
    assert report.sent_now == 4 and report.failed_now == 1


def test_the_sendgrid_stand_in_refuses_a_non_ascii_address_as_sendgrid_does(
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    from tests.fakes.sendgrid import limit_errors

    body = {"personalizations": [{"to": [{"email": ZOE}]}]}
    assert limit_errors(body, 0.0) == [
        {"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email"}
    ]


def test_the_outbox_writes_every_internationalised_message(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    tmp_path: Path,
) -> None:
    add_readers(sessions, config, now)

    report = send(with_outbox(config, tmp_path / "out"), sessions, now, "outbox")

    assert report.sent_now == 5 and report.failed_now == 0
    to = {
        parse(p.read_bytes())["To"].addresses[0].addr_spec for p in (tmp_path / "out").glob("*.eml")
    }
    assert {ZOE, BOOKS_WIRE} <= to


# --- the CLI: preview, add, import ---------------------------------------------------------


@pytest.fixture
def cli_env(
    db_url: str, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_preview_eml_for_a_non_ascii_mailbox_is_what_the_send_delivers(
    cli_env: CliRunner,
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,  # noqa: F811
    now: datetime,
    tmp_path: Path,
) -> None:
    add_readers(sessions, config, now)
    args = ["preview", "daily", "--date", "2026-03-10", "--subscriber", ZOE, "--format", "eml"]
    preview = cli_env.invoke(cli, args, catch_exceptions=False)
    assert preview.exit_code == 0, preview.output
    assert parse(preview.stdout_bytes)["To"].addresses[0].addr_spec == ZOE

    sent = cli_env.invoke(cli, ["send", "daily", "--date", "2026-03-10"], catch_exceptions=False)
    assert "sent 5, failed 0" in sent.stdout, sent.output
    (file,) = [p for p in (tmp_path / "outbox").glob("*.eml") if ZOE.encode() in p.read_bytes()]

    def without_date(raw: bytes) -> bytes:
        return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\n", raw)

    assert without_date(preview.stdout_bytes) == without_date(file.read_bytes())


def test_subscribers_add_accepts_them_and_says_who_can_reach_them(
    cli_env: CliRunner, sessions: sessionmaker[Session]
) -> None:
    zoe = cli_env.invoke(cli, ["subscribers", "add", "Zoë@example.de", "-n", "daily"])
    books = cli_env.invoke(cli, ["subscribers", "add", "user@BÜCHER.example", "-n", "daily"])
    plain = cli_env.invoke(cli, ["subscribers", "add", "ann@example.org", "-n", "daily"])

    assert zoe.exit_code == 0 and books.exit_code == 0, zoe.output + books.output
    assert zoe.stdout.splitlines()[1] == (
        f"note: {ZOE} has a non-ASCII mailbox name: SMTP delivers it only through a server "
        "that offers SMTPUTF8 (otherwise that one message fails), SendGrid cannot send to "
        "it, the outbox writes it"
    )
    assert books.stdout.splitlines()[1] == (
        f"note: {BOOKS} has an internationalised domain: it is sent as {BOOKS_WIRE}, which "
        "every provider reaches"
    )
    assert "note:" not in plain.stdout
    with sessions() as session:
        stored = set(session.scalars(select(Subscriber.email)))
    assert stored == {ZOE, BOOKS, "ann@example.org"}


def test_subscribers_import_accepts_them_and_notes_who_can_reach_them(
    cli_env: CliRunner, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text(
        f"email,name\n{ZOE},Zoë\njosé@example.es,José\n{BOOKS},Bea\nann@example.org,Ann\n",
        encoding="utf-8",
    )
    result = cli_env.invoke(cli, ["subscribers", "import", str(csv), "-n", "daily"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "4 added" in lines[0]
    assert lines[1].startswith(
        f"note: 2 address(es) have a non-ASCII mailbox name (e.g. {ZOE}): SMTP delivers them "
        "only through a server that offers SMTPUTF8"
    )
    assert lines[2] == (
        f"note: 1 address(es) have an internationalised domain (e.g. {BOOKS}): sent in IDNA "
        "(xn--) form, which every provider reaches"
    )
    with sessions() as session:
        assert len(list(session.scalars(select(Subscriber.email)))) == 4


# --- any address the validator accepts -------------------------------------------------------

_LETTERS = st.characters(categories=("Ll", "Lu", "Lo", "Nd"), max_codepoint=0x2FFF)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    local = draw(st.text(_LETTERS, min_size=1, max_size=20))
    labels = draw(st.lists(st.text(_LETTERS, min_size=1, max_size=12), min_size=1, max_size=2))
    address = f"{local}@{'.'.join(labels)}.example"
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        assume(False)
        raise


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(address=addresses(), name=st.one_of(st.none(), st.text(max_size=40)))
def test_every_valid_address_round_trips_through_the_to_header(
    config: Config, address: str, name: str | None
) -> None:
    v = VariantMessage(config, config.newsletter("daily"), EDITION_DATE, "v-1")
    to = Addressee(address, name, "https://news.example/u/t", "m.1@news.example", 1)
    raw = v.mime(Personalised("Hi", "<p>Hi</p>", "Hi"), to, datetime(2026, 3, 10))
    head = raw.partition(b"\r\n\r\n")[0]
    assert raw.isascii() == (not needs_smtputf8(address))
    (got,) = parse(raw)["To"].addresses
    assert got.addr_spec == wire_address(address)
    assert normalise_email(got.addr_spec) == normalise_email(address)
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
