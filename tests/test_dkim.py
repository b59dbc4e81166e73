"""DKIM: every message that leaves as raw MIME (SMTP, outbox, confirmation emails, the eml
preview) carries RSA and Ed25519 signatures that dkimpy verifies against the published keys
(looked up through a DNS stub), covering the headers bulk-sender rules care about."""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime
from email import message_from_bytes, policy
from pathlib import Path

import dkim as dkimpy
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config, DkimConfig, DkimKeyConfig, parse_config
from digest.dkim import SIGNED, verify
from digest.errors import ConfigError
from digest.message import Addressee, TransactionalMessage, VariantMessage
from digest.providers.base import Batch
from digest.providers.outbox import OutboxProvider
from digest.providers.sendgrid import sendgrid_body, sendgrid_personalization
from digest.providers.smtp import SmtpProvider
from digest.sending import SendOptions, send_edition
from tests.dkim_support import (
    ED_ENV,
    ED_SELECTOR,
    RSA_SELECTOR,
    dns_records,
    ed25519_seed_b64,
    rsa_pem,
    signing_config,
)
from tests.fakes.fixtures import smtp_server, tls_cert  # noqa: F401
from tests.fakes.smtp import SmtpServer
from tests.test_sending_providers import WHEN, Marks, outgoing, smtp_config

# cryptography refuses to generate keys this short, but loads them (as a newsroom may have one).
SHORT_RSA_PEM = """\
-----BEGIN PRIVATE KEY-----
MIIB4wIBADANBgkqhkiG9w0BAQEFAASCAc0wggHJAgEAAmEA4g4V5HVE/XGC1rJI
Ql02Jab86Yzqfigktcjigdsk4WbcYSa/mDkiALay/NsxBKwSehTSl9AR3cyX4ui2
ZYYwxgkbx7M2XZY1sz+wV9iAF423VHkCeYE6uWd5QTJ0tLcdAgMBAAECYAuW7Uhp
OsBDsZGQUmQUo1IK3aybrOoK5NbtFa/SrHFh9KqGcgw74aJnu4V7N2gl6jPtXJYh
uGC/EC6d/Dfg/P5Qoo5OXd7uuJ7c7KRYTt8g2wCbhCVqjslH9imvColrgQIxAPCW
GWtlKMgubgRG2M6OQAwM8si50PAHdry/GzZ6j4+pcI9oJF2I6QnoiZ5mzH7wDwIx
APCJp9c2muChv/0/hCcHaq8xu1zFRLgt3Z+HBS+eTdS2ZlqDGI1wr0J8ilRhR0K6
EwIwcjzjnxIutjcNuGwnoJT9JnuzgMpywrbYk7Eu68RwjKfJMd8ifWN4PGM1jYiE
i7XTAjBUu0kCiNu58YCeBzfYP8aW/F/R6DOy5YVCYt+yzIMCQVaA39lQSbeTJifc
XYAqwz0CMEJ1vNfhK5EHJD4CY6TfRL7XLRI/J0E7PGABfzVxhjj1mOf3Qedoi6bT
5x1xJV4t8g==
-----END PRIVATE KEY-----
"""


