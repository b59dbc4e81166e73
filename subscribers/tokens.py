"""Signed, URL-safe tokens for unsubscribe, preference and confirmation links.

A token carries (subscriber id, newsletter) and is signed with HMAC (itsdangerous) using the
site secret and a per-purpose salt, so a token made for one purpose, subscriber or newsletter
cannot act for another. Unsubscribe and preference tokens do not expire: links in old emails
must keep working (rotate DIGEST_SECRET_KEY to revoke all of them). Confirmation tokens carry
their issue time and are refused after CONFIRM_MAX_AGE by `confirm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from itsdangerous import BadSignature, URLSafeSerializer

from digest.config import Config
from digest.errors import ConfigError, DigestError

PURPOSES = ("unsubscribe", "preferences", "confirm")
CONFIRM_MAX_AGE = timedelta(days=7)


class InvalidToken(DigestError):
    """The link is damaged, was signed with another secret, or is for another purpose."""


@dataclass(frozen=True)
class TokenData:
    subscriber_id: int
    newsletter: str
    issued_at: datetime | None = None  # only confirmation tokens carry it


def site_secret(config: Config) -> str:
    secret = config.site.secret
    if not secret:
        raise ConfigError(
            f"{config.site.secret_env} is not set: it signs unsubscribe and preference links "
            "(set it to a long random string and keep it stable)"
        )
    return secret


@lru_cache(maxsize=16)
def _serializer(secret: str, purpose: str) -> URLSafeSerializer:
    # Cached: a send signs two tokens per recipient and building the signer dominates that.
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeSerializer(secret, salt=f"digest.{purpose}")


def make_token(
    secret: str,
    subscriber_id: int,
    newsletter: str,
    purpose: str,
    *,
    issued_at: datetime | None = None,
) -> str:
    payload: list[int | str] = [subscriber_id, newsletter]
    if issued_at is not None:
        payload.append(int(issued_at.timestamp()))
    token = _serializer(secret, purpose).dumps(payload)
    assert isinstance(token, str)
    return token


def read_token(secret: str, token: str, purpose: str) -> TokenData:
    """Verify and decode; InvalidToken on tampering, a foreign secret or another purpose."""
    try:
        payload = _serializer(secret, purpose).loads(token.strip())
    except BadSignature:
        raise InvalidToken(
            f"this {purpose} link is not valid (damaged or not issued by this site)"
        ) from None
    if not (
        isinstance(payload, list)
        and len(payload) in (2, 3)
        and isinstance(payload[0], int)
        and isinstance(payload[1], str)
    ):
        raise InvalidToken(f"this {purpose} link is not valid (unexpected content)")
    issued = (
        datetime.fromtimestamp(payload[2], UTC)
        if len(payload) == 3 and isinstance(payload[2], int)
        else None
    )
    return TokenData(payload[0], payload[1], issued)
