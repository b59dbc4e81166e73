"""A send's row creation holds a page of the audience at a time, never the list: the memory it
takes does not grow with the number of readers (measured with tracemalloc at 2,000 and 20,000),
on a first run and on a re-run that finds most rows already written. SQLite: the memory is the
sender's, whatever the backend."""

from __future__ import annotations

import tracemalloc
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.db import make_engine, session_factory, upgrade
from digest.ledger_model import Delivery
from digest.send_rows import create_rows
from subscribers.models import Membership
from tests.fakes.population import add_population
from tests.render_support import store_edition
from tests.test_sending_ledger import send, with_outbox

# What row creation may take beyond a 2,000-reader list's for a 20,000-reader one. Holding the
# list (a set of its ids, its rows) costs 1.5–10 MB at 20,000; a page of it a fixed amount.
GROWTH_BOUND = 1_000_000  # bytes


def _sessions(path: Path, n: int, now: datetime) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, n, now)
    return sessions


class Peaks:
    """The peak tracemalloc size during create_rows, by the label of the run."""

    def __init__(self) -> None:
        self.label = ""
        self.found: dict[str, int] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tracemalloc.start()
        try:
            return create_rows(*args, **kwargs)
        finally:
            self.found[self.label] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


@pytest.fixture
def peaks(monkeypatch: pytest.MonkeyPatch) -> Peaks:
    import digest.ledger_rows
    import digest.sending

    # The ledger writer buffers up to a fixed number of rows (2,000 per variant, 50,000 in
    # all: a bound, but above these lists' sizes); made small here so that what is measured
    # between the two lists is what would grow with the list, not that buffer filling up.
    monkeypatch.setattr(digest.ledger_rows, "_INSERT_CHUNK", 100, raising=False)
    monkeypatch.setattr(digest.ledger_rows, "_BUFFERED_ROWS", 500, raising=False)
    measured = Peaks()
    monkeypatch.setattr(digest.sending, "create_rows", measured)
    return measured


def test_row_creation_memory_does_not_grow_with_the_list(
    config: Config, tmp_path: Path, now: datetime, peaks: Peaks
) -> None:
    config = with_outbox(config, tmp_path / "out")
    for n in (2_000, 20_000):
        sessions = _sessions(tmp_path / f"{n}.db", n, now)
        peaks.label = f"first {n}"
        send(config, sessions, now, limit=0)
        # A re-run after a tenth more joined: most of the list already has its row.
        with sessions.begin() as session:
            add_population(session, n // 10, now, start=n + 1)
        peaks.label = f"again {n}"
        send(config, sessions, now, limit=0)
        with sessions() as session:
            count = session.scalar(select(func.count()).select_from(Delivery))
            members = session.scalar(select(func.count()).select_from(Membership))
        assert count == members == n + n // 10  # everyone once, nobody skipped
    for run in ("first", "again"):
        growth = peaks.found[f"{run} 20000"] - peaks.found[f"{run} 2000"]
        assert growth < GROWTH_BOUND, (run, peaks.found)
