"""Delivered readers per edition, variant, segment and subject, kept by the database itself.

`digest report` shows the trend of the last editions, so every report needs the delivered
count of about a million ledger rows; counting them each time is most of a second on SQLite
and more on PostgreSQL. Instead, triggers on `deliveries` (migration 0014) add one to a row of
`report_sent` when a delivery becomes `sent` and take one away when it stops being `sent`
(another state, deleted), for whatever code path writes the ledger: the send worker's settle
marks, a retry or a resend, an erasure, a deleted edition. The figures are exact by
construction: `tests/test_report_counts.py` compares them with a count of the ledger after
each writer.

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

from sqlalchemy import Integer, String, UniqueConstraint, func, literal_column, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from digest.db import Base
from digest.ledger import Delivery, decode_variant


class ReportSent(Base):
    """Delivered (state `sent`) rows of one group, in one writer's shard."""

    __tablename__ = "report_sent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No foreign key: a trigger of the ledger writes here while a cascade deletes an edition.
    edition_id: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(40))
    segment: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(300))
    shard: Mapped[int] = mapped_column(Integer)
    delivered: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("edition_id", "variant", "segment", "subject", "shard"),)


def delivered_groups(session: Session, edition_ids: Sequence[int]) -> list[Any]:
    """(edition_id, variant, segment, subject, delivered) of every group with a delivery."""
    n = func.sum(ReportSent.delivered)
    keys = (ReportSent.edition_id, ReportSent.variant, ReportSent.segment, ReportSent.subject)
    return list(
        session.execute(
            select(*keys, n)
            .where(ReportSent.edition_id.in_(edition_ids))
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
            Delivery.edition_id == ReportSent.edition_id,
            Delivery.variant == ReportSent.variant,
            Delivery.state == literal_column("'sent'"),  # a literal: SQLite's partial index
        )
        .limit(1)
        .correlate(ReportSent)
        .scalar_subquery()
    )
    rows = session.execute(
        select(ReportSent.edition_id, ReportSent.variant, sections)
        .where(ReportSent.edition_id.in_(edition_ids))
        .group_by(ReportSent.edition_id, ReportSent.variant)
        .having(func.sum(ReportSent.delivered) > 0)
    )
    return {(e, v): decode_variant(raw)[0] if raw else () for e, v, raw in rows}
