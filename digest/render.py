"""Render an edition as email: once per variant, then personalise per recipient cheaply.

A variant is the layout a group of subscribers shares: which sections, in which order, and which
segment blocks (notes from the config shown to members of a segment). Each
variant is rendered with Jinja2 and CSS-inlined with premailer exactly once (premailer costs
milliseconds; a send has up to 100,000 recipients). The rendered HTML and text carry placeholders
for the per-recipient parts (first name, email, unsubscribe, preferences and view-in-browser
links). The placeholders contain a random nonce chosen per Renderer, so article text, which is
written before the nonce exists, cannot produce or break one. personalise() fills them with a
precomputed split, no parsing and no regex per recipient.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup

from digest import i18n
from digest.brand import Brand
from digest.config import Config, LogoConfig, NewsletterConfig
from digest.editions import Edition, EditionItem
from digest.errors import EmailTooLarge, RenderError
from digest.i18n import N_, Language
from digest.inline import inline_css
from digest.links import (
    SUBJECT_FIELDS,
    Links,
    add_utm,
    archive_url,
    check_subject_fields,
    format_fields,
    personal_links,
    safe_url,
)
from digest.notes import Note, render_note
from digest.personalise import (
    FIRST_NAME_MAX,
    NAME_FALLBACK,
    SIZE_LIMIT_BYTES,
    SIZE_WARN_BYTES,
    SLOTS,
    Personal,
    Personalised,
    RenderedVariant,
    SizeCheck,
    check_size,
    first_name,
    personal_values,
    personalise,
    slot_placeholder,
)
from digest.plaintext import TEXT_WIDTH, display_width, rtl_line, text_direction, truncate, wrap
from digest.templating import render_template as render_template
from digest.templating import template_environment as template_environment
from digest.text import clean_text, shown_line
from digest.tracking import LinkMap

# The names other modules import from here: rendering is one door, whatever room does the job.
__all__ = [
    "FIRST_NAME_MAX",
    "HTML_TEMPLATE",
    "NAME_FALLBACK",
    "SIZE_LIMIT_BYTES",
    "SIZE_WARN_BYTES",
    "SLOTS",
    "TEXT_TEMPLATE",
    "TEXT_WIDTH",
    "EmailTooLarge",
    "Links",
    "Personal",
    "Personalised",
    "RenderError",
    "RenderedVariant",
    "Renderer",
    "SizeCheck",
    "add_utm",
    "archive_url",
    "check_size",
    "check_subject_fields",
    "clean_text",
    "display_width",
    "first_name",
    "inline_css",
    "long_date",
    "personal_links",
    "personal_values",
    "personalise",
    "render_template",
    "rtl_line",
    "story_time",
    "template_environment",
    "text_direction",
    "truncate",
    "wrap",
]

log = logging.getLogger(__name__)

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
SUBJECT_MAX = 90
PREHEADER_MAX = 140
IN_BRIEF_MAX = 5
ENGLISH = i18n.parse_language("en")
# Stories of a section after its first: this many in a row of cards, the rest in a list.
ROW_SIZE = 2
_INTRO = N_("Here is what you need to know today.")
_LEARN_MORE = N_("Learn more")


# --- dates and greetings ---------------------------------------------------------------------


def long_date(d: date, language: Language = ENGLISH) -> str:
    return i18n.long_date(d, language)


def story_time(published_at: datetime, newsletter: NewsletterConfig, edition_date: date) -> str:
    """In the newsletter's time zone and language: '7:15 a.m. EDT' (AP style in English),
    'March 9, 11:40 p.m. EDT', '07:15 MEZ'."""
    return i18n.story_time(published_at.astimezone(newsletter.tz), edition_date, newsletter.lang)


def _daypart(newsletter: NewsletterConfig) -> str:
    hour = newsletter.send_time.hour
    return "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"


_GREETINGS = {
    "morning": N_("Good morning"),
    "afternoon": N_("Good afternoon"),
    "evening": N_("Good evening"),
}


# --- rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Story:
    title: str
    url: str
    dek: str
    meta: str
    image_url: str
    image_alt: str
    lead: bool
    dir: str = "ltr"  # the direction its title and dek read in (text_direction)


@dataclass(frozen=True)
class _Block:
    title: str
    text: str
    url: str
    link_text: str
    dir: str = "ltr"


@dataclass(frozen=True)
class _Section:
    """A section's stories, and the same stories as the layout shows them: the first one
    featured (the edition's lead with a wide photo, others with a thumbnail), the next ROW_SIZE
    as a row of cards, the rest as a compact list. A section of two has no row."""

    name: str
    stories: tuple[_Story, ...]

    @property
    def feature(self) -> _Story | None:
        return self.stories[0] if self.stories else None

    @property
    def row(self) -> tuple[_Story, ...]:
        return self.stories[1 : 1 + ROW_SIZE] if len(self.stories) > ROW_SIZE else ()

    @property
    def rest(self) -> tuple[_Story, ...]:
        return self.stories[1 + len(self.row) :]


@dataclass(frozen=True)
class _NoteView:
    html: Markup
    text: str  # wrapped for the text twin


# What names a variant: (sections, blocks, article ids left out; digest.same_day).
Layout = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]


class Renderer:
    """Renders one edition; each distinct variant is rendered and inlined once and cached."""

    def __init__(
        self,
        config: Config,
        newsletter: NewsletterConfig,
        edition: Edition,
        *,
        templates_dir: Path | None = None,
        tracking: LinkMap | None = None,
        subject: str | None = None,
    ) -> None:
        self.config = config
        # Content links go through /r/ when set (never in the archive: it has no reader).
        self.tracking = tracking
        self._tracking_now: LinkMap | None = None
        self.subject_override = subject  # an A/B arm's subject (digest.abtest)
        self.newsletter = newsletter
        self.edition = edition
        self.nonce = secrets.token_hex(8)
        self.language = newsletter.lang
        self.translations = i18n.translations(self.language, config.locales_dir)
        self.env = template_environment(templates_dir or config.templates_dir, self.translations)
        self.brand = Brand.of(newsletter.brand_color)
        self._sections = _edition_sections(edition)
        self._cache: dict[tuple[Layout, bool], RenderedVariant] = {}
        self._requested: dict[Layout, RenderedVariant] = {}

    @property
    def edition_sections(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._sections)

    def resolve(self, sections: Iterable[str]) -> tuple[str, ...]:
        """The sections a reader asking for `sections` gets, in their order: unknown or empty
        ones dropped, and the whole edition when nothing is left (or nothing was asked)."""
        have = {name.casefold(): name for name, _ in self._sections}
        out: list[str] = []
        for s in sections:
            name = have.get(s.casefold())
            if name is not None and name not in out:
                out.append(name)
        return tuple(out) or self.edition_sections

    def resolve_blocks(self, blocks: Iterable[int]) -> tuple[int, ...]:
        """The newsletter's blocks among `blocks`, in config order (a row written before the
        config lost a block keeps the rest)."""
        wanted = set(blocks)
        return tuple(i for i in range(len(self.newsletter.blocks)) if i in wanted)

    def leave_out(
        self, sections: tuple[str, ...], skip: Iterable[int]
    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        return leave_out(self._sections, sections, skip)

    def variant(
        self, sections: tuple[str, ...], blocks: tuple[int, ...] = (), skip: tuple[int, ...] = ()
    ) -> RenderedVariant:
        """A reader's variant: sections, blocks, less the stories `skip` (see leave_out)."""
        # Looked up per recipient: remember what each request resolved to.
        found = self._requested.get((sections, blocks, skip))
        if found is None:
            shown, left_out = self.leave_out(self.resolve(sections), skip)
            if not shown and skip:  # left out by the same-day rule (an empty edition renders)
                raise ValueError("every story is left out: the reader has nothing to get")
            layout = (shown, self.resolve_blocks(blocks), left_out)
            found = self._requested[(sections, blocks, skip)] = self._render(layout, archive=False)
        return found

    def forget_variants(self) -> None:
        """Drop the rendered variants so the next request renders afresh (previews, benchmarks)."""
        self._cache.clear()
        self._requested.clear()

    def archive(self) -> Personalised:
        """The web-archive version: the whole edition, no personal data, no personal links."""
        url = archive_url(self.config, self.newsletter, self.edition)
        variant = self._render((self.edition_sections, (), ()), archive=True)
        return personalise(variant, Personal("", None, url, url, url))

    def _render(self, layout: Layout, *, archive: bool) -> RenderedVariant:
        cached = self._cache.get((layout, archive))
        if cached is not None:
            return cached
        sections, blocks, skip = layout
        self._tracking_now = None if archive else self.tracking
        try:
            context = self._context(layout, archive)
        finally:
            self._tracking_now = None
        html_doc = render_template(self.env, HTML_TEMPLATE, context)
        text_doc = render_template(self.env, TEXT_TEMPLATE, context)
        inlined = _inlined(html_doc, self.nonce)
        text = _tidy_text(text_doc)
        if self.language.rtl:
            text = "\n".join(
                line if line.lstrip().startswith(("http://", "https://")) else rtl_line(line)
                for line in text.split("\n")
            )
        variant = RenderedVariant(
            key="archive" if archive else _variant_key(sections, blocks, skip),
            sections=sections,
            subject=context["subject"],
            preheader=context["preheader"],
            html=inlined,
            text=text,
            nonce=self.nonce,
            blocks=blocks,
            name_fallback=self.translations.gettext(NAME_FALLBACK),
            tracked=slot_placeholder(self.nonce, "click") in inlined,
            skip=skip,
        )
        self._cache[(layout, archive)] = variant
        return variant

    def _context(self, layout: Layout, archive: bool) -> dict[str, Any]:
        nl, day = self.newsletter, self.edition.edition_date
        sections, blocks, left_out = layout
        skip = frozenset(left_out)
        by_name = dict(self._sections)
        out: list[_Section] = []
        for name in sections:
            items = [item for item in by_name[name] if item.article_id not in skip]
            stories = tuple(
                _story(
                    item, self.link(item.url), nl, day, self.language.dir, lead=not out and i == 0
                )
                for i, item in enumerate(items)
            )
            out.append(_Section(name, stories))
        subject, preheader = _subject_and_preheader(
            nl, self.edition, self.language, out, self.subject_override
        )
        slot = {s: Markup(slot_placeholder(self.nonce, s)) for s in SLOTS}
        count = sum(len(s.stories) for s in out)
        lang, gettext_ = self.language, self.translations.gettext
        return {
            "newsletter": nl,
            "edition_date": self.edition.edition_date,
            "date_long": long_date(self.edition.edition_date, lang),
            "daypart": _daypart(nl),
            "greeting": gettext_(_GREETINGS[_daypart(nl)]),
            "intro": gettext_(_INTRO) if count else "",
            "preheader": preheader,
            "subject": subject,
            "sections": out,
            "in_brief": _in_brief(out) if nl.in_brief else [],
            "note": self._note(),
            "top_blocks": self._blocks(blocks, "top"),
            "bottom_blocks": self._blocks(blocks, "bottom"),
            "count_label": self.translations.ngettext("%(num)s story", "%(num)s stories", count)
            % {"num": i18n.number(count, lang)}
            if count
            else "",
            "site": self.config.site,
            "slot": slot,
            "archive": archive,
            "lang": lang.tag,
            "dir": lang.dir,
            "rtl": lang.rtl,
            "start": lang.start,
            "end": lang.end,
            "brand": self.brand,
            "logo": _logo(nl.logo),
        }

    def link(self, url: str | None) -> str:
        """Every link of the email's content (stories, the editor's note, blocks) is built
        here: http(s) only, with the newsletter's UTM parameters."""
        nl = self.newsletter
        target = add_utm(safe_url(url), nl.utm, nl.id, self.edition.edition_date)
        if self._tracking_now is not None and target:
            return self._tracking_now.wrap(target, slot_placeholder(self.nonce, "click"))
        return target

    def _note(self) -> _NoteView | None:
        if not self.edition.note:
            return None
        note: Note = render_note(clean_text(self.edition.note), self.link)
        if not note.paragraphs:
            return None
        return _NoteView(note.html, "\n\n".join(wrap(p) for p in note.paragraphs))

    def _blocks(self, blocks: tuple[int, ...], position: str) -> list[_Block]:
        nl = self.newsletter
        return [
            _Block(
                title=shown_line(b.title),
                text=shown_line(b.text),
                url=self.link(b.link),
                link_text=shown_line(b.link_text or self.translations.gettext(_LEARN_MORE)),
                dir=text_direction(f"{b.title} {b.text}", self.language.dir),
            )
            for b in (nl.blocks[i] for i in blocks)
            if b.position == position
        ]


