"""Languages of a newsletter: BCP 47 tags, text direction, dates and numbers (Babel) and the
templates' fixed strings (gettext catalogs).

Catalogs are gettext .po files, `digest/locales/<language>/LC_MESSAGES/digest.po` (plus any under
the config's `locales_dir`, which win). They are compiled in memory on first use, once per
process: nothing compiled is committed or built, so a catalog can never ship stale. The source
strings (msgids) are English; `make messages` extracts them from the templates and from this
package and merges them into every catalog.
"""

from __future__ import annotations

import gettext
import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import (
    format_date,
    format_skeleton,
    format_time,
    get_datetime_format,
    get_timezone_name,
)
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations

DOMAIN = "digest"
LOCALES_DIR = Path(__file__).resolve().parent / "locales"
SOURCE_LANGUAGE = "en"
# language[-Script][-REGION]: what a newsletter needs; variants and extensions are refused
# rather than silently ignored.
_TAG = re.compile(r"^([A-Za-z]{2,3})(?:-([A-Za-z]{4}))?(?:-([A-Za-z]{2}|\d{3}))?$")
_AP_MONTHS = (
    "Jan.",
    "Feb.",
    "March",
    "April",
    "May",
    "June",
    "July",
    "Aug.",
    "Sept.",
    "Oct.",
    "Nov.",
    "Dec.",
)


def N_(message: str) -> str:
    """Marks a string for extraction; it is translated where it is used."""
    return message


@dataclass(frozen=True)
class Language:
    """A newsletter's language: its BCP 47 tag and what follows from it."""

    tag: str  # canonical BCP 47: "en", "pt-BR", "zh-Hant-TW"
    locale: Locale

    @property
    def rtl(self) -> bool:
        return self.locale.text_direction == "rtl"

    @property
    def dir(self) -> str:
        return "rtl" if self.rtl else "ltr"

    @property
    def start(self) -> str:
        """The side lines begin on, as an `align` value."""
        return "right" if self.rtl else "left"

    @property
    def end(self) -> str:
        return "left" if self.rtl else "right"

    @property
    def english(self) -> bool:
        return self.locale.language == SOURCE_LANGUAGE


def parse_language(tag: str) -> Language:
    """A BCP 47 tag (`es`, `pt-BR`, `zh-Hant-TW`) Babel knows; ValueError saying why not."""
    m = _TAG.match(tag.strip())
    if not m:
        raise ValueError(
            f"{tag!r} is not a BCP 47 language tag of the form language[-Script][-REGION] "
            "(e.g. en, es, pt-BR, ar, he, zh-Hant)"
        )
    lang, script, region = m.groups()
    canonical = "-".join(
        p for p in (lang.lower(), script.title() if script else "", (region or "").upper()) if p
    )
    try:
        locale = Locale.parse(canonical, sep="-")
    except (UnknownLocaleError, ValueError):
        raise ValueError(
            f"{tag!r}: unknown language (Babel/CLDR has no locale {canonical!r})"
        ) from None
    return Language(canonical, locale)


def _candidates(locale: Locale) -> list[str]:
    """Catalog folder names to try, most specific first: zh_Hant_TW, zh_Hant, zh."""
    parts = [locale.language, locale.script, locale.territory]
    names = ["_".join(p for p in parts[: n + 1] if p) for n in range(len(parts)) if parts[n]]
    return list(dict.fromkeys(reversed(names)))


def _catalog_files(language: Language, locales_dir: Path | None) -> list[Path]:
    dirs = [d for d in (locales_dir, LOCALES_DIR) if d is not None]
    return [
        path
        for name in _candidates(language.locale)
        for d in dirs
        if (path := d / name / "LC_MESSAGES" / f"{DOMAIN}.po").is_file()
    ]


def has_catalog(language: Language, locales_dir: Path | None = None) -> bool:
    return language.english or bool(_catalog_files(language, locales_dir))


def shipped_languages() -> list[str]:
    return sorted(p.parent.parent.name for p in LOCALES_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


@lru_cache(maxsize=64)
def _compiled(path: Path, mtime: float) -> bytes:
    with path.open("rb") as f:
        catalog = read_po(f, domain=DOMAIN)
    buffer = BytesIO()
    write_mo(buffer, catalog)  # fuzzy entries are left out, as msgfmt does
    return buffer.getvalue()


def translations(language: Language, locales_dir: Path | None = None) -> gettext.NullTranslations:
    """The catalogs for `language`, most specific first, each falling back to the next and the
    last to the English msgids."""
    chain: gettext.NullTranslations = gettext.NullTranslations()
    for path in reversed(_catalog_files(language, locales_dir)):
        link = Translations(BytesIO(_compiled(path, path.stat().st_mtime)), domain=DOMAIN)
        link.add_fallback(chain)
        chain = link
    return chain


# --- formatting ----------------------------------------------------------------------------


def long_date(d: date, language: Language) -> str:
    """'Tuesday, March 10, 2026', 'martes, 10 de marzo de 2026', 'الثلاثاء، 10 مارس 2026'."""
    return format_date(d, "full", locale=language.locale)


def short_date(d: date, language: Language) -> str:
    """'March 10, 2026', '10. März 2026'."""
    return format_date(d, "long", locale=language.locale)


def number(n: int, language: Language) -> str:
    return format_decimal(n, locale=language.locale)


def _ap_clock(t: datetime) -> str:
    hour = t.hour % 12 or 12
    minute = "" if t.minute == 0 else f":{t.minute:02d}"
    return f"{hour}{minute} {'a.m.' if t.hour < 12 else 'p.m.'}"


def _zone(local: datetime, language: Language) -> str:
    """A zone name readers of the language know ('MEZ'), else the abbreviation ('EDT'), never
    a bare offset."""
    name = get_timezone_name(local, "short", locale=language.locale)
    if name and not re.match(r"^(?:[+\-−]|GMT|UTC)", name):
        return name
    abbreviation = local.tzname() or ""
    return abbreviation if abbreviation.isalpha() else ""


def story_time(local: datetime, edition_date: date, language: Language) -> str:
    """When a story was published, on the newsletter's clock. English keeps the newsroom's AP
    style ('7:15 a.m. EDT', 'March 9, 11:40 p.m. EDT'); other languages use their own
    ('07:15 MEZ', '9. März, 23:40 MEZ')."""
    if language.english:
        day = "" if local.date() == edition_date else f"{_AP_MONTHS[local.month - 1]} {local.day}, "
        return f"{day}{_ap_clock(local)} {local.tzname() or ''}".strip()
    clock = format_time(local, "short", locale=language.locale)
    zone = _zone(local, language)
    when = f"{clock} {zone}".strip()
    if local.date() == edition_date:
        return when
    day = format_skeleton("MMMd", local, locale=language.locale)
    # The locale's own way of joining a date and a time ('{1}, {0}', '{1}، {0}').
    joined = str(get_datetime_format("medium", locale=language.locale))
    return joined.replace("{1}", day).replace("{0}", when).replace("'", "")
