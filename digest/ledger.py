"""The delivery ledger: one row per (edition, subscriber), the truth about who got what.

States:
    pending    row created, not yet given to a provider
    sending    claimed by a worker (claimed_by/claimed_at); handed_at is set the moment the
               message left for the provider (SMTP: before the final dot; HTTP: the body
               serialised, just before the request is written)
    deferred   the recipient's server answered "try again later" (SMTP 4xx at RCPT or after
               the message, a SendGrid 400 naming the address): due again at next_attempt_at,
               on a backoff (`deferrals` steps), `failed` with the last answer once the first
               deferral (`deferred_since`) is older than the maximum age
    sent       the provider accepted it (provider_message_id)
    failed     the provider refused it for good (last_error); `--retry-failed` tries again
    suppressed the address was suppressed after the row was created; not sent
    skipped    the subscriber left the audience (unsubscribed, paused, left the segment)
    unknown    handed over, but no answer came back (timeout, crash): it may have been
               delivered; only `--resend-unknown` sends it again

A row is claimed (committed) before the provider call and settled (committed) after it, so a
crash leaves it in `sending`; `recover()` returns such rows to `pending` when they were never
handed over, and marks them `unknown` when they were. Settled: sent, failed, suppressed,
skipped, unknown (a person's copy is accounted for); pending, sending and deferred are not, so
an edition with deferred rows stays open until they are delivered or fail.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    bindparam,
    exists,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnClause, ColumnElement

from digest import ledger_batch
from digest.ledger_batch import CLAIMED, PICK, TAKE
from digest.ledger_deferral import DEFAULT_DEFERRAL, DeferralPolicy, defer
from digest.ledger_model import (
    DELIVERIES,
    SETTLED,
    STATES,
    UNSETTLED,
    Claimed,
    Delivery,
    LedgerCount,
    decode_layout,
    decode_variant,
    encode_variant,
)
from digest.ledger_rows import add_rows, lock_rows
from digest.providers.base import Kind, Outcome

__all__ = [
    "DELIVERIES",
    "SETTLED",
    "STATES",
    "UNSETTLED",
    "DeferralPolicy",
    "add_rows",
    "Claimed",
    "Delivery",
    "decode_layout",
    "decode_variant",
    "encode_variant",
    "lock_rows",
]

# A claim older than this belongs to a worker presumed dead (other machines cannot be asked).
LEASE = timedelta(minutes=15)
_STOPPED = (
    "the sender stopped after handing the message to the provider and before its answer: "
    "it may have been delivered"
)


_T = DELIVERIES.c
_PENDING: ColumnClause[str] = literal_column("'pending'")
_DEFERRED: ColumnClause[str] = literal_column("'deferred'")  # literal: the partial index


def worker_id() -> str:
    """host:pid — a re-run on the same machine can tell a dead worker from a live one."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}"


def _alive_here(claimed_by: str) -> bool:
    """Whether a claim belongs to a live process on this machine (others cannot be asked)."""
    host, _, rest = claimed_by.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:80] or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A process that has exited but not been reaped yet (Linux /proc): dead for our purpose.
    Workers whose parent was killed are reaped by init, and a container's or VM's init may
    take its time: until then kill(pid, 0) still succeeds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return False  # no /proc (macOS): kill() was the answer
    return state in ([b"Z"], [b"X"])


def has_rows(session: Session, edition_id: int) -> bool:
    return bool(session.scalar(select(exists().where(Delivery.edition_id == edition_id))))


def without_row(edition_id: int) -> ColumnElement[bool]:
    """A condition on subscribers: no row of the edition yet. An anti-join the database answers
    from the (edition_id, subscriber_id) key, instead of a set of every id already in the
    ledger held by the sender (50–80 MB at a million)."""
    from subscribers.models import Subscriber

    return ~exists().where(
        Delivery.edition_id == edition_id, Delivery.subscriber_id == Subscriber.id
    )


