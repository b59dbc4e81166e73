"""`make demo`: the main job end to end on the embedded default (SQLite, sample data, outbox).

The shipped sample newsroom (digest/sample/) is dated around a fixed day; the demo moves it so
that its newest story sits just before today's send time, then runs the real pipeline on it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from importlib import resources
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import transaction
from digest.desk import approve, drop_story, set_note
from digest.desk_view import show_edition
from digest.editions import build_edition, get_edition
from digest.ingest import ingest_files
from digest.proofs import send_proof
from digest.selection import edition_window
from digest.sending import SendOptions, send_edition
from subscribers.importing import import_csv

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
        # Each day's copy is new content (as a real newsroom's would be): dated links and ids.
        day = f"{anchor:%Y/%m/%d}"
        text = text.replace("https://ledger.example/", f"https://ledger.example/{day}/")
        text = text.replace("https://wire.example/", f"https://wire.example/{day}/")
        text = text.replace("ledger-0", f"ledger-{anchor:%Y%m%d}-0")
        path = dest / name
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def _shift_iso(value: str, shift: timedelta) -> str:
    moved = datetime.fromisoformat(value.replace("Z", "+00:00")) + shift
    return moved.isoformat()


def _shift_csv(text: str, shift: timedelta) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        row["published"] = _shift_iso(row["published"], shift)
        writer.writerow(row)
    return buf.getvalue()


def _shift_rss(text: str, shift: timedelta) -> str:
    def move(m: re.Match[str]) -> str:
        return f"<pubDate>{format_datetime(parsedate_to_datetime(m.group(1)) + shift)}</pubDate>"

    return re.sub(r"<pubDate>(.*?)</pubDate>", move, text)


def demo_anchor(newsletter: NewsletterConfig, now: datetime) -> datetime:
    """Half an hour before today's send time (or before now, when that is earlier), so the
    sample's newest stories fall inside today's edition window."""
    today = now.astimezone(newsletter.tz).date()
    _, end = edition_window(newsletter, today)
    return min(now, end) - timedelta(minutes=30)


def todays_anchor(newsletter: NewsletterConfig, now: datetime, stored: Path) -> datetime:
    """demo_anchor, kept for the rest of the local day in `stored`: before today's send time
    the anchor follows the clock, and a re-run must find the very same stories (unchanged),
    not the sample moved by the minutes in between."""
    today = now.astimezone(newsletter.tz).date().isoformat()
    try:
        day, _, when = stored.read_text(encoding="utf-8").strip().partition(" ")
        if day == today:
            return datetime.fromisoformat(when)
    except (OSError, ValueError):
        pass  # none yet, or not ours to read: a new anchor
    anchor = demo_anchor(newsletter, now)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(f"{today} {anchor.isoformat()}\n", encoding="utf-8")
    return anchor


DEMO_EDITOR = "demo-editor"
DEMO_DESK = "desk@ledger.example"
DEMO_NOTE = (
    "Good morning from the desk. The top story today: **the council vote on transit**. Our "
    "[live coverage](https://ledger.example/live) runs all day.\n\n"
    "Have a tip? *Reply to this email.*"
)


def run_demo(config: Config, sessions: sessionmaker[Session], *, clock: Clock) -> Iterator[str]:
    """Ingest the sample newsroom and readers, build today's edition, shape it at the desk
    (an editor's note, one story dropped), proof and approve it, and send it to the outbox.
    Each step first prints the `digest` command that does the same.

    Re-runnable: a second run the same day finds the edition already sent and says where it is;
    a run on another day gets that day's copy of the sample (dated URLs) and a new edition."""
    newsletter = next(iter(config.newsletters.values()))
    nid = newsletter.id
    now = clock()
    today = now.astimezone(newsletter.tz).date()
    yield from _demo_keys(config)
    files = shifted_sample(WORK_DIR, todays_anchor(newsletter, now, WORK_DIR / "anchor"))
    yield _command("ingest", *map(str, files))
    for report in ingest_files(sessions, files, section=None, source=None, fmt="auto", clock=clock):
        yield report.summary()
    readers = resources.files("digest.sample") / "subscribers.csv"
    with resources.as_file(readers) as path, transaction(sessions) as session:
        yield _command("subscribers", "import", str(path), "-n", nid)
        yield import_csv(session, newsletter, path, at=now).summary()
    day = ["--date", today.isoformat()]
    with transaction(sessions) as session:
        edition = get_edition(session, nid, today)
        fresh = edition is None or (not edition.frozen and not edition.edits)
        if edition is None or not edition.frozen:
            yield _command("edition", "build", nid, *day, "--force")
            yield build_edition(session, config, newsletter, today, clock=clock, force=True).message
    if fresh:
        yield from _at_the_desk(config, sessions, newsletter, today, clock)
    yield _command("send", nid, *day)
    sent = send_edition(config, sessions, nid, today, SendOptions(provider="outbox"), clock=clock)
    yield sent.summary()
    outbox = config.outbox.dir.resolve()
    messages = sorted(outbox.glob(f"*{today:%Y-%m-%d}*.eml")) or sorted(outbox.glob("*.eml"))
    yield f"outbox: {len(messages)} message(s) in {outbox}/"
    if messages:
        preview = WORK_DIR.parent / "preview.html"
        preview.write_text(_html_part(messages[0]), encoding="utf-8")
        yield f"open {preview.resolve()} in a browser to see the first reader's email"
        yield f"or read the raw message: {messages[0]}"
    if newsletter.track_clicks:
        from digest.demo_clicks import reader_clicks

        yield from reader_clicks(config, sessions, nid, today, clock, messages)


def _at_the_desk(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter: NewsletterConfig,
    today: date,
    clock: Clock,
) -> Iterator[str]:
    """The editor's morning: a note, one story dropped, a look, a proof, the sign-off."""
    nid = newsletter.id
    day = ["--date", today.isoformat()]
    by = ["--by", DEMO_EDITOR]
    with transaction(sessions) as session:
        yield _command("edition", "note", nid, *day, *by, DEMO_NOTE)
        yield set_note(session, newsletter, today, DEMO_NOTE, by=DEMO_EDITOR, clock=clock).message
        edition = get_edition(session, nid, today)
        assert edition is not None
        # The last story of the first section that has more than one.
        target = next((items[-1] for _, items in edition.sections() if len(items) > 1), None)
        if target is not None:
            ref = f"{target.section}:{target.rank}"
            yield _command("edition", "drop", nid, *day, *by, ref)
            yield drop_story(session, newsletter, today, ref, by=DEMO_EDITOR, clock=clock).message
    with sessions() as session:
        yield _command("edition", "show", nid, *day)
        yield show_edition(session, config, newsletter, today).text()
    # One variant for the demo (the vip readers' copy, with their block); without --segment
    # the desk gets every variant the audience receives.
    yield _command("proof", nid, *day, "--to", DEMO_DESK, "--segment", "vip", *by)
    yield send_proof(
        config,
        sessions,
        newsletter,
        today,
        [DEMO_DESK],
        by=DEMO_EDITOR,
        clock=clock,
        segment="vip" if "vip" in config.segments else None,
    ).summary()
    with transaction(sessions) as session:
        yield _command("edition", "approve", nid, *day, *by)
        yield approve(session, newsletter, today, by=DEMO_EDITOR, clock=clock).message


def _command(*args: str) -> str:
    return "$ digest " + " ".join(shlex.quote(a) for a in args)


def _demo_keys(config: Config) -> Iterator[str]:
    """Create the throw-away DKIM keys the example config points into a `.var` folder at,
    so the demo's mail is signed as production mail is. Keys anywhere else are never made."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    for key in config.dkim.keys:
        path = key.key_file
        if path is None or path.exists() or ".var" not in path.parts:
            continue
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        yield f"created a demo DKIM key (selector {key.selector}) in {path}"


def _html_part(eml: Path) -> str:
    msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(preferencelist=("html",))
    return str(part.get_content()) if part is not None else ""
