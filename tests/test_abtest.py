"""A/B subject lines end to end: the sample split evenly between the subjects, the wait (an
injected clock), the winner by unique click rate, the rest with the winner; a crash in the
middle of the sample and of the rest, resumed; every row's subject in the ledger; the winner
rule's ties and empty samples."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.abtest import AbTest, Arm, ab_send, arm_of, pick_winner
from digest.clicks import Click, record
from digest.clock import fixed
from digest.config import AbTestConfig, Config
from digest.ledger import Delivery, decode_variant
from digest.providers.base import Batch, Checkpoint, Outcome
from digest.providers.outbox import OutboxProvider
from digest.report import build_report, format_report
from digest.sending import SendOptions
from digest.tracking import TrackedLink
from tests.clicks_support import FAST, outbox, tracked, tracked_toml
from tests.fakes.population import add_population
from tests.render_support import EDITION_DATE, store_edition

READERS = 60


class Crash(BaseException):
    """The process dying in the middle of a send (nothing in the sender catches it)."""


class CrashingOutbox(OutboxProvider):
    def __init__(self, folder: Path, crash_at_batch: int | None) -> None:
        super().__init__(folder)
        self.batch_size = 5
        self.batches = 0
        self.crash_at_batch = crash_at_batch

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        self.batches += 1
        if self.batches == self.crash_at_batch:
            raise Crash
        return super().send(batch, checkpoint)


@pytest.fixture
def ab(config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path) -> Config:
    test = AbTestConfig(
        subjects=("Subject A", "Subject B"), sample=0.5, wait_minutes=60, min_sample=5
    )
    config = tracked(config, tmp_path, ab_test=test)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, READERS, now)
    return config


def step(config: Config, sessions, at: datetime, crash_at_batch: int | None = None):
    assert config.outbox.dir is not None
    provider = CrashingOutbox(Path(config.outbox.dir), crash_at_batch)
    options = SendOptions(retry=FAST, batch_size=5)
    return ab_send(
        config, sessions, "daily", EDITION_DATE, options, clock=fixed(at), provider=provider
    )


def ledger(sessions: sessionmaker[Session]) -> list[Delivery]:
    with sessions() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def test_ab_send_end_to_end_with_a_crash_in_the_sample_and_in_the_rest(
    ab: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    t0 = now
    with pytest.raises(Crash):
        step(ab, sessions, t0, crash_at_batch=2)  # dies during the first arm
    # The resume comes after the claims' lease (a dead worker's rows are recovered).
    t1 = t0 + timedelta(minutes=20)
    first = step(ab, sessions, t1)
    assert first.waiting and first.phase == "waiting"
    rows = ledger(sessions)
    edition_id = rows[0].edition_id
    subjects = Counter(r.subject for r in rows)
    assert set(subjects) == {"Subject A", "Subject B"}
    # Every row's subject is its reader's arm; the sample is about half, split evenly.
    for r in rows:
        arm = arm_of(edition_id, r.subscriber_id, 0.5, 2)
        assert arm is not None and r.subject == ("Subject A", "Subject B")[arm]
    assert 15 <= len(rows) <= 45
    assert abs(subjects["Subject A"] - subjects["Subject B"]) <= 12

    # Readers of B click (A's readers do not): B wins by unique click rate.
    with sessions.begin() as session:
        links = {
            link.section: link.id
            for link in session.scalars(select(TrackedLink).where(TrackedLink.kind == "story"))
        }
        outcomes = [
            record(
                session,
                Click(
                    links[decode_variant(r.sections)[0][0]],  # a story of the reader's email
                    edition_id,
                    r.subscriber_id,
                    t1 + timedelta(minutes=5),
                    user_agent="Mozilla/5.0 Safari/605.1.15",
                ),
            )
            for r in rows
            if r.subject == "Subject B" and r.state == "sent"
        ]
    assert outcomes and set(outcomes) == {"counted"}
    assert step(ab, sessions, t1 + timedelta(minutes=30)).waiting  # not yet

    with pytest.raises(Crash):
        step(ab, sessions, t1 + timedelta(minutes=61), crash_at_batch=3)
    with sessions() as session:
        test = session.get(AbTest, edition_id)
        assert test is not None
        assert (test.phase, test.winner) == ("rest", "Subject B"), test.reason
    done = step(ab, sessions, t1 + timedelta(minutes=90))
    assert done.phase == "done" and done.edition_status == "sent"
    assert "winner 'Subject B'" in done.summary()

    rows = ledger(sessions)
    assert len(rows) == READERS and len({r.subscriber_id for r in rows}) == READERS
    for r in rows:
        arm = arm_of(edition_id, r.subscriber_id, 0.5, 2)
        expected = "Subject B" if arm is None else ("Subject A", "Subject B")[arm]
        assert r.subject == expected
    # Nobody got the edition twice (rows a crash left `unknown` are not sent again).
    sent = Counter(m.to for m in outbox(ab))
    assert max(sent.values()) == 1
    assert {r.state for r in rows} <= {"sent", "unknown"}
    with sessions() as session:
        report = format_report(build_report(session, ab, "daily"))
    assert "A/B winner: Subject B" in report and "subjects:" in report


def test_the_winner_rule() -> None:
    a, b, c = "A", "B", "C"
    assert pick_winner([Arm(a, 100, 5), Arm(b, 100, 9)], 50).subject == b
    tie = pick_winner([Arm(a, 100, 9), Arm(b, 100, 9), Arm(c, 100, 2)], 50)
    assert tie.subject == a and "tie of 2" in tie.reason
    none = pick_winner([Arm(a, 100, 0), Arm(b, 100, 0)], 50)
    assert none.subject == a and "no clicks" in none.reason
    small = pick_winner([Arm(a, 10, 0), Arm(b, 10, 5)], 50)
    assert small.subject == a and "no arm reached 50" in small.reason
    # An arm under the minimum cannot win, however good its rate.
    assert pick_winner([Arm(a, 100, 5), Arm(b, 10, 9)], 50).subject == a


def test_arms_are_a_pure_function_of_the_reader() -> None:
    arms = [arm_of(7, s, 0.3, 3) for s in range(3000)]
    inside = [a for a in arms if a is not None]
    assert 800 <= len(inside) <= 1000
    assert all(700 * 0.25 < inside.count(k) < 1000 / 2 for k in range(3))
    assert arms == [arm_of(7, s, 0.3, 3) for s in range(3000)]


def test_config_refuses_a_bad_ab_test(tmp_path: Path) -> None:
    from digest.config import load_config
    from digest.errors import ConfigError

    base = (Path(__file__).parent / "data" / "digest.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(base + '\n[newsletters.daily.ab_test]\nsubjects = ["only one"]\n')
    with pytest.raises(ConfigError, match="ab_test.subjects: must list two to four"):
        load_config(bad)
    bad.write_text(base + '\n[newsletters.daily.ab_test]\nsubjects = ["a", "b"]\n')
    with pytest.raises(ConfigError, match="set track_clicks = true"):
        load_config(bad)
    _ = dataclasses


def test_digest_schedule_runs_the_ab_send_unattended(
    ab: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    from digest.scheduler import run_due
    from tests.schedule_support import MovingClock, runner

    cfg = dataclasses.replace(ab, newsletters={"daily": ab.newsletter("daily")})
    clock = MovingClock(datetime(2026, 3, 10, 10, 35, tzinfo=UTC))  # 06:35 in New York
    r = runner(cfg, sessions, clock, None, force=True)
    r.options = SendOptions(retry=FAST, batch_size=5)
    outcomes = []
    for minutes in (0, 30, 61):
        clock.now = datetime(2026, 3, 10, 10, 35, tzinfo=UTC) + timedelta(minutes=minutes)
        outcomes += [(x.outcome, x.message) for x in run_due(r, "daily")]
    assert [o for o, _ in outcomes] == ["waiting", "waiting", "sent"], outcomes
    assert "winner" in outcomes[-1][1]
    rows = ledger(sessions)
    assert len(rows) == READERS and max(Counter(m.to for m in outbox(ab)).values()) == 1


def test_digest_send_on_an_ab_newsletter_runs_the_ab_steps(
    sessions: sessionmaker[Session],
    db_url: str,
    now: datetime,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from digest_cli import cli

    path = tracked_toml(
        tmp_path, '\n[newsletters.daily.ab_test]\nsubjects = ["One", "Two"]\nsample = 0.5\n'
    )
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    with sessions.begin() as session:
        store_edition(session)
        add_population(session, 10, now)
    result = CliRunner().invoke(cli, ["send", "daily", "--date", "2026-03-10"])
    assert result.exit_code == 0, result.output
    assert "A/B daily 2026-03-10: waiting" in result.output
    assert {r.subject for r in ledger(sessions)} <= {"One", "Two"}
