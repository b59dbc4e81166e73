"""Benchmark: a 1,000,000-subscriber send end to end, on SQLite and on PostgreSQL, in one run.

    .venv/bin/python bench/scale.py [--subscribers 1000000] [--small 100000]
                                    [--database postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                    [--skip-sqlite] [--skip-postgres]

For each backend, a --small list and a --subscribers list (10 variants each, bulk-inserted) are
sent with one worker through the SendGrid stand-in (its own process; bench/send.py's pieces).
Printed for each: recipients/s, peak RSS of the sending process, SQL statements per 1,000
recipients (counted in the sending process with a `before_cursor_execute` event: one per
execute or executemany, so a round trip each; a COPY is not a cursor execute and is not
counted), the time of each stage of row creation, and the time of `digest sends report`
(digest.sending.ledger_report, what the command calls) on the sent edition.

Goals, printed beside the figures: the large list's rate within 15% of the small list's on
both backends; peak RSS ≤ 300 MB at 1,000,000; the report ≤ 1 s.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from send import (  # noqa: E402  (bench/send.py)
    API_KEY,
    NOW,
    Server,
    _peak_rss_kb,
    _sendgrid_server,
    config_for,
    drop_database,
    fresh_database,
    populate,
)
from digest.config import Config, SendGridConfig  # noqa: E402
from digest.sending import SendOptions  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RATE_GOAL = 0.15  # the large list's rate may be at most 15% below the small list's
RSS_GOAL_MB = 300
REPORT_GOAL_S = 1.0


@dataclass
class Figures:
    subscribers: int
    sent: int = 0
    seconds: float = 0.0
    peak_mb: float = 0.0
    statements: int = 0
    report_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    populate_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def per_thousand(self) -> float:
        return 1000 * self.statements / self.sent if self.sent else 0.0


# --- the sending process ------------------------------------------------------------------------


class _Stages:
    """Wall time of the stages of row creation (digest.send_rows.create_rows), measured by
    wrapping what it calls: the audience read (with its sections and blocks), the same-day
    lookup, the ledger writes; the rest (variant checks, rendering, the loop) is the remainder."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        return wrapper

    def timed_iter(self, name: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = fn(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(name, time.perf_counter() - started)
                    return
                self.add(name, time.perf_counter() - started)
                yield item

        return wrapper

    def install(self) -> None:
        from digest import ledger, send_rows, sending

        send_rows.audience = self.timed_iter("audience read", send_rows.audience)  # type: ignore[attr-defined]
        send_rows.same_day = self.timed("same-day lookup", send_rows.same_day)  # type: ignore[attr-defined]
        send_rows._variant = self.timed("variant checks", send_rows._variant)  # type: ignore[attr-defined]
        original_add_rows = ledger.add_rows

        def add_rows(*args: Any, **kwargs: Any) -> Any:
            adder = original_add_rows(*args, **kwargs)
            for method in ("add", "skip", "finish"):
                setattr(adder, method, self.timed("ledger writes", getattr(adder, method)))
            return adder

        ledger.add_rows = add_rows  # type: ignore[assignment]
        sending.create_rows = self.timed("row creation (total)", sending.create_rows)  # type: ignore[attr-defined]


def _send(url: str, config: Config, conn: Any) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from digest.clock import fixed
    from digest.db import make_engine, session_factory
    from digest.sending import ledger_report, send_edition
    from tests.render_support import EDITION_DATE

    os.environ["SENDGRID_API_KEY"] = API_KEY
    statements = [0]

    @event.listens_for(Engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        statements[0] += 1

    stages = _Stages()
    stages.install()
    engine = make_engine(url)
    options = SendOptions(provider="sendgrid", workers=1)
    started = time.perf_counter()
    report = send_edition(
        config, session_factory(engine), "daily", EDITION_DATE, options, clock=fixed(NOW)
    )
    elapsed = time.perf_counter() - started
    sent_statements = statements[0]
    peak_mb = _peak_rss_kb() / 1024
    # `digest sends report daily --date …`: the library function the command prints.
    started = time.perf_counter()
    with session_factory(engine)() as session:
        ledger_report(session, config, "daily", EDITION_DATE)
    report_s = time.perf_counter() - started
    engine.dispose()
    conn.send((report.sent_now, elapsed, peak_mb, sent_statements, report_s, stages.times))


def measure(url: str, n: int) -> Figures:
    figures = Figures(n)
    figures.populate_s = populate(url, n)
    sg = Server(_sendgrid_server)
    config = config_for(sendgrid=SendGridConfig(host=sg.address, timeout=60))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_send, args=(url, config, child))
    p.start()
    (
        figures.sent,
        figures.seconds,
        figures.peak_mb,
        figures.statements,
        figures.report_s,
        figures.stages,
    ) = parent.recv()
    p.join()
    received, most, rejected = sg.stop()
    if received != figures.sent or most != 1 or rejected:
        print(f"  !! stand-in got {received:,} (max {most} per address), {rejected} rejected")
    return figures


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def show(backend: str, small: Figures, large: Figures) -> None:
    for f in (small, large):
        print(
            f"{backend} {f.subscribers:>9,}: {f.sent:,} sent in {f.seconds:.1f}s = "
            f"{f.rate:,.0f} recipients/s, peak RSS {f.peak_mb:.0f} MB, "
            f"{f.per_thousand:.1f} statements per 1,000 recipients, report {f.report_s:.2f}s "
            f"(populated in {f.populate_s:.0f}s)"
        )
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in f.stages.items())
        print(f"    row creation stages: {stages}")
    ratio = large.rate / small.rate if small.rate else 0.0
    print(
        f"{backend} goals: {large.subscribers:,} rate {ratio:.0%} of the {small.subscribers:,} "
        f"rate (≥ {1 - RATE_GOAL:.0%}: {_verdict(ratio >= 1 - RATE_GOAL)}); peak RSS "
        f"{large.peak_mb:.0f} MB (≤ {RSS_GOAL_MB}: {_verdict(large.peak_mb <= RSS_GOAL_MB)}); "
        f"report {large.report_s:.2f}s (≤ {REPORT_GOAL_S:.0f} s: "
        f"{_verdict(large.report_s <= REPORT_GOAL_S)})"
    )


def bench_backend(backend: str, base: str | None, folder: Path, sizes: tuple[int, int]) -> None:
    figures = []
    for n in sizes:
        url = fresh_database(base, folder, f"scale{n}")
        try:
            figures.append(measure(url, n))
        finally:
            drop_database(base, url)
            if base is None:
                Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    show(backend, *figures)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--database", default=PG_DEFAULT, help="PostgreSQL admin URL")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", "bench-secret")
    os.environ["SENDGRID_API_KEY"] = API_KEY
    folder = Path(tempfile.mkdtemp(prefix="digest-bench-scale-"))
    sizes = (args.small, args.subscribers)
    try:
        if not args.skip_sqlite:
            bench_backend("SQLite", None, folder, sizes)
        if not args.skip_postgres:
            bench_backend("PostgreSQL", args.database, folder, sizes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
