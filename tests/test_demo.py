"""`make demo`'s job: the whole pipeline on the sample newsroom, re-runnable."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from digest.cli import load_all
from digest.clock import fixed
from digest.config import load_config
from digest.dkim import load_key, verify
from digest_cli import cli
from tests.cli_support import set_cli_clock

EXAMPLE = Path(__file__).parent.parent / "digest.example.toml"


def run_demo(folder: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Result]:
    """`digest demo` in `folder` (its .var/ there), with a copy of the example config beside
    it, as `make demo` runs it from a checkout (the config's demo DKIM key is made in .var/)."""
    monkeypatch.chdir(folder)
    config = folder / "digest.example.toml"
    if not config.exists():
        config.write_text(EXAMPLE.read_text())
    env = {"DIGEST_DATABASE_URL": f"sqlite:///{folder}/demo.db"}
    return config, CliRunner().invoke(cli, ["--config", str(config), "demo"], env=env)


def test_demo_delivers_to_the_outbox_and_reruns_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, first = run_demo(tmp_path, monkeypatch)
    assert first.exit_code == 0, first.output
    assert "ledger.json: 30 new, 0 updated, 0 unchanged, 0 rejected" in first.output
    assert "25 added" in first.output
    assert "sent 25, failed 0" in first.output
    outbox = sorted((tmp_path / ".var" / "outbox").glob("*.eml"))
    assert len(outbox) == 25
    msg = message_from_bytes(outbox[0].read_bytes(), policy=policy.default)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The desk: the commands it ran, a note added and a story dropped before the send.
    lines = first.output.splitlines()
    ran = [line for line in lines if line.startswith("$ digest ")]
    assert [r.split()[2] for r in ran[:3]] == ["ingest", "subscribers", "edition"]
    assert any(r.startswith("$ digest edition note morning") for r in ran)
    drop = next(r for r in ran if r.startswith("$ digest edition drop morning"))
    dropped = lines[lines.index(drop) + 1]
    assert " dropped '" in dropped
    title = dropped.split(" dropped '", 1)[1].rsplit("' (", 1)[0]
    assert ran[-2].startswith("$ digest send morning")
    # The end: readers click through the web app's redirect, and the report counts them.
    assert ran[-1].startswith("$ digest report morning")
    assert "unique clickers" in first.output and "flagged, not counted" in first.output
    summary = next(line for line in lines if " delivered, " in line and "clickers" in line)
    assert summary.split(": ", 1)[1].startswith(
        "25 delivered, 8 unique clickers (32.0%), 15 clicks"
    )
    text = msg.get_body(("plain",))
    assert text is not None
    assert "Good morning from the desk." in text.get_content()
    assert title not in text.get_content()
    assert len(list((tmp_path / ".var" / "outbox" / "proofs").glob("*.eml"))) == 1
    assert (tmp_path / ".var" / "preview.html").read_text().startswith("<!DOCTYPE html>")
    assert "created a demo DKIM key (selector demo2026)" in first.output
    record = load_key(load_config(config).dkim.keys[0]).record()
    records = {"demo2026._domainkey.ledger.example": record}
    assert all(verify(p.read_bytes(), records) == [True] for p in outbox)

    _, again = run_demo(tmp_path, monkeypatch)
    assert again.exit_code == 0, again.output
    assert "30 unchanged" in again.output and "sent 0, failed 0" in again.output
    assert len(list((tmp_path / ".var" / "outbox").glob("*.eml"))) == 25


def test_demo_sample_is_dated_so_each_day_is_new_content(tmp_path: Path) -> None:
    from digest.demo import shifted_sample

    day1 = shifted_sample(tmp_path / "a", datetime(2026, 5, 1, 9, tzinfo=UTC))
    day2 = shifted_sample(tmp_path / "b", datetime(2026, 5, 2, 9, tzinfo=UTC))
    text1, text2 = day1[0].read_text(), day2[0].read_text()
    assert "https://ledger.example/2026/05/01/" in text1
    assert "https://ledger.example/2026/05/02/" in text2
    assert '"published": "2026-05-01T08:00:00+00:00"' in text1


def test_a_rerun_before_todays_send_time_finds_the_same_stories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the morning's send time the sample is dated from the clock: a second run minutes
    later must still find every story unchanged (the anchor is kept for the local day)."""
    load_all()
    # 01:10 and 01:25 in New York (the example's zone), long before its 06:30 send.
    set_cli_clock(monkeypatch, fixed(datetime(2026, 12, 2, 6, 10, tzinfo=UTC)))
    _, first = run_demo(tmp_path, monkeypatch)
    assert first.exit_code == 0, first.output
    set_cli_clock(monkeypatch, fixed(datetime(2026, 12, 2, 6, 25, tzinfo=UTC)))
    _, again = run_demo(tmp_path, monkeypatch)
    assert again.exit_code == 0, again.output
    assert "0 new, 0 updated, 30 unchanged" in again.output
    assert "sent 0, failed 0" in again.output
