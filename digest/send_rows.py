"""New ledger rows for an edition's audience: one pending row per member without one (written by
digest.ledger.add_rows), and the rows of people who left the audience since."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from digest import ledger
from digest.clock import Clock
from digest.config import Config, NewsletterConfig
from digest.ledger_model import Delivery
from digest.partitions import refresh_statistics
from digest.preflight import VariantCheck
from digest.render import Layout
from digest.same_day import NOTHING_NEW, same_day
from digest.send_options import SendOptions
from subscribers.audience import audience, audience_query
from subscribers.models import Subscriber


@contextmanager
def collector_paused() -> Iterator[None]:
    """Row creation keeps a few objects per audience member alive for a while, none in
    reference cycles: the cyclic collector would walk them over and over (about 10% of the
    creation). What cycles it leaves are collected afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def create_rows(
    session: Session,
    config: Config,
    nl: NewsletterConfig,
    edition_id: int,
    check: VariantCheck,
    options: SendOptions,
    clock: Clock,
) -> tuple[int, int, int, int, int]:
    """One pending row per audience member not yet in the ledger (a skipped one for those the
    recipient filter says missed their send time, or who were sent every story of their copy
    today in another newsletter: digest.same_day); pending rows of people who left the
    audience since become skipped/suppressed. Returns (created pending, skipped, missed, left
    out by the recipient filter for a later run, nothing new today)."""
    # Whether this is a later run (rows exist): only then can a row belong to someone who has
    # left the audience since. Who already has a row is asked of the database (an anti-join
    # in the audience query), never held here: memory does not grow with the list.
    ledger.lock_rows(session, edition_id)  # one creator at a time; asked after it: who has one
    earlier = ledger.has_rows(session, edition_id)
    segments, wave = options.segments, options.recipient_filter
    segment = ",".join(segments)
    left_out = nothing_new = 0
    now = clock()
    renderer = check.renderer
    today = same_day(session, config, nl, check.edition, now)
    variants: dict[Layout, Variant] = {}
    rows = ledger.add_rows(session, edition_id, segment, now)
    new = ledger.without_row(edition_id) if earlier else None
    for r in audience(session, config, nl, segments, where=new):
        verdict = True if wave is None else wave(r)
        if verdict is False:
            left_out += 1
            continue
        skip = today.left_out(renderer, r) if today is not None else ()
        if skip is None:
            nothing_new += 1
            encoded = ledger.encode_variant(renderer.resolve(r.sections), r.blocks)
            rows.skip((r.subscriber_id, r.email, r.name, encoded, "none", ""), NOTHING_NEW)
            continue
        v = variants.get((r.sections, r.blocks, skip))
        if v is None:
            v = variants[(r.sections, r.blocks, skip)] = _variant(check, r.sections, r.blocks, skip)
        row = (r.subscriber_id, r.email, r.name, v[1], v[0], v[2])
        if verdict is True:
            rows.add(row)
        else:
            rows.skip(row, verdict)
    created, missed = rows.finish()
    if created >= _FRESH_STATISTICS:
        refresh_statistics(session.connection(), check.edition.edition_date)
    skipped = 0
    if earlier:
        # Only rows from an earlier run can belong to someone who has left since.
        member = audience_query(session, config, nl, segments).with_only_columns(Subscriber.id)
        in_audience = member.where(Subscriber.id == Delivery.subscriber_id).exists()
        gone = ledger.pending_outside(session, edition_id, segment, in_audience)
        skipped = ledger.leave_audience(session, gone, now)
    return created, skipped, max(missed - nothing_new, 0), left_out, nothing_new


# New rows past which the ledger's statistics are taken at once (digest.partitions).
_FRESH_STATISTICS = 10_000

# What a row records of its variant: (key, the `sections` column, subject).
Variant = tuple[str, str, str]


def _variant(
    check: VariantCheck, sections: tuple[str, ...], blocks: tuple[int, ...], skip: tuple[int, ...]
) -> Variant:
    check.check(sections, blocks, skip)  # refuses a variant Gmail would clip, a bad header
    rendered = check.renderer.variant(sections, blocks, skip)
    return (
        rendered.key,
        ledger.encode_variant(rendered.sections, rendered.blocks, rendered.skip),
        rendered.subject[:300],
    )
