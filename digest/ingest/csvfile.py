"""CSV (or TSV, or semicolon-separated) files of articles: a header row naming url and title."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digest.errors import InputError
from digest.ingest.fields import (
    _FIELD_NAMES,
    _build,
    _collect,
    _decode,
    _Defaults,
    _Parsed,
    _record_fields,
)


def _parse_csv(path: Path, data: bytes, defaults: _Defaults, *, sniffed: bool) -> _Parsed:
    # csv refuses cells over 128 KB: a row with a 5 MB title would make the whole file
    # unreadable, where it should be one rejected row (the file itself is bounded).
    with _cells_up_to(len(data)):
        return _read_csv(path, data, defaults, sniffed=sniffed)


@contextmanager
def _cells_up_to(size: int) -> Iterator[None]:
    previous = csv.field_size_limit()
    csv.field_size_limit(max(size, previous))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path, data: bytes, defaults: _Defaults, *, sniffed: bool) -> _Parsed:
    what = "a feed, JSON or CSV file" if sniffed else "a CSV file"
    text = _decode(path, data, what)
    first_line = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first_line:
        delimiter = "\t" if "\t" in first_line else ";" if ";" in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise InputError(f"{path}: not {what} ({e})") from None
    names = [h.strip().lower() for h in header or []]
    fields = {_FIELD_NAMES.get(n) for n in names}
    if "url" not in fields or "title" not in fields:
        found = ", ".join(repr(n) for n in names[:8] if n) or "nothing"
        raise InputError(
            f"{path}: not {what}: a CSV header row must name url and title columns (found {found})"
        )
    duplicated = sorted({n for n in names if n and names.count(n) > 1})
    if duplicated:
        raise InputError(f"{path}: CSV header repeats column {duplicated[0]!r}")
    parsed = _Parsed(path, [], [])
    row_number = 1
    try:
        for row in reader:
            row_number += 1
            where = f"row {row_number}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(names):
                parsed.rejections.append(
                    f"{path.name}: {where}: {len(row)} fields but the header has {len(names)}"
                )
                continue
            record = dict(zip(names, row, strict=False))
            _collect(parsed, _build(where, _record_fields(record), defaults), where)
    except csv.Error as e:
        raise InputError(f"{path}: row {row_number + 1}: not valid CSV ({e})") from None
    return parsed
