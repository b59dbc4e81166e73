"""SendGrid provider: the official `sendgrid` library, up to 1000 personalizations a request.

When the batch carries a substitution template, one request carries the variant's content once
and each personalization fills its own links and name through `substitutions` (measured: about
40 times fewer bytes than one request per recipient). Without one, each message is its own
request. The library has no timeout by default; `client.timeout` is always set. SendGrid has no
idempotency key: a request that timed out may have been accepted, so its rows become `unknown`.

The end of the module is the Event Webhook's dialect: its signature check and SendGrid's
events in provider-neutral terms (digest.events), which digest.web.webhooks applies.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import re
import time
import urllib.error
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from digest.config import NewsletterConfig, SendGridConfig
from digest.errors import ConfigError
from digest.events import TrackingEvent, TrackingKind
from digest.message import (
    EDITION_HEADER,
    PROOF_HEADER,
    VARIANT_HEADER,
    Addressee,
    Content,
    HeaderError,
    TransactionalMessage,
    VariantMessage,
    display_name,
    list_unsubscribe,
    needs_smtputf8,
    plain_address,
    refuse_unsafe,
    wire_address,
)
from digest.providers.base import (
    BUILD_ERRORS,
    Batch,
    Checkpoint,
    Closing,
    Kind,
    Outcome,
    Outgoing,
    RateLimiter,
    unbuildable,
)
from digest.text import one_line, strip_controls

_FIELD_INDEX = re.compile(r"personalizations\.(\d+)")
# The body goes to the library already serialised (see _request); python_http_client passes a
# body through unchanged when the content type is not exactly "application/json".
_JSON = {"Content-Type": "application/json; charset=utf-8"}
_Part = tuple[list[Outgoing], list[dict[str, str]] | None]


# Its API takes RFC 5321 addresses (the spec's `format: email`, not `idn-email`) and its docs
# leave a non-ASCII mailbox name to SMTPUTF8; an internationalised domain goes in IDNA form.
NO_UTF8_MAILBOX = (
    "SendGrid does not accept a non-ASCII mailbox name (its API takes ASCII addresses); "
    "send to this reader through SMTP with a server that offers SMTPUTF8"
)


def _unsendable(m: Outgoing) -> str | None:
    try:
        return NO_UTF8_MAILBOX if needs_smtputf8(m.to.email) else None
    except HeaderError as e:
        return f"cannot build the message: {e}"


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    return str(value) if value is not None else None


def _errors(body: Any) -> tuple[str, list[int]]:
    """The provider's own words, and which personalizations it blamed (if it said)."""
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
        errors = data.get("errors") or []
        messages = [
            f"{e.get('message', '')}" + (f" ({e['field']})" if e.get("field") else "")
            for e in errors
        ]
        indices = sorted(
            {int(m.group(1)) for e in errors if (m := _FIELD_INDEX.search(str(e.get("field"))))}
        )
        return "; ".join(messages) or "no error message", indices
    except (ValueError, AttributeError, TypeError):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        return text[:300] or "no error message", []


# --- the v3 /mail/send body: SendGrid's dialect of a VariantMessage or TransactionalMessage --


def sendgrid_body(
    v: VariantMessage | TransactionalMessage,
    content: Content,
    personalizations: list[dict[str, Any]],
) -> dict[str, Any]:
    """A v3 /mail/send body; for an edition's variant `content` may hold substitution tags that
    each personalization fills in (see sendgrid_personalization)."""
    if isinstance(v, TransactionalMessage):
        body = _shared_body(v.newsletter, content, personalizations, v.purpose)
        body["custom_args"] = {"purpose": v.purpose}
        body["headers"] = {"Feedback-ID": v.feedback_id}
        return body
    body = _shared_body(v.newsletter, content, personalizations, v.newsletter.id)
    body["custom_args"] = {"edition": v.campaign}
    body["headers"] = {
        "List-Id": v.list_id,
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "Feedback-ID": refuse_unsafe("Feedback-ID", v.feedback_id),
        EDITION_HEADER: refuse_unsafe(EDITION_HEADER, v.campaign),
        VARIANT_HEADER: refuse_unsafe(VARIANT_HEADER, v.variant_key),
    }
    if v.proof:
        body["headers"][PROOF_HEADER] = "yes"
    return body


