"""Checks before an edition freezes, and what it takes to close one.

`digest send` (and the scheduler, which calls it) freezes a draft in the same transaction that
adds the first ledger rows; everything that could make the edition unsendable is checked inside
that transaction, before the commit: the templates, every variant its audience needs (rendered,
size-checked), the subject and preheader (the header rule of digest.message, through one sample
message per variant) and the segments. A failure rolls the transaction back: the edition is
still a draft, nobody has a row, and fixing the cause and running the command again sends the
same day.

An edition closes (`sent`) only when every member of its full audience has a settled row
(digest.ledger.SETTLED); `audience_without_rows` tells a partial run whether it completed the
audience after all.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from digest import ledger
from digest.config import Config, NewsletterConfig
from digest.editions import Edition
from digest.errors import DigestError, InputError
from digest.ledger import Delivery
from digest.limits import MAX_ARTICLE_FIELD
from digest.message import Addressee, HeaderError, VariantMessage, make_message_id
from digest.preview import sample_personal
from digest.render import Layout, Renderer, check_size, personalise
from subscribers.audience import Recipient, audience, audience_query
from subscribers.models import Subscriber


class NotFrozen(DigestError):
    """A check before freezing failed: the edition is still a draft, nobody has a row. Keeps
    the exit code of the cause (2 for a configuration mistake, else 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The email's text of a story, and the stored field whose bound (digest.limits) applies to it.
# The desk command that overrides it, if any.
_ITEM_FIELDS = (
    ("title", "title", "shown_title", "headline"),
    ("dek", "dek", "shown_dek", "blurb"),
    ("byline", "byline", "byline", None),
    ("source", "source", "source", None),
    ("url", "url", "url", None),
    ("image URL", "image_url", "image_url", None),
    ("image alt text", "image_alt", "image_alt", None),
    ("image caption", "image_caption", "image_caption", None),
)


def check_items(nl: NewsletterConfig, edition: Edition) -> None:
    """Every story's text within the bounds ingest applies (a story stored before them, or
    put in by hand, could otherwise make every variant unsendable): InputError naming the
    story and what to do, before anything is rendered."""
    for item in edition.items:
        for label, bound, attr, desk in _ITEM_FIELDS:
            value = getattr(item, attr)
            limit = MAX_ARTICLE_FIELD[bound]
            if value is None or len(value) <= limit:
                continue
            date = f"--date {edition.edition_date}"
            fix = (
                f"`digest edition {desk} {nl.id} {item.article_id} TEXT {date}` or " if desk else ""
            )
            raise InputError(
                f"story #{item.article_id} ({item.section} {item.rank}): its {label} is "
                f"{len(value):,} characters, above the {limit:,} a story may have; {fix}take "
                f"it out with `digest edition drop {nl.id} {item.article_id} {date}`"
            )


class VariantCheck:
    """Each variant once: rendered, size-checked and built into one sample message (the
    subject and the other headers through the builder's header rule)."""

    def __init__(
        self,
        config: Config,
        nl: NewsletterConfig,
        edition: Edition,
        renderer: Renderer | None = None,
    ) -> None:
        self.config = config
        self.nl = nl
        self.edition = edition
        self.renderer = renderer or Renderer(config, nl, edition)
        # Set by the caller when this transaction froze the edition (the checks then run).
        self.edition_was_draft = False
        self._seen: set[Layout] = set()

    def check(
        self, sections: tuple[str, ...], blocks: tuple[int, ...] = (), skip: tuple[int, ...] = ()
    ) -> None:
        if (sections, blocks, skip) in self._seen:
            return
        rendered = self.renderer.variant(sections, blocks, skip)
        check_size(rendered)
        personal = sample_personal(self.config, self.nl, self.edition)
        to = Addressee(
            personal.email,
            None,
            personal.unsubscribe_url,
            make_message_id(self.nl, self.edition.edition_date, 0),
        )
        message = VariantMessage(self.config, self.nl, self.edition.edition_date, rendered.key)
        message.mime(personalise(rendered, personal), to, self.edition.built_at)
        self._seen.add((sections, blocks, skip))

    def check_audience(self, recipients: Iterable[Recipient]) -> None:
        """Every variant the recipients need, and the whole edition's (an empty audience still
        gets its template checked)."""
        self.check(())
        for r in recipients:
            self.check(r.sections, r.blocks)


def check_full_audience(session: Session, check: VariantCheck) -> None:
    """What a partial run (a segment, a local-time wave) freezing the edition checks: the
    variants of everyone, so no later run meets a variant that cannot be sent."""
    check.check_audience(audience(session, check.config, check.nl))


def refusal(nl: NewsletterConfig, edition: Edition, e: Exception) -> NotFrozen:
    """The one line a failed check ends with."""
    code = e.exit_code if isinstance(e, DigestError) else 1
    return NotFrozen(
        f"not sending {nl.id} {edition.edition_date}: {e}; the edition is still a draft "
        f"and nobody got it: fix this and run the same command again",
        code,
    )


CHECK_ERRORS = (DigestError, HeaderError)


def audience_without_rows(
    session: Session, config: Config, nl: NewsletterConfig, edition_id: int
) -> int:
    """Members of the full audience (no segment) who have no ledger row for the edition."""
    members = audience_query(session, config, nl).where(
        ~exists().where(Delivery.edition_id == edition_id, Delivery.subscriber_id == Subscriber.id)
    )
    return int(session.scalar(select(func.count()).select_from(members.subquery())) or 0)


def open_rows(counts: dict[str, int]) -> int:
    """Rows not settled yet: pending, sending and deferred (a temporary failure that is
    retried later)."""
    return sum(n for state, n in counts.items() if state not in ledger.SETTLED)
