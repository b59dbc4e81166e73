"""Serving the app: werkzeug's threaded server (`digest serve`), or any WSGI server through
`wsgi_app()`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from digest.clock import Clock, utcnow
from digest.config import Config, load_config
from digest.confirmations import ConfirmationSender
from digest.db import ensure_schema, make_engine, session_factory
from digest.web.app import create_app
from digest.web.context import redact


class _RedactingHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", redact(message % args if args else message))


def make_web_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """werkzeug's threaded server, with token paths redacted from its access log."""
    return make_server(host, port, app, threaded=True, request_handler=_RedactingHandler)


def serve(
    config: Config,
    sessions: sessionmaker[Session],
    *,
    host: str,
    port: int,
    clock: Clock,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the app on werkzeug's threaded server until interrupted; `on_ready` gets the URL
    once the socket is bound (for production use gunicorn behind a reverse proxy, see README)."""
    app = create_app(config, sessions, clock=clock, background=True)
    sender: ConfirmationSender = app.extensions["digest.sender"]
    sender.ensure_running()
    server = make_web_server(app, host, port)
    if on_ready is not None:
        on_ready(f"http://{host}:{server.server_port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sender.stop(timeout=10)


def wsgi_app(config_path: str | None = None) -> Flask:
    """For WSGI servers: `gunicorn 'digest.web:wsgi_app()'` (config from DIGEST_CONFIG)."""
    config = load_config(config_path)
    engine = make_engine(config.database_url)
    ensure_schema(engine)
    return create_app(config, session_factory(engine), clock=utcnow, background=True)
