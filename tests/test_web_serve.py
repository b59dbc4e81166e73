"""`digest serve` as a real process, and the WSGI entry point for gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from digest.web import wsgi_app
from tests.web_support import token

ROOT = Path(__file__).resolve().parent.parent


def test_digest_serve_binds_loopback_and_keeps_tokens_out_of_the_log(config_path, tmp_path):
    env = {
        **os.environ,
        "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/serve.db",
        "DIGEST_SECRET_KEY": "test-secret-key",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from digest_cli import main; main()"]
        + ["--config", str(config_path), "serve", "--port", "0"],
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
        base = line.split()[2]
        with urllib.request.urlopen(f"{base}/archive/daily/", timeout=10) as r:
            assert r.status == 200
        secret_path = f"/u/{token(1, 'unsubscribe')}"
        with urllib.request.urlopen(f"{base}{secret_path}", timeout=10) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=10)
    assert "GET /archive/daily/" in log
    assert "GET /u/…" in log
    assert token(1, "unsubscribe") not in log


def test_wsgi_app_reads_config_and_database_from_the_environment(
    config_path, tmp_path, monkeypatch
):
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{tmp_path}/wsgi.db")
    client = wsgi_app().test_client()
    assert client.get("/archive/daily/").status_code == 200
    assert client.get("/archive/daily/2026-03-10").status_code == 404
