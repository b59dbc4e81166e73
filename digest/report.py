"""`digest report`: what readers read, from SQL aggregates over the ledger and click events.

Every figure is a GROUP BY the database answers from a few rows or an index alone: delivered
rows from the counts the ledger's triggers keep per edition, variant, segment and subject
(digest.report_counts), clicks from the covering indexes of click_events. Nothing is loaded
row by row, so a report over a million deliveries stays interactive (`bench/clicks.py report`).

Rates are unique clickers over delivered readers who could click: a story's rate counts only
the readers whose variant had its section. Flagged clicks (bots, scanners: digest.clicks) are
reported apart and never counted. Opens, when tracked at all, are labelled unreliable.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import false, func, select, true
from sqlalchemy.orm import Session

from digest.clicks import ClickEvent
from digest.config import Config
from digest.editions import Edition
from digest.errors import NotFound
from digest.report_counts import delivered_groups, variant_sections
from digest.summaries import summaries
from digest.tracking import TrackedLink

TREND_EDITIONS = 10
TOP_STORIES = 5
TEXT_ROWS = 8  # rows per breakdown in the terminal
OPENS_CAVEAT = (
    "unreliable: Apple Mail Privacy Protection and image proxies open every message; "
    "use clicks to measure engagement"
)


@dataclass(frozen=True)
class Row:
    """One line of a breakdown: who could click, who did."""

    name: str
    delivered: int
    clickers: int
    clicks: int = 0

    @property
    def rate(self) -> float:
        return self.clickers / self.delivered if self.delivered else 0.0


@dataclass(frozen=True)
class StoryRow(Row):
    edition_date: str = ""
    section: str = ""
    kind: str = "story"
    url: str = ""


@dataclass(frozen=True)
class TrendRow(Row):
    pass


@dataclass
class Report:
    newsletter: str
    editions: list[str]
    delivered: int = 0
    clickers: int = 0
    clicks: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    opens: int | None = None  # None: not tracked
    stories: list[StoryRow] = field(default_factory=list)
    sections: list[Row] = field(default_factory=list)
    variants: list[Row] = field(default_factory=list)
    segments: list[Row] = field(default_factory=list)
    subjects: list[Row] = field(default_factory=list)
    trend: list[TrendRow] = field(default_factory=list)
    ab_winner: str | None = None

    @property
    def rate(self) -> float:
        return self.clickers / self.delivered if self.delivered else 0.0

    @property
    def top(self) -> list[StoryRow]:
        ranked = [s for s in self.stories if s.kind == "story" and s.clickers]
        return sorted(ranked, key=lambda s: (-s.rate, -s.clickers, s.name))[:TOP_STORIES]


def _editions(
    session: Session, newsletter: str, day: date | None, since: date | None
) -> tuple[list[Edition], list[Edition]]:
    """(the editions reported on, the recent editions of the trend), oldest first."""
    started = select(Edition).where(
        Edition.newsletter == newsletter, Edition.frozen_at.is_not(None)
    )
    if since is not None:
        scope = list(session.scalars(started.where(Edition.edition_date >= since)))
        last = max((e.edition_date for e in scope), default=None)
    else:
        if day is None:
            day = session.scalar(
                select(func.max(Edition.edition_date)).where(
                    Edition.newsletter == newsletter, Edition.frozen_at.is_not(None)
                )
            )
        scope = list(session.scalars(started.where(Edition.edition_date == day)))
        last = day
    if not scope or last is None:
        when = f"since {since}" if since else f"of {day}" if day else "sent yet"
        raise NotFound(f"newsletter {newsletter} has no edition {when}")
    trend = list(
        session.scalars(
            started.where(Edition.edition_date <= last)
            .order_by(Edition.edition_date.desc())
            .limit(TREND_EDITIONS)
        )
    )
    key = lambda e: e.edition_date  # noqa: E731
    return sorted(scope, key=key), sorted(trend, key=key)


def build_report(
    session: Session,
    config: Config,
    newsletter: str,
    *,
    day: date | None = None,
    since: date | None = None,
) -> Report:
    """The report of one edition (`day`, default the latest), or of every edition since
    `since`, with the trend over the last TREND_EDITIONS editions."""
    nl = config.newsletter(newsletter)
    scope, trend = _editions(session, nl.id, day, since)
    ids = [e.id for e in scope]
    all_ids = sorted({e.id for e in scope} | {e.id for e in trend})
    report = Report(nl.id, [e.edition_date.isoformat() for e in scope])
    # Pruned editions (`sends prune`) are read from their summaries only, never the ledger.
    kept = summaries(session, all_ids)
    live_all = [i for i in all_ids if i not in kept]
    live = [i for i in ids if i not in kept]

    # Delivered: the counts the ledger's triggers keep (digest.report_counts), a few rows a group.
    delivered = delivered_groups(session, live_all) + _kept(kept, all_ids, "delivered")
    # Clickers: the covering index of counted clicks (each delivery has one variant,
    # segment and subject, so the groups add up to the edition's unique clickers).
    clickers: list[Any] = [
        *session.execute(
            select(
                ClickEvent.edition_id,
                ClickEvent.variant,
                ClickEvent.segment,
                ClickEvent.subject,
                func.count(func.distinct(ClickEvent.delivery_id)),
                func.count(),
            )
            .where(
                ClickEvent.edition_id.in_(live_all),
                ClickEvent.kind == "click",
                ClickEvent.counted == true(),
            )
            .group_by(
                ClickEvent.edition_id, ClickEvent.variant, ClickEvent.segment, ClickEvent.subject
            )
        ),
        *_kept(kept, all_ids, "clickers"),
    ]
    _totals(report, ids, trend, delivered, clickers)
    sections_of = variant_sections(session, live) | {
        (e, v): tuple(secs) for e, v, secs in _kept(kept, ids, "sections_of")
    }
    _stories(session, report, scope, ids, delivered, sections_of, kept)
    shown = {v: ", ".join(secs) for (_e, v), secs in sections_of.items() if secs}
    report.variants = [
        Row(f"{shown[v.name]} ({v.name})" if v.name in shown else v.name, *_figures(v))
        for v in report.variants
    ]
    flagged: dict[str, int] = defaultdict(int)
    for _e, flag, n in [
        *session.execute(
            select(ClickEvent.edition_id, ClickEvent.flag, func.count())
            .where(
                ClickEvent.edition_id.in_(live),
                ClickEvent.kind == "click",
                ClickEvent.counted == false(),
            )
            .group_by(ClickEvent.edition_id, ClickEvent.flag)
        ),
        *_kept(kept, ids, "flagged"),
    ]:
        flagged[flag or "?"] += n
    report.flagged = dict(flagged)
    if nl.track_opens:
        report.opens = (
            session.scalar(
                select(func.count(func.distinct(ClickEvent.delivery_id))).where(
                    ClickEvent.edition_id.in_(live), ClickEvent.kind == "open"
                )
            )
            or 0
        ) + sum(kept[e]["report"]["opens"] or 0 for e in ids if e in kept)
    if len(report.subjects) > 1:  # A/B subjects (the config's or the edition's)
        from digest.abtest import winner_of

        report.ab_winner = winner_of(session, scope[-1].id)
    return report


def _kept(kept: dict[int, dict[str, Any]], ids: Sequence[int], key: str) -> list[Any]:
    """Rows of a query's shape (edition id first) from the summaries of pruned editions."""
    return [(e, *row) for e in ids if e in kept for row in kept[e]["report"][key]]


