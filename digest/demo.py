"""`make demo`: the main job end to end on the embedded default (SQLite, sample data, outbox).

The shipped sample newsroom (digest/sample/) is dated around a fixed day; the demo moves it so
that its newest story sits just before today's send time, then runs the real pipeline on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.editions import build_edition, format_edition
from digest.selection import edition_window

SAMPLE_ANCHOR = datetime.fromisoformat("2026-01-15T10:00:00+00:00")
SAMPLE_FILES = ("ledger.json", "wire.xml", "crime.csv")
WORK_DIR = Path(".var/sample")


def shifted_sample(dest: Path, anchor: datetime) -> list[Path]:
    """Copy the sample files to `dest` with every date moved so SAMPLE_ANCHOR becomes `anchor`."""
    shift = anchor - SAMPLE_ANCHOR
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    sample = resources.files("digest.sample")
    for name in SAMPLE_FILES:
        text = (sample / name).read_text(encoding="utf-8")
        if name.endswith(".json"):
            items = json.loads(text)
            for item in items:
                item["published"] = _shift_iso(item["published"], shift)
            text = json.dumps(items, ensure_ascii=False, indent=1)
        elif name.endswith(".csv"):
            text = _shift_csv(text, shift)
        else:
            text = _shift_rss(text, shift)
        path = dest / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def _shift_iso(value: str, shift: timedelta) -> str:
    moved = datetime.fromisoformat(value.replace("Z", "+00:00")) + shift
    return moved.isoformat()


def _shift_csv(text: str, shift: timedelta) -> str:
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(text)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["published"] = _shift_iso(row["published"], shift)
        writer.writerow(row)
    return buf.getvalue()


def _shift_rss(text: str, shift: timedelta) -> str:
    import re
    from email.utils import format_datetime, parsedate_to_datetime

    def move(m: re.Match[str]) -> str:
        return f"<pubDate>{format_datetime(parsedate_to_datetime(m.group(1)) + shift)}</pubDate>"

    return re.sub(r"<pubDate>(.*?)</pubDate>", move, text)


def demo_anchor(newsletter: NewsletterConfig, now: datetime) -> datetime:
    """Half an hour before today's send time (or before now, when that is earlier), so the
    sample's newest stories fall inside today's edition window."""
    today = now.astimezone(newsletter.tz).date()
    _, end = edition_window(newsletter, today)
    return min(now, end) - timedelta(minutes=30)


def run_demo(config: Config, sessions: sessionmaker[Session], *, clock: Clock) -> Iterator[str]:
    """Run each step and yield what it did, one line at a time."""
    from digest.ingest import ingest_files

    newsletter = next(iter(config.newsletters.values()))
    now = clock()
    files = shifted_sample(WORK_DIR, demo_anchor(newsletter, now))
    for report in ingest_files(
        sessions, files, section=None, source=None, fmt="auto", known_sections=None, clock=clock
    ):
        yield report.summary()
    today = now.astimezone(newsletter.tz).date()
    with sessions() as session:
        result = build_edition(session, config, newsletter, today, clock=clock, force=True) \
            if not _is_frozen(session, newsletter.id, today) else None
        if result is not None:
            session.commit()
            yield result.message
            yield format_edition(result.edition)


def _is_frozen(session: Session, newsletter: str, day: object) -> bool:
    from digest.editions import get_edition

    edition = get_edition(session, newsletter, day)  # type: ignore[arg-type]
    return edition is not None and edition.frozen
