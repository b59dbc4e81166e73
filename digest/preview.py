"""Editor previews of a stored edition: one document, or a small local server that re-renders on
every reload so template edits show at once.

A preview for a subscriber goes through the same Renderer, personal_links and personalise as the
send, so it is what that subscriber receives. Every output format lives in FORMATS (html, text,
eml); a test or plug-in can add one with register_format().
"""

from __future__ import annotations

import html
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy.orm import Session, sessionmaker

from digest.clock import utcnow
from digest.config import Config, NewsletterConfig
from digest.editions import Edition, load_edition
from digest.errors import DigestError, InputError, NotFound
from digest.render import (
    EmailTooLarge,
    Personal,
    Personalised,
    RenderedVariant,
    Renderer,
    archive_url,
    check_size,
    personal_links,
    personalise,
)
from subscribers.audience import Recipient, audience, recipient


@dataclass(frozen=True)
class PreviewMail:
    """Everything a format needs to print one previewed email."""

    config: Config
    newsletter: NewsletterConfig
    edition: Edition
    recipient: Recipient | None  # None: a sample reader (no subscriber chosen)
    variant: RenderedVariant
    mail: Personalised

    @property
    def size_warning(self) -> str | None:
        """What the send would say about this variant's size (warning or refusal), if anything."""
        try:
            return check_size(self.variant).warning
        except EmailTooLarge as e:
            return f"the send would refuse this: {e}"


def preview_eml(mail: PreviewMail) -> str:
    """`digest preview --format eml`: the message exactly as the send builds it for that
    reader (only Date differs: it is the preview's time)."""
    from digest.outgoing import one_message

    nl, edition = mail.newsletter, mail.edition
    if mail.recipient is not None:
        personal = personal_links(mail.config, nl, edition, mail.recipient)
        subscriber_id = mail.recipient.subscriber_id
    else:
        personal = sample_personal(mail.config, nl, edition)
        subscriber_id = 0
    raw = one_message(mail.config, nl, edition, mail.variant, personal, subscriber_id, utcnow())
    # UTF-8: a non-ASCII mailbox is written as such (RFC 6532); everything else is ASCII.
    return raw.decode("utf-8")


FORMATS: dict[str, Callable[[PreviewMail], str]] = {
    "html": lambda p: p.mail.html,
    "text": lambda p: p.mail.text,
    "eml": preview_eml,
}


def register_format(name: str, render: Callable[[PreviewMail], str]) -> None:
    FORMATS[name] = render


def sample_personal(config: Config, newsletter: NewsletterConfig, edition: Edition) -> Personal:
    """A stand-in reader for previews that name nobody: links go to the site's preview pages."""
    base = config.site.base_url
    return Personal(
        email="reader@example.com",
        name=None,
        unsubscribe_url=f"{base}/u/preview",
        preferences_url=f"{base}/p/preview",
        view_url=archive_url(config, newsletter, edition),
    )


def preview_mail(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    edition_date: date,
    *,
    segment: str | None = None,
    subscriber: str | None = None,
    sections: tuple[str, ...] | None = None,
    blocks: tuple[int, ...] = (),
) -> PreviewMail:
    """The email one reader gets: `subscriber` (email or id), else the first member of
    `segment`, else a sample reader of `sections` (default: the whole edition) shown the
    newsletter's `blocks` (indexes)."""
    edition = load_edition(session, newsletter.id, edition_date)
    renderer = Renderer(config, newsletter, edition)
    who = chosen_reader(session, config, newsletter, segment=segment, subscriber=subscriber)
    if who is not None:
        variant = renderer.variant(who.sections, who.blocks)
        personal = personal_links(config, newsletter, edition, who)
    else:
        variant = renderer.variant(sections or (), blocks)
        personal = sample_personal(config, newsletter, edition)
    return PreviewMail(config, newsletter, edition, who, variant, personalise(variant, personal))


def chosen_reader(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    *,
    segment: str | None,
    subscriber: str | None,
) -> Recipient | None:
    """`subscriber` (email or id), else the first member of `segment`, else None (a sample
    reader): whom a preview or a proof shows the email as."""
    if segment and subscriber:
        raise InputError("choose either --segment or --subscriber, not both")
    if subscriber:
        return recipient(session, config, newsletter, subscriber)
    if segment:
        who = next(iter(audience(session, config, newsletter, [segment])), None)
        if who is None:
            raise NotFound(
                f"segment {segment!r} has no active member of {newsletter.id} to preview as"
            )
        return who
    return None


def render_preview(mail: PreviewMail, fmt: str) -> str:
    try:
        return FORMATS[fmt](mail)
    except KeyError:
        raise InputError(
            f"unknown preview format {fmt!r} (choose from {', '.join(sorted(FORMATS))})"
        ) from None


