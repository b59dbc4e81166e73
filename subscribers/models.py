"""Tables of the audience: subscribers, their attributes and tags, memberships per newsletter,
section preferences, the suppression list and consent records.

Attributes and tags live in their own indexed tables (not JSON) so that segment rules compile to
plain EXISTS subqueries that run the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from digest.articles import UTCDateTime
from digest.db import Base

SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
MEMBERSHIP_STATUSES = ("pending", "active", "unsubscribed")
CONSENT_METHODS = ("import", "signup", "double_opt_in", "admin")


def normalise_email(email: str) -> str:
    """The stored form of an address: trimmed and lower-cased as a whole (mailbox providers treat
    the local part case-insensitively, and list managers must not keep Ann@ and ann@ apart). An
    internationalised one is also in Unicode NFC with its domain in Unicode (email-validator's
    normalisation), so `zoë@` typed composed or decomposed, and a domain given in its IDNA
    `xn--` form (as provider events report it), are one address."""
    email = email.strip().lower()
    if email.isascii() and "xn--" not in email:
        return email
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return email  # not an address: whoever checks it says so


def email_hash(normalised_email: str) -> str:
    """One-way hash kept on the suppression list after the address itself is erased."""
    return hashlib.sha256(normalised_email.encode("utf-8")).hexdigest()


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="active")
    timezone: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    attributes: Mapped[list[Attribute]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    tags: Mapped[list[Tag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    memberships: Mapped[list[Membership]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    def attribute_map(self) -> dict[str, str]:
        return {a.name: a.value for a in self.attributes}

    def tag_names(self) -> list[str]:
        return sorted(t.tag for t in self.tags)

    def membership(self, newsletter: str) -> Membership | None:
        for m in self.memberships:
            if m.newsletter == newsletter:
                return m
        return None


class Attribute(Base):
    """A free attribute (region, plan, ...): name lower-cased, value as given."""

    __tablename__ = "subscriber_attributes"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))

    # Segment rules look up (name, value) and join back to the subscriber.
    __table_args__ = (Index("ix_subscriber_attributes_name_value", "name", "value"),)


class Tag(Base):
    """A tag (vip, press, ...), lower-cased."""

    __tablename__ = "subscriber_tags"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)

    __table_args__ = (Index("ix_subscriber_tags_tag", "tag"),)


class Membership(Base):
    """One subscriber on one newsletter's list: its own status, pause flag and times."""

    __tablename__ = "memberships"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    newsletter: Mapped[str] = mapped_column(String(63), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribe_reason: Mapped[str | None] = mapped_column(String(200))

    # The audience query walks one newsletter's active members in id order.
    __table_args__ = (
        Index("ix_memberships_newsletter_status", "newsletter", "status", "subscriber_id"),
    )


class SectionPreference(Base):
    """A section a subscriber chose for a newsletter, at a position. No rows for a
    (subscriber, newsletter) means the default: every section, in the newsletter's order."""

    __tablename__ = "section_preferences"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    newsletter: Mapped[str] = mapped_column(String(63), primary_key=True)
    section: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class Suppression(Base):
    """An address that must never be sent to. `email` is erased on forget; the hash remains."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Consent(Base):
    """When and how a subscriber agreed to receive a newsletter (proof of consent)."""

    __tablename__ = "consents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    newsletter: Mapped[str] = mapped_column(String(63))
    method: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
