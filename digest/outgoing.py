"""The one place a recipient's message is built from a rendered variant: the send's worker, the
dry run and `digest preview --format eml` all go through MessageBuilder (one_message), and
proofs through proof_batch, so what a dry run, a preview or a proof shows is what a send hands
the provider.

Per variant a template is prepared once (tags where the personal values go, digest.message
pre-encodes its MIME pieces); per recipient only the substitutions are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from digest.config import Config, NewsletterConfig
from digest.editions import Edition
from digest.ledger import Claimed
from digest.message import (
    Addressee,
    Content,
    VariantMessage,
    domain_of,
    make_message_id,
    message_id_parts,
)
from digest.providers.base import BUILD_ERRORS, Batch, Outcome, Outgoing, unbuildable
from digest.render import (
    SLOTS,
    Layout,
    Links,
    Personal,
    Personalised,
    RenderedVariant,
    Renderer,
    personal_values,
    personalise,
)

PROOF_PREFIX = "[PROOF] "


class VariantMail:
    """A rendered variant and the same variant with tags in place of the personal values:
    SendGrid fills the tags server-side (one request per variant batch), SMTP and the outbox
    fill them into pre-encoded MIME pieces (digest.message)."""

    def __init__(
        self,
        rendered: RenderedVariant,
        message: VariantMessage,
        view_url: str,
        plain: frozenset[str] = frozenset(),
    ) -> None:
        self.rendered = rendered
        self.message = message
        self.template: Content | None = None
        self.verified = False
        nonce = rendered.nonce
        self._html_tags = {s: f"%%{nonce}h{i}%%" for i, s in enumerate(SLOTS)}
        # Slots in `plain` read the same escaped for HTML as in text: one tag serves both.
        self._text_tags = {
            s: self._html_tags[s] if s in plain else f"%%{nonce}t{i}%%" for i, s in enumerate(SLOTS)
        }
        self.view_url = view_url
        # The web-version link is the same for every reader: it goes into the template itself,
        # two substitutions fewer per recipient (verify() still compares with personalise()).
        html = personalise(rendered, _tag_personal(self._html_tags, view_url)).html
        text_ = personalise(rendered, _tag_personal(self._text_tags, view_url)).text
        self.template = Personalised(rendered.subject, html, text_)
        # (HTML tag, text tag, slot index) of the slots the template uses; one tag when shared.
        self._tags = [
            (self._html_tags[s], self._text_tags[s], i)
            for i, s in enumerate(SLOTS)
            if self._html_tags[s] in html or self._text_tags[s] in text_
        ]

    def substitutions(
        self, name: str | None, email: str, unsubscribe_url: str, preferences_url: str
    ) -> dict[str, str]:
        # personal_values() decides how each value is shown and escaped, as for personalise().
        raw, escaped = personal_values(
            name,
            email,
            unsubscribe_url,
            preferences_url,
            self.view_url,
            self.rendered.name_fallback,
        )
        out: dict[str, str] = {}
        for html_tag, text_tag, i in self._tags:
            out[html_tag] = escaped[i]
            if text_tag != html_tag:
                out[text_tag] = raw[i]
            elif raw[i] != escaped[i]:
                raise AssertionError(f"{SLOTS[i]} needs HTML escaping: it cannot share one tag")
        return out

    def verify(self, expected: Personalised, subs: dict[str, str]) -> None:
        """Check once that substitution reproduces personalise() exactly; otherwise send this
        variant one message per recipient."""
        assert self.template is not None
        got = [self.template.subject, self.template.html, self.template.text]
        for tag, value in subs.items():
            got = [g.replace(tag, value) for g in got]
        self.verified = True
        if got != [expected.subject, expected.html, expected.text]:
            self.template = None


def plain_links(config: Config) -> frozenset[str]:
    """The signed links when HTML escaping leaves them alone: tokens are URL-safe base64 and
    dots, so that holds whenever it holds for the site's base URL."""
    base = config.site.base_url
    return (
        frozenset({"unsubscribe_url", "preferences_url"}) if escape(base) == base else frozenset()
    )


def _tag_personal(tags: dict[str, str], view_url: str) -> Personal:
    return Personal(
        email=tags["email"],
        name=tags["first_name"],
        unsubscribe_url=tags["unsubscribe_url"],
        preferences_url=tags["preferences_url"],
        view_url=view_url,
        click=tags["click"],
    )


