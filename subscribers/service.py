"""Units of work on the audience: add, subscribe/confirm, unsubscribe, suppress, preferences,
forget. Each takes the caller's session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from digest.config import Config, NewsletterConfig
from digest.errors import InputError, NotFound
from digest.limits import MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE, MAX_NAME, MAX_TAG
from digest.text import line_problem
from subscribers.audience import find_subscriber, sections_for
from subscribers.models import (
    Attribute,
    Consent,
    Membership,
    SectionPreference,
    Subscriber,
    Suppression,
    Tag,
    email_hash,
    normalise_email,
)
from subscribers.tokens import CONFIRM_MAX_AGE, TokenData, make_token, read_token, site_secret

# Columns of a subscriber that are not free attributes (CSV headers, `--attr` names).
RESERVED = ("email", "name", "sections", "tags", "timezone", "status", "created", "confirmed")


def check_email(raw: str) -> str:
    """Validate the syntax (no DNS) and return the normalised address; InputError otherwise."""
    address = raw.strip()
    if not address:
        raise InputError("email is empty")
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as e:
        raise InputError(f"{address!r} is not a valid email address: {e}") from None
    return normalise_email(address)


def reach(address: str) -> str:
    """Which providers can reach an address: "any" for a plain one; "idn" for an
    internationalised domain (sent in IDNA form, so every provider reaches it); "utf8" for a
    non-ASCII mailbox name (only SMTP through a server offering SMTPUTF8, and the outbox)."""
    from digest.message import HeaderError, needs_smtputf8

    if address.isascii():
        return "any"
    try:
        return "utf8" if needs_smtputf8(address) else "idn"
    except HeaderError:
        return "any"  # not an address: whoever checks it says so


def reach_note(address: str) -> str | None:
    """A note line for an address not every provider handles alike, or None."""
    from digest.message import wire_address

    kind = reach(address)
    if kind == "utf8":
        return (
            f"note: {address} has a non-ASCII mailbox name: SMTP delivers it only through a "
            "server that offers SMTPUTF8 (otherwise that one message fails), SendGrid cannot "
            "send to it, the outbox writes it"
        )
    if kind == "idn":
        return (
            f"note: {address} has an internationalised domain: it is sent as "
            f"{wire_address(address)}, which every provider reaches"
        )
    return None


def check_line(value: str, what: str, limit: int) -> str:
    """`value` stripped, if it is one line of at most `limit` characters without control
    characters (it may end up in a header or a spreadsheet); InputError naming `what` else."""
    problem = line_problem(value)
    if problem:
        raise InputError(f"{what} {problem}")
    value = value.strip()
    if len(value) > limit:
        raise InputError(f"{what} is longer than {limit} characters")
    return value


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
        raise InputError(f"{tz!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
    return tz


def canonical_sections(newsletter: NewsletterConfig, sections: Sequence[str]) -> list[str]:
    """The newsletter's own spelling of each named section, in the given order, once each."""
    out: list[str] = []
    for raw in sections:
        section = newsletter.section(raw.strip())
        if section is None:
            known = ", ".join(newsletter.section_names)
            raise InputError(f"{newsletter.id} has no section {raw.strip()!r} (sections: {known})")
        if section.name not in out:
            out.append(section.name)
    return out


def suppression_for(session: Session, email: str) -> Suppression | None:
    return session.scalar(
        select(Suppression).where(Suppression.email_hash == email_hash(normalise_email(email)))
    )


def _refuse_suppressed(session: Session, email: str) -> None:
    hit = suppression_for(session, email)
    if hit is not None:
        raise InputError(
            f"{email} is on the suppression list ({hit.reason}, {hit.created_at:%Y-%m-%d}); "
            "suppressed addresses are never added back"
        )


def _membership(sub: Subscriber, newsletter: str) -> Membership:
    m = sub.membership(newsletter)
    if m is None:
        raise NotFound(f"{sub.email} is not on the {newsletter} list")
    return m