def _story(
    item: EditionItem,
    url: str,
    nl: NewsletterConfig,
    edition_date: date,
    base_dir: str,
    *,
    lead: bool,
) -> _Story:
    meta = " · ".join(
        p
        for p in (
            *_credit(shown_line(item.byline or ""), shown_line(item.source or ""), nl),
            story_time(item.published_at, nl, edition_date),
        )
        if p
    )
    title, dek = shown_line(item.shown_title), shown_line(item.shown_dek or "")
    return _Story(
        title=title,
        url=url,
        dek=dek,
        meta=meta,
        image_url=safe_url(item.image_url),
        image_alt=shown_line(item.image_alt or ""),
        lead=lead,
        dir=text_direction(f"{title} {dek}", base_dir),
    )


def _inlined(html_doc: str, nonce: str) -> str:
    """The HTML with its CSS inlined; RenderError if inlining touched a placeholder."""
    inlined = inline_css(html_doc)
    for slot in SLOTS:
        if inlined.count(slot_placeholder(nonce, slot)) != html_doc.count(
            slot_placeholder(nonce, slot)
        ):
            raise RenderError(
                f"{HTML_TEMPLATE}: slot.{slot} was altered by CSS inlining; use it only in "
                "text or as a whole href value"
            )
    return inlined


