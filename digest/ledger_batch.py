"""A send batch's ledger writes on PostgreSQL: one statement each, whatever the batch's size.

Every statement is a round trip to the server and runs the statement-level triggers of
digest.report_counts once, so a batch of 1,000 costs what a batch of ten does:

    claim       UPDATE … WHERE id = ANY(ARRAY(the pick … FOR UPDATE SKIP LOCKED)) RETURNING
    hand-over   UPDATE … WHERE id = ANY(ids)
    settle      UPDATE … WHERE id = ANY(ids): the largest group of like answers (SendGrid: a
                request's accepted rows, one provider id); the other accepted, failed and
                unknown rows, if any, in a second one (deferred ones: digest.ledger_deferral)

The ids go as one array parameter rather than an expanded IN list: the statement's text is the
same for every batch, so psycopg prepares it after a few executions (unless
`prepare_threshold=none`: digest.db), and no list is cut into chunks of 900. SQLite keeps the
statements of digest.ledger: there a statement is a function call, not a round trip.
"""

from __future__ import annotations

from collections import defaultdict
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
from sqlalchemy.sql.expression import Grouping

from digest.ledger_model import DELIVERIES
from digest.providers.base import Kind, Outcome

_T = DELIVERIES.c

# SQLite's pick: the next rows of an edition to claim, variant by variant, from the partial
# index of pending rows.
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

# PostgreSQL's pick: the edition's rows in id order from the worker's cursor (`b_after`, the
# last id it claimed), through the index on (edition_id, id): no index names `state` there
# (migration 0017), so that a row's updates are HOT. Rows were written variant by variant, so
# id order still gives batches of one variant. Rows behind the cursor that are pending again
# (deferred rows woken, a stopped worker's batch) are found by a pick from the start, made
# when the cursor's finds nothing (digest.ledger_writer).
#
# The pick runs once (an InitPlan: ARRAY(subquery)), its rows locked by this transaction: rows
# another worker holds are skipped, and a recheck never picks anew. The lock itself re-reads a
# row changed since the statement began and skips it unless still pending, so the update needs
# no condition on the state. Nor a join with the pick: when the statistics were taken before
# the edition's rows existed, it was a scan of every pending row per picked row.
_PG_PICK = (
    select(_T.id)
    .where(
        _T.edition_id == bindparam("b_edition"),
        _T.id > bindparam("b_after"),
        _T.state == literal_column("'pending'"),
    )
    .order_by(_T.id)
    .limit(bindparam("b_n"))
)
_PICKED = func.array(_PG_PICK.with_for_update(skip_locked=True).scalar_subquery())
_CLAIM = update(DELIVERIES).where(_T.id == any_(_PICKED)).values(**TAKE).returning(*CLAIMED)
_IDS = bindparam("b_ids", type_=ARRAY(Integer))
# The rows of a batch: `id = ANY(ids)` within the ids' range. The range is what the planner
# can weigh (a batch's ids lie close together: rows are claimed in the order they were
# created); told only of a thousand ids, it scanned the whole table for them below about
# 50,000 rows.
_BATCH = (_T.id.between(bindparam("b_lo"), bindparam("b_hi")), _T.id == any_(_IDS))
_HANDED = (
    update(DELIVERIES)
    .where(*_BATCH, _T.claimed_by == bindparam("b_worker"))
    .values(handed_at=bindparam("b_now"))
)
# A batch's outcomes mostly share one answer (SendGrid: one provider id per request): those go
# with scalar values. The rest (a few refusals, or SMTP's one provider id per message) find
# their own values by the row's position in the ids array. Not a join with unnest(): a ledger
# whose statistics were taken before the send sees no `sending` rows, and the planner then
# scanned the table once per outcome (a second per batch of 1,000).
_SETTLED: dict[str, Any] = dict(provider=bindparam("b_provider"), settled_at=bindparam("b_now"))
_MINE = (*_BATCH, _T.state == "sending", _T.claimed_by == bindparam("b_worker"))


def _pid(state: Any, pid: Any) -> Any:
    """The provider id of an accepted row; a refusal keeps what an earlier attempt got."""
    return case((state == "sent", pid), else_=_T.provider_message_id)


_SETTLE_SAME = (
    update(DELIVERIES)
    .where(*_MINE)
    .values(
        state=bindparam("b_state", type_=String),
        provider_message_id=_pid(bindparam("b_state", type_=String), bindparam("b_pid", String)),
        last_error=bindparam("b_error", type_=Text),  # NULL for accepted rows
        **_SETTLED,
    )
)


def _each(name: str, type_: Any) -> Any:
    """This row's element of an array parameter (its position in the ids array)."""
    return Grouping(bindparam(name, type_=ARRAY(type_)))[func.array_position(_IDS, _T.id)]


_SETTLE_EACH = (
    update(DELIVERIES)
    .where(*_MINE)
    .values(
        state=_each("b_states", String),
        provider_message_id=_pid(_each("b_states", String), _each("b_pids", String)),
        last_error=_each("b_errors", Text),
        **_SETTLED,
    )
)
_UNHAND = update(DELIVERIES).where(*_MINE).values(handed_at=None, attempts=_T.attempts + 1)


def _ids(ids: Sequence[int]) -> dict[str, object]:
    return {"b_ids": list(ids), "b_lo": min(ids), "b_hi": max(ids)}


def claim(
    session: Session | Connection,
    edition_id: int,
    worker: str,
    n: int,
    now: datetime,
    after: int = 0,
) -> Sequence[Any]:
    """Up to n pending rows with ids above `after` taken for this worker (CLAIMED columns),
    in one statement."""
    params = {"b_edition": edition_id, "b_after": after, "b_n": n, "b_worker": worker, "b_now": now}
    return session.execute(_CLAIM, params).all()


def mark_handed(
    session: Session | Connection, ids: Sequence[int], worker: str, now: datetime
) -> None:
    if ids:
        session.execute(_HANDED, {**_ids(ids), "b_worker": worker, "b_now": now})


def settle(
    session: Session | Connection,
    outcomes: Sequence[Outcome],
    common: dict[str, object],
) -> None:
    """Accepted, failed and unknown outcomes of rows this worker holds: the largest group of
    like answers in one statement, the others in a second (when there are others)."""
    groups: dict[tuple[str, str | None, str | None], list[int]] = defaultdict(list)
    for o in outcomes:
        if o.kind is Kind.ACCEPTED:
            groups[("sent", o.provider_id, None)].append(o.delivery_id)
        else:
            groups[(o.kind.value, None, (o.error or "")[:2000])].append(o.delivery_id)
    if not groups:
        return
    main = max(groups, key=lambda k: len(groups[k]))
    if len(groups[main]) > 1 or len(groups) == 1:
        state, pid, error = main
        same = {**_ids(groups.pop(main)), "b_state": state, "b_pid": pid, "b_error": error}
        session.execute(_SETTLE_SAME, {**same, **common})
    if groups:
        each: dict[str, list[Any]] = {"b_ids": [], "b_states": [], "b_pids": [], "b_errors": []}
        for (state, pid, error), ids in groups.items():
            each["b_ids"] += ids
            each["b_states"] += [state] * len(ids)
            each["b_pids"] += [pid] * len(ids)
            each["b_errors"] += [error] * len(ids)
        session.execute(_SETTLE_EACH, {**each, **_ids(each["b_ids"]), **common})


def unhand(session: Session | Connection, ids: Sequence[int], worker: str) -> None:
    if ids:
        session.execute(_UNHAND, {**_ids(ids), "b_worker": worker})
