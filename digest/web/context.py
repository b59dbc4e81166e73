"""What every page of the web app shares: its settings, the per-client request limit, signed
form tokens, the page helper, and the prologue of token links (rate limit, then the token)."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import jinja2
from flask import Response, current_app, request
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import transaction
from digest.providers.sendgrid import WebhookVerifier
from subscribers.tokens import InvalidToken, TokenData, read_token

FORM_MAX_AGE = timedelta(hours=12)
MAX_BODY_BYTES = 16 * 1024 * 1024  # a SendGrid batch holds up to a few thousand events
MAX_FORM_FIELD_BYTES = 64 * 1024
MAX_FORM_PARTS = 200
_TOKEN_PATH = re.compile(r"(/(?:[upr]|confirm)/)[^\s?#/]+")

CSP_PAGES = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# The archive is the email as sent: inline styles and story images from the newsroom's CDN.
CSP_ARCHIVE = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def redact(text: str) -> str:
    """Remove the token from /u/, /p/ and /confirm/ links: it identifies a subscriber."""
    return _TOKEN_PATH.sub(r"\1…", text)


# --- the request limit per client ------------------------------------------------------------


@dataclass
class RequestLimiter:
    """A token bucket per client address: `per_minute` sustained, bursts of `burst` (the
    provider's send-rate limiter is digest.providers.base.RateLimiter).

    In-process only: each server process counts on its own, so production should also limit
    at the reverse proxy.
    """

    per_minute: float
    burst: float = 10.0
    max_clients: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, client: str, now: float) -> float | None:
        """Take one token for `client`; None when allowed, else seconds until the next one."""
        if self.per_minute <= 0:
            return None
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / rate
            if len(self._buckets) >= self.max_clients and client not in self._buckets:
                self._forget_idle(now, rate)
            self._buckets[client] = (tokens - 1.0, now)
            return None

    def _forget_idle(self, now: float, rate: float) -> None:
        # A bucket that has refilled completely carries no information.
        full = [
            k for k, (t, last) in self._buckets.items() if t + (now - last) * rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()


# --- form tokens (CSRF) ----------------------------------------------------------------------


def _bind(link_token: str) -> str:
    return hashlib.sha256(link_token.encode("utf-8")).hexdigest()[:24]


def make_form_token(secret: str, link_token: str, issued: float) -> str:
    """A signed token for the preferences form, valid for this link only, for FORM_MAX_AGE."""
    token = URLSafeSerializer(secret, salt="digest.web.form").dumps([_bind(link_token), issued])
    assert isinstance(token, str)
    return token


def check_form_token(secret: str, link_token: str, form_token: str, now: float) -> bool:
    try:
        bound, issued = URLSafeSerializer(secret, salt="digest.web.form").loads(form_token)
    except (BadSignature, ValueError, TypeError):
        return False
    if bound != _bind(link_token) or not isinstance(issued, int | float):
        return False
    age = now - issued
    return -300 <= age <= FORM_MAX_AGE.total_seconds()


def _same_origin(config: Config) -> bool:
    """Browsers send Origin on form posts; a foreign one means another site made the post."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    ours = {request.host_url.rstrip("/"), _origin(config.site.base_url)}
    return origin.rstrip("/") in ours


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# --- what the pages share ----------------------------------------------------------------------


@dataclass
class WebContext:
    """The app's settings and shared state (app.extensions["digest"])."""

    config: Config
    sessions: sessionmaker[Session]
    clock: Clock
    secret: str
    limiter: RequestLimiter
    verifier: WebhookVerifier
    pages: jinja2.Environment
    write_lock: AbstractContextManager[Any]
    archive_cache: dict[tuple[int, str], str] = field(default_factory=dict)

    @contextmanager
    def unit(self) -> Iterator[Session]:
        """One write transaction. SQLite allows one writer: threads of this server take turns
        (digest.db.writer_lock) instead of failing with 'database is locked' halfway through a
        read-then-write."""
        with self.write_lock, transaction(self.sessions) as session:
            yield session

    def page(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("masthead", "Newsletter")
        html = self.pages.get_template(template).render(site=self.config.site, **context)
        return Response(html, status=status, mimetype="text/html")

    def message(self, status: int, heading: str, text: str, **context: Any) -> Response:
        return self.page("web/message.html", status, heading=heading, text=text, **context)

    def invalid_link(self) -> Response:
        return self.message(
            404,
            "This link doesn’t work",
            "It may be incomplete or damaged. Please use the link from your latest email.",
        )

    def now(self) -> float:
        return self.clock().timestamp()

    def read(self, token: str, purpose: str) -> tuple[TokenData, NewsletterConfig] | None:
        try:
            data = read_token(self.secret, token, purpose)
        except InvalidToken:
            return None
        nl = self.config.newsletters.get(data.newsletter)
        return None if nl is None else (data, nl)

    def limited(self) -> Response | None:
        wait = self.limiter.retry_after(request.remote_addr or "-", self.now())
        if wait is None:
            return None
        response = self.message(429, "Too many requests", "Please wait a moment and try again.")
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response

    def form_refused(self, binding: str, nl: NewsletterConfig, text: str) -> Response | None:
        """The CSRF check of a form post: same origin, carrying the signed form token bound to
        `binding` (the page's link token); a 403 page saying `text` when it fails."""
        if _same_origin(self.config) and check_form_token(
            self.secret, binding, request.form.get("csrf", ""), self.now()
        ):
            return None
        return self.message(403, "Please try again", text, masthead=nl.title)

    def form_token(self, binding: str) -> str:
        return make_form_token(self.secret, binding, int(self.now()))


def web() -> WebContext:
    found: WebContext = current_app.extensions["digest"]
    return found


TokenView = Callable[[WebContext, str, TokenData, NewsletterConfig], Response]


def token_link(purpose: str, *, spare_posts: bool = False) -> Callable[[TokenView], Any]:
    """The prologue every token link shares: the per-client limit, then the token, answering
    an unusable one with the same 404 as every other. With `spare_posts`, a POST carrying a
    genuine token is never limited (one-click unsubscribes: mailbox providers send them from
    a few addresses of their own and may not retry, and each is one idempotent update)."""

    def wrap(view: TokenView) -> Callable[[str], Response]:
        @functools.wraps(view)
        def route(token: str) -> Response:
            w = web()
            found = w.read(token, purpose)
            spared = spare_posts and found is not None and request.method == "POST"
            refused = None if spared else w.limited()
            if refused is not None:
                return refused
            if found is None:
                return w.invalid_link()
            return view(w, token, *found)

        return route

    return wrap