def pending_outside(
    session: Session, edition_id: int, segment: str, in_audience: ColumnElement[bool]
) -> list[int]:
    """Ids of the rows still to deliver (pending or deferred) of the edition, for this segment,
    whose subscriber no longer meets `in_audience` (a condition correlated to the row's
    subscriber_id): the people who left since their row was written."""
    return list(
        session.scalars(
            select(Delivery.id).where(
                Delivery.edition_id == edition_id,
                Delivery.state.in_(("pending", "deferred")),
                Delivery.segment == segment,
                ~in_audience,
            )
        )
    )


def recover(session: Session, edition_id: int, now: datetime) -> tuple[int, int]:
    """Settle rows left in `sending` by a dead worker: back to pending when never handed over,
    `unknown` when they were. Returns (returned to pending, marked unknown)."""
    stale = session.execute(
        select(Delivery.id, Delivery.claimed_by, Delivery.claimed_at, Delivery.handed_at).where(
            Delivery.edition_id == edition_id, Delivery.state == "sending"
        )
    ).all()
    back: list[int] = []
    unknown: list[int] = []
    for rid, by, at, handed in stale:
        if by and at and at > now - LEASE and _alive_here(by):
            continue
        (unknown if handed else back).append(rid)
    for chunk in _chunks(back):
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.state == "sending")
            .values(state="pending", claimed_by=None, claimed_at=None)
        )
    for chunk in _chunks(unknown):
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.state == "sending")
            .values(
                state="unknown",
                settled_at=now,
                last_error=_STOPPED,
            )
        )
    return len(back), len(unknown)


