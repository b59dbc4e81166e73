"""Editions: a stored, ordered pick of stories per section for one newsletter and date.

An edition is what the editor previews and what the send delivers. Each item keeps a snapshot of
the story (title, dek, link, image...) so later re-ingests cannot change what was approved.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import (
    Boolean,
    Date,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    false,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from digest.articles import Article, UTCDateTime
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import Base
from digest.edition_text import approval_text as approval_text
from digest.edition_text import format_edition as format_edition
from digest.errors import EditionFrozen, InputError, NotFound
from digest.selection import (
    BODY_HEAD_CHARS,
    Candidate,
    Pick,
    body_loader,
    edition_window,
    load_candidates,
    pick,
)

# draft: may be rebuilt. frozen: sending has started, the edition is open (some of its audience
# has no settled row yet); its content never changes again, unless nobody was handed it
# (reopen_edition). sent: closed, every member of its full audience has a settled row.
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
    # The editor's desk (digest.desk): a note above the stories (short Markdown), subject and
    # preheader overrides (the newsletter's templates when None), and who signed it off.
    note: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    preheader: Mapped[str | None] = mapped_column(Text)
    # A/B subjects for this edition (a JSON list of two to four, digest.desk.set_ab_subjects):
    # they override the config's [ab_test] subjects and freeze with the edition.
    ab_subjects: Mapped[str | None] = mapped_column(Text)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    items: Mapped[list[EditionItem]] = relationship(
        back_populates="edition",
        cascade="all, delete-orphan",
        order_by="(EditionItem.section_position, EditionItem.rank)",
    )

    edits: Mapped[list[EditionEdit]] = relationship(
        cascade="all, delete-orphan", order_by="EditionEdit.id"
    )

    __table_args__ = (UniqueConstraint("newsletter", "edition_date"),)

    @property
    def frozen(self) -> bool:
        return self.status != "draft"

    @property
    def ab_subject_list(self) -> tuple[str, ...]:
        """The editor's A/B subjects for this edition (empty: the config's, if any)."""
        return tuple(json.loads(self.ab_subjects)) if self.ab_subjects else ()

    def sections(self) -> list[tuple[str, list[EditionItem]]]:
        """Sections in edition order with their ranked items."""
        out: list[tuple[str, list[EditionItem]]] = []
        for item in sorted(self.items, key=lambda i: (i.section_position, i.rank)):
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
    # The editor's overrides for the email (the snapshot and the stored article stay as they
    # are), and a pin that keeps the story at its place when the edition is rebuilt.
    headline: Mapped[str | None] = mapped_column(Text)
    blurb: Mapped[str | None] = mapped_column(Text)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    edition: Mapped[Edition] = relationship(back_populates="items")

    @property
    def shown_title(self) -> str:
        """The headline as the email shows it."""
        return self.headline or self.title

    @property
    def shown_dek(self) -> str:
        return self.dek if self.blurb is None else self.blurb

    __table_args__ = (UniqueConstraint("edition_id", "article_id"),)

    @classmethod
    def snapshot(
        cls,
        article: Article,
        *,
        section: str,
        section_position: int,
        rank: int,
        score: float,
        reason: str,
    ) -> EditionItem:
        """The story as it is now, for an edition: later edits of the article do not change
        an edition already previewed or sent."""
        return cls(
            article_id=article.id,
            section=section,
            section_position=section_position,
            rank=rank,
            score=score,
            reason=reason,
            title=article.title,
            dek=article.dek,
            url=article.url,
            byline=article.byline,
            source=article.source,
            published_at=article.published_at,
            image_url=article.image_url,
            image_alt=article.image_alt,
            image_caption=article.image_caption,
        )


class EditionEdit(Base):
    """One change an editor made to a draft (or its approval), with who and when: the desk's
    log, shown by `edition show` and replayed on the fresh picks when the draft is rebuilt."""

    __tablename__ = "edition_edits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(String(100))
    # drop, add, move, pin, unpin, headline, blurb, note, subject, preheader, ab_subjects,
    # approve, withdraw, rebuild, reopen
    action: Mapped[str] = mapped_column(String(20))
    article_id: Mapped[int | None] = mapped_column(Integer)
    section: Mapped[str | None] = mapped_column(String(100))
    position: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str] = mapped_column(Text)


def get_edition(session: Session, newsletter: str, edition_date: date) -> Edition | None:
    return session.scalars(
        select(Edition).where(
            Edition.newsletter == newsletter, Edition.edition_date == edition_date
        )
    ).one_or_none()


@dataclass(frozen=True)
class BuildResult:
    edition: Edition
    built: bool
    message: str


def load_edition(session: Session, newsletter: str, edition_date: date) -> Edition:
    edition = get_edition(session, newsletter, edition_date)
    if edition is None:
        raise NotFound(
            f"no edition of {newsletter} for {edition_date}: "
            f"run `digest edition build {newsletter} --date {edition_date}`"
        )
    return edition


def load_already_sent(
    session: Session, newsletter: NewsletterConfig, edition_date: date
) -> list[Candidate]:
    """Stories of earlier editions of this newsletter that went out (not drafts), recent enough
    to fall in this edition's window again or to come back re-headlined."""
    days = math.ceil(newsletter.lookback_hours / 24) + 7
    rows = session.execute(
        select(
            EditionItem.article_id,
            EditionItem.section,
            EditionItem.title,
            EditionItem.dek,
            EditionItem.url,
            EditionItem.published_at,
            func.coalesce(func.substr(Article.body, 1, BODY_HEAD_CHARS), ""),
        )
        .join(Edition, Edition.id == EditionItem.edition_id)
        .outerjoin(Article, Article.id == EditionItem.article_id)
        .where(
            Edition.newsletter == newsletter.id,
            Edition.edition_date < edition_date,
            Edition.edition_date >= edition_date - timedelta(days=days),
            Edition.status != "draft",
        )
    ).all()
    return [
        Candidate(
            id=r[0], section=r[1], title=r[2], dek=r[3], url=r[4], published_at=r[5], body_head=r[6]
        )
        for r in rows
    ]


