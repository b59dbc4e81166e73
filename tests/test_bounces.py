"""`digest bounces`: DSNs, plain-text bounces and ARF complaints from real-world servers
(Postfix, Exim, Gmail, Outlook/Exchange, Yahoo, qmail, AOL) and the auto-replies that look like
them, read from an mbox or a maildir, matched to ledger rows by VERP return path or Message-ID,
and applied: hard bounces and complaints suppress, soft bounces count, the rest change nothing.
Reading the mailbox again changes nothing more."""

from __future__ import annotations

import dataclasses
import mailbox
import re
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.bounces.models import BounceEvent
from digest.bounces.parse import classify, read_report
from digest.bounces.verp import read_verp, verp_address
from digest.clock import fixed
from digest.config import BounceConfig, Config, load_config
from digest.editions import Edition
from digest.ledger import Delivery
from digest.message import make_message_id
from digest.render import Links
from digest.sending import SendOptions, send_edition
from digest_cli import cli
from subscribers.models import Subscriber, Suppression, email_hash
from subscribers.service import forget
from tests.fakes.fixtures import smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE, store_edition
from tests.test_web_mailto import write_mbox

SAMPLES = Path(__file__).parent / "data" / "bounces"
SECRET = "test-secret-key"
RETURN_PATH = "bounces@news.example"
BOUNCES_TOML = f'\n[bounces]\nreturn_path = "{RETURN_PATH}"\nverp = true\n'

# sample → (report kind, failure kind, status) as read_report sees it
PARSED = {
    "postfix_user_unknown": ("bounce", "hard", "5.1.1"),
    "postfix_mailbox_full_expired": ("bounce", "soft", "4.2.2"),
    "postfix_delayed": ("bounce", "delayed", "4.4.1"),
    "postfix_microsoft_5_7_515": ("bounce", "blocked", "5.7.515"),
    "exim_dsn": ("bounce", "hard", "5.1.1"),  # Status 5.0.0, the reply says 5.1.1
    "exim_plain": ("bounce", "hard", None),  # "550 No such user here"
    "exim_warning_delayed": ("bounce", "delayed", "4.7.1"),
    "gmail_no_such_user": ("bounce", "hard", "5.1.1"),
    "outlook_recipient_not_found": ("bounce", "hard", "5.1.10"),
    "yahoo_failure_notice": ("bounce", "hard", None),  # "554: delivery error: dd ..."
    "qmail_permanent": ("bounce", "hard", "5.1.1"),  # "(#5.1.1)"
    "arf_yahoo_abuse": ("complaint", "complaint", None),
    "arf_aol_abuse_token": ("complaint", "complaint", None),
    "arf_not_spam": ("not-spam", "not-spam", None),
    "dmarc_forensic_auth_failure": ("auth-failure", "auth-failure", None),
    "autoreply_outlook_oof": ("auto-reply", None, None),
    "autoreply_vacation": ("auto-reply", None, None),
    "human_reply": ("other", None, None),
    "forged_bounce_other_address": ("bounce", "hard", "5.1.1"),
}

HARD = ("hard bounce: suppressed", "bounced: ", "failed")
# sample → (what `digest bounces` counts it as, suppression reason prefix, ledger row state)
APPLIED = {
    "postfix_user_unknown": HARD,
    "postfix_mailbox_full_expired": ("soft bounce (counted)", None, "failed"),
    "postfix_delayed": ("delay warning (ignored)", None, "sent"),
    "postfix_microsoft_5_7_515": ("blocked by the receiver (not suppressed)", None, "failed"),
    "exim_dsn": HARD,
    "exim_plain": HARD,
    "exim_warning_delayed": ("delay warning (ignored)", None, "sent"),
    "gmail_no_such_user": HARD,
    "outlook_recipient_not_found": HARD,
    "yahoo_failure_notice": HARD,
    "qmail_permanent": HARD,
    "arf_yahoo_abuse": ("complaint: suppressed", "complained", "sent"),
    "arf_aol_abuse_token": ("complaint: suppressed", "complained", "sent"),
    "arf_not_spam": ("not-spam report (ignored)", None, "sent"),
    "dmarc_forensic_auth_failure": ("DMARC failure report (ignored)", None, "sent"),
    "autoreply_outlook_oof": ("auto-reply (ignored)", None, "sent"),
    "autoreply_vacation": ("auto-reply (ignored)", None, "sent"),
    "human_reply": ("not a bounce (ignored)", None, "sent"),
    "forged_bounce_other_address": (
        "unmatched (no VERP address or Message-ID of ours)",
        None,
        "sent",
    ),
}
UNMATCHED = APPLIED["forged_bounce_other_address"]
# Without VERP, only proof in the report itself can match it: Yahoo redacts the recipient.
WITHOUT_VERP = {"arf_yahoo_abuse": UNMATCHED}


