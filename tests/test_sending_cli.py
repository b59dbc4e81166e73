"""`digest send`, `digest sends report` and `digest preview --format eml` as a user runs them."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from digest_cli import cli
from tests.fakes.population import add_population, email_for
from tests.render_support import store_edition

Run = Callable[..., Result]


@pytest.fixture
def run(
    db_url: str,
    config_path: Path,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    monkeypatch.chdir(tmp_path)  # the test config's outbox is ./outbox
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 6, now)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_send_then_report_then_rerun(run: Run, tmp_path: Path) -> None:
    result = run("send", "daily", "--date", "2026-03-10")
    assert result.exit_code == 0, result.output
    assert "daily 2026-03-10 via outbox: sent 6, failed 0, unknown 0 in" in result.stdout
    assert "ledger: sent 6; edition sent" in result.stdout
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 6

    report = run("sends", "report", "daily", "--date", "2026-03-10")
    assert report.exit_code == 0
    lines = report.stdout.splitlines()
    assert lines[0] == "daily 2026-03-10 (edition sent): 6 recipient(s)"
    assert "  (all): sent 6" in lines
    assert sum(1 for line in lines if re.match(r"  v-[0-9a-f]{10} \(", line)) == 6

    again = run("send", "daily", "--date", "2026-03-10")
    assert "sent 0, failed 0, unknown 0" in again.stdout

    csv = run("sends", "report", "daily", "--date", "2026-03-10", "--csv").stdout.splitlines()
    assert csv[0].startswith("delivery_id,subscriber_id,email,state,variant,segment,attempts")
    assert len(csv) == 7 and all(",sent," in line for line in csv[1:])


def test_bad_credentials_are_one_clear_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    result = run("send", "daily", "--date", "2026-03-10", "--provider", "sendgrid")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: SendGrid needs an API key: set the environment variable SENDGRID_API_KEY\n"
    )


def test_report_of_an_edition_never_built(run: Run) -> None:
    result = run("sends", "report", "daily", "--date", "2026-01-01")
    assert result.exit_code == 1
    assert result.stderr == "Error: no edition of daily for 2026-01-01: nothing was sent\n"


def test_preview_eml_is_the_message_the_send_delivers(run: Run, tmp_path: Path) -> None:
    preview = run(
        "preview", "daily", "--date", "2026-03-10", "--subscriber", email_for(3), "--format", "eml"
    )
    assert preview.exit_code == 0, preview.output
    run("send", "daily", "--date", "2026-03-10")
    sent = [
        p.read_bytes()
        for p in (tmp_path / "outbox").glob("*.eml")
        if email_for(3).encode() in p.read_bytes()
    ]
    assert len(sent) == 1

    def without_date(raw: bytes) -> bytes:
        return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\n", raw)

    assert without_date(preview.stdout_bytes) == without_date(sent[0])
