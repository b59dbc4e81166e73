"""Check before freezing: a send that cannot go out leaves the edition a draft (nobody has a row,
one clear error line), the cause can be fixed and the same command sends the same day; an
edition handed to nobody can be reopened. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.editions import Edition, EditionItem, reopen_edition
from digest.errors import DigestError, EditionFrozen
from digest_cli import cli
from tests.fakes.fixtures import smtp_server, tls_cert  # noqa: F401
from tests.fakes.population import add_population, email_for
from tests.fakes.smtp import SmtpServer
from tests.render_support import EDITION_DATE, store_edition
from tests.test_sending_ledger import rows, send, with_outbox

READERS = 6


@pytest.fixture
def edition(sessions: sessionmaker[Session], now: datetime) -> Edition:
    with sessions.begin() as session:
        e = store_edition(session)
        add_population(session, READERS, now)
    return e


@pytest.fixture
def outbox(config: Config, tmp_path: Path) -> Config:
    return with_outbox(config, tmp_path / "out")


def status(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        return session.scalars(select(Edition.status)).one()


def change_edition(sessions: sessionmaker[Session], **values: object) -> None:
    with sessions.begin() as session:
        session.execute(update(Edition).values(**values))


def change_lead(sessions: sessionmaker[Session], **values: object) -> None:
    """The first story of the first section (the one the subject leads with)."""
    with sessions.begin() as session:
        lead = session.scalars(
            select(EditionItem).order_by(EditionItem.section_position, EditionItem.rank)
        ).first()
        assert lead is not None
        for k, v in values.items():
            setattr(lead, k, v)


def refused(config: Config, sessions: sessionmaker[Session], now: datetime) -> DigestError:
    with pytest.raises(DigestError) as caught:
        send(config, sessions, now)
    error = caught.value
    assert "\n" not in str(error)
    assert str(error).startswith("not sending daily 2026-03-10: ")
    assert str(error).endswith(
        "the edition is still a draft and nobody got it: fix this and run the same command again"
    )
    assert status(sessions) == "draft"
    assert rows(sessions) == []
    return error


def sends_after_the_fix(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> None:
    report = send(config, sessions, now)
    assert report.sent_now == READERS and report.edition_status == "sent"
    assert len(list((tmp_path / "out").glob("*.eml"))) == READERS


def test_a_template_error_leaves_a_draft_and_the_fixed_template_sends(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    broken = tmp_path / "templates"
    broken.mkdir()
    (broken / "digest.txt").write_text("{{ newsletter.title }\n", encoding="utf-8")
    config = dataclasses.replace(outbox, templates_dir=broken)

    error = refused(config, sessions, now)

    assert "template" in str(error) and "digest.txt" in str(error)
    assert error.exit_code == 1
    (broken / "digest.txt").unlink()  # the shipped template again
    sends_after_the_fix(config, sessions, now, tmp_path)


def test_a_bad_subject_field_leaves_a_draft(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    change_edition(sessions, subject="{title}: {lede}")  # stored before the desk checked it

    error = refused(outbox, sessions, now)

    assert "unknown field {lede}" in str(error)
    change_edition(sessions, subject="{title}: {lead}")
    sends_after_the_fix(outbox, sessions, now, tmp_path)


def test_a_preheader_that_breaks_the_template_leaves_a_draft(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    change_edition(sessions, preheader="{headlines")

    error = refused(outbox, sessions, now)

    assert "preheader" in str(error)
    change_edition(sessions, preheader=None)
    sends_after_the_fix(outbox, sessions, now, tmp_path)


def test_an_oversized_variant_leaves_a_draft(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    # Within the bound of a dek (5,000 characters), but 17 KB of HTML each once escaped.
    with sessions.begin() as session:
        for item in session.scalars(select(EditionItem)):
            item.blurb = "<&> " * 1250

    error = refused(outbox, sessions, now)

    assert "above the 102 KB where Gmail clips it" in str(error)
    with sessions.begin() as session:
        for item in session.scalars(select(EditionItem)):
            item.blurb = None
    sends_after_the_fix(outbox, sessions, now, tmp_path)


def test_a_pinned_story_with_a_5_mb_title_leaves_a_draft_naming_the_story(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    change_lead(sessions, title="T" * 5_000_000, pinned=True)
    with sessions() as session:
        lead = session.scalars(select(EditionItem).where(EditionItem.pinned)).one()

    error = refused(outbox, sessions, now)

    assert f"story #{lead.article_id} (News " in str(error)
    assert "its title is 5,000,000 characters, above the 500 a story may have" in str(error)
    assert f"digest edition headline daily {lead.article_id} TEXT" in str(error)
    change_lead(sessions, headline="A headline the desk wrote instead")
    sends_after_the_fix(outbox, sessions, now, tmp_path)


def test_an_unknown_segment_leaves_a_draft(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime
) -> None:
    with pytest.raises(DigestError, match="the edition is still a draft"):
        send(outbox, sessions, now, segments=("nope",))
    assert status(sessions) == "draft" and rows(sessions) == []


def test_an_edition_handed_to_nobody_can_be_reopened_and_rebuilt(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime, tmp_path: Path
) -> None:
    part = send(outbox, sessions, now, limit=0)  # frozen, rows added, nothing handed over
    assert part.edition_status == "frozen" and len(rows(sessions)) == READERS
    nl = outbox.newsletter("daily")

    with sessions.begin() as session:
        message = reopen_edition(session, nl, EDITION_DATE, "ed", clock=lambda: now)

    assert message == (
        "edition daily 2026-03-10 reopened (was frozen; 6 unsent ledger row(s) removed): it is "
        "a draft again; change, rebuild or send it"
    )
    assert status(sessions) == "draft" and rows(sessions) == []
    with sessions() as session:
        stored = session.scalars(select(Edition)).one()
        assert stored.frozen_at is None
        assert [(e.by, e.action) for e in stored.edits] == [("ed", "reopen")]
    sends_after_the_fix(outbox, sessions, now, tmp_path)


def test_an_edition_someone_was_handed_cannot_be_reopened(
    outbox: Config, sessions: sessionmaker[Session], edition: Edition, now: datetime
) -> None:
    send(outbox, sessions, now, limit=1)
    nl = outbox.newsletter("daily")
    with (
        sessions.begin() as session,
        pytest.raises(EditionFrozen, match="1 of its messages were handed to the provider"),
    ):
        reopen_edition(session, nl, EDITION_DATE, "ed", clock=lambda: now)
    assert status(sessions) == "frozen" and len(rows(sessions)) == READERS


# --- from the command line ---------------------------------------------------------------------

Run = Callable[..., Result]


@pytest.fixture
def run(
    db_url: str,
    config_path: Path,
    edition: Edition,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Run]:
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    monkeypatch.setenv("DIGEST_EDITOR", "night desk")
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, [*args, "--date", "2026-03-10"], catch_exceptions=False)

    yield invoke


def test_cli_check_failure_is_one_line_then_the_fixed_edition_sends(
    run: Run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    change_lead(sessions, title="T" * 5_000_000, pinned=True)
    with sessions() as session:
        lead = session.scalars(select(EditionItem).where(EditionItem.pinned)).one().article_id

    failed = run("send", "daily", "--force")

    assert failed.exit_code == 1
    assert failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1
    assert failed.stderr.startswith("Error: not sending daily 2026-03-10: story #")
    assert status(sessions) == "draft"
    drop = run("edition", "drop", "daily", str(lead))
    assert drop.exit_code == 0, drop.output
    sent = run("send", "daily", "--force")
    assert sent.exit_code == 0, sent.output
    assert "ledger: sent 6; edition sent" in sent.stdout


def test_cli_reopen_and_the_frozen_rebuild_error_points_to_it(
    run: Run, sessions: sessionmaker[Session]
) -> None:
    assert run("send", "daily", "--force", "--limit", "0").exit_code == 0
    rebuild = run("edition", "build", "daily", "--force")
    assert rebuild.exit_code == 1
    assert "`digest edition reopen daily --date 2026-03-10` makes it a draft again" in (
        rebuild.stderr
    )

    reopened = run("edition", "reopen", "daily")

    assert reopened.exit_code == 0, reopened.output
    assert "reopened (was frozen; 6 unsent ledger row(s) removed)" in reopened.stdout
    assert run("edition", "build", "daily", "--force").exit_code == 0
    with sessions() as session:
        stored = session.scalars(select(Edition)).one()
        assert [(e.by, e.action) for e in stored.edits][0] == ("night desk", "reopen")
    again = run("edition", "reopen", "daily")
    assert again.exit_code == 1
    assert again.stderr == "Error: edition daily 2026-03-10 is a draft: nothing to reopen\n"


def test_cli_exit_code_4_when_a_reader_did_not_get_it_with_what_to_do(
    run: Run,
    config_path: Path,
    sessions: sessionmaker[Session],
    smtp_server: SmtpServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = tmp_path / "digest.toml"
    text = config_path.read_text(encoding="utf-8")
    config.write_text(
        text.replace(
            'host = "127.0.0.1"\nport = 2525',
            f'host = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "starttls"\n'
            'username = "digest"\ntimeout = 5',
        ),
        encoding="utf-8",
    )
    smtp_server.refuse[email_for(2)] = "550 5.1.1 no such mailbox"

    result = run("--config", str(config), "send", "daily", "--provider", "smtp", "--force")

    assert result.exit_code == 4, result.output
    assert "sent 5, failed 1, unknown 0" in result.stdout
    assert (
        "1 failed: see `digest sends report daily --date 2026-03-10`; "
        "`digest send daily --date 2026-03-10 --retry-failed` after fixing the cause"
    ) in result.stdout
    assert "exit code 4: not everyone got this edition" in result.stdout
    assert status(sessions) == "sent"  # everyone has a settled row: closed, but not all got it
    del smtp_server.refuse[email_for(2)]
    retried = run("--config", str(config), "send", "daily", "--provider", "smtp", "--retry-failed")
    assert retried.exit_code == 0, retried.output
    assert "sent 1, failed 0" in retried.stdout
    assert {r.state for r in rows(sessions)} == {"sent"}
