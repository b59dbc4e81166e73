"""The editor's desk: shape a draft edition, then sign it off.

Every change (drop, add, move, pin a story; a headline or blurb for the email; the editor's
note; the subject and preheader; A/B subjects) is made to the stored draft and logged with who and when in
`edition_edits`, which `edition show` prints and a rebuild replays (digest.editions). The
stored articles are never touched. A frozen edition (sending started) refuses every change.

With `approval = "required"` an unattended send waits for `approve()` (digest.gates); any
change after an approval withdraws it, so what was approved is what goes out. Functions take
the caller's session; the caller commits. What the desk shows is digest.desk_view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.articles import Article, normalise_url
from digest.clock import Clock
from digest.config import NewsletterConfig

# What the desk shows lives in digest.desk_view; imported here for callers of the desk.
from digest.desk_view import EditionSummary, EditionView, list_editions, show_edition, to_json
from digest.editions import (
    Edition,
    EditionEdit,
    EditionItem,
    approval_text,
    fingerprint,
    load_edition,
    place_item,
    remove_item,
)
from digest.errors import EditionFrozen, InputError, NotFound
from digest.notes import NOTE_MAX
from digest.render import check_subject_fields
from digest.text import clean_text, line_problem, shown_line

__all__ = ["EditionSummary", "EditionView", "list_editions", "show_edition", "to_json"]

EDITOR_MAX = 100
HEADLINE_MAX = 300
BLURB_MAX = 600
SUBJECT_MAX = 200
_SECTION_RANK = re.compile(r"(?P<section>.+?)\s*[:#]\s*(?P<rank>\d+)")


@dataclass(frozen=True)
class DeskResult:
    edition: Edition
    message: str


def check_editor(name: str | None) -> str:
    """Who makes a change: one line of at most EDITOR_MAX characters."""
    cleaned = shown_line(name or "")
    if not cleaned:
        raise InputError("say who you are: --by NAME (or set DIGEST_EDITOR)")
    if len(cleaned) > EDITOR_MAX:
        raise InputError(f"--by: a name of at most {EDITOR_MAX} characters")
    return cleaned


def open_draft(session: Session, newsletter: NewsletterConfig, edition_date: date) -> Edition:
    """The draft to change; EditionFrozen once sending has started."""
    edition = load_edition(session, newsletter.id, edition_date)
    if edition.frozen:
        raise EditionFrozen(
            f"edition {newsletter.id} {edition_date} is {edition.status} (sending started "
            f"{edition.frozen_at:%Y-%m-%d %H:%M} UTC): it can no longer be changed"
        )
    return edition


def _log(
    edition: Edition,
    action: str,
    summary: str,
    *,
    by: str,
    clock: Clock,
    item: EditionItem | None = None,
    value: str | None = None,
) -> str:
    """Record one change; a change withdraws an approval (what was approved is what goes out).
    Returns the line to print."""
    at = clock()
    if action not in ("approve", "withdraw") and edition.approved_by:
        summary += f" (approval by {edition.approved_by} withdrawn)"
        edition.approved_by = edition.approved_at = None
    edition.edits.append(
        EditionEdit(
            at=at,
            by=by,
            action=action,
            article_id=item.article_id if item is not None else None,
            section=item.section if item is not None else None,
            position=item.rank if item is not None else None,
            value=value,
            summary=summary,
        )
    )
    edition.fingerprint = fingerprint(sorted(edition.items, key=_order))
    return f"{edition.newsletter} {edition.edition_date}: {summary}"


def _order(item: EditionItem) -> tuple[int, int]:
    return item.section_position, item.rank


def _where(item: EditionItem) -> str:
    return f"{item.section} {item.rank}"


def _title(item: EditionItem) -> str:
    title = item.shown_title
    return repr(title if len(title) <= 60 else title[:57] + "...")


# --- finding a story ---------------------------------------------------------------------------


def find_item(edition: Edition, ref: str) -> EditionItem:
    """A story of the edition by article id (`42`), URL, or section and rank (`News:2`)."""
    ref = ref.strip()
    found: EditionItem | None = None
    if ref.isdigit():
        found = next((i for i in edition.items if i.article_id == int(ref)), None)
    elif ref.lower().startswith(("http://", "https://")):
        url = _normal(ref)
        found = next((i for i in edition.items if i.url in (ref, url)), None)
    elif m := _SECTION_RANK.fullmatch(ref):
        section, rank = m["section"].casefold(), int(m["rank"])
        found = next(
            (i for i in edition.items if i.section.casefold() == section and i.rank == rank),
            None,
        )
    else:
        raise InputError(
            f"{ref!r} is not a story: give an article id (42), its URL, or section and rank "
            "(News:2)"
        )
    if found is None:
        raise NotFound(
            f"no story {ref!r} in {edition.newsletter} {edition.edition_date} "
            f"(see `digest edition show {edition.newsletter} --date {edition.edition_date}`)"
        )
    return found


def _normal(url: str) -> str:
    try:
        return normalise_url(url)
    except ValueError:
        return url


def find_article(session: Session, ref: str) -> Article:
    """A stored article by id, URL or guid (for adding a story the pick missed)."""
    ref = ref.strip()
    article: Article | None = None
    if ref.isdigit():
        article = session.get(Article, int(ref))
    else:
        article = session.scalars(
            select(Article).where(
                (Article.url == _normal(ref)) | (Article.url == ref) | (Article.guid == ref)
            )
        ).first()
    if article is None:
        raise NotFound(
            f"no article {ref!r} in the store (ingest it first, or find its id with "
            "`digest articles --text WORDS`)"
        )
    return article


# --- story edits -------------------------------------------------------------------------------


def drop_story(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """Take a story out (a rebuild will not pick it again)."""
    edition = open_draft(session, newsletter, edition_date)
    item = find_item(edition, ref)
    summary = f"dropped {_title(item)} ({_where(item)})"
    remove_item(edition, item)
    return DeskResult(edition, _log(edition, "drop", summary, by=by, clock=clock, item=item))


def move_story(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    *,
    to: int | None,
    section: str | None = None,
    by: str,
    clock: Clock,
) -> DeskResult:
    """Move a story to place `to` (1 = top) of its section, or of `section`."""
    if to is None and section is None:
        raise InputError("say where: --to N (1 = top) and/or --section NAME")
    edition = open_draft(session, newsletter, edition_date)
    item = find_item(edition, ref)
    before = _where(item)
    place_item(edition, item, newsletter, section or item.section, to)
    summary = f"moved {_title(item)} from {before} to {_where(item)}"
    return DeskResult(edition, _log(edition, "move", summary, by=by, clock=clock, item=item))


def add_story(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    *,
    section: str | None = None,
    at: int | None = None,
    by: str,
    clock: Clock,
) -> DeskResult:
    """Add a stored article the pick missed, to its own section (or `section`) at place `at`
    (default: last). The story is snapshotted as the pick's stories are."""
    edition = open_draft(session, newsletter, edition_date)
    article = find_article(session, ref)
    present = next((i for i in edition.items if i.article_id == article.id), None)
    if present is not None:
        raise InputError(
            f"#{article.id} is already in the edition ({_where(present)}): use "
            f"`digest edition move {newsletter.id} {article.id} --to N`"
        )
    target = section or article.section
    if newsletter.section(target) is None:
        known = ", ".join(newsletter.section_names)
        raise InputError(
            f"#{article.id} is in section {article.section!r}, not one of {newsletter.id}'s: "
            f"pass --section (one of {known})"
        )
    item = EditionItem.snapshot(
        article, section=target, section_position=0, rank=0, score=0.0, reason=f"added by {by}"
    )
    edition.items.append(item)
    place_item(edition, item, newsletter, target, at)
    summary = f"added {_title(item)} at {_where(item)}"
    return DeskResult(edition, _log(edition, "add", summary, by=by, clock=clock, item=item))


