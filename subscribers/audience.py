"""Who receives an edition, and with which sections: the one query the sending side asks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import ColumnElement, Integer, Select, bindparam, exists, func, not_, select, text
from sqlalchemy.orm import Session

from digest.config import Config, NewsletterConfig
from digest.errors import NotFound
from subscribers.models import (
    Membership,
    SectionPreference,
    Subscriber,
    Suppression,
    normalise_email,
)
from subscribers.segments import segment_condition

PAGE = 1000


class Recipient(NamedTuple):
    subscriber_id: int
    email: str
    name: str | None
    sections: tuple[str, ...]  # the newsletter's sections this person gets, in their order
    timezone: str | None  # IANA or None
    blocks: tuple[int, ...] = ()  # indexes into newsletter.blocks this person is shown


def not_suppressed() -> ColumnElement[bool]:
    return not_(exists().where(Suppression.email_hash == Subscriber.email_hash))


def audience_query(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    segments: Sequence[str] = (),
    after: ColumnElement[int] | None = None,
) -> Select[Subscriber]:
    """Subscribers who receive `newsletter`, restricted to ANY of `segments` (all when empty);
    with `after`, only those whose id is above it."""
    member = [
        Membership.subscriber_id == Subscriber.id,
        Membership.newsletter == newsletter.id,
        Membership.status == "active",
        Membership.paused.is_(False),
    ]
    if after is not None:
        # Said of the memberships too: PostgreSQL does not carry `id > after` across the
        # semi-join, and merged every page with the memberships from the first one on (a page
        # of 1,000 at a million: 255 ms, not 1.6 ms; the audience read grew with the square
        # of the list).
        member.append(Membership.subscriber_id > after)
    q = select(Subscriber).where(
        Subscriber.status == "active",
        exists().where(*member),
        not_suppressed(),
    )
    in_segments = segment_condition(session, config, segments, newsletter)
    if in_segments is not None:
        q = q.where(in_segments)
    return q


def sections_for(
    session: Session, newsletter: NewsletterConfig, subscriber_ids: Sequence[int]
) -> dict[int, tuple[str, ...]]:
    """Each subscriber's sections in their order; the newsletter's own order when none chosen.

    Choices of sections the newsletter no longer has are dropped; if nothing is left, the
    subscriber gets the default rather than an empty email.
    """
    chosen: dict[int, list[str]] = defaultdict(list)
    if subscriber_ids:
        low, high = min(subscriber_ids), max(subscriber_ids)
        wanted = set(subscriber_ids)
        # A page of the audience is mostly a dense run of ids: asking for the range is cheaper
        # than a list of a thousand ids, and the few others are dropped below.
        among = (
            SectionPreference.subscriber_id.between(low, high)
            if high - low < 2 * len(wanted)
            else SectionPreference.subscriber_id.in_(wanted)
        )
        # Core execution (the session's connection): plain rows, no ORM loading per row.
        rows = (
            session.connection()
            .execute(
                select(SectionPreference.subscriber_id, SectionPreference.section)
                .where(SectionPreference.newsletter == newsletter.id, among)
                .order_by(SectionPreference.subscriber_id, SectionPreference.position)
            )
            .all()
        )
        current = set(newsletter.section_names)
        for sid, section in rows:
            if section in current and sid in wanted:
                chosen[sid].append(section)
    default = newsletter.section_names
    return {sid: tuple(chosen.get(sid) or default) for sid in subscriber_ids}


def block_conditions(
    session: Session, config: Config, newsletter: NewsletterConfig
) -> dict[str, ColumnElement[bool]]:
    """The SQL condition of each segment the newsletter's blocks are shown to, compiled once."""
    names = dict.fromkeys(b.segment for b in newsletter.blocks)
    out = {}
    for name in names:
        condition = segment_condition(session, config, [name], newsletter)
        assert condition is not None
        out[name] = condition
    return out


