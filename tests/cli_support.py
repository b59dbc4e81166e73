"""Moving the time every `digest` command reads."""

from __future__ import annotations

import sys

import pytest

from digest.cli import load_all
from digest.clock import Clock

load_all()  # every command module, so each one's `utcnow` can be moved


def set_cli_clock(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    """Each module of digest.cli holds its own `utcnow` (the clock its commands pass on)."""
    for name, module in list(sys.modules.items()):
        if (name == "digest.cli" or name.startswith("digest.cli.")) and hasattr(module, "utcnow"):
            monkeypatch.setattr(module, "utcnow", clock)
