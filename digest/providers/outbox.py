"""Outbox provider: each message becomes one .eml file in a folder (demo, --dry-run, audits).

Files are written to a temporary name and renamed, so a crash never leaves half a message; the
name comes from the ledger row, so a re-run after a crash overwrites rather than duplicates.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from digest.providers.base import (
    BUILD_ERRORS,
    Batch,
    Checkpoint,
    Closing,
    Kind,
    Outcome,
    RateLimiter,
    unbuildable,
)


class OutboxProvider(Closing):
    name = "outbox"
    batch_size = 500
    in_flight = 1

    def __init__(self, folder: Path, rate: float = 0.0) -> None:
        self.folder = folder
        self.limiter = RateLimiter(rate)

    def path_for(self, batch: Batch, delivery_id: int) -> Path:
        campaign = batch.variant.campaign.replace("/", "_")
        return self.folder / f"{campaign}_{delivery_id:08d}.eml"

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        self.folder.mkdir(parents=True, exist_ok=True)
        outcomes = []
        for i, m in enumerate(batch.messages):
            self.limiter.take()
            path = self.path_for(batch, m.delivery_id)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                raw = batch.mime(i)
            except BUILD_ERRORS as e:
                outcomes.append(unbuildable(m.delivery_id, e))
                continue
            try:
                tmp.write_bytes(raw)
                os.replace(tmp, path)
            except OSError as e:
                # A full disk fails the write half-way: leave no partial .tmp behind.
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                outcomes.append(
                    Outcome(m.delivery_id, Kind.RETRY, error=f"cannot write {path}: {e.strerror}")
                )
                continue
            outcomes.append(Outcome(m.delivery_id, Kind.ACCEPTED, provider_id=path.name))
        return outcomes

    def close(self) -> None:
        pass
