"""Helpers shared by the tests/test_confirm_*.py modules: a double opt-in config, the link."""

from __future__ import annotations

import re
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from digest.config import Config, OutboxConfig

LINK = re.compile(r"https://news\.example(/confirm/[A-Za-z0-9_.-]+)")


def opt_in(config: Config, outbox: Path, provider: str = "outbox", **fields: object) -> Config:
    """The test config with double opt-in on `daily`, sending through `provider`."""
    daily = replace(config.newsletter("daily"), double_opt_in=True, provider=provider)
    return replace(
        config,
        newsletters={**config.newsletters, "daily": daily},
        outbox=OutboxConfig(dir=outbox),
        **fields,  # type: ignore[arg-type]
    )


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def link_path(msg: EmailMessage) -> str:
    """The path of the confirmation link, found in both parts and the same in each."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    in_text = LINK.findall(text.get_content())
    in_html = LINK.findall(html.get_content())
    assert len(set(in_text)) == 1 and set(in_html) == set(in_text)
    path: str = in_text[0]
    assert urlsplit(path).path == path
    return path


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, "the confirmation page carries a form token"
    return m.group(1)