# --- the preview server ----------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSummary:
    sections: tuple[str, ...]
    readers: int
    blocks: tuple[int, ...] = ()


def audience_variants(
    session: Session, config: Config, newsletter: NewsletterConfig, renderer: Renderer
) -> list[VariantSummary]:
    """The edition's variants among the newsletter's audience, most readers first."""
    counts: Counter[tuple[tuple[str, ...], tuple[int, ...]]] = Counter(
        (renderer.resolve(r.sections), renderer.resolve_blocks(r.blocks))
        for r in audience(session, config, newsletter)
    )
    return [VariantSummary(s, n, b) for (s, b), n in counts.most_common()]


class PreviewServer:
    """Serves the edition's variants on 127.0.0.1; every request re-reads the edition and the
    templates, so a reload shows the latest template edit."""

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        newsletter: NewsletterConfig,
        edition_date: date,
        port: int = 8025,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.newsletter = newsletter
        self.edition_date = edition_date
        handler = _handler(self)
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as e:
            raise InputError(
                f"cannot listen on 127.0.0.1:{port}: {e.strerror} (try --port)"
            ) from None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def run(self) -> None:
        """Serve until Ctrl-C."""
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.httpd.server_close()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def page(self, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
        """(content type, body) for one request path."""
        with self.sessions() as session:
            if path == "/":
                return "text/html; charset=utf-8", self._index(session)
            fmt = {"/html": "html", "/text": "text"}.get(path)
            if fmt is None:
                raise NotFound(f"no preview page {path}")
            if path == "/html" and query.get("archive"):
                edition = load_edition(session, self.newsletter.id, self.edition_date)
                return "text/html; charset=utf-8", Renderer(
                    self.config, self.newsletter, edition
                ).archive().html
            sections = tuple(s for s in query.get("s", []) if s)
            blocks = tuple(int(b) for b in query.get("b", []) if b.isdigit())
            subscriber = next(iter(query.get("subscriber", [])), None)
            mail = preview_mail(
                session,
                self.config,
                self.newsletter,
                self.edition_date,
                subscriber=subscriber,
                sections=sections,
                blocks=blocks,
            )
            ctype = "text/html" if fmt == "html" else "text/plain"
            return f"{ctype}; charset=utf-8", render_preview(mail, fmt)

    def _index(self, session: Session) -> str:
        nl = self.newsletter
        edition = load_edition(session, nl.id, self.edition_date)
        renderer = Renderer(self.config, nl, edition)
        variants = audience_variants(session, self.config, nl, renderer)
        rows = []
        for v in [VariantSummary((), 0), *variants]:
            variant = renderer.variant(v.sections, v.blocks)
            query = "&".join(
                [f"s={quote(s, safe='')}" for s in variant.sections]
                + [f"b={b}" for b in variant.blocks]
            )
            shown = ", ".join(variant.sections) + "".join(
                f" + block for {nl.blocks[b].segment}" for b in variant.blocks
            )
            size = check_size(variant)
            rows.append(
                f"<tr><td>{html.escape(shown)}</td>"
                f"<td>{v.readers if v.sections else 'sample reader'}</td>"
                f"<td>{size.bytes / 1024:.1f} KB{' ⚠' if size.warning else ''}</td>"
                f'<td><a href="/html?{query}">HTML</a> · <a href="/text?{query}">text</a></td>'
                f"<td>{html.escape(variant.subject)}</td></tr>"
            )
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Preview: {html.escape(nl.title)} {self.edition_date}</title>"
            "<style>body{font:15px/1.5 system-ui,sans-serif;margin:2em;color:#222}"
            "table{border-collapse:collapse}td,th{padding:6px 12px;border-bottom:1px solid #ddd;"
            "text-align:left;vertical-align:top}</style></head><body>"
            f"<h1>{html.escape(nl.title)} — {self.edition_date} ({html.escape(edition.status)})</h1>"
            "<p>Every page is rendered afresh: edit a template and reload. "
            '<a href="/html?archive=1">Web archive version</a>. '
            "Preview a subscriber: <code>/html?subscriber=EMAIL</code>.</p>"
            "<table><tr><th>Sections</th><th>Readers</th><th>Size</th><th>Open</th>"
            "<th>Subject</th></tr>" + "".join(rows) + "</table></body></html>"
        )


def _handler(server: PreviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            try:
                ctype, body = server.page(parts.path, parse_qs(parts.query))
                status = 200
            except NotFound as e:
                ctype, body, status = "text/plain; charset=utf-8", f"{e}\n", 404
            except DigestError as e:
                ctype, body, status = "text/plain; charset=utf-8", f"Error: {e}\n", 500
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler
