"""`digest report --html FILE`: one self-contained page (no script, no external file) with
inline SVG charts: top stories, sections, subjects or variants, and the trend. Every text from
the store (titles, section names, subjects) is escaped; the page reads at phone width (charts
scale with their viewBox, tables scroll sideways)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from digest.report import OPENS_CAVEAT, Report, Row

_W = 640  # line chart width in SVG units (scaled to the page width)
_BW = 420  # bar chart width: about 1:1 on a phone, at most 1.5x on a desktop
_BAR = 18
_GAP = 12
_LABEL_H = 18
_ACCENT = "#1f5fa8"
_MUTED = "#8aa9cf"

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,
sans-serif;color:#1b1b1b;background:#f4f5f7}
main{max-width:920px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px}
.sub{color:#555;margin:0 0 20px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.card{background:#fff;border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px #0001}
.card b{display:block;font-size:26px}.card span{color:#555;font-size:14px}
section h2{margin-top:0}
section{background:#fff;border-radius:10px;padding:16px;margin-top:16px;
box-shadow:0 1px 2px #0001}
svg{width:100%;height:auto;display:block}svg.bars{max-width:540px}
td small{display:block;color:#666}
.note{color:#6b5200;background:#fff6d6;border-radius:8px;padding:8px 12px;font-size:14px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e6e6;vertical-align:top}
td.n,th.n{text-align:right;white-space:nowrap}
@media (max-width:600px){h1{font-size:22px}.card b{font-size:22px}main{padding:16px 10px}}
"""


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def bar_chart(rows: Sequence[Row], title: str, label_limit: int = 60) -> str:
    """Horizontal bars of click rate, each under its label (reads at phone width too)."""
    if not rows:
        return ""
    top = max(r.rate for r in rows) or 1.0
    row_h = _LABEL_H + _BAR + _GAP
    height = len(rows) * row_h + _GAP
    span = _BW - 130
    parts = [
        f'<svg class="bars" viewBox="0 0 {_BW} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, r in enumerate(rows):
        y = _GAP + i * row_h
        w = max(2.0, span * r.rate / top) if r.rate else 0.0
        name = escape(_clip(r.name or "(all)", label_limit))
        bar_y = y + _LABEL_H
        parts += [
            f'<text x="0" y="{y + 13}" font-size="14" fill="#333">{name}</text>',
            f'<rect x="0" y="{bar_y}" width="{span}" height="{_BAR}" rx="4" fill="#eef1f5"/>',
            f'<rect x="0" y="{bar_y}" width="{w:.1f}" height="{_BAR}" rx="4" '
            f'fill="{_ACCENT if i == 0 else _MUTED}"/>',
            f'<text x="{span + 8}" y="{bar_y + _BAR * 0.72:.1f}" font-size="14" '
            f'fill="#111">{_pct(r.rate)} · {r.clickers}/{r.delivered}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


def line_chart(rows: Sequence[Row], title: str) -> str:
    """Click rate per edition, oldest first."""
    if len(rows) < 2:
        return ""
    height, pad_l, pad_b, pad_t = 220, 46, 34, 14
    top = max(r.rate for r in rows) or 0.01
    step = (_W - pad_l - 16) / (len(rows) - 1)
    points = [
        (pad_l + i * step, pad_t + (height - pad_t - pad_b) * (1 - r.rate / top))
        for i, r in enumerate(rows)
    ]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(points))
    parts = [
        f'<svg viewBox="0 0 {_W} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{_W - 8}" y2="{height - pad_b}" '
        'stroke="#ccc"/>',
        f'<text x="{pad_l - 6}" y="{pad_t + 4}" text-anchor="end" font-size="12" '
        f'fill="#555">{_pct(top)}</text>',
        f'<text x="{pad_l - 6}" y="{height - pad_b}" text-anchor="end" font-size="12" '
        'fill="#555">0%</text>',
        f'<path d="{path}" fill="none" stroke="{_ACCENT}" stroke-width="3"/>',
    ]
    every = max(1, len(rows) // 5)
    for i, ((x, y), r) in enumerate(zip(points, rows, strict=True)):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{_ACCENT}"/>')
        if i % every == 0 or i == len(rows) - 1:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle" font-size="12" '
                f'fill="#555">{escape(r.name[5:])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[Row], first: str) -> str:
    body = "".join(
        f"<tr><td>{escape(r.name or '(all)')}</td><td class=n>{r.delivered}</td>"
        f"<td class=n>{r.clickers}</td><td class=n>{_pct(r.rate)}</td></tr>"
        for r in rows
    )
    return (
        f'<div class="scroll"><table><tr><th>{escape(first)}</th><th class=n>delivered</th>'
        f"<th class=n>clickers</th><th class=n>rate</th></tr>{body}</table></div>"
    )


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def report_html(r: Report, title: str) -> str:
    span = r.editions[0] if len(r.editions) == 1 else f"{r.editions[0]} to {r.editions[-1]}"
    cards = [
        _card(f"{r.delivered:,}", "delivered"),
        _card(f"{r.clickers:,}", "unique clickers"),
        _card(_pct(r.rate), "click rate"),
        _card(f"{sum(r.flagged.values()):,}", "bot and scanner clicks (not counted)"),
    ]
    opens = (
        f'<p class="note">Opens: {r.opens:,} readers — {escape(OPENS_CAVEAT)}.</p>'
        if r.opens is not None
        else '<p class="note">Opens are not tracked; clicks measure what readers read.</p>'
    )
    blocks = [
        "<section><h2>Top stories</h2>"
        + (bar_chart(r.top, "Top stories by click rate") or "<p>No clicks yet.</p>")
        + "</section>",
        "<section><h2>Sections</h2>"
        + bar_chart(r.sections, "Click rate per section")
        + _table(r.sections, "section")
        + "</section>",
    ]
    if len(r.subjects) > 1:
        winner = f"<p>Winner: <b>{escape(r.ab_winner)}</b></p>" if r.ab_winner else ""
        blocks.append(
            "<section><h2>Subject lines</h2>"
            + winner
            + bar_chart(r.subjects, "Click rate per subject")
            + "</section>"
        )
    for name, rows in (("Variants", r.variants), ("Segments", r.segments)):
        if len(rows) > 1:
            blocks.append(f"<section><h2>{name}</h2>{_table(rows, name.lower()[:-1])}</section>")
    if len(r.trend) > 1:
        blocks.append(
            "<section><h2>Trend</h2>"
            + line_chart(r.trend, "Click rate of the last editions")
            + "</section>"
        )
    several = len(r.editions) > 1
    stories = "".join(
        f"<tr><td>{escape(s.name)}<small>{escape(s.section or s.kind)}"
        f"{' · ' + escape(s.edition_date) if several else ''}</small></td>"
        f"<td class=n>{s.clickers}/{s.delivered}</td><td class=n>{_pct(s.rate)}</td></tr>"
        for s in r.stories
    )
    blocks.append(
        '<section><h2>Every link</h2><div class="scroll"><table><tr><th>link</th>'
        "<th class=n>clickers</th><th class=n>rate</th></tr>"
        f"{stories}</table></div></section>"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} — report {escape(span)}</title><style>{_CSS}</style></head>"
        f"<body><main><h1>{escape(title)}</h1><p class=sub>What readers read, {escape(span)}</p>"
        f'<div class="cards">{"".join(cards)}</div>{opens}{"".join(blocks)}</main></body></html>'
    )
