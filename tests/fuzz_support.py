"""Hypothesis strategies and settings for the fuzzing suite (tests/test_fuzz_*.py).

`make test` runs the default profile (a few dozen examples per target, per backend); set
DIGEST_FUZZ=long for the long one (thousands), e.g. before a release or after touching a
parser: `DIGEST_FUZZ=long .venv/bin/python -m pytest -m fuzz`. Every target asserts the same
contract: any input gives a result or a DigestError (never another exception), and after an
error the database holds exactly what it held before.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from digest.db import Base, load_models

LONG = os.environ.get("DIGEST_FUZZ", "").lower() == "long"


def fuzz_settings(examples: int) -> settings:
    """`examples` in the default profile; fifty times as many with DIGEST_FUZZ=long."""
    return settings(
        max_examples=examples * 50 if LONG else examples,
        deadline=None,
        derandomize=not LONG,  # the default run is reproducible; the long one explores
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # the database is snapshotted per example
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for "the database is unchanged after an error"."""
    load_models()
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(r) for r in rows]
    return out


# --- text an attacker or a careless export would hand us ----------------------------------------

NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\r\n",
        "\n",
        "\r",
        "\t",
        "\x0b",
        "\x1b[2J",
        "\x85",
        "\u2028",
        "\u202e",
        "\ufeff",
        "\ud800",
        '=HYPERLINK("https://evil.example")',
        "\r\nBcc: victim@evil.example\r\n",
        "=?utf-8?q?=0D=0A?=",
        "&amp;",
        "&lol;",
        "<script>alert(1)</script>",
        "]]>",
        '"',
        ",",
        ";",
        "|",
        "'",
        "\\",
        "0" * 400,
        "9" * 5000,
        "nan",
        "inf",
        "-1",
        "1e400",
        "2026-03-10T08:00:00Z",
        "2026-03-10T08:00:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59+14:00",
        "https://news.example/a",
        "javascript:alert(1)",
        "http://",
        "ann@example.com",
        "News",
        "pin",
        "Zoë 日本 🧪",
    ]
)
TEXT = st.one_of(NASTY, st.text(max_size=40), st.lists(NASTY, max_size=4).map("".join))
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT, st.just(10**400)
)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)

ARTICLE_FIELDS = [
    "guid", "id", "url", "title", "dek", "summary", "body", "section", "byline", "author",
    "published", "updated", "image_url", "image_alt", "image_caption", "tags", "source",
    "priority", "popularity",
]  # fmt: skip


@st.composite
def article_record(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly a valid story, with hostile values in a few fields."""
    n = draw(st.integers(0, 50))
    record: dict[str, Any] = {
        "url": f"https://news.example/{n}",
        "title": f"Headline {n}",
        "section": "News",
        "published": "2026-03-10T08:00:00Z",
    }
    for name in draw(st.lists(st.sampled_from(ARTICLE_FIELDS), max_size=4)):
        record[name] = draw(JSON_VALUE)
    return record


def json_document() -> st.SearchStrategy[bytes]:
    records = st.lists(article_record(), max_size=5)
    return st.one_of(
        records.map(lambda r: json.dumps(r).encode()),
        records.map(lambda r: json.dumps({"articles": r}).encode()),
        records.map(lambda r: "\n".join(json.dumps(x) for x in r).encode()),
        JSON_VALUE.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.binary(max_size=200),
    )


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def csv_document(columns: list[str]) -> st.SearchStrategy[bytes]:
    """A header (named columns, sometimes a hostile one) and rows of hostile cells."""
    header = st.lists(st.sampled_from(columns) | TEXT, min_size=1, max_size=6).map(
        lambda h: list(dict.fromkeys(h))
    )

    @st.composite
    def document(draw: st.DrawFn) -> bytes:
        names = draw(st.one_of(st.just(columns), header))
        rows = draw(
            st.lists(st.lists(TEXT, min_size=len(names), max_size=len(names) + 1), max_size=5)
        )
        lines = [",".join(map(_csv_cell, names))] + [",".join(map(_csv_cell, r)) for r in rows]
        ending = draw(st.sampled_from(["\n", "\r\n"]))
        text = ending.join(lines) + ending
        encoded = text.encode("utf-8", "surrogatepass")
        return draw(st.sampled_from([encoded, b"\xef\xbb\xbf" + encoded]))

    return st.one_of(document(), st.binary(max_size=200))


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;")


@st.composite
def feed_document(draw: st.DrawFn) -> bytes:
    """RSS and Atom with hostile titles, dates and links, escaped or not, sometimes with a
    DOCTYPE (an external DTD or entity declarations)."""
    escape = draw(st.booleans())
    text = (lambda v: _xml_text(v)) if escape else (lambda v: v)
    doctype = draw(
        st.sampled_from(
            [
                "",
                '<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
                '"http://127.0.0.1:9/rss-0.91.dtd">',
                '<!DOCTYPE rss [<!ENTITY a "AAAA"><!ENTITY b "&a;&a;&a;&a;">]>',
                '<!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
            ]
        )
    )
    items = []
    for _ in range(draw(st.integers(0, 3))):
        title, link, date, category = (draw(TEXT) for _ in range(4))
        link = draw(st.sampled_from([link, "https://news.example/x"]))
        date = draw(st.sampled_from([date, "Tue, 10 Mar 2026 08:00:00 GMT"]))
        items.append(
            f"<item><title>{text(title)}</title><link>{text(link)}</link>"
            f"<category>{text(category)}</category><pubDate>{text(date)}</pubDate>"
            f"<description>{text(draw(TEXT))}</description></item>"
        )
    body = f'<rss version="2.0"><channel><title>{text(draw(TEXT))}</title>{"".join(items)}'
    body += "</channel></rss>"
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    encoding = draw(st.sampled_from(["utf-8", "iso-8859-1", "utf-16"]))
    document = f'<?xml version="1.0" encoding="{encoding}"?>\n{doctype}\n{body}'
    return (
        document.encode(encoding, "replace")
        if encoding != "utf-8"
        else document.encode("utf-8", "surrogatepass")
    )


# --- segment rules ---------------------------------------------------------------------------------

RULE_WORDS = st.sampled_from(
    [
        "and", "or", "not", "(", ")", "in", "sections", "tags", "contains", "created",
        "confirmed", "before", "after", "=", "!=", "==", "~", "region", "plan", "email",
        "name", '"vip"', '"News"', '"Tampa Bay"', '"\\"', '"', "2025-01-01", "0001-01-01",
        "9999-12-31", "2025-02-30", "\x00", "\n",
    ]
)  # fmt: skip
RULE = st.one_of(
    st.lists(RULE_WORDS, max_size=12).map(" ".join),
    st.text(max_size=60),
    st.integers(1, 3000).map(lambda n: "not " * n + 'tags contains "vip"'),
    st.integers(1, 3000).map(lambda n: "(" * n + 'tags contains "vip"' + ")" * n),
    st.integers(1, 300).map(lambda n: " or ".join(['region = "x"'] * n)),
)