def build_edition(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    edition_date: date,
    *,
    clock: Clock,
    force: bool = False,
) -> BuildResult:
    """Pick the stories and store them as the edition. An existing draft is kept unless
    `force`; a frozen edition (sending started) is never rebuilt. The caller commits."""
    existing = get_edition(session, newsletter.id, edition_date)
    if existing is not None:
        if existing.frozen:
            raise EditionFrozen(
                f"edition {newsletter.id} {edition_date} is frozen (sending started "
                f"{existing.frozen_at:%Y-%m-%d %H:%M} UTC); it can no longer be rebuilt"
                + _reopen_hint(session, existing)
            )
        if not force:
            return BuildResult(
                existing,
                False,
                f"edition {newsletter.id} {edition_date} already built at "
                f"{existing.built_at:%Y-%m-%d %H:%M} UTC (use --force to rebuild)",
            )
    start, end = edition_window(newsletter, edition_date)
    edits = list(existing.edits) if existing is not None else []
    dropped = _dropped(edits)
    from digest.signal import apply_signal  # clicks into the pick (issue 15)

    picks = pick(
        apply_signal(
            session,
            newsletter,
            edition_date,
            [c for c in load_candidates(session, start, end) if c.id not in dropped],
        ),
        newsletter,
        config.selection,
        end,
        load_already_sent(session, newsletter, edition_date),
        bodies=body_loader(session),
    )
    edition = existing or Edition(newsletter=newsletter.id, edition_date=edition_date)
    if existing is not None:
        edition.items.clear()
        session.flush()
    edition.status = "draft"
    edition.built_at = clock()
    edition.window_start = start
    edition.window_end = end
    edition.items = _items(session, picks, newsletter)
    stale = replay_edits(session, edition, newsletter, edits)
    edition.fingerprint = fingerprint(edition.items)
    try:
        # A savepoint: if another process stored this edition since our check, only our insert
        # is undone, not the caller's transaction.
        with session.begin_nested():
            session.add(edition)
    except IntegrityError:
        return BuildResult(
            load_edition(session, newsletter.id, edition_date),
            False,
            f"edition {newsletter.id} {edition_date} was built concurrently",
        )
    verb = "rebuilt" if existing is not None else "built"
    count = len(edition.items)
    sections = len(edition.sections())
    message = (
        f"{verb} edition {newsletter.id} {edition_date}: {count} stories in {sections} sections"
    )
    story_edits = sum(1 for e in edits if e.action in STORY_ACTIONS)
    if story_edits:
        message += f"; {story_edits - stale} editor's change(s) re-applied"
        if stale:
            message += f", {stale} no longer apply (story not in the edition)"
    if existing is not None and existing.approved_by:
        message += f"; approval by {existing.approved_by} withdrawn"
        existing.approved_by = existing.approved_at = None
    return BuildResult(edition, True, message)


