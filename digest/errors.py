"""One exception hierarchy. Every message is one line a user can act on (what and where)."""

from __future__ import annotations


class DigestError(Exception):
    """Base of every error digest reports to a user; the CLI prints str(err) and exits 1."""

    exit_code = 1


class ConfigError(DigestError):
    """The configuration file or environment is wrong (names file, key and problem)."""

    exit_code = 2


class InputError(DigestError):
    """A user-supplied file or flag cannot be used at all (names file/row/field)."""


class SchemaError(DigestError):
    """The database schema is missing or behind the code."""


class NotFound(DigestError):
    """A named thing (newsletter, edition, subscriber, segment) does not exist."""


class EditionFrozen(DigestError):
    """The edition has started sending; it can no longer be rebuilt."""


class EditionPruned(DigestError):
    """The edition's ledger rows were pruned (`digest sends prune`): it is never sent again."""


class ProviderError(DigestError):
    """The email provider refused or failed in a way that stops the whole send."""


class GateClosed(DigestError):
    """A content gate blocked an unattended send (stale store, thin section, repeat)."""

    exit_code = 3  # distinct, so cron/systemd can tell "held back on purpose" from a failure


class RenderError(DigestError):
    """A template is missing or broken, or the rendered email cannot be used."""


class EmailTooLarge(DigestError):
    """The HTML of a variant is above the size where Gmail clips it."""


# Not an error: a send that ran to its end but left failed, deferred or unknown rows exits with
# this code (README, exit codes), distinct from 1 (failed), 2 (configuration) and 3 (held back).
EXIT_UNDELIVERED = 4