def sendgrid_personalization(
    v: VariantMessage | TransactionalMessage,
    to: Addressee,
    substitutions: dict[str, str] | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    """One recipient of a body: To, List-Unsubscribe, the ledger row the Event Webhook finds it
    by, and (for a template) the values of its substitution tags."""
    if isinstance(v, TransactionalMessage):
        # No delivery_id custom arg: the Event Webhook would look it up in the edition ledger.
        return {"to": [_recipient(to)]}
    p: dict[str, Any] = {
        "to": [_recipient(to)],
        "headers": {
            "List-Unsubscribe": list_unsubscribe(
                to.unsubscribe_url, v.config.site.unsubscribe_mailto
            ),
        },
        # The Event Webhook finds ledger rows by delivery_id: a proof must never match one.
        "custom_args": {"proof_id" if v.proof else "delivery_id": str(to.delivery_id)},
    }
    if subject is not None:
        p["subject"] = one_line(subject)
    if substitutions:
        p["substitutions"] = substitutions
    return p


def _shared_body(
    nl: NewsletterConfig,
    content: Content,
    personalizations: list[dict[str, Any]],
    category: str,
) -> dict[str, Any]:
    """The parts of a body every message shares (sender, subject, both parts)."""
    body: dict[str, Any] = {
        "personalizations": personalizations,
        "from": _address(nl.from_name, nl.from_email, "From"),
        "subject": one_line(content.subject),
        "content": [
            {"type": "text/plain", "value": content.text},
            {"type": "text/html", "value": content.html},
        ],
        "categories": [category[:255]],
    }
    if nl.reply_to:
        body["reply_to"] = {"email": plain_address("Reply-To", nl.reply_to)}
    return body


def _address(name: str | None, address: str, header: str) -> dict[str, str]:
    """{"email", "name"} as SendGrid takes an address; the same rule as for a header (an
    internationalised domain in its IDNA form: the API takes RFC 5321 ASCII addresses)."""
    out = {"email": wire_address(plain_address(header, address))}
    shown = display_name(name)
    if shown:
        out["name"] = shown
    return out


def _recipient(to: Addressee) -> dict[str, str]:
    return _address(to.name, to.email, "To")


class SendGridProvider(Closing):
    name = "sendgrid"

    def __init__(self, config: SendGridConfig) -> None:
        key = config.api_key
        if not key:
            raise ConfigError(
                f"SendGrid needs an API key: set the environment variable {config.api_key_env}"
            )
        self.config = config
        self.batch_size = config.batch_size
        self.in_flight = config.in_flight
        self.client = SendGridAPIClient(key, host=config.host)
        self.client.client.timeout = config.timeout
        self.limiter = RateLimiter(config.rate)

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        if batch.template is not None and len(batch.substitutions) == len(batch.messages):
            groups = [
                (batch.messages[i : i + self.batch_size], i)
                for i in range(0, len(batch.messages), self.batch_size)
            ]
            outcomes: list[Outcome] = []
            for messages, start in groups:
                subs = batch.substitutions[start : start + len(messages)]
                outcomes += self._request(batch, messages, subs, checkpoint)
            return outcomes
        outcomes = []
        for m in batch.messages:
            outcomes += self._request(batch, [m], None, checkpoint)
        return outcomes

    def _body(
        self, batch: Batch, messages: list[Outgoing], subs: list[dict[str, str]] | None
    ) -> tuple[dict[str, Any] | None, _Part, list[Outcome]]:
        """The request body for the messages that can be built, those messages (and their
        substitutions), and a `failed` outcome for each recipient whose personalization
        cannot be built: that one alone."""
        v = batch.variant
        ok: list[Outgoing] = []
        ok_subs: list[dict[str, str]] | None = None if subs is None else []
        ps: list[dict[str, Any]] = []
        failed: list[Outcome] = []
        for i, m in enumerate(messages):
            why = _unsendable(m)  # an address SendGrid cannot take: that reader fails alone
            if why:
                failed.append(Outcome(m.delivery_id, Kind.FAILED, error=why))
                continue
            try:
                ps.append(sendgrid_personalization(v, m.to, None if subs is None else subs[i]))
            except BUILD_ERRORS as e:
                failed.append(unbuildable(m.delivery_id, e))
                continue
            ok.append(m)
            if ok_subs is not None and subs is not None:
                ok_subs.append(subs[i])
        body: dict[str, Any] | None = None
        if ok:
            try:
                content = ok[0].content if subs is None else batch.template
                assert content is not None
                body = sendgrid_body(v, content, ps)
            except BUILD_ERRORS as e:
                failed += [unbuildable(m.delivery_id, e) for m in ok]
                ok, ok_subs = [], None
        return body, (ok, ok_subs), failed

    def _request(
        self,
        batch: Batch,
        messages: list[Outgoing],
        subs: list[dict[str, str]] | None,
        checkpoint: Checkpoint,
    ) -> list[Outcome]:
        body, (messages, subs), failed = self._body(batch, messages, subs)
        if failed:
            checkpoint([], failed)  # recorded at once, before the request
        if body is None:
            return failed
        ids = [m.delivery_id for m in messages]
        # Serialised here, not in the library, so the rows are marked handed over only once
        # the bytes are ready to go: a crash while a 1000-recipient body is being built or
        # encoded leaves the rows claimable, not `unknown`.
        data = json.dumps(body)
        self.limiter.take(len(messages))
        checkpoint(ids, [])
        try:
            response = self.client.client.mail.send.post(request_body=data, request_headers=_JSON)
        except HTTPError as e:
            return failed + self._refused(batch, messages, subs, checkpoint, e)
        except TimeoutError:
            error = f"no answer from {self.config.host} within {self.config.timeout:g}s"
            return failed + [Outcome(i, Kind.UNKNOWN, error=error) for i in ids]
        except urllib.error.URLError as e:
            error = f"cannot reach {self.config.host}: {e.reason}"
            return failed + [Outcome(i, Kind.RETRY, error=error) for i in ids]
        except OSError as e:
            # A connection reset after the request went out: it may have been accepted.
            error = f"connection to {self.config.host} lost: {e}"
            return failed + [Outcome(i, Kind.UNKNOWN, error=error) for i in ids]
        message_id = _header(response.headers, "X-Message-Id") or f"sendgrid-{time.time_ns()}"
        return failed + [Outcome(i, Kind.ACCEPTED, provider_id=message_id) for i in ids]

    def _refused(
        self,
        batch: Batch,
        messages: list[Outgoing],
        subs: list[dict[str, str]] | None,
        checkpoint: Checkpoint,
        e: HTTPError,
    ) -> list[Outcome]:
        ids = [m.delivery_id for m in messages]
        status = int(e.status_code)
        text, blamed = _errors(e.body)
        error = f"SendGrid {status}: {text}"
        if status in (401, 403):
            return [Outcome(i, Kind.AUTH, error=error) for i in ids]
        if status == 429 or status >= 500:
            retry_after = None
            reset = _header(e.headers, "X-RateLimit-Reset")
            after = _header(e.headers, "Retry-After")
            try:
                if after is not None:
                    retry_after = float(after)
                elif reset is not None:
                    retry_after = max(0.0, float(reset) - time.time())
            except ValueError:
                pass
            return [Outcome(i, Kind.RETRY, error=error, retry_after=retry_after) for i in ids]
        if status == 413 and len(messages) > 1:
            half = len(messages) // 2
            parts = [(messages[:half], 0), (messages[half:], half)]
            out: list[Outcome] = []
            for part, start in parts:
                part_subs = subs[start : start + len(part)] if subs is not None else None
                if part_subs is None:
                    for m in part:
                        out += self._request(batch, [m], None, checkpoint)
                else:
                    out += self._request(batch, part, part_subs, checkpoint)
            return out
        bad = {ids[i] for i in blamed if i < len(ids)}
        if bad:
            # A 400 naming personalizations concerns those recipients: they are deferred (tried
            # again later, failed with this answer after the maximum age); the rest of the
            # request never reached a verdict and goes again at once.
            others = "refused together with a recipient SendGrid named; sent again"
            return [
                Outcome(i, Kind.DEFER, error=error)
                if i in bad
                else Outcome(i, Kind.RETRY, error=others, retry_after=0.0)
                for i in ids
            ]
        return [Outcome(i, Kind.FAILED, error=error) for i in ids]

    def close(self) -> None:
        pass


# --- the Event Webhook: SendGrid's words for what happened later ------------------------------
#
# As django-anymail's webhooks/sendgrid.py: the signature check and the mapping of SendGrid's
# events to provider-neutral ones (digest.events applies those: ledger, suppressions,
# unsubscribes, clicks). `deferred`: the receiving server asked SendGrid to try later, so
# SendGrid has the message (it retries for up to 72 hours).

CONFIRMING = ("processed", "delivered", "deferred")
FAILING = ("bounce", "dropped")
UNSUBSCRIBING = ("unsubscribe", "group_unsubscribe")
_KINDS: dict[str, TrackingKind] = {
    **{k: TrackingKind.ACCEPTED for k in CONFIRMING},
    **{k: TrackingKind.FAILED for k in FAILING},
    **{k: TrackingKind.UNSUBSCRIBED for k in UNSUBSCRIBING},
    "spamreport": TrackingKind.COMPLAINED,
    "click": TrackingKind.CLICKED,
    "open": TrackingKind.OPENED,
}


class _Headers(Protocol):
    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    reason: str


class WebhookVerifier:
    """SendGrid's signed Event Webhook: ECDSA (P-256, SHA-256) over timestamp + raw body, checked
    with the sendgrid library's EventWebhook helper, and a timestamp no older than max_age."""

    def __init__(self, public_key: str | None, max_age_seconds: int, allow_unsigned: bool) -> None:
        self.max_age = max_age_seconds
        self.allow_unsigned = allow_unsigned
        self._helper: EventWebhook | None = None
        if public_key:
            try:
                self._helper = EventWebhook(public_key.strip())
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    "the SendGrid webhook verification key is not a base64 EC public key "
                    f"(copy it from Mail Settings > Event Webhook): {e}"
                ) from None

    def check(self, body: bytes, headers: _Headers, now: float) -> SignatureCheck:
        if self._helper is None:
            if self.allow_unsigned:
                return SignatureCheck(True, "unsigned requests allowed by configuration")
            return SignatureCheck(False, "no verification key configured")
        signature = headers.get(EventWebhookHeader.SIGNATURE)
        timestamp = headers.get(EventWebhookHeader.TIMESTAMP)
        if not signature or not timestamp:
            return SignatureCheck(False, "unsigned")
        try:
            age = now - int(timestamp)
        except ValueError:
            return SignatureCheck(False, "bad timestamp")
        if abs(age) > self.max_age:
            return SignatureCheck(False, "stale timestamp")
        try:
            payload = body.decode("utf-8")
            valid = bool(self._helper.verify_signature(payload, signature, timestamp))
        except (UnicodeDecodeError, binascii.Error, ValueError):
            valid = False
        return SignatureCheck(valid, "valid" if valid else "invalid signature")