# --- the editor's changes (digest.desk records them; a rebuild replays them) ------------------

# Edits of single stories, replayed in order on a rebuild's fresh picks.
STORY_ACTIONS = ("drop", "add", "move", "pin", "unpin", "headline", "blurb")


def _dropped(edits: list[EditionEdit]) -> set[int]:
    """Articles the editor's latest word on was `drop`: a rebuild does not pick them."""
    out: set[int] = set()
    for e in edits:
        if e.article_id is None:
            continue
        if e.action == "drop":
            out.add(e.article_id)
        elif e.action in ("add", "move", "pin"):
            out.discard(e.article_id)
    return out


def replay_edits(
    session: Session, edition: Edition, newsletter: NewsletterConfig, edits: list[EditionEdit]
) -> int:
    """Apply the editor's story edits to freshly picked items: a story added, moved or pinned
    stays where it was put (taken from the store again when the pick no longer has it),
    overrides come back. Returns how many edits found their story gone."""
    stale = 0
    for e in edits:
        if e.action not in STORY_ACTIONS or e.article_id is None:
            continue
        item = next((i for i in edition.items if i.article_id == e.article_id), None)
        if e.action == "drop":
            if item is not None:
                remove_item(edition, item)
            continue
        if e.action in ("add", "move", "pin"):
            if item is None:
                article = session.get(Article, e.article_id)
                if article is None:
                    stale += 1
                    continue
                item = EditionItem.snapshot(
                    article,
                    section=e.section or article.section,
                    section_position=0,
                    rank=0,
                    score=0.0,
                    reason=f"{'added' if e.action == 'add' else 'placed'} by {e.by}",
                )
                edition.items.append(item)
            place_item(edition, item, newsletter, e.section or item.section, e.position)
            if e.action == "pin":
                item.pinned = True
        elif item is None:
            stale += 1
        elif e.action == "unpin":
            item.pinned = False
        elif e.action == "headline":
            item.headline = e.value
        elif e.action == "blurb":
            item.blurb = e.value
    return stale


def section_items(edition: Edition, section: str) -> list[EditionItem]:
    return sorted(
        (i for i in edition.items if i.section.casefold() == section.casefold()),
        key=lambda i: i.rank,
    )


def place_item(
    edition: Edition,
    item: EditionItem,
    newsletter: NewsletterConfig,
    section: str,
    position: int | None,
) -> None:
    """Put `item` at `position` (1-based; None or past the end: last) of `section`, which must
    be one of the newsletter's, and number both sections' stories 1, 2, 3 ... again."""
    conf = newsletter.section(section)
    if conf is None:
        known = ", ".join(newsletter.section_names)
        raise InputError(f"{section!r} is not a section of {newsletter.id} (sections: {known})")
    old = item.section
    others = [i for i in section_items(edition, conf.name) if i is not item]
    index = len(others) if position is None else max(0, min(position - 1, len(others)))
    others.insert(index, item)
    item.section = conf.name
    item.section_position = newsletter.section_names.index(conf.name)
    for rank, i in enumerate(others, 1):
        i.rank = rank
    if old.casefold() != conf.name.casefold():
        _renumber(section_items(edition, old))


def remove_item(edition: Edition, item: EditionItem) -> None:
    edition.items.remove(item)
    _renumber(section_items(edition, item.section))


def _renumber(items: list[EditionItem]) -> None:
    for rank, i in enumerate(items, 1):
        i.rank = rank


