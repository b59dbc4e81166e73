"""New ledger rows for an edition's audience: one pending row per member without one, written
with the driver's executemany (the send's biggest database cost before any message leaves)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from digest import ledger
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.ledger import DELIVERIES
from digest.preflight import VariantCheck
from digest.send_options import SendOptions
from subscribers.audience import audience

_INSERT_CHUNK = 2000
_BUFFERED_ROWS = 50_000
_ROW_COLUMNS = (
    "subscriber_id",
    "email",
    "name",
    "sections",
    "variant",
    "subject",
)  # what a new row binds
_TEXT: TypeEngine[str] = DELIVERIES.c.email.type


@contextmanager
def collector_paused() -> Iterator[None]:
    """Row creation keeps a few objects per audience member alive for a while, none in
    reference cycles: the cyclic collector would walk them over and over (about 10% of the
    creation). What cycles it leaves are collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _insert(session: Session) -> Any:
    """INSERT that skips rows another process added a moment ago (unique edition+subscriber)."""
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(DELIVERIES).on_conflict_do_nothing()
    return postgresql.insert(DELIVERIES).on_conflict_do_nothing()


def _literals(session: Session, values: dict[str, object]) -> dict[str, Any]:
    """Column values as SQL literals (quoted and escaped by the dialect's literal processors).
    A value the driver would get as text (SQLite's timestamps) is rendered as that very text,
    so the stored value is the one a bound parameter gives."""
    dialect = session.get_bind().dialect
    out: dict[str, Any] = {}
    for name, value in values.items():
        column_type = DELIVERIES.c[name].type
        bind = column_type.dialect_impl(dialect).bind_processor(dialect)
        stored = bind(value) if bind is not None else value
        if isinstance(stored, str):
            render = _TEXT.literal_processor(dialect)
            value = stored
        else:
            render = column_type.literal_processor(dialect)
        assert render is not None, name
        out[name] = literal_column(render(value), column_type)
    return out


def create_rows(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition_id: int,
    check: VariantCheck,
    options: SendOptions,
    clock: Clock,
) -> tuple[int, int, int, int]:
    """One pending row per audience member not yet in the ledger (a skipped one for those the
    recipient filter says missed their send time); pending rows of people who left the
    audience since become skipped/suppressed. Returns (created pending, skipped, missed, left
    out by the recipient filter for a later run)."""
    existing = ledger.existing_subscribers(session, edition_id)
    segments, wave = options.segments, options.recipient_filter
    segment = ",".join(segments)
    left_out = 0
    now = clock()
    variants: dict[tuple[tuple[str, ...], tuple[int, ...]], tuple[str, str, str]] = {}
    # Rows are inserted variant by variant: claims take one variant's rows in id order, so
    # a batch's rows then sit together in the table and each ledger update of a batch
    # rewrites a few dozen pages rather than ten times as many (measured: 15% of a send).
    pending: dict[str, list[tuple[object, ...]]] = {}
    buffered = 0
    present: set[int] = set()
    missed: list[dict[str, object]] = []
    created = 0
    # What every new row shares is rendered into the statement once: bound per row, SQLAlchemy
    # would process it 100,000 times (the timestamp's conversion alone was 10% of the insert).
    shared = {
        "edition_id": edition_id,
        "segment": segment,
        "state": "pending",
        "attempts": 0,
        "created_at": now,
    }
    insert = _insert(session).values(_literals(session, shared))
    # The rows go to the driver's executemany as they are (plain ints, strings and None): the
    # per-row parameter processing of SQLAlchemy cost a third of the insert.
    compiled = insert.compile(dialect=session.get_bind().dialect, column_keys=list(_ROW_COLUMNS))
    order = compiled.positiontup
    if order is not None:
        assert tuple(order) == _ROW_COLUMNS, order
    sql = str(compiled)
    conn = session.connection()

    def flush(variant: str) -> None:
        nonlocal created, buffered
        rows = pending.pop(variant)
        if order is None:  # named parameters (psycopg)
            params: Any = [dict(zip(_ROW_COLUMNS, r, strict=True)) for r in rows]
        else:
            params = rows
        # The rows this run added: a row another sender inserted first is skipped by the
        # unique key and not counted (executemany sums the rows each insert wrote).
        created += max(conn.exec_driver_sql(sql, params).rowcount, 0)
        buffered -= len(rows)

    for r in audience(session, config, nl, segments):
        if r.subscriber_id in existing:
            present.add(r.subscriber_id)
            continue
        verdict = True if wave is None else wave(r)
        if verdict is False:
            left_out += 1
            continue
        v = variants.get((r.sections, r.blocks))
        if v is None:
            check.check(r.sections, r.blocks)  # refuses a variant Gmail would clip, a bad header
            rendered = check.renderer.variant(r.sections, r.blocks)
            v = variants[(r.sections, r.blocks)] = (
                rendered.key,
                ledger.encode_variant(rendered.sections, rendered.blocks),
                rendered.subject[:300],
            )
        row = (r.subscriber_id, r.email, r.name, v[1], v[0], v[2])
        if verdict is not True:  # rare (a scheduler that was down): plain bound rows
            settled = {"state": "skipped", "settled_at": now, "last_error": verdict}
            missed.append(shared | dict(zip(_ROW_COLUMNS, row, strict=True)) | settled)
            continue
        rows = pending.setdefault(v[0], [])
        rows.append(row)
        buffered += 1
        if len(rows) >= _INSERT_CHUNK:
            flush(v[0])
        elif buffered >= _BUFFERED_ROWS:  # many small variants: bound the memory
            flush(max(pending, key=lambda k: len(pending[k])))
    for variant in list(pending):
        flush(variant)
    # RETURNING names the rows written (a bulk INSERT's rowcount is not reliable on psycopg).
    added = _insert(session).returning(DELIVERIES.c.id)
    missed_count = len(conn.execute(added, missed).all()) if missed else 0
    # Only rows from an earlier run can belong to someone who has left since.
    gone = ledger.pending_of(session, edition_id, sorted(existing - present), segment)
    skipped = ledger.leave_audience(session, gone, now)
    return created, skipped, missed_count, left_out
