"""Selection: which stories make an edition. Pure functions over rows, a window and weights.

Nothing here reads the clock: scores are relative to the window's end, so the same store and
date always give the same picks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.articles import Article
from digest.config import NewsletterConfig, SelectionWeights

_WORD = re.compile(r"\w+", re.UNICODE)
# Words that make unrelated headlines look alike; dropped before comparing.
_STOPWORD_TEXT = """a an and are as at be by for from has have in into is it its of on or over
says said the to was were will with after new"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# Below this much shared dek text, similar titles are two different stories (e.g. two fires).
_DEK_FLOOR_FOR_TITLE_MATCH = 0.3


@dataclass(frozen=True)
class Candidate:
    """What selection needs of an article (or of a story that already went out)."""

    id: int
    section: str
    title: str
    dek: str
    url: str
    published_at: datetime
    priority: str = "normal"
    popularity: float = 0.0
    source: str | None = None
    body_head: str = ""

    @cached_property
    def title_words(self) -> frozenset[str]:
        return _words(self.title)

    @cached_property
    def text_words(self) -> frozenset[str]:
        return _words(f"{self.dek} {self.body_head}")


@dataclass(frozen=True)
class Pick:
    candidate: Candidate
    section: str
    rank: int
    score: float
    reason: str


@dataclass
class _SectionState:
    name: str
    limit: int
    picks: list[Pick] = field(default_factory=list)


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.casefold()) if w not in _STOPWORDS)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def edition_window(newsletter: NewsletterConfig, edition_date: date) -> tuple[datetime, datetime]:
    """The lookback window ending at the send time on the edition date, in local wall-clock
    time: on a daylight-saving change day a 24-hour window spans 23 or 25 real hours, so it
    always runs from yesterday's send time to today's."""
    end = datetime.combine(edition_date, newsletter.send_time, tzinfo=newsletter.tz)
    # Aware arithmetic within one zone is wall-clock arithmetic in Python (intended here).
    start = end - timedelta(hours=newsletter.lookback_hours)
    return start, end


def score(c: Candidate, window_end: datetime, weights: SelectionWeights) -> float:
    """Popularity with recency decay: max(popularity, floor) * 0.5 ** (age / half-life),
    times `boost` for boosted stories. Pins are ordered first regardless of score."""
    age_hours = max(0.0, (window_end - c.published_at).total_seconds() / 3600.0)
    value = max(c.popularity, weights.popularity_floor) * math.pow(
        0.5, age_hours / weights.half_life_hours
    )
    if c.priority == "boost":
        value *= weights.boost
    return round(value, 6)


def duplicate_of(
    c: Candidate, others: Iterable[Candidate], weights: SelectionWeights
) -> Candidate | None:
    """The story in `others` that `c` repeats: the same wire copy re-headlined (near-identical
    dek/body), or a near-identical headline over related text. Similar headlines over different
    text (two fires, two earnings reports) are different stories."""
    for o in others:
        if o.url == c.url:
            return o
        text_sim = jaccard(c.text_words, o.text_words)
        if text_sim >= weights.dek_similarity:
            return o
        title_sim = jaccard(c.title_words, o.title_words)
        if title_sim >= weights.title_similarity:
            both_empty = not c.text_words and not o.text_words
            if (both_empty and title_sim >= 0.85) or text_sim >= _DEK_FLOOR_FOR_TITLE_MATCH:
                return o
    return None


def pick(
    candidates: Sequence[Candidate],
    newsletter: NewsletterConfig,
    weights: SelectionWeights,
    window_end: datetime,
    already_sent: Sequence[Candidate] = (),
) -> list[Pick]:
    """Top stories per section in the newsletter's section order; empty sections omitted."""
    states = {s.name.casefold(): _SectionState(s.name, s.stories) for s in newsletter.sections}
    sent_ids = {s.id for s in already_sent}
    scored = [
        (c, score(c, window_end, weights))
        for c in candidates
        if c.section.casefold() in states and c.id not in sent_ids
    ]
    # Pins first, then score; ties broken by recency and id so the order is total.
    scored.sort(
        key=lambda cs: (cs[0].priority != "pin", -cs[1], -cs[0].published_at.timestamp(), cs[0].id)
    )
    accepted: list[Candidate] = []
    open_sections = len(states)
    for c, s in scored:
        state = states[c.section.casefold()]
        if len(state.picks) >= state.limit:
            continue
        if duplicate_of(c, already_sent, weights) is not None:
            continue
        if duplicate_of(c, accepted, weights) is not None:
            continue
        accepted.append(c)
        state.picks.append(Pick(c, state.name, len(state.picks) + 1, s, _reason(c, s, window_end)))
        if len(state.picks) == state.limit:
            open_sections -= 1
            if open_sections == 0:
                break
    return [p for st in states.values() for p in st.picks]


def _reason(c: Candidate, s: float, window_end: datetime) -> str:
    age = (window_end - c.published_at).total_seconds() / 3600.0
    head = {"pin": "pinned by editor; ", "boost": "boosted; "}.get(c.priority, "")
    return f"{head}popularity {c.popularity:g}, {age:.1f} h old"


def load_candidates(session: Session, start: datetime, end: datetime) -> list[Candidate]:
    """Articles published in [start, end). Reads only the columns selection needs."""
    rows = session.execute(
        select(
            Article.id,
            Article.section,
            Article.title,
            Article.dek,
            Article.url,
            Article.published_at,
            Article.priority,
            Article.popularity,
            Article.source,
        ).where(Article.published_at >= start, Article.published_at < end)
    ).all()
    return [Candidate(*row) for row in rows]
