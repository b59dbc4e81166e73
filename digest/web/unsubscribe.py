"""`/u/<token>`: the unsubscribe page and the RFC 8058 one-click POST."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from flask import Blueprint, Response, request
from sqlalchemy.orm import Session

from digest.config import NewsletterConfig
from digest.errors import NotFound
from digest.web.context import WebContext, token_link
from subscribers.service import unsubscribe
from subscribers.tokens import TokenData, make_token

log = logging.getLogger("digest.web")

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"

bp = Blueprint("unsubscribe", __name__)


@bp.route("/u/<token>", methods=["GET", "POST"])
@token_link("unsubscribe", spare_posts=True)
def unsubscribe_link(
    web: WebContext, token: str, data: TokenData, nl: NewsletterConfig
) -> Response:
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
        return web.message(
            400,
            "Nothing was changed",
            "Use the Unsubscribe button on the previous page.",
            masthead=nl.title,
        )
    with web.unit() as session:
        _unsubscribe(session, data, at=web.clock())
    log.info("unsubscribe via link: newsletter=%s", nl.id)
    return web.page("web/unsubscribe.html", masthead=nl.title, newsletter=nl, done=True)


def _unsubscribe(session: Session, data: TokenData, *, at: datetime) -> None:
    # NotFound: forgotten, or never on this list. What the person asked for already holds, and
    # the answer must not differ from a real unsubscribe (no enumeration).
    with contextlib.suppress(NotFound):
        unsubscribe(session, data.subscriber_id, data.newsletter, reason="unsubscribe link", at=at)
