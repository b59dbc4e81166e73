"""Typed access to the tables of a TOML config: every wrong value is one ConfigError naming the
file and the dotted key."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from digest.errors import ConfigError
from digest.text import line_problem, text_problem

# An address that goes into From, Reply-To or a mailto: one local part, one domain, nothing a
# header could be bent with (RFC 5322 quoted local parts are not needed by any sender).
_PLAIN_ADDRESS = re.compile(r'[^\s@<>,;:"()\[\]\\]+@[^\s@<>,;:"()\[\]\\]+')


class Reader:
    """Typed access to one TOML table, raising ConfigError with file and dotted key."""

    def __init__(self, file: str, raw: dict[str, Any], prefix: str) -> None:
        self.file = file
        self.raw = raw
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ConfigError:
        where = f"{self.prefix}{key}".rstrip(".") or "(top level)"
        if line_problem(where):  # a quoted TOML key can hold anything: show it escaped
            where = where.encode("unicode_escape").decode("ascii")
        return ConfigError(f"{self.file}: {where}: {problem}")

    def allow(self, *keys: str) -> None:
        for k in self.raw:
            if k not in keys:
                raise self.error(k, f"unknown key (expected one of: {', '.join(sorted(keys))})")

    def table(self, key: str, required: bool = False) -> Reader:
        v = self.raw.get(key)
        if v is None:
            if required:
                raise self.error(key, "missing table")
            v = {}
        if not isinstance(v, dict):
            raise self.error(key, "must be a table")
        return Reader(self.file, v, f"{self.prefix}{key}.")

    def string(
        self,
        key: str,
        default: str | None = None,
        required: bool = False,
        *,
        multiline: bool = False,
    ) -> str:
        """A string; one line unless `multiline` (names, titles, addresses and subjects end up
        in headers), and never with a control character other than a line break or tab."""
        v = self.raw.get(key)
        if v is None:
            if required or default is None:
                raise self.error(key, "missing (required)")
            return default
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, not {type(v).__name__}")
        problem = text_problem(v) if multiline else line_problem(v)
        if problem:
            kind = "text" if multiline else "one line of text"
            raise self.error(key, f"must be {kind}: it {problem}")
        return v

    def folder(self, key: str, config_path: Path | None) -> Path | None:
        """An existing folder, relative to the config file."""
        raw = self.optional_string(key)
        if not raw:
            return None
        folder = Path(raw)
        if config_path is not None and not folder.is_absolute():
            folder = config_path.parent / folder
        if not folder.is_dir():
            raise self.error(key, f"{folder} is not a folder")
        return folder

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        v = self.raw.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.error(key, 'must be an array of non-empty strings (["a", "b"])')
        return tuple(x.strip() for x in v)

    def optional_string(self, key: str) -> str | None:
        if self.raw.get(key) is None:
            return None
        return self.string(key) or None

    def address(self, key: str, required: bool = False) -> str | None:
        """An email address for a header: local@domain, no spaces, brackets or commas."""
        v = self.string(key, required=required) if required else self.optional_string(key)
        if v is not None and not _PLAIN_ADDRESS.fullmatch(v):
            raise self.error(key, f"{v!r} is not an email address (like news@example.com)")
        return v

    def number(
        self, key: str, default: float, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        v = self.raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(key, f"must be a number, not {type(v).__name__}")
        if not math.isfinite(v):
            raise self.error(key, f"must be a finite number, not {v}")
        if minimum is not None and v < minimum:
            raise self.error(key, f"must be at least {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(key, f"must be at most {maximum}, got {v}")
        return float(v)

    def integer(
        self, key: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        v = self.raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be a whole number, not {v!r}")
        if minimum is not None and v < minimum:
            raise self.error(key, f"must be at least {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(key, f"must be at most {maximum}, got {v}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.raw.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false, not {v!r}")
        return v
