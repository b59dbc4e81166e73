"""The subscriber-facing web app, a blueprint per job: one-click unsubscribe, preferences,
double opt-in confirmation, the web archive and the SendGrid Event Webhook (`digest serve`, or
any WSGI server through `wsgi_app()`).

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

The rooms: `app` (the factory), `context` (what every page shares: the rate limit, the
token prologue, form tokens), a blueprint each for `unsubscribe`, `preferences`, `signup`
(sign-up form and confirmation), `archive`, `webhooks`, `redirect` (tracked links) and
`health` (/healthz and /metrics for monitoring), and `serving` (werkzeug's server,
`wsgi_app()` for gunicorn).
"""

from __future__ import annotations

from digest.web.app import create_app
from digest.web.context import (
    RequestLimiter,
    check_form_token,
    make_form_token,
    redact,
)
from digest.web.serving import make_web_server, serve, wsgi_app
from digest.web.webhooks import apply_events

__all__ = [
    "RequestLimiter",
    "apply_events",
    "check_form_token",
    "create_app",
    "make_form_token",
    "make_web_server",
    "redact",
    "serve",
    "wsgi_app",
]
