"""Double opt-in: a person signs up, gets one confirmation email through the newsletter's
provider, and joins the list when they press the button behind its link (digest.web,
/confirm/<token>; the link expires after subscribers.tokens.CONFIRM_MAX_AGE).

The pending subscription is committed before the email leaves: when the provider fails, the
person stays pending and signing up again sends a fresh link.

Sign-ups from the public web form do not send anything inside the request: the form writes one
`SignupRequest` row (the same work for every address, so neither the answer nor its timing
tells whether the address is known or the provider is up), and `deliver_sign_ups` — run by
`digest serve`'s background `ConfirmationSender` or `digest subscribers send-confirmations` —
subscribes each queued address and emails its link, retrying while the provider is down.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from digest import i18n
from digest.config import Config, NewsletterConfig
from digest.db import transaction
from digest.errors import DigestError, InputError, ProviderError
from digest.i18n import N_
from digest.message import Addressee, TransactionalMessage, domain_of
from digest.providers import make_provider
from digest.providers.base import Batch, Kind, Outgoing, Provider, no_checkpoint
from digest.render import Personalised, render_template, rtl_line, template_environment
from digest.web_models import SignupRequest
from subscribers.models import normalise_email
from subscribers.service import Subscription, subscribe
from subscribers.tokens import CONFIRM_MAX_AGE

log = logging.getLogger(__name__)

PURPOSE = "confirm"
_SUBJECT = N_("Confirm your subscription to %(title)s")


@dataclass(frozen=True)
class SignUp:
    subscription: Subscription
    sent_via: str | None  # the provider that took the confirmation email; None if none was sent


def confirmation_letter(
    config: Config, newsletter: NewsletterConfig, confirm_url: str
) -> Personalised:
    """The confirmation email from templates/confirm.txt and confirm.html (overridable in
    templates_dir like every template)."""
    language = newsletter.lang
    translations = i18n.translations(language, config.locales_dir)
    env = template_environment(config.templates_dir, translations)
    context = {
        "newsletter": newsletter,
        "site": config.site,
        "confirm_url": confirm_url,
        "days": CONFIRM_MAX_AGE.days,
        "lang": language.tag,
        "dir": language.dir,
        "title_html": Markup("<strong>%s</strong>") % newsletter.title,
    }
    subject = translations.gettext(_SUBJECT) % {"title": newsletter.title}
    return Personalised(
        subject=rtl_line(subject) if language.rtl else subject,
        text=render_template(env, "confirm.txt", context),
        html=render_template(env, "confirm.html", context),
    )


def send_confirmation(
    config: Config,
    newsletter: NewsletterConfig,
    subscription: Subscription,
    provider: Provider,
    *,
    at: datetime,
) -> None:
    """Hand the confirmation email to the provider; ProviderError unless it was accepted."""
    if subscription.confirm_url is None:
        raise ValueError("only a pending subscription has a confirmation link")
    address = subscription.email
    to = Addressee(
        email=address,
        name=None,
        unsubscribe_url="",  # not bulk mail: no List-Unsubscribe
        # Unique per sending: a resent confirmation must not be deduplicated as a copy.
        message_id=f"{PURPOSE}.{newsletter.id}.{subscription.subscriber_id}."
        f"{int(at.timestamp())}@{domain_of(newsletter.from_email)}",
        delivery_id=subscription.subscriber_id,
    )
    letter = confirmation_letter(config, newsletter, subscription.confirm_url)
    batch = Batch(TransactionalMessage(config, newsletter, PURPOSE), [Outgoing(to, letter)], at)
    (outcome,) = provider.send(batch, no_checkpoint)
    if outcome.kind is not Kind.ACCEPTED:
        raise ProviderError(
            f"{provider.name} did not take the confirmation email to {address} "
            f"({outcome.error or outcome.kind}); {address} stays pending: run "
            f"`digest subscribers subscribe {address} -n {newsletter.id}` again to resend it"
        )


def sign_up(
    config: Config,
    sessions: sessionmaker[Session],
    newsletter: NewsletterConfig,
    email: str,
    *,
    at: datetime,
    name: str | None = None,
    source: str = "signup",
    send_email: bool = True,
    provider: Provider | None = None,
) -> SignUp:
    """Subscribe `email` (subscribers.service.subscribe) and, when the newsletter uses double
    opt-in, email the confirmation link through `provider` (default: the newsletter's).
    With send_email=False the link is only returned, for the caller to pass on."""
    own = None
    if provider is None and send_email and newsletter.double_opt_in:
        # Before any change: a provider that cannot even be set up leaves nothing pending.
        provider = own = make_provider(config, newsletter.provider, newsletter)
    try:
        with transaction(sessions) as session:
            subscription = subscribe(
                session, config, newsletter, email, at=at, name=name, source=source
            )
        if subscription.status != "pending" or not send_email or provider is None:
            return SignUp(subscription, None)
        send_confirmation(config, newsletter, subscription, provider, at=at)
        return SignUp(subscription, provider.name)
    finally:
        if own is not None:
            own.close()


# --- sign-ups from the public form: queued, then sent outside the request ---------------------

CONFIRM_COOLDOWN = timedelta(minutes=10)  # one confirmation email per address per newsletter
GIVE_UP_AFTER = timedelta(hours=24)  # a provider down that long: the sign-up is dropped
_LEASE = timedelta(minutes=10)  # a sender that died holding rows gives them back after this
_RETRY_BASE = timedelta(minutes=1)
_RETRY_CAP = timedelta(hours=1)


def queue_sign_up(
    session: Session, newsletter: NewsletterConfig, email: str, name: str | None, *, at: datetime
) -> None:
    """Record a sign-up from the public form in the caller's transaction (email already
    syntax-checked, name already cleaned). Reads nothing: the same work for any address."""
    session.add(
        SignupRequest(
            newsletter=newsletter.id,
            email=normalise_email(email),
            name=name,
            requested_at=at,
            attempts=0,
            next_attempt_at=at,
        )
    )


@dataclass
class SignUpDelivery:
    """What one pass of deliver_sign_ups did (counts only: addresses are never reported)."""

    sent: int = 0
    skipped: int = 0  # already active, suppressed, or a link went out within the cooldown
    retrying: int = 0  # the provider failed; tried again later
    dropped: int = 0  # the provider failed for longer than GIVE_UP_AFTER

    def summary(self) -> str:
        return (
            f"confirmations: {self.sent} sent, {self.skipped} skipped, "
            f"{self.retrying} to retry, {self.dropped} dropped"
        )


@dataclass
class _Group:
    """The queued requests of one address for one newsletter, handled as one."""

    ids: list[int] = field(default_factory=list)
    name: str | None = None
    attempts: int = 0
    requested_at: datetime | None = None


def deliver_sign_ups(
    config: Config,
    sessions: sessionmaker[Session],
    *,
    clock: Callable[[], datetime],
    lock: AbstractContextManager[Any] | None = None,
    limit: int = 200,
    provider: Provider | None = None,
) -> SignUpDelivery:
    """Subscribe each queued address (always double opt-in) and email its confirmation link
    through the newsletter's provider (or `provider`). `lock` serialises the writes with a web
    server in the same process (SQLite). Several senders may run at once (PostgreSQL: rows
    are claimed with SKIP LOCKED)."""
    guard = lock or nullcontext()
    now = clock()
    report = SignUpDelivery()
    groups, recent = _claim(sessions, guard, now, limit)
    providers: dict[str, Provider] = {}
    try:
        for (newsletter_id, email), group in groups.items():
            nl = config.newsletters.get(newsletter_id)
            if nl is None or (newsletter_id, email) in recent:
                _finish(sessions, guard, group.ids, None)
                report.skipped += 1
                continue
            try:
                sent = _confirm_one(config, sessions, guard, nl, email, group, now, providers)
            except DigestError as e:
                _retry_later(sessions, guard, group, now, e, report)
                continue
            _finish(sessions, guard, group.ids, now if sent else None)
            if sent:
                report.sent += 1
            else:
                report.skipped += 1
    finally:
        for p in providers.values():
            if p is not provider:
                p.close()
    return report


def _claim(
    sessions: sessionmaker[Session],
    guard: AbstractContextManager[Any],
    now: datetime,
    limit: int,
) -> tuple[dict[tuple[str, str], _Group], set[tuple[str, str]]]:
    """Lease the due requests (grouped by address) and find addresses mailed recently."""
    with guard, transaction(sessions) as session:
        session.execute(
            delete(SignupRequest).where(
                SignupRequest.sent_at.is_not(None),
                SignupRequest.sent_at < now - CONFIRM_COOLDOWN,
            )
        )
        rows = list(
            session.scalars(
                select(SignupRequest)
                .where(SignupRequest.sent_at.is_(None), SignupRequest.next_attempt_at <= now)
                .order_by(SignupRequest.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        groups: dict[tuple[str, str], _Group] = {}
        for row in rows:
            row.next_attempt_at = now + _LEASE
            group = groups.setdefault((row.newsletter, row.email), _Group())
            group.ids.append(row.id)
            group.name = row.name or group.name
            group.attempts = max(group.attempts, row.attempts)
            group.requested_at = min(group.requested_at or row.requested_at, row.requested_at)
        emails = {email for _, email in groups}
        recent = {
            (nl, email)
            for nl, email in session.execute(
                select(SignupRequest.newsletter, SignupRequest.email).where(
                    SignupRequest.email.in_(emails), SignupRequest.sent_at.is_not(None)
                )
            )
        }
    return groups, recent


def _confirm_one(
    config: Config,
    sessions: sessionmaker[Session],
    guard: AbstractContextManager[Any],
    nl: NewsletterConfig,
    email: str,
    group: _Group,
    now: datetime,
    providers: dict[str, Provider],
) -> bool:
    """Subscribe as pending and send the link; False when there is nothing to send."""
    try:
        with guard, transaction(sessions) as session:
            # Always double opt-in: a public form cannot prove who typed the address.
            subscription = subscribe(
                session,
                config,
                replace(nl, double_opt_in=True),
                email,
                at=now,
                name=group.name,
                source="web",
            )
    except InputError:
        return False  # suppressed, bounced or complained: silently nothing
    if subscription.status != "pending":
        return False  # already active
    provider = providers.get(nl.id)
    if provider is None:
        provider = providers[nl.id] = make_provider(config, nl.provider, nl)
    send_confirmation(config, nl, subscription, provider, at=now)
    return True


def _finish(
    sessions: sessionmaker[Session],
    guard: AbstractContextManager[Any],
    ids: list[int],
    sent_at: datetime | None,
) -> None:
    """Delete handled requests; when an email went out, keep one as the cooldown's mark."""
    keep = ids[:1] if sent_at is not None else []
    with guard, transaction(sessions) as session:
        if keep:
            session.execute(
                update(SignupRequest)
                .where(SignupRequest.id.in_(keep))
                .values(sent_at=sent_at, name=None, last_error=None)
            )
        session.execute(delete(SignupRequest).where(SignupRequest.id.in_(ids[len(keep) :])))


