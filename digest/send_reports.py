"""`digest sends report`: an edition's ledger by state, segment and variant, as text or CSV."""

from __future__ import annotations

import csv
import io
from datetime import date

from sqlalchemy.orm import Session

from digest import ledger
from digest.config import Config, NewsletterConfig
from digest.editions import get_edition
from digest.errors import NotFound
from digest.text import csv_row


def ledger_report(
    session: Session, config: Config, newsletter_id: str, edition_date: date
) -> ledger.LedgerReport:
    """`digest sends report`: the edition's ledger by state, segment and variant."""
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    return ledger.report(session, edition.id)


def variant_label(r: ledger.LedgerReport, variant: str, nl: NewsletterConfig) -> str:
    """A variant as a reader of the report knows it: its sections, and the segment blocks it
    shows (by the segment they are for, as the config names them now)."""
    label = ", ".join(r.variant_sections.get(variant, ()))
    shown = [
        nl.blocks[i].segment if i < len(nl.blocks) else f"block #{i + 1}"
        for i in r.variant_blocks.get(variant, ())
    ]
    if shown:
        label += f"; block for {', '.join(shown)}"
    return label


def ledger_csv(session: Session, config: Config, newsletter_id: str, edition_date: date) -> str:
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    out = io.StringIO()
    rows = map(csv_row, ledger.csv_rows(session, edition.id))  # formula-safe cells
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def format_report(r: ledger.LedgerReport, nl: NewsletterConfig) -> str:
    def states(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no rows"

    total = sum(r.counts.values())
    lines = [
        f"{r.newsletter} {r.edition_date} (edition {r.edition_status}): {total} recipient(s)",
        f"  {r.approval}",
        f"  {states(r.counts)}",
        "by segment:",
        *(f"  {seg}: {states(c)}" for seg, c in sorted(r.by_segment.items())),
        "by variant:",
        *(
            f"  {v} ({variant_label(r, v, nl)}): {states(c)}"
            for v, c in sorted(r.by_variant.items())
        ),
    ]
    if r.resolved:
        lines.append(f"resolved by provider events (no answer had come back): {states(r.resolved)}")
    if r.failures:
        lines.append("not delivered:")
        lines += [
            f"  {f.email}  {f.state}  after {f.attempts} attempt(s): {f.error}"
            + (
                f" (next attempt {f.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
                if f.next_attempt_at
                else ""
            )
            for f in r.failures
        ]
    return "\n".join(lines)
