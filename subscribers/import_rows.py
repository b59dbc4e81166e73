"""Reading a subscriber CSV: the header, then every row checked into a _Row or a RowError
(spreadsheet row number and reason). Nothing here touches the database."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from zoneinfo import available_timezones

from email_validator import EmailNotValidError, validate_email

from digest.config import NewsletterConfig
from digest.errors import InputError
from digest.limits import MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE, MAX_NAME, MAX_TAG
from digest.text import csv_value, line_problem
from subscribers.models import normalise_email
from subscribers.service import RESERVED

_SPLIT = re.compile(r"\s*[;,]\s*")
# RFC 5322 dot-atom local part in ASCII: what email-validator accepts without quoting or UTF-8.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


@dataclass(frozen=True)
class RowError:
    row: int  # spreadsheet numbering: the header is row 1
    reason: str


class AddressChecker:
    """email-validator (syntax only), with each domain checked once per import.

    Lists repeat a few domains thousands of times and the domain check (IDNA rules per
    character) is most of the validator's cost. Once a domain has passed, an address with a
    plain ASCII dot-atom local part on that domain passes too, so it skips the validator.
    """

    def __init__(self) -> None:
        self.domains: set[str] = set()

    def problem(self, address: str) -> str | None:
        local, at, domain = address.rpartition("@")
        if (
            at
            and domain in self.domains
            and len(local) <= 64
            and len(address) <= 254
            and _PLAIN_LOCAL.fullmatch(local)
        ):
            return None
        try:
            validate_email(address, check_deliverability=False)
        except EmailNotValidError as e:
            return str(e)
        if at:
            self.domains.add(domain)
        return None


@dataclass
class _Row:
    number: int
    email: str
    name: str | None
    timezone: str | None
    sections: list[str] | None
    tags: list[str] | None
    attributes: dict[str, str]


def _read_text(data: bytes, file: str) -> str:
    if b"\x00" in data[:8192]:
        raise InputError(f"{file}: not a CSV file (it contains binary data); nothing was imported")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{file}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as "
            "'CSV UTF-8' and import again; nothing was imported"
        ) from None


def _header_and_rows(text: str, file: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (lower-cased names) and the numbered rows; InputError for a file that is not
    a subscriber CSV at all."""
    if not text.strip():
        raise InputError(f"{file}: the file is empty (expected a header row with an email column)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip().lower() for h in next(reader)]
        for h in header:
            problem = line_problem(h)
            if problem:
                raise InputError(f"{file}: header cell {h[:40]!r} {problem}; nothing was imported")
        if "email" not in header:
            found = ", ".join(h for h in header if h)[:200] or "nothing"
            raise InputError(
                f"{file}: not a subscriber CSV: the header row has no 'email' column "
                f"(found: {found}); nothing was imported"
            )
        named = [h for h in header if h]
        if len(named) != len(set(named)):
            dupes = sorted({h for h in named if named.count(h) > 1})
            raise InputError(f"{file}: column {dupes[0]!r} appears twice in the header")
        raw_rows = list(enumerate(reader, start=2))
    except csv.Error as e:
        raise InputError(
            f"{file}: not valid CSV near line {reader.line_num}: {e}; nothing was imported"
        ) from None
    return header, raw_rows


def _parse(text: str, file: str, newsletter: NewsletterConfig) -> tuple[list[_Row], list[RowError]]:
    header, raw_rows = _header_and_rows(text, file)
    attr_cols = [
        (i, h)
        for i, h in enumerate(header)
        if h and h not in RESERVED and len(h) <= MAX_ATTRIBUTE_NAME
    ]
    col = {h: i for i, h in enumerate(header) if h}
    zones = available_timezones()
    rows: list[_Row] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    width = len(header)
    checker = AddressChecker()
    by_fold = {name.casefold(): name for name in newsletter.section_names}

    def cell(values: list[str], i: int | None) -> str:
        return values[i].strip() if i is not None and i < len(values) else ""

    email_i, tz_i, sections_i, tags_i, name_i = (
        col.get(k) for k in ("email", "timezone", "sections", "tags", "name")
    )

    for number, values in raw_rows:
        joined = "".join(values)
        if not joined.strip():
            continue
        if line_problem(joined):  # rare: only then look for the cell
            i, bad = next((i, p) for i, v in enumerate(values) if (p := line_problem(v)))
            column = header[i] if i < width and header[i] else f"column {i + 1}"
            errors.append(RowError(number, f"{column} {bad}"))
            continue
        if "'" in joined:  # cells an export escaped against formulas ('=...)
            values = [csv_value(v) for v in values]
        if len(values) > width and any(v.strip() for v in values[width:]):
            errors.append(
                RowError(number, f"{len(values)} cells but the header names {width} columns")
            )
            continue
        raw_email = cell(values, email_i)
        if not raw_email:
            errors.append(RowError(number, "email is empty"))
            continue
        problem = checker.problem(raw_email)
        if problem is not None:
            errors.append(
                RowError(number, f"{raw_email!r} is not a valid email address: {problem}")
            )
            continue
        email = normalise_email(raw_email)
        if email in seen:
            errors.append(RowError(number, f"{email} is a duplicate of row {seen[email]}"))
            continue
        tz = cell(values, tz_i) or None
        if tz is not None and tz not in zones:
            errors.append(RowError(number, f"timezone {tz!r} is not an IANA time zone"))
            continue
        sections: list[str] | None = None
        raw_sections = cell(values, sections_i)
        if raw_sections:
            sections = []
            unknown = []
            for s in _SPLIT.split(raw_sections):
                canonical = by_fold.get(s.casefold())
                if canonical is None:
                    if s:
                        unknown.append(s)
                elif canonical not in sections:
                    sections.append(canonical)
            if unknown:
                known = ", ".join(newsletter.section_names)
                errors.append(
                    RowError(number, f"unknown section {unknown[0]!r} (sections: {known})")
                )
                continue
        raw_tags = cell(values, tags_i)
        tags = sorted({t.lower() for t in _SPLIT.split(raw_tags) if t}) if raw_tags else None
        n = len(values)
        attributes = {h: v for i, h in attr_cols if i < n and (v := values[i].strip())}
        name = cell(values, name_i) or None
        if max(map(len, values)) > 100:  # rare: only then look for the cell that is too long
            too_long = next(
                (
                    f"{k} is longer than {MAX_ATTRIBUTE_VALUE} characters"
                    for k, v in attributes.items()
                    if len(v) > MAX_ATTRIBUTE_VALUE
                ),
                f"name is longer than {MAX_NAME} characters"
                if name and len(name) > MAX_NAME
                else None,
            )
            if too_long:
                errors.append(RowError(number, too_long))
                continue
            if tags and any(len(t) > MAX_TAG for t in tags):
                errors.append(RowError(number, f"a tag is longer than {MAX_TAG} characters"))
                continue
        seen[email] = number
        rows.append(_Row(number, email, name, tz, sections, tags, attributes))
    return rows, errors
