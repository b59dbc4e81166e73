"""The rendered digest: golden files, escaping, email-client rules, variants and personalisation.

Golden files: tests/golden/render_digest.html and .txt. After an intended template change,
regenerate them with
    DIGEST_REGEN_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_render_email.py
and review the diff before committing.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from digest.config import Config
from digest.render import (
    SIZE_LIMIT_BYTES,
    EmailTooLarge,
    Personal,
    RenderedVariant,
    Renderer,
    check_size,
    display_width,
    personalise,
    truncate,
)
from tests.render_support import STORIES, count_inlining, make_edition

GOLDEN = Path(__file__).parent / "golden"
PERSON = Personal(
    email="ana@example.com",
    name="Ana Costa",
    unsubscribe_url="https://news.example/u/tok-unsub",
    preferences_url="https://news.example/p/tok-prefs",
    view_url="https://news.example/archive/daily/2026-03-10",
)


def _render(config: Config, stories: list | None = None, sections: tuple[str, ...] = ()):  # type: ignore[type-arg]
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition(stories)).variant(sections)
    return variant, personalise(variant, PERSON)


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("DIGEST_REGEN_GOLDEN"):
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"missing {path}: run with DIGEST_REGEN_GOLDEN=1"
    assert actual == path.read_text(encoding="utf-8"), f"{name} changed (see module docstring)"


def test_html_and_text_match_the_golden_files(config: Config) -> None:
    _, mail = _render(config)
    _golden("render_digest.html", mail.html)
    _golden("render_digest.txt", mail.text)


def test_html_follows_the_email_client_rules(config: Config) -> None:
    _, mail = _render(config)
    html = mail.html
    assert html.startswith("<!DOCTYPE html>")
    assert re.search(r'<html lang="en"', html)
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html
    assert "<!--[if mso]>" in html
    tables = re.findall(r"<table[^>]*>", html)
    assert tables and all('role="presentation"' in t for t in tables)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)
    assert len(styles) == 1
    head = html.split("</head>")[0]
    assert "<style" in head
    assert len(styles[0].encode()) < 16 * 1024
    assert "@media only screen and (max-width" in styles[0]
    assert "prefers-color-scheme: dark" in styles[0]
    assert "!important" in styles[0]
    for banned in ("flex", "grid", "position:", "float:", "var(--", "<svg"):
        assert banned not in html.replace(" ", ""), banned
    # Every text cell carries its font, size, line-height and colour inline.
    for cls in ("headline", "dek", "meta", "section-name", "greeting", "address"):
        for m in re.finditer(rf'<td class="{cls}"[^>]*style="([^"]*)"', html):
            for prop in ("font-family", "font-size", "line-height", "color"):
                assert prop in m.group(1), (cls, prop)
    assert 'class="container"' in html and "max-width:600px" in html.replace(" ", "")


def test_every_image_has_alt_width_and_height(config: Config) -> None:
    _, mail = _render(config)
    images = re.findall(r"<img[^>]*>", mail.html)
    assert len(images) == sum(1 for s in STORIES if s[5])
    for img in images:
        assert re.search(r'alt="[^"]*"', img), img
        assert re.search(r'width="\d+"', img) and re.search(r'height="\d+"', img), img


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_have_accessible_contrast(config: Config) -> None:
    _, mail = _render(config)
    checked = 0
    for cls, style in re.findall(r'<(?:td|a) class="([\w-]+)"[^>]*style="([^"]*)"', mail.html):
        colour = re.search(r"(?<![-\w])color:\s*#([0-9a-f]{6}|[0-9a-f]{3})\b", style)
        if not colour:
            continue
        hex_ = colour.group(1)
        hex_ = "#" + (hex_ if len(hex_) == 6 else "".join(c * 2 for c in hex_))
        background = "#f3f0e8" if cls.startswith(("footer", "address")) else "#ffffff"
        assert _contrast(hex_, background) >= 4.5, (cls, hex_)
        checked += 1
    assert checked >= 15


def test_templates_are_shipped_with_the_package() -> None:
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["digest.templates"]
    folder = Path(__file__).parent.parent / "templates"
    # digest/templates is a symlink to the top-level templates/ (a plain layout for setuptools)
    assert (folder.parent / "digest" / "templates").resolve() == folder.resolve()
    for name in ("digest.html", "digest.txt", "_styles.html", "_story.html"):
        assert (folder / name).is_file()
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_content_has_header_sections_stories_and_footer(config: Config) -> None:
    variant, mail = _render(config)
    html = mail.html
    assert "The Test Gazette" in html and "Tuesday, March 10, 2026" in html
    positions = [html.index(f">{name}</h2>") for name in ("News", "Business", "Health")]
    assert positions == sorted(positions)
    assert "Good morning, Ana." in html
    assert "The Test Gazette, 1 Test Street, Testville" in html
    for url in (PERSON.unsubscribe_url, PERSON.preferences_url, PERSON.view_url):
        assert f'href="{url}"' in html
        assert f"\n{url}\n" in mail.text
    # The newsletter's own publisher is not repeated on every story; other sources are named.
    assert "By Maria Alvarez · 4 a.m. EDT" in html
    assert "By Sam Okafor · Wire · 12:45 a.m. EDT" in html
    # The preheader is hidden, first in the body, and tells the truth about the content.
    body = html.split("<body", 1)[1]
    assert variant.preheader in body[: body.index("<table")]
    assert variant.preheader.startswith("Port traffic hits a record")


def test_text_twin_has_the_same_headlines_and_links_in_order(config: Config) -> None:
    _, mail = _render(config)
    html_links = re.findall(r'<h3[^>]*><a href="([^"]+)"[^>]*>([^<]+)</a>', mail.html)
    text = mail.text
    cursor = 0
    for url, title in html_links:
        url = url.replace("&amp;", "&")
        at = text.index(title.replace("&amp;", "&"), cursor)
        cursor = text.index(f"\n  {url}\n", at)
    assert [t for _, t in html_links] == [s[1] for s in STORIES]
    for line in text.splitlines():
        assert display_width(line) <= 78 or re.fullmatch(r"\s*https?://\S+", line), line


def test_article_text_is_escaped_and_intact(config: Config) -> None:
    nasty = [
        (
            "News",
            '<script>alert("x")</script> Tom & Jerry\'s "big" day 🎉👩🏽‍💻',
            "שלום עולם — مرحبا بالعالم & <b>bold</b>",
            'By "Q" <q@x>',
            "AT&T",
            'https://img.news.example/a.jpg"onerror="alert(1)',
        )
    ]
    _, mail = _render(config, nasty)
    html = mail.html
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(" in html
    assert "Tom &amp; Jerry" in html
    assert "🎉👩🏽‍💻" in html
    assert "שלום עולם — مرحبا بالعالم &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "AT&amp;T" in html
    assert 'onerror="' not in html and "a.jpg%22onerror=%22alert(1)" in html
    # The text twin is plain text: no escaping, nothing lost.
    assert '<script>alert("x")</script> Tom & Jerry\'s "big" day 🎉👩🏽‍💻' in mail.text
    assert "שלום עולם — مرحبا بالعالم & <b>bold</b>" in mail.text


def test_links_other_than_http_are_dropped(config: Config) -> None:
    edition = make_edition()
    edition.items[0].url = "javascript:alert(1)"
    edition.items[3].image_url = "data:image/png;base64,AAAA"
    variant = Renderer(config, config.newsletter("daily"), edition).variant(())
    mail = personalise(variant, PERSON)
    assert "javascript:" not in mail.html and "data:image" not in mail.html
    assert STORIES[0][1] in mail.html and STORIES[0][1] in mail.text


def test_control_characters_and_bidi_overrides_are_removed(config: Config) -> None:
    stories = [("News", "Breaking\u0085 news\u202e here\x00", "dek\u0007", None, None, None)]
    _, mail = _render(config, stories)
    assert "Breaking news here" in mail.html and "Breaking news here" in mail.text
    for ch in "\u0085\u202e\x00\u0007":
        assert ch not in mail.html and ch not in mail.text


def test_placeholders_cannot_be_forged_by_article_text(config: Config) -> None:
    nl = config.newsletter("daily")
    renderer = Renderer(config, nl, make_edition())
    token = renderer.variant(()).placeholder("unsubscribe_url")
    # Even knowing this renderer's placeholder, content rendered by a fresh Renderer (a new
    # nonce, as every send has) stays literal text.
    stories = [("News", f"Win {token} now %%dg.first_name%%", f"{token}", None, None, None)]
    renderer2 = Renderer(config, nl, make_edition(stories))
    variant = renderer2.variant(())
    mail = personalise(variant, PERSON)
    assert mail.html.count(PERSON.unsubscribe_url) == 1
    assert mail.text.count(PERSON.unsubscribe_url) == 1
    assert f"Win {token} now %%dg.first_name%%" in mail.text


def test_recipient_name_is_escaped_and_falls_back(config: Config) -> None:
    variant, _ = _render(config)
    evil = dataclasses.replace(PERSON, name='<img src=x onerror="alert(1)"> Smith')
    mail = personalise(variant, evil)
    assert "<img src=x" not in mail.html
    assert "Good morning, &lt;img." in mail.html
    nameless = personalise(variant, dataclasses.replace(PERSON, name=None))
    assert "Good morning, reader." in nameless.html
    assert "Good morning, reader." in nameless.text
    assert personalise(variant, dataclasses.replace(PERSON, name="  ")).html == nameless.html


def test_premailer_runs_once_per_variant(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_inlining(monkeypatch)
    renderer = Renderer(config, config.newsletter("daily"), make_edition())
    recipients_sections = [(), ("News",), ("Health", "News"), ("News",), ("health", "news"), ()]
    for n in range(300):
        variant = renderer.variant(recipients_sections[n % len(recipients_sections)])
        personalise(variant, dataclasses.replace(PERSON, email=f"r{n}@example.com"))
    assert len(calls) == 3


def test_variant_follows_the_readers_sections_and_order(config: Config) -> None:
    variant, mail = _render(config, sections=("Health", "Nonexistent", "News"))
    assert variant.sections == ("Health", "News")
    assert mail.html.index(">Health</h2>") < mail.html.index(">News</h2>")
    assert ">Business</h2>" not in mail.html
    assert variant.subject.startswith("The Test Gazette: What the new screening guidelines")
    everything, _ = _render(config, sections=("Nothing here",))
    assert everything.sections == ("News", "Business", "Health", "Entertainment")


def test_subject_and_preheader_are_limited_and_emoji_safe(config: Config) -> None:
    long_title = "🎉 " + "Résumé naïve café " * 10 + "👩🏽‍💻 end"
    variant, _ = _render(config, [("News", long_title, "d", None, None, None)])
    assert len(variant.subject) <= 90 and variant.subject.endswith("…")
    assert variant.subject.startswith("The Test Gazette: 🎉 Résumé naïve café")
    assert "\n" not in variant.subject
    assert truncate("ab 👩🏽‍💻 cd", 5) == "ab…"
    assert truncate("short", 10) == "short"
    nl = dataclasses.replace(
        config.newsletter("daily"), subject="{title} for {date}", preheader="Today: {headlines}"
    )
    variant = Renderer(config, nl, make_edition()).variant(())
    assert variant.subject == "The Test Gazette for March 10, 2026"
    # Without the lead in the subject, the preheader's headlines start with it.
    assert variant.preheader.startswith(f"Today: {STORIES[0][1]} · Port traffic")
    assert len(variant.preheader) <= 140


def test_a_bad_subject_field_names_the_config_key(config: Config) -> None:
    from digest.errors import ConfigError

    nl = dataclasses.replace(config.newsletter("daily"), subject="{title} {author}")
    with pytest.raises(ConfigError, match=r"newsletters\.daily\.subject: unknown field \{author\}"):
        Renderer(config, nl, make_edition()).variant(())


def test_size_budget_warns_then_refuses(config: Config, caplog: pytest.LogCaptureFixture) -> None:
    variant, _ = _render(config)
    assert check_size(variant).warning is None
    padding = "<!-- x -->" * ((95 * 1024 - len(variant.html.encode())) // 10)
    big = RenderedVariant(
        variant.key, variant.sections, "s", "p", variant.html + padding, "t", variant.nonce
    )
    result = check_size(big)
    assert result.warning and "close to the 102 KB" in result.warning
    assert "close to the 102 KB" in caplog.text
    huge = dataclasses.replace(big, html=big.html + "<!-- x -->" * 1000)
    with pytest.raises(EmailTooLarge, match="above the 102 KB where Gmail clips"):
        check_size(huge)
    assert len(huge.html.encode()) > SIZE_LIMIT_BYTES


def test_archive_version_has_no_personal_data(config: Config) -> None:
    renderer = Renderer(config, config.newsletter("daily"), make_edition())
    page = renderer.archive()
    assert "Good morning" not in page.html and "Unsubscribe" not in page.html
    assert "https://news.example/archive/daily/2026-03-10" in page.html
    assert "%%dg" not in page.html and "%%dg" not in page.text
    assert "/u/" not in page.text and "/p/" not in page.text
    for _, title, *_ in STORIES:
        assert title in page.text


def test_templates_dir_overrides_one_template(config: Config, tmp_path: Path) -> None:
    (tmp_path / "digest.txt").write_text(
        "{{ newsletter.title }} for {{ slot.first_name }}\n{% for s in sections %}{{ s.name }}\n"
        "{% endfor %}",
        encoding="utf-8",
    )
    custom = dataclasses.replace(config, templates_dir=tmp_path)
    variant = Renderer(custom, config.newsletter("daily"), make_edition()).variant(())
    mail = personalise(variant, PERSON)
    assert mail.text == "The Test Gazette for Ana\nNews\nBusiness\nHealth\nEntertainment\n"
    assert "<!DOCTYPE html>" in mail.html  # the shipped HTML template is still used


def test_a_broken_template_is_one_clear_error(config: Config, tmp_path: Path) -> None:
    from digest.render import RenderError

    (tmp_path / "digest.txt").write_text("{% for %}", encoding="utf-8")
    custom = dataclasses.replace(config, templates_dir=tmp_path)
    with pytest.raises(RenderError, match=r"digest\.txt, line 1: "):
        Renderer(custom, config.newsletter("daily"), make_edition()).variant(())
