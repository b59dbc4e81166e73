"""The rendered digest in real headless Chromium, as a reader sees it on a phone and a desktop.

At 375, 600 and 800 px, light and dark, images on and blocked, an English edition (with the
"in brief" list, a brand colour and a members' note) and an Arabic and a Hebrew one at phone
width: no horizontal scroll, no text cut off or sticking out of its box, every story visible,
thumbnails above the headline on phones and beside it on wider screens (on the correct side in
RTL), the lead photo as wide as the text, room under the masthead, readable text colours on
every block in both colour schemes, and alt text that fits its box when images are blocked.

Screenshots land in test-artifacts/ (render-en-375-dark-blocked.png, render-ar-375-light.png,
...) for people to look at. Network is closed: images come from a local stand-in, anything else
aborts.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.brand import contrast
from digest.config import BlockConfig, Config
from digest.render import Personal, Renderer, personalise
from tests.render_support import ARABIC_STORIES, STORIES, Story, make_edition, with_newsletter

pytestmark = pytest.mark.browser

BROWSER = os.environ.get("DIGEST_BROWSER", "/usr/bin/chromium")
PERSON = Personal(
    email="ana@example.com",
    name="Ana Costa",
    unsubscribe_url="https://news.example/u/token",
    preferences_url="https://news.example/p/token",
    view_url="https://news.example/archive/daily/2026-03-10",
)
HEBREW_STORIES: list[Story] = [
    (
        "חדשות",
        "מועצת העיר אישרה תוכנית תחבורה של 2.1 מיליארד דולר אחרי ישיבה של תשע שעות",
        "ההצבעה סוללת את הדרך לשני קווי רכבת קלה חדשים ולתכנון מחדש של רשת האוטובוסים.",
        "מאת מרים כהן",
        "העיתון לדוגמה",
        "https://img.news.example/transit.jpg",
    ),
    (
        "חדשות",
        "סערה ניתקה את החשמל ל־40 אלף בתים",
        "הצוותים צופים תיקון עד יום חמישי.",
        None,
        "סוכנות",
        None,
    ),
    ("חדשות", "ועד החינוך דחה את ההצבעה", "ההורים מילאו את האולם.", None, None, None),
    (
        "כלכלה",
        "Apple ונמל העיר: תנועה שיא",
        "נפח המכולות עלה ב־14 אחוזים.",
        "מאת לנה",
        "כלכלה",
        "https://img.news.example/port.jpg",
    ),
]


def _png(width: int, height: int) -> bytes:
    """A soft grey-blue gradient, standing in for a news photo."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((90 + y // 3, 110 + y // 3, 130 + x // 6)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


IMAGE = _png(280, 186)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(BROWSER).exists():
        pytest.skip(f"no Chromium at {BROWSER} (apt-get install chromium, or set DIGEST_BROWSER)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=BROWSER,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _email(config: Config, language: str = "en", stories: list[Story] | None = None) -> str:
    note = BlockConfig(
        segment="vip",
        title="For our members",
        text="Thank you for supporting local journalism. Members get early access to events.",
        link="https://news.example/members",
    )
    config = with_newsletter(
        config, language=language, in_brief=True, brand_color="#0b6e4f", blocks=(note,)
    )
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition(stories)).variant((), (0,))
    return personalise(variant, PERSON).html


def _open(browser: object, html: str, width: int, scheme: str, images: bool) -> object:
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": width, "height": 900}, color_scheme=scheme, device_scale_factor=1
    )
    page = context.new_page()

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if images and url.startswith("https://img.news.example/"):
            r.fulfill(status=200, content_type="image/png", body=IMAGE)  # type: ignore[attr-defined]
        else:
            r.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)
    page.set_content(html, wait_until="load")
    return page


# Every element that shows text of its own: its box, whether the text fits, its colours and the
# first background behind it.
_TEXT_BOXES = """() => {
  const out = [];
  const bg = el => {
    for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c;
    }
    return 'rgb(255, 255, 255)';
  };
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const s = getComputedStyle(el);
    if (!own || s.display === 'none' || el.closest('[style*="display:none"]')) continue;
    const r = el.getBoundingClientRect();
    out.push({tag: el.tagName, cls: el.className, text: el.textContent.trim().slice(0, 40),
              left: r.left, right: r.right, width: r.width, height: r.height,
              overflow: s.display !== 'inline' && el.scrollWidth > el.clientWidth + 1,
              color: s.color, background: bg(el)});
  }
  return out;
}"""


def _hex(rgb: str) -> str:
    parts = rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")
    return "#" + "".join(f"{int(float(p)):02x}" for p in parts[:3])


