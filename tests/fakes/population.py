"""Many subscribers at once, inserted in bulk (the ORM path takes ~1 ms each), for the send
tests and bench/send.py. Each gets one of VARIANTS as section preferences."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from subscribers.models import Membership, SectionPreference, Subscriber, email_hash

SECTIONS = ("News", "Business", "Health", "Entertainment")
# Ten distinct layouts of the test newsletter's four sections; () = the default order.
VARIANTS: list[tuple[str, ...]] = [
    (),
    ("News",),
    ("Business",),
    ("News", "Business"),
    ("Business", "News"),
    ("Health", "News"),
    ("Entertainment",),
    ("News", "Health", "Entertainment"),
    ("Entertainment", "Business", "Health"),
    ("Health",),
]


def email_for(i: int) -> str:
    return f"reader{i:06d}@example.org"


def add_population(
    session: Session,
    n: int,
    at: datetime,
    *,
    newsletter: str = "daily",
    variants: int = len(VARIANTS),
    start: int = 1,
) -> list[int]:
    """Insert n active members of `newsletter`; returns their subscriber ids."""
    chunk = 5000
    ids: list[int] = []
    for lo in range(start, start + n, chunk):
        rng = range(lo, min(lo + chunk, start + n))
        session.execute(
            insert(Subscriber),
            [
                {
                    "email": email_for(i),
                    "email_hash": email_hash(email_for(i)),
                    "name": None if i % 7 == 0 else f"Réader {i} Ñame",
                    "status": "active",
                    "created_at": at,
                    "confirmed_at": at,
                    "source": "bench",
                }
                for i in rng
            ],
        )
        rows = session.execute(
            select(Subscriber.id, Subscriber.email).where(
                Subscriber.email.in_([email_for(i) for i in rng])
            )
        ).all()
        by_email = {e: sid for sid, e in rows}
        new_ids = [by_email[email_for(i)] for i in rng]
        ids += new_ids
        session.execute(
            insert(Membership),
            [
                {
                    "subscriber_id": sid,
                    "newsletter": newsletter,
                    "status": "active",
                    "paused": False,
                    "joined_at": at,
                    "confirmed_at": at,
                }
                for sid in new_ids
            ],
        )
        prefs = [
            {"subscriber_id": sid, "newsletter": newsletter, "section": s, "position": p}
            for i, sid in zip(rng, new_ids, strict=True)
            for p, s in enumerate(VARIANTS[i % variants])
        ]
        if prefs:
            session.execute(insert(SectionPreference), prefs)
    return ids


def variant_of(i: int, variants: int = len(VARIANTS)) -> tuple[str, ...]:
    return VARIANTS[i % variants] or SECTIONS
