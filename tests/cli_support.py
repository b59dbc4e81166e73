"""Moving the time every `digest` command reads."""

from __future__ import annotations

import sys

import pytest

import digest.cli  # noqa: F401  (registers every command module)
from digest.clock import Clock


def set_cli_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    """Each module of digest.cli holds its own `utcnow` (the clock its commands pass on)."""
    for name, module in list(sys.modules.items()):
        if (name == "digest.cli" or name.startswith("digest.cli.")) and hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", clock)
