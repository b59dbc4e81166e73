"""One story, one reader, one day: a reader of two newsletters of the newsroom does not get a
story twice on one day. The second newsletter leaves out of their copy what the first sent them
(by article or canonical URL); readers of one newsletter get everything; readers with the same
exclusions share one rendering; a crash and a re-run keep each copy; a section left empty is
not shown, a copy left empty is not sent; the rule can be switched off; yesterday's does not
count."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest import same_day
from digest.clock import fixed
from digest.config import Config
from digest.editions import Edition
from digest.ledger import Delivery, decode_layout
from digest.ledger_report import format_report, ledger_report
from digest.providers.base import Batch, Checkpoint, Outcome
from digest.providers.outbox import OutboxProvider
from digest.same_day import NOTHING_NEW
from digest.sending import SendOptions, SendReport, send_edition
from subscribers.service import add_subscriber
from tests.clicks_support import FAST
from tests.factories import add_article
from tests.render_support import (
    EDITION_DATE,
    STORIES,
    count_inlining,
    make_edition,
    store_edition,
)

MORNING = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)  # 07:00 in New York
EVENING = datetime(2026, 3, 10, 22, 0, tzinfo=UTC)  # 18:00 in New York, the same day
TRANSIT, PORT = STORIES[0][1], STORIES[3][1]
RIVER, FLU = "River cleanup draws 500 volunteers", "Flu shots offered at every library"

BOTH = ["ana@example.com", "bo@example.com"]
DAILY_ONLY = ["dee@example.com"]
EVENING_ONLY = ["eve@example.com", "fay@example.com"]


def newsroom(config: Config, tmp_path: Path, **evening: object) -> Config:
    daily = config.newsletter("daily")
    night = dataclasses.replace(
        daily,
        id="evening",
        title="The Evening Gazette",
        from_email="evening@news.example",
        **evening,  # type: ignore[arg-type]
    )
    return dataclasses.replace(
        config,
        newsletters={"daily": daily, "evening": night},
        outbox=dataclasses.replace(config.outbox, dir=tmp_path / "out"),
    )


def store_evening(session: Session, daily: Edition, *, only_shared: bool = False) -> Edition:
    """The evening edition: the morning's transit story (the same article), its port story
    (another article of the same canonical URL: a copy from another feed), and, unless
    `only_shared`, two stories of its own. Business then holds only the shared port story."""
    shared = {i.title: i for i in daily.items}
    own = [("News", RIVER, "Volunteers filled 200 bags.", None, None, None)]
    own.append(("Health", FLU, "No appointment needed.", None, None, None))
    stories = [STORIES[0], STORIES[3]] + ([] if only_shared else own)
    edition = make_edition(stories, newsletter="evening", edition_id=None)
    for item in edition.items:
        if item.title == TRANSIT:
            item.url, item.article_id = shared[TRANSIT].url, shared[TRANSIT].article_id
            continue
        # The port story's article is the wire's copy; the edition links the same page.
        own = f"https://news.example/evening/{item.rank}-{item.section.lower()}"
        item.url = shared[PORT].url + "?utm_source=wire" if item.title == PORT else own
        article = add_article(
            session, item.published_at, title=item.title, section=item.section, url=own
        )
        item.article_id = article.id
    session.add(edition)
    session.flush()
    return edition


@pytest.fixture(autouse=True, params=["one window", "a row per window"])
def window(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's rows of the other newsletters are read a window of readers at a time: every
    test holds with all of them in one window and with one row of each edition per window."""
    if request.param == "a row per window":
        monkeypatch.setattr(same_day._Seen, "PAGE", 1)


@pytest.fixture
def room(config: Config, tmp_path: Path) -> Config:
    return newsroom(config, tmp_path)


def readers(session: Session, config: Config) -> None:
    for address in BOTH + DAILY_ONLY:
        add_subscriber(session, config.newsletter("daily"), address, at=MORNING)
    for address in BOTH + EVENING_ONLY:
        add_subscriber(session, config.newsletter("evening"), address, at=MORNING)


