"""What to watch: `/healthz` for load balancers and service monitors, `/metrics` for Prometheus.

Neither is rate limited (monitors poll; neither takes a token) and neither says anything
secret: /healthz names the schema revisions and a reason, never a URL, host or driver message
(those go to the log); /metrics can ask for a bearer token ([metrics] token_env).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from digest.db import current_revisions, head_revisions, one_line
from digest.metrics import LedgerCollector, bearer_ok, ledger_registry

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@dataclass(frozen=True)
class Watch:
    """What the two routes need, made once per app (app.extensions["digest.watch"])."""

    engine: Engine | None
    heads: frozenset[str]  # the revisions this version of digest needs
    registry: CollectorRegistry
    collector: LedgerCollector
    token: str | None  # asked of /metrics when set ([metrics] token_env, read at start)


def init_watch(app: Flask) -> None:
    context = app.extensions["digest"]
    registry, collector = ledger_registry(context.sessions, context.config, context.clock)
    engine = context.sessions.kw.get("bind")
    app.extensions["digest.watch"] = Watch(
        engine if isinstance(engine, Engine) else None,
        frozenset(head_revisions()),  # read from the migration scripts once, not per request
        registry,
        collector,
        context.config.metrics.token,
    )


def _watch() -> Watch:
    found: Watch = current_app.extensions["digest.watch"]
    return found


@bp.get("/healthz")
def healthz() -> Response:
    """200 when the database answers and its schema is this version's; 503 and why otherwise.
    One small query (the Alembic version table), nothing else."""
    watch = _watch()
    needs = sorted(watch.heads)
    if watch.engine is None:
        return _health(503, "no database configured", needs=needs)
    try:
        current = current_revisions(watch.engine)
    except SQLAlchemyError as e:
        log.warning("healthz: database unreachable: %s", one_line(getattr(e, "orig", e)))
        return _health(503, "database unreachable", needs=needs)
    if current != watch.heads:
        at = ", ".join(sorted(current)) or "none (empty database)"
        return _health(
            503,
            f"database schema is at {at}, this version needs {', '.join(needs)}: "
            "run `digest db upgrade`",
            schema=sorted(current),
            needs=needs,
        )
    return _health(200, None, schema=needs)


def _health(status: int, reason: str | None, **fields: list[str]) -> Response:
    body: dict[str, object] = {"status": "ok" if status == 200 else "unavailable"}
    if reason is not None:
        body["reason"] = reason
    body.update(fields)
    response = Response(json.dumps(body) + "\n", status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus text exposition of this app's registry (digest.metrics)."""
    watch = _watch()
    if not bearer_ok(watch.token, request.headers.get("Authorization")):
        response = Response("a bearer token is required\n", status=401, mimetype="text/plain")
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = Response(generate_latest(watch.registry), status=200)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response
