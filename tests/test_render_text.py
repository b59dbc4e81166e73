"""Text helpers behind the plain-text twin, subject and preheader: wrapping and shortening."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from digest.render import display_width, truncate, wrap

_words = st.lists(
    st.text(
        alphabet=st.sampled_from(list("abcdefghij") + ["é", "ß", "漢", "字", "🎉", "ש", "م"]),
        min_size=1,
        max_size=30,
    ),
    max_size=40,
)


@given(words=_words, width=st.integers(min_value=20, max_value=78))
def test_wrap_keeps_every_word_in_order_within_the_width(words: list[str], width: int) -> None:
    out = wrap(" ".join(words), width=width, indent="  ")
    lines = out.split("\n") if out else []
    assert " ".join(line.strip() for line in lines).split() == words
    for line in lines:
        assert line.startswith("  ")
        # Only a single word longer than the line (a URL) may stick out.
        assert display_width(line) <= width or len(line.split()) == 1


def test_wrap_counts_wide_characters_as_two_columns() -> None:
    assert display_width("漢字🎉a") == 7
    assert wrap("漢字 " * 20, width=20) == "\n".join(["漢字 漢字 漢字 漢字"] * 5)


def test_a_long_url_gets_a_line_of_its_own() -> None:
    url = "https://news.example/" + "x" * 90
    assert wrap(f"Read more at {url} today", width=40) == f"Read more at\n{url}\ntoday"


_graphemes = st.sampled_from(["a", "b", " ", "é", "e\u0301", "👩🏽‍💻", "🏳️‍🌈", "👍🏿", "漢"])


@given(parts=st.lists(_graphemes, max_size=60), limit=st.integers(min_value=4, max_value=40))
def test_truncate_never_splits_a_character_and_respects_the_limit(
    parts: list[str], limit: int
) -> None:
    text = "".join(parts).strip()
    out = truncate(text, limit)
    assert len(out) <= limit
    if out == " ".join(text.split()):
        return
    assert out.endswith("…")
    kept = out[:-1]
    flat = " ".join(text.split())
    assert flat.startswith(kept)
    # The cut falls between whole characters: nothing that binds to its neighbour on either side.
    binds = ("\u200d", "\ufe0f", "\u0301", "\U0001f3fd", "\U0001f3ff")
    assert not kept.endswith("\u200d")
    assert not flat[len(kept) :].startswith(binds)
