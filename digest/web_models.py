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


class SignupRequest(Base):
    """A sign-up from the public form, waiting for the confirmation sender (digest serve's
    background thread, or `digest subscribers send-confirmations`). The form only writes
    this row, so its answer and its time are the same for every address. A row whose email
    went out stays, with sent_at, for CONFIRM_COOLDOWN: a repeat within that time sends
    nothing (the form cannot be used to flood someone's inbox)."""

    __tablename__ = "signup_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(63))
    email: Mapped[str] = mapped_column(String(320), index=True)
    name: Mapped[str | None] = mapped_column(String(300))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
