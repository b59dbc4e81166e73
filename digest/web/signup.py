"""Double opt-in: the public sign-up form (`/subscribe/<newsletter>`) and the confirmation
link (`/confirm/<token>`) its email carries."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request
from sqlalchemy.orm import Session

from digest.config import NewsletterConfig
from digest.confirmations import queue_sign_up
from digest.errors import InputError, NotFound
from digest.limits import MAX_NAME
from digest.text import one_line
from digest.web.context import WebContext, token_link, web
from subscribers.models import Subscriber
from subscribers.service import check_email, confirm, confirmation_expired
from subscribers.tokens import InvalidToken, TokenData

log = logging.getLogger("digest.web")

HONEYPOT_FIELD = "website"
_INVALID_EMAIL = "Please enter a valid email address, like name@example.com."

bp = Blueprint("signup", __name__)


# --- the confirmation link -------------------------------------------------------------------


@bp.route("/confirm/<token>", methods=["GET", "POST"])
@token_link("confirm")
def confirm_link(web: WebContext, token: str, data: TokenData, nl: NewsletterConfig) -> Response:
    if confirmation_expired(data, web.clock()):
        return web.invalid_link()
    if request.method != "POST":
        with web.sessions() as session:
            status = _membership_status(session, data.subscriber_id, nl.id)
        if status is None:
            return web.invalid_link()
        return _confirm_page(web, token, nl, status)
    refused = web.form_refused(
        token, nl, "This page has expired. Open the link from the email again."
    )
    if refused is not None:
        return refused
    try:
        with web.unit() as session:
            result = confirm(session, web.config, token, at=web.clock())
    except (InvalidToken, InputError, NotFound):
        # Expired since the page was shown, or the subscriber was erased meanwhile.
        return web.invalid_link()
    log.info("confirmation via link: newsletter=%s status=%s", nl.id, result.status)
    return _confirm_page(web, token, nl, result.status)


def _membership_status(session: Session, subscriber_id: int, newsletter: str) -> str | None:
    sub = session.get(Subscriber, subscriber_id)
    membership = sub.membership(newsletter) if sub is not None else None
    return None if membership is None else membership.status


def _confirm_page(web: WebContext, token: str, nl: NewsletterConfig, status: str) -> Response:
    if status == "unsubscribed":
        # An old link must not undo a later unsubscribe.
        return web.message(
            200,
            "Nothing was changed",
            f"You left {nl.title} after this link was sent. To receive it again, "
            "please sign up again.",
            masthead=nl.title,
        )
    return web.page(
        "web/confirm.html",
        masthead=nl.title,
        newsletter=nl,
        done=status == "active",
        csrf=web.form_token(token),
    )


# --- the public sign-up form ------------------------------------------------------------------


@bp.route("/subscribe/<newsletter>", methods=["GET", "POST"])
def subscribe_form(newsletter: str) -> Response:
    w = web()
    nl = w.config.newsletters.get(newsletter)
    if nl is None:
        return w.message(404, "Not found", "There is no such newsletter.")
    refused = w.limited()
    if refused is not None:
        return refused
    if request.method != "POST":
        return _subscribe_page(w, nl)
    refused = w.form_refused(
        _signup_binding(nl), nl, "This form has expired. Reload the page, then subscribe again."
    )
    if refused is not None:
        return refused
    if request.form.get(HONEYPOT_FIELD):
        return w.page("web/check_inbox.html", masthead=nl.title, newsletter=nl)
    email = request.form.get("email", "")
    # Cleaned, not refused: a name is optional and never worth an error page.
    name = one_line(request.form.get("name", ""))[:MAX_NAME].strip() or None
    try:
        address = check_email(email)
    except InputError:
        return _subscribe_page(
            w, nl, email=email, name=name or "", error=_INVALID_EMAIL, status=400
        )
    with w.unit() as session:
        queue_sign_up(session, nl, address, name, at=w.clock())
    log.info("web signup: newsletter=%s", nl.id)
    return w.page("web/check_inbox.html", masthead=nl.title, newsletter=nl)


def _signup_binding(nl: NewsletterConfig) -> str:
    # The sign-up form belongs to no subscriber: its form token is bound to the newsletter.
    return f"subscribe:{nl.id}"


def _subscribe_page(
    web: WebContext,
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
        csrf=web.form_token(_signup_binding(nl)),
    )