def leave_out(
    edition_sections: list[tuple[str, list[EditionItem]]],
    sections: tuple[str, ...],
    skip: Iterable[int],
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The (resolved) sections that keep a story once the article ids `skip` are left out,
    and the ids of `skip` those sections hold, sorted. A section left with no story is not
    shown; none left means the reader has nothing new in this edition (digest.same_day)."""
    wanted = set(skip)
    if not wanted:
        return sections, ()
    by_name = dict(edition_sections)
    kept: list[str] = []
    out: list[int] = []
    for name in sections:
        ids = [item.article_id for item in by_name[name]]
        gone = [a for a in ids if a in wanted]
        if len(gone) < len(ids):
            kept.append(name)
            out += gone
    return tuple(kept), tuple(sorted(out))


def _variant_key(
    sections: tuple[str, ...], blocks: tuple[int, ...], skip: tuple[int, ...] = ()
) -> str:
    identity = "\x1f".join(sections)
    if blocks:
        # Without blocks the key stays what it was before blocks existed.
        identity += "\x1e" + ",".join(map(str, blocks))
    if skip:  # stories left out (digest.same_day); without, the key is unchanged
        identity += "\x1d" + ",".join(map(str, skip))
    return "v-" + hashlib.sha1(identity.encode()).hexdigest()[:10]


def _edition_sections(edition: Edition) -> list[tuple[str, list[EditionItem]]]:
    """The edition's items grouped by section, in the edition's order."""
    items = sorted(edition.items, key=lambda i: (i.section_position, i.rank))
    out: list[tuple[str, list[EditionItem]]] = []
    for item in items:
        if not out or out[-1][0] != item.section:
            out.append((item.section, []))
        out[-1][1].append(item)
    return out


def _subject_and_preheader(
    nl: NewsletterConfig,
    edition: Edition,
    language: Language,
    sections: list[_Section],
    override: str | None = None,
) -> tuple[str, str]:
    """The variant's subject and preheader: the editor's wording for this edition, else the
    newsletter's, filled and cut to SUBJECT_MAX / PREHEADER_MAX."""
    tops = [s.stories[0].title for s in sections if s.stories]
    lead = tops[0] if tops else ""
    shown_lead = "{lead}" in (override or edition.subject or nl.subject)
    values = {
        "title": shown_line(nl.title),
        "lead": lead,
        "date": i18n.short_date(edition.edition_date, language),
        "headlines": " · ".join(tops[1:] if shown_lead and len(tops) > 1 else tops),
    }
    where = f"newsletters.{nl.id}"
    # The editor's per-edition wording, checked when it was set (digest.desk).
    subject_t, subject_w = (
        (override, "A/B subject")
        if override
        else (edition.subject, "edition subject")
        if edition.subject
        else (nl.subject, f"{where}.subject")
    )
    pre_t, pre_w = (
        (edition.preheader, "edition preheader")
        if edition.preheader
        else (nl.preheader, f"{where}.preheader")
    )
    subject = format_fields(subject_t, SUBJECT_FIELDS, subject_w, **values)
    pre = format_fields(pre_t, SUBJECT_FIELDS, pre_w, **values)
    subject, pre = truncate(subject, SUBJECT_MAX), truncate(pre, PREHEADER_MAX)
    if language.rtl:
        subject, pre = rtl_line(subject), rtl_line(pre)
    return subject, pre


def _words(name: str) -> tuple[str, ...]:
    words = re.findall(r"\w+", name.casefold())
    return tuple(words[1:] if words[:1] == ["the"] else words)


def _within(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    """`short` appears in `long` as whole consecutive words ('AP' is not inside 'Tampa')."""
    n = len(short)
    return n > 0 and any(long[i : i + n] == short for i in range(len(long) - n + 1))


def _credit(byline: str, source: str, newsletter: NewsletterConfig) -> tuple[str, str]:
    """Byline and source, each shown once: a source the byline already names ('NewsFinale
    Journal' / 'NewsFinale') or that is the newsletter's own publisher is left out."""
    words = _words(source)
    house = (_words(newsletter.from_name), _words(newsletter.title))
    if _within(words, _words(byline)) or any(words == h for h in house):
        source = ""
    elif byline and _within(_words(byline), words):
        byline = ""
    return byline, source


def _in_brief(sections: list[_Section]) -> list[_Story]:
    """The top headlines: each section's first story, then each one's second..., at most
    IN_BRIEF_MAX."""
    out: list[_Story] = []
    depth = max((len(s.stories) for s in sections), default=0)
    for rank in range(depth):
        out += [s.stories[rank] for s in sections if rank < len(s.stories)]
    return out[:IN_BRIEF_MAX]


@dataclass(frozen=True)
class _Logo:
    url: str
    width: int
    height: int | None
    alt: str


def _logo(logo: LogoConfig | None) -> _Logo | None:
    if logo is None:
        return None
    return _Logo(safe_url(logo.url), logo.width, logo.height, shown_line(logo.alt))


def _tidy_text(text: str) -> str:
    """Collapse the blank-line runs templates leave and end with one newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"
