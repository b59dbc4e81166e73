"""A newsletter's brand colour, turned into colours that stay readable.

The configured colour is used as it is for decoration (the bar above the masthead, rules) and,
darkened or lightened just enough, for text: section names and the "in brief" markers must keep
a WCAG AA contrast of 4.5:1 on the white page and on the dark-mode page, whatever the newsroom
picked.
"""

from __future__ import annotations

from dataclasses import dataclass

LIGHT_PAGE = "#ffffff"
DARK_PAGE = "#1c1c1c"
DEFAULT_ACCENT = "#9b1c1c"
DEFAULT_ACCENT_DARK = "#ff8f85"
TEXT_CONTRAST = 4.5


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(max(0.0, min(255.0, c))):02x}" for c in rgb)


def luminance(colour: str) -> float:
    """WCAG relative luminance of #rrggbb."""
    linear = [
        c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        for c in (v / 255 for v in _rgb(colour))
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def readable(colour: str, background: str, minimum: float = TEXT_CONTRAST) -> str:
    """`colour` mixed towards black (on a light background) or white (on a dark one) in small
    steps until it reaches `minimum` contrast on `background`."""
    target = (0.0, 0.0, 0.0) if luminance(background) > 0.18 else (255.0, 255.0, 255.0)
    rgb = _rgb(colour)
    for step in range(21):
        t = step / 20
        mixed = _hex(tuple(c + (g - c) * t for c, g in zip(rgb, target, strict=True)))  # type: ignore[arg-type]
        if contrast(mixed, background) >= minimum:
            return mixed
    return _hex(target)


@dataclass(frozen=True)
class Brand:
    bar: str | None  # the colour as configured, for decoration; None without a brand colour
    accent: str  # text on the light page
    accent_dark: str  # text on the dark-mode page

    @classmethod
    def of(cls, colour: str | None) -> Brand:
        if colour is None:
            return cls(None, DEFAULT_ACCENT, DEFAULT_ACCENT_DARK)
        return cls(colour, readable(colour, LIGHT_PAGE), readable(colour, DARK_PAGE))