def reopen(session: Session, edition_id: int, states: Iterable[str]) -> int:
    """Put failed/unknown rows back to pending (--retry-failed, --resend-unknown), with a
    fresh deferral clock: the cause was fixed, so the maximum age starts again."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id, Delivery.state.in_(list(states)))
        .values(
            state="pending",
            claimed_by=None,
            claimed_at=None,
            handed_at=None,
            deferrals=0,
            deferred_since=None,
            next_attempt_at=None,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def claim(
    session: Session | Connection,
    edition_id: int,
    worker: str,
    n: int,
    now: datetime,
    after: int = 0,
) -> list[Claimed]:
    """Take up to n pending rows for this worker (state sending), so that a batch is mostly
    one variant (one SendGrid request carries one variant's content).

    PostgreSQL: in id order from `after` (the worker's cursor; rows were written variant by
    variant), FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint rows without
    waiting (one statement: digest.ledger_batch). SQLite ignores both and walks the pending
    rows variant by variant; there a single UPDATE ... WHERE state='pending' runs under the
    database write lock, which still never hands one row to two claimers."""
    if not _sqlite(session):
        rows = ledger_batch.claim(session, edition_id, worker, n, now, after)
    else:
        params = {"b_edition": edition_id, "b_n": n, "b_worker": worker, "b_now": now}
        rows = session.execute(_CLAIM_NEXT, params).all()
    # A handful of distinct variants per batch.
    parsed: dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]] = {}
    out = []
    for r in rows:
        found = parsed.get(r[4])
        if found is None:
            found = parsed[r[4]] = decode_layout(r[4])
        out.append(Claimed(r[0], r[1], r[2], r[3], found[0], r[5], found[1], r[6], found[2]))
    out.sort(key=lambda c: c.id)
    return out


# Core statements on the table, built once: the ORM's bulk-UPDATE machinery cost more than
# SQLite did, and building the statements per claim was a third of a claim's Python.
_PICK = PICK
_TAKE = update(DELIVERIES).values(**TAKE).returning(*CLAIMED)
_CLAIM_NEXT = _TAKE.where(_T.id.in_(_PICK.scalar_subquery()), _T.state == "pending")


# Per-message statements (SMTP checkpoints) run on the Core table with bound parameters:
# compiled once, about ten times cheaper than ORM-enabled UPDATEs.
_HANDED = (
    update(DELIVERIES)
    .where(_T.id == bindparam("b_id"), _T.claimed_by == bindparam("b_worker"))
    .values(handed_at=bindparam("b_now"))
)
_MARK_SENT = update(DELIVERIES).values(
    state="sent",
    provider=bindparam("b_provider"),
    provider_message_id=bindparam("b_pid"),
    settled_at=bindparam("b_now"),
    last_error=None,
)
_SENT = _MARK_SENT.where(
    _T.id == bindparam("b_id"), _T.state == "sending", _T.claimed_by == bindparam("b_worker")
)
# The same for a batch's rows (SendGrid: one request, one provider id): a statement built once
# with an expanding list, rather than one built per call around a list SQLAlchemy checks
# element by element.
_HANDED_MANY = (
    update(DELIVERIES)
    .where(_T.id.in_(bindparam("b_ids", expanding=True)), _T.claimed_by == bindparam("b_worker"))
    .values(handed_at=bindparam("b_now"))
)
_SENT_MANY = _MARK_SENT.where(
    _T.id.in_(bindparam("b_ids", expanding=True)),
    _T.state == "sending",
    _T.claimed_by == bindparam("b_worker"),
)
_SETTLED = (
    update(DELIVERIES)
    .where(
        _T.id == bindparam("b_id"), _T.state == "sending", _T.claimed_by == bindparam("b_worker")
    )
    .values(
        state=bindparam("b_state"),
        provider=bindparam("b_provider"),
        last_error=bindparam("b_error"),
        settled_at=bindparam("b_now"),
    )
)


def mark_handed(
    session: Session | Connection, ids: Sequence[int], worker: str, now: datetime
) -> None:
    if not _sqlite(session):
        ledger_batch.mark_handed(session, ids, worker, now)
        return
    if len(ids) == 1:
        session.execute(_HANDED, {"b_id": ids[0], "b_worker": worker, "b_now": now})
        return
    for chunk in _chunks(list(ids)):
        session.execute(_HANDED_MANY, {"b_ids": chunk, "b_worker": worker, "b_now": now})


_SETTLES = (Kind.ACCEPTED, Kind.FAILED, Kind.UNKNOWN)


def settle(
    session: Session | Connection,
    outcomes: Sequence[Outcome],
    worker: str,
    provider: str,
    now: datetime,
    deferral: DeferralPolicy = DEFAULT_DEFERRAL,
) -> None:
    """Record final outcomes (accepted, failed, unknown, deferred) of rows this worker holds."""
    accepted: dict[str | None, list[int]] = defaultdict(list)
    others: list[dict[str, object]] = []
    deferred = [o for o in outcomes if o.kind is Kind.DEFER]
    common = {"b_worker": worker, "b_provider": provider, "b_now": now}
    if not _sqlite(session):
        ledger_batch.settle(session, [o for o in outcomes if o.kind in _SETTLES], common)
        if deferred:
            defer(session, deferred, common, now, deferral)
        return
    for o in outcomes:
        if o.kind is Kind.ACCEPTED:
            accepted[o.provider_id].append(o.delivery_id)
        elif o.kind in (Kind.FAILED, Kind.UNKNOWN):
            others.append(
                {
                    "b_id": o.delivery_id,
                    "b_state": o.kind.value,
                    "b_error": (o.error or "")[:2000],
                    **common,
                }
            )
    single = [(pid, ids[0]) for pid, ids in accepted.items() if len(ids) == 1]
    if single:
        # SMTP: one provider id per message; executemany keeps it one round trip.
        session.execute(_SENT, [{"b_id": i, "b_pid": pid, **common} for pid, i in single])
    for pid, ids in accepted.items():
        if len(ids) == 1:
            continue
        for chunk in _chunks(ids):
            session.execute(_SENT_MANY, {"b_ids": chunk, "b_pid": pid, **common})
    if others:
        session.execute(_SETTLED, others)
    if deferred:
        defer(session, deferred, common, now, deferral)


def unhand(session: Session | Connection, ids: Sequence[int], worker: str) -> None:
    """The provider answered "not accepted, try again" (429, 5xx, 401): the messages are no
    longer in its hands, so a crash from here on may resend them safely."""
    if not _sqlite(session):
        ledger_batch.unhand(session, ids, worker)
        return
    for chunk in _chunks(list(ids)):
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(chunk), Delivery.state == "sending")
            .where(Delivery.claimed_by == worker)
            .values(handed_at=None, attempts=Delivery.attempts + 1)
        )


def release(session: Session | Connection, ids: Sequence[int], worker: str, now: datetime) -> None:
    """Let go of rows this worker still holds (stop, error): never handed over → pending;
    handed over without an answer → unknown."""
    for chunk in _chunks(list(ids)):
        mine = (Delivery.id.in_(chunk), Delivery.state == "sending", Delivery.claimed_by == worker)
        session.execute(
            update(Delivery)
            .where(*mine, Delivery.handed_at.is_(None))
            .values(state="pending", claimed_by=None, claimed_at=None)
        )
        session.execute(
            update(Delivery)
            .where(*mine, Delivery.handed_at.is_not(None))
            .values(state="unknown", settled_at=now, last_error=_STOPPED)
        )


def leave_audience(session: Session, ids: Sequence[int], now: datetime) -> int:
    """Pending or deferred rows of people no longer in the audience: `suppressed` when the
    address is on the suppression list, `skipped` otherwise (unsubscribed, paused, left the
    segment)."""
    from subscribers.models import Subscriber, Suppression

    for chunk in _chunks(list(ids)):
        suppressed = set(
            session.scalars(
                select(Delivery.id).where(
                    Delivery.id.in_(chunk),
                    exists().where(
                        Subscriber.id == Delivery.subscriber_id,
                        Suppression.email_hash == Subscriber.email_hash,
                    ),
                )
            )
        )
        for state, rows, why in (
            ("suppressed", [i for i in chunk if i in suppressed], "address is suppressed"),
            ("skipped", [i for i in chunk if i not in suppressed], "no longer in the audience"),
        ):
            if rows:
                session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(rows), Delivery.state.in_(("pending", "deferred")))
                    .values(state=state, settled_at=now, last_error=why)
                )
    return len(ids)


def erase_recipient(session: Session, subscriber_id: int, label: str, now: datetime) -> int:
    """Right to erasure: the audit rows stay (which edition went to which subscriber id, when,
    with what outcome) but lose the address and name; rows not yet sent are skipped so the
    person gets nothing more. `label` replaces the address (a non-reversible tag)."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.state.in_(("pending", "deferred")),
        )
        .values(state="skipped", settled_at=now, last_error="subscriber erased")
    )
    result = session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id)
        .values(email=label, name=None)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def counts(session: Session, edition_id: int) -> dict[str, int]:
    """The edition's rows by state, from the counts the ledger's triggers keep (a send's end
    and its progress read them; counting the rows was a second at a million)."""
    rows = session.execute(
        select(LedgerCount.state, func.sum(LedgerCount.n))
        .where(LedgerCount.edition_id == edition_id)
        .group_by(LedgerCount.state)
    ).all()
    out = dict.fromkeys(STATES, 0)
    out.update({state: int(n) for state, n in rows})
    return out


