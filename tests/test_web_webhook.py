"""The SendGrid Event Webhook: signature checks, and what each event does to the ledger and
the audience, whatever order or how many times the events arrive."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.errors import ConfigError
from digest.ledger import Delivery
from digest.web import create_app
from digest.web_models import WebhookEvent
from subscribers.models import Subscriber
from subscribers.service import suppression_for
from tests.web_support import add_edition, add_reader, membership, unlimited

URL = "/webhooks/sendgrid"
KEY_ENV = "SENDGRID_WEBHOOK_PUBLIC_KEY"
SIG = "X-Twilio-Email-Event-Webhook-Signature"
TS = "X-Twilio-Email-Event-Webhook-Timestamp"


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def public_key(private_key, monkeypatch) -> str:
    """The key as SendGrid shows it: base64 DER SubjectPublicKeyInfo, one line."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = base64.b64encode(der).decode()
    monkeypatch.setenv(KEY_ENV, key)
    return key


def signed(private_key, body: bytes, at: datetime) -> dict[str, str]:
    """Headers as SendGrid sends them: ECDSA P-256/SHA-256 over timestamp + raw body."""
    timestamp = str(int(at.timestamp()))
    signature = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIG: base64.b64encode(signature).decode(), TS: timestamp}


@pytest.fixture
def app(config: Config, sessions, now, public_key):
    return create_app(unlimited(config), sessions, clock=fixed(now))


@pytest.fixture
def post(app, private_key, now):
    client = app.test_client()

    def _post(events, at: datetime | None = None):
        body = json.dumps(events).encode()
        return client.post(
            URL,
            data=body,
            headers=signed(private_key, body, at or now),
            content_type="application/json",
        )

    return _post


@pytest.fixture
def row(sessions: sessionmaker[Session], config, now) -> int:
    """A delivery whose outcome is not known yet (handed over, no answer)."""
    sid = add_reader(sessions, config, "dee@example.com", now)
    with sessions() as s, s.begin():
        edition = add_edition(s, "daily", date(2026, 3, 10), "sent", now)
        delivery = Delivery(
            edition_id=edition.id,
            subscriber_id=sid,
            email="dee@example.com",
            sections="[]",
            variant="v-1",
            state="unknown",
            created_at=now,
            provider="sendgrid",
        )
        s.add(delivery)
        s.flush()
        return delivery.id


def delivery(sessions, rid: int) -> Delivery:
    with sessions() as s:
        d = s.get(Delivery, rid)
        assert d is not None
        return d


def event(kind: str, rid: int | None, n: int, **extra):
    e = {"event": kind, "email": "dee@example.com", "sg_event_id": f"ev-{kind}-{n}", **extra}
    if rid is not None:
        e["delivery_id"] = str(rid)
    return e


def subscriber_status(sessions, email="dee@example.com") -> str:
    with sessions() as s:
        return s.scalars(select(Subscriber.status).where(Subscriber.email == email)).one()


# --- signatures ----------------------------------------------------------------------------


def test_valid_signature_is_accepted_and_events_applied(post, sessions, row):
    r = post([event("delivered", row, 1, sg_message_id="abc123.filter0001.1.0")])
    assert r.status_code == 200
    assert r.get_json() == {"delivered": 1}
    d = delivery(sessions, row)
    assert d.state == "sent"
    assert d.provider_message_id == "abc123"


def test_tampered_body_is_refused(app, private_key, sessions, row, now):
    body = json.dumps([event("bounce", row, 1)]).encode()
    headers = signed(private_key, body, now)
    tampered = body.replace(b"dee@", b"eve@")
    r = app.test_client().post(URL, data=tampered, headers=headers)
    assert r.status_code == 403
    assert delivery(sessions, row).state == "unknown"


def test_signature_from_another_key_is_refused(app, sessions, row, now):
    body = json.dumps([event("bounce", row, 1)]).encode()
    stranger = ec.generate_private_key(ec.SECP256R1())
    r = app.test_client().post(URL, data=body, headers=signed(stranger, body, now))
    assert r.status_code == 403
    assert delivery(sessions, row).state == "unknown"


