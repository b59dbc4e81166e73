"""Benchmarks of what readers read (issue 15), each against a baseline of the same run.

    .venv/bin/python bench/clicks.py redirect [--readers 300] [--requests 6000] [--threads 8]
    .venv/bin/python bench/clicks.py report [--deliveries 1000000] [--clicks 200000]
                                           [--database-url URL]
    .venv/bin/python bench/clicks.py render [--recipients 20000]

redirect: `GET /r/<token>` of real tracked links (from a send to the outbox) on werkzeug's
  threaded server on 127.0.0.1 (the click writer in the background, as `digest serve` runs it),
  against plain GETs of the same app's sign-up page in the same run. Goal: >= 80% of it.
report: `digest report` (build_report) over 10 editions holding `--deliveries` delivered rows and
  `--clicks` click events, for one edition and for all ten (--since). Baseline: a bare
  COUNT(*) of the deliveries table. Goal: <= 1 s.
render: 10 variants rendered and `--recipients` personalised, click tracking on vs off.
  Goal: tracked >= 90% of the untracked rate.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/web.py, as `web`

from sqlalchemy import func, insert, select, text  # noqa: E402
from web import fire  # noqa: E402  (bench/web.py)

from digest.config import Config, load_config  # noqa: E402
from digest.db import make_engine, session_factory, upgrade  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "tests" / "data" / "digest.toml"
NOW = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)


def _config(tmp: Path) -> Config:
    os.environ.setdefault("DIGEST_SECRET_KEY", "bench-secret")
    config = load_config(CONFIG)
    nl = replace(config.newsletter("daily"), track_clicks=True)
    web = replace(config.web, token_requests_per_minute=0.0)
    outbox = replace(config.outbox, dir=tmp / "out")
    return replace(config, newsletters={**config.newsletters, "daily": nl}, web=web, outbox=outbox)


# --- redirect --------------------------------------------------------------------------------

_BROWSER = {"User-Agent": "Mozilla/5.0 (bench) Safari/605.1.15"}


def _fire(port: int, method: str, paths: list[str], threads: int, ok: int) -> tuple[float, int]:
    """bench/web.py's keep-alive clients, as a browser following a tracked link."""
    return fire(port, method, paths, threads, headers=_BROWSER, ok=ok)


def bench_redirect(args: argparse.Namespace) -> None:
    from digest.clicks import ClickEvent
    from digest.web import create_app, make_web_server
    from tests.clicks_support import outbox, path_of, send
    from tests.fakes.population import add_population
    from tests.render_support import store_edition

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = _config(tmp)
        engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
        upgrade(engine)
        sessions = session_factory(engine)
        with sessions.begin() as session:
            store_edition(session)
            add_population(session, args.readers, NOW)
        send(config, sessions, NOW - timedelta(hours=1))
        links = [path_of(u) for m in outbox(config) for u in set(m.html_links)]
        rng = random.Random(5)
        paths = [rng.choice(links) for _ in range(args.requests)]
        app = create_app(config, sessions, clock=lambda: datetime.now(UTC), background=True)
        server = make_web_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_port
        _fire(port, "GET", ["/subscribe/daily"] * 200 + paths[:200], args.threads, 0)  # warm up
        plain_s, plain_fail = _fire(
            port, "GET", ["/subscribe/daily"] * args.requests, args.threads, 200
        )
        redirect_s, redirect_fail = _fire(port, "GET", paths, args.threads, 302)
        app.extensions["digest.clicks"].flush()
        with sessions() as session:
            stored = session.scalar(select(func.count()).select_from(ClickEvent))
        server.shutdown()
    plain, redirect = args.requests / plain_s, args.requests / redirect_s
    print(f"links: {len(links)} tracked links of {args.readers} readers; {args.threads} threads")
    print(f"plain GET /subscribe/daily: {plain:8.0f} req/s ({plain_fail} failed)")
    print(f"GET /r/<token> (302):       {redirect:8.0f} req/s ({redirect_fail} failed)")
    print(f"redirect / plain: {redirect / plain:.0%} (goal >= 80%); click events stored: {stored}")


# --- report ----------------------------------------------------------------------------------


