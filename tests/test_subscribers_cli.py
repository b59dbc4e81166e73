"""`digest subscribers ...` and `digest segments ...` as a user runs them."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from digest_cli import cli


@pytest.fixture
def run(db_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_import_show_list_and_segments(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "people.csv"
    csv.write_text(
        "email,name,region,tags,sections\n"
        "ann@example.com,Ann,Tampa Bay,vip,Business; News\n"
        "bob@example.com,Bob,Orlando,,\n"
        "bad-address,X,,,\n",
        encoding="utf-8",
    )
    result = run("subscribers", "import", str(csv), "--newsletter", "daily")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == (
        f"{csv} → daily: 2 added, 0 updated, 0 unchanged, 1 rejected, 0 suppressed"
    )
    assert f"rejected: {csv}: row 4: 'bad-address' is not a valid email address" in result.stderr

    show = run("subscribers", "show", "ANN@example.com")
    assert show.exit_code == 0
    assert "  region:       Tampa Bay" in show.stdout
    assert "  list daily: active; sections: Business, News" in show.stdout

    listed = run("subscribers", "list", "--newsletter", "daily")
    assert listed.stdout.splitlines()[-1] == "2 subscriber(s)"

    assert run("segments", "list").stdout.splitlines() == [
        'tampa                region = "Tampa Bay"',
        'vip                  tags contains "vip"',
        "2 segment(s)",
    ]
    seg = run("segments", "show", "tampa", "--newsletter", "daily")
    assert seg.stdout.splitlines() == [
        'tampa: region = "Tampa Bay"',
        "  daily: 1 recipient(s): ann@example.com",
    ]

    exported = run("subscribers", "export", "--newsletter", "daily", "--segment", "vip")
    assert exported.stdout.splitlines()[1].startswith("ann@example.com,Ann,active,")


def test_unsubscribe_forget_and_reimport(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert (
        run(
            "subscribers",
            "add",
            "ann@example.com",
            "-n",
            "daily",
            "--attr",
            "region=Tampa Bay",
            "--tag",
            "vip",
        ).exit_code
        == 0
    )
    out = run("subscribers", "unsubscribe", "ann@example.com", "-n", "daily").stdout
    assert out == "ann@example.com unsubscribed from daily\n"
    out = run("subscribers", "forget", "ann@example.com").stdout
    assert out == "erased: the address is kept only as a one-way hash on the suppression list\n"
    csv = tmp_path / "again.csv"
    csv.write_text("email\nAnn@Example.com\n", encoding="utf-8")
    out = run("subscribers", "import", str(csv), "-n", "daily").stdout
    assert out.endswith("0 added, 0 updated, 0 unchanged, 0 rejected, 1 suppressed\n")


def test_subscribe_and_confirm_prints_link(run) -> None:  # type: ignore[no-untyped-def]
    out = run("subscribers", "subscribe", "new@example.com", "-n", "daily").stdout
    assert out == "new@example.com is subscribed to daily\n"


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (
            ["subscribers", "show", "nobody@example.com"],
            1,
            "Error: no subscriber 'nobody@example.com'",
        ),
        (
            ["subscribers", "add", "a@@b", "-n", "daily"],
            1,
            "Error: 'a@@b' is not a valid email address: The part after the @-sign contains invalid "
            "characters: '@'.",
        ),
        (
            ["subscribers", "add", "a@example.com"],
            2,
            "Error: pass --newsletter (one of: daily, strict)",
        ),
        (
            ["subscribers", "add", "a@example.com", "-n", "weekly"],
            2,
            "Error: unknown newsletter 'weekly' (configured: daily, strict)",
        ),
        (
            ["subscribers", "add", "a@example.com", "-n", "daily", "--section", "Sports"],
            1,
            "Error: daily has no section 'Sports' (sections: News, Business, Health, Entertainment)",
        ),
        (
            ["subscribers", "add", "a@example.com", "-n", "daily", "--attr", "region"],
            2,
            "Error: Invalid value for --attr: 'region' is not NAME=VALUE",
        ),
        (
            ["subscribers", "confirm", "forged.token"],
            1,
            "Error: this confirm link is not valid (damaged or not issued by this site)",
        ),
        (["segments", "show", "nope"], 1, "Error: unknown segment 'nope' (configured: tampa, vip)"),
    ],
)
def test_errors_are_one_line(run, args: list[str], code: int, line: str) -> None:  # type: ignore[no-untyped-def]
    result = run(*args)
    assert result.exit_code == code
    assert result.stderr.strip().splitlines()[-1] == line


def test_import_of_a_non_utf8_file_is_one_error(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("email,name\nzoe@example.com,Zoë\n".encode("latin-1"))
    result = run("subscribers", "import", str(bad), "-n", "daily")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {bad}: not UTF-8 text (byte 0xeb on line 2); save it as 'CSV UTF-8' and "
        "import again; nothing was imported\n"
    )
    assert run("subscribers", "list").stdout == "0 subscriber(s)\n"


def test_every_command_has_help(run) -> None:  # type: ignore[no-untyped-def]
    for group in ("subscribers", "segments"):
        loaded = cli.get_command(click.Context(cli), group)
        for name, command in loaded.commands.items():  # type: ignore[union-attr]
            assert command.help, f"{group} {name} has no help"