def blocks_for(
    session: Session,
    newsletter: NewsletterConfig,
    conditions: dict[str, ColumnElement[bool]],
    subscriber_ids: Sequence[int],
) -> dict[int, tuple[int, ...]]:
    """Which of the newsletter's blocks each subscriber is shown: one query per segment for
    the whole list of ids, never one per subscriber."""
    members: dict[str, set[int]] = {}
    if subscriber_ids:
        for name, condition in conditions.items():
            members[name] = set(
                session.scalars(
                    select(Subscriber.id).where(Subscriber.id.in_(subscriber_ids), condition)
                )
            )
    shown: dict[int, list[int]] = defaultdict(list)
    for i, block in enumerate(newsletter.blocks):
        for sid in members.get(block.segment, ()):
            shown[sid].append(i)
    return {sid: tuple(shown.get(sid, ())) for sid in subscriber_ids}


def audience(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    segments: Sequence[str] = (),
    where: ColumnElement[bool] | None = None,
) -> Iterator[Recipient]:
    """Active members of the newsletter in ANY of the segments (all when empty), never
    suppressed, each once, ordered by subscriber id, read a page at a time (what is held at
    once is a page, whatever the list's size). `where` narrows it further in SQL (the sender:
    those without a ledger row yet)."""
    after = bindparam("after", type_=Integer)
    q = audience_query(session, config, newsletter, segments, after)
    if where is not None:
        q = q.where(where)
    base = (
        q.with_only_columns(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.timezone)
        .where(Subscriber.id > after)
        .order_by(Subscriber.id)
        .limit(PAGE)
    )
    conditions = block_conditions(session, config, newsletter)
    if session.get_bind().dialect.name == "postgresql":
        # A page is costed as the whole scan it is cut from (LIMIT 1,000 of a million): past
        # jit_above_cost the server compiled every page of a segment's audience (60 ms each,
        # for 6 ms of work). For the rest of this transaction only.
        session.execute(text("SET LOCAL jit = off"))
    last = 0
    while True:
        # Keyset paging: no cursor is held open between pages, so callers may write meanwhile.
        rows = session.connection().execute(base, {"after": last}).all()
        if not rows:
            return
        ids = [r[0] for r in rows]
        sections = sections_for(session, newsletter, ids)
        blocks = blocks_for(session, newsletter, conditions, ids)
        for sid, email, name, tz in rows:
            yield Recipient(sid, email, name, sections[sid], tz, blocks[sid])
        last = rows[-1][0]


def find_subscriber(session: Session, email_or_id: str | int) -> Subscriber:
    """By id (int or digits) or by address (normalised); NotFound names what was looked for."""
    if isinstance(email_or_id, int) or email_or_id.strip().isdigit():
        sub = session.get(Subscriber, int(email_or_id))
    else:
        sub = session.scalar(
            select(Subscriber).where(Subscriber.email == normalise_email(email_or_id))
        )
    if sub is None:
        raise NotFound(f"no subscriber {email_or_id!r}")
    return sub


def recipient(
    session: Session, config: Config, newsletter: NewsletterConfig, email_or_id: str | int
) -> Recipient:
    """One subscriber as the newsletter would address them (whether or not they receive it)."""
    sub = find_subscriber(session, email_or_id)
    sections = sections_for(session, newsletter, [sub.id])[sub.id]
    conditions = block_conditions(session, config, newsletter)
    blocks = blocks_for(session, newsletter, conditions, [sub.id])[sub.id]
    return Recipient(sub.id, sub.email, sub.name, sections, sub.timezone, blocks)


@dataclass(frozen=True)
class SegmentCount:
    newsletter: str
    count: int  # subscribers of the newsletter's audience in the segment
    sample: tuple[str, ...]  # a few of their addresses, lowest ids first


def segment_counts(
    session: Session,
    config: Config,
    name: str,
    newsletters: Sequence[NewsletterConfig],
    sample: int = 5,
) -> list[SegmentCount]:
    """How many of each newsletter's audience a segment selects, counted by the database."""
    out = []
    for nl in newsletters:
        q = audience_query(session, config, nl, [name])
        count = session.scalar(select(func.count()).select_from(q.subquery())) or 0
        emails = session.scalars(
            q.with_only_columns(Subscriber.email).order_by(Subscriber.id).limit(sample)
        )
        out.append(SegmentCount(nl.id, count, tuple(emails)))
    return out
