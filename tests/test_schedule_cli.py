"""`digest schedule` as an operator runs it: JSON log lines, SIGTERM stops it cleanly, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest_cli import cli
from tests.cli_support import set_cli_clock
from tests.factories import add_article
from tests.fakes.population import add_population
from tests.render_support import store_edition

ROOT = Path(__file__).parent.parent


def test_schedule_logs_json_lines_and_stops_cleanly_on_sigterm(
    config_path: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digest_cli",
            "--config",
            str(config_path),
            "schedule",
            "--log-json",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:  # the catch-up pass logs before the loop waits
            lines.append(json.loads(line))
            # Each newsletter's catch-up ends with one of these; strict is looked at last.
            if lines[-1]["newsletter"] == "strict" and lines[-1]["event"] != "start":
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    lines += [json.loads(line) for line in rest.splitlines()]
    assert lines[0]["event"] == "started" and lines[0]["level"] == "info"
    assert {"ts", "level", "event", "newsletter", "edition", "message"} <= set(lines[0])
    assert [x["event"] for x in lines[-2:]] == ["stopping", "stopped"]
    assert lines[-2]["message"] == "SIGTERM: finishing the current batch"


def test_schedule_status_lists_each_newsletter(config_path: Path, db_url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["--config", str(config_path), "schedule", "status"],
        env={"DIGEST_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("daily: next ") and "(America/New_York)" in lines[0]
    assert lines[1] == "  last: never run"
    assert lines[2].startswith("strict: next ") and "(Europe/Berlin)" in lines[2]


def test_every_schedule_command_has_help() -> None:
    for args in (["schedule", "--help"], ["schedule", "status", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0
        assert "Exit codes" in result.output or "last run" in result.output


# --- digest send: gates, --force, --if-due ------------------------------------------------------

DUE = datetime(2026, 3, 10, 10, 30, tzinfo=UTC)  # daily: 06:30 New York


@pytest.fixture
def send_cli(
    db_url: str,
    config_path: Path,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.chdir(tmp_path)  # the test config's outbox is ./outbox
    # The CLI reads time through its own clock (set_cli_clock): a quarter past the send time.
    set_cli_clock(monkeypatch, fixed(DUE + timedelta(minutes=15)))
    with sessions.begin() as session:
        add_population(session, 4, DUE - timedelta(days=3))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config_path), *args])

    return invoke


def thin_edition(sessions: sessionmaker[Session]) -> None:
    """Only Business stories: News (min 1) is empty."""
    with sessions.begin() as session:
        add_article(session, DUE - timedelta(hours=1), section="Business")


def outbox(tmp_path: Path) -> int:
    return len(list((tmp_path / "outbox").glob("*.eml")))


def test_send_refuses_a_gated_edition_and_force_sends_it(
    send_cli: Callable[..., Result], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    thin_edition(sessions)
    refused = send_cli("send", "daily", "--date", "2026-03-10")
    assert refused.exit_code == 3
    assert refused.stderr.startswith(
        "Error: not sending daily 2026-03-10: section below its minimum: News has 0 of min 1"
    )
    assert outbox(tmp_path) == 0
    forced = send_cli("send", "daily", "--date", "2026-03-10", "--force")
    assert forced.exit_code == 0, forced.output
    assert outbox(tmp_path) == 4


def test_send_if_due_sends_once_then_has_nothing_to_do(
    send_cli: Callable[..., Result], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    with sessions.begin() as session:
        store_edition(session)
    first = send_cli("send", "daily", "--if-due")
    assert first.exit_code == 0, first.output
    assert "INFO sent daily 2026-03-10: daily 2026-03-10 via outbox: sent 4" in first.stderr
    assert outbox(tmp_path) == 4
    again = send_cli("send", "daily", "--if-due")
    assert again.exit_code == 0
    assert again.stdout.startswith("daily 2026-03-10: nothing to do (done: ")
    assert outbox(tmp_path) == 4


def test_send_if_due_blocked_by_a_gate_exits_3_and_force_overrides(
    send_cli: Callable[..., Result], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    thin_edition(sessions)
    blocked = send_cli("send", "daily", "--if-due")
    assert blocked.exit_code == 3
    assert "WARNING blocked daily 2026-03-10: not sending daily 2026-03-10" in blocked.stderr
    forced = send_cli("send", "daily", "--if-due", "--force")
    assert forced.exit_code == 0, forced.output
    assert outbox(tmp_path) == 4


def test_send_if_due_refuses_a_date(send_cli: Callable[..., Result]) -> None:
    result = send_cli("send", "daily", "--if-due", "--date", "2026-03-10")
    assert result.exit_code == 2
    assert "--if-due sends the edition due now: drop --date / --dry-run" in result.stderr
