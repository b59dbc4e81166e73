"""`digest report` reads delivered counts the ledger's triggers keep (digest.report_counts):
after every kind of writer — a send's settle marks, bounce and complaint events, an erasure,
a retry, a reopened edition, a late click, a click re-flagged as a bot — the report equals a
count of the ledger and click events made from scratch."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import Click, ClickEvent, record
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery, ProviderEvent, apply_provider_event, decode_variant, reopen
from digest.ledger_model import LedgerCount
from digest.ledger_report import report as ledger_report
from digest.report import Report, build_report
from digest.tracking import TrackedLink
from subscribers.models import Subscriber
from tests.clicks_support import send, tracked
from tests.fakes.population import add_population, email_for
from tests.render_support import EDITION_DATE, store_edition

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"


@pytest.fixture
def sent(config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path) -> Config:
    """20 readers sent the edition; readers 1..6 click a story of their first section."""
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 20, now)
    assert send(config, sessions, now).sent_now == 20
    with sessions.begin() as session:
        for n in range(1, 7):
            _click(session, n, now + timedelta(minutes=5 + n))
    return config


def _delivery(session: Session, reader: int) -> Delivery:
    return session.scalars(select(Delivery).where(Delivery.email == email_for(reader))).one()


def _click(session: Session, reader: int, at: datetime, nth: int = 0) -> str:
    row = _delivery(session, reader)
    links = session.scalars(
        select(TrackedLink)
        .where(TrackedLink.edition_id == row.edition_id, TrackedLink.kind == "story")
        .where(TrackedLink.section.in_(decode_variant(row.sections)[0]))
        .order_by(TrackedLink.id)
    ).all()
    link = links[nth % len(links)]
    return record(
        session, Click(link.id, row.edition_id, row.subscriber_id, at, "redirect", "GET", UA)
    )


def _from_scratch(session: Session) -> dict[str, object]:
    """The report's figures counted straight from deliveries and click_events."""
    rows = session.execute(
        select(Delivery.id, Delivery.state, Delivery.variant, Delivery.segment, Delivery.subject)
    ).all()
    clicks = session.execute(
        select(ClickEvent.delivery_id, ClickEvent.link_id, TrackedLink.section)
        .join(TrackedLink, TrackedLink.id == ClickEvent.link_id)
        .where(ClickEvent.kind == "click", ClickEvent.counted.is_(True))
    ).all()
    clickers = {d for d, _l, _s in clicks}
    # A group's figures: its delivered rows, and its readers who clicked (a click counts even
    # when a bounce came after it: it is a reader's, as the report has always said).
    by: dict[str, dict[str, list[set[int]]]] = {
        k: defaultdict(lambda: [set(), set()]) for k in ("v", "g", "s")
    }
    sent_rows = [r for r in rows if r.state == "sent"]
    for rid, state, variant, segment, subject in rows:
        for k, name in (("v", variant), ("g", segment or ""), ("s", subject or "")):
            if state == "sent":
                by[k][name][0].add(rid)
            if rid in clickers:
                by[k][name][1].add(rid)
    per_link: dict[int, set[int]] = defaultdict(set)
    per_section: dict[str, set[int]] = defaultdict(set)
    for d, link, section in clicks:
        per_link[link].add(d)
        per_section[section].add(d)

    def groups(k: str) -> list[tuple[int, int]]:
        return sorted((len(s), len(c)) for s, c in by[k].values() if s or c)

    return {
        "delivered": len(sent_rows),
        "clickers": len(clickers),
        "clicks": len(clicks),
        "variants": groups("v"),
        "segments": groups("g"),
        "subjects": groups("s"),
        "links": {k: len(v) for k, v in per_link.items()},
        "sections": {k: len(v) for k, v in per_section.items()},
    }


