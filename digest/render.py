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

import gettext
import hashlib
import html
import logging
import re
import secrets
import string
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import jinja2
from markupsafe import Markup

from digest import i18n
from digest.brand import Brand
from digest.config import Config, LogoConfig, NewsletterConfig, UtmConfig
from digest.editions import Edition, EditionItem
from digest.errors import ConfigError, DigestError, InputError
from digest.i18n import N_, Language
from digest.notes import Note, render_note
from digest.text import UNSHOWN, clean_text, shown_line
from subscribers.tokens import make_tokens, site_secret

if TYPE_CHECKING:
    from subscribers.audience import Recipient

log = logging.getLogger(__name__)

HTML_TEMPLATE = "digest.html"
TEXT_TEMPLATE = "digest.txt"
TEXT_WIDTH = 78
SUBJECT_MAX = 90
PREHEADER_MAX = 140
FIRST_NAME_MAX = 40
NAME_FALLBACK = N_("reader")  # translated per newsletter (RenderedVariant.name_fallback)
# Gmail clips HTML beyond about 102 KB; warn well before that.
SIZE_WARN_BYTES = 90 * 1024
SIZE_LIMIT_BYTES = 102 * 1024
# Allowance per placeholder when sizing a variant before the real values are known.
_SLOT_ALLOWANCE = 320

SLOTS = ("first_name", "email", "unsubscribe_url", "preferences_url", "view_url")
_LINK_PURPOSES = ("unsubscribe", "preferences")
_SUBJECT_FIELDS = frozenset({"title", "lead", "date", "headlines"})
_UTM_FIELDS = frozenset({"newsletter", "date"})
IN_BRIEF_MAX = 5
ENGLISH = i18n.parse_language("en")
# Stories of a section after its first: this many in a row of cards, the rest in a list.
ROW_SIZE = 2
_RLM = "\u200f"
_INTRO = N_("Here is what you need to know today.")
_LEARN_MORE = N_("Learn more")
# C0/C1 controls (except tab and newline) and bidi overrides that could reorder surrounding
# markup text; C1 characters also make Gmail clip a message.
_ESCAPED = re.compile("[&<>\"']").search  # what html.escape(quote=True) replaces


class RenderError(DigestError):
    """A template is missing or broken, or the rendered email cannot be used."""


class EmailTooLarge(DigestError):
    """The HTML of a variant is above the size where Gmail clips it."""


@dataclass(frozen=True)
class RenderedVariant:
    """One variant of an edition, inlined and ready to personalise.

    html and text contain placeholders `%%dg<nonce>.<slot>%%`; personalise() fills them.
    name_fallback is what slot.first_name shows for a reader without a name, in the
    newsletter's language.
    """

    key: str
    sections: tuple[str, ...]
    subject: str
    preheader: str
    html: str
    text: str
    nonce: str = ""
    blocks: tuple[int, ...] = ()  # indexes into the newsletter's blocks
    name_fallback: str = NAME_FALLBACK
    _html_fill: _Fill = field(init=False, repr=False, compare=False)
    _text_fill: _Fill = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_html_fill", _Fill.parse(self.html, self.nonce))
        object.__setattr__(self, "_text_fill", _Fill.parse(self.text, self.nonce))

    def placeholder(self, slot: str) -> str:
        return _placeholder(self.nonce, slot)


@dataclass(frozen=True)
class Personal:
    email: str
    name: str | None
    unsubscribe_url: str
    preferences_url: str
    view_url: str


@dataclass(frozen=True)
class Personalised:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class SizeCheck:
    """Size of a variant's HTML as sent (UTF-8, placeholders counted at a generous allowance)."""

    bytes: int
    warning: str | None


