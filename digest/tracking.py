"""Tracked links: every content link of a tracked send goes through `GET /r/<token>`.

A token is `<link>.<link signature>.<reader>.<reader signature>`:

- `<link>` is the id (base 36) of a row of `tracked_links`: the exact target (UTM included) of
  one link of one edition, stored before the send. The redirect only ever answers with a stored
  target, so it can never be used as an open redirect, and links of old editions keep working.
- `<link signature>` is an HMAC of the link id with the site secret: a link id cannot be
  changed into another one, and it is computed once per link when the variant is rendered.
- `<reader>.<reader signature>` is the per-recipient part. It is a placeholder slot (`click`)
  filled like the other personal values, so render-once stays: `<reader>` is the payload of
  the reader's unsubscribe token (subscriber id and newsletter, not secret) and the signature
  is the first READER_SIG characters of that token's HMAC (a truncated HMAC is a MAC). It costs
  two string slices per recipient, no signing, and cannot be made without the site secret;
  the unsubscribe link cannot be rebuilt from it (the rest of its signature is not there).

Unsubscribe and preference links are personal slots, never content links: they are never
tracked. The web archive and previews and proofs are rendered without tracking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from digest.config import Config, NewsletterConfig
from digest.db import Base
from digest.editions import Edition
from subscribers.tokens import make_tokens, site_secret

if TYPE_CHECKING:
    from digest.render import Renderer

log = logging.getLogger(__name__)

PATH = "/r/"
_LINK_SALT = b"digest.click.link:"
# Characters of the unsubscribe signature a tracked link carries: 66 bits, enough that nobody
# can guess one, and the other 94 bits keep the unsubscribe link itself out of reach of anyone
# who only has a (forwarded) tracked link.
READER_SIG = 11
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
TOKEN_MAX = 200  # longer paths are refused before any work


class TrackedLink(Base):
    """One content link of one edition: what a tracked token may redirect to."""

    __tablename__ = "tracked_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    url_hash: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))  # story | note | block
    section: Mapped[str | None] = mapped_column(String(100))
    article_id: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("edition_id", "url_hash"),)


@dataclass(frozen=True)
class Target:
    url: str
    kind: str
    section: str | None = None
    article_id: int | None = None
    label: str = ""


@dataclass(frozen=True)
class Resolved:
    """What a valid token names."""

    link_id: int
    edition_id: int
    url: str
    subscriber_id: int
    newsletter: str


@dataclass
class LinkMap:
    """The stored links of one edition, by target, ready to be written into a variant."""

    base_url: str
    secret: str
    ids: dict[str, int] = field(default_factory=dict)
    _prefixes: dict[str, str] = field(default_factory=dict)

    def wrap(self, target: str, reader_slot: str) -> str:
        """The tracked form of `target`, or `target` itself when it is not a stored link."""
        prefix = self._prefixes.get(target)
        if prefix is None:
            link_id = self.ids.get(target)
            if link_id is None:
                log.debug("link not stored for tracking, left as is: %s", target)
                return target
            prefix = f"{self.base_url}{PATH}{link_part(self.secret, link_id)}."
            self._prefixes[target] = prefix
        return prefix + reader_slot


# --- tokens ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


def _link_signature(secret: str, link_id: int) -> str:
    mac = hmac.new(secret.encode(), _LINK_SALT + str(link_id).encode(), hashlib.sha256)
    return _b64(mac.digest()[:6])


def link_part(secret: str, link_id: int) -> str:
    return f"{_base36(link_id)}.{_link_signature(secret, link_id)}"


def reader_part(unsubscribe_url: str) -> str:
    """The per-recipient half of every tracked token, cut from the reader's unsubscribe link
    (`…/u/<payload>.<signature>`): the payload and the first READER_SIG characters of its
    signature; "" when the link is not one (previews, the archive). Runs per recipient: two
    string slices, no hashing."""
    token = unsubscribe_url[unsubscribe_url.rfind("/") + 1 :]
    dot = token.find(".")
    if dot < 1 or len(token) < dot + 1 + READER_SIG:
        return ""
    return token[: dot + 1 + READER_SIG]


def parse_token(secret: str, token: str) -> tuple[int, int, str] | None:
    """(link id, subscriber id, newsletter) of a well-signed token, else None."""
    if len(token) > TOKEN_MAX:
        return None
    parts = token.split(".")
    if len(parts) != 4 or not parts[0] or len(parts[0]) > 12:
        return None
    link36, link_sig, payload, reader_sig = parts
    try:
        link_id = int(link36, 36)
    except ValueError:
        return None
    if _base36(link_id) != link36 or not hmac.compare_digest(
        _link_signature(secret, link_id), link_sig
    ):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if (
        not isinstance(data, list)
        or len(data) != 2
        or type(data[0]) is not int
        or not isinstance(data[1], str)
    ):
        return None
    subscriber_id, newsletter = data
    expected = make_tokens(secret, subscriber_id, newsletter, ("unsubscribe",))[0]
    exp_payload, _, exp_sig = expected.partition(".")
    if exp_payload != payload or not hmac.compare_digest(exp_sig[:READER_SIG], reader_sig):
        return None
    return link_id, subscriber_id, newsletter


def resolve(session: Session, secret: str, token: str) -> Resolved | None:
    """The stored link and reader a token names; None for anything tampered or unknown."""
    parsed = parse_token(secret, token)
    if parsed is None:
        return None
    link_id, subscriber_id, newsletter = parsed
    row = session.execute(
        select(TrackedLink.edition_id, TrackedLink.url, Edition.newsletter)
        .join(Edition, Edition.id == TrackedLink.edition_id)
        .where(TrackedLink.id == link_id)
    ).first()
    if row is None or row.newsletter != newsletter:
        return None
    return Resolved(link_id, row.edition_id, row.url, subscriber_id, newsletter)


# --- the links of an edition -----------------------------------------------------------------


def edition_targets(config: Config, nl: NewsletterConfig, edition: Edition) -> list[Target]:
    """Every content link a variant of the edition can contain, as the renderer writes it."""
    from digest.notes import render_note
    from digest.render import Renderer, clean_text

    renderer = Renderer(config, nl, edition)
    out: list[Target] = []
    for item in sorted(edition.items, key=lambda i: (i.section_position, i.rank)):
        url = renderer.link(item.url)
        if url:
            out.append(Target(url, "story", item.section, item.article_id, item.shown_title))
    if edition.note:

        def collect(href: str) -> str:
            url = renderer.link(href)
            if url:
                out.append(Target(url, "note", label="editor's note"))
            return url

        render_note(clean_text(edition.note), collect)
    for block in nl.blocks:
        url = renderer.link(block.link)
        if url:
            out.append(Target(url, "block", label=block.title))
    return out


def url_hash(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()


def store_links(session: Session, edition_id: int, targets: Iterable[Target]) -> dict[str, int]:
    """Insert the targets not stored yet (the first description of a URL wins); every stored
    link of the edition by URL. Ids never change, so tokens of earlier runs stay valid."""
    stored = {
        url: link_id
        for link_id, url in session.execute(
            select(TrackedLink.id, TrackedLink.url).where(TrackedLink.edition_id == edition_id)
        )
    }
    for t in targets:
        if t.url in stored:
            continue
        row = TrackedLink(
            edition_id=edition_id,
            url_hash=url_hash(t.url),
            url=t.url,
            kind=t.kind,
            section=t.section,
            article_id=t.article_id,
            label=t.label[:500],
        )
        session.add(row)
        session.flush()
        stored[t.url] = row.id
    return stored


def link_map(
    session: Session, config: Config, nl: NewsletterConfig, edition: Edition
) -> LinkMap | None:
    """The edition's tracked links, stored in the caller's transaction (the one that freezes
    the edition) before any message carries them; None when the newsletter does not track
    clicks."""
    if not nl.track_clicks:
        return None
    targets = edition_targets(config, nl, edition)
    ids = store_links(session, edition.id, targets)
    return LinkMap(config.site.base_url, site_secret(config), ids)


def send_renderer(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition: Edition,
    subject: str | None = None,
) -> Renderer:
    """The Renderer of a send: tracked links when the newsletter tracks clicks, and the
    subject of an A/B arm when one is given."""
    from digest.render import Renderer

    tracking = link_map(session, config, nl, edition)
    return Renderer(config, nl, edition, tracking=tracking, subject=subject)
