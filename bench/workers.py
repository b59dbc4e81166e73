"""Benchmark: does a send grow with workers when the provider is far away?

    .venv/bin/python bench/workers.py [--subscribers 20000] [--batch 250] [--database URL]
                                      [--runs 1,2,4,8,2x2]

The SendGrid stand-in (its own process, no schema validation: the real API's CPU is not ours)
answers every request after 200-400 ms, as SendGrid does from a distant data centre. One
PostgreSQL edition of --subscribers readers is sent with 1, 2, 4 and 8 worker processes
(`--workers`, one request in flight each), then by two "machines": two `send_edition` process
groups of 2 workers each started at once on the same database, as two hosts would. Each run
starts from a copy of the populated database (CREATE DATABASE … TEMPLATE). Printed:
recipients/s and the ratio to one worker of the same run. Goal: 4 workers ≥ 3× one worker.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from send import (  # noqa: E402  (bench/send.py)
    API_KEY,
    EDITION_DATE,
    NOW,
    config_for,
    drop_database,
    fresh_database,
    populate,
)
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from digest.clock import fixed  # noqa: E402
from digest.config import SendGridConfig  # noqa: E402
from digest.db import make_engine, session_factory  # noqa: E402
from digest.sending import ProgressEvent, SendOptions, send_edition  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _stand_in(conn: Any, latency: tuple[float, float]) -> None:
    from tests.fakes.sendgrid import SendGridStandIn

    with SendGridStandIn(api_key=API_KEY, validate=False) as server:
        server.latency = latency
        conn.send(server.url)
        while conn.recv() != "stop":
            server.accepted.clear()
            server.arrived.clear()
            conn.send(None)
        conn.send(sum(len(p["to"]) for _, b in server.accepted for p in b["personalizations"]))


def _send(url: str, host: str, workers: int, batch: int, conn: Any) -> None:
    os.environ["SENDGRID_API_KEY"] = API_KEY
    os.environ.setdefault("DIGEST_SECRET_KEY", "bench-secret-" + "x" * 32)
    config = config_for(sendgrid=SendGridConfig(host=host, timeout=60, in_flight=1))
    options = SendOptions(provider="sendgrid", workers=workers, batch_size=batch)
    engine = make_engine(url)
    first: list[float] = []

    def progress(event: ProgressEvent) -> None:
        if not first and event.sent:
            first.append(time.time())  # the first settled batch: the serial part is over

    report = send_edition(
        config,
        session_factory(engine),
        "daily",
        EDITION_DATE,
        options,
        clock=fixed(NOW),
        progress=progress,
    )
    conn.send((report.sent_now, first[0] if first else time.time()))


def copy_of(base: str, template_url: str, name: str) -> str:
    """A new database `name` made from the populated one (bench/send.py's fresh_database and
    drop_database make and drop the others)."""
    admin = create_engine(make_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{make_url(template_url).database}"'))
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def timed_send(url: str, host: str, groups: list[int], batch: int) -> tuple[int, float, float]:
    """Start one process group per entry (its worker count) at once; total sent, seconds, and
    seconds until the first group saw its first settled row (about the serial part: start,
    freeze, row creation, worker start, plus one round trip)."""
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    started, wall = time.perf_counter(), time.time()
    for workers in groups:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_send, args=(url, host, workers, batch, child))
        p.start()
        pipes.append(parent)
        procs.append(p)
    answers = [pipe.recv() for pipe in pipes]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join()
    return sum(n for n, _ in answers), elapsed, min(at for _, at in answers) - wall


def runs_of(spec: str) -> list[tuple[str, list[int]]]:
    """`1,4,2x2` → one worker, four workers, two machines of two workers (the first run is the
    one the ratios are to)."""
    out: list[tuple[str, list[int]]] = []
    for part in spec.split(","):
        machines, _, workers = part.strip().rpartition("x")
        n, m = int(workers), int(machines or 1)
        label = f"{n} worker{'s' if n > 1 else ''}"
        out.append((label if m == 1 else f"{m} machines × {label}", [n] * m))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--subscribers", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--database", default=DEFAULT_DB, help="PostgreSQL admin URL")
    ap.add_argument("--latency", default="0.2,0.4", help="seconds per answer: LOW,HIGH")
    ap.add_argument(
        "--runs",
        default="1,2,4,8,2x2",
        help="worker counts, in order; MxN: M process groups (machines) of N workers",
    )
    args = ap.parse_args()
    base_url = fresh_database(args.database, Path(), "workers_template")
    took = populate(base_url, args.subscribers)
    print(f"populated {args.subscribers:,} subscribers in {took:.1f}s; batch {args.batch}")
    ctx = multiprocessing.get_context("spawn")
    server_conn, child = ctx.Pipe()
    low, high = (float(x) for x in args.latency.split(","))
    server = ctx.Process(target=_stand_in, args=(child, (low, high)), daemon=True)
    server.start()
    host = server_conn.recv()
    one = 0.0
    try:
        for label, groups in runs_of(args.runs):
            # The pid keeps two benchmarks on one server (the host is shared) off each other's
            # copies.
            name = f"digest_bench_workers_{sum(groups)}_{len(groups)}_{os.getpid()}"
            url = copy_of(args.database, base_url, name)
            sent, secs, first = timed_send(url, host, groups, args.batch)
            drop_database(args.database, url)
            server_conn.send("reset")
            server_conn.recv()
            rate = sent / secs
            one = one or rate
            print(
                f"{label:>24}: {sent:,} sent in {secs:.1f}s = {rate:,.0f}/s ({rate / one:.2f}×);"
                f" first rows settled after {first:.1f}s"
            )
    finally:
        server_conn.send("stop")
        server.join(10)
        drop_database(args.database, base_url)


if __name__ == "__main__":
    main()
