"""One story, one reader, one day: what a reader was already sent today in the newsroom's other
newsletters, read from the ledger when their row of this edition is written (digest.send_rows),
as the article ids of this edition to leave out of their copy.

- *The same story* is the same stored article, or the same canonical URL
  (digest.articles.normalise_url: two feeds' copies of one story are one story).
- *Today* is the local day of this send in this newsletter's time zone; what counts is the rows
  of other newsletters of this config whose ledger row was written that day and that reached
  the reader or are on their way (pending, sending, deferred, sent, unknown; not failed,
  suppressed or skipped), and only the stories their copy showed (its sections, less what it
  left out itself).
- The left-out ids are part of the reader's variant (digest.render.Renderer.variant), so
  readers with the same exclusions share one rendering, and they are stored in the row
  (digest.ledger.encode_variant): a re-run or a crash re-renders the same copy.

`no_repeat_today = false` on a newsletter turns the rule off for its readers.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.articles import normalise_url
from digest.config import Config, NewsletterConfig
from digest.editions import Edition, EditionItem
from digest.ledger import Delivery, decode_layout
from digest.render import Renderer
from subscribers.audience import Recipient

# Rows that never reached the reader: what they held may be sent again.
_GONE = ("failed", "suppressed", "skipped")
NOTHING_NEW = "every story was sent to this reader today in another newsletter"

# A story as the rule compares it: its article id, and its canonical URL.
_Story = int | str


def _canonical(url: str) -> str:
    try:
        return normalise_url(url)
    except ValueError:  # a URL the store would not have taken: compared as it is
        return url


def local_day(nl: NewsletterConfig, now: datetime) -> tuple[date, datetime, datetime]:
    """The send's day in the newsletter's time zone and its bounds."""
    day = now.astimezone(nl.tz).date()
    start = datetime.combine(day, time(), nl.tz)
    return day, start, datetime.combine(day + timedelta(days=1), time(), nl.tz)


class SameDay:
    """Per reader, the ids of this edition's stories they were already sent today."""

    def __init__(self, seen: _Seen, items: Iterable[tuple[int, str]]) -> None:
        self._seen = seen
        self._items = [(article_id, _canonical(url)) for article_id, url in items]
        self._hits: dict[frozenset[_Story], tuple[int, ...]] = {}
        self._empty: dict[tuple[tuple[str, ...], tuple[int, ...]], bool] = {}

    def left_out(self, renderer: Renderer, r: Recipient) -> tuple[int, ...] | None:
        """The article ids to leave out of this reader's copy (the `skip` to ask their variant
        with), or None when that leaves no story: they have nothing new today."""
        skip = self.skip(r.subscriber_id)
        if not skip:
            return ()
        key = (r.sections, skip)
        empty = self._empty.get(key)
        if empty is None:
            shown, _ = renderer.leave_out(renderer.resolve(r.sections), skip)
            empty = self._empty[key] = not shown
        return None if empty else skip

    def skip(self, subscriber_id: int) -> tuple[int, ...]:
        """This edition's article ids the reader was sent today, wherever they are."""
        seen = self._seen.get(subscriber_id)
        if seen is None:
            return ()
        hits = self._hits.get(seen)
        if hits is None:
            hits = self._hits[seen] = tuple(
                sorted(a for a, url in self._items if a in seen or url in seen)
            )
        return hits


def same_day(
    session: Session, config: Config, nl: NewsletterConfig, edition: Edition, now: datetime
) -> SameDay | None:
    """What this edition's new rows must leave out, or None (the rule is off, or no other
    newsletter reached anyone today). Today's editions of the other newsletters (a few rows),
    their items, and their rows of today, read by _Seen a window of readers at a time."""
    if not nl.no_repeat_today:
        return None
    day, start, end = local_day(nl, now)
    others = [n for n in config.newsletters if n != nl.id]
    ids = list(
        session.scalars(
            select(Edition.id).where(
                Edition.newsletter.in_(others),
                Edition.status != "draft",
                # Another zone's date of the same instant is at most a day away.
                Edition.edition_date.between(day - timedelta(days=1), day + timedelta(days=1)),
            )
        )
    )
    if not ids:
        return None
    seen = _Seen(session, ids, start, end, _shown_stories(session, ids))
    if not seen.any():
        return None
    return SameDay(seen, ((i.article_id, i.url) for i in edition.items))


