"""Untrusted text: which control characters may appear where, and how they are named.

One set of rules shared by ingest, the subscriber entry points, the config loader, rendering and
the message builder:

- `CONTROL` matches what is never text: C0 controls except tab, line feed and carriage return,
  DEL and the C1 controls (PostgreSQL refuses NUL; a C1 character can make Gmail clip a
  message).
- `LINE_BREAKS` matches what ends or bends a line (CR, LF, tab, vertical tab, form feed, NEL,
  U+2028/U+2029): harmless in an article body, an injection in a header or a one-line field.
- `BIDI` matches the bidirectional overrides and isolates, which reorder the text around them
  (a display name that reads differently from what it is).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from html.parser import HTMLParser

_C0_C1 = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_BREAKS = "\t\n\r\x0b\x0c\x85\u2028\u2029"
_BIDI = "\u202a-\u202e\u2066-\u2069"

CONTROL = re.compile(f"[{_C0_C1}]")
LINE_BREAKS = re.compile(f"[{_BREAKS}]")
BIDI = re.compile(f"[{_BIDI}]")
# Anything a one-line value (a name, a title, a header) must not hold. Lone surrogates too:
# they cannot be encoded at all.
_NOT_IN_LINE = re.compile(f"[{_C0_C1}{_BREAKS}{_BIDI}\ud800-\udfff]")
_SPACES = re.compile(r"[ \t\n\r\f\v\x85\u2028\u2029]+")
# What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def describe(ch: str) -> str:
    """A character as an error message names it: U+000D (CARRIAGE RETURN)."""
    name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch)
    return f"U+{ord(ch):04X} ({name})" if name else f"U+{ord(ch):04X}"


_CONTROL_NAMES = {
    "\x00": "NUL",
    "\t": "TAB",
    "\n": "LINE FEED",
    "\r": "CARRIAGE RETURN",
    "\x0b": "VERTICAL TAB",
    "\x0c": "FORM FEED",
    "\x1b": "ESCAPE",
    "\x7f": "DELETE",
    "\x85": "NEXT LINE",
}


def line_problem(value: str) -> str | None:
    """Why `value` cannot be a one-line field (a name, title, header value), or None."""
    if value.isprintable():  # C-fast, and false for every character below (and a few more)
        return None
    found = _NOT_IN_LINE.search(value)
    if found is None:
        return None
    return f"contains the control character {describe(found.group())}"


def text_problem(value: str) -> str | None:
    """Why `value` cannot be multi-line text (line breaks and tabs are fine), or None."""
    found = CONTROL.search(value) or _surrogate(value)
    if found is None:
        return None
    return f"contains the control character {describe(found.group())}"


def _surrogate(value: str) -> re.Match[str] | None:
    return re.search("[\ud800-\udfff]", value)


def one_line(value: str) -> str:
    """`value` as one line: line breaks and tabs become a space, runs of spaces one space,
    other control characters and bidi overrides are dropped; stripped."""
    value = LINE_BREAKS.sub(" ", value)
    value = _NOT_IN_LINE.sub("", value)
    return _SPACES.sub(" ", value).strip()


def strip_controls(value: str) -> str:
    """`value` without the characters that are never text (line breaks and tabs kept)."""
    return CONTROL.sub("", value)


def csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula: a leading `'` before
    `=`, `+`, `-`, `@`, tab or carriage return (OWASP). `csv_value` undoes it on import."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def csv_row(cells: Iterable[object]) -> list[str]:
    """A row for csv.writer with every cell made formula-safe (csv_cell)."""
    return [csv_cell("" if c is None else str(c)) for c in cells]


def csv_value(cell: str) -> str:
    """The value of a cell written by `csv_cell` (an export read back by an import)."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


# --- shown text (rendering) ----------------------------------------------------------------

# What a rendered email never shows: C0 controls but tab and line feed, DEL, C1 controls and
# the bidi overrides/isolates.
UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ANY_SPACE = re.compile(r"\s+")


def clean_text(value: str) -> str:
    """Drop control characters and bidi overrides from untrusted text; keep emoji and RTL."""
    return UNSHOWN.sub("", value)


def shown_line(value: str) -> str:
    """`value` as rendering shows a one-line field: clean_text, any whitespace run one space."""
    return _ANY_SPACE.sub(" ", clean_text(value)).strip()


# --- HTML to text -----------------------------------------------------------------------

# ASCII whitespace only: str.split() would also eat no-break spaces (French « guillemets »).
ASCII_SPACES = re.compile(r"[ \t\n\r\f\v]+")


class _TextExtractor(HTMLParser):
    """Visible text of an HTML fragment: tags dropped, entities decoded, blocks spaced."""

    _SKIP = {"script", "style", "template", "noscript"}
    _BLOCK = {
        "p",
        "br",
        "div",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "tr",
        "td",
        "th",
        "blockquote",
        "figure",
        "figcaption",
        "section",
        "article",
        "hr",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment on one line (for deks and HTML titles)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return ASCII_SPACES.sub(" ", "".join(parser.parts)).strip()
