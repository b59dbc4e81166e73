"""Fault tests: a sender killed with SIGKILL mid-send, flaky provider answers, two workers.

The kill comes from the server at the worst moment: it has just taken message (or request)
number N and the sender dies before reading the reply. After a re-run every recipient must
have exactly one message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import SendGridConfig, load_config
from digest.ledger import Delivery
from digest.sending import RetryPolicy, SendOptions, send_edition
from tests.fakes.fixtures import sendgrid_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population, email_for
from tests.fakes.sendgrid import API_KEY, SendGridStandIn
from tests.fakes.smtp import PASSWORD, USERNAME, SmtpServer
from tests.render_support import EDITION_DATE, store_edition

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def setup_population(sessions: sessionmaker[Session], now: datetime, n: int) -> None:
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, n, now)


def write_config(tmp_path: Path, **providers: str) -> Path:
    text = (DATA / "digest.toml").read_text(encoding="utf-8")
    text = text.replace('[providers.outbox]\ndir = "outbox"\n', "")
    text = text.replace('[providers.smtp]\nhost = "127.0.0.1"\nport = 2525\n', "")
    extra = "".join(f"\n[providers.{name}]\n{body}\n" for name, body in providers.items())
    path = tmp_path / "digest.toml"
    path.write_text(text + extra, encoding="utf-8")
    return path


def ledger_states(sessions: sessionmaker[Session]) -> Counter[str]:
    with sessions() as session:
        rows = session.execute(select(Delivery.state, func.count()).group_by(Delivery.state))
        return Counter({state: n for state, n in rows})


def ledger_emails(sessions: sessionmaker[Session]) -> dict[str, set[str]]:
    with sessions() as session:
        out: dict[str, set[str]] = {"sent": set(), "unknown": set()}
        for state, email in session.execute(select(Delivery.state, Delivery.email)):
            out.setdefault(state, set()).add(email)
        return out


def env(db_url: str, config: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DIGEST_DATABASE_URL": db_url,
        "DIGEST_CONFIG": str(config),
        "PYTHONPATH": str(REPO),
        **extra,
    }


@pytest.mark.parametrize("connections", [1, 3])
def test_smtp_send_killed_mid_way_then_rerun_delivers_each_recipient_exactly_once(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    tls_cert: tuple[Path, Path],  # noqa: F811
    connections: int,
) -> None:
    n = 5000
    setup_population(sessions, now, n)
    with SmtpServer(*tls_cert, keep=False) as server:
        config = write_config(
            tmp_path,
            smtp=f'port = {server.port}\nsecurity = "starttls"\nusername = "{USERNAME}"\n'
            f"connections = {connections}",
        )
        variables = env(
            db_url, config, SSL_CERT_FILE=str(tls_cert[0]), DIGEST_SMTP_PASSWORD=PASSWORD
        )
        command = [sys.executable, "-m", "digest_cli", "send", "daily", "--date", "2026-03-10"]
        command += ["--provider", "smtp"]
        first = subprocess.Popen(command, env=variables, cwd=tmp_path, stdout=subprocess.PIPE)
        killed_at: list[int] = []

        def kill_mid_batch(count: int) -> None:
            if count == 2050:
                killed_at.append(count)
                os.kill(first.pid, signal.SIGKILL)

        server.on_message = kill_mid_batch
        first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL and killed_at == [2050]
        server.on_message = None
        before = ledger_states(sessions)
        assert before["sending"] > 0  # the dead sender's claim is still there

        second = subprocess.run(
            command, env=variables, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        # The row in flight at the kill stays `unknown`: the re-run says so with exit code 4.
        assert second.returncode == 4, second.stderr
        assert "unknown (handed over, no answer" in second.stdout
        counts = server.counts()

    if connections == 1:
        assert counts == Counter({email_for(i): 1 for i in range(1, n + 1)})
        after = ledger_states(sessions)
        # The message in flight at the kill was taken by the server: its row says `unknown`
        # (maybe delivered) and was not sent again; every other row is `sent`.
        assert after == Counter({"sent": n - 1, "unknown": 1})
        # The dead sender's batch of 100: 49 sent, one in flight (unknown), 50 never handed over.
        assert "51 row(s) recovered from an interrupted send" in second.stdout
    else:
        # One message in flight per connection at the kill: each `unknown` (the server may
        # or may not have it, and it is not sent again); nobody got two, every `sent` row
        # arrived once, and the rest of the list was sent by the re-run.
        emails = ledger_emails(sessions)
        assert max(counts.values()) == 1
        assert {e for e in emails["sent"] if counts[e] != 1} == set()
        assert 1 <= len(emails["unknown"]) <= connections
        assert len(emails["sent"]) + len(emails["unknown"]) == n


@pytest.mark.parametrize("in_flight", [1, 3])
def test_flaky_sendgrid_and_a_kill_still_deliver_everyone_once(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    in_flight: int,
) -> None:
    n = 5000
    setup_population(sessions, now, n)
    sendgrid_server.fail_rate = 0.2
    config = write_config(
        tmp_path,
        sendgrid=f'host = "{sendgrid_server.url}"\ntimeout = 5\nin_flight = {in_flight}',
    )
    variables = env(db_url, config, SENDGRID_API_KEY=API_KEY)
    command = [sys.executable, "-m", "tests.fakes.send_script", str(config), db_url, "sendgrid"]
    first = subprocess.Popen([*command, "250"], env=variables, cwd=REPO)

    def kill_at_8(count: int) -> None:
        if count == 8:
            os.kill(first.pid, signal.SIGKILL)

    sendgrid_server.on_accept = kill_at_8
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    sendgrid_server.on_accept = None

    second = subprocess.run(
        [*command, "250"], env=variables, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    assert any(status in (429, 500) for status, _ in sendgrid_server.rejected)
    received = sendgrid_server.counts()
    assert set(received.values()) == {1}  # nobody twice
    by_state = ledger_emails(sessions)
    # Everyone `sent` was received; whoever else was received is `unknown` (a request the
    # stand-in took while, or after, the sender died); nobody pending or failed.
    assert by_state["sent"] <= set(received) <= by_state["sent"] | by_state["unknown"]
    assert set(by_state) == {"sent", "unknown"}
    # The requests handed over when the sender was killed (250 recipients each, at most
    # `in_flight` of them, the one that triggered the kill among them) are `unknown`: not
    # resent, whether or not the stand-in had taken them; everyone else is `sent`.
    unknown = len(by_state["unknown"])
    assert unknown % 250 == 0 and 250 <= unknown <= 250 * in_flight
    assert len(by_state["sent"]) == n - unknown
    if in_flight == 1:
        assert len(received) == n  # the one request in flight was the one taken


def test_two_workers_on_postgresql_never_send_to_anyone_twice(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    sendgrid_server: SendGridStandIn,  # noqa: F811
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL")
    n = 3000
    setup_population(sessions, now, n)
    config = load_config(DATA / "digest.toml")
    config = type(config)(
        **{**config.__dict__, "sendgrid": SendGridConfig(host=sendgrid_server.url, timeout=5)}
    )
    report = send_edition(
        config,
        sessions,
        "daily",
        EDITION_DATE,
        SendOptions(
            provider="sendgrid", workers=2, batch_size=100, retry=RetryPolicy(base=0.02, cap=0.2)
        ),
        clock=fixed(now),
    )
    assert report.sent_now == n
    assert sendgrid_server.counts() == Counter({email_for(i): 1 for i in range(1, n + 1)})
    with sessions() as session:
        workers = set(session.scalars(select(Delivery.claimed_by).distinct()))
    assert len(workers) == 2  # both workers took part
