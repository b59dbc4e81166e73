"""The editor's morning end to end, on an injected clock: build, edit, preview (the server shows
each edit on reload), proof, the approval hold, approve, the scheduled send, the report."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from digest.config import load_config
from digest.preview import PreviewServer
from digest.scheduler import Runner, run_due
from digest.selection import edition_window
from digest_cli import cli
from tests.cli_support import set_cli_clock
from tests.factories import add_article
from tests.fakes.population import add_population
from tests.schedule_support import MovingClock

DATA = Path(__file__).parent / "data"


@pytest.fixture
def desk_config(tmp_path: Path) -> Path:
    """The test config, with approval required of Ana and a desk address for proofs."""
    text = (
        (DATA / "digest.toml")
        .read_text(encoding="utf-8")
        .replace(
            'title = "The Test Gazette"\n',
            'title = "The Test Gazette"\napproval = "required"\napprovers = ["Ana"]\n'
            'proof_to = ["desk@news.example"]\n',
        )
    )
    path = tmp_path / "digest.toml"
    path.write_text(text, encoding="utf-8")
    return path


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
        return str(response.read().decode("utf-8"))


def test_edit_preview_proof_approve_and_the_scheduled_send(
    desk_config: Path,
    db_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(desk_config)
    nl = config.newsletter("daily")
    _, end = edition_window(nl, datetime(2026, 3, 10).date())
    due = end.astimezone(UTC)  # 10:30 UTC
    with sessions.begin() as session:
        for h, title in enumerate(["Bridge vote tonight", "Storm moves east", "Budget passes"], 1):
            add_article(session, due - timedelta(hours=h), title=title, popularity=1000 - h)
        add_article(session, due - timedelta(hours=2), title="Markets rally", section="Business")
        add_population(session, 4, due - timedelta(days=3))
    clock = MovingClock(due - timedelta(hours=2))  # the desk starts at 04:30 New York
    set_cli_clock(monkeypatch, clock)
    monkeypatch.chdir(tmp_path)  # the config's outbox is ./outbox
    env = {"DIGEST_DATABASE_URL": db_url, "DIGEST_DATE": "2026-03-10", "DIGEST_EDITOR": "Lee"}

    def digest(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(desk_config), *args], env=env)

    assert digest("edition", "build", "daily").exit_code == 0
    server = PreviewServer(config, sessions, nl, due.date(), port=0)
    server.start()
    try:
        before = fetch(server.url + "html")
        assert "Storm moves east" in before and "Vote" not in before
        # Edit: a note, a story dropped, a headline sharpened.
        assert (
            digest(
                "edition",
                "note",
                "daily",
                "Vote **tonight**: [how to watch](https://news.example/watch).",
            ).exit_code
            == 0
        )
        assert digest("edition", "drop", "daily", "News:2").exit_code == 0
        assert (
            digest("edition", "headline", "daily", "News:1", "Tonight: the bridge vote").exit_code
            == 0
        )
        after = fetch(server.url + "html")  # the same page, reloaded
        assert "Vote <strong>tonight</strong>" in after
        assert "Storm moves east" not in after
        assert ">Tonight: the bridge vote</a>" in after
        assert "Tonight: the bridge vote" in fetch(server.url)  # the index lists the subject
        assert "Vote tonight: how to watch" in fetch(server.url + "text")
    finally:
        server.close()

    # Proof to the desk (proof_to from the config): not the readers' ledger, not frozen.
    proof = digest("proof", "daily")
    assert proof.exit_code == 0, proof.output
    proofs = [p.read_text() for p in (tmp_path / "outbox" / "proofs").glob("*.eml")]
    assert len(proofs) == 4  # one per variant the four readers get
    assert all("Subject: [PROOF] The Test Gazette: " in p for p in proofs)
    assert any("[PROOF] The Test Gazette: Tonight: the bridge vote" in p for p in proofs)

    # Due at 06:30 New York: held until Ana approves, one line saying so (exit 3).
    clock.now = due + timedelta(minutes=1)
    held = digest("send", "daily", "--if-due")
    assert held.exit_code == 3, held.output
    assert (
        "not sending daily 2026-03-10: waiting for approval: Ana must approve it with "
        "`digest edition approve daily --date 2026-03-10 --by NAME`" in held.stderr
    )
    assert list((tmp_path / "outbox").glob("*.eml")) == []
    wrong = digest("edition", "approve", "daily")  # DIGEST_EDITOR is Lee
    assert wrong.exit_code == 1 and "Lee may not approve daily: approvers are Ana" in wrong.output
    assert digest("edition", "approve", "daily", "--by", "ana").exit_code == 0

    # The scheduler's next retry sends it.
    clock.now = due + timedelta(minutes=15)
    (result,) = run_due(Runner(config, sessions, clock), "daily")
    assert result.outcome == "sent", result.message
    sent = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(sent) == 4
    # Readers' section preferences give them different leads (and the ledger's row order,
    # so the files' order, is the database's): the copy that leads with News shows the edits.
    msgs = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sent]
    leading = [m for m in msgs if m["Subject"] == "The Test Gazette: Tonight: the bridge vote"]
    assert leading, [m["Subject"] for m in msgs]
    msg = leading[0]
    body = msg.get_body(("plain",))
    assert body is not None and "Vote tonight: how to watch" in body.get_content()
    assert "Storm moves east" not in body.get_content()

    report = digest("sends", "report", "daily")
    assert "approved by ana at 2026-03-10 10:31 UTC" in report.output
    assert "sent 4" in report.output
    late = digest("edition", "note", "daily", "Too late")
    assert late.exit_code == 1 and "it can no longer be changed" in late.output
    listed = digest("edition", "list", "daily")
    assert listed.output.startswith("2026-03-10  sent")
    assert "sent 4 of 4" in listed.output
