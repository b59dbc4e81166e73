"""Fuzzing the config loader: any file, and any value at any key of a valid config, gives a
Config or one ConfigError; a Config never holds NaN, an infinity, or a header-bound string
with a control character."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import Config, load_config, parse_config
from digest.errors import ConfigError
from digest.text import line_problem, text_problem
from tests.conftest import DATA
from tests.fuzz_support import JSON_VALUE, LONG, TEXT, fuzz_settings

pytestmark = pytest.mark.fuzz
VALID = tomllib.loads((DATA / "digest.toml").read_text(encoding="utf-8"))
MULTILINE = {"postal_address", "description", "text"}  # keys that may break lines
VALUE = st.one_of(
    JSON_VALUE, st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0])
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(VALID)


def _check(value: Any, key: str = "") -> None:
    """No NaN or infinity anywhere; no control character in a one-line string."""
    if isinstance(value, float):
        assert math.isfinite(value), key
    elif isinstance(value, str):
        problem = (
            text_problem(value) if key in MULTILINE or key == "segments" else line_problem(value)
        )
        assert problem is None, (key, value)
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            _check(getattr(value, f.name), f.name)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check(v, "segments" if key == "segments" else str(k))
    elif isinstance(value, tuple | list):
        for v in value:
            _check(v, key)


@fuzz_settings(60)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(PATHS), st.one_of(VALUE, TEXT, st.just(...))),
        min_size=1,
        max_size=3,
    )
)
def test_any_value_at_any_key_is_a_config_or_one_config_error(
    edits: list[tuple[tuple[Any, ...], Any]],
) -> None:
    raw = copy.deepcopy(VALID)
    for path, value in edits:
        node: Any = raw
        try:
            for step in path[:-1]:
                node = node[step]
            if value is ...:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the table this path went through
    try:
        config = parse_config(raw, Path("digest.toml"))
    except ConfigError as e:
        assert str(e).startswith("digest.toml: ") and "\n" not in str(e)
        return
    assert isinstance(config, Config)
    _check(config)


@fuzz_settings(40)
@given(
    data=st.one_of(st.binary(max_size=300), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
)
def test_any_file_is_a_config_or_one_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "digest.toml"
    path.write_bytes(data)
    try:
        _check(load_config(path))
    except ConfigError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)


@pytest.mark.skipif(
    not LONG, reason="atheris runs with DIGEST_FUZZ=long (and pip install -e '.[fuzz]')"
)
@pytest.mark.parametrize("target", ["ingest", "import", "rule", "config"])
def test_atheris_targets_run_clean(tmp_path: Path, target: str) -> None:
    pytest.importorskip("atheris")
    script = Path(__file__).parent / "fuzz_atheris.py"
    done = subprocess.run(
        [sys.executable, str(script), target, "-max_total_time=60"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
