"""What a send costs the database: a fixed handful of statements per batch, whatever its size.

Counted at the driver (every `execute` and `executemany` SQLAlchemy hands it), on both backends:
the rows' creation, claims, hand-over marks and settles go in sets, never one per recipient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import load_config
from digest.sending import RetryPolicy, SendOptions, send_edition
from tests.fakes.population import add_population
from tests.render_support import store_edition
from tests.test_sending_faults import write_config


@contextmanager
def counting(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    engine = sessions.kw["bind"]
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# Once per send: the edition, the audience, the rows' creation (in sets of 500), the summary.
FIXED = 40
# Per batch: claim, read the claimed rows, mark them handed, settle them, count what is left.
PER_BATCH = 6


def test_a_send_costs_a_fixed_handful_of_statements_per_batch_not_per_reader(
    sessions: sessionmaker[Session], tmp_path: Path, now: datetime
) -> None:
    n, batch = 2_000, 500
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, n, now)
    config = load_config(write_config(tmp_path, outbox=f'dir = "{tmp_path / "outbox"}"'))
    options = SendOptions(
        provider="outbox", retry=RetryPolicy(attempts=2, base=0.01, cap=0.01), batch_size=batch
    )
    with counting(sessions) as seen:
        report = send_edition(
            config, sessions, "daily", date(2026, 3, 10), options, clock=fixed(now)
        )
    assert report.sent_now == n
    assert len(seen) <= FIXED + PER_BATCH * (n // batch), "\n".join(s[:80] for s in seen)
