"""`digest schedule`'s metrics: the send path's counts (messages by outcome, provider call
times) and the ledger's, served on loopback when [metrics] port is set; a wrong port is one
error line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, MetricsConfig
from digest.metrics import SchedulerMetrics, SendMetrics
from digest.sending import SendOptions, send_edition
from digest_cli import cli
from tests.fakes.population import add_population
from tests.fakes.smtp import free_port
from tests.render_support import EDITION_DATE, store_edition
from tests.test_web_health import fill_ledger, rows_by_state, samples

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text: str = r.read().decode("utf-8")
        return text


def test_the_schedulers_metrics_server_answers_on_loopback_with_the_ledgers_counts(
    config: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    fill_ledger(sessions, now)
    config = dataclasses.replace(config, metrics=MetricsConfig(port=0))
    with SchedulerMetrics(sessions, config, fixed(now)) as metrics:
        assert metrics.host == "127.0.0.1"
        found = samples(scrape(metrics.port))
    assert rows_by_state(found)["sent"] == 7
    assert found[("digest_sends_total", (("outcome", "sent"), ("provider", "sendgrid")))] == 0
    assert found[("digest_provider_request_seconds_count", (("provider", "smtp"),))] == 0


def send_with(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path, **kw: object
) -> tuple[CollectorRegistry, int]:
    config = dataclasses.replace(config, outbox=dataclasses.replace(config.outbox, dir=tmp_path))
    with sessions.begin() as session:
        store_edition(session)
        n = len(add_population(session, 25, now))
    registry = CollectorRegistry()
    options = SendOptions(observer=SendMetrics(registry), **kw)  # type: ignore[arg-type]
    send_edition(config, sessions, "daily", EDITION_DATE, options, clock=fixed(now))
    return registry, n


def test_a_send_counts_its_messages_and_times_each_provider_call(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    registry, n = send_with(config, sessions, now, tmp_path)
    sent = registry.get_sample_value(
        "digest_sends_total", {"provider": "outbox", "outcome": "sent"}
    )
    assert sent == n
    calls = registry.get_sample_value(
        "digest_provider_request_seconds_count", {"provider": "outbox"}
    )
    assert calls is not None and calls >= 1
    took = registry.get_sample_value("digest_provider_request_seconds_sum", {"provider": "outbox"})
    assert took is not None and took > 0


def test_worker_processes_report_their_totals_to_the_parents_metrics(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("several workers need PostgreSQL")
    registry, n = send_with(config, sessions, now, tmp_path, workers=2)
    sent = registry.get_sample_value(
        "digest_sends_total", {"provider": "outbox", "outcome": "sent"}
    )
    assert sent == n


def config_with(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "digest.toml"
    text = (DATA / "digest.toml").read_text(encoding="utf-8")
    path.write_text(f"{text}\n[metrics]\n{metrics}\n", encoding="utf-8")
    return path


def test_digest_schedule_serves_metrics_on_the_configured_port(tmp_path: Path) -> None:
    port = free_port()
    config = config_with(tmp_path, f"port = {port}")
    env = {**os.environ, "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest_cli", "--config", str(config), "schedule", "--log-json"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            event = json.loads(line)
            if event["event"] == "metrics":
                break
        assert event["message"] == f"metrics on http://127.0.0.1:{port}/metrics"
        found = samples(scrape(port))
        assert found[("digest_database_up", ())] == 1
        assert ("digest_sends_total", (("outcome", "sent"), ("provider", "outbox"))) in found
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    with pytest.raises(OSError):  # the server went with the scheduler
        scrape(port)


@pytest.mark.parametrize(
    ("metrics", "error"),
    [
        ("port = 70000", "metrics.port: must be at most 65535, got 70000"),
        ('port = "9100"', "metrics.port: must be a whole number, not '9100'"),
        ("port = 0", "metrics.port: must be at least 1, got 0"),
        ('host = "metrics host"', "metrics.host: 'metrics host' is not an IP address or host name"),
        (
            "prot = 9100",
            "metrics.prot: unknown key (expected one of: cache_seconds, host, ledger_days",
        ),
    ],
)
def test_a_wrong_metrics_setting_is_one_error_line(
    tmp_path: Path, metrics: str, error: str
) -> None:
    config = config_with(tmp_path, metrics)
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
    result = CliRunner().invoke(cli, ["--config", str(config), "schedule"], env=env)
    assert result.exit_code == 2
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {config}: {error}")


def test_a_metrics_port_in_use_stops_the_scheduler_with_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_with(tmp_path, f"port = {port}")
        env = {"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
        result = CliRunner().invoke(cli, ["--config", str(config), "schedule"], env=env)
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"Error: metrics.port: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]