def pending(session: Session, edition_id: int) -> int:
    """Rows waiting for a worker (SQLite: counted from the partial index alone)."""
    return int(
        session.scalar(
            select(func.count()).where(_T.edition_id == edition_id, _T.state == _PENDING)
        )
        or 0
    )


def unsettled(session: Session, edition_id: int) -> int:
    """Rows whose reader's copy is not accounted for yet: pending, sending or deferred."""
    return int(
        session.scalar(
            select(func.count()).where(
                Delivery.edition_id == edition_id, Delivery.state.in_(UNSETTLED)
            )
        )
        or 0
    )


def wake_deferred(session: Session | Connection, edition_id: int, now: datetime) -> int:
    """Deferred rows whose next attempt is due become pending: claimed like any other."""
    result = session.execute(
        update(DELIVERIES)
        .where(_T.edition_id == edition_id, _T.state == _DEFERRED, _T.next_attempt_at <= now)
        .values(state="pending")
    )
    return int(getattr(result, "rowcount", 0) or 0)


def deferred_due(session: Session | Connection, edition_id: int, now: datetime) -> int:
    """Deferred rows of the edition whose next attempt is due (the scheduler sends them)."""
    return int(
        session.scalar(
            select(func.count()).where(
                _T.edition_id == edition_id, _T.state == _DEFERRED, _T.next_attempt_at <= now
            )
        )
        or 0
    )


