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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import SendGridConfig, load_config
from digest.editions import Edition
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


def assert_unknown_only_where_bytes_left(
    unknown: set[str], arrived: Counter[str], in_flight: int, kills: int, batch: int
) -> None:
    """`unknown` is for requests whose bytes had left. With one request in flight the kill
    (at the stand-in's accept) finds the sender waiting on that request alone, so every
    `unknown` reader arrived. With more, another thread may be between marking its rows
    handed and its bytes reaching the stand-in: at most `in_flight - 1` such requests a kill."""
    not_arrived = unknown - set(arrived)
    if in_flight == 1:
        assert not not_arrived
    else:
        assert len(not_arrived) <= batch * (in_flight - 1) * kills


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
        first.wait(timeout=180)
        assert first.returncode == -signal.SIGKILL and killed_at == [2050]
        server.on_message = None
        before = ledger_states(sessions)
        assert before["sending"] > 0  # the dead sender's claim is still there

        second = subprocess.run(
            command, env=variables, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        # The row in flight at the kill stays `unknown`: the re-run says so with exit code 4.
        assert second.returncode == 4, second.stderr
        assert "unknown (handed over, no answer" in second.stdout
        counts = server.counts()
    report = kill_report(sessions, n, counts, [first.returncode, second.returncode])
    assert report.duplicates == 0 and report.missing_not_unknown == 0
    assert report.unknown_not_received <= connections and report.edition == "sent"

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
    first.wait(timeout=180)
    assert first.returncode == -signal.SIGKILL
    sendgrid_server.on_accept = None

    second = subprocess.run(
        [*command, "250"], env=variables, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, second.stderr
    report = kill_report(
        sessions, n, sendgrid_server.counts(), [first.returncode, second.returncode]
    )
    assert report.duplicates == 0 and report.missing_not_unknown == 0
    assert_unknown_only_where_bytes_left(
        ledger_emails(sessions)["unknown"], sendgrid_server.arrived, in_flight, 1, 250
    )
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


# --- kills under per-recipient trouble: each run reports what a newsroom would check ----------


@dataclass
class KillReport:
    """What a series of killed runs and the re-runs after them left, per recipient."""

    duplicates: int  # must be 0
    missing_not_unknown: int  # never received and not `unknown`: must be 0
    unknown_not_received: int  # `unknown` although the provider never got it
    states: Counter[str]
    edition: str
    exit_codes: list[int]

    def __str__(self) -> str:
        return (
            f"duplicates {self.duplicates}, missing-and-not-unknown {self.missing_not_unknown}, "
            f"unknown-and-not-received {self.unknown_not_received}, ledger {dict(self.states)}, "
            f"edition {self.edition}, exit codes {self.exit_codes}"
        )


def kill_report(
    sessions: sessionmaker[Session], n: int, received: Counter[str], exit_codes: list[int]
) -> KillReport:
    emails = ledger_emails(sessions)
    with sessions() as session:
        edition = session.scalar(select(Edition.status)) or ""
    everyone = {email_for(i) for i in range(1, n + 1)}
    report = KillReport(
        duplicates=sum(1 for c in received.values() if c > 1),
        missing_not_unknown=len(everyone - set(received) - emails["unknown"]),
        unknown_not_received=len(emails["unknown"] - set(received)),
        states=ledger_states(sessions),
        edition=edition,
        exit_codes=exit_codes,
    )
    print(f"\nkill report: {report}")
    return report


def killed_runs(
    command: list[str],
    variables: dict[str, str],
    set_hook: Callable[[Callable[[int], None] | None], None],
    kill_at: list[int],
) -> list[int]:
    """Run `command` once per kill point, SIGKILLed when the provider has taken that many
    messages (requests); returns the exit codes."""
    codes = []
    for at in kill_at:
        proc = subprocess.Popen(command, env=variables, cwd=REPO, stdout=subprocess.DEVNULL)

        def kill(count: int, at: int = at, pid: int = proc.pid) -> None:
            if count == at:
                os.kill(pid, signal.SIGKILL)

        set_hook(kill)
        codes.append(proc.wait(timeout=120))
        set_hook(None)
    return codes


def finish(command: list[str], variables: dict[str, str], minutes_ahead: int = 0) -> int:
    done = subprocess.run(
        command,
        env={**variables, "SEND_SCRIPT_MINUTES_AHEAD": str(minutes_ahead)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.returncode


@pytest.mark.parametrize("trouble", ["451 after 20% of messages", "one greylisted reader"])
def test_smtp_kills_under_per_recipient_trouble_skip_nobody(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    tls_cert: tuple[Path, Path],  # noqa: F811
    trouble: str,
) -> None:
    n, connections = 3000, 2
    setup_population(sessions, now, n)
    grey = email_for(1234)
    with SmtpServer(*tls_cert, keep=False) as server:
        if trouble.startswith("451"):
            server.fail_rate = 0.2
        else:
            server.refuse[grey] = "450 4.2.0 Greylisted, try again later"
        config = write_config(
            tmp_path,
            smtp=f'port = {server.port}\nsecurity = "starttls"\nusername = "{USERNAME}"\n'
            f"connections = {connections}",
        )
        variables = env(
            db_url, config, SSL_CERT_FILE=str(tls_cert[0]), DIGEST_SMTP_PASSWORD=PASSWORD
        )
        command = [sys.executable, "-m", "tests.fakes.send_script", str(config), db_url, "smtp"]

        def hook(f: Callable[[int], None] | None) -> None:
            server.on_message = f

        kills = [400, 1100, 1900]
        codes = killed_runs(command, variables, hook, kills)
        codes.append(finish(command, variables))
        mid = ledger_states(sessions)
        # Still refused when it ran: deferred, on its own clock, the edition left open.
        assert mid["deferred"] >= 1 and mid["pending"] == mid["sending"] == 0
        server.fail_rate = 0.0
        server.refuse.clear()
        codes.append(finish(command, variables, minutes_ahead=6))  # the deferred rows are due
        report = kill_report(sessions, n, server.counts(), codes)

    assert codes[: len(kills)] == [-signal.SIGKILL] * len(kills)
    assert report.duplicates == 0
    assert report.missing_not_unknown == 0
    # A kill while a connection's message is between its checkpoint and the server: at most
    # one per connection per kill; a refused message is never among them.
    assert report.unknown_not_received <= connections * len(kills)
    assert report.states["unknown"] <= connections * len(kills)
    assert set(report.states) <= {"sent", "unknown"} and report.edition == "sent"
    if not trouble.startswith("451"):
        assert server.counts()[grey] == 1


@pytest.mark.parametrize("in_flight", [1, 3])
def test_sendgrid_kills_under_20_percent_429_and_5xx_report_only_requests_that_left(
    db_url: str,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    sendgrid_server: SendGridStandIn,  # noqa: F811
    in_flight: int,
) -> None:
    n, batch = 5000, 250
    setup_population(sessions, now, n)
    sendgrid_server.fail_rate = 0.2
    config = write_config(
        tmp_path,
        sendgrid=f'host = "{sendgrid_server.url}"\ntimeout = 5\nin_flight = {in_flight}',
    )
    variables = env(db_url, config, SENDGRID_API_KEY=API_KEY)
    command = [sys.executable, "-m", "tests.fakes.send_script", str(config), db_url, "sendgrid"]

    def hook(f: Callable[[int], None] | None) -> None:
        sendgrid_server.on_accept = f

    kills = [3, 9, 14]  # accepted requests, counted over the runs
    codes = killed_runs([*command, str(batch)], variables, hook, kills)
    codes.append(finish([*command, str(batch)], variables))
    report = kill_report(sessions, n, sendgrid_server.counts(), codes)

    assert codes[: len(kills)] == [-signal.SIGKILL] * len(kills)
    assert report.duplicates == 0
    assert report.missing_not_unknown == 0
    unknown = ledger_emails(sessions)["unknown"]
    assert_unknown_only_where_bytes_left(
        unknown, sendgrid_server.arrived, in_flight, len(kills), batch
    )
    assert len(unknown) <= batch * in_flight * len(kills)
    assert set(report.states) <= {"sent", "unknown"} and report.edition == "sent"
