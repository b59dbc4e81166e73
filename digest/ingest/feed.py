"""RSS and Atom feeds (feedparser), with media:* read beside it and XML entities refused."""

from __future__ import annotations

import calendar
import io
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import feedparser
from defusedxml import DefusedXmlException, EntitiesForbidden
from defusedxml import ElementTree as DefusedElementTree

from digest.errors import InputError
from digest.ingest.fields import (
    FieldError,
    _build,
    _collect,
    _Defaults,
    _in_range,
    _Parsed,
    _quote,
    _shorten,
    pick_section,
)
from digest.limits import MAX_ARTICLE_FIELD
from digest.text import html_to_text

_MRSS = "http://search.yahoo.com/mrss/"
_ITEM_TAGS = {
    "item",
    "{http://purl.org/rss/1.0/}item",
    "{http://my.netscape.com/rdf/simple/0.9/}item",
    "{http://www.w3.org/2005/Atom}entry",
    "{http://purl.org/atom/ns#}entry",
}
_SUMMARY_TAGS = {
    "description",
    "{http://purl.org/rss/1.0/}description",
    "{http://my.netscape.com/rdf/simple/0.9/}description",
    "{http://www.w3.org/2005/Atom}summary",
}
# RSS 2.0 <author> is "email (Name)"; feedparser mis-splits emails with long top-level domains.
_RSS_AUTHOR = re.compile(r"\s*\S+@\S+\s*\((.+)\)\s*")
_DEK_FROM_BODY = 300


def _parse_feed(path: Path, data: bytes, defaults: _Defaults) -> _Parsed:
    root = _xml_root(path, data)  # first: refuses entity declarations before feedparser reads
    data = _authors_cut(root, data)
    # A file object, never bytes or str: feedparser would treat those as a URL or file name.
    doc = feedparser.parse(io.BytesIO(data), sanitize_html=True, resolve_relative_uris=True)
    entries = doc.get("entries") or []
    if not entries and (doc.get("bozo") or not doc.get("version")):
        problem = doc.get("bozo_exception")
        detail = f" ({' '.join(str(problem).split())})" if problem else ""
        raise InputError(f"{path}: not an RSS or Atom feed{detail}")
    feed_title = _text_of(doc.get("feed", {}), "title")
    source = defaults.source or feed_title
    media = _media_texts(root, len(entries))
    parsed = _Parsed(path, [], [])
    for number, entry in enumerate(entries, 1):
        where = f"item {number}"
        extra = media[number - 1] if media else _MediaText()
        try:
            raw = _entry_fields(entry, extra, source, defaults)
        except FieldError as e:
            _collect(parsed, str(e), where)
            continue
        raw["feed_position"] = number  # the feed's own order: a weaker editorial rank
        _collect(parsed, _build(where, raw, defaults), where)
    return parsed


@dataclass
class _MediaText:
    """media:description / media:title of one item, read beside feedparser, which files them
    under the item's own summary, content and title."""

    alt: str | None = None
    descriptions: set[str] = field(default_factory=set)
    summary: str | None = None  # the item's own description/summary, as it is in the file


_ENTITY_DECLARATION = re.compile(
    b"|".join(re.escape("<!ENTITY".encode(codec)) for codec in ("utf-8", "utf-16-le", "utf-16-be"))
)