def next_due(session: Session | Connection, edition_id: int) -> datetime | None:
    """When the edition's earliest deferred row is due again (None: no deferred rows)."""
    # IS NOT NULL changes no answer (min() skips nulls) but matches the predicate of
    # PostgreSQL's index of due rows: without it, the edition's every row was read.
    found: datetime | None = session.scalar(
        select(func.min(_T.next_attempt_at)).where(
            _T.edition_id == edition_id, _T.state == _DEFERRED, _T.next_attempt_at.is_not(None)
        )
    )
    return found


def fast_commits(session: Session | Connection) -> None:
    """This transaction's commit need not wait for PostgreSQL's WAL flush: a power cut of the
    database host may forget it (up to about 3 × wal_writer_delay of such commits, 600 ms by
    default), a crash of this process never does. Only for writes whose loss cannot cause a
    resend: settles (a forgotten `sent` leaves the row handed, so it becomes `unknown`).
    Never for a claim or a hand-over mark: the mark is what stops a re-run sending again,
    so it is committed durably before the bytes go out (and with it the WAL of every fast
    commit before it)."""
    if not _sqlite(session):
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _sqlite(session: Session | Connection) -> bool:
    bind = session if isinstance(session, Connection) else session.get_bind()
    return bind.dialect.name == "sqlite"


def _chunks(ids: Sequence[int], size: int = 900) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


# --- rows settled by what the provider reports later (issue 12: resolving `unknown`) --------
#
# SendGrid's Event Webhook (digest.web) names the ledger row of each event by the
# `delivery_id` custom arg. A row whose fate is open — `unknown` (no answer came back),
# `sending` (the answer is on its way), `pending` (reopened by --resend-unknown) — is settled
# by it: the provider has the message, so sending it again would be a duplicate. The note in
# last_error says so ("resolved by SendGrid event delivered at …"), and `sends report` counts
# those rows. Precedence keeps the end state independent of arrival order: a refusal (bounce,
# drop) marks the row failed whatever came before; an acceptance never undoes a refusal.

OPEN_STATES = ("unknown", "sending", "pending")
RESOLVED_BY = "resolved by "


@dataclass(frozen=True)
class ProviderEvent:
    """What a provider reported later about one ledger row, in provider-neutral terms."""

    delivery_id: int
    provider: str  # as a reader knows it: "SendGrid"
    event: str  # the provider's own word: "processed", "delivered", "bounce"
    accepted: bool  # True: the provider has or delivered it; False: refused for good
    at: datetime  # when the provider says it happened
    detail: str = ""  # its reason for a refusal
    provider_message_id: str | None = None


def resolution_note(event: ProviderEvent) -> str:
    return f"{RESOLVED_BY}{event.provider} event {event.event} at {event.at:%Y-%m-%d %H:%M:%S} UTC"


def apply_provider_event(session: Session, event: ProviderEvent, now: datetime) -> str:
    """Settle a row from a provider's later report; returns "resolved" when it settled an
    open row, "failed" when it failed a settled one, "confirmed" when it changed nothing
    (a `sent` row delivered, or a closed row), "unmatched" when there is no such row."""
    row = session.get(Delivery, event.delivery_id)
    if row is None:
        return "unmatched"
    was_open = row.state in OPEN_STATES
    if event.accepted:
        if was_open:
            row.state, row.settled_at, row.last_error = "sent", now, resolution_note(event)
            row.claimed_by = row.claimed_at = None
        if row.state == "sent" and not row.provider_message_id:
            row.provider_message_id = event.provider_message_id
        return "resolved" if was_open else "confirmed"
    # An open row, or one an earlier event resolved, keeps saying how it was settled.
    resolved = was_open or RESOLVED_BY in (row.last_error or "")
    reason = f"{event.event}: {event.detail}" if event.detail else event.event
    row.state, row.settled_at = "failed", now
    row.claimed_by = row.claimed_at = None
    row.last_error = (f"{reason} ({resolution_note(event)})" if resolved else reason)[:2000]
    return "resolved" if was_open else "failed"
