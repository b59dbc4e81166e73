"""What a send is asked to do (SendOptions, RetryPolicy) and what it tells as it goes
(ProgressEvent): values shared by the pipeline (digest.sending), its workers and their callers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from subscribers.audience import Recipient

# A local-time wave's verdict on a recipient: True, theirs is this run; False, a later run's;
# a string, their send time passed while nothing ran: the reason their row is `skipped` with,
# so the ledger answers why they did not get this edition.
RecipientFilter = Callable[[Recipient], bool | str]


class SendObserver(Protocol):
    """Told by the send path what it does, as it does it (digest.metrics.SendMetrics exports
    it to Prometheus for `digest schedule`)."""

    def provider_call(self, provider: str, seconds: float) -> None:
        """One call of the provider's send() (a batch) took `seconds`."""

    def recorded(self, provider: str, sent: int, failed: int, unknown: int, deferred: int) -> None:
        """Outcomes just committed to the ledger."""


@dataclass(frozen=True)
class RetryPolicy:
    """429, 5xx and connection errors: exponential backoff with jitter, at most `attempts`
    tries per message in one run; Retry-After / X-RateLimit-Reset are honoured."""

    attempts: int = 6
    base: float = 1.0
    cap: float = 60.0


@dataclass
class SendOptions:
    provider: str | None = None
    dry_run: bool = False
    segments: tuple[str, ...] = ()
    limit: int | None = None
    workers: int = 1
    retry_failed: bool = False
    resend_unknown: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int | None = None  # default: the provider's own
    # False: deliver the rows the ledger has and add nobody (the scheduler's retries of an
    # earlier day's deferred rows: people who subscribed since get the current edition).
    add_recipients: bool = True
    # Local-time delivery (the scheduler's waves): which recipients get rows now.
    recipient_filter: RecipientFilter | None = None
    subject: str | None = None  # an A/B arm's subject template (digest.abtest)
    # Metrics of this process (the scheduler's); worker processes report only their totals.
    observer: SendObserver | None = None


@dataclass(frozen=True)
class ProgressEvent:
    sent: int
    failed: int
    unknown: int
    total: int  # rows this run may still deliver (after --limit)
    rate: float  # messages per second
    deferred: int = 0  # refused "for now" by the recipient's server: tried again later

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.unknown + self.deferred


Progress = Callable[[ProgressEvent], None]