def pin_story(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    *,
    at: int | None = 1,
    pinned: bool = True,
    by: str,
    clock: Clock,
) -> DeskResult:
    """Pin a story at place `at` of its section (default the top): a rebuild keeps it there.
    pinned=False unpins it (it stays where it is)."""
    edition = open_draft(session, newsletter, edition_date)
    item = find_item(edition, ref)
    if not pinned:
        item.pinned = False
        summary = f"unpinned {_title(item)} ({_where(item)})"
        return DeskResult(edition, _log(edition, "unpin", summary, by=by, clock=clock, item=item))
    place_item(edition, item, newsletter, item.section, at)
    item.pinned = True
    summary = f"pinned {_title(item)} at {_where(item)}"
    return DeskResult(edition, _log(edition, "pin", summary, by=by, clock=clock, item=item))


def set_headline(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    text: str | None,
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """The story's headline in this email (None: the stored one again)."""
    return _story_text(session, newsletter, edition_date, ref, "headline", text, by, clock)


def set_blurb(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    text: str | None,
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """The story's blurb (dek) in this email; "" shows none, None the stored one again."""
    return _story_text(session, newsletter, edition_date, ref, "blurb", text, by, clock)


def _story_text(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    ref: str,
    field: str,
    text: str | None,
    by: str,
    clock: Clock,
) -> DeskResult:
    edition = open_draft(session, newsletter, edition_date)
    item = find_item(edition, ref)
    headline = field == "headline"
    value = _text(text, field, HEADLINE_MAX if headline else BLURB_MAX, allow_empty=not headline)
    old = _title(item)
    setattr(item, field, value)
    stored = item.title if headline else item.dek
    shown = repr(value) if value else "none" if value == "" else f"the stored {stored!r}"
    summary = f"{field} of {old} ({_where(item)}) is now {shown}"
    return DeskResult(
        edition, _log(edition, field, summary, by=by, clock=clock, item=item, value=value)
    )


def _text(text: str | None, what: str, limit: int, *, allow_empty: bool) -> str | None:
    if text is None:
        return None
    value = shown_line(text)
    if not value and not allow_empty:
        raise InputError(f"the {what} is empty (use --clear to show the stored one)")
    if len(value) > limit:
        raise InputError(f"the {what} is {len(value)} characters; at most {limit}")
    return value


# --- edition-wide edits ------------------------------------------------------------------------


def set_note(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    markdown: str | None,
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """The editor's note above the stories (short Markdown: paragraphs, links, emphasis);
    None or blank removes it."""
    edition = open_draft(session, newsletter, edition_date)
    value = clean_text(markdown.replace("\r\n", "\n")).strip() if markdown else ""
    if len(value) > NOTE_MAX:
        raise InputError(f"the note is {len(value)} characters; at most {NOTE_MAX}")
    edition.note = value or None
    words = len(value.split())
    summary = f"note set ({words} words)" if value else "note removed"
    return DeskResult(edition, _log(edition, "note", summary, by=by, clock=clock, value=value))


def set_wording(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    field: str,
    text: str | None,
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """This edition's `subject` or `preheader` (fields {title} {lead} {date} {headlines} as
    in the config); None returns to the newsletter's."""
    if field not in ("subject", "preheader"):
        raise ValueError(field)
    edition = open_draft(session, newsletter, edition_date)
    value = _text(text, field, SUBJECT_MAX, allow_empty=False)
    if value is not None:
        check_subject_fields(value, f"the {field}")
    setattr(edition, field, value)
    configured = getattr(newsletter, field)
    summary = f"{field} is now {value!r}" if value else f"{field} back to {configured!r}"
    return DeskResult(edition, _log(edition, field, summary, by=by, clock=clock, value=value))


AB_SUBJECTS = (2, 4)


def _ab_subject(raw: str, n: int) -> str:
    """One A/B subject, checked: one line, not blank, at most SUBJECT_MAX characters."""
    problem = line_problem(raw)
    if problem is not None:
        raise InputError(f"A/B subject {n} {problem}: a subject is one line of text")
    value = shown_line(raw)
    if not value:
        raise InputError(f"A/B subject {n} is empty")
    if len(value) > SUBJECT_MAX:
        raise InputError(f"A/B subject {n} is {len(value)} characters; at most {SUBJECT_MAX}")
    check_subject_fields(value, f"A/B subject {n}")
    return value


def check_ab_subjects(subjects: Sequence[str]) -> list[str]:
    """Two to four A/B subjects as they will be sent, each checked; InputError (one line)
    names the first problem."""
    values = [_ab_subject(raw, n) for n, raw in enumerate(subjects, 1)]
    low, high = AB_SUBJECTS
    if not low <= len(values) <= high:
        raise InputError(f"give {low} to {high} A/B subjects, not {len(values)}")
    folded = [v.casefold() for v in values]
    for n, v in enumerate(folded, 1):
        if v in folded[: n - 1]:
            raise InputError(f"A/B subject {n} repeats subject {folded.index(v) + 1}")
    return values


def set_ab_subjects(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    subjects: Sequence[str],
    *,
    by: str,
    clock: Clock,
) -> DeskResult:
    """Two to four subjects this edition's A/B test sends (digest.abtest), in place of the
    config's [ab_test] subjects (its sample, wait and minimum still apply); none clears them.
    They freeze with the edition."""
    edition = open_draft(session, newsletter, edition_date)
    values = check_ab_subjects(subjects) if subjects else []
    if values and not newsletter.track_clicks:
        raise InputError(
            f"A/B subjects pick their winner by clicks: set track_clicks = true for "
            f"newsletter {newsletter.id}"
        )
    edition.ab_subjects = json.dumps(values) if values else None
    summary = (
        "A/B subjects " + " | ".join(repr(v) for v in values)
        if values
        else "A/B subjects removed"
        + (" (the config's apply)" if newsletter.ab_test is not None else "")
    )
    return DeskResult(
        edition,
        _log(edition, "ab_subjects", summary, by=by, clock=clock, value=edition.ab_subjects),
    )


# --- approval ----------------------------------------------------------------------------------


def approve(
    session: Session,
    newsletter: NewsletterConfig,
    edition_date: date,
    *,
    by: str,
    clock: Clock,
    withdraw: bool = False,
) -> DeskResult:
    """Sign the draft off as it is now (or withdraw the sign-off). With `approvers` in the
    config, only they may approve."""
    edition = open_draft(session, newsletter, edition_date)
    if withdraw:
        if not edition.approved_by:
            return DeskResult(edition, f"{newsletter.id} {edition_date}: not approved")
        summary = f"approval by {edition.approved_by} withdrawn"
        edition.approved_by = edition.approved_at = None
        return DeskResult(edition, _log(edition, "withdraw", summary, by=by, clock=clock))
    allowed = {a.casefold() for a in newsletter.approvers}
    if allowed and by.casefold() not in allowed:
        raise InputError(
            f"{by} may not approve {newsletter.id}: approvers are {', '.join(newsletter.approvers)}"
        )
    if edition.approved_by:
        return DeskResult(
            edition, f"{newsletter.id} {edition_date}: already {approval_text(edition)}"
        )
    edition.approved_by = by
    edition.approved_at = clock()
    summary = f"approved ({len(edition.items)} stories)"
    return DeskResult(edition, _log(edition, "approve", summary, by=by, clock=clock))


def approval_hold(newsletter: NewsletterConfig, edition: Edition) -> str | None:
    """Why an unattended send must wait for a person, or None."""
    if newsletter.approval != "required" or edition.approved_by or edition.frozen:
        return None
    who = (
        f"one of {', '.join(newsletter.approvers)}"
        if len(newsletter.approvers) > 1
        else newsletter.approvers[0]
        if newsletter.approvers
        else "an editor"
    )
    return (
        f"waiting for approval: {who} must approve it with `digest edition approve "
        f"{newsletter.id} --date {edition.edition_date} --by NAME`"
    )