class MessageBuilder:
    """Batches of messages for one edition: its variants (rendered and templated once each)
    and, per claimed row, the reader's links, Message-ID and substitutions."""

    def __init__(
        self, config: Config, nl: NewsletterConfig, edition: Edition, renderer: Renderer
    ) -> None:
        self.config = config
        self.nl = nl
        self.edition = edition
        self.renderer = renderer
        self.links = Links(config, nl, edition)
        self._message_id = message_id_parts(nl, edition.edition_date)
        self._variants: dict[Layout, VariantMail] = {}

    def variant(
        self, sections: tuple[str, ...], blocks: tuple[int, ...], skip: tuple[int, ...] = ()
    ) -> VariantMail:
        v = self._variants.get((sections, blocks, skip))
        if v is None:
            rendered = self.renderer.variant(sections, blocks, skip)
            v = self._variants[(sections, blocks, skip)] = self.variant_mail(rendered)
        return v

    def variant_mail(self, rendered: RenderedVariant) -> VariantMail:
        message = VariantMessage(self.config, self.nl, self.edition.edition_date, rendered.key)
        return VariantMail(rendered, message, self.links.view_url, plain_links(self.config))

    def batches(
        self, claimed: Sequence[Claimed], when: datetime, unbuilt: list[Outcome]
    ) -> list[Batch]:
        """The rows' messages, a batch per variant; a row whose message cannot be built goes
        to `unbuilt` (failed, with the reason) and the others go on."""
        groups: dict[Layout, list[Claimed]] = {}
        for c in claimed:
            groups.setdefault((c.sections, c.blocks, c.skip), []).append(c)
        out: list[Batch] = []
        for pair, rows in groups.items():
            batch = self.batch(self.variant(*pair), rows, when, unbuilt)
            if batch.messages:
                out.append(batch)
        return out

    def batch(
        self, v: VariantMail, rows: Sequence[Claimed], when: datetime, unbuilt: list[Outcome]
    ) -> Batch:
        """The batch of these rows of one variant; a row whose message cannot be personalised
        goes to `unbuilt` (failed, with the reason) and the others go on."""
        links = self.links
        for c in rows if v.template is not None and not v.verified else ():
            try:
                personal = links.personal(c.subscriber_id, c.email, c.name)
                subs = v.substitutions(
                    c.name, c.email, personal.unsubscribe_url, personal.preferences_url
                )
                v.verify(personalise(v.rendered, personal), subs)
                break
            except BUILD_ERRORS:
                continue  # that reader fails below; the check needs a reader who can be built
        template = v.template
        prefix, suffix = self._message_id
        messages: list[Outgoing] = []
        substitutions: list[dict[str, str]] = []
        # Per recipient: this loop is most of what a send costs the sender besides the ledger.
        for c in rows:
            try:
                unsubscribe, preferences = links.urls(c.subscriber_id)
                message_id = f"{prefix}{c.subscriber_id}{suffix}"
                to = Addressee(c.email, c.name, unsubscribe, message_id, c.id)
                if template is not None:
                    subs = v.substitutions(c.name, c.email, unsubscribe, preferences)
                    substitutions.append(subs)
                    messages.append(Outgoing(to, template))
                else:
                    personal = Personal(c.email, c.name, unsubscribe, preferences, links.view_url)
                    messages.append(Outgoing(to, personalise(v.rendered, personal)))
            except BUILD_ERRORS as e:
                unbuilt.append(unbuildable(c.id, e))
        return Batch(v.message, messages, when, template=template, substitutions=substitutions)


def one_message(
    config: Config,
    nl: NewsletterConfig,
    edition: Edition,
    rendered: RenderedVariant,
    personal: Personal,
    subscriber_id: int,
    when: datetime,
) -> bytes:
    """One reader's message as the send's batch path builds it (template + substitutions), so
    the bytes are the same; a variant whose template does not reproduce personalise() is
    built per recipient, as the send would."""
    to = Addressee(
        personal.email,
        personal.name,
        personal.unsubscribe_url,
        make_message_id(nl, edition.edition_date, subscriber_id),
    )
    message = VariantMessage(config, nl, edition.edition_date, rendered.key)
    v = VariantMail(rendered, message, personal.view_url, plain_links(config))
    subs = v.substitutions(
        personal.name, personal.email, personal.unsubscribe_url, personal.preferences_url
    )
    expected = personalise(rendered, personal)
    v.verify(expected, subs)
    if v.template is None:
        return message.mime(expected, to, when)
    return message.mime(v.template, to, when, subs)


def proof_batch(
    config: Config,
    nl: NewsletterConfig,
    edition: Edition,
    rendered: RenderedVariant,
    personal: Personal,
    address: str,
    proof_id: int,
    when: datetime,
) -> Batch:
    """The proof of one variant to one desk address: the reader's message as a send builds it
    without a template, the subject marked [PROOF], its own Message-ID, and `proof=True` (the
    X-Digest-Proof header; no ledger row for webhooks to find)."""
    mail = personalise(rendered, personal)
    content = Personalised(PROOF_PREFIX + mail.subject, mail.html, mail.text)
    message_id = (
        f"proof.{nl.id}.{edition.edition_date:%Y%m%d}.{proof_id}@{domain_of(nl.from_email)}"
    )
    to = Addressee(address, None, personal.unsubscribe_url, message_id, delivery_id=proof_id)
    message = VariantMessage(config, nl, edition.edition_date, rendered.key, proof=True)
    return Batch(message, [Outgoing(to, content)], when)
