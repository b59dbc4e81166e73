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

import hashlib
import json
import threading
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ForeignKey, String, Text, func, literal_column, select, true
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.sql.elements import ColumnClause

from digest.articles import UTCDateTime
from digest.clicks import ClickEvent
from digest.clock import Clock
from digest.config import AbTestConfig, Config, NewsletterConfig
from digest.db import Base, transaction
from digest.editions import Edition, build_edition, get_edition
from digest.ledger import Delivery
from digest.providers.base import Provider
from digest.sending import RecipientFilter, SendOptions, SendReport, send_edition
from subscribers.audience import Recipient, audience

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


# --- the send --------------------------------------------------------------------------------


def arm_of(edition_id: int, subscriber_id: int, fraction: float, arms: int) -> int | None:
    """The arm (0-based) of a reader in the sample, None outside it: a hash of (edition,
    subscriber), so a re-run after a crash puts everyone where they were."""
    digest_ = hashlib.sha256(f"digest.ab:{edition_id}:{subscriber_id}".encode()).digest()
    u = int.from_bytes(digest_[:8], "big") / 2.0**64
    if u >= fraction:
        return None
    return min(arms - 1, int(u / fraction * arms))


@dataclass
class AbReport(SendReport):
    """What one step of an A/B send did; `waiting` until the winner is due."""

    phase: str = ""
    waiting: bool = False
    winner: str | None = None

    def summary(self) -> str:
        head = f"A/B {self.newsletter} {self.edition_date}: {self.phase}"
        if self.winner:
            head += f"; winner {self.winner!r}"
        lines = [head, *self.notes]
        if self.created or self.sent_now or self.counts:
            lines.append(SendReport.summary(self))
        return "\n".join(lines)


def ab_config(nl: NewsletterConfig, edition: Edition | None) -> AbTestConfig | None:
    """The A/B test an edition runs: the editor's subjects for it (digest.desk), with the
    config's sample, wait and minimum (or their defaults), else the config's [ab_test]."""
    subjects = edition.ab_subject_list if edition is not None else ()
    if not subjects:
        return nl.ab_test
    return replace(nl.ab_test or AbTestConfig(subjects=subjects), subjects=subjects)


def runs_ab(config: Config, sessions: sessionmaker[Session], nl_id: str, day: date) -> bool:
    """Whether sending this edition is an A/B send (the config's or the edition's subjects)."""
    nl = config.newsletter(nl_id)
    if nl.ab_test is not None:
        return True
    with sessions() as session:
        return ab_config(nl, get_edition(session, nl.id, day)) is not None


def _state(
    session: Session, config: Config, nl: NewsletterConfig, edition: Edition, cfg: AbTestConfig
) -> AbTest:
    test = session.get(AbTest, edition.id, with_for_update=True)
    if test is None:
        sample = cfg.sample
        if sample >= 1:  # a count: the fraction of today's audience it is
            size = sum(1 for _ in audience(session, config, nl, ()))
            sample = min(1.0, sample / size) if size else 1.0
        test = AbTest(
            edition_id=edition.id,
            subjects=json.dumps(list(cfg.subjects)),
            sample=f"{sample:.6f}",
            phase="sample",
        )
        session.add(test)
        session.flush()
    elif not edition.frozen and test.phase == "sample":
        # A send refused before freezing left its state: the draft's subjects may have changed.
        test.subjects = json.dumps(list(cfg.subjects))
    return test


def _open_subject(session: Session, edition_id: int) -> str | None:
    """The subject of rows a crash left unsettled (one arm's, since arms go one at a time)."""
    return session.scalar(
        select(Delivery.subject)
        .where(Delivery.edition_id == edition_id, Delivery.state.in_(("pending", "sending")))
        .limit(1)
    )


