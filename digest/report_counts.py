"""Ledger rows per edition, variant, segment, subject and state, kept by the database itself.

`digest report` shows the trend of the last editions and `digest sends report` an edition's
rows by state, segment and variant: counting a million ledger rows each time is a second or
two. Instead, triggers on `deliveries` (migration 0018; 0014 kept the delivered rows alone)
add one to a row of `ledger_counts` when a delivery enters a group and take one away when it
leaves it (another state, a provider's event resolved it, deleted), for whatever code path
writes the ledger: row creation, a send's claims and settle marks, a retry or a resend, an
erasure, a deleted edition. The figures are exact by construction: `tests/test_report_counts.py`
compares them with a count of the ledger after each writer.

On PostgreSQL each database session (backend) keeps its own `shard` of a row, so concurrent
send workers never wait on, or deadlock over, the same counter; the report adds the shards.
SQLite has one writer at a time and one shard (0). A subject is stored as '' when the row has
none (the report shows both alike).

Clicks are not kept here: the report counts them from click_events' covering indexes, where a
late click or a click re-flagged as a bot is counted as it now stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, literal_column, select
from sqlalchemy.orm import Session

from digest.ledger import Delivery, decode_variant
from digest.ledger_model import LedgerCount


def edition_groups(session: Session, edition_id: int) -> list[tuple[str, str, str, int, int]]:
    """(segment, variant, state, rows, rows a provider's event resolved) of an edition's
    ledger, every group with a row."""
    n = func.sum(LedgerCount.n)
    by_event = func.sum(LedgerCount.n * LedgerCount.by_event)
    keys = (LedgerCount.segment, LedgerCount.variant, LedgerCount.state)
    rows = session.execute(
        select(*keys, n, by_event)
        .where(LedgerCount.edition_id == edition_id)
        .group_by(*keys)
        .having(n > 0)
    )
    return [(s, v, st, int(c), int(e)) for s, v, st, c, e in rows]


def delivered_groups(session: Session, edition_ids: Sequence[int]) -> list[Any]:
    """(edition_id, variant, segment, subject, delivered) of every group with a delivery."""
    n = func.sum(LedgerCount.n)
    keys = (LedgerCount.edition_id, LedgerCount.variant, LedgerCount.segment, LedgerCount.subject)
    return list(
        session.execute(
            select(*keys, n)
            .where(LedgerCount.edition_id.in_(edition_ids), LedgerCount.state == "sent")
            .group_by(*keys)
            .having(n > 0)
        ).all()
    )


def variant_sections(
    session: Session, edition_ids: Sequence[int]
) -> dict[tuple[int, str], tuple[str, ...]]:
    """The sections of each (edition, variant) with a delivery, read from one delivered row of
    each (found through the partial index of sent rows), in one statement."""
    sections = (
        select(Delivery.sections)
        .where(
            Delivery.edition_id == LedgerCount.edition_id,
            Delivery.variant == LedgerCount.variant,
            Delivery.state == literal_column("'sent'"),  # a literal: SQLite's partial index
        )
        .limit(1)
        .correlate(LedgerCount)
        .scalar_subquery()
    )
    rows = session.execute(
        select(LedgerCount.edition_id, LedgerCount.variant, sections)
        .where(LedgerCount.edition_id.in_(edition_ids), LedgerCount.state == "sent")
        .group_by(LedgerCount.edition_id, LedgerCount.variant)
        .having(func.sum(LedgerCount.n) > 0)
    )
    return {(e, v): decode_variant(raw)[0] if raw else () for e, v, raw in rows}
