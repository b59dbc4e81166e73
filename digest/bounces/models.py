"""The bounce events `digest bounces` recorded: what makes reading a mailbox again change
nothing, and what soft bounces are counted from."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from digest.articles import UTCDateTime
from digest.db import Base


class BounceEvent(Base):
    """One recipient's bounce or complaint, as one report in the mailbox said it."""

    __tablename__ = "bounce_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The report's own Message-ID (hashed), else a hash of its bytes.
    fingerprint: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # hard | soft | blocked | complaint
    email: Mapped[str | None] = mapped_column(String(320))  # erased by `forget`
    email_hash: Mapped[str] = mapped_column(String(64))
    # No foreign keys: like the ledger, an audit record that outlives what it points at.
    delivery_id: Mapped[int | None] = mapped_column(Integer)
    edition_id: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(16))
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the report's Date
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("fingerprint", "email_hash"),
        # Soft bounces of one address within a window.
        Index("ix_bounce_events_email_hash_kind", "email_hash", "kind", "received_at"),
    )