@pytest.fixture
def editions(room: Config, sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions.begin() as session:
        daily = store_edition(session)
        evening = store_evening(session, daily)
        readers(session, room)
        return daily.id, evening.id


def send(config: Config, sessions, newsletter: str, at: datetime, **kw: object) -> SendReport:
    provider = kw.pop("provider", None)
    opts = SendOptions(retry=FAST, **kw)  # type: ignore[arg-type]
    return send_edition(
        config, sessions, newsletter, EDITION_DATE, opts, clock=fixed(at), provider=provider
    )


def mail(config: Config) -> dict[tuple[str, str], list[str]]:
    """(newsletter's from address, reader) → the text parts they were sent."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    assert config.outbox.dir is not None
    for path in sorted(Path(config.outbox.dir).glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(("plain",))
        assert body is not None
        sender = msg["From"].addresses[0].addr_spec.split("@")[0]
        out[(sender, msg["To"].addresses[0].addr_spec)].append(str(body.get_content()))
    return out


def rows(sessions: sessionmaker[Session], edition_id: int) -> dict[str, Delivery]:
    with sessions() as session:
        found = session.scalars(select(Delivery).where(Delivery.edition_id == edition_id))
        return {r.email: r for r in found}


def test_a_reader_of_both_newsletters_gets_each_story_once_a_day(
    room: Config,
    sessions: sessionmaker[Session],
    editions: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daily_id, evening_id = editions
    assert send(room, sessions, "daily", MORNING).sent_now == 3
    renders = count_inlining(monkeypatch)
    report = send(room, sessions, "evening", EVENING)
    assert report.sent_now == 4 and report.edition_status == "sent"
    got = mail(room)
    for reader in BOTH:
        (morning,) = got[("daily", reader)]
        assert TRANSIT in morning and PORT in morning
        (evening,) = got[("evening", reader)]
        # The transit story (the same article) and the port story (the same canonical URL)
        # came this morning: left out, and Business, left empty, is not shown.
        assert TRANSIT not in evening and PORT not in evening
        assert RIVER in evening and FLU in evening
        assert "BUSINESS" not in evening.upper().replace("BUSINESS DESK", "")
    for reader in EVENING_ONLY:
        (evening,) = got[("evening", reader)]
        assert all(t in evening for t in (TRANSIT, PORT, RIVER, FLU))
    (morning,) = got[("daily", DAILY_ONLY[0])]
    assert ("evening", DAILY_ONLY[0]) not in got

    ledger = rows(sessions, evening_id)
    both = {ledger[r].variant for r in BOTH}
    alone = {ledger[r].variant for r in EVENING_ONLY}
    assert len(both) == 1 and len(alone) == 1 and both != alone
    sections, _, skip = decode_layout(ledger[BOTH[0]].sections)
    assert sections == ("News", "Health") and len(skip) == 1  # transit: Business is not shown
    # Render once per variant: one rendering per distinct (layout, exclusions) key.
    assert len(renders) == len(both | alone) == 2
    assert "skip" not in json.loads(ledger[EVENING_ONLY[0]].sections)
    with sessions() as session:
        shown = format_report(
            ledger_report(session, room, "evening", EDITION_DATE), room.newsletter("evening")
        )
    assert f"{both.pop()} (News, Health; 1 sent earlier today left out): sent 2" in shown


def test_a_crash_and_a_re_run_keep_each_readers_copy(
    room: Config, sessions: sessionmaker[Session], editions: tuple[int, int], tmp_path: Path
) -> None:
    class Crash(BaseException):
        pass

    class CrashingOutbox(OutboxProvider):
        def __init__(self, folder: Path) -> None:
            super().__init__(folder)
            self.batch_size, self.calls = 1, 0

        def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
            self.calls += 1
            if self.calls == 2:
                raise Crash
            return super().send(batch, checkpoint)

    send(room, sessions, "daily", MORNING)
    assert room.outbox.dir is not None
    with pytest.raises(Crash):
        crashing = CrashingOutbox(Path(room.outbox.dir))
        send(room, sessions, "evening", EVENING, provider=crashing, batch_size=1)
    # The re-run comes after the claims' lease; the evening's rows are what they were.
    later = EVENING + timedelta(minutes=20)
    report = send(room, sessions, "evening", later)
    assert report.edition_status == "sent", report.summary()
    got = mail(room)
    for reader in BOTH:
        texts = got[("evening", reader)]
        assert len(texts) <= 1  # a row the crash left unknown is not sent again
        assert all(TRANSIT not in t and RIVER in t for t in texts)
    for reader in EVENING_ONLY:
        assert all(TRANSIT in t for t in got[("evening", reader)])
    assert sum(len(got[("evening", r)]) for r in BOTH + EVENING_ONLY) >= 3


def test_a_copy_with_nothing_new_is_not_sent(room: Config, sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        daily = store_edition(session)
        evening = store_evening(session, daily, only_shared=True)
        readers(session, room)
        evening_id = evening.id
    send(room, sessions, "daily", MORNING)
    report = send(room, sessions, "evening", EVENING)
    assert report.sent_now == len(EVENING_ONLY) and report.seen_today == len(BOTH)
    assert "2 recipient(s) were sent every story of their copy today" in report.summary()
    ledger = rows(sessions, evening_id)
    for reader in BOTH:
        assert (ledger[reader].state, ledger[reader].last_error) == ("skipped", NOTHING_NEW)
    assert report.edition_status == "sent"


def test_the_rule_can_be_switched_off_and_yesterday_does_not_count(
    config: Config, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    repeats = newsroom(config, tmp_path, no_repeat_today=False)
    with sessions.begin() as session:
        daily = store_edition(session)
        store_evening(session, daily)
        readers(session, repeats)
    send(repeats, sessions, "daily", MORNING)
    send(repeats, sessions, "evening", EVENING)
    got = mail(repeats)
    assert all(TRANSIT in got[("evening", r)][0] for r in BOTH)


def test_stories_sent_yesterday_are_not_left_out(
    room: Config, sessions: sessionmaker[Session], editions: tuple[int, int]
) -> None:
    send(room, sessions, "daily", MORNING - timedelta(days=1))  # yesterday, New York time
    send(room, sessions, "evening", EVENING)
    got = mail(room)
    assert all(PORT in got[("evening", r)][0] for r in BOTH)


def test_the_switch_is_read_from_the_config(tmp_path: Path) -> None:
    from digest.config import load_config
    from digest.errors import ConfigError

    base = (Path(__file__).parent / "data" / "digest.toml").read_text()
    assert (
        load_config(Path(__file__).parent / "data" / "digest.toml")
        .newsletter("daily")
        .no_repeat_today
    )
    path = tmp_path / "repeats.toml"
    path.write_text(
        base.replace("[newsletters.daily]\n", "[newsletters.daily]\nno_repeat_today = false\n", 1)
    )
    assert not load_config(path).newsletter("daily").no_repeat_today
    path.write_text(
        base.replace("[newsletters.daily]\n", '[newsletters.daily]\nno_repeat_today = "no"\n', 1)
    )
    with pytest.raises(ConfigError, match="no_repeat_today"):
        load_config(path)


def test_the_dry_run_leaves_out_what_the_send_would(
    room: Config, sessions: sessionmaker[Session], editions: tuple[int, int]
) -> None:
    send(room, sessions, "daily", MORNING)
    report = send(room, sessions, "evening", EVENING, dry_run=True)
    assert report.dry_run and report.sent_now == len(BOTH + EVENING_ONLY)
    assert room.outbox.dir is not None
    dry = dataclasses.replace(
        room, outbox=dataclasses.replace(room.outbox, dir=Path(room.outbox.dir) / "dry-run")
    )
    got = mail(dry)
    assert all(TRANSIT not in got[("evening", r)][0] for r in BOTH)
    assert all(TRANSIT in got[("evening", r)][0] for r in EVENING_ONLY)
    _, evening_id = editions
    assert rows(sessions, evening_id) == {}  # the ledger was not touched


def test_stories_of_two_earlier_newsletters_are_both_left_out(
    room: Config, sessions: sessionmaker[Session], editions: tuple[int, int]
) -> None:
    """The morning sent the transit story; a noon newsletter (its own edition of one story:
    the river story the evening also has) reached the same readers: the evening's copy has
    only what neither sent."""
    noon_nl = dataclasses.replace(
        room.newsletter("evening"), id="noon", from_email="noon@x.example"
    )
    three = dataclasses.replace(room, newsletters={**room.newsletters, "noon": noon_nl})
    with sessions.begin() as session:
        river = session.scalars(select(Edition).where(Edition.newsletter == "evening")).one().items
        (item,) = [i for i in river if i.title == RIVER]
        noon = make_edition([("News", RIVER, "", None, None, None)], "noon", edition_id=None)
        noon.items[0].article_id, noon.items[0].url = item.article_id, item.url
        session.add(noon)
        for address in BOTH:
            add_subscriber(session, noon_nl, address, at=MORNING)
    send(three, sessions, "daily", MORNING)
    send(three, sessions, "noon", MORNING + timedelta(hours=5))
    send(three, sessions, "evening", EVENING)
    got = mail(three)
    for reader in BOTH:
        (evening,) = got[("evening", reader)]
        assert TRANSIT not in evening and RIVER not in evening and FLU in evening
    assert all(RIVER in got[("evening", r)][0] for r in EVENING_ONLY)
