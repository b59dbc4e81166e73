"""Clicks are events, stored once: from the `/r/<token>` redirect (digest.web.redirect) and
from a provider's click events (digest.web.webhooks).

The rule for what counts (README "What readers read"). A click is stored with a flag, and not
counted, when it looks like a machine rather than a reader:

- `head`: a HEAD request (link checkers and security scanners; browsers send GET);
- `scanner`: a user agent of a known security scanner or a non-browser client (Microsoft Safe
  Links, Proofpoint, Mimecast, Barracuda, … `curl`, `python-requests`), or none at all;
- `early`: within EARLY_SECONDS of the message being handed to the provider (scanners fetch
  every link of a message as it arrives, before any person has opened it);
- `burst`: two different links of one message within BURST_SECONDS of each other (a person
  cannot; a scanner fetching every link does). Every click of the burst is flagged.

The same click reported by the redirect and by SendGrid (links wrapped by SendGrid's own click
tracking land on our redirect too) is stored once: an event for the same delivery and link from
the other source within DEDUPE_SECONDS is that click. Each click stores the user agent's class
only, never the user agent, the address or anything else about the reader's device.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from digest.articles import UTCDateTime
from digest.config import Config
from digest.db import Base
from digest.editions import Edition
from digest.events import TrackingEvent, TrackingKind
from digest.ledger import Delivery
from digest.ledger_model import edition_date_of
from digest.tracking import PATH, TrackedLink, parse_token, url_hash
from subscribers.tokens import site_secret

log = logging.getLogger(__name__)

EARLY_SECONDS = 10
BURST_SECONDS = 1.0
DEDUPE_SECONDS = 120
_SCANNERS = re.compile(
    r"safelinks|safe ?links|ms-office|microsoft office|proofpoint|urldefense|mimecast|barracuda|"
    r"messagelabs|symantec|forcepoint|trend ?micro|sophos|fortiguard|fortinet|ironport|cisco|"
    r"zscaler|check ?point|appriver|spamtitan|hornet|libraesva|vade|cloudmark|"
    r"curl/|wget/|python-requests|python-urllib|aiohttp|go-http-client|java/|okhttp|libwww|"
    r"httpclient|headlesschrome|phantomjs|\bbot\b|bot/|crawler|spider|slurp|scanner|preview",
    re.IGNORECASE,
)


class ClickEvent(Base):
    """One click (or, with track_opens, one open) of one delivery."""

    __tablename__ = "click_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    # No foreign key (migration 0016): on PostgreSQL the ledger is partitioned, a key to it would
    # have to carry the partition key and make every DETACH of a month scan this table. A
    # delivery is only ever deleted with its edition (a deleted or reopened edition), and the
    # edition_id key cascades those clicks; `sends prune` drops a month of both tables at once.
    delivery_id: Mapped[int] = mapped_column(Integer)
    # The edition's date (the partition key, as on deliveries).
    edition_date: Mapped[date] = mapped_column(Date, default=edition_date_of)
    link_id: Mapped[int | None] = mapped_column(ForeignKey("tracked_links.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(5), default="click")  # click | open
    # Copied from the delivery so the report groups without a join.
    variant: Mapped[str] = mapped_column(String(40), default="")
    segment: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str | None] = mapped_column(String(300))
    # The section of a story link, copied from the link: the per-section count reads one index.
    section: Mapped[str | None] = mapped_column(String(100))
    clicked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(10))  # redirect | sendgrid
    agent: Mapped[str] = mapped_column(String(10))  # browser | scanner | none
    flag: Mapped[str | None] = mapped_column(String(10))
    counted: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (
        # The report's aggregates read these indexes only (covering).
        Index("ix_click_events_links", "edition_id", "kind", "counted", "link_id", "delivery_id"),
        Index(
            "ix_click_events_readers",
            "edition_id",
            "kind",
            "counted",
            "variant",
            "segment",
            "subject",
            "delivery_id",
        ),
        Index(
            "ix_click_events_sections", "edition_id", "kind", "counted", "section", "delivery_id"
        ),
        Index("ix_click_events_delivery", "delivery_id", "clicked_at"),
    )


@dataclass(frozen=True)
class Click:
    """A click as it arrived, before it is matched to its delivery."""

    link_id: int
    edition_id: int
    subscriber_id: int
    at: datetime
    source: str = "redirect"
    method: str = "GET"
    user_agent: str = ""


def agent_class(user_agent: str) -> str:
    if not user_agent.strip():
        return "none"
    return "scanner" if _SCANNERS.search(user_agent) else "browser"


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _flag(click: Click, agent: str, delivered_at: datetime | None) -> str | None:
    if click.method == "HEAD":
        return "head"
    if agent != "browser":
        return "scanner"
    early = timedelta(seconds=EARLY_SECONDS)
    if delivered_at is not None and _utc(click.at) - _utc(delivered_at) < early:
        return "early"
    return None


def record(session: Session, click: Click) -> str:
    """Store one click (in the caller's transaction); what became of it: counted, flagged
    (head, scanner, early, burst), duplicate or unmatched."""
    return record_many(session, [click])[0]


def record_many(session: Session, clicks: Sequence[Click]) -> list[str]:
    """Store a batch of clicks with a few statements (the redirect's writer thread): one
    query for their deliveries, one for the events near them, one insert, one update."""
    if not clicks:
        return []
    deliveries = _deliveries(session, clicks)
    near = _nearby(session, [d.id for d in deliveries.values()], clicks)
    sections = _story_sections(session, {c.link_id for c in clicks})
    rows: list[dict[str, Any]] = []
    bursts: set[int] = set()
    out: list[str] = []
    for click in clicks:
        d = deliveries.get((click.edition_id, click.subscriber_id))
        if d is None:
            out.append("unmatched")
            continue
        at = _utc(click.at)
        mine = near.setdefault(d.id, [])
        if any(
            e.link_id == click.link_id
            and e.source != click.source
            and abs((e.at - at).total_seconds()) <= DEDUPE_SECONDS
            for e in mine
        ):
            out.append("duplicate")
            continue
        agent = agent_class(click.user_agent)
        flag = _flag(click, agent, d.handed_at or d.settled_at)
        if flag is None:
            others = [
                e
                for e in mine
                if e.link_id != click.link_id and abs((e.at - at).total_seconds()) <= BURST_SECONDS
            ]
            if others:
                flag = "burst"
                for e in others:
                    e.flag = e.flag or "burst"
                    if e.id is not None:
                        bursts.add(e.id)
                    elif e.row is not None and e.row["flag"] is None:
                        e.row["flag"], e.row["counted"] = "burst", False
        row = {
            "edition_id": click.edition_id,
            "delivery_id": d.id,
            "edition_date": d.edition_date,
            "link_id": click.link_id,
            "kind": "click",
            "variant": d.variant,
            "segment": d.segment,
            "subject": d.subject,
            "section": sections.get(click.link_id),
            "clicked_at": at,
            "source": click.source,
            "agent": agent,
            "flag": flag,
            "counted": flag is None,
        }
        rows.append(row)
        mine.append(_Near(None, click.link_id, click.source, at, flag, row))
        out.append(flag or "counted")
    if rows:
        session.execute(insert(ClickEvent), rows)
    if bursts:
        session.execute(
            update(ClickEvent)
            .where(ClickEvent.id.in_(sorted(bursts)), ClickEvent.flag.is_(None))
            .values(flag="burst", counted=False)
        )
    return out


@dataclass
class _Near:
    """A click of the same delivery already stored (id) or earlier in the batch (row)."""

    id: int | None
    link_id: int | None
    source: str
    at: datetime
    flag: str | None
    row: dict[str, Any] | None = None


def _deliveries(session: Session, clicks: Sequence[Click]) -> dict[tuple[int, int], Any]:
    wanted: dict[int, set[int]] = {}
    for c in clicks:
        wanted.setdefault(c.edition_id, set()).add(c.subscriber_id)
    out: dict[tuple[int, int], Any] = {}
    for edition_id, subscribers in wanted.items():
        ids = sorted(subscribers)
        for lo in range(0, len(ids), 500):
            for d in session.execute(
                select(
                    Delivery.id,
                    Delivery.subscriber_id,
                    Delivery.handed_at,
                    Delivery.settled_at,
                    Delivery.variant,
                    Delivery.segment,
                    Delivery.edition_date,
                    Delivery.subject,
                ).where(
                    Delivery.edition_id == edition_id,
                    Delivery.subscriber_id.in_(ids[lo : lo + 500]),
                )
            ):
                out[(edition_id, d.subscriber_id)] = d
    return out


def _story_sections(session: Session, link_ids: set[int]) -> dict[int, str | None]:
    rows = session.execute(
        select(TrackedLink.id, TrackedLink.section).where(
            TrackedLink.id.in_(sorted(link_ids)), TrackedLink.kind == "story"
        )
    )
    return {link_id: section for link_id, section in rows}


def _nearby(
    session: Session, delivery_ids: list[int], clicks: Sequence[Click]
) -> dict[int, list[_Near]]:
    """Stored clicks of these deliveries within the dedupe window of the batch."""
    out: dict[int, list[_Near]] = {}
    if not delivery_ids:
        return out
    times = [_utc(c.at) for c in clicks]
    window = timedelta(seconds=DEDUPE_SECONDS)
    lo_t, hi_t = min(times) - window, max(times) + window
    ids = sorted(set(delivery_ids))
    for lo in range(0, len(ids), 500):
        for e in session.execute(
            select(
                ClickEvent.id,
                ClickEvent.delivery_id,
                ClickEvent.link_id,
                ClickEvent.source,
                ClickEvent.clicked_at,
                ClickEvent.flag,
            ).where(
                ClickEvent.delivery_id.in_(ids[lo : lo + 500]),
                ClickEvent.kind == "click",
                ClickEvent.clicked_at.between(lo_t, hi_t),
            )
        ):
            out.setdefault(e.delivery_id, []).append(
                _Near(e.id, e.link_id, e.source, _utc(e.clicked_at), e.flag)
            )
    return out


# --- a provider's click and open events -------------------------------------------------------


def from_provider(
    session: Session, secret: str, base_url: str, row: Delivery | None, event: TrackingEvent
) -> Click | None:
    """The click a provider's click event reports, if it names a delivery and a stored link: its
    URL is our /r/ link (the provider wrapped it) or a stored target (our tracking off)."""
    if row is None:
        return None
    url = event.url
    link_id: int | None = None
    prefix = base_url + PATH
    if url.startswith(prefix):
        parsed = parse_token(secret, url[len(prefix) :].split("?", 1)[0])
        if parsed is None or parsed[1] != row.subscriber_id:
            return None
        link_id = parsed[0]
    else:
        link_id = session.scalar(
            select(TrackedLink.id).where(
                TrackedLink.edition_id == row.edition_id, TrackedLink.url_hash == url_hash(url)
            )
        )
    if link_id is None:
        return None
    if session.scalar(select(TrackedLink.edition_id).where(TrackedLink.id == link_id)) != (
        row.edition_id
    ):
        return None
    if event.occurred is None:
        return None
    return Click(
        link_id=link_id,
        edition_id=row.edition_id,
        subscriber_id=row.subscriber_id,
        at=event.occurred,
        source=event.provider.lower()[:10],
        user_agent=event.user_agent,
    )


def record_open(session: Session, row: Delivery, event: TrackingEvent, at: datetime) -> str:
    """An open from the provider's open tracking (only with track_opens; unreliable: Apple Mail
    Privacy Protection opens every message)."""
    session.add(
        ClickEvent(
            edition_id=row.edition_id,
            delivery_id=row.id,
            edition_date=row.edition_date,
            link_id=None,
            kind="open",
            variant=row.variant,
            segment=row.segment,
            subject=row.subject,
            clicked_at=at,
            source=event.provider.lower()[:10],
            agent=agent_class(event.user_agent),
            flag=None,
            counted=True,
        )
    )
    return "open"


def provider_event(
    session: Session, config: Config, row: Delivery | None, event: TrackingEvent
) -> str:
    """What a provider's click or open event became (digest.web.webhooks)."""
    kind = event.event
    if row is None:
        return f"{kind} (unmatched)"
    edition = session.get(Edition, row.edition_id)
    nl = config.newsletters.get(edition.newsletter) if edition is not None else None
    if event.kind is TrackingKind.OPENED:
        if nl is None or not nl.track_opens:
            return "ignored"  # as before opens were tracked at all
        at = event.occurred
        return record_open(session, row, event, at) if at is not None else "open (no time)"
    click = from_provider(session, site_secret(config), config.site.base_url, row, event)
    if click is None:
        return "click (unknown link)"
    return f"click ({record(session, click)})"


# --- the redirect's writer ---------------------------------------------------------------------


class ClickRecorder:
    """Writes the redirect's clicks. In the background (digest serve) a thread writes them in
    batches every `interval` seconds, so a redirect costs no database write of its own (a
    crash loses at most that much of a counter, never a delivery); otherwise each is written
    before the redirect answers."""

    def __init__(
        self,
        unit: Callable[[], AbstractContextManager[Session]],
        *,
        background: bool,
        interval: float = 0.25,
    ) -> None:
        self._unit = unit
        self._background = background
        self._interval = interval
        self._pending: list[Click] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, click: Click) -> None:
        if not self._background:
            self._write([click])
            return
        with self._lock:
            self._pending.append(click)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="digest-clicks", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._write(pending)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            try:
                self.flush()
            except Exception:  # a counter must never take the server down
                log.exception("click events could not be written")

    def _write(self, clicks: list[Click]) -> None:
        with self._unit() as session:
            record_many(session, clicks)