def test_the_samples_cover_every_server_the_issue_names() -> None:
    names = {p.stem for p in SAMPLES.glob("*.eml")}
    assert names == set(PARSED) == set(APPLIED)
    for shape in ("postfix", "exim", "gmail", "outlook", "yahoo", "qmail", "arf", "autoreply"):
        assert any(n.startswith(shape) for n in names), shape


def sample(name: str, **values: str) -> bytes:
    raw = (SAMPLES / f"{name}.eml").read_text(encoding="utf-8")
    defaults = {
        "VERP": RETURN_PATH,
        "RCPT": "ann@example.org",
        "MSGID": "daily.20260310.1@news.example",
        "UNSUB": "https://news.example/u/not-a-token",
    }
    for key, value in (defaults | values).items():
        raw = raw.replace(f"@@{key}@@", value)
    return raw.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def parse(raw: bytes) -> Message:
    return message_from_bytes(raw, policy=policy.compat32)


@pytest.mark.parametrize("name", sorted(PARSED))
def test_each_sample_reads_as_what_it_is(name: str) -> None:
    report = read_report(parse(sample(name)))
    kind, failure_kind, status = PARSED[name]
    assert report.kind == kind
    if failure_kind is None:
        assert report.failures == ()
        return
    (failure,) = report.failures
    assert (failure.kind, failure.status) == (failure_kind, status)
    if kind == "bounce":
        expected = "someone-else@example.org" if name.startswith("forged") else "ann@example.org"
        assert failure.recipient == expected
        assert failure.diagnostic and "\n" not in failure.diagnostic
    if "@@MSGID@@" in (SAMPLES / f"{name}.eml").read_text():
        assert "daily.20260310.1@news.example" in report.message_ids


def test_the_diagnostic_is_the_servers_own_words_on_one_line() -> None:
    (f,) = read_report(parse(sample("gmail_no_such_user"))).failures
    assert f.diagnostic.startswith("550-5.1.1 The email account that you tried to reach does not")
    (f,) = read_report(parse(sample("yahoo_failure_notice"))).failures
    assert f.diagnostic.startswith("554: delivery error: dd This user doesn't have a yahoo.com")


@pytest.mark.parametrize(
    ("status", "diagnostic", "expected"),
    [
        ("5.1.1", "", ("5.1.1", "hard")),
        ("5.2.1", "account disabled", ("5.2.1", "hard")),
        ("5.2.2", "mailbox full", ("5.2.2", "soft")),
        ("4.2.2", "", ("4.2.2", "soft")),
        ("5.7.1", "rejected as spam", ("5.7.1", "blocked")),
        ("5.7.26", "unauthenticated", ("5.7.26", "blocked")),
        ("5.3.4", "message too big", ("5.3.4", "blocked")),
        ("5.0.0", "550 5.1.1 user unknown", ("5.1.1", "hard")),
        ("5.0.0", "550 4.1.1 odd", ("5.0.0", "hard")),  # only a code of its own class refines
        (None, "550 No such user", (None, "hard")),
        (None, "452 Too many recipients", (None, "soft")),
        (None, "552 Mailbox quota exceeded", (None, "soft")),
        (None, "This is a permanent error; I've given up.", (None, "hard")),
        (None, "connection timed out", (None, "soft")),
    ],
)
def test_status_codes_are_classified_by_what_they_say_about_the_address(
    status: str | None, diagnostic: str, expected: tuple[str | None, str]
) -> None:
    assert classify(status, diagnostic) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_read_as_some_report_without_raising(raw: bytes) -> None:
    report = read_report(parse(raw))
    assert report.kind in ("bounce", "complaint", "not-spam", "auth-failure", "auto-reply", "other")
    assert len(report.fingerprint) == 64


