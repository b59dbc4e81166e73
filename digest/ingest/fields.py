"""One item's fields: the raw values a feed entry, JSON object or CSV row gives, validated into
Article attributes, or a FieldError whose message is the rejection reason.

Every text field is capped (digest.limits.MAX_ARTICLE_FIELD): a longer value rejects its item
with one line naming the file, the item and the field, so one story cannot make an edition
unsendable while the rest of the file is stored.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any

from digest.articles import PRIORITIES, normalise_url
from digest.errors import InputError
from digest.limits import MAX_ARTICLE_FIELD, MAX_DATE, MAX_TAG, MAX_TAGS, MIN_DATE
from digest.text import ASCII_SPACES, CONTROL, describe

# Longer values are rejected (digest.limits, within the articles table's columns).
_MAX_LENGTH = MAX_ARTICLE_FIELD
# Long free text: control characters are dropped. Every other field is one line, where a
# control character other than a line break or tab rejects the item.
_MULTILINE = ("dek", "body", "image_caption")
# What content_hash covers: every field ingest stores.
_DEFAULTS: dict[str, Any] = {
    "dek": "",
    "body": None,
    "byline": None,
    "updated_at": None,
    "image_url": None,
    "image_alt": None,
    "image_caption": None,
    "tags": [],
    "source": None,
    "priority": "normal",
    "popularity": 0.0,
    "rank": None,
    "feed_position": None,
}
# Hashed only when set, so articles stored before these fields existed keep their hash.
_HASHED_IF_SET = ("rank",)
# JSON/CSV field names (and accepted aliases) -> Article attribute.
_FIELD_NAMES = {
    "guid": "guid",
    "id": "guid",
    "url": "url",
    "title": "title",
    "dek": "dek",
    "summary": "dek",
    "body": "body",
    "section": "section",
    "byline": "byline",
    "author": "byline",
    "published": "published_at",
    "updated": "updated_at",
    "image_url": "image_url",
    "image_alt": "image_alt",
    "image_caption": "image_caption",
    "tags": "tags",
    "source": "source",
    "priority": "priority",
    "popularity": "popularity",
    "rank": "rank",
}


class FieldError(ValueError):
    """One field of one item is unusable; the message is the rejection reason."""


@dataclass
class _Item:
    where: str  # "item 3", "row 4", "line 2": how the user finds it in the file
    values: dict[str, Any]  # validated Article attributes this item provides


@dataclass
class _Parsed:
    path: Path
    items: list[_Item]
    rejections: list[str]


@dataclass(frozen=True)
class _Defaults:
    section: str | None
    source: str | None
    known_sections: Mapping[str, str] | None
    # Date-only `published`/`updated` values are midnight here (the newsletter's zone).
    timezone: tzinfo | None = None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decode(path: Path, data: bytes, what: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: UTF-16 text; {what} must be UTF-8 (save it as UTF-8)")
    if b"\x00" in data[:8192]:
        raise InputError(f"{path}: binary data, not {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (invalid byte at offset {e.start}); {what} must be UTF-8"
        ) from None


def _build(where: str, raw: Mapping[str, Any], defaults: _Defaults) -> _Item | str:
    """Validate one item's raw fields; an _Item, or the reason it is rejected."""
    try:
        return _Item(where, _validate(raw, defaults))
    except FieldError as e:
        return str(e)


