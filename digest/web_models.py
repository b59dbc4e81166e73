"""Tables of the web app: SendGrid events already applied, so redeliveries change nothing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from digest.articles import UTCDateTime
from digest.db import Base


class WebhookEvent(Base):
    """One provider event that was applied. SendGrid retries for up to 72 hours and may send
    the same event several times; rows older than a week are pruned."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sg_event_id: Mapped[str] = mapped_column(String(100), unique=True)
    event: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
