"""`digest` command line: a thin click front over the library in digest/ and subscribers/.

Each command parses flags, calls one library function and prints its result. Library errors
(DigestError) become one `Error: ...` line and a non-zero exit, never a traceback. The commands
live in one module per area (store, editions, audience, sending, service, readers); importing this
package registers them all on `cli`. Each command imports the library it calls inside its
body, so `digest --help` loads no database layer, template engine or provider.
"""

from __future__ import annotations

from digest.cli import audience, editions, readers, sending, service, store
from digest.cli.base import App, cli

# --- commands from other areas register in a module of their own, imported above ---------

__all__ = [
    "App",
    "audience",
    "cli",
    "editions",
    "main",
    "readers",
    "sending",
    "service",
    "store",
]


def main() -> None:
    cli(prog_name="digest")