def _validate(raw: Mapping[str, Any], defaults: _Defaults) -> dict[str, Any]:
    values: dict[str, Any] = {}
    url = parse_url(raw.get("url"))
    values["url"] = url
    title = _one_line(clean_text(raw.get("title"), "title"))
    if not title:
        raise FieldError("no title")
    values["title"] = title
    if "date_error" in raw:
        raise FieldError(raw["date_error"])
    if raw.get("published_at") is None:
        raise FieldError("no published date")
    values["published_at"] = parse_datetime(raw["published_at"], "published", defaults.timezone)
    guid = clean_text(raw.get("guid"), "guid", allow_number=True)
    # Without a guid the URL is the id; one too long for the guid column is hashed to fit.
    fallback = url if len(url) <= _MAX_LENGTH["guid"] else f"sha256:{_sha256(url)}"
    values["guid"] = guid or fallback
    values["section"] = pick_section(
        raw.get("sections") or [], defaults.section, defaults.known_sections
    )
    for name in ("dek", "body", "byline", "image_alt", "image_caption", "source"):
        if name in raw:
            value = clean_text(raw[name], name, multiline=name in _MULTILINE)
            if name in ("byline", "source", "image_alt"):
                value = _one_line(value)
            values[name] = value or _DEFAULTS[name]
    if raw.get("image_url"):
        values["image_url"] = parse_url(raw["image_url"], "image_url")
    elif "image_url" in raw:
        values["image_url"] = None
    if not values.get("source") and defaults.source:
        values["source"] = defaults.source
    if "updated_at" in raw:
        updated = raw["updated_at"]
        values["updated_at"] = (
            None if _blank(updated) else parse_datetime(updated, "updated", defaults.timezone)
        )
    if "tags" in raw:
        values["tags"] = parse_tags(raw["tags"])
    if "priority" in raw:
        values["priority"] = parse_priority(raw["priority"])
    if "popularity" in raw:
        values["popularity"] = parse_popularity(raw["popularity"])
    if "rank" in raw:
        values["rank"] = parse_rank(raw["rank"])
    if "feed_position" in raw:
        values["feed_position"] = raw["feed_position"]
    for name, limit in _MAX_LENGTH.items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > limit:
            raise FieldError(f"{name} is longer than {limit} characters")
    return values


def _one_line(text: str | None) -> str | None:
    """Headlines, bylines and sources are one line: feeds often wrap them in newlines."""
    return ASCII_SPACES.sub(" ", text).strip() if text else text


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def clean_text(
    value: object, name: str, *, allow_number: bool = False, multiline: bool = False
) -> str | None:
    """Text as stored: stripped, lone surrogates replaced; None if empty. A control character
    (NUL, ESC, C1 ...; line breaks and tabs are fine) rejects a one-line field and is dropped
    from `multiline` text."""
    if value is None:
        return None
    if allow_number and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise FieldError(f"{name} must be text, not {type(value).__name__}")
    # Lone surrogates (possible in JSON "\\ud800") cannot be stored as UTF-8: replace them.
    text = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    found = CONTROL.search(text)
    if found is not None:
        if not multiline:
            raise FieldError(f"{name} contains the control character {describe(found.group())}")
        text = CONTROL.sub("", text)
    text = text.replace("\r\n", "\n").strip()
    return text or None