def tracking_events(events: list[dict[str, Any]], received: datetime) -> list[TrackingEvent]:
    """A batch of SendGrid events in provider-neutral terms."""
    return [tracking_event(e, received) for e in events]


def tracking_event(event: dict[str, Any], received: datetime) -> TrackingEvent:
    # Event fields are stored and looked up: nothing that is not text (PostgreSQL refuses NUL).
    word = strip_controls(str(event.get("event") or ""))
    kind = _KINDS.get(word, TrackingKind.OTHER)
    reason = ""
    if kind is TrackingKind.FAILED:
        reason = strip_controls(str(event.get("reason") or event.get("type") or word))
    raw_id = str(event.get("delivery_id") or "")
    return TrackingEvent(
        provider="SendGrid",
        kind=kind,
        event=word,
        event_id=strip_controls(str(event.get("sg_event_id") or ""))[:100],
        email=str(event.get("email") or ""),
        delivery_id=int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None,
        at=_event_time(event, received),
        occurred=_occurred(event),
        reason=reason,
        suppression=_suppression_reason(word, event, reason)
        if kind is TrackingKind.FAILED
        else None,
        provider_message_id=_message_id(event),
        url=str(event.get("url") or "")[:4000],
        user_agent=str(event.get("useragent") or "")[:1000],
    )


