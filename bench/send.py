"""Benchmark: sending an edition end to end with the ledger.

    .venv/bin/python bench/send.py [--subscribers 100000] [--smtp-subscribers 5000]
                                   [--runs 3] [--database URL] [--workers N]

(a) SendGrid: `send_edition` over --subscribers subscribers in 10 variants (ledger rows created,
    claimed, settled) through the SendGrid stand-in, which runs in its own process and validates
    every request body against SendGrid's OpenAPI description. Recipients/s and peak RSS of the
    sending process, over --runs runs from copies of one populated database (median and best
    printed: a shared host moves single figures). Goal ≥ 20,000/s, ≤ 500 MB.
(b) SMTP: `send_edition` end to end through an aiosmtpd server in its own process (plain SMTP on
    127.0.0.1), over --smtp-subscribers subscribers (a sample: the server's rate does not depend
    on the list size), --runs times.
    Each run of (b) is followed by the same send DKIM-signed, once with an RSA-2048 key and
    once with an Ed25519 key (b-dkim): goal ≥ 70% of the unsigned rate of the same run.
(c) the same server fed pre-built messages over one connection (what the server alone accepts),
    right after each run of (b): the goal is a ratio, so each (b) is compared with a (c) taken
    in the same host state, and the median ratio is reported.
(d) baseline: each message built from scratch as mail-merge tools do — template rendered and
    CSS-inlined, personalised, built with the stdlib (EmailMessage), sent over its own
    connection (a sample of --render-baseline messages); (d') the same without the render.
(e) a relay that answers each message after 20 ms (as a distant or busy one does): the first
    --relay-sample messages of `send_edition` over one SMTP connection, then over four
    (`providers.smtp.connections`).
(f) the sender's CPU time to build one message the way a send does (per-variant template,
    per-recipient substitutions), unsigned and DKIM-signed, and where that time goes.
Goals: (b) ≥ 80% of (c) and ≥ 3× (d).

SQLite by default (one worker); --database postgresql+psycopg://... with --workers N runs N
worker processes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import multiprocessing
import os
import resource
import shutil
import smtplib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from digest.clock import fixed  # noqa: E402
from digest.config import (  # noqa: E402
    Config,
    DkimConfig,
    DkimKeyConfig,
    SendGridConfig,
    SmtpConfig,
    load_config,
)
from digest.db import make_engine, session_factory, upgrade  # noqa: E402
from digest.message import Addressee, VariantMessage, make_message_id  # noqa: E402
from digest.render import Renderer, personal_links, personalise  # noqa: E402
from digest.sending import SendOptions, send_edition  # noqa: E402
from subscribers.audience import audience  # noqa: E402
from tests.fakes.population import add_population  # noqa: E402
from tests.render_support import EDITION_DATE, store_edition  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
API_KEY = "SG.bench-key"
RELAY_DELAY = 0.02  # (e): seconds the relay takes to answer each message


def config_for(**changes: Any) -> Config:
    return dataclasses.replace(load_config(REPO / "tests" / "data" / "digest.toml"), **changes)


# --- servers in their own processes ----------------------------------------------------------


def _sendgrid_server(conn: Any) -> None:
    from tests.fakes.sendgrid import SendGridStandIn

    # The stand-in keeps every accepted body for the counts: millions of objects by the end,
    # which the collector would re-walk on every full collection, slowing the stand-in (not the
    # sender) as the run goes on. The bodies are plain JSON data (no reference cycles); the few
    # cycles a request may leave go when this process ends.
    gc.disable()
    with SendGridStandIn(api_key=API_KEY) as server:
        conn.send(server.url)
        conn.recv()
        counts = server.counts()
        conn.send((sum(counts.values()), max(counts.values(), default=0), len(server.rejected)))


def _smtp_server(conn: Any, delay: float = 0.0) -> None:
    from tests.fakes.smtp import SmtpServer

    with SmtpServer(auth=False, keep=False) as server:
        server.delay = delay
        conn.send(server.port)
        while (command := conn.recv()) != "stop":
            if command == "reset":  # a new run: forget what was received
                with server.lock:
                    server.received.clear()
            counts = server.counts()
            conn.send((sum(counts.values()), max(counts.values(), default=0)))
        counts = server.counts()
        conn.send((sum(counts.values()), max(counts.values(), default=0)))


class Server:
    def __init__(self, target: Callable[[Any], None]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        self.address = self.conn.recv()

    def counts(self) -> Any:
        self.conn.send("counts")
        return self.conn.recv()

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()

    def stop(self) -> Any:
        self.conn.send("stop")
        result = self.conn.recv()
        self.process.join(10)
        return result


# --- database ----------------------------------------------------------------------------------


def fresh_database(base: str | None, folder: Path, name: str) -> str:
    if base is None:
        return f"sqlite:///{folder / name}.db"
    url = make_url(base)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    db = f"digest_bench_{name}_{os.getpid()}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{db}"'))
    admin.dispose()
    return url.set(database=db).render_as_string(hide_password=False)


def drop_database(base: str | None, url: str) -> None:
    if base is None:
        return
    admin = create_engine(make_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


@contextlib.contextmanager
def run_copy(url: str, folder: Path, name: str, run: int) -> Iterator[str]:
    """SQLite: a fresh copy of the populated database `name` for one run. PostgreSQL (one run):
    the database itself."""
    if not url.startswith("sqlite"):
        yield url
        return
    copy = folder / f"{name}-run{run}.db"
    shutil.copy(folder / f"{name}.db", copy)
    try:
        yield f"sqlite:///{copy}"
    finally:
        copy.unlink()


def populate(url: str, n: int) -> float:
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    with session_factory(engine).begin() as session:
        store_edition(session)
        add_population(session, n, NOW)
    engine.dispose()
    return time.perf_counter() - started


# --- (a) and (b): send_edition in a child process, for its own peak RSS ------------------------


def _peak_rss_kb() -> int:
    """This process's own peak RSS. getrusage's ru_maxrss is not: Linux carries the high-water
    mark over fork and exec, so a spawned child reports at least its parent's size then."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _send(url: str, config: Config, options: SendOptions, conn: Any) -> None:
    os.environ["SENDGRID_API_KEY"] = API_KEY
    engine = make_engine(url)
    started = time.perf_counter()
    report = send_edition(
        config, session_factory(engine), "daily", EDITION_DATE, options, clock=fixed(NOW)
    )
    elapsed = time.perf_counter() - started
    peak_kb = _peak_rss_kb()
    conn.send((report.sent_now, report.counts, elapsed, peak_kb / 1024))


