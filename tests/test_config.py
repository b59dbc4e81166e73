"""Configuration: a good file loads; each broken one gives one line naming file, key, problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.config import load_config
from digest.errors import ConfigError
from digest_cli import cli

GOOD = """
[newsletters.am]
title = "AM"
from_email = "am@news.example"
timezone = "Europe/Berlin"
send_time = "07:15"
sections = [{ name = "News", stories = 2, min = 1 }, "Sports"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "digest.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    nl = cfg.newsletter("am")
    assert nl.section_names == ("News", "Sports")
    assert nl.sections[0].min == 1 and nl.sections[1].stories == 3
    assert (nl.send_time.hour, nl.send_time.minute) == (7, 15)
    assert nl.provider == "outbox" and nl.lookback_hours == 24
    assert cfg.selection.half_life_hours == 12


def test_example_config_is_valid() -> None:
    cfg = load_config(Path(__file__).parent.parent / "digest.example.toml")
    assert "morning" in cfg.newsletters


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('timezone = "Europe/Berlin"', 'timezone = "Mars/Base"'),
            "newsletters.am.timezone: 'Mars/Base' is not an IANA time zone",
        ),
        (
            ('send_time = "07:15"', 'send_time = "25:00"'),
            "newsletters.am.send_time: '25:00' is not a 24-hour HH:MM time",
        ),
        (
            ("stories = 2, min = 1", "stories = 2, min = 3"),
            "newsletters.am.sections[0].min: must be at most 2, got 3",
        ),
        (
            ("stories = 2", 'stories = "two"'),
            "newsletters.am.sections[0].stories: must be a whole number, not 'two'",
        ),
        (('title = "AM"', 'titel = "AM"'), "newsletters.am.titel: unknown key"),
        (
            ('from_email = "am@news.example"', 'from_email = "nobody"'),
            "newsletters.am.from_email: 'nobody' is not an email address",
        ),
        (('"Sports"', '"news"'), "newsletters.am.sections[1].name: section 'news' is listed twice"),
    ],
)
def test_broken_config_names_file_key_and_problem(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"digest.toml: not valid TOML"):
        load_config(write(tmp_path, "[newsletters\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_cli_prints_one_error_line_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("Europe/Berlin", "Nowhere"))
    result = CliRunner().invoke(
        cli,
        ["--config", str(path), "edition", "show", "am"],
        env={"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/d.db"},
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {path}: newsletters.am.timezone: 'Nowhere' is not an IANA time zone "
        "(e.g. America/New_York)"
    ]


def test_every_command_has_help_text() -> None:
    import click

    def walk(cmd: click.Command, path: str) -> list[str]:
        missing = [] if (cmd.help or cmd.short_help) else [path]
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(cli, "digest") == []


def test_a_config_path_that_does_not_exist_is_an_error_even_for_db_only_commands(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        cli,
        ["--config", str(tmp_path / "typo.toml"), "articles"],
        env={"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path}/d.db"},
    )
    assert result.exit_code == 2
    assert result.output.strip().endswith(
        f"Error: Invalid value for --config: {tmp_path / 'typo.toml'}: no such config file"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "providers.smtp.connections: must be at least 1, got 0"),
        ('"two"', "providers.smtp.connections: must be a whole number, not 'two'"),
    ],
)
def test_smtp_connections_out_of_range_is_one_error(
    tmp_path: Path, value: str, message: str
) -> None:
    path = write(tmp_path, GOOD + f"\n[providers.smtp]\nconnections = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert load_config(write(tmp_path, GOOD)).smtp.connections == 1
