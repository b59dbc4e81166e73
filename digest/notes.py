"""The editor's note: a few lines of Markdown above the stories, for the HTML and the text twin.

Parsing is markdown-it-py's (CommonMark) with only paragraphs, emphasis, links, escapes and
entities switched on and raw HTML off: anything else (headings, images, tables, `<b>`) stays as
the literal text the editor typed. The HTML is written here from markdown-it's tokens, every
text escaped and every link passed through the caller's `link` function (the renderer's own
story-link path: http(s) only, UTM parameters), so a note can hold nothing an article cannot.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

NOTE_MAX = 2000  # characters of Markdown: a note, not an article

_MD = MarkdownIt("zero", {"html": False}).enable(
    ["emphasis", "link", "escape", "entity", "newline"]
)
# Inline styles: the note's HTML is inserted after CSS inlining would have reached it.
_P_STYLE = "margin:0 0 12px 0;"
_A_STYLE = "color:#111111;text-decoration:underline;"


@dataclass(frozen=True)
class Note:
    html: Markup
    paragraphs: tuple[str, ...]  # plain text, links as "label <url>", for the text twin


def render_note(markdown: str, link: Callable[[str], str]) -> Note:
    """`link(href)` gives the URL to use, or "" to show the label alone."""
    out_html: list[str] = []
    out_text: list[str] = []
    for token in _MD.parse(markdown):
        if token.type == "inline":
            h, t = _inline(token.children or [], link)
            if t.strip():
                out_html.append(f'<p style="{_P_STYLE}">{h}</p>')
                out_text.append(t.strip())
    return Note(Markup("\n".join(out_html)), tuple(out_text))


def _inline(children: list[Token], link: Callable[[str], str]) -> tuple[str, str]:
    h: list[str] = []
    t: list[str] = []
    hrefs: list[str] = []  # the open links, innermost last ("" when shown as text)
    label: list[str] = []
    for c in children:
        if c.type == "text":
            h.append(html.escape(c.content))
            t.append(c.content)
            label.append(c.content)
        elif c.type == "softbreak":
            h.append("\n")
            t.append(" ")
        elif c.type == "hardbreak":
            h.append("<br>\n")
            t.append(" ")
        elif c.type in ("em_open", "strong_open"):
            h.append(f"<{c.tag}>")
        elif c.type in ("em_close", "strong_close"):
            h.append(f"</{c.tag}>")
        elif c.type == "link_open":
            href = link(str(c.attrs.get("href") or ""))
            hrefs.append(href)
            label.clear()
            if href:
                # The class lets dark mode (and Outlook.com's) recolour it like block links.
                h.append(f'<a class="note-link" href="{html.escape(href)}" style="{_A_STYLE}">')
        elif c.type == "link_close" and hrefs:
            href = hrefs.pop()
            if href:
                h.append("</a>")
                if "".join(label).strip() != href:
                    t.append(f" <{href}>")
    return "".join(h), "".join(t)
