"""Debian's PgBouncer in transaction-pooling mode in front of the test PostgreSQL server.

Two server connections for any number of clients: every transaction may land on another
backend, which is what breaks a client that keeps state in its session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

from tests.fakes.smtp import free_port

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return Path(BINARY).exists()


class PgBouncer:
    def __init__(self, postgres_url: str, pool_size: int = 2) -> None:
        self.target = make_url(postgres_url)
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="digest-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str, query: str = "prepare_threshold=none") -> str:
        """`database_url` (a database on the target server) reached through the pooler."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        rendered = url.render_as_string(hide_password=False)
        return f"{rendered}?{query}" if query else rendered

    def __enter__(self) -> PgBouncer:
        self.dir.chmod(0o755)  # PgBouncer refuses to run as root: it reads these as postgres
        users = self.dir / "users.txt"
        users.write_text(f'"{self.target.username or "postgres"}" ""\n')
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.target.host or '127.0.0.1'} port={self.target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = transaction\ndefault_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
        )
        for path in (users, ini):
            path.chmod(0o644)
        command = [BINARY, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(ini)]
        log = self.dir / "pgbouncer.log"  # opened here: the dropped-privilege process logs to it
        with log.open("wb") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=sink)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pgbouncer did not start listening")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
