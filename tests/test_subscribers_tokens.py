"""Signed tokens for unsubscribe/preference/confirm links."""

from __future__ import annotations

import base64
import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from sqlalchemy.orm import Session

from digest.config import Config
from digest.errors import ConfigError
from subscribers.service import add_subscriber, unsubscribe
from subscribers.tokens import (
    InvalidToken,
    TokenData,
    make_token,
    make_tokens,
    read_token,
    site_secret,
)

SECRET = "s3cret"


def test_round_trip_is_url_safe_and_bound_to_subscriber_and_newsletter() -> None:
    token = make_token(SECRET, 42, "daily", "unsubscribe")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    assert read_token(SECRET, token, "unsubscribe") == TokenData(42, "daily")
    assert make_token(SECRET, 43, "daily", "unsubscribe") != token
    assert make_token(SECRET, 42, "strict", "unsubscribe") != token


def test_tampered_foreign_or_wrong_purpose_tokens_are_refused() -> None:
    token = make_token(SECRET, 42, "daily", "unsubscribe")
    sig = token.split(".")[1]
    # Someone edits the id inside the token to act for subscriber 43, keeping the signature.
    forged = base64.urlsafe_b64encode(b'[43,"daily"]').decode().rstrip("=")
    for bad in (f"{forged}.{sig}", token[:-1] + ("A" if token[-1] != "A" else "B"), "garbage", ""):
        with pytest.raises(InvalidToken, match="this unsubscribe link is not valid"):
            read_token(SECRET, bad, "unsubscribe")
    with pytest.raises(InvalidToken):
        read_token("another-secret", token, "unsubscribe")
    with pytest.raises(InvalidToken, match="this preferences link is not valid"):
        read_token(SECRET, token, "preferences")


def test_one_subscribers_token_never_acts_on_another(
    session: Session, config: Config, now: datetime
) -> None:
    daily = config.newsletter("daily")
    ann = add_subscriber(session, daily, "ann@example.com", at=now)
    bob = add_subscriber(session, daily, "bob@example.com", at=now)
    data = read_token(
        site_secret(config),
        make_token(site_secret(config), ann.id, "daily", "unsubscribe"),
        "unsubscribe",
    )
    unsubscribe(session, data.subscriber_id, data.newsletter, reason="link", at=now)
    assert ann.membership("daily").status == "unsubscribed"  # type: ignore[union-attr]
    assert bob.membership("daily").status == "active"  # type: ignore[union-attr]


def test_unsubscribe_tokens_do_not_expire() -> None:
    # No timestamp is signed in: the same inputs always give the same, always-valid token.
    assert make_token(SECRET, 1, "daily", "unsubscribe") == make_token(
        SECRET, 1, "daily", "unsubscribe"
    )


def test_missing_secret_is_a_config_error(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGEST_SECRET_KEY")
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY is not set"):
        site_secret(config)


@given(
    subscriber_id=st.integers(min_value=0, max_value=10**15),
    newsletter=st.text(min_size=0, max_size=80),
    secret=st.text(min_size=1, max_size=40),
)
def test_fast_tokens_are_itsdangerous_tokens(
    subscriber_id: int, newsletter: str, secret: str
) -> None:
    # The send signs tokens without building an itsdangerous Signer per call; the library must
    # read them, and they are its own bytes whenever it would not compress the payload.
    purposes = ("unsubscribe", "preferences")
    made = make_tokens(secret, subscriber_id, newsletter, purposes)
    for purpose, token in zip(purposes, made, strict=True):
        serializer = URLSafeSerializer(secret, salt=f"digest.{purpose}")
        assert serializer.loads(token) == [subscriber_id, newsletter]
        expected = serializer.dumps([subscriber_id, newsletter])
        if not expected.startswith("."):  # "." marks a compressed payload
            assert token == expected
        assert token == make_token(secret, subscriber_id, newsletter, purpose)
        assert read_token(secret, token, purpose) == TokenData(subscriber_id, newsletter)
        other = "preferences" if purpose == "unsubscribe" else "unsubscribe"
        with pytest.raises(InvalidToken):
            read_token(secret, token, other)