def _bulk(session: object, table: object, rows: list[dict[str, object]]) -> None:
    """Insert through the driver's executemany (COPY on PostgreSQL): bound values processed once
    per distinct value by the column types (SQLAlchemy's per-row processing would be most of
    the fill)."""
    from sqlalchemy import Table
    from sqlalchemy.orm import Session

    assert isinstance(session, Session) and isinstance(table, Table)
    dialect = session.get_bind().dialect
    cols = list(rows[0])
    compiled = insert(table).compile(dialect=dialect, column_keys=cols)
    processors = {}
    for c in cols:
        bind = table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
        if bind is not None:
            processors[c] = bind
    cache: dict[tuple[str, object], object] = {}

    def value(c: str, v: object) -> object:
        if c not in processors or v is None:
            return v
        key = (c, v)
        if key not in cache:
            cache[key] = processors[c](v)
        return cache[key]

    conn = session.connection()
    if dialect.name == "postgresql":
        # COPY: one statement, so the ledger's statement-level triggers run once per batch.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(tuple(value(c, r[c]) for c in cols))
        return
    if compiled.positiontup is not None:
        order = list(compiled.positiontup)
        conn.exec_driver_sql(str(compiled), [tuple(value(c, r[c]) for c in order) for r in rows])
    else:
        conn.exec_driver_sql(str(compiled), [{c: value(c, r[c]) for c in cols} for r in rows])