def _retry_later(
    sessions: sessionmaker[Session],
    guard: AbstractContextManager[Any],
    group: _Group,
    now: datetime,
    error: DigestError,
    report: SignUpDelivery,
) -> None:
    started = group.requested_at or now
    if now - started >= GIVE_UP_AFTER:
        _finish(sessions, guard, group.ids, None)
        report.dropped += 1
        log.warning("web signup dropped after %s of provider failures", GIVE_UP_AFTER)
        return
    attempts = group.attempts + 1
    delay = min(_RETRY_CAP, _RETRY_BASE * 2 ** (attempts - 1))
    # The provider's message names the address: only its kind is kept and logged.
    reason = type(error).__name__
    with guard, transaction(sessions) as session:
        session.execute(
            update(SignupRequest)
            .where(SignupRequest.id.in_(group.ids))
            .values(attempts=attempts, next_attempt_at=now + delay, last_error=reason)
        )
    report.retrying += 1
    log.warning("web signup: confirmation email failed (%s); retrying in %s", reason, delay)


class ConfirmationSender:
    """deliver_sign_ups every `interval` seconds in a daemon thread of this process.

    The thread is started on first use in each process (`ensure_running`), so a WSGI server
    that forks its workers after loading the app still has one sender per worker. It runs on a
    fixed beat rather than being woken by each sign-up, so the work it does for a new address
    is not tied to that request's moment."""

    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        *,
        clock: Callable[[], datetime],
        lock: AbstractContextManager[Any] | None = None,
        interval: float = 5.0,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.clock = clock
        self.lock = lock
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._start_lock = threading.Lock()

    def ensure_running(self) -> None:
        with self._start_lock:
            if self.running:
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="digest-confirmations", daemon=True
            )
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> SignUpDelivery | None:
        try:
            return deliver_sign_ups(self.config, self.sessions, clock=self.clock, lock=self.lock)
        except Exception as e:  # a background thread must outlive a bad moment of the database
            # Only the kind: a driver's message may quote the address it was storing.
            log.error(
                "confirmation sender: %s; trying again in %g s", type(e).__name__, self.interval
            )
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()