@pytest.mark.parametrize("age", [timedelta(minutes=11), timedelta(minutes=-11)])
def test_stale_or_future_timestamp_is_refused(post, sessions, row, now, age):
    r = post([event("bounce", row, 1)], at=now - age)
    assert r.status_code == 403
    assert delivery(sessions, row).state == "unknown"


def test_recent_timestamp_within_max_age_is_accepted(post, now, row):
    assert post([event("processed", row, 1)], at=now - timedelta(minutes=9)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {SIG: "", TS: ""}, {SIG: "bm90LWEtc2ln", TS: "1773136800"}, {SIG: "%%%", TS: "x"}],
)
def test_unsigned_or_garbled_signature_is_refused(app, sessions, row, headers):
    body = json.dumps([event("bounce", row, 1)]).encode()
    assert app.test_client().post(URL, data=body, headers=headers).status_code == 403
    assert delivery(sessions, row).state == "unknown"


def test_without_a_key_the_webhook_refuses_unless_unsigned_is_allowed(
    config, sessions, now, monkeypatch, row
):
    monkeypatch.delenv(KEY_ENV, raising=False)
    body = json.dumps([event("processed", row, 1)]).encode()
    closed = create_app(unlimited(config), sessions, clock=fixed(now)).test_client()
    assert closed.post(URL, data=body).status_code == 403
    opened = create_app(
        unlimited(config, sendgrid_webhook_allow_unsigned=True), sessions, clock=fixed(now)
    ).test_client()
    assert opened.post(URL, data=body).status_code == 200
    assert delivery(sessions, row).state == "sent"


def test_a_broken_public_key_stops_the_app_at_start(config, sessions, now, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "not-a-key")
    with pytest.raises(ConfigError, match="verification key"):
        create_app(config, sessions, clock=fixed(now))


def test_signed_body_that_is_not_a_list_of_events_is_a_400(post):
    assert post({"event": "bounce"}).status_code == 400
    assert post(["x"]).status_code == 400


# --- what events do ---------------------------------------------------------------------------


def test_bounce_suppresses_and_marks_the_row_failed(post, sessions, row):
    r = post([event("bounce", row, 1, reason="550 5.1.1 user unknown", type="bounce")])
    assert r.status_code == 200
    d = delivery(sessions, row)
    assert d.state == "failed"
    assert "550 5.1.1" in (d.last_error or "")
    with sessions() as s:
        hit = suppression_for(s, "dee@example.com")
        assert hit is not None and hit.reason == "bounced"
    assert subscriber_status(sessions) == "bounced"


def test_dropped_suppresses_but_not_for_spam_content(post, sessions, row):
    post([event("dropped", row, 1, reason="Spam Content (if spam checker app enabled)")])
    assert delivery(sessions, row).state == "failed"
    with sessions() as s:
        assert suppression_for(s, "dee@example.com") is None
    post([event("dropped", row, 2, reason="Bounced Address")])
    with sessions() as s:
        assert suppression_for(s, "dee@example.com") is not None


def test_blocked_bounce_fails_the_row_without_suppressing(post, sessions, row):
    post([event("bounce", row, 1, type="blocked", reason="421 try again later")])
    assert delivery(sessions, row).state == "failed"
    with sessions() as s:
        assert suppression_for(s, "dee@example.com") is None


def test_spamreport_suppresses_as_complained(post, sessions, row):
    post([event("spamreport", row, 1)])
    with sessions() as s:
        hit = suppression_for(s, "dee@example.com")
        assert hit is not None and hit.reason == "complained"
    assert subscriber_status(sessions) == "complained"


def test_unsubscribe_event_leaves_the_newsletter_of_the_delivery(post, sessions, config, row, now):
    sid = delivery(sessions, row).subscriber_id
    add_reader(sessions, config, "dee@example.com", now, newsletter="strict")
    post([event("unsubscribe", row, 1)])
    assert membership(sessions, sid, "daily").status == "unsubscribed"
    assert membership(sessions, sid, "strict").status == "active"