class _Seen:
    """Per reader, the stories the other newsletters' rows of today showed them, read from the
    ledger a window of subscriber ids at a time as the audience (in id order) asks for them:
    what is held is a window (at most PAGE rows of each other edition), not a dict of every
    reader of the day (a million entries, and the rows behind them, at a million)."""

    PAGE = 5000

    def __init__(
        self,
        session: Session,
        edition_ids: list[int],
        start: datetime,
        end: datetime,
        shown: _Shown,
    ) -> None:
        self._session, self._ids, self._shown = session, edition_ids, shown
        self._today = (
            Delivery.created_at >= start,
            Delivery.created_at < end,
            Delivery.state.not_in(_GONE),
        )
        self._low = self._high = 0  # the window [low, high) of subscriber ids held in _seen
        self._seen: dict[int, frozenset[_Story]] = {}
        self._unions: dict[tuple[frozenset[_Story], frozenset[_Story]], frozenset[_Story]] = {}

    def any(self) -> bool:
        """Whether any of today's rows reached anyone."""
        found = select(Delivery.id).where(Delivery.edition_id.in_(self._ids), *self._today)
        return self._session.scalar(found.limit(1)) is not None

    def get(self, subscriber_id: int) -> frozenset[_Story] | None:
        if not self._low <= subscriber_id < self._high:
            self._load(subscriber_id)
        return self._seen.get(subscriber_id)

    def _load(self, low: int) -> None:
        # Each edition's rows from `low` on, in subscriber order (the (edition_id,
        # subscriber_id) key): the window ends where the first full page ends, so every row
        # below it of every edition is held.
        high = 2**63  # past any id: no edition had a full page, all of their rows are held
        pages = []
        for edition_id in self._ids:
            rows = self._session.execute(
                select(Delivery.subscriber_id, Delivery.sections)
                .where(
                    Delivery.edition_id == edition_id, Delivery.subscriber_id >= low, *self._today
                )
                .order_by(Delivery.subscriber_id)
                .limit(self.PAGE)
            ).all()
            if len(rows) == self.PAGE:
                high = min(high, rows[-1][0] + 1)
            pages.append((edition_id, rows))
        self._seen = {}
        for edition_id, rows in pages:
            for subscriber_id, raw in rows:
                if subscriber_id < high:
                    self._add(subscriber_id, self._shown(edition_id, raw))
        self._low, self._high = low, high

    def _add(self, subscriber_id: int, part: frozenset[_Story]) -> None:
        had = self._seen.get(subscriber_id)
        if had is not None and had is not part:  # several newsletters today: their union
            both = self._unions.get((had, part))
            part = self._unions[(had, part)] = had | part if both is None else both
        self._seen[subscriber_id] = part


def _shown_stories(session: Session, edition_ids: list[int]) -> _Shown:
    by_edition: dict[int, list[tuple[str, int, str]]] = {}
    for edition_id, section, article_id, url in session.execute(
        select(
            EditionItem.edition_id, EditionItem.section, EditionItem.article_id, EditionItem.url
        ).where(EditionItem.edition_id.in_(edition_ids))
    ):
        by_edition.setdefault(edition_id, []).append((section, article_id, _canonical(url)))
    return _Shown(by_edition)


class _Shown:
    """The stories a row's copy showed: its sections (all when it names none), less what it
    left out; computed once per distinct (edition, layout)."""

    def __init__(self, by_edition: dict[int, list[tuple[str, int, str]]]) -> None:
        self._by_edition = by_edition
        self._cache: dict[tuple[int, str], frozenset[_Story]] = {}

    def __call__(self, edition_id: int, raw: str) -> frozenset[_Story]:
        found = self._cache.get((edition_id, raw))
        if found is None:
            sections, _, skip = decode_layout(raw)
            wanted, left_out = set(sections), set(skip)
            stories: set[_Story] = set()
            for section, article_id, url in self._by_edition.get(edition_id, ()):
                if (not wanted or section in wanted) and article_id not in left_out:
                    stories.update((article_id, url))
            found = self._cache[(edition_id, raw)] = frozenset(stories)
        return found
