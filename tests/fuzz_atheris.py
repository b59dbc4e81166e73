"""Coverage-guided fuzzing of the parsers with atheris, outside `make test` (it runs until
stopped). The same contract as tests/test_fuzz_*.py: any input parses or raises DigestError.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz_atheris.py ingest -max_total_time=600
    .venv/bin/python tests/fuzz_atheris.py import|rule|config -runs=1000000

A crash leaves the input in ./crash-<sha1>; replay it with the same command and the file name.
"""

from __future__ import annotations

import contextlib
import sys
import tomllib
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from digest.config import load_config, parse_config
    from digest.errors import DigestError
    from digest.ingest import _Defaults, _parse_csv, _parse_feed, _parse_json
    from subscribers.import_rows import _parse, _read_text
    from subscribers.segments import parse_rule

CONFIG = load_config(Path(__file__).parent / "data" / "digest.toml")
DEFAULTS = _Defaults("News", None, {"news": "News", "business": "Business"})
PATH = Path("fuzz-input")


def ingest(data: bytes) -> None:
    parsers = (
        lambda d: _parse_feed(PATH, d, DEFAULTS),
        lambda d: _parse_json(PATH, d, DEFAULTS),
        lambda d: _parse_csv(PATH, d, DEFAULTS, sniffed=True),
    )
    if not data:
        return
    with contextlib.suppress(DigestError):
        parsers[data[0] % 3](data[1:])


def import_(data: bytes) -> None:
    with contextlib.suppress(DigestError):
        _parse(_read_text(data, "fuzz.csv"), "fuzz.csv", CONFIG.newsletter("daily"))


def rule(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(4096)
    with contextlib.suppress(DigestError):
        parse_rule(text, "fuzz")


def config(data: bytes) -> None:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    with contextlib.suppress(DigestError):
        parse_config(raw, PATH)


TARGETS = {"ingest": ingest, "import": import_, "rule": rule, "config": config}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
