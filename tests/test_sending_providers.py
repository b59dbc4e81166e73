"""The message builder and the three providers, against a real SMTP server (STARTTLS + AUTH)
and the real sendgrid library pointed at a local stand-in that validates every request."""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Sequence
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from digest.config import Config, SendGridConfig, SmtpConfig
from digest.message import Addressee, VariantMessage
from digest.providers import sendgrid
from digest.providers.base import Batch, Kind, Outcome, Outgoing
from digest.providers.outbox import OutboxProvider
from digest.providers.sendgrid import SendGridProvider, sendgrid_body
from digest.providers.smtp import SmtpProvider
from tests.fakes.fixtures import sendgrid_server, smtp_server, tls_cert  # noqa: F401
from tests.fakes.sendgrid import SendGridStandIn, limit_errors
from tests.fakes.smtp import USERNAME, SmtpServer

WHEN = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
LONG_HTML = "<html><body>" + "<p>Ünïcode story — a=b &amp; more</p>" * 400 + "</body></html>"


@dataclasses.dataclass(frozen=True)
class Body:
    subject: str
    html: str
    text: str


def variant(config: Config) -> VariantMessage:
    return VariantMessage(config, config.newsletter("daily"), date(2026, 3, 10), "news-business")


def outgoing(n: int) -> list[Outgoing]:
    out = []
    for i in range(1, n + 1):
        to = Addressee(
            email=f"reader{i}@example.org",
            name=f"Reader Ñumber {i}",
            unsubscribe_url=f"https://news.example/u/token{i}",
            message_id=f"daily.20260310.{i}@news.example",
            delivery_id=100 + i,
        )
        body = Body(
            subject="Gazette: Höchste Zeit",
            html=LONG_HTML + f"<a href='https://news.example/u/token{i}'>unsubscribe</a>",
            text=f"Hello reader {i}\n.leading dot line\n" + "word " * 400,
        )
        out.append(Outgoing(to, body))
    return out


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_message_has_every_header_both_parts_and_short_crlf_lines(config: Config) -> None:
    m = outgoing(1)[0]
    raw = variant(config).mime(m.content, m.to, WHEN)

    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    msg = parse(raw)
    assert msg["From"] == "Test Gazette <daily@news.example>"
    assert msg["Reply-To"] == "editors@news.example"
    assert msg["To"] == "Reader Ñumber 1 <reader1@example.org>"
    assert raw.isascii() and b"\r\nSubject: =?utf-8?q?Gazette=3A_H=C3=B6chste_Zeit?=\r\n" in raw
    assert msg["Subject"] == "Gazette: Höchste Zeit"
    assert email.utils.parsedate_to_datetime(msg["Date"]) == WHEN
    assert msg["Message-ID"] == "<daily.20260310.1@news.example>"
    assert msg["List-Unsubscribe"] == (
        "<https://news.example/u/token1>, "
        "<mailto:unsubscribe@news.example?subject=unsubscribe%20token1>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "The Test Gazette <daily.news.example>"
    assert msg["X-Digest-Edition"] == "daily/2026-03-10"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert html.get_content() == m.content.html
    assert text.get_content().replace("\r\n", "\n") == m.content.text


def test_variant_frame_is_stable_so_previews_match_sends(config: Config) -> None:
    m = outgoing(1)[0]
    a = variant(config).mime(m.content, m.to, WHEN)
    b = variant(config).mime(m.content, m.to, WHEN)
    assert a == b


class Marks:
    def __init__(self) -> None:
        self.handed: list[int] = []
        self.settled: list[Outcome] = []

    def __call__(self, handed: Sequence[int], settled: Sequence[Outcome]) -> None:
        self.handed += handed
        self.settled += settled


def smtp_config(server: SmtpServer, **kw: object) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=server.port,
        security="starttls",
        username=USERNAME,
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


def test_smtp_starttls_auth_one_connection_and_refused_recipient(
    config: Config,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    smtp_server.refuse["reader2@example.org"] = "550 5.1.1 no such user"
    provider = SmtpProvider(smtp_config(smtp_server), "bounces@news.example")
    marks = Marks()
    outcomes = provider.send(Batch(variant(config), outgoing(3), WHEN), marks)
    provider.close()

    by_id = {o.delivery_id: o for o in outcomes}
    assert by_id[101].kind is Kind.ACCEPTED and by_id[101].provider_id == "Q0000001"
    assert by_id[102].kind is Kind.FAILED and "550 5.1.1 no such user" in (by_id[102].error or "")
    assert by_id[103].kind is Kind.ACCEPTED
    assert marks.handed == [101, 103]
    assert len(smtp_server.logins) == 1  # one connection, one AUTH
    received = smtp_server.messages()
    assert [r for r, _ in smtp_server.received] == [
        ["reader1@example.org"],
        ["reader3@example.org"],
    ]
    for _, raw in smtp_server.received:
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    text, html = received[1].iter_parts()
    assert "Hello reader 3\r\n.leading dot line" in text.get_content()
    assert "token3" in html.get_content()


def test_smtp_wrong_password_is_an_auth_outcome_for_the_batch(
    config: Config,
    smtp_server: SmtpServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "wrong")
    provider = SmtpProvider(smtp_config(smtp_server), "bounces@news.example")
    outcomes = provider.send(Batch(variant(config), outgoing(2), WHEN), Marks())
    assert [o.kind for o in outcomes] == [Kind.AUTH, Kind.AUTH]
    assert "535" in (outcomes[0].error or "")
    assert smtp_server.received == []


def test_smtp_unreachable_server_is_retryable(config: Config) -> None:
    from tests.fakes.smtp import free_port

    provider = SmtpProvider(SmtpConfig(port=free_port(), timeout=2), "b@news.example")
    outcomes = provider.send(Batch(variant(config), outgoing(2), WHEN), Marks())
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.RETRY]
    assert "SMTP server 127.0.0.1:" in (outcomes[0].error or "")


def test_outbox_writes_one_parseable_file_per_message_and_rewrites_on_rerun(
    config: Config, tmp_path: Path
) -> None:
    provider = OutboxProvider(tmp_path / "outbox")
    batch = Batch(variant(config), outgoing(2), WHEN)
    provider.send(batch, Marks())
    provider.send(batch, Marks())
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == [
        "daily_2026-03-10_00000101.eml",
        "daily_2026-03-10_00000102.eml",
    ]
    assert parse(files[0].read_bytes())["To"] == "Reader Ñumber 1 <reader1@example.org>"


def sg_provider(server: SendGridStandIn, **kw: object) -> SendGridProvider:
    return SendGridProvider(SendGridConfig(host=server.url, timeout=1.0, **kw))  # type: ignore[arg-type]


def substituted_batch(config: Config, n: int) -> Batch:
    msgs = outgoing(n)
    template = Body(subject="Gazette", html="<a href='%u%'>unsubscribe</a> %n%", text="%n% %u%")
    subs = [{"%u%": m.to.unsubscribe_url, "%n%": m.to.name or ""} for m in msgs]
    return Batch(variant(config), msgs, WHEN, template=template, substitutions=subs)


def test_sendgrid_batches_personalizations_and_validates_against_the_spec(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    provider = sg_provider(sendgrid_server, batch_size=2)
    marks = Marks()
    outcomes = provider.send(substituted_batch(config, 3), marks)

    assert sendgrid_server.rejected == []
    assert sendgrid_server.requests == 2  # 2 + 1 personalizations
    assert [o.kind for o in outcomes] == [Kind.ACCEPTED] * 3
    assert [o.provider_id for o in outcomes] == ["sg-000001", "sg-000001", "sg-000002"]
    assert marks.handed == [101, 102, 103]
    got = {d.email: d for d in sendgrid_server.delivered()}
    d = got["reader2@example.org"]
    assert d.html == "<a href='https://news.example/u/token2'>unsubscribe</a> Reader Ñumber 2"
    assert d.custom_args == {"edition": "daily/2026-03-10", "delivery_id": "102"}
    assert d.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert d.headers["List-Unsubscribe"].startswith("<https://news.example/u/token2>, <mailto:")


def test_sendgrid_without_template_sends_one_request_per_message(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    outcomes = sg_provider(sendgrid_server).send(Batch(variant(config), outgoing(2), WHEN), Marks())
    assert [o.kind for o in outcomes] == [Kind.ACCEPTED] * 2
    assert sendgrid_server.requests == 2
    assert {d.subject for d in sendgrid_server.delivered()} == {"Gazette: Höchste Zeit"}


@pytest.mark.parametrize(
    ("status", "kind", "needle"),
    [
        (400, Kind.FAILED, "SendGrid 400: stand-in answer 400"),
        (401, Kind.AUTH, "SendGrid 401"),
        (403, Kind.AUTH, "SendGrid 403"),
        (500, Kind.RETRY, "SendGrid 500"),
        (503, Kind.RETRY, "SendGrid 503"),
    ],
)
def test_sendgrid_answers_map_to_outcomes(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    status: int,
    kind: Kind,
    needle: str,
) -> None:
    sendgrid_server.answer(status)
    outcomes = sg_provider(sendgrid_server).send(substituted_batch(config, 2), Marks())
    assert [o.kind for o in outcomes] == [kind, kind]
    assert needle in (outcomes[0].error or "")


def test_sendgrid_429_carries_the_reset_time(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    sendgrid_server.answer(429, reset_in=3)
    (o,) = sg_provider(sendgrid_server).send(substituted_batch(config, 1), Marks())
    assert o.kind is Kind.RETRY
    assert o.retry_after is not None and 1.0 <= o.retry_after <= 3.0


def test_sendgrid_400_blaming_one_personalization_defers_only_that_recipient(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    sendgrid_server.answer(400, message="Invalid email", field="personalizations.1.to.0.email")
    outcomes = sg_provider(sendgrid_server).send(substituted_batch(config, 3), Marks())
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.DEFER, Kind.RETRY]
    assert "Invalid email (personalizations.1.to.0.email)" in (outcomes[1].error or "")


def test_sendgrid_413_splits_the_request(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    sendgrid_server.answer(413)
    outcomes = sg_provider(sendgrid_server).send(substituted_batch(config, 4), Marks())
    assert [o.kind for o in outcomes] == [Kind.ACCEPTED] * 4
    assert sendgrid_server.requests == 3
    assert sendgrid_server.counts() == {f"reader{i}@example.org": 1 for i in range(1, 5)}


def test_sendgrid_timeout_leaves_the_batch_unknown(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    sendgrid_server.answer(202, hang=2.0)
    outcomes = sg_provider(sendgrid_server).send(substituted_batch(config, 2), Marks())
    assert [o.kind for o in outcomes] == [Kind.UNKNOWN] * 2
    assert "no answer from http://127.0.0.1:" in (outcomes[0].error or "")
    assert len(sendgrid_server.accepted) == 1  # it was in fact accepted: hence "unknown"


def test_sendgrid_wrong_key_is_refused_by_the_stand_in(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.wrong")
    outcomes = sg_provider(sendgrid_server).send(substituted_batch(config, 1), Marks())
    assert outcomes[0].kind is Kind.AUTH
    assert "authorization grant is invalid" in (outcomes[0].error or "")


def test_stand_in_rejects_what_sendgrid_would(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    batch = substituted_batch(config, 2)
    batch.messages[1] = batch.messages[1]._replace(
        to=batch.messages[1].to._replace(email="READER1@example.org")
    )
    outcomes = sg_provider(sendgrid_server).send(batch, Marks())
    # The second copy of an address is deferred: sent again later, in another request.
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.DEFER]
    assert "should be unique" in (outcomes[1].error or "")


def test_stand_in_names_the_personalization_that_breaks_the_spec(
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = substituted_batch(config, 3)
    original = sendgrid.sendgrid_personalization

    def with_empty_subject(v: object, to: Addressee, *args: object) -> dict[str, object]:
        p = original(v, to, *args)  # type: ignore[arg-type]
        if to.delivery_id == 103:
            p["subject"] = ""
        return p

    monkeypatch.setattr(sendgrid, "sendgrid_personalization", with_empty_subject)
    outcomes = sg_provider(sendgrid_server).send(batch, Marks())
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.RETRY, Kind.DEFER]
    assert "'' should be non-empty (personalizations.2.subject)" in (outcomes[2].error or "")


def test_rate_limiter_spaces_messages_without_real_sleeping() -> None:
    from digest.providers.base import RateLimiter

    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(10.0, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(30):
        limiter.take()
    # a burst of 10, then 20 more at 10 per second
    assert now[0] == pytest.approx(2.0)
    assert len(slept) == 20


def test_smtp_reconnects_when_the_server_drops_the_connection(
    config: Config,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    smtp_server.drop_at_mail = {2}
    provider = SmtpProvider(smtp_config(smtp_server), "bounces@news.example")
    outcomes = provider.send(Batch(variant(config), outgoing(3), WHEN), Marks())
    provider.close()
    assert [o.kind for o in outcomes] == [Kind.ACCEPTED] * 3
    assert len(smtp_server.logins) == 2  # a second connection after the drop
    assert smtp_server.counts() == {f"reader{i}@example.org": 1 for i in range(1, 4)}


# aiosmtpd counts only STARTTLS as TLS and warns that AUTH is allowed without it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_implicit_tls(
    config: Config,
    tls_cert: tuple[Path, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "s3cret-pass")
    with SmtpServer(*tls_cert, implicit_tls=True) as server:
        provider = SmtpProvider(
            SmtpConfig(port=server.port, security="tls", username=USERNAME, timeout=5),
            "bounces@news.example",
        )
        outcomes = provider.send(Batch(variant(config), outgoing(2), WHEN), Marks())
        provider.close()
        assert [o.kind for o in outcomes] == [Kind.ACCEPTED] * 2
        assert len(server.received) == 2


def test_stand_in_holds_every_body_to_sendgrids_size_limits() -> None:
    # The stand-in decides most sizes from a cheap bound; the verdicts must be the exact ones.
    def fields(subs: dict[str, str], args: dict[str, str] | None = None) -> list[str]:
        p = {"to": [{"email": "a@example.com"}], "substitutions": subs, "custom_args": args or {}}
        return [e["field"] for e in limit_errors({"personalizations": [p]}, 0.0)]

    assert fields({"%n%": "é" * 800}) == []  # 4.8 KB escaped, decided by the bound
    assert fields({"%n%": "x" * 9_000}) == []  # bound too high: measured exactly, fits
    assert fields({"%n%": "é" * 1_700}) == ["personalizations.0.substitutions"]  # 10.2 KB
    assert fields({}, {"delivery_id": "y" * 10_500}) == ["custom_args"]


def test_feedback_id_is_on_every_message_of_every_provider(
    config: Config,
    tmp_path: Path,
    smtp_server: SmtpServer,  # noqa: F811
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    """Gmail's feedback loop: one Feedback-ID per message (campaign:newsletter:edition:sender),
    through SMTP, the outbox and SendGrid alike, and on confirmation emails too."""
    from digest.message import TransactionalMessage

    expected = "digest:daily:20260310:news.example"
    smtp = SmtpProvider(smtp_config(smtp_server), "bounces@news.example")
    smtp.send(Batch(variant(config), outgoing(2), WHEN), Marks())
    smtp.close()
    OutboxProvider(tmp_path / "out").send(Batch(variant(config), outgoing(2), WHEN), Marks())
    sg_provider(sendgrid_server).send(substituted_batch(config, 2), Marks())
    raws = [raw for _, raw in smtp_server.received] + [
        f.read_bytes() for f in sorted((tmp_path / "out").iterdir())
    ]
    assert len(raws) == 4
    for raw in raws:
        assert parse(raw).get_all("Feedback-ID") == [expected]
    delivered = list(sendgrid_server.delivered())
    assert len(delivered) == 2
    assert all(d.headers["Feedback-ID"] == expected for d in delivered)

    confirm = TransactionalMessage(config, config.newsletter("daily"), "confirm")
    m = outgoing(1)[0]
    assert parse(confirm.mime(m.content, m.to, WHEN))["Feedback-ID"] == (
        "confirm:daily:signup:news.example"
    )
    assert sendgrid_body(confirm, m.content, [])["headers"] == {
        "Feedback-ID": "confirm:daily:signup:news.example"
    }


def test_the_feedback_id_sender_is_configurable_and_checked(config: Config) -> None:
    import tomllib

    from digest.config import parse_config
    from digest.errors import ConfigError

    cfg = dataclasses.replace(config, site=dataclasses.replace(config.site, sender_id="hbt-news"))
    assert variant(cfg).feedback_id == "digest:daily:20260310:hbt-news"
    raw = tomllib.loads((Path(__file__).parent / "data" / "digest.toml").read_text())
    raw["site"]["sender_id"] = "a:b"
    with pytest.raises(ConfigError, match="site.sender_id: letters, digits"):
        parse_config(raw, Path("digest.toml"))
