"""The subscriber-facing web app: one-click unsubscribe, preferences, double opt-in
confirmation, the web archive and the SendGrid Event Webhook (`digest serve`, or any WSGI
server through `wsgi_app()`).

Security choices, each for a reason a subscriber or a deliverability engineer would give:
- Token links (/u/, /p/, /confirm/) answer an invalid, tampered, foreign, orphaned or expired
  token with the same 404 page, so nobody can learn who is subscribed by probing. They never
  set a cookie, are never cached (Cache-Control: no-store) and send no Referer to other sites
  (Referrer-Policy same-origin: "no-referrer" would make browsers send `Origin: null` on our
  own form posts).
- A GET or HEAD never changes anything (mail scanners follow links, some with HEAD). The
  unsubscribe page's button posts
  the RFC 8058 body `List-Unsubscribe=One-Click`, exactly what mail clients send: the signed
  token in the URL is the whole authority, so a CSRF token would add nothing there.
- The preferences and confirmation forms carry a signed form token bound to the page's token
  and its issue time (no cookie, no server state), and a cross-site Origin is refused: a
  double opt-in is confirmed by a person pressing the button, not by a bot posting the link.
- Token endpoints are rate limited per client address (a token bucket in this process), except
  a POST with a genuine unsubscribe token, which must never be lost.
- Paths of token links are redacted from the access log and error log.
- The public sign-up form (/subscribe/<newsletter>) is always double opt-in and gives the same
  answer, in the same time, for every valid address: it only queues the sign-up, and the
  confirmation email leaves from a background sender (digest.confirmations), so it cannot be
  used to find out who is subscribed or whether the provider is up.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import jinja2
from flask import Flask, Response, request
from itsdangerous import BadSignature, URLSafeSerializer
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import Headers, MultiDict
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from digest import ledger
from digest.clicks import register_redirect, sendgrid_event
from digest.clock import Clock, utcnow
from digest.config import Config, NewsletterConfig, load_config
from digest.confirmations import ConfirmationSender, queue_sign_up
from digest.db import ensure_schema, is_sqlite, make_engine, session_factory, transaction
from digest.editions import Edition, get_edition
from digest.errors import ConfigError, InputError, NotFound
from digest.ledger import Delivery
from digest.limits import MAX_NAME
from digest.render import Renderer, long_date, template_environment
from digest.text import one_line, strip_controls, text_problem
from digest.web_models import WebhookEvent
from subscribers.audience import sections_for
from subscribers.models import Subscriber, normalise_email
from subscribers.service import (
    check_email,
    confirm,
    confirmation_expired,
    set_preferences,
    suppress,
    unsubscribe,
)
from subscribers.tokens import InvalidToken, TokenData, make_token, read_token, site_secret

log = logging.getLogger(__name__)

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
FORM_MAX_AGE = timedelta(hours=12)
MAX_BODY_BYTES = 16 * 1024 * 1024  # a SendGrid batch holds up to a few thousand events
MAX_FORM_FIELD_BYTES = 64 * 1024
MAX_FORM_PARTS = 200
PUBLIC_STATUSES = ("frozen", "sent")
_TOKEN_PATH = re.compile(r"(/(?:[upr]|confirm)/)[^\s?#/]+")

_CSP_PAGES = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# The archive is the email as sent: inline styles and story images from the newsroom's CDN.
_CSP_ARCHIVE = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def redact(text: str) -> str:
    """Remove the token from /u/, /p/ and /confirm/ links: it identifies a subscriber."""
    return _TOKEN_PATH.sub(r"\1…", text)


# --- rate limiting ---------------------------------------------------------------------------


@dataclass
class RateLimiter:
    """A token bucket per client address: `per_minute` sustained, bursts of `burst`.

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


# --- the SendGrid Event Webhook ------------------------------------------------------------


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

    def check(self, body: bytes, headers: Headers, now: float) -> SignatureCheck:
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


# --- the app -----------------------------------------------------------------------------------


class _App(Flask):
    def log_exception(self, exc_info: Any) -> None:
        self.logger.error(
            "Exception on %s [%s]", redact(request.path), request.method, exc_info=exc_info
        )


