"""`POST /webhooks/sendgrid`: SendGrid's Event Webhook. Its dialect (signature, event names,
their meaning) is digest.providers.sendgrid's; what the events do is written here once, in
provider-neutral terms: the ledger (through digest.ledger), suppressions, unsubscribes, clicks."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest import clicks, ledger
from digest.config import Config
from digest.editions import Edition
from digest.errors import NotFound
from digest.events import TrackingEvent, TrackingKind
from digest.ledger import Delivery
from digest.providers import sendgrid
from digest.text import text_problem
from digest.web.context import web
from digest.web_models import WebhookEvent
from subscribers.models import Subscriber, normalise_email
from subscribers.service import suppress, unsubscribe

log = logging.getLogger("digest.web")

EVENT_RETENTION = timedelta(days=7)  # SendGrid retries a batch for up to 72 hours

bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/sendgrid")
def sendgrid_webhook() -> Response:
    w = web()
    body = request.get_data(cache=False)
    verdict = w.verifier.check(body, request.headers, w.now())
    if not verdict.ok:
        log.warning("sendgrid webhook refused: %s", verdict.reason)
        return Response("forbidden\n", status=403, mimetype="text/plain")
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return Response("body is not JSON\n", status=400, mimetype="text/plain")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        return Response("body is not a list of events\n", status=400, mimetype="text/plain")
    try:
        with w.unit() as session:
            outcome = apply_events(session, events, at=w.clock(), config=w.config)
    except IntegrityError:
        # The same batch arrived twice at once: the other request applied these events;
        # applying again now skips them as duplicates.
        with w.unit() as session:
            outcome = apply_events(session, events, at=w.clock(), config=w.config)
    log.info("sendgrid webhook: %s", outcome.summary())
    return Response(
        json.dumps(outcome.counts, sort_keys=True), status=200, mimetype="application/json"
    )


@dataclass
class EventOutcome:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "no events"


def apply_events(
    session: Session,
    events: list[dict[str, Any]],
    *,
    at: datetime,
    config: Config | None = None,
) -> EventOutcome:
    """Apply a batch of SendGrid events in the caller's transaction."""
    return apply_tracking_events(
        session, sendgrid.tracking_events(events, at), at=at, config=config
    )


def apply_tracking_events(
    session: Session,
    events: list[TrackingEvent],
    *,
    at: datetime,
    config: Config | None = None,
) -> EventOutcome:
    """Apply a batch of a provider's events in the caller's transaction: suppressions,
    unsubscribes and ledger updates, each event once (by its event id)."""
    outcome = EventOutcome()
    ids = [e.event_id for e in events if e.event_id]
    seen: set[str] = set()
    for chunk in range(0, len(ids), 500):
        seen.update(
            session.scalars(
                select(WebhookEvent.sg_event_id).where(
                    WebhookEvent.sg_event_id.in_(ids[chunk : chunk + 500])
                )
            )
        )
    for event in events:
        if event.event_id:
            if event.event_id in seen:
                outcome.add("duplicate")
                continue
            seen.add(event.event_id)
            session.add(
                WebhookEvent(sg_event_id=event.event_id, event=event.event[:40], received_at=at)
            )
        outcome.add(_apply_event(session, event, at, config))
    session.execute(delete(WebhookEvent).where(WebhookEvent.received_at < at - EVENT_RETENTION))
    return outcome


def _apply_event(
    session: Session, event: TrackingEvent, at: datetime, config: Config | None
) -> str:
    email = normalise_email(event.email)
    if text_problem(email):
        email = ""  # not an address anyone has: matches no row, suppresses nothing
    row = _delivery_of(session, event.delivery_id, email)
    kind = event.kind
    if kind is TrackingKind.ACCEPTED:
        if row is None:
            return "unmatched"
        ledger.apply_provider_event(session, _provider_event(row.id, event), at)
        return event.event
    if kind is TrackingKind.FAILED:
        if row is not None:
            ledger.apply_provider_event(session, _provider_event(row.id, event), at)
        if email and event.suppression:
            suppress(session, email, event.suppression, at)
        return event.event if event.suppression else f"{event.event} (not suppressed)"
    if kind is TrackingKind.COMPLAINED:
        if email:
            suppress(session, email, "complained", at)
        return event.event
    if kind is TrackingKind.UNSUBSCRIBED:
        _unsubscribe_from_event(session, row, email, at)
        return event.event
    clicked = kind in (TrackingKind.CLICKED, TrackingKind.OPENED)
    if clicked and config is not None and row is not None:
        return clicks.provider_event(session, config, row, event)
    return "ignored"


def _delivery_of(session: Session, delivery_id: int | None, email: str) -> Delivery | None:
    """The ledger row the event names, if its address matches the event's (rows of another
    installation sharing the provider account must not be touched)."""
    if delivery_id is None:
        return None
    row = session.get(Delivery, delivery_id)
    if row is None or normalise_email(row.email) != email:
        return None
    return row


def _provider_event(delivery_id: int, event: TrackingEvent) -> ledger.ProviderEvent:
    return ledger.ProviderEvent(
        delivery_id,
        event.provider,
        event.event,
        accepted=event.kind is TrackingKind.ACCEPTED,
        at=event.at,
        detail=event.reason,
        provider_message_id=event.provider_message_id,
    )


def _unsubscribe_from_event(
    session: Session, row: Delivery | None, email: str, at: datetime
) -> None:
    if row is not None:
        edition = session.get(Edition, row.edition_id)
        target: tuple[int, str | None] | None = (
            row.subscriber_id,
            edition.newsletter if edition else None,
        )
    else:
        sub_id = session.scalar(select(Subscriber.id).where(Subscriber.email == email))
        # Without the delivery we cannot tell which list: leaving all of them is the safe side.
        target = (sub_id, None) if sub_id is not None and email else None
    if target is not None:
        with contextlib.suppress(NotFound):
            unsubscribe(session, target[0], target[1], reason="provider unsubscribe", at=at)
