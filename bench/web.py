"""Benchmark: one-click unsubscribes against the real web app on 127.0.0.1.

Starts `digest.web` on werkzeug's threaded server in this process, then POSTs
`List-Unsubscribe=One-Click` to /u/<token> for every subscriber twice (in shuffled order, from
several client threads, as fast as they go) and checks that no request failed, that every
subscriber ended up unsubscribed exactly once (same unsubscribed_at for both requests) and that
nobody else was touched. Baseline in the same run: GETs of the confirm page (no database write),
which is the ceiling the server and the client threads reach on this machine.

    .venv/bin/python bench/web.py [--subscribers 2500] [--threads 8] [--database-url URL]
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import queue
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.clock import utcnow  # noqa: E402
from digest.config import Config, load_config  # noqa: E402
from digest.db import make_engine, session_factory, upgrade  # noqa: E402
from digest.web import create_app, make_web_server  # noqa: E402
from subscribers.models import Membership, Subscriber, email_hash  # noqa: E402
from subscribers.tokens import make_token  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "tests" / "data" / "digest.toml"
BODY = b"List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    failures: int
    unsubscribed: int
    untouched_others: bool

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def add_subscribers(sessions, n: int, newsletter: str, first: int = 0) -> list[int]:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    emails = [f"reader{first + i}@bench.example" for i in range(n)]
    with sessions() as s, s.begin():
        s.execute(
            insert(Subscriber),
            [
                {"email": e, "email_hash": email_hash(e), "status": "active", "created_at": at}
                for e in emails
            ],
        )
        ids = list(s.scalars(select(Subscriber.id).where(Subscriber.email.in_(emails))))
        s.execute(
            insert(Membership),
            [
                {
                    "subscriber_id": i,
                    "newsletter": newsletter,
                    "status": "active",
                    "paused": False,
                    "joined_at": at,
                }
                for i in ids
            ],
        )
    return sorted(ids)


def fire(
    port: int,
    method: str,
    paths: list[str],
    threads: int,
    *,
    headers: dict[str, str] | None = None,
    ok: int = 200,
) -> tuple[float, int]:
    """Send every request once from `threads` keep-alive clients; (seconds, answers other
    than `ok`). bench/clicks.py drives its redirect benchmark with it too."""
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for p in paths:
        work.put(p)
    failures = [0] * threads
    if headers is None:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            try:
                path = work.get_nowait()
            except queue.Empty:
                break
            try:
                conn.request(method, path, body=BODY if method == "POST" else None, headers=headers)
                response = conn.getresponse()
                response.read()
                failures[k] += response.status != ok
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            except OSError:
                failures[k] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - started, sum(failures)


def run_load(
    config: Config, url: str, subscribers: int, threads: int, baseline: bool = True
) -> tuple[LoadResult, float | None]:
    """The unsubscribe load (and the GET baseline) on the database at `url` (migrated here)."""
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    secret = config.site.secret or ""
    ids = add_subscribers(sessions, subscribers, "daily")
    others = add_subscribers(sessions, 50, "daily", first=subscribers)
    paths = [f"/u/{make_token(secret, i, 'daily', 'unsubscribe')}" for i in ids] * 2
    random.Random(7).shuffle(paths)
    app = create_app(config, sessions, clock=utcnow)
    server = make_web_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_rate = None
        if baseline:
            seconds, failed = fire(server.server_port, "GET", paths[: len(paths) // 2], threads)
            assert failed == 0, f"{failed} GETs failed"
            base_rate = (len(paths) // 2) / seconds
        seconds, failures = fire(server.server_port, "POST", paths, threads)
    finally:
        server.shutdown()
        server.server_close()
    with sessions() as s:
        done = s.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.subscriber_id.in_(ids), Membership.status == "unsubscribed")
        )
        others_active = s.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.subscriber_id.in_(others), Membership.status == "active")
        )
    engine.dispose()
    result = LoadResult(
        requests=len(paths),
        seconds=seconds,
        failures=failures,
        unsubscribed=int(done or 0),
        untouched_others=others_active == len(others),
    )
    return result, base_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp folder")
    args = parser.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", "bench-secret")
    config = load_config(CONFIG)
    # The figure is the app's own throughput: per-client rate limiting would cap it at 30/min.
    config = replace(config, web=replace(config.web, token_requests_per_minute=0.0))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        result, base = run_load(config, url, args.subscribers, args.threads)
    print(f"database: {url.split(':')[0]}, {args.threads} client threads, {os.cpu_count()} cores")
    print(f"baseline: GET confirm page (no write)   {base:8.0f} requests/s")
    print(
        f"one-click unsubscribe POSTs: {result.requests} in {result.seconds:.2f} s = "
        f"{result.per_second:.0f} requests/s"
    )
    print(
        f"failures: {result.failures}; unsubscribed: {result.unsubscribed}/{args.subscribers}; "
        f"others untouched: {result.untouched_others}"
    )
    if result.failures or result.unsubscribed != args.subscribers or not result.untouched_others:
        sys.exit(1)


if __name__ == "__main__":
    main()
