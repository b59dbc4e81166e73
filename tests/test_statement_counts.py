"""What a send costs the database: a fixed handful of statements per batch, whatever its size.

Counted at the driver (every `execute` and `executemany` SQLAlchemy hands it, and every COPY
psycopg runs), on both backends: the rows' creation, claims, hand-over marks and settles go in
sets, never one per recipient. On PostgreSQL (digest.ledger_batch) a batch of 1,000 costs one
statement to claim it, one to mark it handed over and one to settle it (two when its answers
differ: a few refusals among the accepted), each in its own transaction (BEGIN and COMMIT round
trips; the settle adds its `SET LOCAL synchronous_commit`): 3 statements, 10 round trips. The
outbox of this test checkpoints as it writes, so its settles are more per batch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import load_config
from digest.sending import RetryPolicy, SendOptions, send_edition
from tests.fakes.population import add_population
from tests.render_support import store_edition
from tests.test_sending_faults import write_config


@contextmanager
def counting(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    engine = sessions.kw["bind"]
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    if engine.dialect.name == "postgresql":
        # COPY goes to psycopg's cursor directly, past SQLAlchemy's events.
        import psycopg

        copy = psycopg.Cursor.copy

        def counted_copy(self: psycopg.Cursor[Any], statement: Any, *a: Any, **k: Any) -> Any:
            seen.append(str(statement))
            return copy(self, statement, *a, **k)

        monkeypatch.setattr(psycopg.Cursor, "copy", counted_copy)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# Once per send: the edition, the audience, the rows' creation (besides its writes, counted
# apart; PostgreSQL takes the edition's row-creation lock and turns JIT off for the audience's
# pages), the summary,
# and since the ledger is kept for years, whether the edition was pruned, its date (the
# partition key) and whether it has rows yet (a first run skips the anti-join).
FIXED = 31
# The rows' writes: an INSERT (PostgreSQL: a COPY) per variant and 2,000 rows, 10 variants here.
WRITES = 10
# Per batch: claim, settle (here: three checkpoints of the outbox); SendGrid adds a hand-over.
PER_BATCH = 4


def test_a_send_costs_a_fixed_handful_of_statements_per_batch_not_per_reader(
    sessions: sessionmaker[Session], tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, batch = 2_000, 500
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, n, now)
    config = load_config(write_config(tmp_path, outbox=f'dir = "{tmp_path / "outbox"}"'))
    options = SendOptions(
        provider="outbox", retry=RetryPolicy(attempts=2, base=0.01, cap=0.01), batch_size=batch
    )
    with counting(sessions, monkeypatch) as seen:
        report = send_edition(
            config, sessions, "daily", date(2026, 3, 10), options, clock=fixed(now)
        )
    assert report.sent_now == n
    write = "COPY" if sessions.kw["bind"].dialect.name == "postgresql" else "INSERT INTO deliveries"
    writes = [s for s in seen if s.startswith(write)]
    assert len(writes) == WRITES
    others = [s for s in seen if not s.startswith(write)]
    assert len(others) <= FIXED + PER_BATCH * (n // batch), "\n".join(s[:80] for s in others)