_FIELD = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(action=_FIELD, status=_FIELD, diagnostic=_FIELD, recipient=_FIELD)
def test_hostile_dsn_fields_never_raise(
    action: str, status: str, diagnostic: str, recipient: str
) -> None:
    clean = {k: v.replace("\r", " ").replace("\n", " ") for k, v in locals().items()}
    raw = (
        "From: MAILER-DAEMON@x.example\r\nContent-Type: multipart/report; "
        'report-type=delivery-status; boundary="B"\r\n\r\n--B\r\nContent-Type: '
        "message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        f"Final-Recipient: rfc822; {clean['recipient']}\r\nAction: {clean['action']}\r\n"
        f"Status: {clean['status']}\r\nDiagnostic-Code: smtp; {clean['diagnostic']}\r\n--B--\r\n"
    )
    report = read_report(parse(raw.encode("utf-8")))
    for f in report.failures:
        assert f.kind in ("hard", "soft", "blocked", "delayed", "delivered")


def test_verp_addresses_name_their_row_and_refuse_forged_tags(config: Config) -> None:
    cfg = dataclasses.replace(config, bounces=BounceConfig(return_path=RETURN_PATH, verp=True))
    address = verp_address(cfg, SECRET, 1234)
    assert address.startswith("bounces+1234-") and address.endswith("@news.example")
    assert read_verp(cfg, SECRET, address) == 1234
    assert read_verp(cfg, SECRET, f"<{address.upper()}>") == 1234  # MTAs may change case
    forged = address.replace("bounces+1234-", "bounces+1235-")
    assert read_verp(cfg, SECRET, forged) is None
    assert read_verp(cfg, "another-secret", address) is None
    assert read_verp(cfg, SECRET, "bounces@news.example") is None


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"verp": True}, "bounces.verp: needs return_path"),
        ({"return_path": "not an address"}, "bounces.return_path: 'not an address' is not a plain"),
        ({"return_path": "b+x@news.example", "verp": True}, "must not contain the delimiter '+'"),
        ({"delimiter": "#"}, "bounces.delimiter: must be one of +, - or ="),
        ({"soft_bounce_limit": 0}, "bounces.soft_bounce_limit: must be at least 1"),
        ({"colour": "red"}, "bounces.colour: unknown key"),
    ],
)
def test_bad_bounce_config_is_one_clear_error(table: dict[str, object], needle: str) -> None:
    import tomllib

    from digest.config import parse_config
    from digest.errors import ConfigError

    raw = tomllib.loads((Path(__file__).parent / "data" / "digest.toml").read_text())
    raw["bounces"] = table
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_config(raw, Path("digest.toml"))


# --- against the ledger --------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "digest.toml"
    text = (Path(__file__).parent / "data" / "digest.toml").read_text()
    path.write_text(text.replace('dir = "outbox"', f'dir = "{tmp_path / "outbox"}"') + BOUNCES_TOML)
    return path


@dataclasses.dataclass
class World:
    """An edition sent through the outbox to three readers with VERP on, and the means to hand
    `digest bounces` a mailbox about them."""

    cfg: Config
    rows: list[Delivery]
    sessions: sessionmaker[Session]
    config_file: Path
    db_url: str
    folder: Path

    def sample(self, name: str, row: Delivery, *, verp: bool = True) -> bytes:
        with self.sessions() as session:
            edition = session.get(Edition, row.edition_id)
            assert edition is not None
            unsubscribe, _ = Links(self.cfg, self.cfg.newsletter("daily"), edition).urls(
                row.subscriber_id
            )
        return sample(
            name,
            VERP=verp_address(self.cfg, SECRET, row.id) if verp else RETURN_PATH,
            RCPT=row.email,
            MSGID=make_message_id(self.cfg.newsletter("daily"), EDITION_DATE, row.subscriber_id),
            UNSUB=unsubscribe,
        )

    def mbox(self, messages: list[bytes], name: str = "bounces.mbox") -> Path:
        return write_mbox(self.folder / name, messages)  # type: ignore[arg-type]

    def run(self, *args: str) -> Result:
        return run(self.config_file, self.db_url, *args)

    def state(self, row: Delivery) -> tuple[str, str | None, str | None]:
        """The row's state and last error, and the suppression reason of its address."""
        with self.sessions() as session:
            r = session.get(Delivery, row.id)
            assert r is not None
            s = session.scalar(select(Suppression).where(Suppression.email == r.email))
            return r.state, r.last_error, s.reason if s else None


