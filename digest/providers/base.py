"""The provider interface: send a batch of messages of one variant, answer per message.

A provider never touches the ledger. It returns, per message, one `Outcome`; and it calls
`checkpoint(handed, settled)` just before messages leave its hands (before the SMTP final dot,
once the HTTP body is serialised) — the point after which a crash leaves "maybe delivered" —
passing the outcomes it already knows, and with every refusal as soon as it comes (a refused
message must never be left looking handed over). The sender records both durably before the
provider goes on, so a re-run after a crash resends only what was never handed over.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol, Self

from digest.message import Addressee, Content, TransactionalMessage, VariantMessage


class Kind(StrEnum):
    ACCEPTED = "accepted"  # provider took it; provider_id set
    RETRY = "retry"  # temporary (429, 5xx, connection); retry_after when the provider said
    FAILED = "failed"  # permanent for this message (other 4xx, SMTP 5xx); error set
    AUTH = "auth"  # credentials refused: the whole send must stop
    UNKNOWN = "unknown"  # timed out after handing over: may or may not have been accepted
    # Temporary refusal of this one recipient (SMTP 4xx at RCPT or after the message, a
    # SendGrid 400 naming the address): the row waits for its next attempt, the send goes on.
    DEFER = "deferred"


class Outcome(NamedTuple):
    delivery_id: int
    kind: Kind
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


# What building one recipient's message can raise on bad data (digest.message.HeaderError
# and UnicodeError are ValueErrors; a missing substitution a LookupError): that message fails
# alone, with the reason, and the others go on.
BUILD_ERRORS: tuple[type[Exception], ...] = (ValueError, LookupError)


def unbuildable(delivery_id: int, error: Exception) -> Outcome:
    """The outcome of a message that could not be built for its recipient."""
    error_text = f"cannot build the message for this recipient: {type(error).__name__}: {error}"
    return Outcome(delivery_id, Kind.FAILED, error=error_text[:500])


class Outgoing(NamedTuple):
    """One message of a batch: who, and their personalised content."""

    to: Addressee
    content: Content

    @property
    def delivery_id(self) -> int:
        assert self.to.delivery_id is not None
        return self.to.delivery_id


@dataclass
class Batch:
    """Messages of one variant. `template` is the per-variant content whose placeholders a
    provider with server-side substitution (SendGrid) fills from `substitutions`. A
    transactional message (a confirmation) is a batch of one without a template."""

    variant: VariantMessage | TransactionalMessage
    messages: list[Outgoing]
    when: datetime
    template: Content | None = None
    substitutions: list[dict[str, str]] = field(default_factory=list)

    def mime(self, i: int) -> bytes:
        """Message i as RFC 5322 bytes (from the template when the batch has one)."""
        m = self.messages[i]
        if self.template is not None and self.substitutions:
            assert isinstance(self.variant, VariantMessage)
            return self.variant.mime(self.template, m.to, self.when, self.substitutions[i])
        return self.variant.mime(m.content, m.to, self.when)

    def envelope_sender(self, i: int) -> str | None:
        """Message i's own envelope sender (a VERP address), or None: the provider's."""
        return self.variant.envelope_sender(self.messages[i].to)


Checkpoint = Callable[[Sequence[int], Sequence[Outcome]], None]


def no_checkpoint(handed: Sequence[int], settled: Sequence[Outcome]) -> None:
    """For callers without a ledger (previews, benchmarks of the provider alone)."""


class Provider(Protocol):
    name: str
    # Largest useful batch (SendGrid: 1000 personalizations per request).
    batch_size: int
    # Batches a worker may have with the provider at once (one connection: 1). A crash can
    # leave up to in_flight × batch_size rows `unknown`.
    in_flight: int

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        """Deliver the batch; one Outcome per message (those passed to checkpoint included)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class Closing:
    """`with provider:` closes it at the end (the providers' shared context-manager half)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RateLimiter:
    """At most `rate` messages per second (0 = unlimited), smoothed over one-second bursts."""

    def __init__(
        self,
        rate: float,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._monotonic = monotonic
        self._sleep = sleep
        self._allowance = max(rate, 1.0)
        self._last = monotonic()
        # Several delivery threads of one worker share the limiter; a waiter holds the lock
        # while it sleeps, so the others queue behind it rather than overdraw.
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            self._take(n)

    def _take(self, n: int) -> None:
        now = self._monotonic()
        cap = max(self.rate, float(n))
        self._allowance = min(cap, self._allowance + (now - self._last) * self.rate)
        self._last = now
        if self._allowance >= n:
            self._allowance -= n
            return
        # Wait exactly for the missing tokens; they are spent as soon as they accrue.
        self._sleep((n - self._allowance) / self.rate)
        self._allowance = 0.0
        self._last = self._monotonic()


def backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never sooner than the provider asked."""
    delay = random.uniform(0, min(cap, base * 2 ** max(attempt - 1, 0)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap * 4))
    return delay
