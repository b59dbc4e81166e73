"""The end of `make demo`: a few readers click links of the email they got, through the web
app's `/r/` redirect (the Flask test client, no server), a mail scanner fetches every link of
one message, and the report shows what counted."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config
from digest.report import build_report, format_report
from digest.web import create_app

_TRACKED = re.compile(r'href="([^"]*/r/[A-Za-z0-9._-]+)"')
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel link protection)"


def _links(eml: Path) -> list[str]:
    msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(preferencelist=("html",))
    html = str(part.get_content()) if part is not None else ""
    seen: list[str] = []
    for url in _TRACKED.findall(html):
        url = url.replace("&amp;", "&")
        if url not in seen:
            seen.append(url)
    return seen


def reader_clicks(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter: str,
    day: date,
    clock: Clock,
    messages: list[Path],
) -> Iterator[str]:
    """Simulated clicks a few minutes after the send, then `digest report`."""
    moment = [clock() + timedelta(minutes=4)]
    app = create_app(config, sessions, clock=lambda: moment[0])
    client = app.test_client()
    yield "readers click (simulated through the web app's /r/ redirect, 4 minutes later):"
    clicks = 0
    for i, eml in enumerate(messages[:8]):
        links = _links(eml)
        for url in links[: 1 + i % 3]:
            path = url[url.index("/r/") :]
            response = client.get(path, headers={"User-Agent": BROWSER})
            clicks += response.status_code == 302
            moment[0] += timedelta(seconds=45)  # a reader reads before the next click
    yield f"  {clicks} reader clicks on {min(len(messages), 8)} messages"
    if len(messages) > 8:
        links = _links(messages[8])
        for url in links:
            client.head(url[url.index("/r/") :], headers={"User-Agent": SCANNER})
        yield f"  a link scanner fetched all {len(links)} links of one message (flagged, not counted)"
    app.extensions["digest.clicks"].flush()
    yield f"$ digest report {newsletter} --date {day.isoformat()}"
    with sessions() as session:
        yield format_report(build_report(session, config, newsletter, day=day))
