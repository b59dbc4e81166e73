"""Languages: BCP 47 tags in the config, the shipped gettext catalogs, and editions rendered in
Spanish, German, Arabic and Hebrew (dates, numbers, plural forms, direction, subject and text
twin)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.plurals import get_plural
from babel.messages.pofile import read_po
from sqlalchemy.orm import Session, sessionmaker

from digest import i18n
from digest.clock import fixed
from digest.config import Config, load_config
from digest.confirmations import confirmation_letter
from digest.errors import ConfigError
from digest.render import (
    Personal,
    Renderer,
    personal_values,
    personalise,
    rtl_line,
    text_direction,
)
from digest.web import create_app
from tests.render_support import ARABIC_STORIES, make_edition, store_edition, with_newsletter

ROOT = Path(__file__).parent.parent
LANGUAGES = ("en", "es", "de", "ar", "he")
PERSON = Personal(
    email="ana@example.com",
    name="Ana Costa",
    unsubscribe_url="https://news.example/u/t",
    preferences_url="https://news.example/p/t",
    view_url="https://news.example/archive/daily/2026-03-10",
)
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _extracted() -> dict[str, str | tuple[str, str]]:
    """Every translatable string of the templates and the package, as `make messages` finds
    them (same mapping file, same keywords)."""
    method_map = [
        ("digest/**.py", "python"),
        ("templates/**.html", "jinja2"),
        ("templates/**.txt", "jinja2"),
    ]
    options = {pattern: {"extensions": "jinja2.ext.i18n"} for pattern, _ in method_map[1:]}
    keywords = {"N_": None, "gettext": None, "ngettext": (1, 2), "_": None}
    found: dict[str, str | tuple[str, str]] = {}
    for _, _, message, _, _ in extract_from_dir(
        ROOT, method_map, options, keywords=keywords, comment_tags=()
    ):
        key = message[0] if isinstance(message, tuple) else message
        found[key] = message if isinstance(message, str) else (message[0], message[1])
    return found


def _catalog(language: str):  # type: ignore[no-untyped-def]
    with (i18n.LOCALES_DIR / language / "LC_MESSAGES" / "digest.po").open("rb") as f:
        return read_po(f)


def test_the_shipped_catalogs_are_the_five_languages() -> None:
    assert set(LANGUAGES) <= set(i18n.shipped_languages())


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_string_is_translated_with_its_placeholders(language: str) -> None:
    wanted = _extracted()
    assert len(wanted) >= 25 and "In brief" in wanted and "reader" in wanted
    catalog = _catalog(language)
    plurals = get_plural(language)
    assert catalog.num_plurals == plurals.num_plurals
    for key, msgid in wanted.items():
        message = catalog.get(key)
        assert message is not None, f"{language}: {key!r} is not in the catalog (make messages)"
        assert not message.fuzzy, f"{language}: {key!r} is fuzzy"
        if isinstance(msgid, tuple):
            forms = message.string
            assert isinstance(forms, tuple) and len(forms) == plurals.num_plurals
            names = set(_PLACEHOLDER.findall(msgid[1]))
            for form in forms:
                assert form, f"{language}: {key!r} has an empty plural form"
                assert set(_PLACEHOLDER.findall(form)) <= names, (language, key, form)
            # The general form always shows the number.
            assert set(_PLACEHOLDER.findall(forms[-1])) == names, (language, key)
        else:
            assert message.string, f"{language}: {key!r} is not translated"
            assert set(_PLACEHOLDER.findall(message.string)) == set(_PLACEHOLDER.findall(msgid)), (
                language,
                key,
                message.string,
            )
            # No stray % that would break %-formatting.
            assert "%" not in _PLACEHOLDER.sub("", message.string), (language, key)


def test_the_template_catalog_is_up_to_date() -> None:
    with (i18n.LOCALES_DIR / "digest.pot").open("rb") as f:
        pot = {m.id[0] if isinstance(m.id, tuple) else m.id for m in read_po(f) if m.id}
    assert pot == set(_extracted()), "run `make messages` and translate the new strings"


def test_catalogs_are_shipped_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(d.startswith("babel") for d in pyproject["project"]["dependencies"])
    patterns = pyproject["tool"]["setuptools"]["package-data"]["digest"]
    for language in LANGUAGES:
        name = f"locales/{language}/LC_MESSAGES/digest.po"
        assert (ROOT / "digest" / name).is_file()
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


@pytest.mark.parametrize(
    ("tag", "canonical", "direction"),
    [
        ("en", "en", "ltr"),
        ("es-mx", "es-MX", "ltr"),
        ("pt-br", "pt-BR", "ltr"),
        ("zh-hant-tw", "zh-Hant-TW", "ltr"),
        ("ar", "ar", "rtl"),
        ("ar-EG", "ar-EG", "rtl"),
        ("he", "he", "rtl"),
    ],
)
def test_language_tags_are_bcp47_and_know_their_direction(
    tag: str, canonical: str, direction: str
) -> None:
    language = i18n.parse_language(tag)
    assert (language.tag, language.dir) == (canonical, direction)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("xx", "unknown language"),
        ("en_US", "not a BCP 47 language tag"),
        ("english", "not a BCP 47 language tag"),
        ("de-CH-1996", "not a BCP 47 language tag"),
        ("fr", "no translations for 'fr'"),
    ],
)
def test_a_bad_language_is_one_config_error(
    tmp_path: Path, config_path: Path, value: str, problem: str
) -> None:
    path = tmp_path / "digest.toml"
    text = config_path.read_text().replace(
        'title = "The Test Gazette"', f'title = "The Test Gazette"\nlanguage = "{value}"'
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "newsletters.daily.language: " in str(e.value) and problem in str(e.value)


def test_a_catalog_under_locales_dir_adds_a_language(tmp_path: Path, config_path: Path) -> None:
    folder = tmp_path / "locales" / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "digest.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Good morning, %(name)s."\nmsgstr "Bonjour, %(name)s."\n',
        encoding="utf-8",
    )
    path = tmp_path / "digest.toml"
    path.write_text(
        'locales_dir = "locales"\n'
        + config_path.read_text().replace(
            'title = "The Test Gazette"', 'title = "The Test Gazette"\nlanguage = "fr"'
        )
    )
    config = load_config(path)
    html = _mail(config).html
    assert '<html lang="fr" dir="ltr"' in html
    assert "Bonjour, Ana." in html and "mardi 10 mars 2026" in html
    # What the catalog leaves out falls back to English rather than failing.
    assert "Manage preferences" in html


def _mail(config: Config, stories: list | None = None):  # type: ignore[no-untyped-def, type-arg]
    nl = config.newsletter("daily")
    return personalise(Renderer(config, nl, make_edition(stories)).variant(()), PERSON)


def test_spanish_edition_has_spanish_dates_numbers_and_labels(config: Config) -> None:
    mail = _mail(with_newsletter(config, language="es", in_brief=True))
    html, text = mail.html, mail.text
    assert '<html lang="es" dir="ltr"' in html
    assert "martes, 10 de marzo de 2026 · 7 noticias" in html
    assert "Buenos días, Ana. Esto es lo que necesitas saber hoy." in html
    assert ">En resumen</h2>" in html
    for label in ("Gestionar preferencias", "Darse de baja", "Ver en el navegador"):
        assert f">{label}</a>" in html
    assert "Recibes The Test Gazette porque te suscribiste como ana@example.com." in html
    for english in ("Good morning", "Manage preferences", "In brief", "stories", "a.m."):
        assert english not in html and english not in text, english
    assert "Buenos días, Ana." in text and "Darse de baja:" in text
    assert "EN RESUMEN" in text


def test_german_times_use_the_locale_and_its_zone_names(config: Config) -> None:
    config = with_newsletter(config, language="de", timezone="Europe/Berlin")
    html = _mail(config).html
    assert "Dienstag, 10. März 2026 · 7 Artikel" in html
    assert "Guten Morgen, Ana." in html or "Guten Tag, Ana." in html
    # 08:00 UTC on the edition day is 09:00 in Berlin (MEZ); the day before names its date.
    assert "09:00 MEZ" in html
    assert re.search(r"9\. März, \d\d:\d\d MEZ", html)


def test_arabic_edition_is_right_to_left_in_html_subject_and_text(config: Config) -> None:
    config = with_newsletter(config, language="ar", in_brief=True, title="Al-Test Gazette")
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition(ARABIC_STORIES)).variant(())
    mail = personalise(variant, PERSON)
    html = mail.html
    assert '<html lang="ar" dir="rtl"' in html
    assert '<body id="body" class="page" dir="rtl"' in html
    assert re.search(r'<table role="presentation" class="container"[^>]* dir="rtl"', html)
    assert "الثلاثاء، 10 مارس 2026 · 7 أخبار" in html
    assert "صباح الخير يا Ana." in html and ">باختصار</h2>" in html
    # Alignment mirrors with attributes (Outlook and Gmail ignore much CSS): text cells start
    # on the right, the thumbnail sits at the end (left); nothing else is aligned left.
    assert re.search(r'<td class="section-name" align="right"', html)
    assert re.search(r'<td class="thumb-cell" width="140" align="left"', html)
    assert 'align="left"' not in re.sub(r'<td class="thumb-cell"[^>]*>', "", html)
    assert "padding-right:16px" in html and "border-right:3px" not in html
    # A headline that opens with a Latin word still reads right to left.
    assert re.search(r'<h3 dir="rtl"[^>]*><a [^>]*>iPhone وسواه', html)
    # The subject starts with a Latin title: a RIGHT-TO-LEFT MARK keeps it right to left.
    assert variant.subject.startswith("\u200fAl-Test Gazette: مجلس المدينة")
    for line in mail.text.splitlines():
        stripped = line.strip()
        if stripped.startswith("https://"):
            assert not line.startswith("\u200f"), line  # links stay clickable
        elif re.match(r"[\s*\-]*[A-Za-z]", line):
            assert line.startswith("\u200f"), line
    assert "\u200f* iPhone وسواه" in mail.text
    assert "AL-TEST GAZETTE" in mail.text


@pytest.mark.parametrize(
    ("language", "count", "label"),
    [
        ("ar", 1, "خبر واحد"),
        ("ar", 2, "خبران"),
        ("ar", 5, "5 أخبار"),
        ("ar", 11, "11 خبرًا"),
        ("he", 1, "כתבה אחת"),
        ("he", 2, "שתי כתבות"),
        ("he", 7, "7 כתבות"),
        ("en", 1, "1 story"),
        ("de", 1, "1 Artikel"),
    ],
)
def test_story_counts_use_each_languages_plural_forms(
    config: Config, language: str, count: int, label: str
) -> None:
    stories = [("News", f"Story {i}", "Dek.", None, None, None) for i in range(count)]
    html = _mail(with_newsletter(config, language=language), stories).html
    assert f"· {label}</td>" in html


def test_a_reader_without_a_name_is_greeted_in_the_newsletters_language(config: Config) -> None:
    config = with_newsletter(config, language="he")
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition()).variant(())
    mail = personalise(variant, Personal("x@example.com", None, "u", "p", "v"))
    assert "בוקר טוב, קוראים יקרים." in mail.html and "בוקר טוב, קוראים יקרים." in mail.text
    # The send path fills its substitutions through the same function with the same fallback.
    raw, _ = personal_values(None, "x@example.com", "u", "p", "v", variant.name_fallback)
    assert raw[0] == "קוראים יקרים"


def test_the_confirmation_email_speaks_the_newsletters_language(config: Config) -> None:
    config = with_newsletter(config, language="es")
    letter = confirmation_letter(config, config.newsletter("daily"), "https://news.example/c/t")
    assert letter.subject == "Confirma tu suscripción a The Test Gazette"
    assert '<html lang="es" dir="ltr">' in letter.html
    assert "Confirma que quieres recibir <strong>The Test Gazette</strong>." in letter.html
    assert ">Confirmar suscripción</a>" in letter.html
    assert "El enlace funciona durante 7 días." in letter.text
    config = with_newsletter(config, language="ar")
    letter = confirmation_letter(config, config.newsletter("daily"), "https://news.example/c/t")
    assert letter.subject == "أكّد اشتراكك في The Test Gazette"
    assert '<html lang="ar" dir="rtl">' in letter.html and "\u200f" not in letter.subject


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("City council approves", "ltr"),
        ("iPhone وسواه: سلسلة مخابز محلية", "rtl"),
        ("שלום עולם — bold", "rtl"),
        ("Apple: שיא", "ltr"),
        ("2026 · 7", "rtl"),  # nothing strong: the edition's direction
    ],
)
def test_text_direction_follows_the_majority_of_letters(text: str, expected: str) -> None:
    assert text_direction(text, "rtl") == expected


def test_rtl_line_marks_only_lines_that_start_left_to_right() -> None:
    assert rtl_line("BBC عربي") == "\u200fBBC عربي"
    assert rtl_line("عربي BBC") == "عربي BBC"
    assert rtl_line("2026") == "2026"


def test_english_story_times_keep_ap_style() -> None:
    en = i18n.parse_language("en")
    at = datetime(2026, 3, 10, 11, 15, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert i18n.story_time(at, date(2026, 3, 10), en) == "7:15 a.m. EDT"
    assert i18n.story_time(at, date(2026, 3, 11), en) == "March 10, 7:15 a.m. EDT"


def test_the_web_archive_lists_editions_in_the_newsletters_language(
    config: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    config = with_newsletter(config, language="ar")
    with sessions() as session, session.begin():
        store_edition(session).status = "sent"
    client = create_app(config, sessions, clock=fixed(now)).test_client()
    index = client.get("/archive/daily/").get_data(as_text=True)
    assert '<p class="masthead" lang="ar" dir="auto">The Test Gazette</p>' in index
    assert '<ul class="editions" lang="ar" dir="rtl">' in index
    assert "الثلاثاء، 10 مارس 2026" in index
    edition = client.get("/archive/daily/2026-03-10").get_data(as_text=True)
    assert '<html lang="ar" dir="rtl"' in edition