def run_send(
    url: str, config: Config, options: SendOptions
) -> tuple[int, dict[str, int], float, float]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_send, args=(url, config, options, child))
    p.start()
    result = parent.recv()
    p.join()
    return result  # type: ignore[no-any-return]


def dkim_keys(folder: Path) -> dict[str, DkimConfig]:
    """An RSA-2048 and an Ed25519 key in PEM files, one DkimConfig for each."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    keys: dict[str, Any] = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    out = {}
    for name, key in keys.items():
        path = folder / f"dkim-{name}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        out[name] = DkimConfig(keys=(DkimKeyConfig(selector=f"bench-{name}", key_file=path),))
    return out


def signing_cost(url: str, config: Config, dkim: dict[str, DkimConfig], n: int = 300) -> None:
    """(f): CPU µs per message built as the send builds it, best of 5 passes over n readers."""
    import hashlib

    from digest.dkim import load_key
    from digest.editions import load_edition
    from digest.outgoing import VariantMail, plain_links
    from digest.render import Links

    engine = make_engine(url)
    nl = config.newsletter("daily")
    with session_factory(engine)() as session:
        edition = load_edition(session, "daily", EDITION_DATE)
        readers = list(audience(session, config, nl))[:n]
        rendered = Renderer(config, nl, edition).variant(())
        links = Links(config, nl, edition)
    engine.dispose()
    costs: dict[str, float] = {}
    raw = b""
    for name, cfg in [
        ("unsigned", config),
        *((k, dataclasses.replace(config, dkim=d)) for k, d in dkim.items()),
    ]:
        message = VariantMessage(cfg, nl, EDITION_DATE, rendered.key)
        v = VariantMail(rendered, message, links.view_url, plain_links(cfg))
        prepared = []
        for r in readers:
            unsubscribe, preferences = links.urls(r.subscriber_id)
            to = Addressee(
                r.email, r.name, unsubscribe, make_message_id(nl, EDITION_DATE, r.subscriber_id), 1
            )
            prepared.append((to, v.substitutions(r.name, r.email, unsubscribe, preferences)))
        assert v.template is not None
        message.mime(v.template, prepared[0][0], NOW, prepared[0][1])  # the self-check
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for to, subs in prepared:
                raw = message.mime(v.template, to, NOW, subs)
            best = min(best, (time.process_time() - started) / len(prepared))
        costs[name] = best * 1e6
    body = raw[raw.index(b"\r\n\r\n") + 4 :]
    started = time.process_time()
    for _ in range(2000):
        hashlib.sha256(body).digest()
    hash_us = (time.process_time() - started) / 2000 * 1e6
    key_us = {}
    for name, d in dkim.items():
        key = load_key(d.keys[0])
        digest = hashlib.sha256(b"x").digest()
        started = time.process_time()
        for _ in range(300):
            key.sign(digest)
        key_us[name] = (time.process_time() - started) / 300 * 1e6
    v_plain = VariantMail(
        rendered,
        VariantMessage(config, nl, EDITION_DATE, rendered.key),
        links.view_url,
        plain_links(config),
    )
    assert v_plain.template is not None
    text = v_plain.template.text
    first = min(text.find(t) for t in v_plain.substitutions(None, "a@b.c", "u", "p") if t in text)
    print(
        f"(f) CPU per message as a send builds it ({len(body) / 1024:.0f} KB body): "
        + ", ".join(f"{k} {c:.0f} µs" for k, c in costs.items())
        + f"; of which SHA-256 of the body {hash_us:.0f} µs, the key operation "
        + ", ".join(f"{k} {c:.0f} µs" for k, c in key_us.items())
        + f"; the first personal value sits {first} characters into the text part, so the "
        "body hash cannot be taken once per variant"
    )


# --- (c) and (d) -----------------------------------------------------------------------------


def sample_messages(url: str, config: Config, n: int) -> list[tuple[str, bytes, Any]]:
    """(recipient, message bytes as the send builds them, parts for the baseline)."""
    engine = make_engine(url)
    nl = config.newsletter("daily")
    out: list[tuple[str, bytes, Any]] = []
    with session_factory(engine)() as session:
        from digest.editions import load_edition

        edition = load_edition(session, "daily", EDITION_DATE)
        renderer = Renderer(config, nl, edition)
        for r in audience(session, config, nl):
            v = renderer.variant(r.sections)
            personal = personal_links(config, nl, edition, r)
            mail = personalise(v, personal)
            to = Addressee(
                r.email,
                r.name,
                personal.unsubscribe_url,
                make_message_id(nl, EDITION_DATE, r.subscriber_id),
            )
            raw = VariantMessage(config, nl, EDITION_DATE, v.key).mime(mail, to, NOW)
            out.append((r.email, raw, (r, v, personal, edition)))
            if len(out) >= n:
                break
    engine.dispose()
    return out


def prebuilt_rate(port: int, messages: list[tuple[str, bytes, Any]], n: int) -> float:
    conn = smtplib.SMTP("127.0.0.1", port)
    conn.sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as the provider does
    started = time.perf_counter()
    for i in range(n):
        email, raw, _ = messages[i % len(messages)]
        conn.sendmail("daily@news.example", [email], raw)
    elapsed = time.perf_counter() - started
    conn.quit()
    return n / elapsed


def baseline_rate(
    port: int, config: Config, messages: list[tuple[str, bytes, Any]], render: bool
) -> float:
    """Mail-merge style: (render the template,) personalise, build with EmailMessage, one
    connection per message."""
    nl = config.newsletter("daily")
    started = time.perf_counter()
    for email, _, (r, v, personal, edition) in messages:
        if render:
            v = Renderer(config, nl, edition).variant(r.sections)
        mail = personalise(v, personal)
        m = EmailMessage(policy=SMTP_POLICY)
        m["From"] = f"{nl.from_name} <{nl.from_email}>"
        m["To"] = email
        m["Subject"] = mail.subject
        m["List-Unsubscribe"] = f"<{personal.unsubscribe_url}>"
        m.set_content(mail.text)
        m.add_alternative(mail.html, subtype="html")
        with smtplib.SMTP("127.0.0.1", port) as conn:
            conn.sendmail(nl.from_email, [email], m.as_bytes())
    return len(messages) / (time.perf_counter() - started)


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--smtp-subscribers", type=int, default=5_000)
    ap.add_argument("--prebuilt", type=int, default=5_000)
    ap.add_argument("--baseline", type=int, default=300)
    ap.add_argument("--render-baseline", type=int, default=30)
    ap.add_argument("--relay-sample", type=int, default=400, help="messages per run of (e)")
    ap.add_argument("--database", help="PostgreSQL URL (an admin URL: databases are created)")
    ap.add_argument("--skip-sendgrid", action="store_true", help="leave out (a)")
    ap.add_argument("--skip-baselines", action="store_true", help="leave out (d), (d') and (e)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--runs", type=int, default=3, help="runs of (a) and of (b)+(c) (SQLite); medians reported"
    )
    args = ap.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", "bench-secret")
    os.environ["SENDGRID_API_KEY"] = API_KEY
    folder = Path(tempfile.mkdtemp(prefix="digest-bench-send-"))
    backend = "PostgreSQL" if args.database else "SQLite"
    print(f"backend {backend}, workers {args.workers}, scratch {folder}")

    runs = args.runs if args.database is None else 1
    rate_a = rss_a = 0.0
    if not args.skip_sendgrid:
        rate_a, rss_a = bench_sendgrid(args, folder, runs)
    bench_smtp(args, folder, runs, rate_a, rss_a)


def bench_sendgrid(args: argparse.Namespace, folder: Path, runs: int) -> tuple[float, float]:
    # (a) SendGrid, --runs times from the same populated database (SQLite: a copy of it; a
    # shared host moves single figures by ±10%, so the median and the best are printed too)
    url_a = fresh_database(args.database, folder, "sendgrid")
    took = populate(url_a, args.subscribers)
    print(f"populated {args.subscribers:,} subscribers in 10 variants in {took:.1f}s")
    rates: list[float] = []
    rss_a = 0.0
    for run in range(1, runs + 1):
        sg = Server(_sendgrid_server)
        config_a = config_for(sendgrid=SendGridConfig(host=sg.address, timeout=60))
        options = SendOptions(provider="sendgrid", workers=args.workers)
        with run_copy(url_a, folder, "sendgrid", run) as url:
            sent_a, counts_a, secs_a, rss = run_send(url, config_a, options)
        received, most, rejected = sg.stop()
        rates.append(sent_a / secs_a)
        rss_a = max(rss_a, rss)
        print(
            f"(a) run {run}: SendGrid stand-in: {sent_a:,} sent in {secs_a:.2f}s = "
            f"{rates[-1]:,.0f} recipients/s, peak RSS {rss:.0f} MB; stand-in got {received:,} "
            f"(max {most} per address), {rejected} rejected; ledger {counts_a['sent']:,} sent"
        )
    rate_a = statistics.median(rates)
    print(f"(a) median {rate_a:,.0f} recipients/s, best {max(rates):,.0f} of {runs} run(s)")
    drop_database(args.database, url_a)
    return rate_a, rss_a


def bench_smtp(
    args: argparse.Namespace, folder: Path, runs: int, rate_a: float, rss_a: float
) -> None:
    # (b) SMTP end to end, (c) pre-built, (d) baseline: one server process. (b) and (c) are
    # taken in pairs, (c) right after each (b), so each ratio compares the same host state.
    url_b = fresh_database(args.database, folder, "smtp")
    populate(url_b, args.smtp_subscribers)
    smtp = Server(_smtp_server)
    config_b = config_for(smtp=SmtpConfig(port=smtp.address, timeout=60))
    messages = sample_messages(url_b, config_b, max(args.baseline, 200))
    pairs: list[tuple[float, float]] = []
    signed: dict[str, list[float]] = {"rsa": [], "ed25519": []}
    dkim = dkim_keys(folder)
    rss_b = 0.0
    options = SendOptions(provider="smtp", workers=args.workers)
    for run in range(1, runs + 1):
        # Unsigned, RSA and Ed25519 in an order that turns each run, so a drifting host
        # favours none of them; each signed rate is compared with the unsigned one of its run.
        names = ["unsigned", *dkim]
        turn = (run - 1) % len(names)
        order = names[turn:] + names[:turn]
        rates_s: dict[str, float] = {}
        for name in order:
            smtp.reset()
            config_s = (
                config_b if name == "unsigned" else dataclasses.replace(config_b, dkim=dkim[name])
            )
            with run_copy(url_b, folder, "smtp", run) as url:
                sent_s, _, secs_s, rss = run_send(url, config_s, options)
            rates_s[name] = sent_s / secs_s
            if name == "unsigned":
                sent_b, secs_b = sent_s, secs_s
                received, most = smtp.counts()
                rss_b = max(rss_b, rss)
        for name in dkim:
            signed[name].append(rates_s[name] / rates_s["unsigned"])
            print(
                f"(b-dkim) run {run}: the same send signed with {name}: "
                f"{rates_s[name]:,.0f} recipients/s = {signed[name][-1]:.0%} of unsigned "
                f"({rates_s['unsigned']:,.0f}/s; order {', '.join(order)})"
            )
        rate_c = prebuilt_rate(smtp.address, messages, args.prebuilt)
        pairs.append((sent_b / secs_b, rate_c))
        print(
            f"(b) run {run}: SMTP end to end: {sent_b:,} sent in {secs_b:.1f}s = "
            f"{pairs[-1][0]:,.0f} recipients/s, peak RSS {rss:.0f} MB; server got "
            f"{received:,} (max {most} per address); (c) right after: {rate_c:,.0f} "
            f"messages/s; (b) = {pairs[-1][0] / rate_c:.0%} of (c)"
        )
    for name, ratios in signed.items():
        print(
            f"(b-dkim) {name}: median {statistics.median(ratios):.0%} of the unsigned rate "
            f"(runs: {', '.join(f'{r:.0%}' for r in ratios)}; goal ≥ 70%)"
        )
    ratio = statistics.median(b / c for b, c in pairs)
    rate_b = statistics.median(b for b, _ in pairs)
    rate_c = statistics.median(c for _, c in pairs)
    print(
        f"(b) median {rate_b:,.0f} recipients/s; (c) SMTP server alone, pre-built messages, one "
        f"connection: median {rate_c:,.0f} messages/s; (b)/(c) median {ratio:.0%}"
    )
    signing_cost(url_b, config_b, dkim)
    dkim_summary = ", ".join(f"{n} {statistics.median(r):.0%}" for n, r in signed.items())
    if args.skip_baselines:
        smtp.stop()
        drop_database(args.database, url_b)
        print(f"summary: (b) DKIM-signed = {dkim_summary} of unsigned (goal ≥ 70%)")
        return
    rate_d = baseline_rate(smtp.address, config_b, messages[: args.render_baseline], True)
    print(
        f"(d) baseline, per message: render (Jinja2 + premailer), stdlib build, own connection "
        f"({args.render_baseline} sampled): {rate_d:,.1f} messages/s"
    )
    rate_d2 = baseline_rate(smtp.address, config_b, messages[: args.baseline], False)
    print(
        f"(d') baseline without the render: stdlib build + own connection per message "
        f"({args.baseline} sampled): {rate_d2:,.0f} messages/s"
    )
    smtp.stop()

    # (e) a relay that takes 20 ms to answer each message: one connection against several
    relay = Server(functools.partial(_smtp_server, delay=RELAY_DELAY))
    relay_rates: dict[int, float] = {}
    for connections in (1, 4):
        smtp_config = SmtpConfig(port=relay.address, timeout=60, connections=connections)
        options = SendOptions(provider="smtp", limit=args.relay_sample)
        with run_copy(url_b, folder, "smtp", connections) as url:
            sent_e, _, secs_e, _ = run_send(url, config_for(smtp=smtp_config), options)
        relay_rates[connections] = sent_e / secs_e
        print(
            f"(e) relay answering after {RELAY_DELAY * 1000:.0f} ms, connections = {connections}: "
            f"{sent_e:,} sent in {secs_e:.1f}s = {relay_rates[connections]:,.0f} recipients/s"
        )
    relay.stop()
    drop_database(args.database, url_b)
    print(
        f"summary: (a) median {rate_a:,.0f}/s (goal 20,000), {rss_a:.0f} MB (goal ≤ 500); "
        f"(b) DKIM-signed = {dkim_summary} of unsigned (goal ≥ 70%); "
        f"(b) = {ratio:.0%} of (c) (goal ≥ 80%), {rate_b / rate_d:.0f}× (d) "
        f"(goal ≥ 3×), {rate_b / rate_d2:.1f}× (d'); (e) 4 connections = "
        f"{relay_rates[4] / relay_rates[1]:.1f}× one"
    )


if __name__ == "__main__":
    main()
