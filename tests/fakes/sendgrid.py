"""A SendGrid v3 /mail/send stand-in on 127.0.0.1 for tests and benchmarks.

It checks the Authorization header, validates every body against SendGrid's published OpenAPI
description (tests/data/sendgrid/tsg_mail_v3.json, a copy of ../shared/sendgrid/ kept in the
repository so a fresh clone tests without it; MIT, see LICENSE beside it; with the documented
`custom_args` defect patched) plus the limits the schema does not express, records what it accepted, and answers what
a test asks for: 202, 400, 401, 413, 429 with X-RateLimit-Reset, 500, 503, or a hang past the
client's timeout. It also posts signed Event Webhook events (processed, delivered, deferred,
bounce, dropped) for what it accepted to a web app, as SendGrid does.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

SPEC = Path(__file__).resolve().parents[1] / "data" / "sendgrid" / "tsg_mail_v3.json"
API_KEY = "SG.test-key"
MAX_BYTES = 30 * 1024 * 1024


@cache
def validator() -> jsonschema.protocols.Validator:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    body = spec["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]
    schema = copy.deepcopy(body["schema"])
    # Defect in the published spec (see its README): custom_args is an object of strings.
    schema["properties"]["custom_args"] = {
        "type": "object",
        "additionalProperties": {"type": "string"},
    }
    schema["components"] = spec["components"]  # so "#/components/..." refs resolve
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# Keywords the personalizations items schema uses. Its verdict on a personalization then depends
# only on keys, value types, empty-or-not strings and sizes (`format` is not asserted by
# jsonschema by default), so personalizations of the same shape share one validation.
_SHAPE_SAFE = {
    "type",
    "properties",
    "items",
    "required",
    "minLength",
    "maxItems",
    "maxProperties",
    "additionalProperties",
    "format",
    "title",
    "description",
    "$ref",
}


def _keywords(node: Any, spec: dict[str, Any], seen: set[str]) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "properties":
                for sub in v.values():
                    found |= _keywords(sub, spec, seen)
                continue
            found.add(k)
            if k == "minLength" and v > 1:
                found.add("minLength>1")
            if k == "$ref" and v not in seen:
                seen.add(v)
                target: Any = spec
                for part in v.lstrip("#/").split("/"):
                    target = target[part]
                found |= _keywords(target, spec, seen)
            elif isinstance(v, dict | list):
                found |= _keywords(v, spec, seen)
    elif isinstance(node, list):
        for v in node:
            found |= _keywords(v, spec, seen)
    return found


@cache
def _items_are_shape_safe() -> bool:
    spec = validator().schema
    items = spec["properties"]["personalizations"]["items"]
    return _keywords(items, spec, set()) <= _SHAPE_SAFE


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if isinstance(value, str):
        return "x" if value else ""
    return value


def schema_errors(body: Any) -> list[dict[str, str]]:
    """Errors of `body` against the spec. Each distinct personalization shape is validated
    once per request (a 1000-recipient body costs ~70 ms in jsonschema otherwise)."""
    ps = body.get("personalizations") if isinstance(body, dict) else None
    first: list[int] = []
    probe = body
    if isinstance(ps, list) and len(ps) <= 1000 and _items_are_shape_safe():
        shapes: dict[str, int] = {}
        distinct = []
        for i, p in enumerate(ps):
            shape = _shape(p)
            key = json.dumps(shape, sort_keys=True)
            if key not in shapes:
                shapes[key] = len(distinct)
                distinct.append(shape)
                first.append(i)
        probe = {**body, "personalizations": distinct}
    errors = []
    for e in validator().iter_errors(probe):
        path = list(e.absolute_path)
        if first and len(path) > 1 and path[0] == "personalizations":
            path[1] = first[int(path[1])]
        errors.append({"message": e.message, "field": ".".join(str(p) for p in path)})
    return errors


def _json_size(value: Any, limit: int) -> int:
    """len(json.dumps(value).encode()), or a bound on it that is at most `limit` (the bound is
    cheap and decides most bodies: escaped, a character takes at most 12 bytes, two
    \\uXXXX for one outside the BMP; each member adds its quotes, colon, comma and spaces)."""
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        bound = 2 + sum(12 * (len(k) + len(v)) + 8 for k, v in value.items())
        if bound <= limit:
            return bound
    return len(json.dumps(value).encode())


def limit_errors(body: dict[str, Any], now: float) -> list[dict[str, str]]:
    """SendGrid's documented limits that the schema leaves out."""
    errors: list[dict[str, str]] = []
    ps = body.get("personalizations", [])
    seen: set[str] = set()
    total = 0
    for i, p in enumerate(ps):
        for kind in ("to", "cc", "bcc"):
            for j, r in enumerate(p.get(kind, [])):
                total += 1
                email = r["email"].lower()
                if not email.isascii():
                    # The spec's `format: email` is an RFC 5321 (ASCII) address; SendGrid
                    # answers 400 to a non-ASCII one.
                    errors.append(
                        {
                            "message": "Does not contain a valid address.",
                            "field": f"personalizations.{i}.{kind}.{j}.email",
                        }
                    )
                if email in seen:
                    errors.append(
                        {
                            "message": "Each email address in the personalization block "
                            "should be unique",
                            "field": f"personalizations.{i}.{kind}",
                        }
                    )
                seen.add(email)
        subs = p.get("substitutions", {})
        if _json_size(subs, 10_000) > 10_000:
            errors.append(
                {
                    "message": "substitutions may not exceed 10000 bytes",
                    "field": f"personalizations.{i}.substitutions",
                }
            )
        args = p.get("custom_args", {})
        if not all(isinstance(v, str) for v in args.values()):
            errors.append(
                {
                    "message": "custom_args values must be strings",
                    "field": f"personalizations.{i}.custom_args",
                }
            )
        send_at = p.get("send_at", body.get("send_at"))
        if send_at is not None and send_at > now + 72 * 3600:
            errors.append({"message": "send_at is more than 72 hours ahead", "field": "send_at"})
    if total > 1000:
        errors.append(
            {
                "message": "too many recipients (at most 1000 per request)",
                "field": "personalizations",
            }
        )
    args = [body.get("custom_args", {})] + [p.get("custom_args", {}) for p in ps]
    args_limit = 10_000 * max(1, len(ps))
    # The bounds decide when they fit; otherwise the exact sizes do.
    if sum(_json_size(a, args_limit) for a in args) > args_limit and (
        sum(len(json.dumps(a).encode()) for a in args) > args_limit
    ):
        errors.append({"message": "custom_args exceed 10000 bytes", "field": "custom_args"})
    cats = body.get("categories", [])
    if len(cats) > 10 or any(len(c) > 255 for c in cats):
        errors.append({"message": "at most 10 categories of 255 characters", "field": "categories"})
    return errors


