"""An edition as the editor reads it in the terminal (`edition show`, `sends report`)."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from digest.config import NewsletterConfig
    from digest.editions import Edition


def approval_text(edition: Edition) -> str:
    """Who signed the edition off and when, as `edition show` and `sends report` say it."""
    if edition.approved_by and edition.approved_at:
        return f"approved by {edition.approved_by} at {edition.approved_at:%Y-%m-%d %H:%M} UTC"
    return "not approved"


def format_edition(edition: Edition, newsletter: NewsletterConfig | None = None) -> str:
    """The edition as an editor reads it: section, rank, title, source, score and why; the
    editor's note, overrides and pins; who approved it; the desk's log of changes."""
    approval = approval_text(edition)
    if newsletter is not None and newsletter.approval == "required":
        approval += " (approval required before an unattended send)"
    lines = [
        f"{edition.newsletter} {edition.edition_date:%A %-d %B %Y}  [{edition.status}]  "
        f"built {edition.built_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        f"window {edition.window_start.astimezone(UTC):%Y-%m-%d %H:%M} → "
        f"{edition.window_end.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        + (f"; ranking {newsletter.ranking}" if newsletter is not None else ""),
        approval,
    ]
    if edition.subject:
        lines.append(f"subject (this edition): {edition.subject}")
    if edition.preheader:
        lines.append(f"preheader (this edition): {edition.preheader}")
    if edition.ab_subjects:
        shown = " | ".join(edition.ab_subject_list)
        lines.append(f"A/B subjects (this edition): {shown}")
    if edition.note:
        lines.append("editor's note:")
        lines += [f"  {line}".rstrip() for line in edition.note.splitlines()]
    sections = edition.sections()
    if not sections:
        lines.append("(no stories in the window)")
    for name, items in sections:
        lines.append("")
        lines.append(name.upper())
        for item in items:
            pin = "  [pinned]" if item.pinned else ""
            lines.append(f"  {item.rank}. {item.shown_title}{pin}")
            lines.append(
                f"     #{item.article_id} · {item.source or '-'} · score {item.score:.2f} · "
                f"{item.reason}"
            )
            if item.headline:
                lines.append(f"     headline for the email (stored: {item.title})")
            if item.blurb is not None:
                lines.append(f"     blurb for the email: {item.blurb or '(none)'}")
    if edition.edits:
        lines.append("")
        lines.append("CHANGES")
        for e in edition.edits:
            lines.append(f"  {e.at.astimezone(UTC):%Y-%m-%d %H:%M} UTC  {e.by}: {e.summary}")
    return "\n".join(lines)
