"""`digest subscribers subscribe` with double opt-in, as an operator runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from digest_cli import cli
from tests.confirm_support import LINK, parse
from tests.fakes.smtp import free_port


@pytest.fixture
def run(db_url: str, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The CLI over the test config with double opt-in on `daily`; `run.via_smtp(port)` sends
    its mail to an SMTP port instead of the outbox, `run.via_smtp(None)` back to the outbox."""
    base = config_path.read_text(encoding="utf-8")
    base = base.replace('dir = "outbox"', f'dir = "{tmp_path / "outbox"}"')
    base = base.replace("[newsletters.daily]\n", "[newsletters.daily]\ndouble_opt_in = true\n")
    cfg = tmp_path / "digest.toml"
    cfg.write_text(base, encoding="utf-8")
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(cfg))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    def via_smtp(port: int | None) -> None:
        if port is None:
            cfg.write_text(base, encoding="utf-8")
            return
        text = base.replace("port = 2525", f"port = {port}\ntimeout = 2")
        text = text.replace("double_opt_in = true\n", 'double_opt_in = true\nprovider = "smtp"\n')
        cfg.write_text(text, encoding="utf-8")

    invoke.via_smtp = via_smtp  # type: ignore[attr-defined]
    return invoke


def test_subscribe_emails_the_link_and_says_where(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("subscribers", "subscribe", "New@Example.com", "-n", "daily")
    assert result.exit_code == 0
    assert (
        result.stdout == "new@example.com is pending on daily; confirmation email sent via outbox\n"
    )
    (file,) = (tmp_path / "outbox").glob("*.eml")
    msg = parse(file.read_bytes())
    assert msg["To"] == "new@example.com"
    text = msg.get_body(("plain",))
    assert text is not None and LINK.search(text.get_content())
    show = run("subscribers", "show", "new@example.com").stdout
    assert "  list daily: pending;" in show


def test_no_email_prints_the_link_instead(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = run("subscribers", "subscribe", "new@example.com", "-n", "daily", "--no-email")
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith("new@example.com is pending on daily; confirmation link: ")
    assert LINK.search(line)
    assert not (tmp_path / "outbox").exists()
    token = line.rpartition("/confirm/")[2]
    confirmed = run("subscribers", "confirm", token)
    assert confirmed.stdout == "new@example.com is active on daily\n"


def test_provider_failure_is_one_error_line_and_rerunning_resends(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run.via_smtp(free_port())  # nothing listens there
    result = CliRunner().invoke(cli, ["subscribers", "subscribe", "a@example.com", "-n", "daily"])
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: smtp did not take the confirmation email to a@example.com (")
    assert line.endswith(
        "a@example.com stays pending: run `digest subscribers subscribe a@example.com -n daily` "
        "again to resend it"
    )
    assert "  list daily: pending;" in run("subscribers", "show", "a@example.com").stdout
    run.via_smtp(None)
    again = run("subscribers", "subscribe", "a@example.com", "-n", "daily")
    assert again.stdout == "a@example.com is pending on daily; confirmation email sent via outbox\n"
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_already_subscribed_gets_no_second_email(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("subscribers", "add", "ann@example.com", "-n", "daily")
    result = run("subscribers", "subscribe", "ann@example.com", "-n", "daily")
    assert result.stdout == "ann@example.com is subscribed to daily\n"
    assert not (tmp_path / "outbox").exists()
