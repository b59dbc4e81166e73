"""`digest send --workers N` on Linux: the workers are forked from the parent once it has
rendered the edition's variants, so a worker starts in milliseconds and never renders; a second
run (another machine) whose rows someone else created renders them once, in its parent. Every
reader still gets exactly one message.

Several workers need PostgreSQL (SQLite runs one worker in the parent's own process)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest import ledger
from digest.clock import fixed
from digest.config import Config, SendGridConfig, load_config
from digest.ledger import Delivery
from digest.render import Renderer
from digest.send_processes import forks
from digest.sending import RetryPolicy, SendOptions, SendReport, send_edition
from tests.fakes.fixtures import sendgrid_server  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.sendgrid import SendGridStandIn
from tests.render_support import EDITION_DATE
from tests.test_sending_faults import setup_population

DATA = Path(__file__).parent / "data"


def renders_by_process(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Append the pid of every process that renders a variant (not one served from the
    renderer's cache) to `log`; forked workers inherit the patch."""
    real = Renderer._render

    def spy(self: Renderer, layout: Any, *, archive: bool) -> Any:
        if (layout, archive) not in self._cache:
            with log.open("a") as f:
                f.write(f"{os.getpid()}\n")
        return real(self, layout, archive=archive)

    monkeypatch.setattr(Renderer, "_render", spy)


def renderers(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def send(config: Config, sessions: sessionmaker[Session], now: datetime, **kw: Any) -> SendReport:
    options = SendOptions(
        provider="sendgrid", batch_size=100, retry=RetryPolicy(base=0.02, cap=0.2), **kw
    )
    return send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))


@pytest.fixture
def config(sendgrid_server: SendGridStandIn) -> Config:  # noqa: F811
    base = load_config(DATA / "digest.toml")
    return replace(base, sendgrid=SendGridConfig(host=sendgrid_server.url, timeout=5))


def test_forked_workers_send_with_the_parents_variants_and_never_render(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if not db_url.startswith("postgresql") or not forks():
        pytest.skip("forked workers: PostgreSQL on Linux")
    n = 2000
    setup_population(sessions, now, n)
    log = tmp_path / "renders"
    renders_by_process(monkeypatch, log)

    report = send(config, sessions, now, workers=3)

    assert report.sent_now == n and report.edition_status == "sent"
    assert renderers(log) == {os.getpid()}  # the parent rendered; no worker did
    assert sendgrid_server.counts() == Counter({email_for(i): 1 for i in range(1, n + 1)})
    with sessions() as session:
        workers = set(session.scalars(select(Delivery.claimed_by).distinct()))
    assert len(workers) == 3  # every worker took part


def test_a_second_machine_renders_the_rows_it_finds_once_in_its_parent(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    config: Config,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if not db_url.startswith("postgresql") or not forks():
        pytest.skip("forked workers: PostgreSQL on Linux")
    n = 1500
    setup_population(sessions, now, n)
    # The first machine creates every row and sends some of them.
    first = send(config, sessions, now, workers=2, limit=400)
    assert first.sent_now == 400 and first.edition_status == "frozen"
    log = tmp_path / "renders"
    renders_by_process(monkeypatch, log)

    # The second finds the rest pending: nothing for its parent to create, all to render.
    second = send(config, sessions, now, workers=2)

    assert second.created == 0 and second.sent_now == n - 400
    assert second.edition_status == "sent"
    assert renderers(log) == {os.getpid()}
    assert sendgrid_server.counts() == Counter({email_for(i): 1 for i in range(1, n + 1)})


def test_a_worker_that_exited_but_is_not_reaped_yet_counts_as_dead() -> None:
    """Workers whose parent was killed are reaped by init, which in a container or VM may take
    seconds: a re-run meanwhile must still recover their rows (kill(pid, 0) succeeds on a
    zombie)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("zombies are told apart through /proc")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    claimed_by = f"{socket.gethostname()[:80]}:{child.pid}:1"
    deadline = time.monotonic() + 10
    while b") Z" not in Path(f"/proc/{child.pid}/stat").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        assert not ledger._alive_here(claimed_by)  # exited, not reaped (we have not waited)
        assert ledger._alive_here(f"{socket.gethostname()[:80]}:{os.getpid()}:1")
    finally:
        child.wait()
    assert not ledger._alive_here(claimed_by)