@dataclass(frozen=True)
class _Fill:
    """A document split at its placeholders, so filling it is one join."""

    parts: tuple[str, ...]
    pick: Callable[[tuple[str, ...]], tuple[str, ...]] | None

    @classmethod
    def parse(cls, document: str, nonce: str) -> _Fill:
        if not nonce:
            return cls((document,), None)
        prefix = f"%%dg{nonce}."
        chunks = document.split(prefix)
        parts = [chunks[0]]
        order: list[int] = [0]
        for chunk in chunks[1:]:
            slot, sep, rest = chunk.partition("%%")
            if not sep or slot not in SLOTS:
                raise RenderError(f"rendered email has a broken placeholder near {chunk[:40]!r}")
            # Values are appended after the static parts: index = len(parts) + slot index,
            # resolved once the number of parts is known.
            order.append(-1 - SLOTS.index(slot))
            parts.append(rest)
            order.append(len(parts) - 1)
        n = len(parts)
        indices = [i if i >= 0 else n + (-1 - i) for i in order]
        return cls(tuple(parts), itemgetter(*indices) if len(indices) > 1 else None)

    def fill(self, values: tuple[str, ...]) -> str:
        if self.pick is None:
            return self.parts[0]
        return "".join(self.pick(self.parts + values))


def _placeholder(nonce: str, slot: str) -> str:
    return f"%%dg{nonce}.{slot}%%"


# --- templates -----------------------------------------------------------------------------


def _shipped_loader() -> jinja2.BaseLoader:
    try:
        return jinja2.PackageLoader("digest.templates", ".")
    except (ModuleNotFoundError, ValueError):
        # A checkout that is not installed: templates/ sits next to digest/.
        return jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates")


