"""The click signal: what readers of this newsletter clicked lately adjusts tomorrow's scores.

Optional (`[newsletters.X.click_signal]`). Over the last `editions` sent editions:

- a section's rate is its unique clickers over the readers whose copy had the section; its
  ratio is that rate over the newsletter's average section rate;
- a topic (an article tag) gets the same ratio from the stories that carried it;
- a candidate's multiplier is 1 + weight × (ratio − 1) for its section, times the same for the
  mean ratio of its tags that have a history, clamped to [floor, ceiling]: `floor` keeps any
  section from starving, `ceiling` keeps one from taking over;
- `exploration`: that share of each section's slots (rounded up) goes to stories whose topics
  have no click history, so new topics get a chance to earn one (digest.selection.pick).

Editions sent to fewer than `min_delivered` readers are not evidence. Only counted clicks
(not bots or scanners) count. `digest edition show` prints the adjustment in each story's
reason, e.g. "+18%: Business stories drew 1.4× the average click rate in the last 7 editions".
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from digest.articles import Article
from digest.clicks import ClickEvent
from digest.config import ClickSignalConfig, NewsletterConfig
from digest.editions import Edition
from digest.report_counts import delivered_groups, variant_sections
from digest.selection import Candidate
from digest.tracking import TrackedLink


@dataclasses.dataclass(frozen=True)
class History:
    """Click-rate ratios (to the newsletter's average) per section and per tag."""

    editions: int
    sections: dict[str, float]
    tags: dict[str, float]


def history(
    session: Session, nl: NewsletterConfig, before: date, cfg: ClickSignalConfig
) -> History:
    """The ratios of the last `cfg.editions` editions before `before` (SQL aggregates)."""
    editions = [
        e
        for e in session.scalars(
            select(Edition.id)
            .where(
                Edition.newsletter == nl.id,
                Edition.edition_date < before,
                Edition.frozen_at.is_not(None),
            )
            .order_by(Edition.edition_date.desc())
            .limit(cfg.editions)
        )
    ]
    if not editions:
        return History(0, {}, {})
    # Delivered readers from the counts the ledger's triggers keep (digest.report_counts).
    sections_of = variant_sections(session, editions)
    delivered = [
        (e, v, sections_of.get((e, v), ()), n)
        for e, v, _segment, _subject, n in delivered_groups(session, editions)
    ]
    per_edition: dict[int, int] = defaultdict(int)
    for edition_id, _v, _s, n in delivered:
        per_edition[edition_id] += n
    evidence = {e for e, n in per_edition.items() if n >= cfg.min_delivered}
    could: dict[str, int] = defaultdict(int)  # readers who got the section
    for edition_id, _variant, shown, n in delivered:
        if edition_id in evidence:
            for section in shown:
                could[section.casefold()] += n
    clicked = session.execute(
        select(
            ClickEvent.edition_id,
            TrackedLink.section,
            TrackedLink.article_id,
            func.count(func.distinct(ClickEvent.delivery_id)),
        )
        .join(TrackedLink, TrackedLink.id == ClickEvent.link_id)
        .where(
            ClickEvent.edition_id.in_(sorted(evidence) or [-1]),
            ClickEvent.kind == "click",
            ClickEvent.counted == true(),
            TrackedLink.kind == "story",
        )
        .group_by(ClickEvent.edition_id, TrackedLink.section, TrackedLink.article_id)
    ).all()
    readers: dict[str, int] = defaultdict(int)
    for _e, link_section, _article, n in clicked:
        readers[(link_section or "").casefold()] += n
    rates = {s: readers[s] / could[s] for s in could if could[s]}
    average = sum(rates.values()) / len(rates) if rates else 0.0
    if not average:
        return History(len(evidence), {}, {})
    sections = {s: r / average for s, r in rates.items()}
    return History(len(evidence), sections, _tag_ratios(session, evidence, could, average))


def _tag_ratios(
    session: Session, editions: set[int], could: dict[str, int], average: float
) -> dict[str, float]:
    """Per tag: the mean click rate of the stories carrying it, over the average."""
    stories = session.execute(
        select(TrackedLink.id, TrackedLink.section, TrackedLink.article_id).where(
            TrackedLink.edition_id.in_(sorted(editions) or [-1]),
            TrackedLink.kind == "story",
            TrackedLink.article_id.is_not(None),
        )
    ).all()
    if not stories:
        return {}
    clickers = dict(
        session.execute(
            select(ClickEvent.link_id, func.count(func.distinct(ClickEvent.delivery_id)))
            .where(
                ClickEvent.link_id.in_([s.id for s in stories]),
                ClickEvent.counted == true(),
            )
            .group_by(ClickEvent.link_id)
        ).all()
    )
    tags = dict(
        session.execute(
            select(Article.id, Article.tags).where(Article.id.in_({s.article_id for s in stories}))
        ).all()
    )
    sums: dict[str, list[float]] = defaultdict(list)
    for link_id, section, article_id in stories:
        base = could.get((section or "").casefold(), 0)
        if not base:
            continue
        rate = clickers.get(link_id, 0) / base
        for tag in (tags.get(article_id) if article_id is not None else None) or []:
            if isinstance(tag, str) and tag.strip():
                sums[tag.casefold()].append(rate)
    return {t: (sum(v) / len(v)) / average for t, v in sums.items()}


def _clamp(value: float, cfg: ClickSignalConfig) -> float:
    return max(cfg.floor, min(cfg.ceiling, value))


def apply_signal(
    session: Session,
    nl: NewsletterConfig,
    edition_date: date,
    candidates: Sequence[Candidate],
) -> list[Candidate]:
    """The candidates with their click-signal multiplier and its explanation (unchanged when
    the newsletter has no click_signal or no history yet)."""
    cfg = nl.click_signal
    if cfg is None:
        return list(candidates)
    h = history(session, nl, edition_date, cfg)
    if not h.sections:
        return list(candidates)
    tags = dict(
        session.execute(
            select(Article.id, Article.tags).where(Article.id.in_([c.id for c in candidates]))
        ).all()
    )
    out: list[Candidate] = []
    for c in candidates:
        section_ratio = h.sections.get(c.section.casefold())
        known = [
            h.tags[t.casefold()]
            for t in tags.get(c.id) or []
            if isinstance(t, str) and t.casefold() in h.tags
        ]
        factor = 1.0
        parts: list[str] = []
        if section_ratio is not None:
            factor *= 1 + cfg.weight * (section_ratio - 1)
            parts.append(f"{c.section} stories drew {section_ratio:.1f}× the average click rate")
        if known:
            topic = sum(known) / len(known)
            factor *= 1 + cfg.weight * (topic - 1)
            parts.append(f"its topics {topic:.1f}×")
        factor = _clamp(factor, cfg)
        why = ""
        if parts and round(factor, 2) != 1.0:
            why = (
                f"{(factor - 1) * 100:+.0f}%: {', '.join(parts)} in the last {h.editions} "
                f"edition{'s' if h.editions != 1 else ''}"
            )
        out.append(
            dataclasses.replace(c, signal=round(factor, 4), signal_why=why, explored=not known)
        )
    return out