def _figures(r: Row) -> tuple[int, int, int]:
    return r.delivered, r.clickers, r.clicks


def _totals(
    report: Report,
    ids: list[int],
    trend: list[Edition],
    delivered: Sequence[Any],
    clickers: Sequence[Any],
) -> None:
    groups: dict[str, dict[str, list[int]]] = {
        k: defaultdict(lambda: [0, 0, 0]) for k in ("variant", "segment", "subject")
    }
    per_edition: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    scope = set(ids)
    for edition_id, variant, segment, subject, n in delivered:
        per_edition[edition_id][0] += n
        if edition_id in scope:
            report.delivered += n
            for kind, name in (("variant", variant), ("segment", segment), ("subject", subject)):
                groups[kind][name or ""][0] += n
    for edition_id, variant, segment, subject, readers, clicks in clickers:
        per_edition[edition_id][1] += readers
        if edition_id in scope:
            report.clickers += readers
            report.clicks += clicks
            for kind, name in (("variant", variant), ("segment", segment), ("subject", subject)):
                g = groups[kind][name or ""]
                g[1] += readers
                g[2] += clicks

    def rows(kind: str) -> list[Row]:
        out = [Row(name, d, c, k) for name, (d, c, k) in groups[kind].items()]
        return sorted(out, key=lambda r: (-r.delivered, r.name))

    report.variants, report.segments, report.subjects = (
        rows("variant"),
        rows("segment"),
        rows("subject"),
    )
    report.trend = [TrendRow(e.edition_date.isoformat(), *per_edition[e.id]) for e in trend]