def _check_page(page: object, width: int, scheme: str, headlines: list[str]) -> None:
    overflow = page.evaluate(  # type: ignore[attr-defined]
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"horizontal scroll of {overflow}px at {width}px"

    boxes = page.evaluate(_TEXT_BOXES)  # type: ignore[attr-defined]
    assert len(boxes) > 20
    for box in boxes:
        assert not box["overflow"], f"text cut off at {width}px: {box}"
        assert box["left"] >= -0.5 and box["right"] <= width + 0.5, f"text off screen: {box}"
        ratio = contrast(_hex(box["color"]), _hex(box["background"]))
        assert ratio >= 4.5, f"{scheme}: contrast {ratio:.1f} for {box}"
        if scheme == "dark":
            # Dark mode covers every block: no light box left behind (the members' note too).
            from digest.brand import luminance

            assert luminance(_hex(box["background"])) < 0.1, f"light block in dark mode: {box}"

    shown = page.locator("h3 a")  # type: ignore[attr-defined]
    assert [shown.nth(i).inner_text() for i in range(shown.count())] == headlines
    for i in range(shown.count()):
        box = shown.nth(i).bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        # A phone shows a headline in a few lines, not squeezed to five or six.
        lines = box["height"] / float(
            shown.nth(i).evaluate("a => parseFloat(getComputedStyle(a).lineHeight)")
        )
        assert lines <= 4.2, f"headline {i} takes {lines:.1f} lines at {width}px"


def _check_images(page: object, width: int, rtl: bool, images: bool) -> None:
    text_column = page.locator(".section").first.evaluate(  # type: ignore[attr-defined]
        "td => { const s = getComputedStyle(td);"
        " return td.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); }"
    )
    hero = page.locator("img.hero")  # type: ignore[attr-defined]
    assert abs(hero.bounding_box()["width"] - text_column) <= 1, "lead photo narrower than text"
    for img in page.locator("img").all():  # type: ignore[attr-defined]
        box = img.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5
        if images:
            assert img.evaluate("i => i.complete && i.naturalWidth > 0")
            continue
        # Blocked: the alt text must fit the box it is shown in (not cut off in a small box).
        alt, font, line = img.evaluate(
            "i => [i.alt, parseFloat(getComputedStyle(i).fontSize),"
            " parseFloat(getComputedStyle(i).lineHeight)]"
        )
        per_line = (box["width"] - 20) / (0.55 * font)
        capacity = per_line * int(box["height"] // line)
        assert font >= 12 and capacity >= len(alt), f"alt text cut off: {alt!r} in {box}"
    for thumb in page.locator("img.thumb").all():  # type: ignore[attr-defined]
        row = thumb.locator("xpath=ancestor::td[contains(@class,'story')][1]")
        headline = row.locator("h3").bounding_box()
        box = thumb.bounding_box()
        if width < 480:  # stacked: the photo above the headline, as wide as the text
            assert box["y"] + box["height"] <= headline["y"] + 0.5
            assert box["width"] >= text_column - 1
        elif rtl:  # beside the headline, at the end of the line
            assert box["x"] + box["width"] <= headline["x"] + 0.5
        else:
            assert box["x"] >= headline["x"] + headline["width"] - 0.5


def _edges(page: object, selector: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(left, right) of the first `selector`'s text and of its section's text column."""
    return page.locator(selector).first.evaluate(  # type: ignore[attr-defined, no-any-return]
        """el => {
          const r = document.createRange(); r.selectNodeContents(el);
          const t = r.getBoundingClientRect();
          const td = el.closest('td.section'), s = getComputedStyle(td), c = td.getBoundingClientRect();
          return [[t.left, t.right],
                  [c.left + parseFloat(s.paddingLeft), c.right - parseFloat(s.paddingRight)]];
        }"""
    )


def _check_masthead(page: object) -> None:
    title = page.locator(".masthead a").bounding_box()  # type: ignore[attr-defined]
    rule = page.locator(".dateline").bounding_box()  # type: ignore[attr-defined]
    assert rule["y"] - (title["y"] + title["height"]) >= 10, "masthead rule touches the title"


@pytest.mark.parametrize("images", [True, False], ids=["images", "blocked"])
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [375, 600, 800])
def test_english_edition_reads_well_at_every_width(
    browser: object, config: Config, artifacts_dir: Path, width: int, scheme: str, images: bool
) -> None:
    page = _open(browser, _email(config), width, scheme, images)
    _check_page(page, width, scheme, [s[1] for s in STORIES])
    _check_images(page, width, rtl=False, images=images)
    _check_masthead(page)
    text, column = _edges(page, ".section-name h2")
    assert abs(text[0] - column[0]) <= 2, (text, column)
    name = f"render-en-{width}-{scheme}{'' if images else '-blocked'}.png"
    page.screenshot(path=str(artifacts_dir / name), full_page=True)  # type: ignore[attr-defined]
    page.context.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("language", "stories"), [("ar", ARABIC_STORIES), ("he", HEBREW_STORIES)], ids=["ar", "he"]
)
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [375, 800])
def test_right_to_left_edition_mirrors(
    browser: object,
    config: Config,
    artifacts_dir: Path,
    width: int,
    scheme: str,
    language: str,
    stories: list[Story],
) -> None:
    page = _open(browser, _email(config, language, stories), width, scheme, images=True)
    _check_page(page, width, scheme, [s[1] for s in stories])
    _check_images(page, width, rtl=True, images=True)
    _check_masthead(page)
    # Text starts on the right: section names and headlines hug the right edge of the column.
    for selector in (".section-name h2", ".headline-lead h3", ".card-headline h3", ".meta"):
        text, column = _edges(page, selector)
        assert abs(text[1] - column[1]) <= 2, (selector, text, column)
    assert page.evaluate("document.documentElement.dir") == "rtl"  # type: ignore[attr-defined]
    page.screenshot(  # type: ignore[attr-defined]
        path=str(artifacts_dir / f"render-{language}-{width}-{scheme}.png"), full_page=True
    )
    page.context.close()  # type: ignore[attr-defined]


def test_screenshots_cover_the_archive_too(
    browser: object, config: Config, artifacts_dir: Path
) -> None:
    nl = config.newsletter("daily")
    html = Renderer(config, dataclasses.replace(nl), make_edition()).archive().html
    page = _open(browser, html, 375, "light", images=True)
    _check_page(page, 375, "light", [s[1] for s in STORIES])
    page.context.close()  # type: ignore[attr-defined]
