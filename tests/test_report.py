"""`digest report`: exact figures on a known data set (20 readers in 10 layouts, known clicks),
the CSV, JSON and HTML outputs, and the HTML page in Chromium at desktop and phone width."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from digest.clicks import Click, record
from digest.config import Config
from digest.report import build_report, format_report, report_csv, report_json
from digest.report_html import report_html
from digest.tracking import TrackedLink
from digest_cli import cli
from tests.clicks_support import send, tracked
from tests.fakes.population import add_population
from tests.render_support import EDITION_DATE, store_edition

BROWSER_PATH = os.environ.get("DIGEST_BROWSER", "/usr/bin/chromium")
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15"


@pytest.fixture
def known(config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path) -> Config:
    """20 readers; reader i has layout VARIANTS[i % 10]: 12 get News, 10 get Business.
    Counted: reader 1 clicks News 1 twice, reader 3 News 1 and Business 1. Not counted: a
    scanner (reader 4), a HEAD (reader 5) and a click 2 s after delivery (reader 10)."""
    config = tracked(config, tmp_path)
    with sessions.begin() as session:
        store_edition(session)
        ids = add_population(session, 20, now)
    assert send(config, sessions, now).sent_now == 20
    with sessions.begin() as session:
        links = {
            (link.section, link.label): link
            for link in session.scalars(select(TrackedLink).order_by(TrackedLink.id))
        }
        news = next(v for k, v in links.items() if k[0] == "News")
        business = next(v for k, v in links.items() if k[0] == "Business")

        def at(minutes: float) -> datetime:
            return now + timedelta(minutes=minutes)

        clicks = [
            (news, 1, at(5), "GET", UA),
            (news, 1, at(6), "GET", UA),
            (news, 3, at(10), "GET", UA),
            (business, 3, at(20), "GET", UA),
            (business, 4, at(7), "GET", "Mimecast Safe Links"),
            (news, 5, at(8), "HEAD", UA),
            (news, 10, now + timedelta(seconds=2), "GET", UA),
        ]
        for link, reader, when, method, agent in clicks:
            record(
                session,
                Click(link.id, link.edition_id, ids[reader - 1], when, "redirect", method, agent),
            )
    return config


def test_report_figures_on_a_known_data_set(known: Config, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        r = build_report(session, known, "daily", day=EDITION_DATE)
    assert (r.delivered, r.clickers, r.clicks) == (20, 2, 4)
    assert r.rate == pytest.approx(0.1)
    assert r.flagged == {"scanner": 1, "head": 1, "early": 1}
    assert r.opens is None
    sections = {s.name: (s.delivered, s.clickers) for s in r.sections}
    assert sections == {
        "News": (12, 2),
        "Business": (10, 1),
        "Health": (10, 0),
        "Entertainment": (8, 0),
    }
    top = [(s.section, s.delivered, s.clickers, s.clicks) for s in r.top]
    assert top == [("News", 12, 2, 3), ("Business", 10, 1, 1)]
    assert len(r.variants) == 10 and all(v.delivered == 2 for v in r.variants)
    assert sum(v.clickers for v in r.variants) == 2
    assert [(t.name, t.delivered, t.clickers) for t in r.trend] == [("2026-03-10", 20, 2)]
    assert len(r.stories) == 7 and sum(s.clickers for s in r.stories) == 3
    text = format_report(r)
    assert "daily 2026-03-10: 20 delivered, 2 unique clickers (10.0%), 4 clicks" in text
    assert "not counted (bots and scanners): 1 early, 1 head, 1 scanner" in text
    assert "opens: not tracked" in text


def test_csv_and_json_carry_the_same_figures(
    known: Config, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        r = build_report(session, known, "daily")
    rows = list(csv.DictReader(io.StringIO(report_csv(r))))
    assert len(rows) == 7
    assert sum(int(x["clickers"]) for x in rows) == 3
    news = [x for x in rows if x["section"] == "News" and x["clickers"] == "2"]
    assert news and news[0]["delivered"] == "12" and news[0]["click_rate"] == "0.1667"
    data = json.loads(report_json(r))
    assert (data["delivered"], data["clickers"], data["click_rate"]) == (20, 2, 0.1)
    assert data["opens"] is None and data["flagged"]["scanner"] == 1


def test_opens_when_tracked_are_labelled_unreliable(
    known: Config, sessions: sessionmaker[Session]
) -> None:
    import dataclasses

    nl = dataclasses.replace(known.newsletter("daily"), track_opens=True)
    config = dataclasses.replace(known, newsletters={**known.newsletters, "daily": nl})
    with sessions() as session:
        r = build_report(session, config, "daily")
    assert r.opens == 0
    assert "unreliable" in format_report(r)
    assert json.loads(report_json(r))["opens"]["reliable"] is False


def _run(db_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))
    return CliRunner().invoke(cli, ["report", *args], catch_exceptions=False)


def test_the_cli_reports_and_refuses_bad_flags(
    known: Config,
    db_url: str,
    config_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    result = _run(db_url, config_path, monkeypatch, "daily", "--date", "2026-03-10")
    assert result.exit_code == 0, result.output
    assert "20 delivered, 2 unique clickers" in result.output
    page = tmp_path / "report.html"
    result = _run(
        db_url, config_path, monkeypatch, "daily", "--since", "2026-03-01", "--html", str(page)
    )
    assert result.exit_code == 0 and f"wrote {page}" in result.output
    assert "<svg" in page.read_text() and "http" not in page.read_text().split("<body>")[0]
    result = _run(db_url, config_path, monkeypatch, "daily", "--json")
    assert json.loads(result.output)["clickers"] == 2
    bad = _run(
        db_url, config_path, monkeypatch, "daily", "--date", "2026-03-10", "--since", "2026-03-01"
    )
    assert bad.exit_code == 2 and "not both" in bad.output
    none = _run(db_url, config_path, monkeypatch, "daily", "--date", "2026-01-01")
    assert (
        none.exit_code != 0
        and "Error: newsletter daily has no edition of 2026-01-01" in none.output
    )


def test_the_page_escapes_what_the_store_holds(
    known: Config, sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        link = session.scalars(select(TrackedLink)).first()
        assert link is not None
        link.label = "<script>alert(1)</script> & co"
    with sessions() as session:
        html = report_html(build_report(session, known, "daily"), "Gazette <b>")
    assert "<script>" not in html and "&lt;script&gt;" in html and "Gazette &lt;b&gt;" in html


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(BROWSER_PATH).exists():
        pytest.skip(f"no Chromium at {BROWSER_PATH} (set DIGEST_BROWSER)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER_PATH, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.mark.parametrize("width", [1280, 375])
def test_the_html_report_reads_at_desktop_and_phone_width(
    known: Config,
    sessions: sessionmaker[Session],
    browser: object,
    width: int,
    artifacts_dir: Path,
    db_url: str,
) -> None:
    if db_url.startswith("postgresql"):
        pytest.skip("the page does not depend on the database")
    with sessions() as session:
        html = report_html(build_report(session, known, "daily"), "The Test Gazette")
    page = browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
    page.set_content(html)
    # Nothing wider than the screen but the tables, which scroll inside their box.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    charts = page.eval_on_selector_all(
        "svg", "els => els.map(e => e.getBoundingClientRect().width)"
    )
    assert len(charts) >= 2 and all(0 < w <= width for w in charts)
    page.screenshot(path=str(artifacts_dir / f"report-{width}.png"), full_page=True)
    page.close()
