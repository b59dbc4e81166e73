"""JSON files of articles: one array (or {"articles": [...]}) or one object per line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digest.errors import InputError
from digest.ingest.fields import _build, _collect, _decode, _Defaults, _Parsed, _record_fields


def _parse_json(path: Path, data: bytes, defaults: _Defaults) -> _Parsed:
    text = _decode(path, data, "a JSON file")
    records: list[tuple[str, object]]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as first:
        records = list(_json_lines(path, text, first))
    except (ValueError, RecursionError) as e:  # numbers too long, nesting too deep
        raise InputError(f"{path}: JSON cannot be read ({_first_line(e)})") from None
    else:
        if isinstance(doc, dict) and isinstance(_wrapped(doc), list):
            doc = _wrapped(doc)  # {"articles": [...]}, as some CMS exports wrap the list
        if isinstance(doc, list):
            records = [(f"item {n}", rec) for n, rec in enumerate(doc, 1)]
        elif isinstance(doc, dict):
            records = [("line 1", doc)]
        else:
            raise InputError(f"{path}: JSON must be an array of objects or one object per line")
    parsed = _Parsed(path, [], [])
    for where, record in records:
        if not isinstance(record, dict):
            parsed.rejections.append(f"{path.name}: {where}: not a JSON object")
            continue
        built = _build(where, _record_fields(record), defaults)
        _collect(parsed, built, where)
    return parsed


def _wrapped(doc: dict[str, Any]) -> object:
    return doc.get("articles", doc.get("items")) if len(doc) == 1 else None


def _json_lines(path: Path, text: str, first: json.JSONDecodeError) -> Iterator[tuple[str, object]]:
    # One document (an array, or a single line) with a syntax error: report where it is.
    if "\n" not in text.strip() or text.lstrip().startswith("["):
        raise InputError(
            f"{path}: not valid JSON ({first.msg} at line {first.lineno} column {first.colno})"
        )
    # "\n" only: str.splitlines() would also split inside strings holding U+2028 and friends.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {number}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        except (ValueError, RecursionError) as e:
            raise InputError(
                f"{path}: line {number}: JSON cannot be read ({_first_line(e)})"
            ) from None


def _first_line(error: BaseException) -> str:
    return str(error).split(";")[0].splitlines()[0] if str(error) else type(error).__name__
