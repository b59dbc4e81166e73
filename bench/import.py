"""Import benchmark: 100,000 generated CSV rows into a fresh SQLite database, then a re-import
of the same file (all unchanged), against a baseline of naive per-row ORM inserts measured on a
5,000-row sample in the same run.

    .venv/bin/python bench/import.py [ROWS]
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from digest.config import load_config
from digest.db import make_engine, session_factory, transaction, upgrade
from subscribers.importing import import_bytes
from subscribers.models import Attribute, Membership, Subscriber, Tag, email_hash
from subscribers.service import check_email

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
REGIONS = ("Tampa Bay", "Orlando", "Miami", "Jacksonville")


def generate(rows: int) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["Email", "Name", "Sections", "Tags", "Region", "Plan"])
    for i in range(rows):
        sections = "Business; News" if i % 3 == 0 else ""
        tags = "vip" if i % 10 == 0 else ""
        w.writerow(
            [f"Reader.{i}@Example.com", f"Reader {i}", sections, tags, REGIONS[i % 4], "free"]
        )
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def naive(sessions_url: str, rows: int) -> float:
    """What a straightforward importer does: validate, look up, add one ORM object per row."""
    from sqlalchemy import select

    engine = make_engine(sessions_url)
    upgrade(engine)
    sessions = session_factory(engine)
    text = generate(rows).decode("utf-8-sig")
    start = time.perf_counter()
    with transaction(sessions) as s:
        for rec in csv.DictReader(io.StringIO(text, newline="")):
            email = check_email(rec["Email"])
            if s.scalar(select(Subscriber).where(Subscriber.email == email)) is not None:
                continue
            sub = Subscriber(
                email=email,
                email_hash=email_hash(email),
                name=rec["Name"],
                status="active",
                created_at=AT,
                confirmed_at=AT,
            )
            sub.memberships.append(
                Membership(newsletter="daily", status="active", paused=False, joined_at=AT)
            )
            sub.attributes.append(Attribute(name="region", value=rec["Region"]))
            sub.attributes.append(Attribute(name="plan", value=rec["Plan"]))
            if rec["Tags"]:
                sub.tags.append(Tag(tag=rec["Tags"]))
            s.add(sub)
            s.flush()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return rows / elapsed


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    config = load_config(ROOT / "tests" / "data" / "digest.toml")
    newsletter = config.newsletter("daily")
    data = generate(rows)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        sessions = session_factory(engine)
        for label in ("first import", "re-import"):
            start = time.perf_counter()
            with transaction(sessions) as s:
                report = import_bytes(s, newsletter, data, file="bench.csv", at=AT)
            elapsed = time.perf_counter() - start
            print(f"{label:>13}: {rows:,} rows in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s")
            print(f"{'':>13}  {report.summary()}")
        engine.dispose()
        sample = min(rows, 5_000)
        rate = naive(f"sqlite:///{tmp}/naive.db", sample)
        print(f"{'baseline':>13}: naive per-row ORM import of {sample:,} rows = {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
