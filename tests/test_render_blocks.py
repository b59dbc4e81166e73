"""Segment blocks: a note from the config shown only to members of a segment, in the HTML and
the text twin, rendered once per variant, kept by the ledger and the same in preview and send."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import BlockConfig, Config, load_config
from digest.errors import ConfigError
from digest.ledger import Delivery, decode_variant, encode_variant
from digest.render import Personal, Renderer, personalise
from digest.sending import SendOptions, format_report, ledger_report, send_edition
from digest_cli import cli
from subscribers.audience import audience
from subscribers.models import Tag
from subscribers.service import add_subscriber
from tests.render_support import EDITION_DATE, count_inlining, make_edition, store_edition

BLOCK = """
[[newsletters.daily.blocks]]
segment = "vip"
title = "For our <members>"
text = "Thank you & welcome <script>alert(1)</script>"
link = "https://news.example/members"
position = "{position}"
"""
PERSON = Personal(
    email="ana@example.com",
    name="Ana",
    unsubscribe_url="https://news.example/u/t",
    preferences_url="https://news.example/p/t",
    view_url="https://news.example/archive/daily/2026-03-10",
)


def _config_file(tmp_path: Path, config_path: Path, extra: str) -> Path:
    path = tmp_path / "digest.toml"
    path.write_text(config_path.read_text(encoding="utf-8") + extra, encoding="utf-8")
    return path


def _with_block(config: Config, position: str = "top", outbox: Path | None = None) -> Config:
    nl = config.newsletter("daily")
    block = BlockConfig(
        segment="vip",
        title="For our <members>",
        text="Thank you & welcome <script>alert(1)</script>",
        link="https://news.example/members",
        position=position,
    )
    daily = dataclasses.replace(nl, blocks=(block,))
    config = dataclasses.replace(config, newsletters={**config.newsletters, "daily": daily})
    if outbox is not None:
        config = dataclasses.replace(config, outbox=dataclasses.replace(config.outbox, dir=outbox))
    return config


def test_blocks_are_read_from_the_config(config_path: Path, tmp_path: Path) -> None:
    config = load_config(_config_file(tmp_path, config_path, BLOCK.format(position="bottom")))
    (block,) = config.newsletter("daily").blocks
    assert block == BlockConfig(
        "vip",
        "For our <members>",
        "Thank you & welcome <script>alert(1)</script>",
        "https://news.example/members",
        "bottom",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('segment = "vip"', 'segment = "gold"'),
            "newsletters.daily.blocks[0].segment: unknown segment 'gold'",
        ),
        (("top", "middle"), "newsletters.daily.blocks[0].position: 'middle' is not one of"),
        (
            ("https://news.example/members", "javascript:alert(1)"),
            "newsletters.daily.blocks[0].link: 'javascript:alert(1)' is not an http",
        ),
    ],
)
def test_a_bad_block_is_a_config_error_naming_file_and_key(
    config_path: Path, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _config_file(tmp_path, config_path, BLOCK.format(position="top").replace(*change))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("position", ["top", "bottom"])
def test_a_block_is_escaped_and_placed_in_html_and_text(config: Config, position: str) -> None:
    config = _with_block(config, position)
    renderer = Renderer(config, config.newsletter("daily"), make_edition())
    with_block = personalise(renderer.variant((), (0,)), PERSON)
    without = personalise(renderer.variant(()), PERSON)

    assert "For our &lt;members&gt;" in with_block.html
    assert "Thank you &amp; welcome &lt;script&gt;alert(1)&lt;/script&gt;" in with_block.html
    assert "<script>" not in with_block.html and "<members>" not in with_block.html
    assert "utm_source=" in with_block.html.split("news.example/members", 1)[1][:20]
    # The HTML labels the link (default "Learn more"); the text twin shows the URL itself.
    assert re.search(
        r'href="https://news\.example/members\?[^"]*"[^>]*>Learn more\u00a0›</a>',
        with_block.html,
    )
    assert "FOR OUR <MEMBERS>" in with_block.text
    assert "Thank you & welcome <script>alert(1)</script>" in with_block.text
    assert re.search(r"^https://news\.example/members\?utm_source=", with_block.text, re.M)
    for part in (without.html, without.text):
        assert "members" not in part.casefold()

    for doc, marker, first_section in (
        (with_block.html, "For our &lt;members&gt;", ">News</h2>"),
        (with_block.text, "FOR OUR <MEMBERS>", "\nNEWS\n"),
    ):
        greeting, footer = doc.index("Good morning"), doc.index("because you subscribed")
        at = doc.index(marker)
        assert greeting < at < footer
        assert (at < doc.index(first_section)) == (position == "top")


def test_the_archive_shows_no_block(config: Config) -> None:
    config = _with_block(config)
    renderer = Renderer(config, config.newsletter("daily"), make_edition())
    renderer.variant((), (0,))
    archive = renderer.archive()
    assert "members" not in archive.html.casefold() and "members" not in archive.text.casefold()


def test_variants_differing_only_by_block_are_inlined_once_each(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_inlining(monkeypatch)
    config = _with_block(config)
    renderer = Renderer(config, config.newsletter("daily"), make_edition())
    keys = {renderer.variant(("News",), blocks).key for blocks in [(), (0,)] * 50}
    assert len(keys) == 2 and len(calls) == 2
    assert (
        renderer.variant(("News",)).key
        == Renderer(config, config.newsletter("daily"), make_edition()).variant(("News",)).key
    )  # a variant without blocks keeps the key it always had


@pytest.fixture
def readers(sessions: sessionmaker[Session], config: Config, now: datetime) -> None:
    nl = config.newsletter("daily")
    with sessions.begin() as session:
        store_edition(session)
        add_subscriber(session, nl, "ana@example.com", at=now, name="Ana")
        add_subscriber(session, nl, "vera@example.com", at=now, name="Vera", tags=["vip"])
        add_subscriber(session, nl, "vic@example.com", at=now, name="Vic", tags=["vip"])


def test_audience_marks_segment_members_with_their_blocks(
    readers: None, session: Session, config: Config
) -> None:
    config = _with_block(config)
    got = {r.email: r.blocks for r in audience(session, config, config.newsletter("daily"))}
    assert got == {"ana@example.com": (), "vera@example.com": (0,), "vic@example.com": (0,)}


def _outbox(folder: Path) -> dict[str, EmailMessage]:
    out = {}
    for path in folder.glob("*.eml"):
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(msg, EmailMessage)
        out[str(msg["To"]).rsplit("<", 1)[-1].rstrip(">")] = msg
    return out


def _part(msg: EmailMessage, kind: str) -> str:
    body = msg.get_body((kind,))
    assert body is not None
    return str(body.get_content())


def test_a_rerun_after_a_partial_send_keeps_each_readers_variant(
    readers: None, config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    config = _with_block(config, outbox=tmp_path / "out")

    def send(**kw: object) -> None:
        options = SendOptions(**kw)  # type: ignore[arg-type]
        send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))

    send(limit=1)
    with sessions.begin() as session:
        ledger = {d.email: d for d in session.scalars(select(Delivery))}
        assert decode_variant(ledger["vera@example.com"].sections)[1] == (0,)
        assert decode_variant(ledger["ana@example.com"].sections)[1] == ()
        # Both vip rows have one variant; only one went out.
        assert ledger["vera@example.com"].variant == ledger["vic@example.com"].variant
        assert ledger["vera@example.com"].variant != ledger["ana@example.com"].variant
        pending = {e for e, d in ledger.items() if d.state == "pending"}
        assert len(pending) == 2
        # Leaving the segment after the rows were written does not change the email.
        session.execute(delete(Tag))
    send()

    sent = _outbox(tmp_path / "out")
    assert set(sent) == {"ana@example.com", "vera@example.com", "vic@example.com"}
    for email, msg in sent.items():
        shown = "For our &lt;members&gt;" in _part(msg, "html")
        assert shown == ("FOR OUR <MEMBERS>" in _part(msg, "plain"))
        assert shown == (email != "ana@example.com"), email


def test_preview_of_a_block_reader_is_the_message_the_send_delivers(
    readers: None,
    config_path: Path,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _config_file(tmp_path, config_path, BLOCK.format(position="bottom"))
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)  # the test config's outbox is ./outbox

    def run(*args: str) -> bytes:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout_bytes

    day = EDITION_DATE.isoformat()
    preview = run(
        "preview", "daily", "--date", day, "--subscriber", "vera@example.com", "--format", "eml"
    )
    run("send", "daily", "--date", day)
    (sent,) = [
        p.read_bytes()
        for p in (tmp_path / "outbox").glob("*.eml")
        if b"vera@example.com" in p.read_bytes()
    ]

    def without_date(raw: bytes) -> bytes:
        return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\n", raw)

    assert without_date(preview) == without_date(sent)
    msg = message_from_bytes(sent, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert "For our &lt;members&gt;" in _part(msg, "html")


def test_ledger_rows_written_before_blocks_still_load() -> None:
    assert decode_variant('["Health", "News"]') == (("Health", "News"), ())
    assert encode_variant(["News"], []) == '["News"]'  # rows without blocks look as they did
    assert decode_variant(encode_variant(["News"], [0, 2])) == (("News",), (0, 2))


def test_the_sends_report_tells_variants_apart_by_their_blocks(
    readers: None, config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    config = _with_block(config, outbox=tmp_path / "out")
    send_edition(config, sessions, "daily", EDITION_DATE, SendOptions(), clock=fixed(now))
    with sessions() as session:
        report = ledger_report(session, config, "daily", EDITION_DATE)
    text = format_report(report, config.newsletter("daily"))
    by_variant = text.split("by variant:\n", 1)[1].splitlines()
    with_block = [line for line in by_variant if "; block for vip)" in line]
    without = [line for line in by_variant if line.startswith("  v-") and "block" not in line]
    assert len(with_block) == 1 and "sent 2" in with_block[0]  # vera and vic
    assert len(without) == 1 and "sent 1" in without[0]  # ana