def _xml_root(path: Path, data: bytes) -> ElementTree.Element | None:
    """The parsed document, or None when it is malformed (feedparser's loose parse may still
    read its items). A feed that declares entities is refused: feedparser's XML parser
    expands them (a billion-laughs feed grows to gigabytes) and no real feed needs one. An
    external DTD or entity is never fetched (defusedxml refuses; expat fetches nothing)."""
    try:
        root: ElementTree.Element = DefusedElementTree.fromstring(
            data, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
        return root
    except DefusedXmlException as e:
        name = getattr(e, "name", None) if isinstance(e, EntitiesForbidden) else None
        what = f"entity {name!r}" if name else "an external reference"
        raise _entities_refused(path, what) from None
    except (ElementTree.ParseError, ValueError, LookupError):
        if _ENTITY_DECLARATION.search(data):
            raise _entities_refused(path, "an entity") from None
        return None


# Elements feedparser searches for an email address with a regex that is quadratic in the
# text's length: a 5 MB <author> would hang the ingest. Cut to more than the byline cap, so
# the item is still rejected with "byline is longer than ..." and the rest of the feed stored.
_AUTHOR_TAGS = {"author", "creator", "name", "email", "managingEditor", "webMaster", "publisher"}
_AUTHOR_READ = MAX_ARTICLE_FIELD["byline"] * 4


def _authors_cut(root: ElementTree.Element | None, data: bytes) -> bytes:
    """The feed with every over-long author-like text cut to _AUTHOR_READ characters; the
    file's own bytes when none is (nearly always)."""
    if root is None:
        return data
    cut = False
    for element in root.iter():
        tag = element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""
        text = element.text
        if tag in _AUTHOR_TAGS and text is not None and len(text) > _AUTHOR_READ:
            element.text = text[: _AUTHOR_READ + 1]
            cut = True
    if not cut:
        return data
    shortened: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return shortened


def _entities_refused(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: the feed declares {what} (<!ENTITY>); refused: XML entities can expand to "
        "gigabytes or read local files, and feeds do not need them"
    )


def _media_texts(root: ElementTree.Element | None, count: int) -> list[_MediaText] | None:
    if root is None:
        return None  # malformed XML: feedparser's loose parse still gives the items
    items = [el for el in root.iter() if el.tag in _ITEM_TAGS]
    if len(items) != count:
        return None
    texts: list[_MediaText] = []
    for item in items:
        descriptions = [
            (el.text or "").strip() for el in item.iter(f"{{{_MRSS}}}description") if el.text
        ]
        titles = [(el.text or "").strip() for el in item.iter(f"{{{_MRSS}}}title") if el.text]
        alt = next((t for t in descriptions + titles if t), None)
        own = next((el.text for el in item if el.tag in _SUMMARY_TAGS and el.text), None)
        texts.append(_MediaText(alt, {d for d in descriptions if d}, own))
    return texts


def _entry_fields(
    entry: dict[str, Any], media: _MediaText, source: str | None, defaults: _Defaults
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "url": entry.get("link"),
        "title": _text_of(entry, "title"),
        "guid": entry.get("id") or None,
    }
    try:
        raw["published_at"] = _entry_date(entry)
    except FieldError as e:
        raw["date_error"] = str(e)  # reported after the link and title checks
    # dict.get: FeedParserDict.get("updated...") falls back to the published date.
    updated = dict.get(entry, "updated_parsed")
    if updated and dict.get(entry, "published_parsed"):
        raw["updated_at"] = _struct_to_utc(updated)
    terms = [t.get("term") or t.get("label") for t in entry.get("tags") or []]
    terms = [t.strip() for t in terms if isinstance(t, str) and t.strip()]
    raw["sections"] = terms
    try:
        section = pick_section(terms, defaults.section, defaults.known_sections).casefold()
    except FieldError:
        section = None  # _validate rejects the item with the reason
    raw["tags"] = [t for t in terms if t.casefold() != section]
    body = _entry_body(entry, media)
    raw["body"] = body
    summary = entry.get("summary")
    if summary in media.descriptions:  # feedparser filed media:description as the summary
        summary = media.summary
    dek = html_to_text(summary) if summary else ""
    if summary and body and summary == body:
        dek = _shorten(dek, _DEK_FROM_BODY)  # feedparser copies Atom content into summary
    raw["dek"] = _shorten(dek, MAX_ARTICLE_FIELD["dek"])  # a feed's summary may be the story
    raw["byline"] = _byline(entry)
    item_source = entry.get("source", {}).get("title") if entry.get("source") else None
    raw["source"] = item_source or source
    image_url, image_alt = _entry_image(entry, media)
    if image_url is None:
        # Photo posts (tumblr and the like) carry their picture only in the HTML.
        image_url, image_alt = first_image(body or entry.get("summary") or "")
    raw["image_url"] = image_url
    raw["image_alt"] = _shorten(image_alt, MAX_ARTICLE_FIELD["image_alt"]) if image_alt else None
    raw["image_caption"] = None
    return raw


def _byline(entry: Mapping[str, Any]) -> str | None:
    author = entry.get("author")
    if not isinstance(author, str):
        return None
    match = _RSS_AUTHOR.fullmatch(author)
    if match:
        return match[1]
    return None if "@" in author and " " not in author.strip() else author


def _text_of(context: Mapping[str, Any], key: str) -> str | None:
    value = context.get(key)
    if not isinstance(value, str):
        return None
    detail = context.get(f"{key}_detail") or {}
    if detail.get("type") in ("text/html", "application/xhtml+xml"):
        return html_to_text(value)
    return value


def _entry_date(entry: dict[str, Any]) -> datetime:
    for key in ("published", "updated", "created"):
        parsed = dict.get(entry, f"{key}_parsed")
        if parsed:
            return _struct_to_utc(parsed)
        if dict.get(entry, key):
            raise FieldError(f"unparseable date {_quote(dict.get(entry, key))}")
    raise FieldError("no date")


def _struct_to_utc(value: time.struct_time) -> datetime:
    """feedparser's *_parsed are UTC struct_times; timegm avoids datetime's leap-second error."""
    try:
        moment = datetime.fromtimestamp(calendar.timegm(value), UTC)
    except (OverflowError, ValueError, OSError):
        raise FieldError(
            f"date {time.strftime('%Y-%m-%d %H:%M:%S', value)} is out of range"
        ) from None
    return _in_range(moment, "published")


def _entry_body(entry: Mapping[str, Any], media: _MediaText) -> str | None:
    contents = [
        c
        for c in entry.get("content") or []
        if c.get("value") and c["value"] not in media.descriptions
    ]
    for wanted in ("text/html", "application/xhtml+xml", None):
        for content in contents:
            if wanted is None or content.get("type") == wanted:
                return str(content["value"])
    return None


def _entry_image(entry: Mapping[str, Any], media: _MediaText) -> tuple[str | None, str | None]:
    """Largest first: media:content (image), media:thumbnail, then an image enclosure."""
    for content in entry.get("media_content") or []:
        kind = str(content.get("type") or "")
        if content.get("url") and (content.get("medium") == "image" or kind.startswith("image/")):
            return content["url"], media.alt
    for thumb in entry.get("media_thumbnail") or []:
        if thumb.get("url"):
            return thumb["url"], media.alt
    for link in entry.get("links") or []:
        kind = str(link.get("type") or "")
        if link.get("rel") == "enclosure" and kind.startswith("image/") and link.get("href"):
            return link["href"], media.alt
    return None, None


class _FirstImage(HTMLParser):
    """The first <img> of an HTML fragment with an http(s) src that is not a tracking pixel."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: tuple[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "img" or self.found is not None:
            return
        a = dict(attrs)
        src = (a.get("src") or "").strip()
        if not src.lower().startswith(("http://", "https://")):
            return
        if a.get("width") in ("0", "1") or a.get("height") in ("0", "1"):
            return
        self.found = (src, (a.get("alt") or "").strip() or None)


def first_image(html: str) -> tuple[str | None, str | None]:
    """(src, alt) of the first real image in an item's HTML, or (None, None)."""
    if "<img" not in html.lower():
        return None, None
    parser = _FirstImage()
    parser.feed(html)
    parser.close()
    return parser.found or (None, None)
