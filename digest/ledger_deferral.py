"""When a recipient's temporary refusal ("try again later") is tried again: the backoff ladder
of a deferred row, and the statement that defers it (or fails it once it is too old)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Update, and_, bindparam, case, func, null, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from digest.articles import UTCDateTime
from digest.ledger_model import DELIVERIES
from digest.providers.base import Outcome

_T = DELIVERIES.c


@dataclass(frozen=True)
class DeferralPolicy:
    """When a deferred row is tried again: `first`, then three times longer at each step up
    to `cap` (5 min, 15 min, 45 min, 2 h 15, 4 h, 4 h … by default); once the first deferral
    is older than `max_age`, the next temporary answer fails the row with that answer."""

    first: timedelta = timedelta(minutes=5)
    cap: timedelta = timedelta(hours=4)
    max_age: timedelta = timedelta(days=3)

    def expired(self, deferred_since: datetime | None, now: datetime) -> bool:
        """Whether a temporary answer now is the last one this row gets."""
        return deferred_since is not None and deferred_since <= now - self.max_age

    def final_error(self, error: str | None) -> str:
        hours = self.max_age.total_seconds() / 3600
        return f"still refused after {hours:g} hours of retries; last answer: {error or ''}"

    def steps(self) -> list[timedelta]:
        out = [min(self.first, self.cap)]
        while out[-1] < self.cap and len(out) < 12:
            out.append(min(out[-1] * 3, self.cap))
        return out


DEFAULT_DEFERRAL = DeferralPolicy()


@cache
def _defer_statement(steps: int) -> Update:
    """Defer a row this worker holds, or fail it when its first deferral passed the maximum
    age. One statement per length of the backoff ladder (the step is the row's own count)."""
    expired = and_(_T.deferred_since.is_not(None), _T.deferred_since <= bindparam("b_cutoff"))
    at = [bindparam(f"b_at{k}", type_=UTCDateTime()) for k in range(steps)]
    next_at = case(*((_T.deferrals == k, at[k]) for k in range(steps - 1)), else_=at[-1])
    return (
        update(DELIVERIES)
        .where(
            _T.id == bindparam("b_id"),
            _T.state == "sending",
            _T.claimed_by == bindparam("b_worker"),
        )
        .values(
            state=case((expired, "failed"), else_="deferred"),
            provider=bindparam("b_provider"),
            deferrals=_T.deferrals + 1,
            deferred_since=func.coalesce(_T.deferred_since, bindparam("b_now")),
            next_attempt_at=case((expired, null()), else_=next_at),
            settled_at=case((expired, bindparam("b_now")), else_=null()),
            last_error=case((expired, bindparam("b_final")), else_=bindparam("b_error")),
        )
    )


def defer(
    session: Session | Connection,
    outcomes: Sequence[Outcome],
    common: dict[str, object],
    now: datetime,
    policy: DeferralPolicy,
) -> None:
    steps = policy.steps()
    times = {f"b_at{k}": now + step for k, step in enumerate(steps)}
    params = [
        {
            "b_id": o.delivery_id,
            "b_error": (o.error or "")[:2000],
            "b_final": policy.final_error(o.error)[:2000],
            "b_cutoff": now - policy.max_age,
            **times,
            **common,
        }
        for o in outcomes
    ]
    session.execute(_defer_statement(len(steps)), params)
