"""What the editor's desk shows: one edition with its stories, edit log and proofs
(`digest edition show`), the list of editions (`digest edition list`), as text or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.config import Config, NewsletterConfig
from digest.editions import (
    Edition,
    EditionEdit,
    format_edition,
    load_edition,
)


def show_edition(
    session: Session, config: Config, newsletter: NewsletterConfig, edition_date: date
) -> EditionView:
    from digest.proofs import proofs_of

    edition = load_edition(session, newsletter.id, edition_date)
    return EditionView(edition, newsletter, proofs_of(session, edition.id))


@dataclass(frozen=True)
class EditionView:
    edition: Edition
    newsletter: NewsletterConfig
    proofs: list[Any]  # digest.proofs.Proof rows, newest last

    def text(self) -> str:
        lines = [format_edition(self.edition, self.newsletter)]
        if self.proofs:
            lines += ["", "PROOFS"]
            for p in self.proofs:
                state = "sent" if p.state == "sent" else f"{p.state}: {p.error}"
                lines.append(
                    f"  {p.sent_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC  {p.sent_by}: "
                    f"{p.email} ({p.label}) via {p.provider}, {state}"
                )
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        e, nl = self.edition, self.newsletter
        return {
            "newsletter": e.newsletter,
            "date": e.edition_date.isoformat(),
            "status": e.status,
            "built_at": _iso(e.built_at),
            "frozen_at": _iso(e.frozen_at),
            "window": {"start": _iso(e.window_start), "end": _iso(e.window_end)},
            "ranking": nl.ranking,
            "approval": {
                "required": nl.approval == "required",
                "by": e.approved_by,
                "at": _iso(e.approved_at),
            },
            "subject": e.subject,
            "preheader": e.preheader,
            "ab_subjects": list(e.ab_subject_list),
            "note": e.note,
            "sections": [
                {
                    "name": name,
                    "stories": [
                        {
                            "rank": i.rank,
                            "article_id": i.article_id,
                            "title": i.title,
                            "headline": i.headline,
                            "dek": i.dek,
                            "blurb": i.blurb,
                            "url": i.url,
                            "source": i.source,
                            "published_at": _iso(i.published_at),
                            "score": i.score,
                            "reason": i.reason,
                            "pinned": i.pinned,
                        }
                        for i in items
                    ],
                }
                for name, items in e.sections()
            ],
            "changes": [
                {"at": _iso(x.at), "by": x.by, "action": x.action, "summary": x.summary}
                for x in e.edits
            ],
            "proofs": [
                {
                    "sent_at": _iso(p.sent_at),
                    "by": p.sent_by,
                    "email": p.email,
                    "variant": p.variant,
                    "sections": p.label,
                    "provider": p.provider,
                    "state": p.state,
                    "error": p.error,
                }
                for p in self.proofs
            ],
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class EditionSummary:
    date: date
    status: str
    stories: int
    sections: int
    approved_by: str | None
    approved_at: datetime | None
    changes: int
    deliveries: dict[str, int]  # ledger rows by state

    def line(self) -> str:
        sent = self.deliveries.get("sent", 0)
        rows = sum(self.deliveries.values())
        approved = f"approved by {self.approved_by}" if self.approved_by else "not approved"
        return (
            f"{self.date}  {self.status:<6}  {self.stories:>3} stories in {self.sections:>2} "
            f"sections  {approved:<28}  {self.changes:>2} change(s)  sent {sent} of {rows}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "status": self.status,
            "stories": self.stories,
            "sections": self.sections,
            "approved_by": self.approved_by,
            "approved_at": _iso(self.approved_at),
            "changes": self.changes,
            "deliveries": self.deliveries,
        }


def list_editions(
    session: Session, newsletter: NewsletterConfig, *, limit: int = 30
) -> list[EditionSummary]:
    """The newsletter's latest editions, newest first, with their ledger counts."""
    from digest.ledger import Delivery

    editions = session.scalars(
        select(Edition)
        .where(Edition.newsletter == newsletter.id)
        .order_by(Edition.edition_date.desc())
        .limit(limit)
    ).all()
    ids = [e.id for e in editions]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = session.execute(
            select(Delivery.edition_id, Delivery.state, func.count())
            .where(Delivery.edition_id.in_(ids))
            .group_by(Delivery.edition_id, Delivery.state)
        ).all()
        for edition_id, state, n in rows:
            counts[edition_id][state] = n
    changes = dict(
        session.execute(
            select(EditionEdit.edition_id, func.count())
            .where(EditionEdit.edition_id.in_(ids))
            .group_by(EditionEdit.edition_id)
        ).all()
    )
    return [
        EditionSummary(
            e.edition_date,
            e.status,
            len(e.items),
            len(e.sections()),
            e.approved_by,
            e.approved_at,
            changes.get(e.id, 0),
            counts[e.id],
        )
        for e in editions
    ]


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)
