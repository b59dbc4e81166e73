"""`digest sends report`: an edition's ledger by state, segment and variant (the queries and
their text), and every row as CSV."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session

from digest.config import Config, NewsletterConfig
from digest.editions import get_edition
from digest.errors import EditionPruned, NotFound
from digest.ledger import STATES, Delivery, decode_layout
from digest.report_counts import edition_groups
from digest.summaries import pruned_on, summaries
from digest.text import csv_row


@dataclass(frozen=True)
class Failure:
    email: str
    state: str
    attempts: int
    error: str
    next_attempt_at: datetime | None = None  # deferred rows: when they are tried again


@dataclass(frozen=True)
class LedgerReport:
    """Who got an edition, who did not, and why."""

    newsletter: str
    edition_date: date
    edition_status: str
    counts: dict[str, int]
    by_segment: dict[str, dict[str, int]]
    by_variant: dict[str, dict[str, int]]
    variant_sections: dict[str, tuple[str, ...]]
    failures: list[Failure]
    # Indexes into the newsletter's blocks each variant shows (two variants can have the same
    # sections and differ by their blocks).
    variant_blocks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    approval: str = ""  # who signed the edition off (digest.desk)
    # Rows settled by a provider's later event (SendGrid's webhook), by state.
    resolved: dict[str, int] = field(default_factory=dict)
    # How many stories each variant leaves out (sent today in another newsletter).
    variant_left_out: dict[str, int] = field(default_factory=dict)
    # The cross tab behind the counts, rows by (segment, variant, state), and each variant's
    # layout as stored (its `sections` column): what a pruned edition's summary keeps.
    groups: dict[tuple[str, str, str], int] = field(default_factory=dict)
    variant_layouts: dict[str, str] = field(default_factory=dict)


def report(session: Session, edition_id: int, max_failures: int = 200) -> LedgerReport:
    from digest.editions import Edition, approval_text

    edition = session.get(Edition, edition_id)
    assert edition is not None
    kept = summaries(session, [edition_id]).get(edition_id)
    if kept is not None:  # pruned: the rows are gone, the summary has every figure
        return _from_summary(edition, kept["ledger"], approval_text(edition))
    by_segment: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    by_variant: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    sections: dict[str, tuple[str, ...]] = {}
    blocks: dict[str, tuple[int, ...]] = {}
    left_out: dict[str, int] = {}
    # The counts the ledger's triggers keep (digest.report_counts): a pass over a million
    # rows was 1.3-1.9 s. The edition's date names its partition (PostgreSQL) for the reads of
    # rows below: each variant's layout, and the rows not delivered.
    mine = (Delivery.edition_id == edition_id, Delivery.edition_date == edition.edition_date)
    rows = edition_groups(session, edition_id)
    totals = dict.fromkeys(STATES, 0)
    resolved: dict[str, int] = {}
    states_of: dict[str, set[str]] = defaultdict(set)
    groups: dict[tuple[str, str, str], int] = defaultdict(int)
    for segment, variant, state, n, by_event in rows:  # every group has rows
        totals[state] += n
        if by_event:
            resolved[state] = resolved.get(state, 0) + by_event
        by_segment[segment or "(all)"][state] += n
        by_variant[variant][state] += n
        states_of[variant].add(state)
        groups[(segment, variant, state)] += n
    layouts: dict[str, str] = {}
    for variant, states in states_of.items():
        layouts[variant] = _layout(session, mine, variant, states)
        sections[variant], blocks[variant], skip = decode_layout(layouts[variant])
        left_out[variant] = len(skip)
    # Only states the counts found: when every row was sent there is nothing to look for, and
    # looking meant reading the whole edition once more (a third of the report at a million).
    listed = [s for s in ("deferred", "failed", "unknown", "suppressed", "skipped") if totals[s]]
    failures = _failures(session, mine, listed, max_failures) if listed else []
    return LedgerReport(
        edition.newsletter,
        edition.edition_date,
        edition.status,
        totals,
        dict(by_segment),
        dict(by_variant),
        sections,
        failures,
        blocks,
        approval_text(edition),
        {state: resolved[state] for state in STATES if state in resolved},
        left_out,
        dict(groups),
        layouts,
    )


def _failures(session: Session, mine: Any, states: list[str], limit: int) -> list[Failure]:
    rows = session.execute(
        select(
            Delivery.email,
            Delivery.state,
            Delivery.attempts,
            Delivery.last_error,
            Delivery.next_attempt_at,
        )
        .where(*mine, Delivery.state.in_(states))
        .order_by(Delivery.state, Delivery.id)
        .limit(limit)
    )
    return [
        Failure(email, state, attempts, error or "", due if state == "deferred" else None)
        for email, state, attempts, error, due in rows
    ]


def _layout(session: Session, mine: Any, variant: str, states: set[str]) -> str:
    """The `sections` of one of a variant's rows (every row of a variant has the same), found
    through a partial index when the variant has sent or pending rows."""
    found = select(Delivery.sections).where(*mine, Delivery.variant == variant).limit(1)
    for state in ("sent", "pending"):
        if state in states:  # a literal: SQLite uses a partial index only for one
            found = found.where(Delivery.state == literal_column(f"'{state}'"))
            break
    raw = session.scalar(found)
    assert raw is not None, variant
    return raw


def _from_summary(edition: Any, kept: dict[str, Any], approval: str) -> LedgerReport:
    """The report of a pruned edition, from its summary (digest.summaries)."""
    by_segment: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    by_variant: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
    sections: dict[str, tuple[str, ...]] = {}
    blocks: dict[str, tuple[int, ...]] = {}
    left_out: dict[str, int] = {}
    groups: dict[tuple[str, str, str], int] = defaultdict(int)
    layouts: dict[str, str] = {}
    for segment, variant, secs, state, n in kept["groups"]:
        by_segment[segment or "(all)"][state] += n
        by_variant[variant][state] += n
        groups[(segment, variant, state)] += n
        layouts[variant] = secs
        sections[variant], blocks[variant], skip = decode_layout(secs)
        left_out[variant] = len(skip)
    failures = [
        Failure(email, state, attempts, error, datetime.fromisoformat(due) if due else None)
        for email, state, attempts, error, due in kept["failures"]
    ]
    return LedgerReport(
        edition.newsletter,
        edition.edition_date,
        edition.status,
        kept["counts"],
        dict(by_segment),
        dict(by_variant),
        sections,
        failures,
        blocks,
        approval,
        kept["resolved"],
        left_out,
        dict(groups),
        layouts,
    )


CSV_COLUMNS = (
    "delivery_id",
    "subscriber_id",
    "email",
    "state",
    "variant",
    "segment",
    "attempts",
    "provider",
    "provider_message_id",
    "settled_at",
    "last_error",
    "next_attempt_at",
)


def csv_rows(session: Session, edition_id: int) -> Iterable[tuple[object, ...]]:
    """Every row of the edition's ledger, for `sends report --csv` (streamed)."""
    yield CSV_COLUMNS
    result = session.execute(
        select(
            Delivery.id,
            Delivery.subscriber_id,
            Delivery.email,
            Delivery.state,
            Delivery.variant,
            Delivery.segment,
            Delivery.attempts,
            Delivery.provider,
            Delivery.provider_message_id,
            Delivery.settled_at,
            Delivery.last_error,
            Delivery.next_attempt_at,
        )
        .where(Delivery.edition_id == edition_id)
        .order_by(Delivery.id)
        .execution_options(yield_per=2000)
    )
    for row in result:
        yield tuple(
            "" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in row
        )


