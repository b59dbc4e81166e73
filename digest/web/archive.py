"""`/archive/<newsletter>/`: the newsletter's public editions, each as it was sent."""

from __future__ import annotations

import re
from datetime import date

from flask import Blueprint, Response
from sqlalchemy import select

from digest.config import NewsletterConfig
from digest.editions import Edition, get_edition
from digest.render import Renderer, long_date
from digest.web.context import CSP_ARCHIVE, WebContext, web

PUBLIC_STATUSES = ("frozen", "sent")

bp = Blueprint("archive", __name__)


@bp.get("/archive/<newsletter>/")
def archive_index(newsletter: str) -> Response:
    w = web()
    nl = w.config.newsletters.get(newsletter)
    if nl is None:
        return _not_found(w)
    with w.sessions() as session:
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
    response = w.page("web/archive.html", masthead=nl.title, editions=editions, language=nl.lang)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/archive/<newsletter>/<edition_date>")
def archive_edition(newsletter: str, edition_date: str) -> Response:
    w = web()
    nl = w.config.newsletters.get(newsletter)
    day = _parse_day(edition_date)
    if nl is None or day is None:
        return _not_found(w)
    with w.sessions() as session:
        edition = get_edition(session, nl.id, day)
        if edition is None or edition.status not in PUBLIC_STATUSES:
            return _not_found(w)
        html = _archive_html(w, nl, edition)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP_ARCHIVE
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _not_found(web: WebContext) -> Response:
    return web.message(404, "Not found", "There is no such edition.")


def _parse_day(raw: str) -> date | None:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


def _archive_html(web: WebContext, nl: NewsletterConfig, edition: Edition) -> str:
    # A frozen edition never changes, so its page is rendered (and CSS-inlined) once.
    key = (edition.id, edition.fingerprint)
    html = web.archive_cache.get(key)
    if html is None:
        html = Renderer(web.config, nl, edition).archive().html
        if len(web.archive_cache) > 256:
            web.archive_cache.clear()
        web.archive_cache[key] = html
    return html
