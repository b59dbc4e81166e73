"""Proofs: the exact stored edition to the desk's addresses, through the newsletter's provider
(outbox, a real SMTP server, the SendGrid stand-in), recorded apart from the readers' ledger,
never freezing the edition."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition, load_edition
from digest.errors import InputError, ProviderError
from digest.ledger import Delivery
from digest.preview import preview_mail
from digest.proofs import Proof, send_proof
from digest_cli import cli
from tests.cli_support import set_cli_clock
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import VARIANTS, add_population, email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE, store_edition
from tests.test_sending_ledger import with_outbox, with_sendgrid, with_smtp

DESK = ["desk@news.example", "night.editor@news.example"]


@pytest.fixture
def edition(sessions: sessionmaker[Session], now: datetime) -> Edition:
    with sessions.begin() as session:
        e = store_edition(session)
        add_population(session, 20, now)
    return e


def parsed(path: Path) -> EmailMessage:
    msg = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def untouched(sessions: sessionmaker[Session]) -> None:
    """The readers' ledger is empty and the edition still a draft."""
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert load_edition(session, "daily", EDITION_DATE).status == "draft"


def test_every_variant_goes_to_each_desk_address_through_the_outbox(
    config: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    config = with_outbox(config, tmp_path / "out")
    report = send_proof(
        config, sessions, config.newsletter("daily"), EDITION_DATE, [",".join(DESK)], by="ana",
        clock=fixed(now),
    )  # fmt: skip
    assert report.sent == len(VARIANTS) * 2 and report.failed == 0
    assert report.summary().endswith(
        f"proof of daily {EDITION_DATE} via outbox: 20 sent, 0 failed (the readers' ledger is "
        "untouched)"
    )
    files = sorted((tmp_path / "out" / "proofs").glob("*.eml"))
    assert len(files) == 20
    assert list((tmp_path / "out").glob("*.eml")) == []  # nothing where readers' copies go
    messages = [parsed(f) for f in files]
    assert {m["To"] for m in messages} == set(DESK)
    assert len({m["X-Digest-Variant"] for m in messages}) == len(VARIANTS)
    with sessions() as session:
        sample = preview_mail(session, config, config.newsletter("daily"), EDITION_DATE)
    for m in messages:
        assert m["Subject"].startswith("[PROOF] The Test Gazette: ")
        assert m["X-Digest-Proof"] == "yes"
        assert m["Message-ID"].startswith("<proof.daily.")
        # Personal links are the preview ones: a desk click unsubscribes nobody.
        assert "/u/preview" in m["List-Unsubscribe"]
    full = next(m for m in messages if m["X-Digest-Variant"] == sample.variant.key)
    html = full.get_body(("html",))
    assert html is not None
    body = html.get_content().replace("\r\n", "\n")
    # The exact edition: the sample reader's copy, but addressed to the desk member.
    assert body == sample.mail.html.replace("reader@example.com", full["To"])
    untouched(sessions)
    with sessions() as session:
        proofs = session.scalars(select(Proof).order_by(Proof.id)).all()
    assert [(p.sent_by, p.state, p.provider) for p in proofs] == [("ana", "sent", "outbox")] * 20


def test_one_readers_variant_by_subscriber_or_segment(
    config: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    config = with_outbox(config, tmp_path / "out")
    nl = config.newsletter("daily")
    reader = email_for(4)  # VARIANTS[4]: Business, News
    report = send_proof(
        config, sessions, nl, EDITION_DATE, DESK[:1], by="ana", clock=fixed(now), subscriber=reader
    )
    assert report.lines == ["  sent to desk@news.example: Business, News"]
    (msg,) = [parsed(f) for f in (tmp_path / "out" / "proofs").glob("*.eml")]
    text = msg.get_body(("plain",))
    assert text is not None
    assert "Good morning, Réader." in text.get_content()
    with pytest.raises(InputError, match="choose either --segment or --subscriber"):
        send_proof(config, sessions, nl, EDITION_DATE, DESK, by="a", clock=fixed(now),
                   segment="vip", subscriber=reader)  # fmt: skip


def test_proof_through_a_real_smtp_server(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    config = with_smtp(config, smtp_server)
    nl = dataclasses.replace(config.newsletter("daily"), provider="smtp")
    smtp_server.refuse["night.editor@news.example"] = "550 5.1.1 no such user"
    report = send_proof(
        config,
        sessions,
        nl,
        EDITION_DATE,
        DESK,
        by="ana",
        clock=fixed(now),
        subscriber=email_for(1),
    )
    assert (report.sent, report.failed) == (1, 1)
    assert report.lines[1].startswith("  failed to night.editor@news.example: ")
    assert "550 5.1.1 no such user" in report.lines[1]
    (msg,) = smtp_server.messages()
    assert msg["Subject"].startswith("[PROOF] ")
    assert msg["X-Digest-Proof"] == "yes"
    with sessions() as session:
        states = session.scalars(select(Proof.state).order_by(Proof.id)).all()
    assert states == ["sent", "failed"]
    untouched(sessions)
    smtp_server.refuse["desk@news.example"] = "550 5.1.1 gone"
    with pytest.raises(ProviderError, match="no proof of daily .* went out"):
        send_proof(config, sessions, nl, EDITION_DATE, DESK, by="ana", clock=fixed(now),
                   subscriber=email_for(1))  # fmt: skip


def test_proof_through_sendgrid_is_no_ledger_row_to_the_webhook(
    config: Config,
    sessions: sessionmaker[Session],
    edition: Edition,
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    config = with_sendgrid(config, sendgrid_server)
    nl = config.newsletter("daily")
    report = send_proof(
        config, sessions, nl, EDITION_DATE, DESK[:1], by="ana", clock=fixed(now),
        provider_name="sendgrid", subscriber=email_for(2),
    )  # fmt: skip
    assert report.sent == 1
    assert sendgrid_server.rejected == []
    (d,) = list(sendgrid_server.delivered())
    assert d.subject.startswith("[PROOF] ")
    assert d.headers["X-Digest-Proof"] == "yes"
    assert "delivery_id" not in d.custom_args and d.custom_args["proof_id"].isdigit()
    untouched(sessions)


def test_cli_proof_addresses_and_show(
    config_path: Path,
    db_url: str,
    edition: Edition,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    now: datetime,
) -> None:
    monkeypatch.chdir(tmp_path)  # the test config's outbox is ./outbox
    set_cli_clock(monkeypatch, fixed(now))
    env = {"DIGEST_DATABASE_URL": db_url, "DIGEST_EDITOR": "ana"}
    d = ["--date", EDITION_DATE.isoformat()]

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["--config", str(config_path), *args], env=env)

    none = run("proof", "daily", *d)
    assert none.exit_code == 1
    assert (
        "no proof address: pass --to desk@example.com or set newsletters.daily.proof_to"
        in none.output
    )
    bad = run("proof", "daily", *d, "--to", "desk@news.example,not-an-address")
    assert bad.exit_code == 1 and "'not-an-address' is not a valid email address" in bad.output
    many = run("proof", "daily", *d, "--to", ",".join(f"d{i}@news.example" for i in range(21)))
    assert many.exit_code == 1 and "21 proof addresses; at most 20" in many.output
    ok = run("proof", "daily", *d, "--to", "desk@news.example", "--subscriber", email_for(3))
    assert ok.exit_code == 0, ok.output
    assert "1 sent, 0 failed" in ok.output
    assert len(list((tmp_path / "outbox" / "proofs").glob("*.eml"))) == 1
    shown = run("edition", "show", "daily", *d)
    assert "PROOFS\n" in shown.output
    assert "ana: desk@news.example (News, Business) via outbox, sent" in shown.output
