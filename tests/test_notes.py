"""The editor's note: Markdown (paragraphs, links, emphasis) to safe HTML and to the text
twin; anything else stays text."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given
from hypothesis import strategies as st

from digest.notes import render_note


def link(url: str) -> str:
    return url if url.startswith(("http://", "https://")) else ""


def test_paragraphs_links_and_emphasis() -> None:
    note = render_note(
        "Good *morning*, **Tampa**.\nSee [our guide](https://news.example/g?a=1&b=2).\n\n"
        "Second paragraph.",
        link,
    )
    assert note.html == (
        '<p style="margin:0 0 12px 0;">Good <em>morning</em>, <strong>Tampa</strong>.\n'
        'See <a class="note-link" href="https://news.example/g?a=1&amp;b=2" style="color:#111111;'
        'text-decoration:underline;">our guide</a>.</p>\n'
        '<p style="margin:0 0 12px 0;">Second paragraph.</p>'
    )
    assert note.paragraphs == (
        "Good morning, Tampa. See our guide <https://news.example/g?a=1&b=2>.",
        "Second paragraph.",
    )


def test_raw_html_images_headings_and_unsafe_links_stay_text() -> None:
    note = render_note(
        "<script>alert(1)</script> # Big\n\n![x](https://img.example/a.png) "
        "[click](javascript:alert(1)) [mail](mailto:a@b.example) <b>bold</b>",
        link,
    )
    assert "<script>" not in note.html and "&lt;script&gt;" in note.html
    assert "<b>" not in note.html and "javascript" not in note.html.split("click")[0]
    assert 'href="mailto' not in note.html  # not http(s): shown as its label
    assert "<img" not in note.html


_ALLOWED = {"p", "em", "strong", "a", "br"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_any_note_renders_only_safe_markup(text: str) -> None:
    note = render_note(text, link)
    parser = _Tags()
    parser.feed(note.html)
    for tag, attrs in parser.tags:
        assert tag in _ALLOWED, tag
        if tag == "a":
            assert str(attrs["href"]).startswith(("http://", "https://"))
        assert set(attrs) <= {"href", "style"}
    for paragraph in note.paragraphs:
        assert "\n" not in paragraph and paragraph == paragraph.strip()