def _as_counted(r: Report, session: Session) -> dict[str, object]:
    label = {link.label: link.id for link in session.scalars(select(TrackedLink))}

    def groups(rows: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
        return sorted((x.delivered, x.clickers) for x in rows)

    return {
        "delivered": r.delivered,
        "clickers": r.clickers,
        "clicks": r.clicks,
        "variants": groups(r.variants),
        "segments": groups(r.segments),
        "subjects": groups(r.subjects),
        "links": {label[s.name]: s.clickers for s in r.stories if s.clickers},
        "sections": {s.name: s.clickers for s in r.sections if s.clickers},
    }


def _ledger_from_scratch(
    session: Session,
) -> tuple[dict[tuple[str, str, str], int], dict[str, int]]:
    """`sends report`'s cross tab and resolved-by-event counts, counted from the rows."""
    groups = session.execute(
        select(Delivery.segment, Delivery.variant, Delivery.state, func.count()).group_by(
            Delivery.segment, Delivery.variant, Delivery.state
        )
    ).all()
    resolved = session.execute(
        select(Delivery.state, func.count())
        .where(Delivery.last_error.like("%resolved by % event %"))
        .group_by(Delivery.state)
    ).all()
    return {(g, v, st): int(n) for g, v, st, n in groups}, {st: int(n) for st, n in resolved}


def _check(config: Config, sessions: sessionmaker[Session]) -> Report:
    with sessions() as session:
        r = build_report(session, config, "daily", day=EDITION_DATE)
        assert _as_counted(r, session) == _from_scratch(session)
        assert [(t.delivered, t.clickers) for t in r.trend] == [(r.delivered, r.clickers)]
        # `digest sends report` reads the same kept counts, for every state.
        edition_id = session.scalars(select(Edition.id)).one()
        kept = ledger_report(session, edition_id)
        assert (kept.groups, kept.resolved) == _ledger_from_scratch(session)
        assert sum(kept.counts.values()) == session.scalar(
            select(func.count()).select_from(Delivery)
        )
    return r


def test_the_send_settles_into_the_counts(sent: Config, sessions: sessionmaker[Session]) -> None:
    r = _check(sent, sessions)
    assert (r.delivered, r.clickers) == (20, 6)


def test_bounces_and_complaints_take_readers_out(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions.begin() as session:
        for reader, event in ((2, "bounce"), (9, "dropped"), (12, "bounce")):
            rid = _delivery(session, reader).id
            apply_provider_event(session, ProviderEvent(rid, "SendGrid", event, False, now), now)
        # A later "delivered" never undoes a refusal; a second bounce changes nothing.
        rid = _delivery(session, 2).id
        apply_provider_event(session, ProviderEvent(rid, "SendGrid", "delivered", True, now), now)
        apply_provider_event(session, ProviderEvent(rid, "SendGrid", "bounce", False, now), now)
    r = _check(sent, sessions)
    assert r.delivered == 17


def test_rows_a_provider_event_resolved_are_counted_as_resolved(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions.begin() as session:
        rows = [_delivery(session, n) for n in (4, 5, 6)]
        for row in rows:
            row.state = "unknown"  # no answer came back
        session.flush()
        for row, accepted in zip(rows, (True, True, False), strict=True):
            event = ProviderEvent(
                row.id, "SendGrid", "delivered" if accepted else "bounce", accepted, now
            )
            apply_provider_event(session, event, now)
    with sessions() as session:
        kept = ledger_report(session, session.scalars(select(Edition.id)).one())
        assert kept.resolved == {"sent": 2, "failed": 1}
    assert _check(sent, sessions).delivered == 19


def test_a_retry_after_failures_counts_each_reader_once(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.email.in_([email_for(i) for i in range(1, 6)]))
            .values(state="failed")
        )
    assert _check(sent, sessions).delivered == 15
    with sessions.begin() as session:
        edition_id = session.scalars(select(Edition.id)).one()
        assert reopen(session, edition_id, ["failed"]) == 5
    assert _check(sent, sessions).delivered == 15
    assert send(sent, sessions, now + timedelta(hours=1)).sent_now == 5
    assert _check(sent, sessions).delivered == 20


def test_an_erased_reader_stays_counted_as_delivered(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    from subscribers.service import forget

    with sessions.begin() as session:
        assert forget(session, email_for(1), at=now + timedelta(days=1))
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 19
    r = _check(sent, sessions)
    assert (r.delivered, r.clickers) == (20, 6)


def test_a_late_click_and_a_burst_re_flagged_as_a_bot(
    sent: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    with sessions.begin() as session:
        assert _click(session, 15, now + timedelta(days=2)) == "counted"
    assert _check(sent, sessions).clickers == 7
    with sessions.begin() as session:
        at = now + timedelta(days=3)  # two links within 1 s: a scanner, not a reader
        _click(session, 13, at, 0)
        assert _click(session, 13, at + timedelta(milliseconds=300), 1) == "burst"
    r = _check(sent, sessions)
    assert r.clickers == 7 and r.flagged.get("burst") == 2


def test_a_reopened_edition_leaves_no_counts_behind(
    sent: Config, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        session.execute(delete(ClickEvent))
        session.execute(delete(Delivery).where(Delivery.email == email_for(3)))
    assert _check(sent, sessions).delivered == 19
    with sessions.begin() as session:
        session.execute(delete(Edition))
        assert session.scalar(select(func.count()).select_from(LedgerCount)) == 0


def test_concurrent_writers_never_wait_on_one_counter(
    sent: Config, sessions: sessionmaker[Session], db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time")
    first, second = sessions(), sessions()
    try:
        ids = [_delivery(first, n).id for n in (1, 11)]  # one variant: one counter
        first.execute(update(Delivery).where(Delivery.id == ids[0]).values(state="failed"))
        second.execute(text("SET LOCAL lock_timeout = '2s'"))
        second.execute(update(Delivery).where(Delivery.id == ids[1]).values(state="failed"))
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
    assert _check(sent, sessions).delivered == 18
