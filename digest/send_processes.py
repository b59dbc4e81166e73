"""Several send workers as processes (PostgreSQL: FOR UPDATE SKIP LOCKED shares the rows out):
the parent watches the ledger for progress and passes Ctrl-C on; each child runs a Worker.

Where the platform forks (Linux), the workers are forked from the parent once it has frozen the
edition, created the rows and rendered every variant they need: a worker starts in a few
milliseconds with the modules, the edition and the rendered variants it inherited, instead of
paying about 1.5 s of CPU to spawn an interpreter, import digest and render the variants again
(on a 2-core box, four workers' start-up was 3 s of a 27 s send). Elsewhere (macOS, Windows)
they are spawned and each loads and renders the edition itself. Workers on other machines are
other `digest send` runs: their parents render for them.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import utcnow
from digest.config import Config, NewsletterConfig
from digest.db import make_engine, session_factory, transaction
from digest.editions import Edition
from digest.errors import ProviderError
from digest.ledger import Delivery
from digest.providers import make_provider
from digest.render import Renderer
from digest.send_options import Progress, ProgressEvent, SendOptions
from digest.send_worker import Worker, load_for_send
from digest.tracking import send_renderer

_COUNTED = ("sent", "failed", "unknown", "deferred")
_TICK = 0.1  # seconds: how soon a stop (Ctrl-C) reaches the workers
_PROGRESS = 0.5  # seconds between progress reports (each counts the ledger)


@dataclass
class Inherited:
    """What a forked worker takes over from its parent instead of loading it: the edition (its
    items loaded, detached from any session) and the send's renderer with the variants already
    rendered (and the tracked links stored). `engine` is the parent's: the child disowns its
    pooled connections (a connection is never shared across processes) and opens its own."""

    engine: Engine
    edition: Edition
    renderer: Renderer


def forks() -> bool:
    """Workers are forked where that is safe and cheap (Linux), spawned elsewhere (macOS: fork
    is unsafe with the system frameworks; Windows: no fork)."""
    return sys.platform.startswith("linux")


def render_ahead(sessions: sessionmaker[Session], renderer: Renderer, edition_id: int) -> int:
    """Render, once, every variant a pending row of the edition asks for, so the forked workers
    inherit them rather than each rendering them again: this run's new rows were rendered when
    they were created, but rows another run (machine) added were not. A variant that does not
    render is left to the worker that claims it, which meets the error as it always did.
    Returns how many variants were rendered here."""
    with sessions() as session:
        layouts = session.scalars(
            select(Delivery.sections)
            .where(Delivery.edition_id == edition_id, Delivery.state == "pending")
            .distinct()
        ).all()
    rendered = 0
    for raw in layouts:
        try:
            renderer.variant(*ledger.decode_layout(raw))
        except Exception:  # noqa: BLE001  (the claiming worker reports it, as before)
            continue
        rendered += 1
    return rendered


def run_processes(
    config: Config,
    engine: Engine,
    nl: NewsletterConfig,
    edition: Edition,
    renderer: Renderer,
    provider_name: str,
    options: SendOptions,
    stop: threading.Event,
    progress: Progress | None,
) -> tuple[int, int, int, int]:
    fork = forks()
    ctx = multiprocessing.get_context("fork") if fork else multiprocessing.get_context("spawn")
    url = engine.url.render_as_string(hide_password=False)
    edition_id = edition.id
    inherited = None  # spawned workers get the edition's id alone (their arguments are pickled)
    if fork:
        render_ahead(session_factory(engine), renderer, edition_id)
        inherited = Inherited(engine, edition, renderer)
    child_stop = ctx.Event()
    errors = ctx.Queue()
    results = ctx.Queue()
    share = None if options.limit is None else -(-options.limit // options.workers)
    # A process's metrics stay in it: the children's totals are told to the observer at the end.
    observer, options = options.observer, replace(options, observer=None)
    procs = [
        ctx.Process(
            target=worker_process,
            args=(config, url, nl.id, edition_id, provider_name, options, share, child_stop),
            kwargs={"errors": errors, "results": results, "inherited": inherited},
            daemon=True,
        )
        for _ in range(options.workers)
    ]
    factory = session_factory(engine)
    with factory() as session:  # before the start: a forked worker settles its first rows soon
        base = ledger.counts(session, edition_id)
    started = time.monotonic()
    for p in procs:
        p.start()
    total = base["pending"] if share is None else min(base["pending"], options.limit or 0)
    alive = {p.sentinel: p for p in procs}
    reported = 0.0
    while alive:
        # Woken by a worker's end (the send is over when the last one ends, not at the next
        # half second), else every _TICK to pass a stop on.
        for ended in wait(list(alive), timeout=_TICK):
            assert isinstance(ended, int)  # a sentinel is a file descriptor
            alive.pop(ended)
        if stop.is_set():
            child_stop.set()
        if progress is not None and (not alive or time.monotonic() - reported >= _PROGRESS):
            reported = time.monotonic()
            with factory() as session:
                now = ledger.counts(session, edition_id)
            sent, failed, unknown, deferred = (now[s] - base[s] for s in _COUNTED)
            elapsed = time.monotonic() - started
            rate = (sent + failed + unknown + deferred) / elapsed if elapsed else 0.0
            progress(ProgressEvent(sent, failed, unknown, total, rate, deferred))
    for p in procs:
        p.join()
    totals = [0, 0, 0, 0]
    while not results.empty():
        for i, n in enumerate(results.get()):
            totals[i] += n
    if observer is not None:
        observer.recorded(provider_name, totals[0], totals[1], totals[2], totals[3])
    if not errors.empty():
        raise ProviderError(errors.get())
    return totals[0], totals[1], totals[2], totals[3]


def worker_process(
    config: Config,
    url: str,
    newsletter_id: str,
    edition_id: int,
    provider_name: str,
    options: SendOptions,
    limit: int | None,
    stop: Any,
    *,
    errors: Any,
    results: Any,
    inherited: Inherited | None = None,
) -> None:
    from digest.errors import DigestError
    from digest.lifeline import die_with_parent

    if inherited is not None:
        # The parent's pooled connections are its own: forget them without closing them (a
        # close from here would end the parent's sessions with the server).
        inherited.engine.dispose(close=False)
        # Fork copied the parent's signal handlers (`digest send`'s Ctrl-C handler would print
        # its message once per worker). Ctrl-C reaches the whole process group: the parent
        # decides (its stop reaches us through `stop`; a second Ctrl-C ends it, and the
        # lifeline ends us). SIGTERM ends a worker at once, as it ends a spawned one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()  # kill -9 of `digest send` stops its workers too
    engine = make_engine(url)
    sessions = session_factory(engine)
    nl = config.newsletter(newsletter_id)
    try:
        with make_provider(config, provider_name, nl) as provider:
            if inherited is not None:
                edition, renderer = inherited.edition, inherited.renderer
            else:
                with transaction(sessions) as session:
                    edition = load_for_send(session, edition_id)
                    renderer = send_renderer(session, config, nl, edition, options.subject)
            w = Worker(config, sessions, nl, edition, renderer, provider, options, utcnow, stop)
            w.run(limit)
        results.put(w.tally.counts())
    except DigestError as e:
        errors.put(str(e))
    finally:
        engine.dispose()
