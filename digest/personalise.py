"""A rendered variant and its per-recipient fill: the placeholders a variant carries, the values
one recipient puts in them, and the size budget of a variant (Gmail clips above ~102 KB).

personalise() fills a variant with a precomputed split: no parsing and no regex per recipient.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from digest.errors import EmailTooLarge, RenderError
from digest.i18n import N_
from digest.plaintext import truncate
from digest.text import UNSHOWN
from digest.tracking import reader_part

log = logging.getLogger("digest.render")

FIRST_NAME_MAX = 40
NAME_FALLBACK = N_("reader")  # translated per newsletter (RenderedVariant.name_fallback)
# Gmail clips HTML beyond about 102 KB; warn well before that.
SIZE_WARN_BYTES = 90 * 1024
SIZE_LIMIT_BYTES = 102 * 1024
# Allowance per placeholder when sizing a variant before the real values are known.
_SLOT_ALLOWANCE = 320

SLOTS = ("first_name", "email", "unsubscribe_url", "preferences_url", "view_url", "click")
_ESCAPED = re.compile("[&<>\"']").search  # what html.escape(quote=True) replaces


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
    tracked: bool = False  # its content links go through /r/ (digest.tracking)
    skip: tuple[int, ...] = ()  # article ids left out (sent today in another newsletter)
    _html_fill: _Fill = field(init=False, repr=False, compare=False)
    _text_fill: _Fill = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_html_fill", _Fill.parse(self.html, self.nonce))
        object.__setattr__(self, "_text_fill", _Fill.parse(self.text, self.nonce))

    def placeholder(self, slot: str) -> str:
        return slot_placeholder(self.nonce, slot)


@dataclass(frozen=True)
class Personal:
    email: str
    name: str | None
    unsubscribe_url: str
    preferences_url: str
    view_url: str
    # The reader half of tracked links; None: derived from unsubscribe_url (digest.tracking).
    click: str | None = None


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


def slot_placeholder(nonce: str, slot: str) -> str:
    return f"%%dg{nonce}.{slot}%%"


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
    click: str | None = None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The value of each of SLOTS for one recipient: (as the text shows them, escaped for
    HTML). The one place that decides how personal values are shown."""
    raw = (
        first_name(name, name_fallback),
        UNSHOWN.sub("", email),
        unsubscribe_url,
        preferences_url,
        view_url,
        reader_part(unsubscribe_url) if click is None else click,
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
        personal.click if personal.click is not None or variant.tracked else "",
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
