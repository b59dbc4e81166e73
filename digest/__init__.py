"""digest: pick the day's top stories, render a responsive email, send it with a ledger."""

__version__ = "0.1.0"