def _stories(
    session: Session,
    report: Report,
    scope: list[Edition],
    ids: list[int],
    delivered: Sequence[Any],
    sections_of: dict[tuple[int, str], tuple[str, ...]],
    kept: dict[int, dict[str, Any]],
) -> None:
    by_section: dict[tuple[int, str], int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    for edition_id, variant, _segment, _subject, n in delivered:
        if edition_id not in ids:
            continue
        total[edition_id] += n
        for section in sections_of.get((edition_id, variant), ()):
            by_section[(edition_id, section)] += n
    # Grouped by edition first, the index's own order: each group is read in order, with no
    # temporary B-tree (SQLite) or sort (PostgreSQL) for the whole scope (a link belongs to
    # one edition, so the groups are the links').
    live = [i for i in ids if i not in kept]
    counts = {
        link_id: (readers, clicks)
        for _edition, link_id, readers, clicks in [
            *session.execute(
                select(
                    ClickEvent.edition_id,
                    ClickEvent.link_id,
                    func.count(func.distinct(ClickEvent.delivery_id)),
                    func.count(),
                )
                .where(
                    ClickEvent.edition_id.in_(live),
                    ClickEvent.kind == "click",
                    ClickEvent.counted == true(),
                )
                .group_by(ClickEvent.edition_id, ClickEvent.link_id)
            ),
            *_kept(kept, ids, "links"),
        ]
    }
    day = {e.id: e.edition_date.isoformat() for e in scope}
    links = session.execute(
        select(TrackedLink).where(TrackedLink.edition_id.in_(ids)).order_by(TrackedLink.id)
    ).scalars()
    for link in links:
        readers, clicks = counts.get(link.id, (0, 0))
        could = (
            by_section[(link.edition_id, link.section)]
            if link.kind == "story" and link.section
            else total[link.edition_id]
        )
        report.stories.append(
            StoryRow(
                link.label or link.url,
                could,
                readers,
                clicks,
                edition_date=day[link.edition_id],
                section=link.section or "",
                kind=link.kind,
                url=link.url,
            )
        )
    # Per section: readers who clicked any of its stories (click rows carry the section), grouped
    # by edition first, the index's order (a reader belongs to one edition: the groups add up).
    section_readers: dict[str | None, int] = defaultdict(int)
    for _edition, name, readers in [
        *session.execute(
            select(
                ClickEvent.edition_id,
                ClickEvent.section,
                func.count(func.distinct(ClickEvent.delivery_id)),
            )
            .where(
                ClickEvent.edition_id.in_(live),
                ClickEvent.kind == "click",
                ClickEvent.counted == true(),
                ClickEvent.section.is_not(None),
            )
            .group_by(ClickEvent.edition_id, ClickEvent.section)
        ),
        *_kept(kept, ids, "sections"),
    ]:
        section_readers[name] += readers
    names: dict[str, int] = defaultdict(int)
    for (_edition, section), n in by_section.items():
        names[section] += n
    report.sections = sorted(
        (Row(s, names[s], section_readers.get(s, 0)) for s in names),
        key=lambda r: (-r.rate, r.name),
    )


# --- output ----------------------------------------------------------------------------------


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def format_report(r: Report) -> str:
    """The report as the terminal shows it."""
    span = r.editions[0] if len(r.editions) == 1 else f"{r.editions[0]} to {r.editions[-1]}"
    lines = [
        f"{r.newsletter} {span}: {r.delivered} delivered, {r.clickers} unique clickers "
        f"({_pct(r.rate)}), {r.clicks} clicks",
    ]
    if r.flagged:
        flags = ", ".join(f"{n} {k}" for k, n in sorted(r.flagged.items()))
        lines.append(f"not counted (bots and scanners): {flags}")
    if r.opens is not None:
        lines.append(f"opens: {r.opens} ({OPENS_CAVEAT})")
    else:
        lines.append("opens: not tracked (track_opens is off)")
    if r.top:
        lines += ["", "top stories:"]
        lines += [f"  {_pct(s.rate):>6}  {s.clickers:>6}  {s.section}: {s.name}" for s in r.top]
    for title, rows in (
        ("sections", r.sections),
        ("variants", r.variants),
        ("segments", r.segments),
        ("subjects", r.subjects),
    ):
        if len(rows) > 1 or title == "sections":
            lines += ["", f"{title}:"]
            lines += [
                f"  {_pct(x.rate):>6}  {x.clickers:>6} of {x.delivered:<7} {x.name or '(all)'}"
                for x in rows[:TEXT_ROWS]
            ]
            if len(rows) > TEXT_ROWS:
                lines.append(f"  … {len(rows) - TEXT_ROWS} more (--csv, --json or --html)")
    if r.ab_winner:
        lines.append(f"A/B winner: {r.ab_winner}")
    if len(r.trend) > 1:
        lines += ["", "trend:"]
        lines += [f"  {t.name}  {_pct(t.rate):>6}  {t.clickers} of {t.delivered}" for t in r.trend]
    return "\n".join(lines)


CSV_COLUMNS = (
    "edition_date",
    "section",
    "kind",
    "title",
    "url",
    "delivered",
    "clickers",
    "clicks",
    "click_rate",
)


def report_csv(r: Report) -> str:
    """One row per tracked link of the editions reported on."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in r.stories:
        w.writerow(
            [
                s.edition_date,
                s.section,
                s.kind,
                _csv_safe(s.name),
                s.url,
                s.delivered,
                s.clickers,
                s.clicks,
                f"{s.rate:.4f}",
            ]
        )
    return out.getvalue()


def _csv_safe(value: str) -> str:
    # A spreadsheet runs a cell starting with = + - @ as a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def report_json(r: Report) -> str:
    def rows(items: list[Any]) -> list[dict[str, Any]]:
        return [asdict(x) | {"rate": round(x.rate, 6)} for x in items]

    data = {
        "newsletter": r.newsletter,
        "editions": r.editions,
        "delivered": r.delivered,
        "clickers": r.clickers,
        "clicks": r.clicks,
        "click_rate": round(r.rate, 6),
        "flagged": r.flagged,
        "opens": None
        if r.opens is None
        else {"readers": r.opens, "reliable": False, "note": OPENS_CAVEAT},
        "top": rows(r.top),
        "stories": rows(r.stories),
        "sections": rows(r.sections),
        "variants": rows(r.variants),
        "segments": rows(r.segments),
        "subjects": rows(r.subjects),
        "ab_winner": r.ab_winner,
        "trend": rows(r.trend),
    }
    return json.dumps(data, indent=2, ensure_ascii=False)
