"""The scheduler's log: one line per event on stderr, as text or JSON lines, each record
carrying the event name, the newsletter and the edition date."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, date, datetime
from typing import Any

log = logging.getLogger("digest.scheduler")


def event(level: int, event: str, newsletter: str, edition_date: date | None, message: str) -> None:
    log.log(
        level,
        message,
        extra={"event": event, "newsletter": newsletter, "edition": str(edition_date or "")},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, newsletter, edition, message."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "newsletter": getattr(record, "newsletter", None),
            "edition": getattr(record, "edition", None) or None,
            "message": record.getMessage(),
        }
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-03-10T10:30:00Z INFO sent daily 2026-03-10: 1200 sent ...` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = getattr(record, "event", record.name)
        where = " ".join(
            x for x in (getattr(record, "newsletter", ""), getattr(record, "edition", "")) if x
        )
        message = record.getMessage().replace("\n", " ")
        return f"{ts} {record.levelname} {event} {where}: {message}"


class _StderrHandler(logging.Handler):
    """Writes to sys.stderr as it is at each event (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(json_lines: bool) -> None:
    """One line per event on stderr, as text or JSON."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
