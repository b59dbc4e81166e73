"""The rendered digest in real headless Chromium: fits phones and desktops, every story visible.

Screenshots land in test-artifacts/ (render-375.png, render-800.png, render-375-dark.png) for
people to look at. Network is closed: images come from a local stand-in, anything else aborts.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.config import Config
from digest.render import Personal, Renderer, personalise
from tests.render_support import STORIES, make_edition

pytestmark = pytest.mark.browser

BROWSER = os.environ.get("DIGEST_BROWSER", "/usr/bin/chromium")


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


def _email(config: Config) -> str:
    nl = config.newsletter("daily")
    variant = Renderer(config, nl, make_edition()).variant(())
    personal = Personal(
        email="ana@example.com",
        name="Ana Costa",
        unsubscribe_url="https://news.example/u/token",
        preferences_url="https://news.example/p/token",
        view_url="https://news.example/archive/daily/2026-03-10",
    )
    return personalise(variant, personal).html


@pytest.mark.parametrize("width", [375, 800])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_digest_fits_the_screen_and_shows_every_story(
    browser: object, config: Config, artifacts_dir: Path, width: int, scheme: str
) -> None:
    image = _png(280, 186)
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": width, "height": 900}, color_scheme=scheme, device_scale_factor=1
    )
    page = context.new_page()

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url.startswith("https://img.news.example/"):
            r.fulfill(status=200, content_type="image/png", body=image)  # type: ignore[attr-defined]
        else:
            r.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)
    page.set_content(_email(config), wait_until="load")

    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"horizontal scroll of {overflow}px at {width}px"

    headlines = page.locator("h3 a")
    assert headlines.count() == len(STORIES)
    for i in range(headlines.count()):
        box = headlines.nth(i).bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, box
    assert [headlines.nth(i).inner_text() for i in range(headlines.count())] == [
        s[1] for s in STORIES
    ]
    for img in page.locator("img").all():
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
        box = img.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width + 0.5

    suffix = "" if scheme == "light" else "-dark"
    page.screenshot(path=str(artifacts_dir / f"render-{width}{suffix}.png"), full_page=True)
    context.close()
