"""Helpers of the tests/test_clicks_*.py modules: a tracked newsletter, a send to the outbox, and
the links of what was sent."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.sending import RetryPolicy, SendOptions, SendReport, send_edition
from tests.render_support import EDITION_DATE

TRACKED = re.compile(r"https?://[^\s\"'<>]+/r/[A-Za-z0-9._-]+")
FAST = RetryPolicy(attempts=2, base=0.01, cap=0.02)


def tracked(config: Config, tmp_path: Path, newsletter: str = "daily", **fields: Any) -> Config:
    """`config` with click tracking on for `newsletter` and the outbox in tmp_path/out."""
    nl = dataclasses.replace(config.newsletter(newsletter), track_clicks=True, **fields)
    return dataclasses.replace(
        config,
        newsletters={**config.newsletters, newsletter: nl},
        outbox=dataclasses.replace(config.outbox, dir=tmp_path / "out"),
    )


def tracked_toml(tmp_path: Path, extra: str = "") -> Path:
    """The tests' digest.toml with click tracking on for `daily` (and `extra` appended), in
    tmp_path, for the CLI."""
    base = (Path(__file__).parent / "data" / "digest.toml").read_text()
    toml = base.replace("[newsletters.daily]\n", "[newsletters.daily]\ntrack_clicks = true\n", 1)
    path = tmp_path / "tracked.toml"
    path.write_text(toml + extra)
    return path


def send(
    config: Config,
    sessions: sessionmaker[Session],
    at: datetime,
    newsletter: str = "daily",
    day: Any = EDITION_DATE,
    **options: Any,
) -> SendReport:
    opts = SendOptions(retry=FAST, **options)
    return send_edition(config, sessions, newsletter, day, opts, clock=fixed(at))


@dataclass(frozen=True)
class Sent:
    to: str
    html: str
    text: str

    @property
    def html_links(self) -> list[str]:
        return [u.replace("&amp;", "&") for u in TRACKED.findall(self.html)]

    @property
    def text_links(self) -> list[str]:
        return TRACKED.findall(self.text)


def outbox(config: Config) -> list[Sent]:
    out: list[Sent] = []
    assert config.outbox.dir is not None
    for path in sorted(Path(config.outbox.dir).glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        text = html = ""
        for part in msg.walk():
            if part.get_content_type() == "text/plain":
                text = str(part.get_content())
            elif part.get_content_type() == "text/html":
                html = str(part.get_content())
        out.append(Sent(msg["To"].addresses[0].addr_spec, html, text))
    return out


def path_of(url: str) -> str:
    return url[url.index("/r/") :]
