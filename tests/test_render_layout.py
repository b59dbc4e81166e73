"""The digest's layout: a lead, a row of cards, a compact list; the "in brief" list; the brand
colour and logo; credits that name a publisher once; Gmail's size limits on a big front page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digest.brand import Brand, contrast
from digest.config import BlockConfig, Config, LogoConfig, load_config
from digest.errors import ConfigError
from digest.render import SIZE_WARN_BYTES, Personal, Renderer, check_size, personalise
from tests.render_support import (
    ARABIC_STORIES,
    STORIES,
    Story,
    front_page,
    make_edition,
    with_newsletter,
)

PERSON = Personal(
    email="ana@example.com",
    name="Ana",
    unsubscribe_url="https://news.example/u/t",
    preferences_url="https://news.example/p/t",
    view_url="https://news.example/archive/daily/2026-03-10",
)


def _html(config: Config, stories: list[Story] | None = None) -> str:
    nl = config.newsletter("daily")
    return personalise(Renderer(config, nl, make_edition(stories)).variant(()), PERSON).html


def _classes_in_order(html: str) -> list[str]:
    return re.findall(
        r'<td class="(story|story-last|row|row-last|compact|compact-last|section-name)"', html
    )


def test_a_section_is_a_feature_then_a_row_of_cards_then_a_compact_list(config: Config) -> None:
    stories = [("News", f"Story {i}", f"Dek {i}.", None, None, None) for i in range(6)]
    stories += [("Business", "Only two", "Dek.", None, None, None)] * 2
    stories += [("Health", "Alone", "Dek.", None, None, None)]
    html = _html(config, stories)
    assert _classes_in_order(html) == [
        *["section-name", "story", "row", "compact", "compact", "compact-last"],
        *["section-name", "story", "compact-last"],  # two stories: no row of one card
        *["section-name", "story-last"],
    ]
    assert html.count('<div class="card-start"') == html.count('<div class="card-end"') == 1
    # The cards wrap by themselves on narrow screens and sit in a ghost table for Outlook.
    card = re.search(r'<div class="card-start"[^>]*style="([^"]*)"', html)
    assert card and "display:inline-block" in card.group(1) and "max-width:268px" in card.group(1)
    assert '<!--[if mso]><td width="268" valign="top" style="padding-right:8px;">' in html
    headlines = re.findall(r"<h3[^>]*><a [^>]*>([^<]+)</a>", html)
    assert headlines == [s[1] for s in stories]


def test_in_brief_lists_the_top_headlines_under_the_greeting(config: Config) -> None:
    assert ">In brief</h2>" not in _html(config)  # off by default
    html = _html(with_newsletter(config, in_brief=True))
    brief = html[html.index(">In brief</h2>") : html.index('<td class="section"')]
    assert html.index("Good morning, Ana.") < html.index(">In brief</h2>")
    titles = re.findall(r'<td class="brief-item"[^>]*><a href="([^"]+)"[^>]*>([^<]+)</a>', brief)
    # Each section's first story, then each one's second..., five at most.
    assert [t for _, t in titles] == [STORIES[i][1] for i in (0, 3, 5, 6, 1)]
    assert all("utm_source=digest" in url for url, _ in titles)
    nl = with_newsletter(config, in_brief=True).newsletter("daily")
    text = Renderer(with_newsletter(config, in_brief=True), nl, make_edition()).variant(()).text
    assert "IN BRIEF\n- City council approves $2.1 billion transit plan after a" in text


def test_the_brand_colour_marks_the_page_and_stays_readable(config: Config) -> None:
    html = _html(with_newsletter(config, brand_color="#ffcc00", in_brief=True))
    assert re.search(r'<td class="brand-bar"[^>]*background-color:#fc0" bgcolor="#ffcc00"', html)
    names = re.findall(r'<td class="(?:section-name|brief-title)"[^>]*color:(#[0-9a-f]{6})', html)
    assert names and all(contrast(c, "#ffffff") >= 4.5 for c in names)
    brand = Brand.of("#ffcc00")
    assert brand.accent in names and f"color: {brand.accent_dark} !important" in html
    assert contrast(brand.accent_dark, "#1c1c1c") >= 4.5
    assert 'class="brand-bar"' not in _html(config)


def test_a_logo_replaces_the_title_and_keeps_it_as_alt_text(config: Config) -> None:
    logo = LogoConfig(url="https://news.example/logo.png", width=220, height=48, alt="")
    html = _html(with_newsletter(config, logo=logo))
    img = re.search(r'<img class="logo"[^>]*>', html)
    assert img is not None
    assert 'src="https://news.example/logo.png"' in img.group(0)
    assert 'width="220"' in img.group(0) and 'height="48"' in img.group(0)
    assert 'class="title"' not in html


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('brand_color = "red"', "brand_color: 'red' is not a colour like #9b1c1c"),
        ('brand_color = "#12345"', "is not a colour"),
        ("in_brief = 1", "in_brief: must be true or false"),
        ('logo = { url = "javascript:alert(1)", width = 200 }', "logo.url: 'javascript:alert(1)'"),
        ('logo = { url = "https://x.example/l.png" }', "logo.width: missing"),
        ('logo = { url = "https://x.example/l.png", width = 900 }', "logo.width: must be at most"),
        ('logo = { url = "https://x.example/l.png", width = 90, size = 2 }', "logo.size: unknown"),
    ],
)
def test_brand_settings_are_checked(
    tmp_path: Path, config_path: Path, extra: str, problem: str
) -> None:
    path = tmp_path / "digest.toml"
    path.write_text(
        config_path.read_text().replace(
            'title = "The Test Gazette"', f'title = "The Test Gazette"\n{extra}'
        )
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}: newsletters.daily." in str(e.value) and problem in str(e.value)


def test_brand_settings_are_read(tmp_path: Path, config_path: Path) -> None:
    path = tmp_path / "digest.toml"
    path.write_text(
        config_path.read_text().replace(
            'title = "The Test Gazette"',
            'title = "The Test Gazette"\nbrand_color = "#C00"\nin_brief = true\nlanguage = "he"\n'
            'logo = { url = "https://news.example/logo.png", width = 180 }',
        )
    )
    nl = load_config(path).newsletter("daily")
    assert (nl.brand_color, nl.in_brief, nl.language) == ("#cc0000", True, "he")
    assert nl.logo == LogoConfig("https://news.example/logo.png", 180, None, "The Test Gazette")


@pytest.mark.parametrize(
    ("byline", "source", "meta"),
    [
        ("NewsFinale Journal", "NewsFinale", "NewsFinale Journal · "),
        ("NewsFinale", "NewsFinale Journal", "NewsFinale Journal · "),
        ("By Ann Lee", "The Test Gazette", "By Ann Lee · "),  # the newsletter's own publisher
        ("By Ann Lee", "Test Gazette", "By Ann Lee · "),
        ("By Ann Lee", "AP", "By Ann Lee · AP · "),
        ("By Tampa Bay", "AP", "By Tampa Bay · AP · "),  # 'AP' is not a word of the byline
        (None, "Reuters", "Reuters · "),
    ],
)
def test_a_publisher_is_named_once(
    config: Config, byline: str | None, source: str, meta: str
) -> None:
    html = _html(config, [("News", "Headline", "Dek.", byline, source, None)])
    shown = re.search(r'<td class="meta"[^>]*>([^<]*)</td>', html)
    assert shown is not None and shown.group(1).startswith(meta), shown.group(1)
    assert shown.group(1).endswith(("a.m. EDT", "p.m. EDT"))


@pytest.mark.parametrize(("language", "stories"), [("en", STORIES), ("ar", ARABIC_STORIES)])
def test_a_big_front_page_stays_within_gmails_limits(
    config: Config, language: str, stories: list[Story]
) -> None:
    """26+ stories with long text and photos, the in-brief list, a brand colour, a logo and a
    member's note: HTML under the warning size, <style> in <head> under 16 KB."""
    note = BlockConfig(segment="vip", title="For our members", text="Thank you. " * 20)
    config = with_newsletter(
        config,
        language=language,
        in_brief=True,
        brand_color="#0b6e4f",
        logo=LogoConfig("https://news.example/logo.png", 200, 40, "Gazette"),
        blocks=(note,),
    )
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition(front_page(9, 3, stories))).variant((), (0,))
    size = check_size(variant)
    assert size.bytes < SIZE_WARN_BYTES, f"{size.bytes / 1024:.0f} KB"
    head, body = variant.html.split("</head>", 1)
    styles = re.findall(r"<style[^>]*>(.*?)</style>", variant.html, re.S)
    assert len(styles) == 1 and "<style" in head and "<style" not in body
    assert len(styles[0].encode()) <= 16 * 1024
    assert len(re.findall(r"<h3", variant.html)) == 27


def test_images_never_float_and_every_block_has_a_dark_colour(config: Config) -> None:
    html = _html(with_newsletter(config, in_brief=True, brand_color="#0b6e4f"))
    # premailer turns text-align into align="" attributes; on an <img> that would float it.
    assert not re.search(r"<img[^>]* align=", html)
    style = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S)[0]
    dark = style[style.index("prefers-color-scheme: dark") :]
    lit = set(
        re.findall(r"class=\"([\w-]+)\"[^>]*style=[\"'][^\"']*background-color:#(?!fff)", html)
    )
    assert {"footer", "hero", "thumb", "brand-bar"} <= lit
    for cls in lit - {"page", "brand-bar"}:  # the brand bar keeps its colour
        assert re.search(rf"\.{cls}\b[^{{}}]*{{[^}}]*background-color", dark), cls
