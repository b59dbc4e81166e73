"""`digest --help`, `digest <cmd> --help` and shell completion start in a blink: importing the
CLI and printing any command's help loads no database layer, templates, CSS inliner, web app or
provider library (they cost most of a second; each command imports what it uses)."""

from __future__ import annotations

import json
import subprocess
import sys

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


HELP_OF_EVERY_COMMAND = """
import json, sys
import click
import digest_cli

def paths(group, prefix):
    for name, command in sorted(group.commands.items()):
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
    done = subprocess.run(
        [sys.executable, "-c", HELP_OF_EVERY_COMMAND], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["shown"] > 30  # every group and command of the CLI
    assert heavy(result["modules"]) == []