def _items(session: Session, picks: list[Pick], newsletter: NewsletterConfig) -> list[EditionItem]:
    articles = {
        a.id: a
        for a in session.scalars(
            select(Article).where(Article.id.in_([p.candidate.id for p in picks]))
        )
    }
    order = {s.name: i for i, s in enumerate(newsletter.sections)}
    items = []
    for p in picks:
        items.append(
            EditionItem.snapshot(
                articles[p.candidate.id],
                section=p.section,
                section_position=order[p.section],
                rank=p.rank,
                score=p.score,
                reason=p.reason,
            )
        )
    return items


def fingerprint(items: list[EditionItem]) -> str:
    """Identifies the edition's content, so a gate can tell when today repeats yesterday."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.section}\x1f{item.article_id}\x1f{item.title}\x1e".encode())
    return h.hexdigest()


def freeze_edition(session: Session, edition: Edition, *, clock: Clock) -> bool:
    """Mark the edition frozen (sending starts). Atomic: exactly one caller wins the draft →
    frozen transition; returns whether this call froze it. The caller commits."""
    if edition.frozen:
        return False
    result = session.execute(
        update(Edition)
        .where(Edition.id == edition.id, Edition.status == "draft")
        .values(status="frozen", frozen_at=clock())
        .execution_options(synchronize_session=False)
    )
    session.refresh(edition)
    return bool(getattr(result, "rowcount", 0))


# --- reopening an edition nobody was handed -------------------------------------------------

# Rows that mean a reader has (or may have) the edition, or a sender is working on it.
_HANDED_STATES = ("sending", "sent", "unknown", "deferred")


def handed_rows(session: Session, edition_id: int) -> int:
    """Ledger rows of the edition that reached a provider (or may have, or are being sent)."""
    from digest.ledger import Delivery

    return int(
        session.scalar(
            select(func.count()).where(
                Delivery.edition_id == edition_id,
                Delivery.handed_at.is_not(None) | Delivery.state.in_(_HANDED_STATES),
            )
        )
        or 0
    )


def _reopen_hint(session: Session, edition: Edition) -> str:
    if handed_rows(session, edition.id):
        return ""
    return (
        f"; nobody was handed it yet: `digest edition reopen {edition.newsletter} --date "
        f"{edition.edition_date}` makes it a draft again"
    )


def reopen_edition(
    session: Session, newsletter: NewsletterConfig, edition_date: date, by: str, *, clock: Clock
) -> str:
    """Make a frozen (or closed) edition a draft again, when no provider was handed any of its
    messages: the rows waiting to be sent are removed, the desk's log records who reopened it,
    and the editor can fix it, rebuild it and send it the same day. The caller commits."""
    from digest.ledger import Delivery

    edition = load_edition(session, newsletter.id, edition_date)
    what = f"edition {newsletter.id} {edition_date}"
    if not edition.frozen:
        raise InputError(f"{what} is a draft: nothing to reopen")
    handed = handed_rows(session, edition.id)
    if handed:
        raise EditionFrozen(
            f"{what} cannot be reopened: {handed} of its messages were handed to the provider "
            "(sent, on their way or unknown); send the rest with `digest send`"
        )
    removed = session.execute(
        delete(Delivery)
        .where(Delivery.edition_id == edition.id)
        .execution_options(synchronize_session=False)
    )
    rows = int(getattr(removed, "rowcount", 0) or 0)
    reopened = session.execute(
        update(Edition)
        .where(Edition.id == edition.id, Edition.status == edition.status)
        .values(status="draft", frozen_at=None)
        .execution_options(synchronize_session=False)
    )
    if not getattr(reopened, "rowcount", 0):
        raise EditionFrozen(f"{what} changed while it was being reopened: try again")
    summary = f"reopened (was {edition.status}; {rows} unsent ledger row(s) removed)"
    session.add(
        EditionEdit(edition_id=edition.id, at=clock(), by=by, action="reopen", summary=summary)
    )
    session.refresh(edition)
    return f"{what} {summary}: it is a draft again; change, rebuild or send it"
