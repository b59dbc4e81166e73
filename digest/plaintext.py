"""The plain-text twin's layout: terminal widths, word wrap, truncation at a grapheme, and the
direction a line reads in (right-to-left editions)."""

from __future__ import annotations

import unicodedata

from digest.text import shown_line

TEXT_WIDTH = 78
_RLM = "\u200f"


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