def _set_details(
    session: Session,
    sub: Subscriber,
    newsletter: NewsletterConfig,
    *,
    name: str | None,
    attributes: Mapping[str, str],
    tags: Sequence[str],
    sections: Sequence[str],
    timezone: str | None,
) -> None:
    if name:
        sub.name = check_line(name, "name", MAX_NAME) or sub.name
    if timezone:
        sub.timezone = check_timezone(timezone)
    current = {a.name: a for a in sub.attributes}
    for key, value in attributes.items():
        key = check_line(key, "attribute name", MAX_ATTRIBUTE_NAME).lower()
        if key in RESERVED or not key:
            raise InputError(f"{key!r} cannot be used as an attribute name")
        value = check_line(value, f"attribute {key}", MAX_ATTRIBUTE_VALUE)
        if key in current:
            current[key].value = value
        else:
            sub.attributes.append(Attribute(name=key, value=value))
    have = {t.tag for t in sub.tags}
    for tag in tags:
        tag = check_line(tag, "tag", MAX_TAG).lower()
        if tag and tag not in have:
            sub.tags.append(Tag(tag=tag))
            have.add(tag)
    if sections:
        _store_sections(session, sub.id, newsletter, canonical_sections(newsletter, sections))


def _store_sections(
    session: Session, subscriber_id: int, newsletter: NewsletterConfig, sections: Sequence[str]
) -> None:
    session.execute(
        delete(SectionPreference).where(
            SectionPreference.subscriber_id == subscriber_id,
            SectionPreference.newsletter == newsletter.id,
        )
    )
    if list(sections) == list(newsletter.section_names):
        return  # the default needs no rows, and keeps following the newsletter's sections
    session.add_all(
        SectionPreference(
            subscriber_id=subscriber_id, newsletter=newsletter.id, section=s, position=i
        )
        for i, s in enumerate(sections)
    )


def add_subscriber(
    session: Session,
    newsletter: NewsletterConfig,
    email: str,
    *,
    at: datetime,
    name: str | None = None,
    attributes: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
    sections: Sequence[str] = (),
    timezone: str | None = None,
    source: str = "admin",
) -> Subscriber:
    """Put someone on a list as active (an operator vouching for consent). Refuses suppressed
    addresses and people who unsubscribed: only they can sign up again (`subscribe`)."""
    address = check_email(email)
    _refuse_suppressed(session, address)
    sub = session.scalar(select(Subscriber).where(Subscriber.email == address))
    if sub is None:
        sub = Subscriber(
            email=address,
            email_hash=email_hash(address),
            status="active",
            created_at=at,
            confirmed_at=at,
            source=source,
        )
        session.add(sub)
        session.flush()
    elif sub.status != "active" and sub.status != "pending":
        raise InputError(
            f"{address} is {sub.status}; only they can subscribe again "
            "(digest subscribers subscribe sends a confirmation)"
        )
    m = sub.membership(newsletter.id)
    if m is not None and m.status == "unsubscribed":
        raise InputError(
            f"{address} unsubscribed from {newsletter.id}; only they can subscribe again"
        )
    if m is None:
        sub.memberships.append(
            Membership(
                newsletter=newsletter.id,
                status="active",
                paused=False,
                joined_at=at,
                confirmed_at=at,
            )
        )
    else:
        m.status, m.confirmed_at = "active", m.confirmed_at or at
    sub.status = "active"
    sub.confirmed_at = sub.confirmed_at or at
    _set_details(
        session,
        sub,
        newsletter,
        name=name,
        attributes=attributes or {},
        tags=tags,
        sections=sections,
        timezone=timezone,
    )
    session.add(
        Consent(
            subscriber_id=sub.id, newsletter=newsletter.id, method="admin", detail=source, at=at
        )
    )
    session.flush()
    return sub


@dataclass(frozen=True)
class Subscription:
    subscriber_id: int
    email: str
    newsletter: str
    status: str  # "pending" (confirmation needed) or "active"
    confirm_token: str | None
    confirm_url: str | None