def _event_time(event: dict[str, Any], received: datetime) -> datetime:
    """The event's own time (unix seconds), or when it arrived if it has none that makes
    sense (at most a year old, not in the future)."""
    raw = event.get("timestamp")
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            when = datetime.fromtimestamp(raw, UTC)
            if received - timedelta(days=366) <= when <= received + timedelta(minutes=5):
                return when
    return received


def _occurred(event: dict[str, Any]) -> datetime | None:
    """The event's own time for a click or an open, None when it has none."""
    raw = event.get("timestamp")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 2**33:
        return None
    return datetime.fromtimestamp(raw, UTC)


def _message_id(event: dict[str, Any]) -> str | None:
    # sg_message_id is the X-Message-Id of the send request plus a per-recipient suffix.
    raw = strip_controls(str(event.get("sg_message_id") or ""))
    return raw.partition(".")[0][:255] or None


def _suppression_reason(kind: str, event: dict[str, Any], reason: str) -> str | None:
    """Why to suppress the address, or None. A `blocked` bounce is the receiving server
    refusing the sender (reputation, rate), and a drop for spam content is about the
    message: neither says the address is bad."""
    if kind == "bounce":
        return None if str(event.get("type") or "") == "blocked" else "bounced"
    lowered = reason.lower()
    if "spam content" in lowered:
        return None
    if "spam reporting" in lowered:
        return "complained"
    return "bounced"
