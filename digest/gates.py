"""Content gates: reasons not to send an edition when nobody is watching.

An unattended send (the scheduler, `digest send` without --force) checks them first. Each gate
names what is wrong and what to do; all failing gates are reported together in one line.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.articles import Article
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.desk import approval_hold
from digest.editions import Edition
from digest.errors import GateClosed

# Share of this edition's stories that also went out in the previous edition above which the
# edition counts as a repeat (a stuck feed re-serving yesterday's stories under new ids).
REPEAT_OVERLAP = 0.5


def check_gates(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    edition: Edition,
    *,
    clock: Clock,
) -> None:
    """Raise GateClosed when the edition should not go out unattended (or, with approval
    required, before someone signed it off).

    An edition whose sending already started (frozen or sent) is not judged again: finishing it
    beats leaving half the list without, and its gates were checked (or forced) when it began.
    """
    if edition.frozen:
        return
    reasons = [
        r
        for r in (
            # approval = "required": a person signs off first (digest.desk).
            approval_hold(newsletter, edition),
            _empty(edition),
            # As of the edition's send time: a late send of a past edition judges the store as
            # it was when the edition was due, not today.
            _stale_store(session, newsletter, min(clock(), edition.window_end)),
            _thin_sections(newsletter, edition),
            _repeat(session, newsletter, edition),
        )
        if r
    ]
    if reasons:
        raise GateClosed(
            f"not sending {newsletter.id} {edition.edition_date}: {'; '.join(reasons)} "
            "(fix and retry, or send anyway with `digest send --force`)"
        )


def _empty(edition: Edition) -> str | None:
    return None if edition.items else "the edition has no stories"


def _stale_store(session: Session, newsletter: NewsletterConfig, now: datetime) -> str | None:
    max_age = newsletter.gates.max_article_age_hours
    names = [n.casefold() for n in newsletter.section_names]
    newest = session.scalar(
        select(func.max(Article.published_at)).where(
            func.lower(Article.section).in_(names), Article.published_at <= now
        )
    )
    if newest is not None and now - newest <= timedelta(hours=max_age):
        return None
    if newest is None:
        seen = "no article in its sections at all"
    else:
        hours = (now - newest).total_seconds() / 3600
        seen = f"newest article in its sections is {hours:.1f} h old ({newest:%Y-%m-%d %H:%M} UTC)"
    return (
        f"the article store is stale: {seen}, over gates.max_article_age_hours = {max_age:g} "
        "(is ingest running?)"
    )


def _thin_sections(newsletter: NewsletterConfig, edition: Edition) -> str | None:
    if not newsletter.gates.enforce_section_minimums:
        return None
    counts: dict[str, int] = {}
    for item in edition.items:
        key = item.section.casefold()
        counts[key] = counts.get(key, 0) + 1
    thin = [
        f"{s.name} has {counts.get(s.name.casefold(), 0)} of min {s.min}"
        for s in newsletter.sections
        if counts.get(s.name.casefold(), 0) < s.min
    ]
    if not thin:
        return None
    return f"section below its minimum: {', '.join(thin)}"


def _repeat(session: Session, newsletter: NewsletterConfig, edition: Edition) -> str | None:
    if not newsletter.gates.refuse_repeat or not edition.items:
        return None
    previous = session.scalars(
        select(Edition)
        .where(
            Edition.newsletter == newsletter.id,
            Edition.edition_date < edition.edition_date,
            Edition.status != "draft",
        )
        .order_by(Edition.edition_date.desc())
        .limit(1)
    ).one_or_none()
    if previous is None:
        return None
    where = f"the edition of {previous.edition_date}"
    if previous.fingerprint == edition.fingerprint:
        return f"the edition repeats {where} (same stories)"
    ids = {i.article_id for i in previous.items}
    urls = {i.url for i in previous.items}
    titles = {i.title.casefold() for i in previous.items}
    shared = sum(
        1
        for i in edition.items
        if i.article_id in ids or i.url in urls or i.title.casefold() in titles
    )
    if shared / len(edition.items) >= REPEAT_OVERLAP:
        return f"the edition repeats {where} ({shared} of {len(edition.items)} stories)"
    return None