def subscribe(
    session: Session,
    config: Config,
    newsletter: NewsletterConfig,
    email: str,
    *,
    at: datetime,
    name: str | None = None,
    source: str = "signup",
) -> Subscription:
    """A person signs up. With double opt-in the membership stays pending until `confirm`
    (the returned link goes in the confirmation email); without it they are active at once.
    Signing up again after unsubscribing is allowed (it is their own request)."""
    address = check_email(email)
    if name:
        name = check_line(name, "name", MAX_NAME) or None
    _refuse_suppressed(session, address)
    sub = session.scalar(select(Subscriber).where(Subscriber.email == address))
    pending = newsletter.double_opt_in
    if sub is None:
        sub = Subscriber(
            email=address,
            email_hash=email_hash(address),
            name=name,
            status="pending" if pending else "active",
            created_at=at,
            confirmed_at=None if pending else at,
            source=source,
        )
        session.add(sub)
        session.flush()
    else:
        if name:
            sub.name = name
        if sub.status in ("bounced", "complained"):
            raise InputError(
                f"{address} is {sub.status}: mail to it does not arrive or is unwanted"
            )
    m = sub.membership(newsletter.id)
    if m is not None and m.status == "active":
        return Subscription(sub.id, address, newsletter.id, "active", None, None)
    if m is None:
        m = Membership(newsletter=newsletter.id, paused=False, joined_at=at)
        sub.memberships.append(m)
    m.status = "pending" if pending else "active"
    m.unsubscribed_at = m.unsubscribe_reason = None
    token = url = None
    if pending:
        token = make_token(site_secret(config), sub.id, newsletter.id, "confirm", issued_at=at)
        url = f"{config.site.base_url}/confirm/{token}"
    else:
        m.confirmed_at = at
        sub.status, sub.unsubscribed_at = "active", None
        sub.confirmed_at = sub.confirmed_at or at
        session.add(
            Consent(
                subscriber_id=sub.id,
                newsletter=newsletter.id,
                method="signup",
                detail=source,
                at=at,
            )
        )
    session.flush()
    return Subscription(sub.id, address, newsletter.id, m.status, token, url)


def confirmation_expired(data: TokenData, at: datetime) -> bool:
    return data.issued_at is not None and at - data.issued_at > CONFIRM_MAX_AGE


def confirm(session: Session, config: Config, token: str, *, at: datetime) -> Subscription:
    """Double opt-in: the link from the confirmation email activates the membership."""
    data = read_token(site_secret(config), token, "confirm")
    if confirmation_expired(data, at):
        raise InputError(
            f"this confirmation link expired ({CONFIRM_MAX_AGE.days} days); subscribe again"
        )
    sub = find_subscriber(session, data.subscriber_id)
    m = _membership(sub, data.newsletter)
    if m.status == "pending":
        m.status, m.confirmed_at = "active", at
        if sub.status in ("pending", "unsubscribed"):
            sub.status, sub.unsubscribed_at = "active", None
        sub.confirmed_at = sub.confirmed_at or at
        session.add(
            Consent(
                subscriber_id=sub.id,
                newsletter=data.newsletter,
                method="double_opt_in",
                detail="confirmation link",
                at=at,
            )
        )
        session.flush()
    return Subscription(sub.id, sub.email, data.newsletter, m.status, None, None)


def unsubscribe(
    session: Session,
    subscriber_id: int,
    newsletter: str | None,
    *,
    reason: str,
    at: datetime,
) -> bool:
    """Take someone off one newsletter (or every one when `newsletter` is None). Returns False
    when there was nothing to do. With no active list left, the subscriber is unsubscribed."""
    sub = find_subscriber(session, subscriber_id)
    targets = sub.memberships if newsletter is None else [_membership(sub, newsletter)]
    changed = False
    for m in targets:
        if m.status != "unsubscribed":
            m.status, m.unsubscribed_at, m.unsubscribe_reason = "unsubscribed", at, reason[:200]
            changed = True
    if all(m.status == "unsubscribed" for m in sub.memberships) and sub.status in (
        "active",
        "pending",
    ):
        sub.status, sub.unsubscribed_at = "unsubscribed", at
        changed = True
    session.flush()
    return changed


def suppress(
    session: Session, email: str, reason: str, at: datetime, *, detail: str | None = None
) -> Suppression:
    """Never send to this address again (bounce, complaint, operator). A bounce or complaint
    also marks the subscriber's status, so lists and exports show why. `detail` (a bounce's
    diagnostic) is kept after the reason: `bounced: 5.1.1 ... User unknown`."""
    address = normalise_email(email)
    hashed = email_hash(address)
    row = session.scalar(select(Suppression).where(Suppression.email_hash == hashed))
    if row is None:
        stored = f"{reason}: {detail}" if detail else reason
        row = Suppression(email_hash=hashed, email=address, reason=stored[:200], created_at=at)
        session.add(row)
    sub = session.scalar(select(Subscriber).where(Subscriber.email_hash == hashed))
    if sub is not None and reason in ("bounced", "complained"):
        sub.status = reason
    session.flush()
    return row


