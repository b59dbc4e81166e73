"""digest behind PgBouncer in transaction-pooling mode: nothing the send does relies on session
state, and `?prepare_threshold=none` in DIGEST_DATABASE_URL turns off psycopg's server-side
prepared statements, which a pooler before PgBouncer 1.21 cannot carry between backends."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from digest.db import make_engine
from digest.errors import ConfigError
from tests.fakes import pgbouncer
from tests.fakes.fixtures import tls_cert  # noqa: F401
from tests.fakes.population import email_for
from tests.fakes.smtp import PASSWORD, USERNAME, SmtpServer
from tests.test_sending_faults import env, ledger_emails, setup_population, write_config


@pytest.fixture
def bouncer(db_url: str) -> Iterator[pgbouncer.PgBouncer]:
    if not db_url.startswith("postgresql"):
        pytest.skip("PgBouncer pools PostgreSQL connections")
    if not pgbouncer.available():
        pytest.skip("PgBouncer is not installed (.ci/run installs Debian's pgbouncer)")
    with pgbouncer.PgBouncer(db_url, pool_size=2) as running:
        yield running


def _hammer(url: str, clients: int = 3, statements: int = 20) -> list[str]:
    """Each client runs the same statement in its own transactions, more often than psycopg's
    threshold for preparing it; the errors they met."""
    engine = make_engine(url)
    errors: list[str] = []

    def client() -> None:
        try:
            for i in range(statements):
                with engine.begin() as conn:
                    conn.execute(text("SELECT count(*) FROM deliveries WHERE id > :i"), {"i": i})
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(str(e).splitlines()[0])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return errors


def test_prepared_statements_off_make_a_transaction_pooler_safe(
    db_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    assert _hammer(bouncer.url(db_url)) == []
    # What the setting prevents: psycopg's own prepared statements collide on shared backends.
    assert any("prepared statement" in e for e in _hammer(bouncer.url(db_url, query="")))


def test_a_send_with_two_workers_through_pgbouncer_reaches_everyone_once(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    tls_cert: tuple[Path, Path],  # noqa: F811
    bouncer: pgbouncer.PgBouncer,
) -> None:
    n = 300
    setup_population(sessions, now, n)
    with SmtpServer(*tls_cert) as server:
        config = write_config(
            tmp_path,
            smtp=f'port = {server.port}\nsecurity = "starttls"\nusername = "{USERNAME}"',
        )
        variables = env(
            bouncer.url(db_url),
            config,
            SSL_CERT_FILE=str(tls_cert[0]),
            DIGEST_SMTP_PASSWORD=PASSWORD,
        )
        command = [sys.executable, "-m", "digest_cli", "send", "daily", "--date", "2026-03-10"]
        command += ["--provider", "smtp", "--workers", "2"]
        done = subprocess.run(
            command, env=variables, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        counts = server.counts()
    assert counts == {email_for(i): 1 for i in range(1, n + 1)}
    assert len(ledger_emails(sessions)["sent"]) == n


@pytest.mark.parametrize(("query", "expected"), [("none", None), ("NONE", None), ("12", 12)])
def test_prepare_threshold_in_the_url_reaches_the_driver(
    db_url: str, query: str, expected: int | None
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("a psycopg setting")
    engine = make_engine(f"{db_url}?prepare_threshold={query}")
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection.prepare_threshold == expected  # type: ignore[union-attr]
    engine.dispose()


@pytest.mark.parametrize("bad", ["abc", "-1", "5.5"])
def test_a_bad_prepare_threshold_is_one_clear_line(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"DIGEST_DATABASE_URL: prepare_threshold=.* a number"):
        make_engine(f"postgresql+psycopg://digest@127.0.0.1:1/digest?prepare_threshold={bad}")
