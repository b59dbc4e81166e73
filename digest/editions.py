"""Editions: a stored, ordered pick of stories per section for one newsletter and date.

An edition is what the editor previews and what the send delivers. Each item keeps a snapshot of
the story (title, dek, link, image...) so later re-ingests cannot change what was approved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Date, Float, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from digest.articles import UTCDateTime
from digest.db import Base

# draft: may be rebuilt. frozen: sending has started; never changes again. sent: all rows settled.
STATUSES = ("draft", "frozen", "sent")


class Edition(Base):
    __tablename__ = "editions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(63))
    edition_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10), default="draft")
    built_at: Mapped[datetime] = mapped_column(UTCDateTime)
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    fingerprint: Mapped[str] = mapped_column(String(64), default="")

    items: Mapped[list[EditionItem]] = relationship(
        back_populates="edition",
        cascade="all, delete-orphan",
        order_by="(EditionItem.section_position, EditionItem.rank)",
    )

    __table_args__ = (UniqueConstraint("newsletter", "edition_date"),)

    @property
    def frozen(self) -> bool:
        return self.status != "draft"

    def sections(self) -> list[tuple[str, list[EditionItem]]]:
        """Sections in edition order with their ranked items."""
        out: list[tuple[str, list[EditionItem]]] = []
        for item in self.items:
            if not out or out[-1][0] != item.section:
                out.append((item.section, []))
            out[-1][1].append(item)
        return out


class EditionItem(Base):
    __tablename__ = "edition_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id"), index=True)
    section: Mapped[str] = mapped_column(String(100))
    section_position: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    # Snapshot of the story as approved.
    title: Mapped[str] = mapped_column(Text)
    dek: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(String(2048))
    byline: Mapped[str | None] = mapped_column(String(300))
    source: Mapped[str | None] = mapped_column(String(200))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    image_url: Mapped[str | None] = mapped_column(String(2048))
    image_alt: Mapped[str | None] = mapped_column(Text)
    image_caption: Mapped[str | None] = mapped_column(Text)

    edition: Mapped[Edition] = relationship(back_populates="items")

    __table_args__ = (UniqueConstraint("edition_id", "article_id"),)


@dataclass(frozen=True)
class EditionRef:
    newsletter: str
    edition_date: date


def get_edition(session: Session, newsletter: str, edition_date: date) -> Edition | None:
    return session.scalars(
        select(Edition).where(
            Edition.newsletter == newsletter, Edition.edition_date == edition_date
        )
    ).one_or_none()
