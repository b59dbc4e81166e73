"""`digest sends report` counts every row of the edition once, by state, segment and variant,
however the rows lie: written together or interleaved with another newsletter's, with sent
rows an event resolved (the counts the ledger's triggers keep, digest.report_counts)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime

import pytest
from sqlalchemy.orm import Session

from digest.editions import Edition
from digest.ledger import STATES, Delivery, encode_variant
from digest.ledger_report import report
from tests.render_support import make_edition, store_edition

_RESOLVED = "resolved by sendgrid event delivered at 2026-03-10 08:00:00 UTC"


def _row(edition: Edition, n: int, state: str, now: datetime, error: str | None) -> Delivery:
    return Delivery(
        edition_id=edition.id,
        edition_date=edition.edition_date,
        subscriber_id=n,
        email=f"r{n}@example.org",
        sections=encode_variant(["News"], []),
        variant=f"v{n % 3}",
        segment=("", "young")[n % 2],
        state=state,
        created_at=now,
        last_error=error,
    )


@pytest.mark.parametrize("interleaved", [False, True], ids=["together", "interleaved"])
def test_report_counts_each_row_of_the_edition_once(
    session: Session, now: datetime, interleaved: bool
) -> None:
    mine = store_edition(session)
    other = make_edition(newsletter="weekly", edition_id=None)
    session.add(other)
    session.flush()
    pick = random.Random(7)
    expected: Counter[tuple[str, str, str]] = Counter()
    resolved: Counter[str] = Counter()
    for n in range(1, 301):
        state = pick.choice(("sent",) * 6 + STATES)
        error = None
        if state in ("sent", "failed") and n % 5 == 0:
            error = _RESOLVED
        elif state in ("failed", "unknown", "deferred"):
            error = "550 no such user"
        row = _row(mine, n, state, now, error)
        session.add(row)
        expected[(row.segment or "(all)", row.variant, state)] += 1
        resolved[state] += error == _RESOLVED
        if interleaved:  # two of the other newsletter's rows after each of mine
            session.add_all(
                [_row(other, n, "sent", now, None), _row(other, -n, "failed", now, None)]
            )
        session.flush()

    got = report(session, mine.id)

    by_segment = Counter({(seg, s): n for seg, c in got.by_segment.items() for s, n in c.items()})
    for state in STATES:
        assert got.counts[state] == sum(n for k, n in expected.items() if k[2] == state)
        for segment in ("(all)", "young"):
            want = sum(n for k, n in expected.items() if k[0] == segment and k[2] == state)
            assert by_segment[(segment, state)] == want
        for variant in ("v0", "v1", "v2"):
            want = sum(n for k, n in expected.items() if k[1] == variant and k[2] == state)
            assert got.by_variant[variant][state] == want
    assert got.resolved == {s: n for s, n in resolved.items() if n}
    assert sum(got.counts.values()) == 300