def template_environment(
    templates_dir: Path | None = None, translations: gettext.NullTranslations | None = None
) -> jinja2.Environment:
    """Jinja2 environment: files in templates_dir override the shipped templates one by one.
    Templates translate their fixed strings with `_()` / `ngettext()` (Jinja2's i18n extension,
    new style: `_("Hello %(name)s", name=x)` escapes `x`, never the translation's markup)."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(_shipped_loader())
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(  # type: ignore[attr-defined]
        translations or gettext.NullTranslations(), newstyle=True
    )
    env.filters["wrap"] = wrap
    env.filters["width"] = display_width
    return env


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    """Render one template; any mistake in it (syntax, an undefined name, a missing include,
    an error in an expression) is one RenderError naming the template file and line."""
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as e:
        where = e.filename or e.name or name
        raise RenderError(f"template {where}, line {e.lineno}: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        if e.name == name:
            raise RenderError(f"template {name} not found") from None
        raise RenderError(
            f"template {_template_line(e) or name}: includes {e.name!r}, which is not found"
        ) from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as e:
        line = _template_line(e)
        if line is None and not isinstance(e, jinja2.TemplateError):
            raise  # not the template's mistake
        message = e.message if isinstance(e, jinja2.TemplateError) and e.message else str(e)
        raise RenderError(f"template {line or name}: {message or type(e).__name__}") from None


def _template_line(error: BaseException) -> str | None:
    """'FILE, line N' of the innermost template frame of the error (Jinja2 rewrites its
    tracebacks so template code reports the template's own file and line)."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.endswith(".py") and not filename.startswith("<"):
            found = f"{filename}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _finalize(value: Any) -> Any:
    # Every value printed by a template passes here before escaping.
    if isinstance(value, str) and not isinstance(value, Markup):
        return clean_text(value)
    return value


# --- text helpers --------------------------------------------------------------------------


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or ch in "\u200b\u200c\u200d\u200e\u200f\ufe0e\ufe0f":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns `text` takes (wide East Asian characters and emoji count two)."""
    return sum(_char_width(ch) for ch in text)


def wrap(
    text: str, width: int = TEXT_WIDTH, indent: str = "", subsequent: str | None = None
) -> str:
    """Greedy word wrap by terminal columns. A word longer than a line (a URL) gets its own line."""
    subsequent = indent if subsequent is None else subsequent
    lines: list[str] = []
    current = indent
    current_w = display_width(indent)
    empty = True
    for word in shown_line(text).split(" "):
        if not word:
            continue
        w = display_width(word)
        if not empty and current_w + 1 + w > width:
            lines.append(current)
            current, current_w, empty = subsequent, display_width(subsequent), True
        if empty:
            current += word
            current_w += w
            empty = False
        else:
            current += " " + word
            current_w += 1 + w
    if not empty:
        lines.append(current)
    return "\n".join(lines)


def truncate(text: str, limit: int) -> str:
    """Shorten to `limit` characters at a word boundary with an ellipsis, never splitting an
    emoji sequence or a letter from its combining marks."""
    text = shown_line(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    # Back off while the cut lands inside a grapheme (ZWJ sequences, modifiers, marks).
    while cut and (
        _joins(text[len(cut)]) or _joins(cut[-1]) or unicodedata.combining(text[len(cut)])
    ):
        cut = cut[:-1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:·-–—") + "…"


def _joins(ch: str) -> bool:
    return ch in "\u200d\ufe0e\ufe0f" or "\U0001f3fb" <= ch <= "\U0001f3ff"


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


def _first_strong_is_ltr(text: str) -> bool:
    """UAX #9 rule P2: the first strong character sets a paragraph's direction."""
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind == "L":
            return True
        if kind in ("R", "AL"):
            return False
    return False


def text_direction(text: str, default: str) -> str:
    """'rtl' or 'ltr', by the majority of strong characters: a headline that opens with a Latin
    name but is Arabic ('iPhone وسواه: ...') reads right to left, which dir="auto" (first
    strong character) gets wrong. `default` when there is nothing to count."""
    ltr = rtl = 0
    for ch in text:
        kind = unicodedata.bidirectional(ch)
        if kind == "L":
            ltr += 1
        elif kind in ("R", "AL"):
            rtl += 1
    return default if ltr == rtl else "rtl" if rtl > ltr else "ltr"


def rtl_line(text: str) -> str:
    """A line of a right-to-left edition that would be shown left to right because it begins
    with a Latin word (a brand, a number with a unit) gets a RIGHT-TO-LEFT MARK in front."""
    return _RLM + text if _first_strong_is_ltr(text) else text


# --- links ---------------------------------------------------------------------------------


def _format_fields(template: str, allowed: frozenset[str], where: str, **values: str) -> str:
    names: list[str] = []
    try:
        for _, name, spec, conv in string.Formatter().parse(template):
            if name is None:
                continue
            if name not in allowed or spec or conv:
                raise ConfigError(
                    f"{where}: unknown field {{{name}}} (use {', '.join(sorted(allowed))})"
                )
            names.append(name)
    except ValueError as e:
        raise ConfigError(f"{where}: {e} (write {{{{ and }}}} for literal braces)") from None
    return template.format(**{n: values[n] for n in names})


def check_subject_fields(template: str, what: str) -> None:
    """InputError when a subject or preheader uses a field other than {title}, {lead}, {date}
    and {headlines} (or unbalanced braces): caught when the editor sets it, not at the send."""
    try:
        _format_fields(template, _SUBJECT_FIELDS, what, **dict.fromkeys(_SUBJECT_FIELDS, ""))
    except ConfigError as e:
        raise InputError(str(e)) from None


def add_utm(url: str, utm: UtmConfig | None, newsletter_id: str, edition_date: date) -> str:
    """Add utm_source/medium/campaign to an http(s) link, replacing only those keys and keeping
    the rest of the query string (as written) and the fragment."""
    if utm is None or not url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return url
    where = f"newsletters.{newsletter_id}.utm"
    values = {"newsletter": newsletter_id, "date": edition_date.isoformat()}
    ours = {
        "utm_source": _format_fields(utm.source, _UTM_FIELDS, f"{where}.source", **values),
        "utm_medium": _format_fields(utm.medium, _UTM_FIELDS, f"{where}.medium", **values),
        "utm_campaign": _format_fields(utm.campaign, _UTM_FIELDS, f"{where}.campaign", **values),
    }
    kept = [
        p for p in parts.query.split("&") if p and unquote(p.split("=", 1)[0]).strip() not in ours
    ]
    kept += [f"{k}={quote(v, safe='')}" for k, v in ours.items() if v]
    return urlunsplit(parts._replace(query="&".join(kept)))


def _safe_url(url: str | None) -> str:
    """Only http(s) links reach the email (no javascript:, data: ...)."""
    url = (url or "").strip()
    if urlsplit(url).scheme not in ("http", "https") or UNSHOWN.search(url):
        return ""
    # Percent-encode what a URL may not hold raw (quotes, spaces, <>), keep what it may.
    return quote(url, safe="!#$%&()*+,-./:;=?@[]_~")


def archive_url(config: Config, newsletter: NewsletterConfig, edition: Edition) -> str:
    return f"{config.site.base_url}/archive/{newsletter.id}/{edition.edition_date.isoformat()}"


class Links:
    """Signed links for an edition's readers; the secret and base URLs are looked up once,
    since a send signs links for every recipient."""

    def __init__(self, config: Config, newsletter: NewsletterConfig, edition: Edition) -> None:
        self._secret = site_secret(config)
        self._base = config.site.base_url
        self._newsletter = newsletter.id
        self.view_url = archive_url(config, newsletter, edition)

    def urls(self, subscriber_id: int) -> tuple[str, str]:
        """(unsubscribe URL, preferences URL) of one subscriber."""
        unsubscribe, preferences = make_tokens(
            self._secret, subscriber_id, self._newsletter, _LINK_PURPOSES
        )
        return f"{self._base}/u/{unsubscribe}", f"{self._base}/p/{preferences}"

    def personal(self, subscriber_id: int, email: str, name: str | None) -> Personal:
        unsubscribe, preferences = self.urls(subscriber_id)
        return Personal(email, name, unsubscribe, preferences, self.view_url)


def personal_links(
    config: Config, newsletter: NewsletterConfig, edition: Edition, recipient: Recipient
) -> Personal:
    """Signed unsubscribe and preference links for one recipient, plus the web version."""
    return Links(config, newsletter, edition).personal(
        recipient.subscriber_id, recipient.email, recipient.name
    )


def first_name(name: str | None, fallback: str = NAME_FALLBACK) -> str:
    """The first word of the name, or the fallback; runs per recipient, so no regex on the
    common path."""
    words = name.split(None, 1) if name else None
    word = UNSHOWN.sub("", words[0]) if words else ""
    if not word:
        return fallback
    return word if len(word) <= FIRST_NAME_MAX else truncate(word, FIRST_NAME_MAX)


def personal_values(
    name: str | None,
    email: str,
    unsubscribe_url: str,
    preferences_url: str,
    view_url: str,
    name_fallback: str = NAME_FALLBACK,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The value of each of SLOTS for one recipient: (as the text shows them, escaped for
    HTML). The one place that decides how personal values are shown."""
    raw = (
        first_name(name, name_fallback),
        UNSHOWN.sub("", email),
        unsubscribe_url,
        preferences_url,
        view_url,
    )
    # html.escape, skipped where there is nothing to escape (nearly always: runs per recipient).
    return raw, tuple([html.escape(v, quote=True) if _ESCAPED(v) else v for v in raw])


def personalise(variant: RenderedVariant, personal: Personal) -> Personalised:
    """Fill a variant's placeholders for one recipient (escaped for HTML, raw for text)."""
    raw, escaped = personal_values(
        personal.name,
        personal.email,
        personal.unsubscribe_url,
        personal.preferences_url,
        personal.view_url,
        variant.name_fallback,
    )
    return Personalised(
        subject=variant.subject,
        html=variant._html_fill.fill(escaped),
        text=variant._text_fill.fill(raw),
    )


def check_size(variant: RenderedVariant) -> SizeCheck:
    """Size budget of one variant: a warning above 90 KB, EmailTooLarge above 102 KB."""
    parts = variant._html_fill.parts
    size = sum(len(p.encode("utf-8")) for p in parts) + (len(parts) - 1) * _SLOT_ALLOWANCE
    kb = size / 1024
    if size > SIZE_LIMIT_BYTES:
        raise EmailTooLarge(
            f"variant {variant.key} ({', '.join(variant.sections)}): HTML is {kb:.0f} KB, above "
            f"the {SIZE_LIMIT_BYTES // 1024} KB where Gmail clips it; send fewer stories per "
            "section or shorten the template"
        )
    warning = None
    if size > SIZE_WARN_BYTES:
        warning = (
            f"variant {variant.key}: HTML is {kb:.0f} KB, close to the "
            f"{SIZE_LIMIT_BYTES // 1024} KB where Gmail clips it"
        )
        log.warning(warning)
    return SizeCheck(size, warning)


# --- rendering -----------------------------------------------------------------------------


class _QuietCssutils(logging.Filter):
    """cssutils validates against CSS 2.1: it warns about every mso- property Outlook needs and
    every vendor or newer property email clients use. Other problems still get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "mso-" not in message and "Unknown Property name" not in message


_CSSUTILS_LOG = logging.getLogger("CSSUTILS")
_CSSUTILS_LOG.addFilter(_QuietCssutils())


def inline_css(document: str) -> str:
    """premailer: inline the template's base styles, keep the ignored <style> (media queries,
    dark mode) and every !important as written. Never touches the network."""
    from premailer import Premailer

    return str(
        Premailer(
            document,
            keep_style_tags=False,
            strip_important=False,
            allow_network=False,
            disable_validation=True,
            # Templates set width/height attributes themselves (images need real pixels).
            disable_basic_attributes=["width", "height"],
            remove_unset_properties=True,
        ).transform()
    )


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


class Renderer:
    """Renders one edition; each distinct variant is rendered and inlined once and cached."""

    def __init__(
        self,
        config: Config,
        newsletter: NewsletterConfig,
        edition: Edition,
        *,
        templates_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.newsletter = newsletter
        self.edition = edition
        self.nonce = secrets.token_hex(8)
        self.language = newsletter.lang
        self.translations = i18n.translations(self.language, config.locales_dir)
        self.env = template_environment(templates_dir or config.templates_dir, self.translations)
        self.brand = Brand.of(newsletter.brand_color)
        self._sections = self._edition_sections()
        self._cache: dict[tuple[tuple[str, ...], tuple[int, ...], bool], RenderedVariant] = {}
        self._requested: dict[tuple[tuple[str, ...], tuple[int, ...]], RenderedVariant] = {}

    def _edition_sections(self) -> list[tuple[str, list[EditionItem]]]:
        items = sorted(self.edition.items, key=lambda i: (i.section_position, i.rank))
        out: list[tuple[str, list[EditionItem]]] = []
        for item in items:
            if not out or out[-1][0] != item.section:
                out.append((item.section, []))
            out[-1][1].append(item)
        return out

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

    def variant(self, sections: tuple[str, ...], blocks: tuple[int, ...] = ()) -> RenderedVariant:
        # Looked up per recipient: remember what each requested pair resolved to.
        found = self._requested.get((sections, blocks))
        if found is None:
            found = self._requested[(sections, blocks)] = self._render(
                self.resolve(sections), self.resolve_blocks(blocks), archive=False
            )
        return found

    def forget_variants(self) -> None:
        """Drop the rendered variants so the next request renders afresh (previews, benchmarks)."""
        self._cache.clear()
        self._requested.clear()

    def archive(self) -> Personalised:
        """The web-archive version: the whole edition, no personal data, no personal links."""
        url = archive_url(self.config, self.newsletter, self.edition)
        variant = self._render(self.edition_sections, (), archive=True)
        return personalise(variant, Personal("", None, url, url, url))

    def _render(
        self, sections: tuple[str, ...], blocks: tuple[int, ...], *, archive: bool
    ) -> RenderedVariant:
        cached = self._cache.get((sections, blocks, archive))
        if cached is not None:
            return cached
        context = self._context(sections, blocks, archive)
        html_doc = render_template(self.env, HTML_TEMPLATE, context)
        text_doc = render_template(self.env, TEXT_TEMPLATE, context)
        inlined = inline_css(html_doc)
        for slot in SLOTS:
            if inlined.count(_placeholder(self.nonce, slot)) != html_doc.count(
                _placeholder(self.nonce, slot)
            ):
                raise RenderError(
                    f"{HTML_TEMPLATE}: slot.{slot} was altered by CSS inlining; use it only in "
                    "text or as a whole href value"
                )
        identity = "\x1f".join(sections)
        if blocks:
            # Without blocks the key stays what it was before blocks existed.
            identity += "\x1e" + ",".join(map(str, blocks))
        key = "v-" + hashlib.sha1(identity.encode()).hexdigest()[:10]
        text = _tidy_text(text_doc)
        if self.language.rtl:
            text = "\n".join(
                line if line.lstrip().startswith(("http://", "https://")) else rtl_line(line)
                for line in text.split("\n")
            )
        variant = RenderedVariant(
            key="archive" if archive else key,
            sections=sections,
            subject=context["subject"],
            preheader=context["preheader"],
            html=inlined,
            text=text,
            nonce=self.nonce,
            blocks=blocks,
            name_fallback=self.translations.gettext(NAME_FALLBACK),
        )
        self._cache[(sections, blocks, archive)] = variant
        return variant

    def _context(
        self, sections: tuple[str, ...], blocks: tuple[int, ...], archive: bool
    ) -> dict[str, Any]:
        nl = self.newsletter
        by_name = dict(self._sections)
        out: list[_Section] = []
        for name in sections:
            stories = tuple(
                self._story(item, lead=not out and i == 0) for i, item in enumerate(by_name[name])
            )
            out.append(_Section(name, stories))
        subject, preheader = self._subject_and_preheader(out)
        slot = {s: Markup(_placeholder(self.nonce, s)) for s in SLOTS}
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
        return add_utm(_safe_url(url), nl.utm, nl.id, self.edition.edition_date)

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

    def _story(self, item: EditionItem, *, lead: bool) -> _Story:
        nl = self.newsletter
        url = self.link(item.url)
        meta = " · ".join(
            p
            for p in (
                *_credit(shown_line(item.byline or ""), shown_line(item.source or ""), nl),
                story_time(item.published_at, nl, self.edition.edition_date),
            )
            if p
        )
        title, dek = shown_line(item.shown_title), shown_line(item.shown_dek or "")
        return _Story(
            title=title,
            url=url,
            dek=dek,
            meta=meta,
            image_url=_safe_url(item.image_url),
            image_alt=shown_line(item.image_alt or ""),
            lead=lead,
            dir=text_direction(f"{title} {dek}", self.language.dir),
        )

    def _subject_and_preheader(self, sections: list[_Section]) -> tuple[str, str]:
        nl = self.newsletter
        tops = [s.stories[0].title for s in sections if s.stories]
        lead = tops[0] if tops else ""
        shown_lead = "{lead}" in (self.edition.subject or nl.subject)
        values = {
            "title": shown_line(nl.title),
            "lead": lead,
            "date": i18n.short_date(self.edition.edition_date, self.language),
            "headlines": " · ".join(tops[1:] if shown_lead and len(tops) > 1 else tops),
        }
        where = f"newsletters.{nl.id}"
        # The editor's per-edition wording, checked when it was set (digest.desk).
        subject_t, subject_w = (
            (self.edition.subject, "edition subject")
            if self.edition.subject
            else (nl.subject, f"{where}.subject")
        )
        pre_t, pre_w = (
            (self.edition.preheader, "edition preheader")
            if self.edition.preheader
            else (nl.preheader, f"{where}.preheader")
        )
        subject = _format_fields(subject_t, _SUBJECT_FIELDS, subject_w, **values)
        pre = _format_fields(pre_t, _SUBJECT_FIELDS, pre_w, **values)
        subject, pre = truncate(subject, SUBJECT_MAX), truncate(pre, PREHEADER_MAX)
        if self.language.rtl:
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
    return _Logo(_safe_url(logo.url), logo.width, logo.height, shown_line(logo.alt))


def _tidy_text(text: str) -> str:
    """Collapse the blank-line runs templates leave and end with one newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n") + "\n"
