"""VERP return paths (Variable Envelope Return Path): each SMTP message's envelope sender names
its ledger row, `bounces+1234-k3x9q2ma@news.example`, so a bounce finds the row it answers
without reading the bounce's text. The tag is an HMAC of the row id under the site secret: a
forged bounce cannot name a row it was never sent for.

The mailbox behind `bounces.return_path` must accept these addresses (Postfix:
`recipient_delimiter = +`; Exim: `local_part_suffix = +*`; qmail: `-` and a .qmail-default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from digest.config import Config

_TAG_LENGTH = 8  # base32 characters: 40 bits


def _tag(secret: str, delivery_id: int) -> str:
    mac = hmac.new(secret.encode(), f"digest.verp:{delivery_id}".encode(), hashlib.sha256)
    return base64.b32encode(mac.digest()).decode("ascii").lower()[:_TAG_LENGTH]


def verp_address(config: Config, secret: str, delivery_id: int) -> str:
    """The envelope sender of ledger row `delivery_id` (config.bounces.verp must be on)."""
    assert config.bounces.return_path is not None
    local, _, domain = config.bounces.return_path.rpartition("@")
    delimiter = config.bounces.delimiter
    return f"{local}{delimiter}{delivery_id}-{_tag(secret, delivery_id)}@{domain}"


def read_verp(config: Config, secret: str, address: str) -> int | None:
    """The ledger row a VERP address names, or None (not ours, or a forged tag)."""
    if config.bounces.return_path is None:
        return None
    local, _, domain = config.bounces.return_path.lower().rpartition("@")
    pattern = (
        rf"{re.escape(local)}{re.escape(config.bounces.delimiter)}(\d{{1,18}})-([a-z2-7]{{8}})"
        rf"@{re.escape(domain)}"
    )
    m = re.fullmatch(pattern, address.strip().strip("<>").lower())
    if m is None:
        return None
    delivery_id = int(m.group(1))
    return delivery_id if hmac.compare_digest(m.group(2), _tag(secret, delivery_id)) else None