def ab_send(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter_id: str,
    edition_date: date,
    options: SendOptions | None = None,
    *,
    clock: Clock,
    provider: Provider | None = None,
    stop: threading.Event | None = None,
) -> AbReport:
    """One step of an A/B send, resumable at any point (state in ab_tests, subjects in the
    ledger): the sample arms one after another, then (once `wait_minutes` have passed since
    the sample went out) the winner to everyone else. Call again while `waiting`."""
    nl = config.newsletter(newsletter_id)
    options = options or SendOptions()
    with transaction(sessions) as session:
        edition = get_edition(session, nl.id, edition_date)
        if edition is None:
            edition = build_edition(session, config, nl, edition_date, clock=clock).edition
        cfg = ab_config(nl, edition)
        assert cfg is not None, "no A/B subjects: neither [ab_test] nor the edition's"
        test = _state(session, config, nl, edition, cfg)
        edition_id, phase, fraction = edition.id, test.phase, float(test.sample)
        subjects = json.loads(test.subjects)
        unsettled = _open_subject(session, edition_id)
    result = AbReport(nl.id, edition_date, "", {}, phase=phase)

    def run(subject: str, only: RecipientFilter | None) -> SendReport:
        opts = replace(options, subject=subject, recipient_filter=only)
        return send_edition(
            config, sessions, nl.id, edition_date, opts, clock=clock, provider=provider, stop=stop
        )

    if unsettled is not None:  # finish what a crash left, with the subject it was given
        result.notes.append(f"resumed rows left unsettled, subject {unsettled!r}")
        _merge(result, run(unsettled, lambda r: False))
    if phase == "sample":
        for i, subject in enumerate(subjects):

            def in_arm(r: Recipient, i: int = i) -> bool:
                return arm_of(edition_id, r.subscriber_id, fraction, len(subjects)) == i

            _merge(result, run(subject, in_arm))
            if result.stopped:
                return result
        phase = _advance(sessions, edition_id, "waiting", done_at=clock())
    if phase == "waiting":
        with sessions() as session:
            waiting = session.get(AbTest, edition_id)
            assert waiting is not None and waiting.sample_done_at is not None
            due = _utc(waiting.sample_done_at) + timedelta(minutes=cfg.wait_minutes)
            if clock() < due:
                result.phase, result.waiting = "waiting", True
                result.notes.append(
                    f"sample sent; the winner is picked at {due:%Y-%m-%d %H:%M} UTC"
                )
                return result
            verdict = pick_winner(
                _arm_figures(session, edition_id, subjects, fraction), cfg.min_sample
            )
        phase = _advance(sessions, edition_id, "rest", winner=verdict)
    with sessions() as session:
        decided = session.get(AbTest, edition_id)
        assert decided is not None and decided.winner is not None
        winner, reason = decided.winner, decided.reason
    result.winner = winner
    result.notes.append(f"winner: {winner!r} ({reason})")
    if phase == "rest":
        _merge(result, run(winner, None))
        if result.edition_status == "sent":
            phase = _advance(sessions, edition_id, "done")
    result.phase = phase
    return result


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _merge(into: AbReport, report: SendReport) -> None:
    for name in (
        "sent_now",
        "failed_now",
        "unknown_now",
        "created",
        "skipped_now",
        "missed_now",
        "seen_today",
        "recovered",
    ):
        setattr(into, name, getattr(into, name) + getattr(report, name))
    into.provider, into.counts = report.provider, report.counts
    into.edition_status, into.stopped = report.edition_status, report.stopped
    into.elapsed += report.elapsed


def _advance(
    sessions: sessionmaker[Session],
    edition_id: int,
    phase: str,
    *,
    done_at: datetime | None = None,
    winner: Verdict | None = None,
) -> str:
    with transaction(sessions) as session:
        test = session.get(AbTest, edition_id, with_for_update=True)
        assert test is not None
        test.phase = phase
        if done_at is not None:
            test.sample_done_at = done_at
        if winner is not None:
            test.winner, test.reason = winner.subject, winner.reason
    return phase


def _arm_figures(
    session: Session, edition_id: int, subjects: list[str], fraction: float
) -> list[Arm]:
    """Delivered and unique clickers per arm of the sample (arm by the reader's hash)."""
    sent = session.execute(
        select(Delivery.id, Delivery.subscriber_id).where(
            Delivery.edition_id == edition_id, Delivery.state == _SENT
        )
    ).all()
    clicked = set(
        session.scalars(
            select(ClickEvent.delivery_id).where(
                ClickEvent.edition_id == edition_id,
                ClickEvent.kind == "click",
                ClickEvent.counted == true(),
            )
        )
    )
    delivered = [0] * len(subjects)
    clickers = [0] * len(subjects)
    for delivery_id, subscriber_id in sent:
        arm = arm_of(edition_id, subscriber_id, fraction, len(subjects))
        if arm is not None:
            delivered[arm] += 1
            clickers[arm] += delivery_id in clicked
    return [Arm(s, delivered[i], clickers[i]) for i, s in enumerate(subjects)]