def test_group_unsubscribe_without_a_delivery_leaves_every_list(post, sessions, config, row, now):
    sid = delivery(sessions, row).subscriber_id
    add_reader(sessions, config, "dee@example.com", now, newsletter="strict")
    post([event("group_unsubscribe", None, 1)])
    assert membership(sessions, sid, "daily").status == "unsubscribed"
    assert membership(sessions, sid, "strict").status == "unsubscribed"


def test_a_delivery_id_with_another_address_is_not_touched(post, sessions, row):
    r = post([event("bounce", row, 1, email="someone-else@example.com")])
    assert r.status_code == 200
    assert delivery(sessions, row).state == "unknown"


def test_unknown_and_unmatched_events_are_acknowledged(post, row):
    r = post([event("open", row, 1), event("processed", 999_999, 2), {"event": "click"}])
    assert r.status_code == 200
    assert r.get_json() == {"ignored": 2, "unmatched": 1}


# --- duplicates and order -----------------------------------------------------------------------


def test_duplicate_events_are_applied_once(post, sessions, row):
    dup = event("unsubscribe", row, 7)
    first = post([dup, dup])
    assert first.get_json() == {"unsubscribe": 1, "duplicate": 1}
    sid = delivery(sessions, row).subscriber_id
    with sessions() as s, s.begin():
        # The person signs up again; a redelivered old event must not throw them out.
        sub = s.get(Subscriber, sid)
        sub.status = "active"
        m = sub.membership("daily")
        m.status = "active"
    again = post([dup])
    assert again.get_json() == {"duplicate": 1}
    assert membership(sessions, sid).status == "active"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 1


@pytest.mark.parametrize(
    "order",
    [
        ("processed", "delivered", "bounce"),
        ("bounce", "processed", "delivered"),
        ("delivered", "bounce", "processed"),
    ],
)
def test_events_in_any_order_end_in_the_same_state(post, sessions, row, order):
    for n, kind in enumerate(order):
        assert post([event(kind, row, n, sg_message_id="m1.x")]).status_code == 200
    d = delivery(sessions, row)
    assert d.state == "failed"
    assert (d.last_error or "").startswith("bounce")


def test_late_processed_settles_an_unknown_row_only(post, sessions, row):
    post([event("processed", row, 1)])
    assert delivery(sessions, row).state == "sent"
    post([event("dropped", row, 2, reason="Invalid")])
    post([event("processed", row, 3)])
    assert delivery(sessions, row).state == "failed"


@pytest.mark.parametrize("state", ["pending", "sending"])
def test_processed_settles_a_row_reopened_or_in_flight_so_it_is_not_sent_twice(
    post, sessions, row, state
):
    with sessions() as s, s.begin():
        s.get(Delivery, row).state = state
    post([event("processed", row, 1, sg_message_id="m9.x")])
    d = delivery(sessions, row)
    assert (d.state, d.provider_message_id) == ("sent", "m9")


@pytest.mark.parametrize("state", ["failed", "suppressed", "skipped"])
def test_processed_never_changes_a_closed_row(post, sessions, row, state):
    with sessions() as s, s.begin():
        s.get(Delivery, row).state = state
    post([event("delivered", row, 1)])
    assert delivery(sessions, row).state == state


def test_old_event_ids_are_pruned_after_a_week(app, post, private_key, sessions, row, now):
    post([event("open", row, 1)])
    later = create_app(
        app.extensions["digest"].config, sessions, clock=fixed(now + timedelta(days=8))
    )
    body = json.dumps([event("open", row, 2)]).encode()
    r = later.test_client().post(
        URL, data=body, headers=signed(private_key, body, now + timedelta(days=8))
    )
    assert r.status_code == 200
    with sessions() as s:
        assert list(s.scalars(select(WebhookEvent.sg_event_id))) == ["ev-open-2"]
