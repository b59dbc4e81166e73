"""Who gets an edition: statuses, pause, preferences, suppression, double opt-in, forget."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.config import Config
from digest.errors import InputError, NotFound
from subscribers.audience import Recipient, audience, recipient
from subscribers.models import Consent, Subscriber, Suppression, email_hash
from subscribers.service import (
    add_subscriber,
    confirm,
    forget,
    set_preferences,
    subscribe,
    suppress,
    unsubscribe,
)
from subscribers.tokens import InvalidToken


def _emails(session: Session, config: Config, newsletter: str = "daily") -> list[str]:
    return [r.email for r in audience(session, config, config.newsletter(newsletter))]


def test_recipient_carries_sections_in_their_order(
    session: Session, config: Config, now: datetime
) -> None:
    daily = config.newsletter("daily")
    sub = add_subscriber(
        session,
        daily,
        "  Ann.Lee@Example.COM ",
        at=now,
        name="Ann",
        timezone="Asia/Tokyo",
        sections=["health", "News"],
    )
    add_subscriber(session, daily, "bob@example.com", at=now)
    session.commit()
    assert list(audience(session, config, daily)) == [
        Recipient(sub.id, "ann.lee@example.com", "Ann", ("Health", "News"), "Asia/Tokyo"),
        Recipient(sub.id + 1, "bob@example.com", None, daily.section_names, None),
    ]
    assert recipient(session, config, daily, "ANN.LEE@example.com").sections == ("Health", "News")
    assert recipient(session, config, daily, sub.id).email == "ann.lee@example.com"
    with pytest.raises(NotFound, match="no subscriber 'zed@example.com'"):
        recipient(session, config, daily, "zed@example.com")


def test_only_active_unpaused_members_of_that_newsletter(
    session: Session, config: Config, now: datetime
) -> None:
    daily, strict = config.newsletter("daily"), config.newsletter("strict")
    a = add_subscriber(session, daily, "a@example.com", at=now)
    b = add_subscriber(session, daily, "b@example.com", at=now)
    add_subscriber(session, daily, "c@example.com", at=now)
    add_subscriber(session, strict, "d@example.com", at=now)
    add_subscriber(session, strict, "a@example.com", at=now)
    unsubscribe(session, a.id, "daily", reason="test", at=now)
    set_preferences(session, b.id, daily, None, paused=True)
    session.commit()
    assert _emails(session, config) == ["c@example.com"]
    assert _emails(session, config, "strict") == ["a@example.com", "d@example.com"]

    set_preferences(session, b.id, daily, None, paused=False)
    assert _emails(session, config) == ["b@example.com", "c@example.com"]


def test_unsubscribe_from_everything_marks_the_subscriber(
    session: Session, config: Config, now: datetime
) -> None:
    sub = add_subscriber(session, config.newsletter("daily"), "a@example.com", at=now)
    add_subscriber(session, config.newsletter("strict"), "a@example.com", at=now)
    assert unsubscribe(session, sub.id, None, reason="link", at=now) is True
    assert unsubscribe(session, sub.id, None, reason="link", at=now) is False
    assert sub.status == "unsubscribed" and sub.unsubscribed_at == now
    assert _emails(session, config) == [] and _emails(session, config, "strict") == []
    with pytest.raises(InputError, match="a@example.com is unsubscribed; only they can"):
        add_subscriber(session, config.newsletter("daily"), "a@example.com", at=now)


def test_suppressed_address_never_receives(session: Session, config: Config, now: datetime) -> None:
    daily = config.newsletter("daily")
    add_subscriber(session, daily, "a@example.com", at=now)
    add_subscriber(session, daily, "b@example.com", at=now)
    suppress(session, "A@Example.com", "bounced", now)
    session.commit()
    assert _emails(session, config) == ["b@example.com"]
    assert session.scalar(select(Subscriber.status).where(Subscriber.email == "a@example.com")) == (
        "bounced"
    )
    with pytest.raises(InputError, match="a@example.com is on the suppression list \\(bounced"):
        add_subscriber(session, daily, "a@example.com", at=now)


def test_preferences_validate_and_default(session: Session, config: Config, now: datetime) -> None:
    daily = config.newsletter("daily")
    sub = add_subscriber(session, daily, "a@example.com", at=now)
    assert set_preferences(session, sub.id, daily, ["entertainment", "NEWS", "News"]) == (
        "Entertainment",
        "News",
    )
    with pytest.raises(InputError, match="daily has no section 'Sports' \\(sections: News, "):
        set_preferences(session, sub.id, daily, ["Sports"])
    with pytest.raises(InputError, match="choose at least one section, or pause"):
        set_preferences(session, sub.id, daily, [])
    # Choosing every section in the newsletter's order is the default again.
    assert set_preferences(session, sub.id, daily, list(daily.section_names)) == daily.section_names
    with pytest.raises(NotFound, match="a@example.com is not on the strict list"):
        set_preferences(session, sub.id, config.newsletter("strict"), ["News"])


def test_double_opt_in_needs_confirmation(session: Session, config: Config, now: datetime) -> None:
    import dataclasses

    daily = dataclasses.replace(config.newsletter("daily"), double_opt_in=True)
    cfg = dataclasses.replace(config, newsletters={**config.newsletters, "daily": daily})
    result = subscribe(session, cfg, daily, "New@Example.com", at=now, name="Nia")
    assert result.status == "pending" and result.confirm_token
    assert result.confirm_url == f"https://news.example/confirm/{result.confirm_token}"
    assert _emails(session, cfg) == []

    with pytest.raises(InputError, match="confirmation link expired"):
        confirm(session, cfg, result.confirm_token, at=now + timedelta(days=8))
    confirmed = confirm(session, cfg, result.confirm_token, at=now + timedelta(hours=1))
    assert confirmed.status == "active"
    assert _emails(session, cfg) == ["new@example.com"]
    methods = session.scalars(
        select(Consent.method).where(Consent.subscriber_id == result.subscriber_id)
    )
    assert list(methods) == ["double_opt_in"]
    with pytest.raises(InvalidToken):
        confirm(session, cfg, result.confirm_token[:-2] + "xx", at=now)


def test_signup_without_double_opt_in_is_active_and_can_return_after_unsubscribing(
    session: Session, config: Config, now: datetime
) -> None:
    daily = config.newsletter("daily")
    first = subscribe(session, config, daily, "a@example.com", at=now)
    assert first.status == "active" and first.confirm_url is None
    unsubscribe(session, first.subscriber_id, "daily", reason="link", at=now)
    assert _emails(session, config) == []
    again = subscribe(session, config, daily, "a@example.com", at=now + timedelta(days=1))
    assert again.status == "active"
    assert _emails(session, config) == ["a@example.com"]


def test_forget_erases_everything_but_a_hash(
    session: Session, config: Config, now: datetime
) -> None:
    daily = config.newsletter("daily")
    add_subscriber(
        session,
        daily,
        "a@example.com",
        at=now,
        name="Ann",
        tags=["vip"],
        attributes={"region": "Tampa Bay"},
        sections=["News"],
    )
    suppress(session, "a@example.com", "operator", now)
    assert forget(session, "A@example.com", at=now) is True
    session.commit()
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 0
    assert session.scalar(select(func.count()).select_from(Consent)) == 0
    rows = session.execute(select(Suppression.email, Suppression.email_hash, Suppression.reason))
    assert list(rows) == [(None, email_hash("a@example.com"), "forgotten")]
    with pytest.raises(InputError, match="on the suppression list \\(forgotten"):
        subscribe(session, config, daily, "a@example.com", at=now)
    assert forget(session, "never@example.com", at=now) is False
