"""A/B subject lines: a sample split evenly between two to four subjects, a wait, the winner by
unique click rate, then the winner to everyone else; each step resumable (see run_ab_send).

Who is in which arm is a pure function of (edition, subscriber): a hash, so a re-run after a
crash puts everyone in the same arm, and every row's subject is in the ledger.

The winner rule: the highest unique click rate (clickers / delivered) among arms that reached
`min_sample` delivered readers. Ties (equal rates) go to the subject listed first; when no
arm has a click, or no arm reached the minimum sample, the first subject wins (it is the
editor's default) and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, func, literal_column, select, true
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnClause

from digest.articles import UTCDateTime
from digest.clicks import ClickEvent
from digest.db import Base
from digest.ledger import Delivery

_SENT: ColumnClause[str] = literal_column("'sent'")


class AbTest(Base):
    """The state of one edition's A/B test: what has been done survives a crash."""

    __tablename__ = "ab_tests"

    edition_id: Mapped[int] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True
    )
    subjects: Mapped[str] = mapped_column(Text)  # JSON array, in config order
    sample: Mapped[str] = mapped_column(String(20))  # the configured fraction or count
    phase: Mapped[str] = mapped_column(String(10))  # sample | waiting | rest | done
    sample_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    winner: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class Arm:
    subject: str
    delivered: int
    clickers: int

    @property
    def rate(self) -> float:
        return self.clickers / self.delivered if self.delivered else 0.0


@dataclass(frozen=True)
class Verdict:
    subject: str
    reason: str


def pick_winner(arms: list[Arm], min_sample: int) -> Verdict:
    """The winning subject of the arms (in config order) and why."""
    if not arms:
        raise ValueError("no arms")
    eligible = [a for a in arms if a.delivered >= min_sample]
    if not eligible:
        return Verdict(arms[0].subject, f"no arm reached {min_sample} readers: first subject")
    if not any(a.clickers for a in eligible):
        return Verdict(arms[0].subject, "no clicks in the sample: first subject")
    best = max(eligible, key=lambda a: a.rate)  # max keeps the first of equal rates
    ties = [a for a in eligible if a.rate == best.rate]
    why = f"{best.rate * 100:.1f}% unique click rate"
    if len(ties) > 1:
        why += f" (a tie of {len(ties)}: the one listed first)"
    return Verdict(best.subject, why)


def arms(session: Session, edition_id: int, subjects: list[str] | None = None) -> list[Arm]:
    """Delivered and unique clickers per subject of an edition, from the ledger."""
    delivered = dict(
        session.execute(
            select(Delivery.subject, func.count())
            .where(Delivery.edition_id == edition_id, Delivery.state == _SENT)
            .group_by(Delivery.subject)
        ).all()
    )
    clickers = dict(
        session.execute(
            select(ClickEvent.subject, func.count(func.distinct(ClickEvent.delivery_id)))
            .where(
                ClickEvent.edition_id == edition_id,
                ClickEvent.kind == "click",
                ClickEvent.counted == true(),
            )
            .group_by(ClickEvent.subject)
        ).all()
    )
    names = subjects if subjects is not None else sorted(k for k in delivered if k)
    return [Arm(s, delivered.get(s, 0), clickers.get(s, 0)) for s in names]


def winner_of(session: Session, edition_id: int) -> str | None:
    """The recorded winner of an edition's A/B test and why, if it has one."""
    test = session.get(AbTest, edition_id)
    if test is None or test.winner is None:
        return None
    return f"{test.winner} ({test.reason})"
