"""Proofs: the exact stored edition, sent to the desk's own addresses before it goes out.

A proof is rendered by the same Renderer and built by the same message builder as the send
(digest.outgoing.proof_batch, over digest.message.VariantMessage), and goes out through the newsletter's provider; only the
subject says `[PROOF]`, the message carries `X-Digest-Proof: yes`, and the personal links are
the preview ones (`/u/preview`), so a desk member who clicks Unsubscribe unsubscribes nobody.
Proofs are recorded in their own table, never in the readers' ledger, and never freeze the
edition: the draft can still be changed (and proofed again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from digest.articles import UTCDateTime
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.db import Base, transaction
from digest.editions import Edition, load_edition
from digest.errors import InputError, ProviderError
from digest.outgoing import proof_batch
from digest.preview import audience_variants, chosen_reader, sample_personal
from digest.providers.base import Kind, Provider, no_checkpoint
from digest.render import Personal, RenderedVariant, Renderer, check_size
from subscribers.audience import Recipient
from subscribers.service import check_email

MAX_ADDRESSES = 20  # the desk, not a list: a proof is no way round the ledger


class Proof(Base):
    """One proof message: one variant to one desk address."""

    __tablename__ = "proofs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), index=True
    )
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_by: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320))
    variant: Mapped[str] = mapped_column(String(40))
    label: Mapped[str] = mapped_column(Text)  # the variant's sections, as the desk reads them
    provider: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(12))  # pending, sent, failed
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)


@dataclass
class ProofReport:
    newsletter: str
    edition_date: date
    provider: str
    lines: list[str] = field(default_factory=list)
    sent: int = 0
    failed: int = 0

    def summary(self) -> str:
        head = (
            f"proof of {self.newsletter} {self.edition_date} via {self.provider}: "
            f"{self.sent} sent, {self.failed} failed (the readers' ledger is untouched)"
        )
        return "\n".join([*self.lines, head])


def proofs_of(session: Session, edition_id: int) -> list[Proof]:
    return list(
        session.scalars(select(Proof).where(Proof.edition_id == edition_id).order_by(Proof.id))
    )


def proof_addresses(newsletter: NewsletterConfig, given: Sequence[str]) -> list[str]:
    """The addresses to proof to: `given` (comma-separated allowed), else the newsletter's
    `proof_to`; each checked, each once."""
    raw = [a for g in given for a in g.split(",") if a.strip()] or list(newsletter.proof_to)
    if not raw:
        raise InputError(
            f"no proof address: pass --to desk@example.com or set newsletters.{newsletter.id}"
            ".proof_to in the config"
        )
    out: list[str] = []
    for a in raw:
        address = check_email(a)
        if address not in out:
            out.append(address)
    if len(out) > MAX_ADDRESSES:
        raise InputError(f"{len(out)} proof addresses; at most {MAX_ADDRESSES} (the desk's own)")
    return out


@dataclass(frozen=True)
class _Variant:
    rendered: RenderedVariant
    reader: Recipient | None
    label: str


def _variants(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    renderer: Renderer,
    segment: str | None,
    subscriber: str | None,
) -> list[_Variant]:
    """Every variant the audience gets (the whole edition when nobody is subscribed yet), or
    the one of `subscriber` / of the first member of `segment`."""
    who = chosen_reader(session, config, newsletter, segment=segment, subscriber=subscriber)
    if who is not None:
        pairs = [(who.sections, who.blocks)]
    else:
        pairs = [
            (v.sections, v.blocks) for v in audience_variants(session, config, newsletter, renderer)
        ]
        pairs = pairs or [((), ())]
    out: list[_Variant] = []
    seen: set[str] = set()
    for sections, blocks in pairs:
        rendered = renderer.variant(sections, blocks)
        if rendered.key in seen:
            continue
        seen.add(rendered.key)
        check_size(rendered)  # what the send would refuse, the proof refuses too
        label = ", ".join(rendered.sections) + "".join(
            f" + block for {newsletter.blocks[b].segment}" for b in rendered.blocks
        )
        out.append(_Variant(rendered, who, label))
    return out


def send_proof(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter: NewsletterConfig,
    edition_date: date,
    to: Sequence[str],
    *,
    by: str,
    clock: Clock,
    segment: str | None = None,
    subscriber: str | None = None,
    provider: Provider | None = None,
    provider_name: str | None = None,
) -> ProofReport:
    """Send each chosen variant of the stored edition to each address. Rows are recorded
    (pending) before the provider is called and settled after, one transaction each."""
    addresses = proof_addresses(newsletter, to)
    own = provider is None
    if provider is None:
        provider = make_proof_provider(config, newsletter, provider_name or newsletter.provider)
    report = ProofReport(newsletter.id, edition_date, provider.name)
    try:
        with transaction(sessions) as session:
            edition = load_edition(session, newsletter.id, edition_date)
            renderer = Renderer(config, newsletter, edition)
            variants = _variants(session, config, newsletter, renderer, segment, subscriber)
            rows = [
                (v, address, _record(session, edition, v, address, by, provider.name, clock))
                for v in variants
                for address in addresses
            ]
        for v, address, proof_id in rows:
            _deliver(
                config, sessions, newsletter, edition, v, address, proof_id, provider, clock, report
            )
    finally:
        if own:
            provider.close()
    if report.sent == 0 and report.failed:
        raise ProviderError(
            f"no proof of {newsletter.id} {edition_date} went out: "
            + "; ".join(line.strip() for line in report.lines if "failed" in line)
        )
    return report


def make_proof_provider(config: Config, newsletter: NewsletterConfig, name: str) -> Provider:
    """The newsletter's provider; the outbox writes proofs to its own `proofs/` folder."""
    from digest.providers import make_provider

    if name == "outbox":
        from digest.providers.outbox import OutboxProvider

        return OutboxProvider(config.outbox.dir / "proofs", config.outbox.rate)
    return make_provider(config, name, newsletter)


