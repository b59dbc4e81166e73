"""The app factory: the shared context, the blueprints, the headers every answer carries."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, request
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from digest.clock import Clock
from digest.config import Config
from digest.confirmations import ConfirmationSender
from digest.db import writer_lock
from digest.providers.sendgrid import WebhookVerifier
from digest.render import template_environment
from digest.web import archive, health, preferences, redirect, signup, unsubscribe, webhooks
from digest.web.context import (
    CSP_PAGES,
    MAX_BODY_BYTES,
    MAX_FORM_FIELD_BYTES,
    MAX_FORM_PARTS,
    RequestLimiter,
    WebContext,
    redact,
    web,
)
from subscribers.tokens import site_secret

BLUEPRINTS: tuple[Blueprint, ...] = (
    unsubscribe.bp,
    preferences.bp,
    signup.bp,
    archive.bp,
    webhooks.bp,
    redirect.bp,
    health.bp,
)
_NO_STORE = ("/u/", "/p/", "/confirm/", "/subscribe/", "/webhooks/")


class _App(Flask):
    def log_exception(self, exc_info: Any) -> None:
        self.logger.error(
            "Exception on %s [%s]", redact(request.path), request.method, exc_info=exc_info
        )


def create_app(
    config: Config, sessions: sessionmaker[Session], *, clock: Clock, background: bool = False
) -> Flask:
    """The WSGI app. Fails at once (ConfigError) when the link secret or webhook key is unusable.
    With `background`, each process serving it also runs the confirmation sender (sign-ups
    from the form are emailed from there); app.extensions["digest.sender"] is that sender."""
    app = _App("digest.web", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Our forms hold an address, a name and a few section names (Flask >= 3.1 enforces these).
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_FIELD_BYTES
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.extensions["digest"] = context = _context(config, sessions, clock)
    redirect.init_redirect(app, background=background)
    health.init_watch(app)
    if background:
        sender = ConfirmationSender(config, sessions, clock=clock, lock=context.write_lock)
        app.extensions["digest.sender"] = sender
        app.before_request(sender.ensure_running)
    if config.web.proxy_hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=config.web.proxy_hops, x_proto=config.web.proxy_hops
        )
    app.register_error_handler(HTTPException, _http_error)
    app.after_request(_headers)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    return app


def _context(config: Config, sessions: sessionmaker[Session], clock: Clock) -> WebContext:
    return WebContext(
        config=config,
        sessions=sessions,
        clock=clock,
        secret=site_secret(config),
        limiter=RequestLimiter(config.web.token_requests_per_minute),
        verifier=WebhookVerifier(
            config.web.sendgrid_webhook_public_key,
            config.web.sendgrid_webhook_max_age_seconds,
            config.web.sendgrid_webhook_allow_unsigned,
        ),
        pages=template_environment(config.templates_dir),
        write_lock=writer_lock(sessions),
    )


def _http_error(e: HTTPException) -> Response:
    return web().message(
        e.code or 500,
        e.name,
        "Please check the address, or use the link from your latest email.",
    )


def _headers(response: Response) -> Response:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP_PAGES)
    h["X-Content-Type-Options"] = "nosniff"
    h.setdefault("Referrer-Policy", "same-origin")  # /r/ sets no-referrer
    h["X-Frame-Options"] = "DENY"
    if request.path.startswith(_NO_STORE):
        h["Cache-Control"] = "no-store"
    return response
