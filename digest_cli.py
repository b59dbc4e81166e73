"""`digest` command line, the entry point (`digest = "digest_cli:main"`): the commands are in
digest/cli/, one module per area."""

from __future__ import annotations

from digest.cli import App, cli, main

__all__ = ["App", "cli", "main"]

if __name__ == "__main__":
    main()