def _record(
    session: Session,
    edition: Edition,
    v: _Variant,
    address: str,
    by: str,
    provider: str,
    clock: Clock,
) -> int:
    proof = Proof(
        edition_id=edition.id,
        sent_at=clock(),
        sent_by=by,
        email=address,
        variant=v.rendered.key,
        label=v.label,
        provider=provider,
        state="pending",
    )
    session.add(proof)
    session.flush()
    return proof.id


def _deliver(
    config: Config,
    sessions: sessionmaker[Session],
    nl: NewsletterConfig,
    edition: Edition,
    v: _Variant,
    address: str,
    proof_id: int,
    provider: Provider,
    clock: Clock,
    report: ProofReport,
) -> None:
    sample = sample_personal(config, nl, edition)
    reader = v.reader
    # A reader's proof shows their name and address as they will see them; the links stay
    # the preview ones.
    personal = Personal(
        email=reader.email if reader is not None else address,
        name=reader.name if reader is not None else None,
        unsubscribe_url=sample.unsubscribe_url,
        preferences_url=sample.preferences_url,
        view_url=sample.view_url,
    )
    batch = proof_batch(config, nl, edition, v.rendered, personal, address, proof_id, clock())
    provider_id: str | None = None
    try:
        (outcome,) = provider.send(batch, no_checkpoint)
    except ProviderError as e:
        ok, error = False, str(e)
    else:
        ok, provider_id = outcome.kind is Kind.ACCEPTED, outcome.provider_id
        error = outcome.error or str(outcome.kind)
    with transaction(sessions) as session:
        proof = session.get(Proof, proof_id)
        assert proof is not None
        proof.state = "sent" if ok else "failed"
        proof.provider_message_id = provider_id
        proof.error = None if ok else error
    if ok:
        report.sent += 1
        report.lines.append(f"  sent to {address}: {v.label}")
    else:
        report.failed += 1
        report.lines.append(f"  failed to {address}: {v.label}: {proof.error}")
