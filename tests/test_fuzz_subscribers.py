"""Fuzzing the audience: the subscriber importer and the segment rule parser/compiler take any
input to a result or a DigestError; a refused import changes nothing; stored names, tags and
attributes never hold a control character."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import load_config
from digest.db import transaction
from digest.errors import ConfigError, DigestError
from digest.text import line_problem
from subscribers.importing import check_import, export_csv, import_bytes
from subscribers.models import Attribute, Subscriber, Tag
from subscribers.segments import parse_rule, render, segment_condition
from tests.conftest import DATA
from tests.fuzz_support import RULE, csv_document, fuzz_settings, snapshot

pytestmark = pytest.mark.fuzz
NOW = datetime(2026, 3, 10, 10, tzinfo=UTC)
CONFIG = load_config(DATA / "digest.toml")
COLUMNS = ["email", "name", "timezone", "sections", "tags", "region", "status"]


@fuzz_settings(25)
@given(data=csv_document(COLUMNS), strict=st.booleans())
def test_any_subscriber_csv_is_imported_or_refused_cleanly(
    engine: Engine, sessions: sessionmaker[Session], data: bytes, strict: bool
) -> None:
    before = snapshot(engine)
    try:
        with transaction(sessions) as session:
            report = import_bytes(
                session, CONFIG.newsletter("daily"), data, file="people.csv", at=NOW
            )
            assert all("\n" not in line for line in report.error_lines())
            check_import(report, strict=strict)
    except DigestError as e:
        assert str(e) and "\n" not in str(e)
        assert snapshot(engine) == before
        return
    with sessions() as s:
        stored = [
            *s.scalars(select(Subscriber.name)),
            *s.scalars(select(Attribute.value)),
            *s.scalars(select(Attribute.name)),
            *s.scalars(select(Tag.tag)),
        ]
    assert all(v is None or line_problem(v) is None for v in stored), stored


@fuzz_settings(40)
@given(rule=RULE)
def test_any_segment_rule_parses_and_compiles_or_is_one_config_error(
    sessions: sessionmaker[Session], rule: str
) -> None:
    try:
        tree = parse_rule(rule, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("segments.fuzz: ") and "\n" not in str(e)
        return
    assert parse_rule(render(tree), "fuzz") == tree
    config = replace(CONFIG, segments={"fuzz": rule})
    with sessions() as session:
        try:
            condition = segment_condition(session, config, ["fuzz"], config.newsletter("daily"))
        except ConfigError as e:  # an attribute or section nobody has
            assert "\n" not in str(e)
            return
        assert condition is not None
        session.scalar(select(func.count()).select_from(Subscriber).where(condition))


@fuzz_settings(10)
@given(data=csv_document(COLUMNS))
def test_an_export_reads_back_as_the_same_subscribers(
    engine: Engine, sessions: sessionmaker[Session], data: bytes
) -> None:
    """Whatever was imported exports as formula-safe CSV that imports back unchanged."""
    import io

    nl = CONFIG.newsletter("daily")
    try:
        with transaction(sessions) as session:
            import_bytes(session, nl, data, file="in.csv", at=NOW)
    except DigestError:
        return
    out = io.StringIO()
    with sessions() as session:
        export_csv(session, CONFIG, out, newsletter=nl)
    text = out.getvalue()
    assert all(
        not cell.startswith(("=", "+", "-", "@"))
        for line in text.splitlines()
        for cell in line.split(",")
    )
    before = snapshot(engine)
    with transaction(sessions) as session:
        report = import_bytes(session, nl, text.encode("utf-8"), file="out.csv", at=NOW)
    assert report.rejected == 0 and report.added == 0
    assert snapshot(engine) == before
