"""What is kept of an edition whose ledger rows were pruned (`digest sends prune`).

Before the rows of an edition go, every figure `digest sends report` and `digest report` show
of it is written to `edition_summaries` as the very aggregates their queries return (counts by
segment, variant, layout and state, the first failures, rows resolved by provider events;
delivered readers per variant, segment and subject, clickers and clicks per group, per link,
per section, flagged clicks and opens). The reports then read an edition with a summary from
it and never from the ledger, so they show the same before and after a prune, and a half-done
prune (SQLite deletes in chunks) cannot make them count twice or half.

An edition with a summary is never sent again: the ledger is what says who got it, and its
rows are gone (digest.sending refuses with EditionPruned).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, ForeignKey, Integer, Text, false, func, select, true
from sqlalchemy.orm import Mapped, Session, mapped_column

from digest.articles import UTCDateTime
from digest.db import Base


class EditionSummary(Base):
    __tablename__ = "edition_summaries"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True
    )
    edition_date: Mapped[date] = mapped_column(Date)
    rows: Mapped[int] = mapped_column(Integer)  # ledger rows when summarised
    clicks: Mapped[int] = mapped_column(Integer)  # click events when summarised
    summarised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    data: Mapped[str] = mapped_column(Text)  # JSON: see summarise


def _ledger(session: Session, edition_id: int) -> dict[str, Any]:
    from digest.ledger_report import report

    # The report's own figures and cross tab: counted again, they were more passes over the
    # edition (one of them grouping a million rows by their layout's text).
    full = report(session, edition_id)
    failures = full.failures
    return {
        "groups": [
            [segment, variant, full.variant_layouts[variant], state, n]
            for (segment, variant, state), n in full.groups.items()
        ],
        "failures": [
            [
                f.email,
                f.state,
                f.attempts,
                f.error,
                f.next_attempt_at and f.next_attempt_at.isoformat(),
            ]
            for f in failures
        ],
        "counts": full.counts,
        "resolved": full.resolved,
    }


def _clicks(session: Session, edition_id: int) -> dict[str, Any]:
    from digest.clicks import ClickEvent
    from digest.report_counts import delivered_groups, variant_sections

    ce = ClickEvent
    counted = (ce.edition_id == edition_id, ce.kind == "click", ce.counted == true())
    readers = func.count(func.distinct(ce.delivery_id))
    return {
        "delivered": [list(r[1:]) for r in delivered_groups(session, [edition_id])],
        "sections_of": [
            [v, list(s)] for (_e, v), s in variant_sections(session, [edition_id]).items()
        ],
        "clickers": [
            list(r)
            for r in session.execute(
                select(ce.variant, ce.segment, ce.subject, readers, func.count())
                .where(*counted)
                .group_by(ce.variant, ce.segment, ce.subject)
            )
        ],
        "links": [
            list(r)
            for r in session.execute(
                select(ce.link_id, readers, func.count()).where(*counted).group_by(ce.link_id)
            )
        ],
        "sections": [
            list(r)
            for r in session.execute(
                select(ce.section, readers)
                .where(*counted, ce.section.is_not(None))
                .group_by(ce.section)
            )
        ],
        "flagged": [
            list(r)
            for r in session.execute(
                select(ce.flag, func.count())
                .where(ce.edition_id == edition_id, ce.kind == "click", ce.counted == false())
                .group_by(ce.flag)
            )
        ],
        "opens": session.scalar(
            select(readers).where(ce.edition_id == edition_id, ce.kind == "open")
        ),
    }


def summarise(session: Session, edition_id: int, now: datetime) -> EditionSummary:
    """Write (or keep) the summary of one edition, in the caller's transaction."""
    from digest.clicks import ClickEvent
    from digest.editions import Edition
    from digest.ledger import Delivery

    found = session.get(EditionSummary, edition_id)
    if found is not None:  # a prune that stopped half-way: the first summary is the truth
        return found
    edition = session.get(Edition, edition_id)
    assert edition is not None
    data = {"ledger": _ledger(session, edition_id), "report": _clicks(session, edition_id)}
    summary = EditionSummary(
        edition_id=edition_id,
        edition_date=edition.edition_date,
        rows=session.scalar(select(func.count()).where(Delivery.edition_id == edition_id)) or 0,
        clicks=session.scalar(select(func.count()).where(ClickEvent.edition_id == edition_id)) or 0,
        summarised_at=now,
        data=json.dumps(data),
    )
    session.add(summary)
    session.flush()
    return summary


def summaries(session: Session, edition_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The summaries (decoded) of those of `edition_ids` that have one."""
    if not edition_ids:
        return {}
    rows = session.execute(
        select(EditionSummary.edition_id, EditionSummary.data).where(
            EditionSummary.edition_id.in_(edition_ids)
        )
    )
    return {edition_id: json.loads(data) for edition_id, data in rows}


def pruned_on(session: Session, edition_id: int) -> datetime | None:
    return session.scalar(
        select(EditionSummary.summarised_at).where(EditionSummary.edition_id == edition_id)
    )
