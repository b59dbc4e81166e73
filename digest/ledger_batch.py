"""A send batch's ledger writes on PostgreSQL: one statement each, whatever the batch's size.

Every statement is a round trip to the server and runs the statement-level triggers of
digest.report_counts once, so a batch of 1,000 costs what a batch of ten does:

    claim       UPDATE … FROM (the pick, MATERIALIZED, FOR UPDATE SKIP LOCKED) … RETURNING
    hand-over   UPDATE … WHERE id = ANY(ids)
    settle      UPDATE … FROM unnest(ids, states, provider ids, errors): the accepted, failed
                and unknown rows of a batch together (deferred ones: digest.ledger_deferral)

The ids go as one array parameter rather than an expanded IN list: the statement's text is the
same for every batch, so psycopg prepares it after a few executions (unless
`prepare_threshold=none`: digest.db), and no list is cut into chunks of 900. SQLite keeps the
statements of digest.ledger: there a statement is a function call, not a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    Text,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from digest.ledger_model import DELIVERIES
from digest.providers.base import Kind, Outcome

_T = DELIVERIES.c

# The next rows of an edition to claim, variant by variant (both backends).
PICK = (
    select(_T.id)
    # A literal, not a bound value: the planner uses the partial index only then.
    .where(_T.edition_id == bindparam("b_edition"), _T.state == literal_column("'pending'"))
    .order_by(_T.variant, _T.id)
    .limit(bindparam("b_n"))
)
# Claimed columns, in the order digest.ledger.claim reads them.
CLAIMED = (_T.id, _T.subscriber_id, _T.email, _T.name, _T.sections, _T.variant, _T.deferred_since)
TAKE = dict(
    state="sending",
    claimed_by=bindparam("b_worker"),
    claimed_at=bindparam("b_now"),
    handed_at=None,
    attempts=_T.attempts + 1,
)

# Materialized once, its rows locked by this transaction: rows another worker holds are
# skipped, and the LIMIT is never evaluated again inside the join (a recheck would pick anew).
_PICKED = PICK.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
_CLAIM = (
    update(DELIVERIES)
    .where(_T.id == _PICKED.c.id, _T.state == "pending")
    .values(**TAKE)
    .returning(*CLAIMED)
)
_IDS = bindparam("b_ids", type_=ARRAY(Integer))
_HANDED = (
    update(DELIVERIES)
    .where(_T.id == any_(_IDS), _T.claimed_by == bindparam("b_worker"))
    .values(handed_at=bindparam("b_now"))
)
_OUTCOMES = func.unnest(
    _IDS,
    bindparam("b_states", type_=ARRAY(String)),
    bindparam("b_pids", type_=ARRAY(String)),
    bindparam("b_errors", type_=ARRAY(Text)),
).table_valued("id", "state", "pid", "error").render_derived(name="outcome")
_SETTLE = (
    update(DELIVERIES)
    .where(
        _T.id == _OUTCOMES.c.id,
        _T.state == "sending",
        _T.claimed_by == bindparam("b_worker"),
    )
    .values(
        state=_OUTCOMES.c.state,
        provider=bindparam("b_provider"),
        # A refusal keeps the provider id an earlier attempt got (as on SQLite).
        provider_message_id=case(
            (_OUTCOMES.c.state == "sent", _OUTCOMES.c.pid), else_=_T.provider_message_id
        ),
        settled_at=bindparam("b_now"),
        last_error=_OUTCOMES.c.error,  # NULL for an accepted row
    )
)
_UNHAND = (
    update(DELIVERIES)
    .where(_T.id == any_(_IDS), _T.state == "sending", _T.claimed_by == bindparam("b_worker"))
    .values(handed_at=None, attempts=_T.attempts + 1)
)


def claim(
    session: Session | Connection, edition_id: int, worker: str, n: int, now: datetime
) -> Sequence[Any]:
    """Up to n pending rows taken for this worker (CLAIMED columns), in one statement."""
    params = {"b_edition": edition_id, "b_n": n, "b_worker": worker, "b_now": now}
    return session.execute(_CLAIM, params).all()


def mark_handed(
    session: Session | Connection, ids: Sequence[int], worker: str, now: datetime
) -> None:
    session.execute(_HANDED, {"b_ids": list(ids), "b_worker": worker, "b_now": now})


def settle(
    session: Session | Connection,
    outcomes: Sequence[Outcome],
    common: dict[str, object],
) -> None:
    """Accepted, failed and unknown outcomes of rows this worker holds, in one statement."""
    ids: list[int] = []
    states: list[str] = []
    pids: list[str | None] = []
    errors: list[str | None] = []
    for o in outcomes:
        ids.append(o.delivery_id)
        if o.kind is Kind.ACCEPTED:
            states.append("sent")
            pids.append(o.provider_id)
            errors.append(None)
        else:
            states.append(o.kind.value)
            pids.append(None)
            errors.append((o.error or "")[:2000])
    if ids:
        params = {"b_ids": ids, "b_states": states, "b_pids": pids, "b_errors": errors}
        session.execute(_SETTLE, {**params, **common})


def unhand(session: Session | Connection, ids: Sequence[int], worker: str) -> None:
    session.execute(_UNHAND, {"b_ids": list(ids), "b_worker": worker})
