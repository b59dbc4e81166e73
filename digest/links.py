"""Links and wording fields of an email: {field} templates checked against the fields they may
use, UTM parameters, http(s)-only URLs, and each reader's signed unsubscribe and preference
links."""

from __future__ import annotations

import string
from datetime import date
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from digest.config import Config, NewsletterConfig, UtmConfig
from digest.editions import Edition
from digest.errors import ConfigError, InputError
from digest.personalise import Personal
from digest.text import UNSHOWN
from subscribers.tokens import make_tokens, site_secret

if TYPE_CHECKING:
    from subscribers.audience import Recipient

_LINK_PURPOSES = ("unsubscribe", "preferences")
SUBJECT_FIELDS = frozenset({"title", "lead", "date", "headlines"})
_UTM_FIELDS = frozenset({"newsletter", "date"})


def format_fields(template: str, allowed: frozenset[str], where: str, **values: str) -> str:
    """`template` with its {fields} filled; ConfigError naming `where` for a field not in
    `allowed`, a format spec or unbalanced braces."""
    names: list[str] = []
    try:
        for _, name, spec, conv in string.Formatter().parse(template):
            if name is None:
                continue
            if name not in allowed or spec or conv:
                raise ConfigError(
                    f"{where}: unknown field {{{name}}} (use {', '.join(sorted(allowed))})"
                )
            names.append(name)
    except ValueError as e:
        raise ConfigError(f"{where}: {e} (write {{{{ and }}}} for literal braces)") from None
    return template.format(**{n: values[n] for n in names})


def check_subject_fields(template: str, what: str) -> None:
    """InputError when a subject or preheader uses a field other than {title}, {lead}, {date}
    and {headlines} (or unbalanced braces): caught when the editor sets it, not at the send."""
    try:
        format_fields(template, SUBJECT_FIELDS, what, **dict.fromkeys(SUBJECT_FIELDS, ""))
    except ConfigError as e:
        raise InputError(str(e)) from None


def add_utm(url: str, utm: UtmConfig | None, newsletter_id: str, edition_date: date) -> str:
    """Add utm_source/medium/campaign to an http(s) link, replacing only those keys and keeping
    the rest of the query string (as written) and the fragment."""
    if utm is None or not url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return url
    where = f"newsletters.{newsletter_id}.utm"
    values = {"newsletter": newsletter_id, "date": edition_date.isoformat()}
    ours = {
        "utm_source": format_fields(utm.source, _UTM_FIELDS, f"{where}.source", **values),
        "utm_medium": format_fields(utm.medium, _UTM_FIELDS, f"{where}.medium", **values),
        "utm_campaign": format_fields(utm.campaign, _UTM_FIELDS, f"{where}.campaign", **values),
    }
    kept = [
        p for p in parts.query.split("&") if p and unquote(p.split("=", 1)[0]).strip() not in ours
    ]
    kept += [f"{k}={quote(v, safe='')}" for k, v in ours.items() if v]
    return urlunsplit(parts._replace(query="&".join(kept)))


def safe_url(url: str | None) -> str:
    """Only http(s) links reach the email (no javascript:, data: ...)."""
    url = (url or "").strip()
    if urlsplit(url).scheme not in ("http", "https") or UNSHOWN.search(url):
        return ""
    # Percent-encode what a URL may not hold raw (quotes, spaces, <>), keep what it may.
    return quote(url, safe="!#$%&()*+,-./:;=?@[]_~")


def archive_url(config: Config, newsletter: NewsletterConfig, edition: Edition) -> str:
    return f"{config.site.base_url}/archive/{newsletter.id}/{edition.edition_date.isoformat()}"


class Links:
    """Signed links for an edition's readers; the secret and base URLs are looked up once,
    since a send signs links for every recipient."""

    def __init__(self, config: Config, newsletter: NewsletterConfig, edition: Edition) -> None:
        self._secret = site_secret(config)
        self._base = config.site.base_url
        self._newsletter = newsletter.id
        self.view_url = archive_url(config, newsletter, edition)

    def urls(self, subscriber_id: int) -> tuple[str, str]:
        """(unsubscribe URL, preferences URL) of one subscriber."""
        unsubscribe, preferences = make_tokens(
            self._secret, subscriber_id, self._newsletter, _LINK_PURPOSES
        )
        return f"{self._base}/u/{unsubscribe}", f"{self._base}/p/{preferences}"

    def personal(self, subscriber_id: int, email: str, name: str | None) -> Personal:
        unsubscribe, preferences = self.urls(subscriber_id)
        return Personal(email, name, unsubscribe, preferences, self.view_url)


def personal_links(
    config: Config, newsletter: NewsletterConfig, edition: Edition, recipient: Recipient
) -> Personal:
    """Signed unsubscribe and preference links for one recipient, plus the web version."""
    return Links(config, newsletter, edition).personal(
        recipient.subscriber_id, recipient.email, recipient.name
    )
