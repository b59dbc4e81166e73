"""`GET|HEAD /r/<token>`: the redirect of tracked links. A well-signed token answers 302 to
its stored target and queues the click (digest.clicks); anything else is the invalid-link 404."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import Click, ClickRecorder
from digest.editions import Edition
from digest.tracking import PATH, TrackedLink, parse_token
from digest.web.context import WebContext

_LINK_CACHE_MAX = 50_000

bp = Blueprint("redirect", __name__)


class LinkTargets:
    """Stored links never change: (edition id, target, newsletter) by link id, cached."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._links: dict[int, tuple[int, str, str]] = {}
        self._lock = threading.Lock()

    def lookup(self, link_id: int) -> tuple[int, str, str] | None:
        found = self._links.get(link_id)
        if found is not None:
            return found
        with self._sessions() as session:
            row = session.execute(
                select(TrackedLink.edition_id, TrackedLink.url, Edition.newsletter)
                .join(Edition, Edition.id == TrackedLink.edition_id)
                .where(TrackedLink.id == link_id)
            ).first()
        if row is None:
            return None
        with self._lock:
            if len(self._links) >= _LINK_CACHE_MAX:
                self._links.clear()
            found = self._links[link_id] = (row.edition_id, row.url, row.newsletter)
        return found


@dataclass(frozen=True)
class _Redirect:
    """What the redirect needs, looked up once a request (app.extensions["digest.redirect"])."""

    web: WebContext
    links: LinkTargets
    recorder: ClickRecorder


def init_redirect(app: Flask, *, background: bool) -> ClickRecorder:
    """The click writer and link cache the redirect uses; app.extensions["digest.clicks"]
    .flush() writes queued clicks."""
    w: WebContext = app.extensions["digest"]
    recorder = ClickRecorder(w.unit, background=background)
    app.extensions["digest.clicks"] = recorder
    app.extensions["digest.redirect"] = _Redirect(w, LinkTargets(w.sessions), recorder)
    return recorder


@bp.route(PATH + "<token>", methods=["GET", "HEAD"])
def tracked_link(token: str) -> Response:
    r: _Redirect = current_app.extensions["digest.redirect"]
    parsed = parse_token(r.web.secret, token)
    found = r.links.lookup(parsed[0]) if parsed is not None else None
    if parsed is None or found is None or found[2] != parsed[2]:
        return r.web.invalid_link()
    edition_id, url, _ = found
    r.recorder.add(
        Click(
            link_id=parsed[0],
            edition_id=edition_id,
            subscriber_id=parsed[1],
            at=r.web.clock(),
            method=request.method,
            user_agent=(request.headers.get("User-Agent") or "")[:1000],
        )
    )
    response = Response(status=302)
    response.headers["Location"] = url
    # The token identifies the reader: the target never sees it, no cache keeps it.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response
