"""The ledger's table: the Delivery row (one per edition and subscriber), its states, and how a
row names its variant. The operations on it are digest.ledger, which re-exports these names."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import NamedTuple, cast

from sqlalchemy import (
    Date,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column

from digest.articles import UTCDateTime
from digest.db import Base

STATES = (
    "pending",
    "sending",
    "deferred",
    "sent",
    "failed",
    "suppressed",
    "skipped",
    "unknown",
)


def edition_date_of(context: DefaultExecutionContext) -> date:
    """The partition key of a row written without one (an ORM insert, a test's row): its
    edition's date. The send's bulk insert and the click writer set it themselves."""
    from digest.editions import Edition

    edition_id = context.get_current_parameters()["edition_id"]  # type: ignore[no-untyped-call]
    found = context.connection.execute(
        Edition.__table__.select()
        .with_only_columns(Edition.__table__.c.edition_date)
        .where(Edition.__table__.c.id == edition_id)
    ).scalar_one()
    return cast(date, found)


SETTLED = ("sent", "failed", "suppressed", "skipped", "unknown")
UNSETTLED = ("pending", "sending", "deferred")


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(Integer)
    # The edition's date, copied: PostgreSQL partitions the ledger by it, a month a partition
    # (digest.partitions), so a year's rows are dropped whole (`digest sends prune`).
    edition_date: Mapped[date] = mapped_column(Date, default=edition_date_of)
    # No foreign key: the ledger is an audit record and outlives the subscriber row.
    subscriber_id: Mapped[int] = mapped_column(Integer)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(300))
    # JSON, to re-render the same variant: see encode_variant.
    sections: Mapped[str] = mapped_column(Text)
    variant: Mapped[str] = mapped_column(String(40))
    segment: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Temporary refusals of this recipient (state `deferred`): how many, since when, next try.
    # A server default only: the bulk insert of new rows binds a fixed list of columns.
    deferrals: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    deferred_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    subject: Mapped[str | None] = mapped_column(String(300))  # as sent (A/B arms differ)

    __table_args__ = (
        # SQLite only. On PostgreSQL the key's check was a query per row written: half the
        # time of the COPY of a send's new rows. There the row creation holds the edition as
        # the check would (FOR KEY SHARE: digest.ledger_rows.lock_rows) and a trigger on
        # `editions` deletes an edition's rows (migration 0017).
        ForeignKeyConstraint(["edition_id"], ["editions.id"], ondelete="CASCADE").ddl_if(
            dialect="sqlite"
        ),
        # With the partition key: PostgreSQL enforces a unique key per partition only. The
        # date follows from the edition, so this is still one row per edition and subscriber.
        UniqueConstraint(
            "edition_id", "subscriber_id", "edition_date", name="uq_deliveries_edition_subscriber"
        ),
        # SQLite: partial indexes by state. Claims walk one edition's pending rows variant by
        # variant (full provider batches); a row leaves the index once, when claimed, instead
        # of moving within it at every change of state (measured: claim and settle of a batch
        # 40% cheaper).
        Index(
            "ix_deliveries_pending",
            "edition_id",
            "variant",
            "id",
            sqlite_where=text("state = 'pending'"),
        ).ddl_if(dialect="sqlite"),
        # Due deferred rows of an edition, for waking them and for the scheduler.
        Index(
            "ix_deliveries_deferred",
            "edition_id",
            "next_attempt_at",
            sqlite_where=text("state = 'deferred'"),
        ).ddl_if(dialect="sqlite"),
        # A variant's layout read from one of its delivered rows (the reports; the counts are
        # digest.report_counts'); partial, so a row enters it once, when it is sent.
        Index(
            "ix_deliveries_sent",
            "edition_id",
            "variant",
            "segment",
            "subject",
            "id",
            sqlite_where=text("state = 'sent'"),
        ).ddl_if(dialect="sqlite"),
        # PostgreSQL: no index names `state`, so the three updates of a row (claim, hand-over,
        # settle) are HOT: a new version in the same page (partitions keep room for it, see
        # digest.partitions) and no new index entries. With the partial indexes above, each
        # was a new version in every index: the server's CPU for the updates of 100,000 rows
        # went from 2.2 s to 1.0 s. Claims walk an edition's rows in id order (they were
        # written variant by variant) from where the worker's last claim ended.
        Index("ix_deliveries_claim", "edition_id", "id").ddl_if(dialect="postgresql"),
        # Deferred rows, for waking them when due and for the scheduler (a row enters it at
        # its first deferral, a non-HOT update that few rows make).
        Index(
            "ix_deliveries_due",
            "edition_id",
            "next_attempt_at",
            postgresql_where=text("next_attempt_at IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
    )


def encode_variant(sections: Sequence[str], blocks: Sequence[int], skip: Sequence[int] = ()) -> str:
    """The `sections` column: the JSON list of sections, as rows were before segment blocks
    existed, or {"sections": [...], "blocks": [...], "skip": [...]} when the variant shows
    blocks or leaves out stories (article ids sent today in another newsletter)."""
    if not blocks and not skip:
        return json.dumps(list(sections))
    value: dict[str, list[str] | list[int]] = {"sections": list(sections), "blocks": list(blocks)}
    if skip:
        value["skip"] = list(skip)
    return json.dumps(value)


def decode_layout(raw: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """(sections, block indexes, left-out article ids) of a row; rows written before blocks
    or the same-day rule existed have none."""
    value = json.loads(raw)
    if isinstance(value, dict):
        return (
            tuple(value["sections"]),
            tuple(int(b) for b in value.get("blocks", ())),
            tuple(int(a) for a in value.get("skip", ())),
        )
    return tuple(value), (), ()


def decode_variant(raw: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(sections, block indexes) of a row."""
    sections, blocks, _ = decode_layout(raw)
    return sections, blocks


DELIVERIES = cast(Table, Delivery.__table__)


class Claimed(NamedTuple):
    """What a worker needs of a claimed row (plain values, safe across sessions)."""

    id: int
    subscriber_id: int
    email: str
    name: str | None
    sections: tuple[str, ...]
    variant: str
    blocks: tuple[int, ...] = ()
    deferred_since: datetime | None = None  # a row deferred before: when that began
    skip: tuple[int, ...] = ()  # article ids left out (sent today in another newsletter)


class LedgerCount(Base):
    """Ledger rows of one group in one state, in one writer's shard: kept by triggers on
    `deliveries` (migration 0018), read by digest.report_counts and digest.ledger.counts."""

    __tablename__ = "ledger_counts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No foreign key: a trigger of the ledger writes here while a cascade deletes an edition.
    edition_id: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(40))
    segment: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(12))
    # 1 for rows whose state a provider's later event set (digest.ledger.RESOLVED_BY).
    by_event: Mapped[int] = mapped_column(Integer)
    shard: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint(
            "edition_id", "variant", "segment", "subject", "state", "by_event", "shard"
        ),
    )
