"""The one place digest reads the time, so tests can move it instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


def fixed(at: datetime) -> Clock:
    """A clock that always answers `at` (must be timezone-aware)."""
    if at.tzinfo is None:
        raise ValueError("fixed clock needs a timezone-aware datetime")
    return lambda: at
