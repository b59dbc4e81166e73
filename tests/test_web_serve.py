"""`digest serve` as a real process, and the WSGI entry point for gunicorn."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digest.web import wsgi_app
from tests.web_support import token

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serving(config: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`digest serve --port 0` in its own process: (its URL, the process)."""
    env = {
        **os.environ,
        "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db",
        "DIGEST_SECRET_KEY": "test-secret-key",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from digest_cli import main; main()"]
        + ["--config", str(config), "serve", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line
        yield line.split()[2], proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_digest_serve_binds_loopback_and_keeps_tokens_out_of_the_log(config_path, tmp_path):
    with serving(config_path, tmp_path) as (base, proc):
        with urllib.request.urlopen(f"{base}/archive/daily/", timeout=10) as r:
            assert r.status == 200
        secret_path = f"/u/{token(1, 'unsubscribe')}"
        with urllib.request.urlopen(f"{base}{secret_path}", timeout=10) as r:
            assert r.status == 200
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert "GET /archive/daily/" in log
    assert "GET /u/…" in log
    assert token(1, "unsubscribe") not in log


def test_digest_serve_emails_sign_ups_from_its_background_sender(config_path, tmp_path):
    """The form's POST only queues; `digest serve`'s own sender emails the link seconds later."""
    outbox = tmp_path / "outbox"
    text = config_path.read_text(encoding="utf-8").replace('dir = "outbox"', f'dir = "{outbox}"')
    config = tmp_path / "digest.toml"
    config.write_text(text, encoding="utf-8")
    with serving(config, tmp_path) as (base, proc):
        with urllib.request.urlopen(f"{base}/subscribe/daily", timeout=10) as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', r.read().decode()).group(1)  # type: ignore[union-attr]
        form = urllib.parse.urlencode({"csrf": csrf, "email": "kim@example.com"}).encode()
        with urllib.request.urlopen(f"{base}/subscribe/daily", data=form, timeout=10) as r:
            assert r.status == 200
        deadline = time.monotonic() + 30
        while not list(outbox.glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (mail,) = outbox.glob("*.eml")
        assert b"To: kim@example.com" in mail.read_bytes()
    assert proc.stderr is not None
    assert "kim@example.com" not in proc.stderr.read()


def test_wsgi_app_reads_config_and_database_from_the_environment(
    config_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{tmp_path}/wsgi.db")
    app = wsgi_app()
    client = app.test_client()
    assert client.get("/archive/daily/").status_code == 200
    assert client.get("/archive/daily/2026-03-10").status_code == 404
    # Each process serving the app runs the confirmation sender, started by its first request.
    sender = app.extensions["digest.sender"]
    assert sender.running
    sender.stop(timeout=10)
