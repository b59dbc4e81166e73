"""Selection: which stories make an edition. Pure functions over rows, a window and weights.

Nothing here reads the clock: scores are relative to the window's end, so the same store and
date always give the same picks.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import cached_property

from sqlalchemy import func, select
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
# Body dedupe compares the first words of each body, not the whole text: wire copy re-headlined
# keeps its opening, and reading a few KB per candidate keeps a build over a large store fast.
BODY_HEAD_CHARS = 2000  # read from the store (HTML)
BODY_WORDS = 60  # compared
_BODY_MIN_WORDS = 20  # shorter openings ("Read more.") say nothing about the story
_TAG = re.compile(r"<[^>]*>?")
# ranking = "blend": a feed's order counts half as much as a CMS's explicit rank.
FEED_RANK_FACTOR = 0.5


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
    rank: int | None = None
    feed_position: int | None = None
    body_head: str = ""  # the body's first BODY_HEAD_CHARS characters, HTML as stored
    # The click signal (digest.signal): a score multiplier and why; `explored` = its topics
    # have no click history (such stories may take the exploration share of the slots).
    signal: float = 1.0
    signal_why: str = ""
    explored: bool = True

    @cached_property
    def title_words(self) -> frozenset[str]:
        return _words(self.title)

    @cached_property
    def text_words(self) -> frozenset[str]:
        return _words(self.dek)

    @cached_property
    def body_words(self) -> frozenset[str]:
        return _words(" ".join(body_text(self.body_head).split()[:BODY_WORDS]))


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


def body_text(head: str | None) -> str:
    """The words of the start of an HTML body (tags dropped, entities decoded): only compared,
    never shown, so a cut tag at the end of the slice does no harm."""
    return html.unescape(_TAG.sub(" ", head or ""))


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
    if c.signal != 1.0:
        value *= c.signal
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
        body_sim = _body_similarity(c, o)
        if body_sim >= weights.dek_similarity:
            return o
        title_sim = jaccard(c.title_words, o.title_words)
        if title_sim >= weights.title_similarity:
            both_empty = not c.text_words and not o.text_words and not body_sim
            related = max(text_sim, body_sim) >= _DEK_FLOOR_FOR_TITLE_MATCH
            if (both_empty and title_sim >= 0.85) or related:
                return o
    return None


def _body_similarity(c: Candidate, o: Candidate) -> float:
    if not c.body_head or not o.body_head:
        return 0.0
    a, b = c.body_words, o.body_words
    if len(a) < _BODY_MIN_WORDS or len(b) < _BODY_MIN_WORDS:
        return 0.0
    return jaccard(a, b)


# Given the ids of candidates, the first BODY_HEAD_CHARS characters of their bodies.
BodyLoader = Callable[[Sequence[int]], Mapping[int, str]]
_BODY_BATCH = 64


def pick(
    candidates: Sequence[Candidate],
    newsletter: NewsletterConfig,
    weights: SelectionWeights,
    window_end: datetime,
    already_sent: Sequence[Candidate] = (),
    bodies: BodyLoader | None = None,
) -> list[Pick]:
    """Top stories per section in the newsletter's section order; empty sections omitted.
    Within a section the newsletter's `ranking` orders them (see Ranker).

    With `bodies`, a candidate's body head is read only when it comes up for the duplicate
    check (a few dozen of the window's thousand or so), a batch at a time."""
    states = {s.name.casefold(): _SectionState(s.name, s.stories) for s in newsletter.sections}
    sent_ids = {s.id for s in already_sent}
    eligible = [c for c in candidates if c.section.casefold() in states and c.id not in sent_ids]
    ranker = Ranker(newsletter.ranking, weights, window_end)
    ordered = ranker.order(eligible)
    heads: dict[int, str] = {}

    def is_open(c: Candidate) -> bool:
        state = states[c.section.casefold()]
        return len(state.picks) < state.limit

    share = newsletter.click_signal.exploration if newsletter.click_signal else 0.0
    explored = dict.fromkeys(states, 0)
    deferred: list[tuple[int, Candidate, float]] = []
    accepted: list[Candidate] = []
    open_sections = len(states)
    for n, (c, value) in enumerate(ordered):
        state = states[c.section.casefold()]
        if len(state.picks) >= state.limit:
            continue
        kept = math.ceil(share * state.limit) - explored[c.section.casefold()]
        if share and not c.explored and state.limit - len(state.picks) <= kept:
            deferred.append((n, c, value))  # the slot is kept for a story with no history
            continue
        if bodies is not None and not c.body_head:
            if c.id not in heads:
                ahead = [x.id for x, _ in ordered[n:] if x.id not in heads and is_open(x)]
                heads.update(dict.fromkeys(ahead[:_BODY_BATCH], ""))
                heads.update(bodies(ahead[:_BODY_BATCH]))
            c = replace(c, body_head=heads[c.id])
        if duplicate_of(c, already_sent, weights) is not None:
            continue
        if duplicate_of(c, accepted, weights) is not None:
            continue
        accepted.append(c)
        explored[c.section.casefold()] += share > 0 and c.explored
        state.picks.append(Pick(c, state.name, len(state.picks) + 1, value, ranker.why(c, value)))
        if len(state.picks) == state.limit:
            open_sections -= 1
            if open_sections == 0:
                break
    # Exploration slots no story without history could take go to the best of the rest.
    for _n, c, value in deferred:
        state = states[c.section.casefold()]
        if len(state.picks) >= state.limit or c.id in {a.id for a in accepted}:
            continue
        if duplicate_of(c, already_sent, weights) or duplicate_of(c, accepted, weights):
            continue
        accepted.append(c)
        state.picks.append(Pick(c, state.name, len(state.picks) + 1, value, ranker.why(c, value)))
    return [p for st in states.values() for p in st.picks]


@dataclass
class Ranker:
    """Orders a section's candidates by the newsletter's `ranking`. Pins come first in every
    mode; ties are broken by recency and id, so the order is total.

    popularity: the score (popularity with recency decay, boosts).
    editorial: the newsroom's rank (1 first), then the feed's order, then recency.
    blend: editorial_weight × rank value + (1 − editorial_weight) × the score relative to the
    best in its section; rank value 1/rank, or FEED_RANK_FACTOR/feed position."""

    ranking: str
    weights: SelectionWeights
    window_end: datetime
    _best: dict[str, float] = field(default_factory=dict)

    def order(self, candidates: Sequence[Candidate]) -> list[tuple[Candidate, float]]:
        """(candidate, value) best first; `value` is the score, or the blend."""
        scores = [score(c, self.window_end, self.weights) for c in candidates]
        rows: list[tuple[tuple[object, ...], Candidate, float]] = []
        if self.ranking == "blend":
            for c, s in zip(candidates, scores, strict=True):
                name = c.section.casefold()
                self._best[name] = max(self._best.get(name, 0.0), s)
        for c, s in zip(candidates, scores, strict=True):
            tail = (-c.published_at.timestamp(), c.id)
            pin = c.priority != "pin"
            if self.ranking == "editorial":
                r, f = c.rank, c.feed_position
                rows.append(((pin, r is None, r or 0, f is None, f or 0, *tail), c, s))
            elif self.ranking == "blend":
                value = self._blend(c, s)
                rows.append(((pin, -value, *tail), c, value))
            else:
                rows.append(((pin, -s, *tail), c, s))
        rows.sort(key=lambda r: r[0])
        return [(c, v) for _, c, v in rows]

    def _relative(self, c: Candidate, s: float) -> float:
        best = self._best.get(c.section.casefold(), 0.0)
        return s / best if best else 0.0

    def _blend(self, c: Candidate, s: float) -> float:
        w = self.weights.editorial_weight
        return round(w * _rank_value(c) + (1 - w) * self._relative(c, s), 6)

    def why(self, c: Candidate, value: float) -> str:
        """The pick explained in the ranking's own terms (only picks are explained)."""
        if c.signal_why:
            return f"{self._why(c, value)}; {c.signal_why}"
        return self._why(c, value)

    def _why(self, c: Candidate, value: float) -> str:
        if self.ranking == "popularity":
            return _reason(c, value, self.window_end)
        head = "pinned by editor; " if c.priority == "pin" else ""
        age = f"{_age_hours(c, self.window_end):.1f} h old"
        if self.ranking == "editorial":
            return f"{head}{_rank_words(c)}, {age}"
        w = self.weights.editorial_weight
        pv = self._relative(c, score(c, self.window_end, self.weights))
        return (
            f"{head}blend {value:.2f} = {w:g} × {_rank_words(c)} ({_rank_value(c):.2f}) + "
            f"{1 - w:g} × popularity {c.popularity:g} ({pv:.2f} of the section's best), {age}"
        )


def rank_order(
    candidates: Sequence[Candidate], ranking: str, weights: SelectionWeights, window_end: datetime
) -> list[tuple[Candidate, float, str]]:
    """Every candidate as Ranker orders it, with its value and why (for inspection)."""
    ranker = Ranker(ranking, weights, window_end)
    return [(c, v, ranker.why(c, v)) for c, v in ranker.order(candidates)]


def _rank_value(c: Candidate) -> float:
    if c.rank is not None:
        return 1.0 / c.rank
    if c.feed_position is not None:
        return FEED_RANK_FACTOR / c.feed_position
    return 0.0


def _rank_words(c: Candidate) -> str:
    if c.rank is not None:
        return f"rank {c.rank} in its section"
    if c.feed_position is not None:
        return f"item {c.feed_position} of its feed"
    return "no rank"


def _age_hours(c: Candidate, window_end: datetime) -> float:
    return (window_end - c.published_at).total_seconds() / 3600.0


def _reason(c: Candidate, s: float, window_end: datetime) -> str:
    age = _age_hours(c, window_end)
    head = {"pin": "pinned by editor; ", "boost": "boosted; "}.get(c.priority, "")
    return f"{head}popularity {c.popularity:g}, {age:.1f} h old"


def body_loader(session: Session) -> BodyLoader:
    """Reads the first BODY_HEAD_CHARS characters of the given articles' bodies."""

    def load(ids: Sequence[int]) -> Mapping[int, str]:
        if not ids:
            return {}
        rows = session.execute(
            select(Article.id, func.substr(Article.body, 1, BODY_HEAD_CHARS)).where(
                Article.id.in_(list(ids))
            )
        )
        return {i: head or "" for i, head in rows}

    return load


def load_candidates(session: Session, start: datetime, end: datetime) -> list[Candidate]:
    """Articles published in [start, end). Reads only the columns selection needs; the bodies
    are read later, for the few candidates the duplicate check reaches (body_loader)."""
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
            Article.rank,
            Article.feed_position,
        ).where(Article.published_at >= start, Article.published_at < end)
    ).all()
    return [Candidate(*row) for row in rows]
