"""SpamAssassin (Debian's package, local tests only: `spamassassin -L -t`) scores every message
of the demo and of a realistic 50-story front page at most 0.1, with no rule above 0.0 but the
informational ones. Skipped when spamassassin is not installed (.ci/run installs it)."""

from __future__ import annotations

import dataclasses
import json
import mailbox
import os
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from digest.clock import fixed
from digest.config import OutboxConfig, load_config
from digest.db import make_engine, session_factory, upgrade
from digest.editions import build_edition
from digest.ingest import ingest_files
from digest.sending import SendOptions, send_edition
from subscribers.service import add_subscriber
from tests.dkim_support import signing_config
from tests.test_demo import run_demo

FRONT_PAGE = Path(__file__).parent / "data" / "frontpage"
SPAMASSASSIN = shutil.which("spamassassin")
# Rules that describe the message without judging it (they score 0.0 or less by design).
INFORMATIONAL = {"HTML_MESSAGE", "NO_RELAYS", "NO_RECEIVED", "NO_RELAYS_1"}

pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None, reason="spamassassin is not installed (apt-get install spamassassin)"
)


def front_page_messages(folder: Path) -> list[bytes]:
    """The Morning of a national daily: 40 of the store's 50 stories in 12 sections, readers
    in 4 variants, DKIM-signed, through the outbox."""
    config = load_config(FRONT_PAGE / "digest.toml")
    config = signing_config(config, folder, ed_key=False)
    engine = make_engine(f"sqlite:///{folder / 'frontpage.db'}")
    upgrade(engine)
    sessions = session_factory(engine)
    day = date(2026, 3, 10)
    now = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)  # after the 06:00 New York send time
    articles = json.loads((FRONT_PAGE / "articles.json").read_text(encoding="utf-8"))
    for i, a in enumerate(articles):
        a["published"] = (
            datetime(2026, 3, 10, 9, 30, tzinfo=UTC) - timedelta(minutes=17 * i)
        ).isoformat()
        a["popularity"] = 1000 - 10 * i
    feed = folder / "frontpage.json"
    feed.write_text(json.dumps(articles), encoding="utf-8")
    ingest_files(sessions, [feed], clock=fixed(now))
    nl = config.newsletter("morning")
    readers = [
        ("maria.lopez@example.com", "María López", ()),
        ("j.okafor@example.org", "James Okafor", ("Business", "Technology", "Science")),
        ("reader@example.net", None, ("Sports", "Arts", "Food", "Travel")),
        ("chen.wei@example.com", "陈伟", ("World", "Top Stories")),
    ]
    with sessions.begin() as session:
        for email, name, sections in readers:
            add_subscriber(session, nl, email, at=now, name=name, sections=sections)
        edition = build_edition(session, config, nl, day, clock=fixed(now)).edition
        assert len(edition.items) == 40
    outbox = folder / "frontpage-outbox"
    cfg = dataclasses.replace(config, outbox=OutboxConfig(dir=outbox))
    report = send_edition(cfg, sessions, "morning", day, SendOptions(), clock=fixed(now))
    engine.dispose()
    assert report.sent_now == len(readers)
    return [p.read_bytes() for p in sorted(outbox.glob("*.eml"))]


def demo_messages(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    _, result = run_demo(folder, monkeypatch)
    assert result.exit_code == 0, result.output
    return [p.read_bytes() for p in sorted((folder / ".var" / "outbox").glob("*.eml"))]


def score(messages: list[bytes], folder: Path) -> list[tuple[float, list[tuple[float, str]]]]:
    """(score, [(points, rule)]) of each message, in order: one spamassassin run over an mbox."""
    path = folder / "all.mbox"
    box = mailbox.mbox(path)
    for raw in messages:
        box.add(raw)
    box.close()
    env = {**os.environ, "HOME": str(folder)}  # its user_prefs go there, not to ~
    assert SPAMASSASSIN is not None
    with path.open("rb") as stdin:
        run = subprocess.run(
            [SPAMASSASSIN, "-L", "-t", "--mbox"],
            stdin=stdin,
            capture_output=True,
            env=env,
            timeout=600,
            check=True,
        )
    reports = run.stdout.decode("utf-8", "replace").split("Content analysis details:")[1:]
    out = []
    for text in reports:
        total = float(re.match(r"\s*\((-?[\d.]+) points", text).group(1))  # type: ignore[union-attr]
        rules = [
            (float(points), rule)
            for points, rule in re.findall(r"(?m)^\s*(-?\d+\.\d)\s+([A-Z0-9_]+)\s", text)
        ]
        out.append((total, rules))
    return out


def test_every_message_of_the_demo_and_of_a_front_page_scores_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = front_page_messages(tmp_path) + demo_messages(tmp_path, monkeypatch)
    assert len(messages) == 4 + 25
    results = score(messages, tmp_path)
    assert len(results) == len(messages)
    for raw, (total, rules) in zip(messages, results, strict=True):
        to = re.search(rb"\r\nTo: ([^\r\n]+)", raw)
        who = to.group(1).decode() if to else "?"
        flagged = [(p, r) for p, r in rules if p > 0.0 and r not in INFORMATIONAL]
        assert total <= 0.1 and not flagged, f"{who}: {total} points, {rules}"
