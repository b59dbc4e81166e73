"""Benchmark: reading a segment's audience at scale, against reading the whole audience.

    .venv/bin/python bench/segments.py [--subscribers 200000]
                                       [--database postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                       [--skip-sqlite] [--skip-postgres]

The population of bench/scale.py (10 section-preference variants; 40% of readers chose Health),
read a page at a time with subscribers.audience.audience, as a send does: once whole (the
baseline, in the same run), once for a segment `"Health" in sections`. Printed: both times and
the segment's as a multiple of the whole read. A segment reads fewer readers; it should not
cost more per page than the whole read does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scale import PG_DEFAULT, populate  # noqa: E402  (bench/scale.py)
from send import config_for, drop_database, fresh_database  # noqa: E402

from digest.db import make_engine, session_factory  # noqa: E402
from subscribers.audience import audience  # noqa: E402

SEGMENT = "health"


def _read(url: str, segments: tuple[str, ...]) -> tuple[int, float]:
    config = config_for()
    config = dataclasses.replace(config, segments={SEGMENT: '"Health" in sections'})
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            started = time.perf_counter()
            n = sum(1 for _ in audience(session, config, config.newsletter("daily"), segments))
            return n, time.perf_counter() - started
    finally:
        engine.dispose()


def bench(backend: str, base: str | None, folder: Path, n: int) -> None:
    url = fresh_database(base, folder, f"segments{n}")
    try:
        populate(url, n)
        whole, whole_s = _read(url, ())
        part, part_s = _read(url, (SEGMENT,))
        print(
            f"{backend} {n:,} readers: whole audience {whole:,} in {whole_s:.2f}s; segment "
            f"'\"Health\" in sections' {part:,} in {part_s:.2f}s = {part_s / whole_s:.2f}× "
            "the whole read"
        )
    finally:
        drop_database(base, url)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=200_000)
    ap.add_argument("--database", default=PG_DEFAULT, help="PostgreSQL admin URL")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_sqlite:
            bench("SQLite    ", None, Path(folder), args.subscribers)
        if not args.skip_postgres:
            bench("PostgreSQL", args.database, Path(folder), args.subscribers)


if __name__ == "__main__":
    main()
