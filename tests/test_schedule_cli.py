"""`digest schedule` as an operator runs it: JSON log lines, SIGTERM stops it cleanly, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from digest_cli import cli

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