def _readme_signed_headers() -> set[str]:
    """The header list README's DKIM paragraph promises (`h=` covers A, B ... and Z)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    m = re.search(r"`h=` covers ([A-Za-z,\s-]+?),\s+each listed once more", readme)
    assert m, "README's DKIM paragraph moved"
    return {n.strip().lower() for n in re.split(r",|\band\b", " ".join(m.group(1).split()))}


EXPECTED_H = _readme_signed_headers()


@pytest.fixture
def signing(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv(ED_ENV, ed25519_seed_b64())
    return signing_config(config, tmp_path)


def variant(config: Config) -> VariantMessage:
    return VariantMessage(config, config.newsletter("daily"), date(2026, 3, 10), "news")


def signature_tags(raw: bytes) -> list[dict[str, str]]:
    msg = message_from_bytes(raw, policy=policy.compat32)
    out = []
    for value in msg.get_all("DKIM-Signature") or []:
        flat = re.sub(r"\s+", "", str(value))
        out.append(dict(tag.split("=", 1) for tag in flat.split(";") if tag))
    return out


def assert_signed(raw: bytes, config: Config) -> None:
    assert verify(raw, dns_records(config)) == [True, True]
    tags = signature_tags(raw)
    assert [(t["a"], t["s"], t["d"]) for t in tags] == [
        ("rsa-sha256", RSA_SELECTOR, "news.example"),
        ("ed25519-sha256", ED_SELECTOR, "news.example"),
    ]
    for t in tags:
        assert "l" not in t  # never a body length limit
        assert t["c"] == "relaxed/simple"
        signed = t["h"].lower().split(":")
        present = {n for n in EXPECTED_H if n in raw.decode("ascii").lower()}
        assert present <= set(signed)
        for name in present:
            assert signed.count(name) == 2, name  # oversigned: none can be added


def test_a_signed_message_verifies_with_dkimpy_and_covers_the_bulk_sender_headers(
    signing: Config,
) -> None:
    m = outgoing(1)[0]
    raw = variant(signing).mime(m.content, m.to, WHEN)
    assert raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert_signed(raw, signing)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78 + 2
    assert signature_tags(raw)[0]["t"] == str(int(WHEN.timestamp()))
    # The message itself is unchanged below the signatures.
    unsigned = variant(dataclasses.replace(signing, dkim=DkimConfig())).mime(m.content, m.to, WHEN)
    assert raw.endswith(unsigned)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("a second Subject", lambda r: r.replace(b"\r\nDate:", b"\r\nSubject: Win big\r\nDate:")),
        ("a Reply-To", lambda r: r.replace(b"\r\nDate:", b"\r\nReply-To: x@evil.example\r\nDate:")),
        ("the one-click URL", lambda r: r.replace(b"/u/token1>", b"/u/token2>")),
        ("List-Unsubscribe-Post", lambda r: r.replace(b"=One-Click", b"=Two-Click")),
        ("Feedback-ID", lambda r: r.replace(b"Feedback-ID: digest:", b"Feedback-ID: other:")),
        ("one body byte", lambda r: r.replace(b"Hello reader 1", b"Hello reader 2")),
        ("text appended to the body", lambda r: r + b"Buy now!\r\n"),
    ],
)
def test_any_change_to_what_is_signed_breaks_both_signatures(
    signing: Config, what: str, change: object
) -> None:
    m = outgoing(1)[0]
    raw = variant(signing).mime(m.content, m.to, WHEN)
    tampered = change(raw)  # type: ignore[operator]
    assert tampered != raw, what
    assert verify(tampered, dns_records(signing)) == [False, False], what


def test_unsigned_headers_may_be_added_by_relays(signing: Config) -> None:
    m = outgoing(1)[0]
    raw = variant(signing).mime(m.content, m.to, WHEN)
    relayed = b"Received: from relay.example by mx.example; Tue, 10 Mar 2026\r\n" + raw
    assert verify(relayed, dns_records(signing)) == [True, True]


def test_substitution_template_messages_are_signed_per_recipient(signing: Config) -> None:
    from tests.test_sending_providers import substituted_batch

    batch = substituted_batch(signing, 3)
    raws = [batch.mime(i) for i in range(3)]
    for raw in raws:
        assert_signed(raw, signing)
    bodies = {signature_tags(r)[0]["bh"] for r in raws}
    assert len(bodies) == 3  # each reader's own links: each its own body hash


def test_rsa_alone_and_ed25519_alone(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ED_ENV, ed25519_seed_b64())
    m = outgoing(1)[0]
    for rsa_key, ed_key in ((True, False), (False, True)):
        cfg = signing_config(config, tmp_path, rsa_key=rsa_key, ed_key=ed_key)
        raw = variant(cfg).mime(m.content, m.to, WHEN)
        assert verify(raw, dns_records(cfg)) == [True]


def test_the_signing_domain_can_be_the_parent_of_the_from_domain(signing: Config) -> None:
    cfg = dataclasses.replace(signing, dkim=dataclasses.replace(signing.dkim, domain="example"))
    m = outgoing(1)[0]
    raw = variant(cfg).mime(m.content, m.to, WHEN)
    assert {t["d"] for t in signature_tags(raw)} == {"example"}
    assert verify(raw, dns_records(cfg)) == [True, True]
    # ... and a receiver looking the key up under the From domain finds nothing.
    assert verify(raw, dns_records(signing)) == [False, False]


def test_smtp_mail_received_by_the_server_verifies(
    signing: Config,
    smtp_server: SmtpServer,  # noqa: F811
) -> None:
    provider = SmtpProvider(smtp_config(smtp_server), "bounces@news.example")
    provider.send(Batch(variant(signing), outgoing(3), WHEN), Marks())
    provider.close()
    assert len(smtp_server.received) == 3
    for _, raw in smtp_server.received:
        assert_signed(raw, signing)


def test_outbox_files_verify(signing: Config, tmp_path: Path) -> None:
    provider = OutboxProvider(tmp_path / "outbox")
    provider.send(Batch(variant(signing), outgoing(2), WHEN), Marks())
    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 2
    for f in files:
        assert_signed(f.read_bytes(), signing)


def test_confirmation_emails_are_signed_too(signing: Config) -> None:
    nl = signing.newsletter("daily")
    letter = outgoing(1)[0].content
    to = Addressee("ann@example.org", None, "", "confirm.daily.1.1@news.example", 1)
    raw = TransactionalMessage(signing, nl, "confirm").mime(letter, to, WHEN)
    assert verify(raw, dns_records(signing)) == [True, True]
    h = signature_tags(raw)[0]["h"].split(":")
    assert "list-unsubscribe" in h  # absent, listed: none can be added on the way
    assert b"List-Unsubscribe" not in raw


def test_a_whole_send_over_smtp_is_signed_and_the_ledger_settles(
    signing: Config,
    sessions: sessionmaker[Session],
    smtp_server: SmtpServer,  # noqa: F811
    now: datetime,
) -> None:
    from digest.clock import fixed
    from tests.fakes.population import add_population
    from tests.render_support import EDITION_DATE, store_edition
    from tests.test_sending_ledger import with_smtp

    cfg = with_smtp(signing, smtp_server)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 5, now)
    report = send_edition(
        cfg, sessions, "daily", EDITION_DATE, SendOptions(provider="smtp"), clock=fixed(now)
    )
    assert report.sent_now == 5
    assert len(smtp_server.received) == 5
    for _, raw in smtp_server.received:
        assert_signed(raw, cfg)


def test_a_send_with_an_unreadable_key_stops_before_anything_changes(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    from digest.clock import fixed
    from digest.ledger import Delivery
    from tests.fakes.population import add_population
    from tests.render_support import EDITION_DATE, store_edition
    from tests.test_sending_ledger import with_outbox

    key = DkimKeyConfig(selector="s1", key_file=tmp_path / "missing.pem")
    cfg = dataclasses.replace(with_outbox(config, tmp_path / "out"), dkim=DkimConfig(keys=(key,)))
    with sessions.begin() as session:
        edition = store_edition(session)
        add_population(session, 3, now)
    with pytest.raises(ConfigError, match="missing.pem does not exist"):
        send_edition(cfg, sessions, "daily", EDITION_DATE, SendOptions(), clock=fixed(now))
    with sessions() as session:
        assert session.query(Delivery).count() == 0
        assert session.get(type(edition), edition.id).status == "draft"  # type: ignore[union-attr]
    assert not (tmp_path / "out").exists()


def test_sendgrid_needs_no_key_even_when_one_is_configured(config: Config, tmp_path: Path) -> None:
    key = DkimKeyConfig(selector="s1", key_file=tmp_path / "missing.pem")
    cfg = dataclasses.replace(config, dkim=DkimConfig(keys=(key,)))
    m = outgoing(1)[0]
    v = variant(cfg)
    body = sendgrid_body(v, m.content, [sendgrid_personalization(v, m.to)])
    assert body["headers"]["Feedback-ID"] == "digest:daily:20260310:news.example"


def test_preview_eml_is_signed_as_the_send_signs(
    signing: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI reads the config file: write one with the keys.
    toml = (Path(__file__).parent / "data" / "digest.toml").read_text()
    key = tmp_path / "rsa.pem"
    key.write_bytes(rsa_pem())
    cfg_path = tmp_path / "digest.toml"
    cfg_path.write_text(
        toml + f'\n[dkim]\nkeys = [{{ selector = "{RSA_SELECTOR}", key_file = "rsa.pem" }},'
        f' {{ selector = "{ED_SELECTOR}", key_env = "{ED_ENV}" }}]\n'
    )
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{tmp_path / 'd.db'}")
    from digest_cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(cfg_path), "edition", "build", "daily"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["--config", str(cfg_path), "preview", "daily", "--format", "eml"])
    assert result.exit_code == 0, result.output
    raw = result.output.encode("ascii").replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert verify(raw, dns_records(signing)) == [True, True]


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ('[{ selector = "s1" }]', "give exactly one of key_file (a PEM file) or key_env"),
        (
            '[{ selector = "s1", key_file = "a.pem", key_env = "X" }]',
            "give exactly one of key_file",
        ),
        ('[{ selector = "bad selector", key_env = "X" }]', "is not a DNS label"),
        ('[{ selector = "s1", key_env = "X" }, { selector = "s1", key_env = "Y" }]', "twice"),
        ('"s1"', "must be an array of tables"),
    ],
)
def test_bad_dkim_config_is_one_clear_error(keys: str, needle: str) -> None:
    import tomllib

    raw = tomllib.loads((Path(__file__).parent / "data" / "digest.toml").read_text())
    raw["dkim"] = tomllib.loads(f"keys = {keys}")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_config(raw, Path("digest.toml"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not a key at all", "not a PEM private key"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable PEM"),
        (None, "too short"),
    ],
)
def test_unusable_keys_stop_before_anything_is_signed(
    config: Config, tmp_path: Path, text: str | None, needle: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_text(SHORT_RSA_PEM if text is None else text)
    cfg = dataclasses.replace(
        config, dkim=DkimConfig(keys=(DkimKeyConfig(selector="s1", key_file=path),))
    )
    m = outgoing(1)[0]
    with pytest.raises(ConfigError, match=needle) as e:
        variant(cfg).mime(m.content, m.to, WHEN)
    assert str(path) in str(e.value)


def test_missing_key_file_and_variable_name_the_source(config: Config, tmp_path: Path) -> None:
    for key in (
        DkimKeyConfig(selector="s1", key_file=tmp_path / "nope.pem"),
        DkimKeyConfig(selector="s1", key_env="DIGEST_TEST_NO_SUCH_VARIABLE"),
    ):
        cfg = dataclasses.replace(config, dkim=DkimConfig(keys=(key,)))
        m = outgoing(1)[0]
        with pytest.raises(ConfigError, match="nope.pem does not exist|NO_SUCH_VARIABLE"):
            variant(cfg).mime(m.content, m.to, WHEN)


def test_a_pem_in_an_environment_variable_may_carry_escaped_newlines(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGEST_TEST_RSA", rsa_pem().decode().replace("\n", "\\n"))
    cfg = dataclasses.replace(
        config, dkim=DkimConfig(keys=(DkimKeyConfig(selector="s1", key_env="DIGEST_TEST_RSA"),))
    )
    m = outgoing(1)[0]
    raw = variant(cfg).mime(m.content, m.to, WHEN)
    assert verify(raw, dns_records(cfg)) == [True]


def test_signed_header_list_is_what_the_readme_promises() -> None:
    assert set(SIGNED) == EXPECTED_H


def test_dkimpy_agrees_on_an_unsigned_copy_signed_by_itself(signing: Config) -> None:
    """Cross-check the canonical forms: dkimpy signing the same message with the same key and
    header list gets the same body hash."""
    m = outgoing(1)[0]
    raw = variant(signing).mime(m.content, m.to, WHEN)
    ours = signature_tags(raw)[0]
    unsigned = raw[raw.index(b"From: ") :]
    theirs = dkimpy.sign(
        unsigned,
        RSA_SELECTOR.encode(),
        b"news.example",
        rsa_pem(),
        include_headers=[h.encode() for h in ours["h"].split(":")],
    )
    tags = signature_tags(theirs + unsigned)[0]
    assert tags["bh"] == ours["bh"]
    assert verify(theirs + unsigned, dns_records(signing))[0] is True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(st.sampled_from("AbcZ-_ \t"), min_size=1, max_size=12),
            st.text(st.sampled_from("ab Z\t:;=\r\n\r\n \t"), max_size=40),
        ),
        max_size=5,
    )
)
def test_relaxed_canonicalisation_is_dkimpys(pairs: list[tuple[str, str]]) -> None:
    from dkim.canonicalization import Relaxed

    from digest.dkim import relaxed

    data = [(n.encode(), v.encode()) for n, v in pairs]
    assert relaxed(data) == Relaxed.canonicalize_headers(data)