def _fill(url: str, deliveries: int, clicks: int) -> None:
    """10 editions of `deliveries` / 10 sent rows in 10 variants and 4 sections, 9 links each,
    and `clicks` click events (5% flagged), inserted in bulk."""
    from digest.clicks import ClickEvent
    from digest.editions import Edition
    from digest.ledger import Delivery, encode_variant
    from digest.tracking import TrackedLink

    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    rng = random.Random(3)
    per = deliveries // 10
    sections = ("News", "Business", "Health", "Entertainment")
    layouts = [sections[: 1 + i % 4] for i in range(10)]
    encoded = [encode_variant(layout, ()) for layout in layouts]
    with sessions.begin() as session:
        for e in range(10):
            day = date(2026, 3, 1) + timedelta(days=e)
            at = datetime(2026, 3, 1, 11, tzinfo=UTC) + timedelta(days=e)
            edition = Edition(
                newsletter="daily",
                edition_date=day,
                status="sent",
                built_at=at,
                frozen_at=at,
                window_start=at,
                window_end=at,
                fingerprint=f"b{e}",
            )
            session.add(edition)
            session.flush()
            link_ids = []
            link_sections = {}
            for k in range(9):
                link = TrackedLink(
                    edition_id=edition.id,
                    url_hash=f"{e:02d}{k:038d}",
                    url=f"https://news.example/{e}/{k}",
                    kind="story",
                    section=sections[k % 4],
                    label=f"Story {k} of {day}",
                )
                session.add(link)
                session.flush()
                link_ids.append(link.id)
                link_sections[link.id] = link.section
            first = session.scalar(select(func.coalesce(func.max(Delivery.id), 0))) + 1
            for lo in range(0, per, 20000):
                rows = [
                    {
                        "edition_id": edition.id,
                        "subscriber_id": i,
                        "email": f"r{i}@bench.example",
                        "name": None,
                        "sections": encoded[i % 10],
                        "variant": f"v-{i % 10}",
                        "segment": "",
                        "state": "sent",
                        "attempts": 1,
                        "created_at": at,
                        "handed_at": at,
                        "settled_at": at,
                        "subject": f"Subject {i % 10}",
                    }
                    for i in range(lo, min(per, lo + 20000))
                ]
                _bulk(session, Delivery.__table__, rows)
            events = [
                {
                    "edition_id": edition.id,
                    "delivery_id": first + (d := rng.randrange(per)),
                    "link_id": (link_id := rng.choice(link_ids)),
                    "section": link_sections[link_id],
                    "kind": "click",
                    "variant": f"v-{d % 10}",
                    "segment": "",
                    "subject": f"Subject {d % 10}",
                    "clicked_at": at + timedelta(minutes=rng.randrange(600)),
                    "source": "redirect",
                    "agent": "browser",
                    "flag": None if rng.random() > 0.05 else "scanner",
                    "counted": True,
                }
                for _ in range(clicks // 10)
            ]
            for ev in events:
                ev["counted"] = ev["flag"] is None
            for lo in range(0, len(events), 20000):
                _bulk(session, ClickEvent.__table__, events[lo : lo + 20000])
    # As autovacuum would soon: statistics, and on PostgreSQL the visibility map that lets the
    # report's aggregates read the indexes alone (index-only scans).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    engine.dispose()


def bench_report(args: argparse.Namespace) -> None:
    from digest.ledger import Delivery
    from digest.report import build_report

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = _config(tmp)
        url = args.database_url or f"sqlite:///{tmp / 'report.db'}"
        started = time.perf_counter()
        _fill(url, args.deliveries, args.clicks)
        print(f"{url.split(':')[0]}: filled in {time.perf_counter() - started:.0f} s")
        engine = make_engine(url)
        sessions = session_factory(engine)
        with sessions() as session:
            t = time.perf_counter()
            total = session.scalar(select(func.count()).select_from(Delivery))
            baseline = time.perf_counter() - t
            for label, kw in (
                ("one edition (--date)", {"day": date(2026, 3, 10)}),
                ("ten editions (--since)", {"since": date(2026, 3, 1)}),
            ):
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    r = build_report(session, config, "daily", **kw)  # type: ignore[arg-type]
                    best = min(best, time.perf_counter() - t)
                print(
                    f"report {label}: {best:.3f} s (goal <= 1 s); {r.delivered} delivered, "
                    f"{r.clickers} clickers, {r.clicks} clicks"
                )
        print(f"baseline SELECT COUNT(*) of {total} deliveries: {baseline:.3f} s")
        engine.dispose()
        if args.database_url and args.database_url.startswith("postgresql"):
            _drop_pg(args.database_url)


def _drop_pg(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


# --- render ----------------------------------------------------------------------------------


def bench_render(args: argparse.Namespace) -> None:
    from digest.render import Links, Renderer, personalise
    from digest.tracking import LinkMap
    from tests.render_support import make_edition

    with tempfile.TemporaryDirectory() as tmp_name:
        config = _config(Path(tmp_name))
    nl = config.newsletter("daily")
    edition = make_edition()
    sections = nl.section_names
    layouts = [tuple(sections[(i + k) % 4] for k in range(1 + i % 4)) for i in range(10)]

    def run(tracked: bool) -> float:
        tracking = None
        if tracked:
            probe = Renderer(config, nl, edition)
            ids = {probe.link(item.url): n + 1 for n, item in enumerate(edition.items)}
            tracking = LinkMap(config.site.base_url, config.site.secret or "", ids)
        started = time.perf_counter()
        renderer = Renderer(config, nl, edition, tracking=tracking)
        links = Links(config, nl, edition)
        variants = [renderer.variant(v) for v in layouts]
        assert all(v.tracked == tracked for v in variants)
        for i in range(args.recipients):
            personal = links.personal(i + 1, f"r{i}@bench.example", "Ana Reader")
            personalise(variants[i % 10], personal)
        return args.recipients / (time.perf_counter() - started)

    run(False)  # warm up (templates, translations)
    plain = tracked = 0.0
    for _ in range(5):  # interleaved, best of each: the host's speed drifts within a run
        plain = max(plain, run(False))
        tracked = max(tracked, run(True))
    print(f"render 10 variants + personalise {args.recipients}: untracked {plain:,.0f}/s")
    print(f"with click tracking: {tracked:,.0f}/s = {tracked / plain:.0%} (goal >= 90%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("redirect")
    r.add_argument("--readers", type=int, default=300)
    r.add_argument("--requests", type=int, default=6000)
    r.add_argument("--threads", type=int, default=8)
    p = sub.add_parser("report")
    p.add_argument("--deliveries", type=int, default=1_000_000)
    p.add_argument("--clicks", type=int, default=200_000)
    p.add_argument("--database-url", default=None)
    n = sub.add_parser("render")
    n.add_argument("--recipients", type=int, default=20000)
    args = parser.parse_args()
    {"redirect": bench_redirect, "report": bench_report, "render": bench_render}[args.what](args)


if __name__ == "__main__":
    main()
