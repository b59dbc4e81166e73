"""What a provider reports after a send, in provider-neutral terms: each provider's webhook
dialect maps its own events to these (digest.providers.sendgrid.tracking_events), and the
webhook applies them (digest.web.webhooks.apply_tracking_events)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class TrackingKind(enum.Enum):
    ACCEPTED = "accepted"  # the provider has the message, or delivered it
    FAILED = "failed"  # refused for good: bounced, dropped
    COMPLAINED = "complained"  # the reader reported it as spam
    UNSUBSCRIBED = "unsubscribed"  # through the provider's own unsubscribe
    CLICKED = "clicked"
    OPENED = "opened"
    OTHER = "other"  # nothing digest acts on


@dataclass(frozen=True)
class TrackingEvent:
    provider: str  # as a reader knows it: "SendGrid"
    kind: TrackingKind
    event: str  # the provider's own word: "delivered", "bounce", "spamreport"
    event_id: str  # the provider's id of the event, for applying each once; "" when none
    email: str  # the recipient, as the provider spells it (unchecked)
    delivery_id: int | None  # the ledger row the message carried, when it names one
    at: datetime  # when it happened, or when it arrived if the time makes no sense
    occurred: datetime | None  # its own time only (clicks and opens), None when it has none
    reason: str = ""  # why it failed
    suppression: str | None = None  # a failure that suppresses the address: why ("bounced")
    provider_message_id: str | None = None
    url: str = ""  # the clicked link
    user_agent: str = ""