def ledger_report(
    session: Session, config: Config, newsletter_id: str, edition_date: date
) -> LedgerReport:
    """`digest sends report`: the edition's ledger by state, segment and variant."""
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    return report(session, edition.id)


def variant_label(r: LedgerReport, variant: str, nl: NewsletterConfig) -> str:
    """A variant as a reader of the report knows it: its sections, and the segment blocks it
    shows (by the segment they are for, as the config names them now)."""
    label = ", ".join(r.variant_sections.get(variant, ()))
    shown = [
        nl.blocks[i].segment if i < len(nl.blocks) else f"block #{i + 1}"
        for i in r.variant_blocks.get(variant, ())
    ]
    if shown:
        label += f"; block for {', '.join(shown)}"
    if r.variant_left_out.get(variant):
        label += f"; {r.variant_left_out[variant]} sent earlier today left out"
    return label


def ledger_csv(session: Session, config: Config, newsletter_id: str, edition_date: date) -> str:
    nl = config.newsletter(newsletter_id)
    edition = get_edition(session, nl.id, edition_date)
    if edition is None:
        raise NotFound(f"no edition of {nl.id} for {edition_date}: nothing was sent")
    when = pruned_on(session, edition.id)
    if when is not None:  # an empty file would read as "nobody got it"
        raise EditionPruned(
            f"edition {nl.id} {edition_date} was pruned on {when:%Y-%m-%d} (`digest sends "
            "prune`): its rows are gone; `digest sends report` without --csv shows its summary"
        )
    out = io.StringIO()
    rows = map(csv_row, csv_rows(session, edition.id))  # formula-safe cells
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def format_report(r: LedgerReport, nl: NewsletterConfig) -> str:
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