@dataclass(frozen=True)
class Delivered:
    """One recipient's message as SendGrid would send it (substitutions applied)."""

    email: str
    name: str | None
    subject: str
    text: str
    html: str
    headers: dict[str, str]
    custom_args: dict[str, str]
    message_id: str


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any] | None = None
    hang: float = 0.0


def error_body(message: str, field: str | None = None) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


class SendGridStandIn:
    """Run with `with SendGridStandIn() as sg:`; point the library at `sg.url`."""

    def __init__(self, api_key: str = API_KEY, validate: bool = True) -> None:
        self.api_key = api_key
        self.validate = validate
        self.accepted: list[tuple[str, dict[str, Any]]] = []  # (X-Message-Id, body)
        self.requests = 0
        self.rejected: list[tuple[int, Any]] = []
        self.arrived: Counter[str] = Counter()  # recipients of every request read whole
        # Scripted answers, used first; then `fail_rate` random 429/500; then 202.
        self.script: list[Answer] = []
        self.fail_rate = 0.0
        self.random = random.Random(5)
        self.on_accept: Callable[[int], None] | None = None  # called with the accepted count
        # Seconds each answer takes, drawn evenly from (low, high): a distant API's round trip.
        self.latency: tuple[float, float] = (0.0, 0.0)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._signing_key: Any = None  # the Event Webhook's key, made when first needed
        self.webhook_clock: Callable[[], float] = time.time  # signing time of posted events
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> SendGridStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, status: int, **kw: Any) -> None:
        """Queue the answer to the next request."""
        headers: dict[str, str] = {}
        if status == 429:
            headers["X-RateLimit-Limit"] = "600"
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(int(time.time()) + int(kw.pop("reset_in", 1)))
        body = kw.pop("body", None)
        if body is None and status >= 400:
            body = error_body(kw.pop("message", f"stand-in answer {status}"), kw.pop("field", None))
        self.script.append(Answer(status, headers, body, hang=kw.pop("hang", 0.0)))

    def delivered(self) -> Iterator[Delivered]:
        for message_id, body in list(self.accepted):
            for p in body["personalizations"]:
                subs = p.get("substitutions", {})

                def fill(value: str, subs: dict[str, str] = subs) -> str:
                    for tag, val in subs.items():
                        value = value.replace(tag, val)
                    return value

                content = {c["type"]: c["value"] for c in body["content"]}
                for r in p["to"]:
                    yield Delivered(
                        email=r["email"],
                        name=r.get("name"),
                        subject=fill(p.get("subject", body.get("subject", ""))),
                        text=fill(content.get("text/plain", "")),
                        html=fill(content.get("text/html", "")),
                        headers={**body.get("headers", {}), **p.get("headers", {})},
                        custom_args={**body.get("custom_args", {}), **p.get("custom_args", {})},
                        message_id=message_id,
                    )

    # --- the Event Webhook ---------------------------------------------------------------

    @property
    def webhook_public_key(self) -> str:
        """The verification key as SendGrid shows it (Mail Settings > Event Webhook): base64
        DER SubjectPublicKeyInfo of its P-256 key."""
        from cryptography.hazmat.primitives import serialization

        der = (
            self._webhook_key()
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return base64.b64encode(der).decode()

    def _webhook_key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric import ec

        with self._lock:
            if self._signing_key is None:
                self._signing_key = ec.generate_private_key(ec.SECP256R1())
            return self._signing_key

    def events(
        self, kind: str, *, emails: set[str] | None = None, at: float | None = None, **extra: Any
    ) -> list[dict[str, Any]]:
        """One event of `kind` per message accepted so far (or per one to `emails`), shaped as
        SendGrid posts them: custom_args at the top level, sg_message_id the request's
        X-Message-Id plus a per-recipient suffix."""
        out = []
        for n, d in enumerate(self.delivered()):
            if emails is not None and d.email not in emails:
                continue
            out.append(
                {
                    "email": d.email,
                    "timestamp": int(at if at is not None else time.time()),
                    "event": kind,
                    "sg_event_id": f"{kind}-{d.message_id}-{n}",
                    "sg_message_id": f"{d.message_id}.filter0001-{n}",
                    **d.custom_args,
                    **extra,
                }
            )
        return out

    def post_events(self, url: str, events: list[dict[str, Any]], at: float | None = None) -> int:
        """POST events to a webhook URL as SendGrid does: a JSON array, signed with ECDSA
        (P-256, SHA-256) over timestamp + body, the signature base64 DER. Returns the status."""
        import urllib.error
        import urllib.request

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        body = json.dumps(events).encode()
        timestamp = str(int(at if at is not None else self.webhook_clock()))
        signature = self._webhook_key().sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "SendGrid Event API",
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def counts(self) -> Counter[str]:
        """Messages received per recipient address."""
        c: Counter[str] = Counter()
        for _, body in list(self.accepted):
            for p in body["personalizations"]:
                for r in p["to"]:
                    c[r["email"]] += 1
        return c

    def _next_answer(self, body: dict[str, Any]) -> Answer:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            if self.fail_rate and self.random.random() < self.fail_rate:
                status = self.random.choice([429, 500])
                headers = {"X-RateLimit-Reset": str(int(time.time()))} if status == 429 else {}
                return Answer(status, headers, error_body(f"stand-in random {status}"))
        return Answer(202, {})

    def _handle(self, headers: Any, raw: bytes) -> tuple[Answer, str | None]:
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return Answer(401, {}, error_body("The provided authorization grant is invalid")), None
        if len(raw) > MAX_BYTES:
            return Answer(413, {}, error_body("request entity too large")), None
        try:
            body = json.loads(raw)
        except ValueError:
            return Answer(400, {}, error_body("Bad Request: body is not JSON")), None
        with self._lock:  # every request that arrived whole, whatever the answer
            for p in body.get("personalizations", []) if isinstance(body, dict) else []:
                for r in p.get("to", []) if isinstance(p, dict) else []:
                    if isinstance(r, dict):
                        self.arrived[str(r.get("email"))] += 1
        if self.validate:
            problems = schema_errors(body) + limit_errors(body, time.time())
            if problems:
                return Answer(400, {}, {"errors": problems}), None
        answer = self._next_answer(body)
        if answer.status != 202:
            return answer, None
        message_id = f"sg-{next(self._ids):06d}"
        with self._lock:
            self.accepted.append((message_id, body))
            count = len(self.accepted)
        if self.on_accept is not None:
            self.on_accept(count)
        return Answer(202, {"X-Message-Id": message_id}, None, answer.hang), message_id

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with stand_in._lock:
                    stand_in.requests += 1
                if self.path != "/v3/mail/send":
                    answer = Answer(404, {}, error_body(f"no route {self.path}"))
                else:
                    answer, _ = stand_in._handle(self.headers, raw)
                if answer.status >= 400:
                    with stand_in._lock:
                        stand_in.rejected.append((answer.status, answer.body))
                if answer.hang:
                    time.sleep(answer.hang)
                low, high = stand_in.latency
                if high > 0:
                    time.sleep(stand_in.random.uniform(low, high))
                payload = json.dumps(answer.body).encode() if answer.body is not None else b""
                try:
                    self.send_response(answer.status)
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout test)

        return Handler
