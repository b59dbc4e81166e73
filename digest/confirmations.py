"""Double opt-in: a person signs up, gets one confirmation email through the newsletter's
provider, and joins the list when they press the button behind its link (digest.web,
/confirm/<token>; the link expires after subscribers.tokens.CONFIRM_MAX_AGE).

The pending subscription is committed before the email leaves: when the provider fails, the
person stays pending and signing up again sends a fresh link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config, NewsletterConfig
from digest.db import transaction
from digest.errors import ProviderError
from digest.message import Addressee, TransactionalMessage, domain_of
from digest.providers.base import Batch, Kind, Outgoing, Provider, no_checkpoint
from digest.render import Personalised, render_template, template_environment
from digest.sending import make_provider
from subscribers.service import Subscription, subscribe
from subscribers.tokens import CONFIRM_MAX_AGE

PURPOSE = "confirm"


@dataclass(frozen=True)
class SignUp:
    subscription: Subscription
    sent_via: str | None  # the provider that took the confirmation email; None if none was sent


def confirmation_letter(
    config: Config, newsletter: NewsletterConfig, confirm_url: str
) -> Personalised:
    """The confirmation email from templates/confirm.txt and confirm.html (overridable in
    templates_dir like every template)."""
    env = template_environment(config.templates_dir)
    context = {
        "newsletter": newsletter,
        "site": config.site,
        "confirm_url": confirm_url,
        "days": CONFIRM_MAX_AGE.days,
    }
    return Personalised(
        subject=f"Confirm your subscription to {newsletter.title}",
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
    batch = Batch(TransactionalMessage(newsletter, PURPOSE), [Outgoing(to, letter)], at)
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