@dataclass
class _Web:
    config: Config
    sessions: sessionmaker[Session]
    clock: Clock
    secret: str
    limiter: RateLimiter
    verifier: WebhookVerifier
    pages: jinja2.Environment
    write_lock: AbstractContextManager[Any]
    archive_cache: dict[tuple[int, str], str] = field(default_factory=dict)

    @contextmanager
    def unit(self) -> Iterator[Session]:
        """One write transaction. SQLite allows one writer: threads of this server take turns
        instead of failing with 'database is locked' halfway through a read-then-write."""
        with self.write_lock, transaction(self.sessions) as session:
            yield session

    def page(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("masthead", "Newsletter")
        html = self.pages.get_template(template).render(site=self.config.site, **context)
        return Response(html, status=status, mimetype="text/html")

    def invalid_link(self) -> Response:
        return self.page(
            "web/message.html",
            404,
            heading="This link doesn’t work",
            text="It may be incomplete or damaged. Please use the link from your latest email.",
        )

    def read(self, token: str, purpose: str) -> tuple[TokenData, NewsletterConfig] | None:
        try:
            data = read_token(self.secret, token, purpose)
        except InvalidToken:
            return None
        nl = self.config.newsletters.get(data.newsletter)
        return None if nl is None else (data, nl)

    def limited(self) -> Response | None:
        wait = self.limiter.retry_after(request.remote_addr or "-", self.clock().timestamp())
        if wait is None:
            return None
        response = self.page(
            "web/message.html",
            429,
            heading="Too many requests",
            text="Please wait a moment and try again.",
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response


def create_app(
    config: Config, sessions: sessionmaker[Session], *, clock: Clock, background: bool = False
) -> Flask:
    """The WSGI app. Fails at once (ConfigError) when the link secret or webhook key is unusable.
    With `background`, each process serving it also runs the confirmation sender (sign-ups
    from the form are emailed from there); app.extensions["digest.sender"] is that sender."""
    engine = sessions.kw.get("bind")
    web = _Web(
        config=config,
        sessions=sessions,
        clock=clock,
        secret=site_secret(config),
        limiter=RateLimiter(config.web.token_requests_per_minute),
        verifier=WebhookVerifier(
            config.web.sendgrid_webhook_public_key,
            config.web.sendgrid_webhook_max_age_seconds,
            config.web.sendgrid_webhook_allow_unsigned,
        ),
        pages=template_environment(config.templates_dir),
        write_lock=threading.Lock()
        if isinstance(engine, Engine) and is_sqlite(engine)
        else nullcontext(),
    )
    app = _App(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Our forms hold an address, a name and a few section names (Flask >= 3.1 enforces these).
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_FIELD_BYTES
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.extensions["digest"] = web
    # Tracked links (digest.clicks); app.extensions["digest.clicks"].flush() writes queued clicks.
    app.extensions["digest.clicks"] = register_redirect(
        app,
        sessions=sessions,
        secret=web.secret,
        unit=web.unit,
        clock=clock,
        not_found=web.invalid_link,
        background=background,
    )
    if background:
        sender = ConfirmationSender(config, sessions, clock=clock, lock=web.write_lock)
        app.extensions["digest.sender"] = sender
        app.before_request(sender.ensure_running)
    if config.web.proxy_hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=config.web.proxy_hops, x_proto=config.web.proxy_hops
        )

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        code = e.code or 500
        return web.page(
            "web/message.html",
            code,
            heading=e.name,
            text="Please check the address, or use the link from your latest email.",
        )

    @app.after_request
    def _headers(response: Response) -> Response:
        h = response.headers
        h.setdefault("Content-Security-Policy", _CSP_PAGES)
        h["X-Content-Type-Options"] = "nosniff"
        h.setdefault("Referrer-Policy", "same-origin")  # /r/ sets no-referrer
        h["X-Frame-Options"] = "DENY"
        if request.path.startswith(("/u/", "/p/", "/confirm/", "/subscribe/", "/webhooks/")):
            h["Cache-Control"] = "no-store"
        return response

    @app.route("/u/<token>", methods=["GET", "POST"])
    def unsubscribe_link(token: str) -> Response:
        found = web.read(token, "unsubscribe")
        # A genuine one-click POST is never refused: mailbox providers send them from a few
        # addresses of their own and may not retry, and each is one idempotent update.
        refused = None if found is not None and request.method == "POST" else web.limited()
        if refused is not None:
            return refused
        if found is None:
            return web.invalid_link()
        data, nl = found
        if request.method != "POST":  # GET, or HEAD (Flask answers HEAD with the GET view)
            prefs = make_token(web.secret, data.subscriber_id, nl.id, "preferences")
            return web.page(
                "web/unsubscribe.html",
                masthead=nl.title,
                newsletter=nl,
                done=False,
                preferences_url=f"/p/{prefs}",
            )
        if request.form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
            return web.page(
                "web/message.html",
                400,
                masthead=nl.title,
                heading="Nothing was changed",
                text="Use the Unsubscribe button on the previous page.",
            )
        with web.unit() as session:
            _unsubscribe(session, data, at=clock())
        log.info("unsubscribe via link: newsletter=%s", nl.id)
        return web.page("web/unsubscribe.html", masthead=nl.title, newsletter=nl, done=True)

    @app.route("/p/<token>", methods=["GET", "POST"])
    def preferences(token: str) -> Response:
        refused = web.limited()
        if refused is not None:
            return refused
        found = web.read(token, "preferences")
        if found is None:
            return web.invalid_link()
        data, nl = found
        if request.method != "POST":
            with web.sessions() as session:
                state = _preference_state(session, data.subscriber_id, nl)
            if state is None:
                return web.invalid_link()
            return _preferences_page(web, token, nl, data, state)
        if not _form_accepted(web, config, token, clock().timestamp()):
            return web.page(
                "web/message.html",
                403,
                masthead=nl.title,
                heading="Please try again",
                text="This form has expired. Reload the page, then save your choices again.",
            )
        try:
            posted = _posted_preferences(nl, request.form)
        except InputError as e:
            return web.page(
                "web/message.html", 400, masthead=nl.title, heading="Nothing was saved", text=str(e)
            )
        error = message = None
        member = True
        if not posted.sections and not posted.paused:
            error = "Choose at least one section, or pause the newsletter instead."
        else:
            with web.unit() as session:
                state = _preference_state(session, data.subscriber_id, nl)
                if state is None:
                    return web.invalid_link()
                member = state.member
                if member:
                    _save_preferences(session, data.subscriber_id, nl, posted)
                    message = "Saved. Your next email follows these choices."
        shown = PreferenceState(member, posted.order, posted.chosen, posted.paused)
        return _preferences_page(
            web, token, nl, data, shown, message=message, error=error, status=400 if error else 200
        )

    @app.route("/confirm/<token>", methods=["GET", "POST"])
    def confirm_link(token: str) -> Response:
        refused = web.limited()
        if refused is not None:
            return refused
        found = web.read(token, "confirm")
        if found is None or confirmation_expired(found[0], clock()):
            return web.invalid_link()
        data, nl = found
        if request.method != "POST":
            with web.sessions() as session:
                status = _membership_status(session, data.subscriber_id, nl.id)
            if status is None:
                return web.invalid_link()
            return _confirm_page(web, token, nl, status)
        if not _form_accepted(web, config, token, clock().timestamp()):
            return web.page(
                "web/message.html",
                403,
                masthead=nl.title,
                heading="Please try again",
                text="This page has expired. Open the link from the email again.",
            )
        try:
            with web.unit() as session:
                result = confirm(session, config, token, at=clock())
        except (InvalidToken, InputError, NotFound):
            # Expired since the page was shown, or the subscriber was erased meanwhile.
            return web.invalid_link()
        log.info("confirmation via link: newsletter=%s status=%s", nl.id, result.status)
        return _confirm_page(web, token, nl, result.status)

    @app.route("/subscribe/<newsletter>", methods=["GET", "POST"])
    def subscribe_form(newsletter: str) -> Response:
        nl = config.newsletters.get(newsletter)
        if nl is None:
            return web.page(
                "web/message.html", 404, heading="Not found", text="There is no such newsletter."
            )
        refused = web.limited()
        if refused is not None:
            return refused
        if request.method != "POST":
            return _subscribe_page(web, nl)
        if not _form_accepted(web, config, _signup_binding(nl), clock().timestamp()):
            return web.page(
                "web/message.html",
                403,
                masthead=nl.title,
                heading="Please try again",
                text="This form has expired. Reload the page, then subscribe again.",
            )
        if request.form.get(HONEYPOT_FIELD):
            return web.page("web/check_inbox.html", masthead=nl.title, newsletter=nl)
        email = request.form.get("email", "")
        # Cleaned, not refused: a name is optional and never worth an error page.
        name = one_line(request.form.get("name", ""))[:MAX_NAME].strip() or None
        try:
            address = check_email(email)
        except InputError:
            return _subscribe_page(
                web, nl, email=email, name=name or "", error=_INVALID_EMAIL, status=400
            )
        with web.unit() as session:
            queue_sign_up(session, nl, address, name, at=clock())
        log.info("web signup: newsletter=%s", nl.id)
        return web.page("web/check_inbox.html", masthead=nl.title, newsletter=nl)

    @app.get("/archive/<newsletter>/")
    def archive_index(newsletter: str) -> Response:
        nl = config.newsletters.get(newsletter)
        if nl is None:
            return _not_found(web)
        with web.sessions() as session:
            dates = list(
                session.scalars(
                    select(Edition.edition_date)
                    .where(Edition.newsletter == nl.id, Edition.status.in_(PUBLIC_STATUSES))
                    .order_by(Edition.edition_date.desc())
                    .limit(400)
                )
            )
        # The page's own words are English; the newsletter's title and dates are in its language.
        editions = [{"href": d.isoformat(), "label": long_date(d, nl.lang)} for d in dates]
        response = web.page(
            "web/archive.html", masthead=nl.title, editions=editions, language=nl.lang
        )
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    @app.get("/archive/<newsletter>/<edition_date>")
    def archive_edition(newsletter: str, edition_date: str) -> Response:
        nl = config.newsletters.get(newsletter)
        day = _parse_day(edition_date)
        if nl is None or day is None:
            return _not_found(web)
        with web.sessions() as session:
            edition = get_edition(session, nl.id, day)
            if edition is None or edition.status not in PUBLIC_STATUSES:
                return _not_found(web)
            html = _archive_html(web, nl, edition)
        response = Response(html, mimetype="text/html")
        response.headers["Content-Security-Policy"] = _CSP_ARCHIVE
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @app.post("/webhooks/sendgrid")
    def sendgrid_webhook() -> Response:
        body = request.get_data(cache=False)
        verdict = web.verifier.check(body, request.headers, clock().timestamp())
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
            with web.unit() as session:
                outcome = apply_events(session, events, at=clock(), config=config)
        except IntegrityError:
            # The same batch arrived twice at once: the other request applied these events;
            # applying again now skips them as duplicates.
            with web.unit() as session:
                outcome = apply_events(session, events, at=clock(), config=config)
        log.info("sendgrid webhook: %s", outcome.summary())
        return Response(
            json.dumps(outcome.counts, sort_keys=True), status=200, mimetype="application/json"
        )

    return app


def _not_found(web: _Web) -> Response:
    return web.page("web/message.html", 404, heading="Not found", text="There is no such edition.")


def _parse_day(raw: str) -> date | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def _archive_html(web: _Web, nl: NewsletterConfig, edition: Edition) -> str:
    # A frozen edition never changes, so its page is rendered (and CSS-inlined) once.
    key = (edition.id, edition.fingerprint)
    html = web.archive_cache.get(key)
    if html is None:
        html = Renderer(web.config, nl, edition).archive().html
        if len(web.archive_cache) > 256:
            web.archive_cache.clear()
        web.archive_cache[key] = html
    return html


def _form_accepted(web: _Web, config: Config, token: str, now: float) -> bool:
    """The CSRF check of a form post: same origin, carrying this link's signed form token."""
    return _same_origin(config) and check_form_token(
        web.secret, token, request.form.get("csrf", ""), now
    )


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


# --- double opt-in ----------------------------------------------------------------------------


def _membership_status(session: Session, subscriber_id: int, newsletter: str) -> str | None:
    sub = session.get(Subscriber, subscriber_id)
    membership = sub.membership(newsletter) if sub is not None else None
    return None if membership is None else membership.status


def _confirm_page(web: _Web, token: str, nl: NewsletterConfig, status: str) -> Response:
    if status == "unsubscribed":
        # An old link must not undo a later unsubscribe.
        return web.page(
            "web/message.html",
            masthead=nl.title,
            heading="Nothing was changed",
            text=f"You left {nl.title} after this link was sent. To receive it again, "
            "please sign up again.",
        )
    return web.page(
        "web/confirm.html",
        masthead=nl.title,
        newsletter=nl,
        done=status == "active",
        csrf=make_form_token(web.secret, token, int(web.clock().timestamp())),
    )


# --- the public sign-up form ------------------------------------------------------------------

HONEYPOT_FIELD = "website"
_INVALID_EMAIL = "Please enter a valid email address, like name@example.com."


def _signup_binding(nl: NewsletterConfig) -> str:
    # The sign-up form belongs to no subscriber: its form token is bound to the newsletter.
    return f"subscribe:{nl.id}"


def _subscribe_page(
    web: _Web,
    nl: NewsletterConfig,
    *,
    email: str = "",
    name: str = "",
    error: str | None = None,
    status: int = 200,
) -> Response:
    return web.page(
        "web/subscribe.html",
        status,
        masthead=nl.title,
        newsletter=nl,
        email=email,
        name=name,
        error=error,
        csrf=make_form_token(web.secret, _signup_binding(nl), int(web.clock().timestamp())),
    )


# --- unsubscribe and preferences (units of work) --------------------------------------------


def _unsubscribe(session: Session, data: TokenData, *, at: datetime) -> None:
    # NotFound: forgotten, or never on this list. What the person asked for already holds, and
    # the answer must not differ from a real unsubscribe (no enumeration).
    with contextlib.suppress(NotFound):
        unsubscribe(session, data.subscriber_id, data.newsletter, reason="unsubscribe link", at=at)


@dataclass(frozen=True)
class PreferenceState:
    member: bool  # on the list (pending or active); False when unsubscribed
    order: tuple[str, ...]  # every section, chosen ones first in the subscriber's order
    chosen: frozenset[str]
    paused: bool


def _preference_state(
    session: Session, subscriber_id: int, nl: NewsletterConfig
) -> PreferenceState | None:
    """What the preferences page shows; None when there is no such subscriber or membership."""
    sub = session.get(Subscriber, subscriber_id)
    membership = sub.membership(nl.id) if sub is not None else None
    if sub is None or membership is None:
        return None
    chosen = sections_for(session, nl, [sub.id])[sub.id]
    order = chosen + tuple(s for s in nl.section_names if s not in chosen)
    return PreferenceState(
        membership.status != "unsubscribed", order, frozenset(chosen), membership.paused
    )


@dataclass(frozen=True)
class PostedPreferences:
    order: tuple[str, ...]
    chosen: frozenset[str]
    paused: bool

    @property
    def sections(self) -> list[str]:
        return [s for s in self.order if s in self.chosen]


def _posted_preferences(nl: NewsletterConfig, form: MultiDict[str, str]) -> PostedPreferences:
    order = form.getlist("order")
    if sorted(order) != sorted(nl.section_names):
        raise InputError("the list of sections has changed; reload the page and try again")
    chosen = frozenset(form.getlist("section"))
    if not chosen <= set(order):
        raise InputError("unknown section; reload the page and try again")
    move = form.get("move", "")
    m = re.fullmatch(r"(up|down):(\d+)", move)
    if m:
        i = int(m.group(2))
        j = i - 1 if m.group(1) == "up" else i + 1
        if 0 <= i < len(order) and 0 <= j < len(order):
            order[i], order[j] = order[j], order[i]
    return PostedPreferences(tuple(order), chosen, form.get("delivery") == "paused")


def _save_preferences(
    session: Session, subscriber_id: int, nl: NewsletterConfig, posted: PostedPreferences
) -> None:
    # Pausing with nothing ticked keeps the earlier sections for when the reader resumes.
    set_preferences(session, subscriber_id, nl, posted.sections or None, paused=posted.paused)


def _preferences_page(
    web: _Web,
    token: str,
    nl: NewsletterConfig,
    data: TokenData,
    state: PreferenceState,
    *,
    message: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    rows = [{"name": s, "chosen": s in state.chosen} for s in state.order]
    unsubscribe_url = "/u/" + make_token(web.secret, data.subscriber_id, nl.id, "unsubscribe")
    return web.page(
        "web/preferences.html",
        status,
        masthead=nl.title,
        newsletter=nl,
        member=state.member,
        rows=rows,
        paused=state.paused,
        csrf=make_form_token(web.secret, token, int(web.clock().timestamp())),
        message=message,
        error=error,
        unsubscribe_url=unsubscribe_url,
    )


# --- provider events ---------------------------------------------------------------------------

# What each event does to the ledger row is digest.ledger.apply_provider_event's business
# (precedence, open states, the "resolved by" note). `deferred`: the receiving server asked
# SendGrid to try later, so SendGrid has the message (it retries for up to 72 hours).
OPEN_STATES = ledger.OPEN_STATES
CONFIRMING = ("processed", "delivered", "deferred")
FAILING = ("bounce", "dropped")
UNSUBSCRIBING = ("unsubscribe", "group_unsubscribe")
EVENT_RETENTION = timedelta(days=7)  # SendGrid retries a batch for up to 72 hours


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
    """Apply a batch of SendGrid events in the caller's transaction: suppressions,
    unsubscribes and ledger updates, each event once (by sg_event_id)."""
    outcome = EventOutcome()
    ids = [_event_id(e) for e in events if e.get("sg_event_id")]
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
        kind = strip_controls(str(event.get("event") or ""))
        event_id = _event_id(event)
        if event_id:
            if event_id in seen:
                outcome.add("duplicate")
                continue
            seen.add(event_id)
            session.add(WebhookEvent(sg_event_id=event_id, event=kind[:40], received_at=at))
        outcome.add(_apply_event(session, kind, event, at, config))
    session.execute(delete(WebhookEvent).where(WebhookEvent.received_at < at - EVENT_RETENTION))
    return outcome


def _event_id(event: dict[str, Any]) -> str:
    # Event fields are stored and looked up: nothing that is not text (PostgreSQL refuses NUL).
    return strip_controls(str(event.get("sg_event_id") or ""))[:100]


def _apply_event(
    session: Session, kind: str, event: dict[str, Any], at: datetime, config: Config | None = None
) -> str:
    email = normalise_email(str(event.get("email") or ""))
    if text_problem(email):
        email = ""  # not an address anyone has: matches no row, suppresses nothing
    row = _delivery_of(session, event, email)
    if kind in CONFIRMING:
        if row is None:
            return "unmatched"
        ledger.apply_provider_event(session, _provider_event(row.id, kind, event, at, ""), at)
        return kind
    if kind in FAILING:
        reason = strip_controls(str(event.get("reason") or event.get("type") or kind))
        if row is not None:
            found = _provider_event(row.id, kind, event, at, reason)
            ledger.apply_provider_event(session, found, at)
        suppression = _suppression_reason(kind, event, reason)
        if email and suppression:
            suppress(session, email, suppression, at)
        return kind if suppression else f"{kind} (not suppressed)"
    if kind == "spamreport":
        if email:
            suppress(session, email, "complained", at)
        return kind
    if kind in UNSUBSCRIBING:
        _unsubscribe_from_event(session, row, email, at)
        return kind
    if kind in ("click", "open") and config is not None and row is not None:
        return sendgrid_event(session, config, kind, row, event)  # digest.clicks
    return "ignored"


def _delivery_of(session: Session, event: dict[str, Any], email: str) -> Delivery | None:
    """The ledger row named by the delivery_id custom arg, if its address matches the event's
    (rows of another installation sharing the SendGrid account must not be touched)."""
    raw = str(event.get("delivery_id") or "")
    if not raw.isdigit():
        return None
    row = session.get(Delivery, int(raw))
    if row is None or normalise_email(row.email) != email:
        return None
    return row


def _provider_event(
    delivery_id: int, kind: str, event: dict[str, Any], received: datetime, reason: str
) -> ledger.ProviderEvent:
    return ledger.ProviderEvent(
        delivery_id,
        "SendGrid",
        kind,
        accepted=kind in CONFIRMING,
        at=_event_time(event, received),
        detail=reason,
        provider_message_id=_message_id(event),
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


# --- serving ---------------------------------------------------------------------------------


class _RedactingHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        super().log(type, "%s", redact(message % args if args else message))


def make_web_server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    """werkzeug's threaded server, with token paths redacted from its access log."""
    return make_server(host, port, app, threaded=True, request_handler=_RedactingHandler)


def serve(
    config: Config,
    sessions: sessionmaker[Session],
    *,
    host: str,
    port: int,
    clock: Clock,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the app on werkzeug's threaded server until interrupted; `on_ready` gets the URL
    once the socket is bound (for production use gunicorn behind a reverse proxy, see README)."""
    app = create_app(config, sessions, clock=clock, background=True)
    sender: ConfirmationSender = app.extensions["digest.sender"]
    sender.ensure_running()
    server = make_web_server(app, host, port)
    if on_ready is not None:
        on_ready(f"http://{host}:{server.server_port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sender.stop(timeout=10)


def wsgi_app(config_path: str | None = None) -> Flask:
    """For WSGI servers: `gunicorn 'digest.web:wsgi_app()'` (config from DIGEST_CONFIG)."""
    config = load_config(config_path)
    engine = make_engine(config.database_url)
    ensure_schema(engine)
    return create_app(config, session_factory(engine), clock=utcnow, background=True)
