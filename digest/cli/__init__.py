"""`digest` command line: a thin click front over the library in digest/ and subscribers/.

Each command parses flags, calls one library function and prints its result. Library errors
(DigestError) become one `Error: ...` line and a non-zero exit, never a traceback. The commands
live in one module per area (store, editions, audience, sending, service, readers), listed in
digest.cli.base.COMMANDS and imported when one of them is run. Each command imports the library
it calls inside its body, so `digest --help` and `digest <cmd> --help` load no database layer,
template engine or provider.
"""

from __future__ import annotations

from digest.cli.base import COMMANDS, App, cli, load_command

__all__ = ["App", "cli", "load_all", "main"]


def main() -> None:
    cli(prog_name="digest")


def load_all() -> None:
    """Import every command's module (for tests that patch names in them)."""
    for name in COMMANDS:
        load_command(name)
