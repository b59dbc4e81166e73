"""The bounds on everything a user or an attacker can hand digest (README, "Security").

Each limit is far above what a real newsroom sends and far below what exhausts the machine; an
input beyond one is refused with one line naming the file, row or field, never half-used.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from digest.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

MB = 1024 * 1024
MAX_INGEST_FILE_BYTES = 64 * MB  # one feed, JSON or CSV file of articles
MAX_IMPORT_FILE_BYTES = 256 * MB  # one subscriber CSV (about two million rows)
MAX_CONFIG_FILE_BYTES = 1 * MB

# Article fields, in characters (README "JSON and CSV fields").
MAX_ARTICLE_FIELD = {
    "guid": 512,
    "url": 2048,
    "title": 500,
    "dek": 5000,
    "body": 1_000_000,
    "section": 100,
    "byline": 300,
    "source": 200,
    "image_url": 2048,
    "image_alt": 1000,
    "image_caption": 2000,
}
MAX_TAGS = 50
MAX_TAG = 100

# Subscriber fields, in characters (the columns of the subscribers tables).
MAX_NAME = 300
MAX_ATTRIBUTE_NAME = 100
MAX_ATTRIBUTE_VALUE = 500

# Segment rules: text length, conditions and nesting of not / ( ).
MAX_RULE_CHARS = 4000
MAX_RULE_CONDITIONS = 100
MAX_RULE_DEPTH = 20

# Dates a user may name (--date, segment rules) and articles may carry.
MIN_DATE = date(1970, 1, 1)
MAX_DATE = date(2199, 12, 31)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The whole file, or InputError when it is larger than `limit` bytes. Reads at most
    limit + 1 bytes, so a device (/dev/zero), a pipe or a huge file costs no more than that."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if len(data) > limit:
        raise InputError(
            f"{path}: larger than the {limit // MB} MB a {what} may be; nothing was read "
            "(split it into smaller files)"
        )
    return data
