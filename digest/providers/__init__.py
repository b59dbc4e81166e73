"""The providers digest can send through: the one list of them (config, the CLI's --provider
choices, the send, proofs and doctor all read REGISTRY), each with its factory and where its
credentials come from. Importing this package is cheap: a provider's module (and its
library: sendgrid, smtplib) loads only when one is made.

    with make_provider(config, "smtp", newsletter) as provider:
        provider.send(batch, checkpoint)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from digest.config import Config, NewsletterConfig
    from digest.providers.base import Provider


class ProviderEntry(NamedTuple):  # a NamedTuple: `digest send --help` pays no dataclasses
    name: str
    factory: Callable[[Config, NewsletterConfig], Provider]
    credentials: Callable[[Config], str]  # what to check when the provider refuses them


def _outbox(config: Config, newsletter: NewsletterConfig) -> Provider:
    from digest.providers.outbox import OutboxProvider

    return OutboxProvider(config.outbox.dir, config.outbox.rate)


def _smtp(config: Config, newsletter: NewsletterConfig) -> Provider:
    from digest.providers.smtp import SmtpProvider

    return SmtpProvider(config.smtp, config.bounces.return_path or newsletter.from_email)


def _sendgrid(config: Config, newsletter: NewsletterConfig) -> Provider:
    from digest.providers.sendgrid import SendGridProvider

    return SendGridProvider(config.sendgrid)


def _smtp_credentials(config: Config) -> str:
    return (
        f"providers.smtp.username and ${config.smtp.password_env} "
        f"for {config.smtp.host}:{config.smtp.port}"
    )


REGISTRY: dict[str, ProviderEntry] = {
    e.name: e
    for e in (
        ProviderEntry("outbox", _outbox, lambda config: "the provider's credentials"),
        ProviderEntry("smtp", _smtp, _smtp_credentials),
        ProviderEntry(
            "sendgrid", _sendgrid, lambda config: f"the API key in ${config.sendgrid.api_key_env}"
        ),
    )
}
NAMES = tuple(REGISTRY)


def _entry(name: str) -> ProviderEntry:
    entry = REGISTRY.get(name)
    if entry is None:
        from digest.errors import InputError

        raise InputError(f"unknown provider {name!r} (choose {', '.join(NAMES)})")
    return entry


def make_provider(config: Config, name: str, newsletter: NewsletterConfig) -> Provider:
    """The named provider, configured; a context manager that closes it."""
    return _entry(name).factory(config, newsletter)


def credentials_hint(config: Config, name: str) -> str:
    entry = REGISTRY.get(name)
    return entry.credentials(config) if entry is not None else "the provider's credentials"