@pytest.fixture
def world(
    config_file: Path, sessions: sessionmaker[Session], now: datetime, db_url: str, tmp_path: Path
) -> World:
    cfg = load_config(config_file)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 3, now)
    report = send_edition(cfg, sessions, "daily", EDITION_DATE, SendOptions(), clock=fixed(now))
    assert report.sent_now == 3
    with sessions() as session:
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        session.expunge_all()
    return World(cfg, rows, sessions, config_file, db_url, tmp_path)


def run(config_file: Path, db_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(config_file), "bounces", *args], env={"DIGEST_DATABASE_URL": db_url}
    )


@pytest.mark.parametrize("verp", [True, False], ids=["verp", "message-id"])
@pytest.mark.parametrize("name", sorted(APPLIED))
def test_each_sample_has_its_effect_and_reading_it_again_changes_nothing(
    name: str, verp: bool, world: World
) -> None:
    target, other = world.rows[1], world.rows[2]
    box = world.mbox([world.sample(name, target, verp=verp)])
    label, reason, row_state = WITHOUT_VERP.get(name, APPLIED[name]) if not verp else APPLIED[name]

    first = world.run("--from-mbox", str(box))
    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"{box}: 1 message(s): 1 {label}"
    got_state, error, suppressed = world.state(target)
    assert got_state == row_state
    if reason is None:
        assert suppressed is None
    else:
        assert suppressed is not None and suppressed.startswith(reason)
    if row_state == "failed":
        assert error is not None and error.startswith(("bounce: ", "blocked: "))
    assert world.state(other) == ("sent", None, None)  # nobody else is touched

    again = world.run("--from-mbox", str(box))
    assert again.exit_code == 0, again.output
    effective = label.startswith(("hard", "soft", "blocked", "complaint"))
    assert again.output.strip() == f"{box}: 1 message(s): 1 " + (
        "already processed" if effective else label
    )
    assert world.state(target) == (got_state, error, suppressed)


def test_hard_bounce_suppression_keeps_the_diagnostic_and_marks_the_subscriber(
    world: World,
) -> None:
    row = world.rows[0]
    assert (
        world.run(
            "--from-mbox", str(world.mbox([world.sample("outlook_recipient_not_found", row)]))
        ).exit_code
        == 0
    )
    _, error, reason = world.state(row)
    assert reason == (
        "bounced: 5.1.10 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
        "SMTP address lookup"
    )
    assert error == "bounce: " + reason.removeprefix("bounced: ")
    with world.sessions() as session:
        sub = session.scalar(select(Subscriber).where(Subscriber.email == row.email))
        assert sub is not None and sub.status == "bounced"


def test_a_whole_mailbox_of_shapes_is_counted_per_outcome(world: World) -> None:
    a, b, c = world.rows
    box = world.mbox(
        [
            world.sample("postfix_user_unknown", a),
            world.sample("gmail_no_such_user", a),  # the same reader again: suppressed already
            world.sample("postfix_delayed", b),
            world.sample("arf_aol_abuse_token", c),
            world.sample("autoreply_vacation", b),
            b"From: x@example.org\r\nSubject: hello\r\n\r\nhi\r\n",
        ]
    )
    result = world.run("--from-mbox", str(box))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"{box}: 6 message(s): 1 auto-reply (ignored), 1 complaint: suppressed, 1 delay warning "
        "(ignored), 2 hard bounce: suppressed, 1 not a bounce (ignored)"
    )
    with world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Suppression)) == 2


