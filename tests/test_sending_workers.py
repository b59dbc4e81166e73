"""`digest send --workers N`: killing the parent (the PID an operator sees) stops its workers
within a second or two, and a re-run completes the send with nobody getting two copies.

Several workers need PostgreSQL (SQLite runs one worker in the parent's own process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.fakes.fixtures import tls_cert  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.smtp import PASSWORD, USERNAME, SmtpServer
from tests.test_sending_faults import env, ledger_emails, setup_population, write_config


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(parent: int) -> set[int]:
    """The parent's children but multiprocessing's resource tracker (workers are forked, with
    the parent's command line, or spawned)."""
    out = set()
    for pid in children(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            out.add(pid)
    return out


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_parent_stops_its_workers_and_a_rerun_completes_once_each(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    tls_cert: tuple[Path, Path],  # noqa: F811
    how: signal.Signals,
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL")
    n = 200
    setup_population(sessions, now, n)
    with SmtpServer(*tls_cert) as server:
        server.delay = 0.02  # a slow relay: the workers are mid-send when the parent dies
        config = write_config(
            tmp_path,
            smtp=f'port = {server.port}\nsecurity = "starttls"\nusername = "{USERNAME}"',
        )
        variables = env(
            db_url, config, SSL_CERT_FILE=str(tls_cert[0]), DIGEST_SMTP_PASSWORD=PASSWORD
        )
        command = [sys.executable, "-m", "digest_cli", "send", "daily", "--date", "2026-03-10"]
        command += ["--provider", "smtp", "--workers", "2"]
        # Output to a file: a pipe would stay open while any worker lives.
        log = (tmp_path / "first.log").open("wb")
        first = subprocess.Popen(command, env=variables, cwd=tmp_path, stdout=log, stderr=log)
        workers: set[int] = set()
        killed = threading.Event()

        def kill_parent(count: int) -> None:
            if count == 40 and not killed.is_set():
                workers.update(worker_pids(first.pid))
                os.kill(first.pid, how)
                killed.set()

        server.on_message = kill_parent
        first.wait(timeout=60)
        log.close()
        killed_at = time.monotonic()
        assert killed.is_set() and first.returncode == -how
        assert len(workers) == 2, workers
        deadline = killed_at + 3.0
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)], "workers outlived their parent"
        server.on_message = None
        # A message whose data went out before the kill is still in the relay's delay: it
        # counts once answered (the workers are gone; nothing new can start).
        quiet = time.monotonic() + 1.0
        while server.busy and time.monotonic() < quiet:
            time.sleep(0.01)
        stopped_at = len(server.received)
        time.sleep(0.3)
        assert len(server.received) == stopped_at  # nothing more went out

        second = subprocess.run(
            command, env=variables, cwd=tmp_path, capture_output=True, text=True, timeout=90
        )
        assert "Traceback" not in second.stderr, second.stderr
        assert "recovered from an interrupted send" in second.stdout
        counts = server.counts()

    emails = ledger_emails(sessions)
    assert max(counts.values()) == 1, "somebody got two copies"
    assert {e for e in emails["sent"] if counts[e] != 1} == set()
    # At most the message each worker's one connection had in flight is `unknown`.
    assert len(emails["unknown"]) <= 2
    assert len(emails["sent"]) + len(emails["unknown"]) == n
    assert set(counts) <= {email_for(i) for i in range(1, n + 1)}
    assert Counter(counts.values()) == Counter({1: len(counts)})
