"""`digest --help`, `digest <cmd> --help` and shell completion start in a blink: importing the
CLI and printing any command's help loads no database layer, templates, CSS inliner, web app or
provider library (they cost most of a second; each command imports what it uses), and
`digest --help` imports none of the command modules (each loads when its command is used)."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from digest.cli import load_all
from digest.cli.base import COMMANDS
from digest_cli import cli

HEAVY = (
    "sqlalchemy",
    "jinja2",
    "premailer",
    "flask",
    "sendgrid",
    "babel",
    "feedparser",
    "prometheus_client",
)


def heavy(modules: list[str]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in HEAVY})


def command_modules(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("digest.cli.") and m != "digest.cli.base")


def run_python(code: str, *args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_importing_the_cli_loads_no_heavy_module() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import digest_cli"],
        capture_output=True,
        text=True,
        check=True,
    )
    # importtime lines: "import time: self | cumulative | <indent>module"
    loaded = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "digest_cli" in loaded
    assert heavy(loaded) == []
    assert command_modules(loaded) == []


HELP = """
import contextlib, io, json, sys
import digest_cli
from digest.cli import load_all

def help_text(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            digest_cli.cli.main([*args, "--help"], prog_name="digest", standalone_mode=False)
        except SystemExit:
            pass
    return out.getvalue()

before = help_text(sys.argv[1:])
modules = sorted(sys.modules)
load_all()
print(json.dumps({"help": before, "modules": modules, "loaded_help": help_text(sys.argv[1:])}))
"""


def test_digest_help_lists_every_command_without_importing_one() -> None:
    result = run_python(HELP)
    assert heavy(result["modules"]) == []
    assert command_modules(result["modules"]) == []
    # the summaries in COMMANDS read exactly as the commands' own docstrings would
    assert result["help"] == result["loaded_help"]
    assert all(f"  {name} " in result["help"] for name in COMMANDS)


def test_a_commands_help_imports_its_own_module_only() -> None:
    result = run_python(HELP, "send")
    assert result["help"].startswith("Usage: digest send [OPTIONS] NEWSLETTER")
    assert command_modules(result["modules"]) == ["digest.cli.sending"]
    assert heavy(result["modules"]) == []


def test_every_command_module_command_is_listed_with_its_docstrings_summary() -> None:
    load_all()
    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None
        assert command.get_short_help_str(limit=10_000) == summary, name
    subcommands = {
        id(sub)
        for module in command_module_objects()
        for value in vars(module).values()
        if isinstance(value, click.Group)
        for sub in value.commands.values()
    }
    top_level = {
        value.name
        for module in command_module_objects()
        for value in vars(module).values()
        if isinstance(value, click.Command) and id(value) not in subcommands
    }
    assert top_level == set(COMMANDS)  # a command written in digest/cli/ but not listed fails


def command_module_objects() -> list[object]:
    return [sys.modules[m] for m in command_modules(list(sys.modules))]


HELP_OF_EVERY_COMMAND = """
import json, sys
import click
import digest_cli

def paths(group, prefix):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield [*prefix, name]
        if isinstance(command, click.Group):
            yield from paths(command, [*prefix, name])

shown = 0
for args in [[], *paths(digest_cli.cli, [])]:
    try:
        digest_cli.cli.main([*args, "--help"], prog_name="digest", standalone_mode=False)
    except SystemExit:
        pass
    shown += 1
print(json.dumps({"shown": shown, "modules": sorted(sys.modules)}))
"""


def test_help_of_every_command_loads_no_heavy_module() -> None:
    result = run_python(HELP_OF_EVERY_COMMAND)
    assert result["shown"] > 30  # every group and command of the CLI
    assert heavy(result["modules"]) == []


COMPLETE = """
import json, os, sys
import digest_cli
os.environ.update({"_DIGEST_COMPLETE": "bash_complete", "COMP_WORDS": "digest s", "COMP_CWORD": "1"})
try:
    digest_cli.cli.main([], prog_name="digest")
except SystemExit:
    pass
print(json.dumps({"modules": sorted(sys.modules)}))
"""


def test_completing_a_command_name_imports_no_command_module() -> None:
    done = subprocess.run(
        [sys.executable, "-c", COMPLETE], capture_output=True, text=True, check=True
    )
    names = done.stdout.splitlines()[:-1]
    assert {"plain,schedule", "plain,segments", "plain,send", "plain,sends"} <= set(names)
    modules = json.loads(done.stdout.splitlines()[-1])["modules"]
    assert command_modules(modules) == []
    assert heavy(modules) == []


def test_load_all_registers_every_command() -> None:
    load_all()
    assert set(COMMANDS) <= set(cli.commands)