def test_soft_bounces_suppress_after_the_limit_of_different_messages_within_the_window(
    world: World, now: datetime
) -> None:
    target = world.rows[0]

    def earlier(edition_id: int, days_ago: float) -> BounceEvent:
        return BounceEvent(
            fingerprint=f"earlier-{edition_id}-{days_ago}",
            kind="soft",
            email=target.email,
            email_hash=email_hash(target.email),
            edition_id=edition_id,
            status="4.2.2",
            diagnostic="mailbox full",
            received_at=datetime(2026, 3, 14, 10, 31, tzinfo=now.tzinfo) - timedelta(days=days_ago),
            created_at=now,
        )

    with world.sessions.begin() as session:
        session.add(earlier(900, 2))  # another edition, within 30 days
        session.add(earlier(900, 1))  # the same edition again: counts once
        session.add(earlier(901, 45))  # too long ago
    raw = world.sample("postfix_mailbox_full_expired", target)
    result = world.run("--from-mbox", str(world.mbox([raw])))
    assert result.output.strip().endswith("1 soft bounce (counted)")  # 2 of 3
    assert world.state(target)[2] is None

    with world.sessions.begin() as session:
        session.add(earlier(902, 3))
    raw2 = raw.replace(b"8Hk2Xc1Qm7z3LtV@relay", b"9Zz2Xc1Qm7z3LtV@relay")  # a new report
    result = world.run("--from-mbox", str(world.mbox([raw2], "b2.mbox")))
    assert result.output.strip().endswith("1 soft bounce: suppressed (limit reached)")
    reason = world.state(target)[2]
    assert reason is not None and reason.startswith(
        "bounced: 3 soft bounces in 30 days; last 4.2.2"
    )


def test_maildir_is_read_too_and_left_unchanged(world: World) -> None:
    folder = world.folder / "Maildir"
    box = mailbox.Maildir(folder)
    box.add(world.sample("qmail_permanent", world.rows[0]))
    box.close()
    before = sorted(p.name for p in folder.rglob("*") if p.is_file())
    result = world.run("--from-maildir", str(folder))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{folder}: 1 message(s): 1 hard bounce: suppressed"
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "give one of --from-mbox FILE or --from-maildir FOLDER"),
        (("--from-mbox", "a", "--from-maildir", "b"), "give one of --from-mbox"),
        (("--from-mbox", "/no/such/file"), "/no/such/file: no such mbox file or maildir folder"),
        (("--from-maildir", "/no/such/dir"), "/no/such/dir: not a maildir folder"),
    ],
)
def test_bad_arguments_are_one_clear_error(
    args: tuple[str, ...], needle: str, config_file: Path, db_url: str
) -> None:
    result = run(config_file, db_url, *args)
    assert result.exit_code != 0
    assert needle in result.output
    assert "Traceback" not in result.output


def test_forget_erases_the_bounce_events_that_quote_the_address(
    world: World, now: datetime
) -> None:
    row = world.rows[0]
    world.run("--from-mbox", str(world.mbox([world.sample("postfix_mailbox_full_expired", row)])))
    with world.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(BounceEvent)) == 1
        forget(session, row.email, at=now)
    with world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BounceEvent)) == 0


def test_smtp_sends_carry_the_verp_envelope_sender(
    sessions: sessionmaker[Session],
    config_file: Path,
    now: datetime,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    from tests.test_sending_ledger import with_smtp

    cfg = with_smtp(load_config(config_file), smtp_server)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 2, now)
    options = SendOptions(provider="smtp")
    send_edition(cfg, sessions, "daily", EDITION_DATE, options, clock=fixed(now))
    with sessions() as session:
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    assert sorted(smtp_server.senders) == sorted(verp_address(cfg, SECRET, i) for i in ids)


def test_a_utf8_delivery_status_rfc6533_is_read_too() -> None:
    raw = (
        "From: MAILER-DAEMON@mx.example.jp\r\nTo: bounces@news.example\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <g1@mx.example.jp>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        'boundary="G"\r\n\r\n--G\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        "配信できませんでした。\r\n--G\r\nContent-Type: message/global-delivery-status\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nReporting-MTA: dns; mx.example.jp\r\n\r\n"
        "Final-Recipient: utf-8; 山田@例え.jp\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <山田@例え.jp>: User unknown\r\n\r\n"
        "--G\r\nContent-Type: message/global-headers\r\n\r\nMessage-ID: <daily.20260310.1@news.example>\r\n"
        "\r\n--G--\r\n"
    ).encode()
    report = read_report(parse(raw))
    (f,) = report.failures
    assert (report.kind, f.kind, f.status) == ("bounce", "hard", "5.1.1")
    assert f.recipient == "山田@例え.jp"
    assert report.message_ids == ("daily.20260310.1@news.example",)
    assert "User unknown" in f.diagnostic
