"""When an edition goes out: its send instant on the newsletter's wall clock, the due and the
next edition at a given instant, and (local-time delivery) each recipient's own delivery instant
and the wave of recipients one run sends. Pure functions of time; digest.scheduler decides."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.config import NewsletterConfig
from digest.selection import edition_window
from digest.sending import RecipientFilter
from subscribers.audience import Recipient


def send_instant(newsletter: NewsletterConfig, edition_date: date) -> datetime:
    """When the edition goes out, in UTC: send_time on the edition date on the newsletter's
    wall clock. A send time that does not exist that day (spring forward) goes out at what the
    clock reads after the jump (02:30 → 03:30); one that occurs twice (fall back) goes out the
    first time."""
    return edition_window(newsletter, edition_date)[1].astimezone(UTC)


def due_edition(newsletter: NewsletterConfig, now: datetime) -> tuple[date, datetime]:
    """The latest edition whose send instant is at or before `now`, and that instant."""
    local = now.astimezone(newsletter.tz).date()
    for d in (local, local - timedelta(days=1), local - timedelta(days=2)):
        at = send_instant(newsletter, d)
        if at <= now:
            return d, at
    raise AssertionError("a send instant lies within two days of any time")


def next_send(newsletter: NewsletterConfig, now: datetime) -> tuple[date, datetime]:
    """The first edition whose send instant is after `now`, and that instant."""
    local = now.astimezone(newsletter.tz).date()
    for d in (local - timedelta(days=1), local, local + timedelta(days=1), local + timedelta(2)):
        at = send_instant(newsletter, d)
        if at > now:
            return d, at
    raise AssertionError("a send instant lies within two days of any time")


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_delivery(send_time: time, zone: ZoneInfo, after: datetime) -> datetime:
    """The first instant at or after `after` when it is `send_time` on `zone`'s wall clock."""
    day = after.astimezone(zone).date()
    for d in (day - timedelta(days=1), day, day + timedelta(days=1)):
        at = datetime.combine(d, send_time, tzinfo=zone).astimezone(UTC)
        if at >= after:
            return at
    raise AssertionError("send_time recurs every local day")


def wave(
    newsletter: NewsletterConfig, edition_date: date, since: datetime, until: datetime
) -> RecipientFilter:
    """This run's recipients: those whose local delivery instant of this edition lies in
    (since, until]; later ones are left for a later run, and for earlier ones (their instant
    passed while nothing ran, since being the catch-up limit) it says why they are skipped.
    Recipients without a (valid) time zone get the newsletter's."""
    start = send_instant(newsletter, edition_date)
    verdicts: dict[str | None, tuple[datetime, str]] = {}

    def due(recipient: Recipient) -> bool | str:
        tz = recipient.timezone
        known = verdicts.get(tz)
        if known is None:
            zone = (_zone(tz) if tz else None) or newsletter.tz
            at = local_delivery(newsletter.send_time, zone, start)
            missed = (
                f"missed: local send time {at:%Y-%m-%d %H:%M} UTC passed more than "
                f"catch_up_hours = {newsletter.catch_up_hours:g} before a run"
            )
            known = verdicts[tz] = (at, missed)
        at, missed = known
        if at <= since:
            return missed
        return at <= until

    return due
