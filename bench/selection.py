"""Benchmark: build an edition from a store of 1,000,000 articles on SQLite.

Every article has an HTML body (about --body-bytes), so the build dedupes on the body's first
words as it does in production; a third carry a CMS rank and a third a feed position.

Prints the edition build time (median of several builds of different dates), the query plan of
the candidate query (to confirm the index is used), and, as baselines in the same run, the same
candidate query forced to scan the table (`NOT INDEXED`), and the candidate query without the
body's head (what the body dedupe adds). Goal: build ≤ 200 ms.

    .venv/bin/python bench/selection.py [--articles 1000000] [--body-bytes 1500] [--db PATH]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.articles import Article  # noqa: E402
from digest.clock import fixed  # noqa: E402
from digest.config import load_config  # noqa: E402
from digest.db import make_engine, session_factory, upgrade  # noqa: E402
from digest.editions import build_edition  # noqa: E402
from digest.selection import BODY_HEAD_CHARS, edition_window  # noqa: E402

SECTIONS = [
    "News",
    "Local News",
    "US",
    "Business",
    "Health",
    "Finance",
    "Crime",
    "Entertainment",
    "Celeb Lifestyle",
    "Sports",
    "Opinion",
    "Weather",
]
END = datetime(2026, 1, 15, tzinfo=UTC)
DAYS = 730


def paragraphs(rng: random.Random, count: int = 20_000) -> list[str]:
    """A pool of distinct paragraphs over a large vocabulary, so two bodies share few words
    unless they are the same copy (as real ones)."""
    vocab = [f"w{rng.randrange(36**4):x}" for _ in range(50_000)]
    return ["<p>" + " ".join(rng.choice(vocab) for _ in range(40)) + ".</p>" for _ in range(count)]


def body(rng: random.Random, pool: list[str], i: int, size: int) -> str:
    """An HTML body of about `size` bytes: a lead of its own, then paragraphs from the pool."""
    parts = [f"<p>Story {i} begins in town {rng.randrange(500)} on day {rng.randrange(10**6)}.</p>"]
    length = len(parts[0])
    while length < size:
        parts.append(rng.choice(pool))
        length += len(parts[-1])
    return "".join(parts)


def populate(url: str, n: int, body_bytes: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    rng = random.Random(42)
    pool = paragraphs(rng)
    span = DAYS * 86400
    batch = []
    started = time.perf_counter()
    with engine.begin() as conn:
        for i in range(n):
            published = END - timedelta(seconds=rng.randrange(span))
            url_ = f"https://news.example/{i}"
            batch.append(
                {
                    "guid": url_,
                    "url": url_,
                    "title": f"Story {i} on topic {rng.randrange(100000)} in town {rng.randrange(500)}",
                    "dek": f"Summary {i}: words {rng.randrange(10**6)} {rng.randrange(10**6)}.",
                    "body": body(rng, pool, i, body_bytes),
                    "section": SECTIONS[i % len(SECTIONS)],
                    "byline": "By Bench",
                    "published_at": published,
                    "updated_at": None,
                    "image_url": None,
                    "image_alt": None,
                    "image_caption": None,
                    "tags": [],
                    "source": "Bench",
                    "priority": "pin" if rng.random() < 0.001 else "normal",
                    "popularity": float(rng.randrange(10000)),
                    "rank": rng.randrange(1, 20) if i % 3 == 0 else None,
                    "feed_position": rng.randrange(1, 50) if i % 3 == 1 else None,
                    "content_hash": "x",
                    "ingested_at": published,
                    "modified_at": published,
                }
            )
            if len(batch) == 20000:
                conn.execute(insert(Article), batch)
                batch.clear()
        if batch:
            conn.execute(insert(Article), batch)
        conn.execute(text("ANALYZE"))
    print(f"populated {n:,} articles in {time.perf_counter() - started:.1f} s")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=1_000_000)
    ap.add_argument("--body-bytes", type=int, default=1500)
    ap.add_argument("--db", type=Path)
    args = ap.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "bench-selection.db"
    url = f"sqlite:///{db}"
    if not db.exists():
        populate(url, args.articles, args.body_bytes)
    config = load_config(Path(__file__).resolve().parent.parent / "digest.example.toml")
    nl = config.newsletter("morning")
    engine = make_engine(url)
    sessions = session_factory(engine)

    timings = []
    cpu = []
    for k in range(7):
        day = date(2025, 6, 1) + timedelta(days=k * 13)
        with sessions() as session:
            started, cpu_started = time.perf_counter(), time.process_time()
            result = build_edition(session, config, nl, day, clock=fixed(END), force=True)
            session.commit()
            timings.append(time.perf_counter() - started)
            # This process's own CPU time: what other work on a shared host does not inflate.
            cpu.append(time.process_time() - cpu_started)
            stories = len(result.edition.items)
    build_ms = statistics.median(timings) * 1000
    cpu_ms = statistics.median(cpu) * 1000

    start, end = edition_window(nl, date(2025, 6, 1))
    params = {
        "s": start.astimezone(UTC).replace(tzinfo=None),
        "e": end.astimezone(UTC).replace(tzinfo=None),
    }
    query = "SELECT id, section, title FROM articles{hint} WHERE published_at >= :s AND published_at < :e"
    with_body = (
        "SELECT id, section, title, dek, substr(body, 1, :n) FROM articles "
        "WHERE published_at >= :s AND published_at < :e"
    )
    without_body = "SELECT id, section, title, dek FROM articles WHERE published_at >= :s AND published_at < :e"
    with engine.connect() as conn:
        body_ms, plain_ms = (
            statistics.median(
                _timed(lambda q=q: conn.execute(text(q), {**params, "n": BODY_HEAD_CHARS}).all())
                for _ in range(5)
            )
            * 1000
            for q in (with_body, without_body)
        )
        plan = conn.execute(text("EXPLAIN QUERY PLAN " + query.format(hint="")), params).all()
        candidates = len(conn.execute(text(query.format(hint="")), params).all())
        t0 = time.perf_counter()
        for _ in range(3):
            conn.execute(text(query.format(hint="")), params).all()
        indexed_ms = (time.perf_counter() - t0) / 3 * 1000
        t0 = time.perf_counter()
        conn.execute(text(query.format(hint=" NOT INDEXED")), params).all()
        scan_ms = (time.perf_counter() - t0) * 1000

    print(
        f"store: {args.articles:,} articles over {DAYS} days; {candidates} candidates in a window"
    )
    print(f"query plan: {' | '.join(row[-1] for row in plan)}")
    print(
        f"edition build (median of {len(timings)}): {build_ms:.1f} ms for {stories} stories "
        f"(goal <= 200 ms) {'OK' if build_ms <= 200 else 'MISSED'}; CPU {cpu_ms:.1f} ms"
    )
    print(
        f"candidate query: indexed {indexed_ms:.1f} ms vs full scan baseline {scan_ms:.1f} ms "
        f"({scan_ms / max(indexed_ms, 0.001):.0f}x)"
    )
    print(
        f"body head for dedupe: candidate query {body_ms:.1f} ms with the first "
        f"{BODY_HEAD_CHARS} characters of each body vs {plain_ms:.1f} ms without "
        f"(+{body_ms - plain_ms:.1f} ms)"
    )


def _timed(fn: object) -> float:
    assert callable(fn)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