def set_preferences(
    session: Session,
    subscriber_id: int,
    newsletter: NewsletterConfig,
    sections: Sequence[str] | None,
    paused: bool | None = None,
) -> tuple[str, ...]:
    """Choose sections (in order; None keeps them) and pause/resume (None keeps it).
    Returns the sections the subscriber now gets. An empty choice is refused: pause instead."""
    sub = find_subscriber(session, subscriber_id)
    m = _membership(sub, newsletter.id)
    if sections is not None:
        chosen = canonical_sections(newsletter, sections)
        if not chosen:
            raise InputError("choose at least one section, or pause the newsletter instead")
        _store_sections(session, sub.id, newsletter, chosen)
    if paused is not None:
        m.paused = paused
    session.flush()
    return sections_for(session, newsletter, [sub.id])[sub.id]


def forget(session: Session, email: str, *, at: datetime) -> bool:
    """Right to erasure: delete the subscriber and everything about them, and keep only a
    one-way hash of the address on the suppression list so no import can bring it back.
    Returns whether a subscriber existed."""
    address = normalise_email(email)
    hashed = email_hash(address)
    sub = session.scalar(select(Subscriber).where(Subscriber.email_hash == hashed))
    if sub is not None:
        # The delivery ledger keeps its audit rows but must not keep the address either.
        from digest.ledger import erase_recipient

        erase_recipient(session, sub.id, f"erased-{hashed[:16]}", at)
        session.delete(sub)
    from digest.bounces.models import BounceEvent

    # Bounce diagnostics quote the address: they go too (the suppression keeps the hash).
    session.execute(delete(BounceEvent).where(BounceEvent.email_hash == hashed))
    row = session.scalar(select(Suppression).where(Suppression.email_hash == hashed))
    if row is None:
        session.add(Suppression(email_hash=hashed, email=None, reason="forgotten", created_at=at))
    else:
        row.email, row.reason = None, "forgotten"
    session.flush()
    return sub is not None


def remove(session: Session, email: str) -> None:
    """Delete a subscriber record outright (a mistake, a test address). Unlike `forget` it
    leaves no suppression, so the address may be added again."""
    session.delete(find_subscriber(session, email))
    session.flush()


def list_subscribers(
    session: Session,
    *,
    newsletter: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[Subscriber]:
    q = select(Subscriber).order_by(Subscriber.id)
    if newsletter is not None:
        q = q.join(Membership).where(Membership.newsletter == newsletter)
        if status is not None:
            q = q.where(Membership.status == status)
    elif status is not None:
        q = q.where(Subscriber.status == status)
    if limit is not None:
        q = q.limit(limit)
    return list(session.scalars(q))


def describe_subscriber(session: Session, config: Config, sub: Subscriber) -> list[str]:
    """Everything stored about one subscriber, as lines for `subscribers show`."""
    lines = [
        f"{sub.email} (id {sub.id})",
        f"  name:         {sub.name or '-'}",
        f"  status:       {sub.status}",
        f"  timezone:     {sub.timezone or '-'}",
        f"  source:       {sub.source or '-'}",
        f"  created:      {sub.created_at:%Y-%m-%d %H:%M}Z",
        f"  confirmed:    {f'{sub.confirmed_at:%Y-%m-%d %H:%M}Z' if sub.confirmed_at else '-'}",
        f"  tags:         {', '.join(sub.tag_names()) or '-'}",
    ]
    for key, value in sorted(sub.attribute_map().items()):
        lines.append(f"  {key + ':':<13} {value}")
    for m in sorted(sub.memberships, key=lambda m: m.newsletter):
        state = m.status + (", paused" if m.paused else "")
        nl = config.newsletters.get(m.newsletter)
        sections = ", ".join(sections_for(session, nl, [sub.id])[sub.id]) if nl else "?"
        lines.append(f"  list {m.newsletter}: {state}; sections: {sections}")
    consents = session.scalars(
        select(Consent).where(Consent.subscriber_id == sub.id).order_by(Consent.at, Consent.id)
    )
    for c in consents:
        lines.append(f"  consent {c.newsletter}: {c.method} at {c.at:%Y-%m-%d %H:%M}Z ({c.detail})")
    hit = suppression_for(session, sub.email)
    if hit is not None:
        lines.append(f"  SUPPRESSED: {hit.reason} since {hit.created_at:%Y-%m-%d}")
    return lines
