"""`/p/<token>`: a subscriber's sections, their order, and pausing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Blueprint, Response, request
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from digest.config import NewsletterConfig
from digest.errors import InputError
from digest.web.context import WebContext, token_link
from subscribers.audience import sections_for
from subscribers.models import Subscriber
from subscribers.service import set_preferences
from subscribers.tokens import TokenData, make_token

bp = Blueprint("preferences", __name__)


@dataclass(frozen=True)
class PreferenceState:
    member: bool  # on the list (pending or active); False when unsubscribed
    order: tuple[str, ...]  # every section, chosen ones first in the subscriber's order
    chosen: frozenset[str]
    paused: bool


@dataclass(frozen=True)
class PostedPreferences:
    order: tuple[str, ...]
    chosen: frozenset[str]
    paused: bool

    @property
    def sections(self) -> list[str]:
        return [s for s in self.order if s in self.chosen]


@bp.route("/p/<token>", methods=["GET", "POST"])
@token_link("preferences")
def preferences(web: WebContext, token: str, data: TokenData, nl: NewsletterConfig) -> Response:
    if request.method != "POST":
        with web.sessions() as session:
            state = _preference_state(session, data.subscriber_id, nl)
        if state is None:
            return web.invalid_link()
        return _preferences_page(web, token, nl, data, state)
    refused = web.form_refused(
        token, nl, "This form has expired. Reload the page, then save your choices again."
    )
    if refused is not None:
        return refused
    try:
        posted = _posted_preferences(nl, request.form)
    except InputError as e:
        return web.message(400, "Nothing was saved", str(e), masthead=nl.title)
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
    web: WebContext,
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
        csrf=web.form_token(token),
        message=message,
        error=error,
        unsubscribe_url=unsubscribe_url,
    )