def parse_url(value: object, name: str = "url") -> str:
    """An absolute http(s) URL in its normalised form (see digest.articles.normalise_url)."""
    text = clean_text(value, name)
    if not text:
        raise FieldError(f"no {'link' if name == 'url' else name}")
    try:
        normal = normalise_url(text)
        ok = normal.startswith(("http://", "https://")) and bool(
            normal.split("/", 3)[2].strip(":@")
        )
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in text):
        raise FieldError(f"{name} {_quote(text)} is not an absolute http(s) URL")
    return normal


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_datetime(value: object, name: str = "published", zone: tzinfo | None = None) -> datetime:
    """ISO 8601 with a UTC offset (or Z), returned in UTC. Times without an offset are refused:
    guessing the zone would shift stories across edition windows. A date alone (CMS exports
    write `2026-01-26`) is midnight of that day in `zone`, the newsletter's time zone."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        parsed = value
    else:
        if _blank(value):
            raise FieldError(f"no {name} date")
        if not isinstance(value, str):
            raise FieldError(f"{name} date must be ISO 8601 text, not {type(value).__name__}")
        text = value.strip()
        if _DATE_ONLY.fullmatch(text):
            return _local_midnight(text, name, zone)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise FieldError(
                f"{name} date {_quote(text)} is not ISO 8601 (e.g. 2026-03-10T08:30:00-05:00)"
            ) from None
        if parsed.tzinfo is None:
            raise FieldError(f"{name} date {_quote(text)} has no UTC offset (add Z or e.g. -05:00)")
    try:
        moment = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise FieldError(f"{name} date {_quote(str(value))} is out of range") from None
    return _in_range(moment, name)


def _in_range(moment: datetime, name: str) -> datetime:
    if not MIN_DATE <= moment.date() <= MAX_DATE:
        raise FieldError(
            f"{name} date {moment.date().isoformat()} is outside {MIN_DATE.year}-{MAX_DATE.year}"
        )
    return moment


def _local_midnight(text: str, name: str, zone: tzinfo | None) -> datetime:
    if zone is None:
        raise FieldError(
            f"{name} date {_quote(text)} has no time, and the newsletters use several time "
            "zones: pass --timezone to read it as midnight there"
        )
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise FieldError(f"{name} date {_quote(text)} is not a calendar date") from None
    return datetime.combine(day, datetime.min.time(), tzinfo=zone).astimezone(UTC)


def parse_rank(value: object) -> int | None:
    """The story's place in its section on the newsroom's page: a whole number from 1; empty
    means none."""
    if _blank(value):
        return None
    number = _as_number(value)
    if number is None or not number.is_integer() or not 1 <= number <= 1_000_000:
        raise FieldError(f"rank {_quote(value)} is not a whole number from 1 (1 = top story)")
    return int(number)


def parse_tags(value: object) -> list[str]:
    """A JSON list of strings, or one string split on "|" (or on commas when it has no "|")."""
    if value is None:
        return []
    if isinstance(value, str):
        parts: list[object] = list(value.split("|" if "|" in value else ","))
    elif isinstance(value, list):
        parts = list(value)
    else:
        raise FieldError(f"tags must be a list or text, not {type(value).__name__}")
    tags: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise FieldError(f"tags must be text, not {type(part).__name__}")
        tag = _one_line(clean_text(part, "tags"))
        if tag and len(tag) > MAX_TAG:
            raise FieldError(f"a tag is longer than {MAX_TAG} characters")
        if tag and tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise FieldError(f"more than {MAX_TAGS} tags")
    return tags


def parse_priority(value: object) -> str:
    """normal, boost or pin (any case); empty means normal."""
    if _blank(value):
        return "normal"
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return value.strip().lower()
    raise FieldError(f"priority {_quote(value)} is not one of {', '.join(PRIORITIES)}")


def _as_number(value: object) -> float | None:
    """A JSON number or the text of one (CSV cells), else None."""
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            return None
    return None


def parse_popularity(value: object) -> float:
    """A finite number >= 0 (views, clicks); empty means 0."""
    if _blank(value):
        return 0.0
    number = _as_number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise FieldError(f"popularity {_quote(value)} is not a number of 0 or more")
    return number


def pick_section(
    candidates: Iterable[str], fallback: str | None, known: Mapping[str, str] | None
) -> str:
    """The item's first usable section, else the fallback (--section). With `known`, only a
    configured section is usable, stored in its configured spelling."""
    names = [c for c in (_one_line(clean_text(c, "section")) for c in candidates) if c]
    if fallback and fallback.strip():
        names.append(fallback.strip())
    if known is None:
        if not names:
            raise FieldError("no section (give one in the item or pass --section)")
        return names[0]
    for name in names:
        canonical = known.get(name.casefold())
        if canonical:
            return canonical
    if not names:
        raise FieldError("no section (give one in the item or pass --section)")
    return _unknown_section(names[0], known)


def _unknown_section(name: str, known: Mapping[str, str]) -> str:
    allowed = ", ".join(sorted(known.values()))
    raise FieldError(f"unknown section {_quote(name)} (configured: {allowed})")


def _quote(value: object) -> str:
    """A value as a rejection quotes it: repr, cut to about 80 characters."""
    try:
        shown = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return f"a {type(value).__name__} too long to show"
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


def parse_record(
    record: Mapping[str, object],
    *,
    section: str | None = None,
    source: str | None = None,
    known_sections: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Article fields from one JSON object or CSV row (field names as in the README); raises
    FieldError with the rejection reason."""
    return _validate(_record_fields(record), _Defaults(section, source, known_sections))


def _record_fields(record: Mapping[str, object]) -> dict[str, Any]:
    """JSON/CSV field names -> the raw fields _validate reads. Unknown names are ignored."""
    raw: dict[str, Any] = {}
    for key, value in record.items():
        name = _FIELD_NAMES.get(str(key).strip().lower())
        if name is None:
            continue
        if name == "section":
            raw["sections"] = [value] if not _blank(value) else []
        elif name in ("guid", "dek", "byline") and name in raw and not _blank(raw[name]):
            continue  # "id" and "guid" both given: the first non-empty one wins
        else:
            raw[name] = value
    return raw


def _collect(parsed: _Parsed, built: _Item | str, where: str) -> None:
    if isinstance(built, _Item):
        parsed.items.append(built)
    else:
        parsed.rejections.append(f"{parsed.path.name}: {where}: {built}")


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}…"
