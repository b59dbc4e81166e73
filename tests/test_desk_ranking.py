"""Editorial rank as a signal: a front page ingested with ranks comes out in the newsroom's
order; feed order as a weaker rank; the blend; and dedupe on the body's first words."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session, sessionmaker

from digest.config import NewsletterConfig, SectionConfig, SelectionWeights, load_config
from digest.selection import Candidate, pick, rank_order
from digest_cli import cli

SECTIONS = [
    "World", "U.S.", "Politics", "New York", "Business", "Technology", "Science", "Health",
    "Sports", "Arts",
]  # fmt: skip
END = datetime(2026, 1, 26, 11, 0, tzinfo=UTC)  # 06:00 New York


def front_page_config(tmp_path: Path, ranking: str, per_section: int) -> Path:
    sections = ",\n".join(f'  {{ name = "{s}", stories = {per_section} }}' for s in SECTIONS)
    path = tmp_path / "frontpage.toml"
    path.write_text(
        f"""
[newsletters.front]
title = "The Front Page"
from_email = "front@news.example"
timezone = "America/New_York"
send_time = "06:00"
ranking = "{ranking}"
sections = [
{sections}
]
""",
        encoding="utf-8",
    )
    return path


def front_page(tmp_path: Path, per_section: int) -> tuple[Path, dict[str, list[str]]]:
    """A CMS export of one day's front page: 10 sections, `per_section` ranked stories each,
    listed in a shuffled order, with popularity and times that disagree with the ranks."""
    rng = random.Random(14)
    items = []
    order: dict[str, list[str]] = {}
    for s in SECTIONS:
        for rank in range(1, per_section + 1):
            title = f"{s} story ranked {rank}: {rng.choice(['vote', 'storm', 'deal', 'trial'])} {rng.randrange(10**6)}"
            order.setdefault(s, []).append(title)
            items.append(
                {
                    "guid": f"{s}-{rank}",
                    "url": f"https://front.example/{s.lower().replace('.', '').replace(' ', '-')}/{rank}",
                    "title": title,
                    "dek": f"Summary {rng.randrange(10**9)} of a different story {rank} in {s}.",
                    "section": s,
                    "published": (END - timedelta(minutes=rng.randrange(20, 1400))).isoformat(),
                    "popularity": rng.randrange(0, 100_000),
                    "rank": rank,
                }
            )
    rng.shuffle(items)
    path = tmp_path / "frontpage.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    return path, order


def cli_run(config: Path, db_url: str, *args: str) -> str:
    result = CliRunner().invoke(
        cli, ["--config", str(config), *args], env={"DIGEST_DATABASE_URL": db_url}
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_editorial_reproduces_the_newsrooms_order_in_every_section(
    tmp_path: Path, db_url: str
) -> None:
    per_section = 5
    export, order = front_page(tmp_path, per_section)
    config = front_page_config(tmp_path, "editorial", per_section)
    assert "50 new" in cli_run(config, db_url, "ingest", str(export))
    cli_run(config, db_url, "edition", "build", "front", "--date", "2026-01-26")
    shown = json.loads(
        cli_run(config, db_url, "edition", "show", "front", "--date", "2026-01-26", "--json")
    )
    got = {s["name"]: [st["title"] for st in s["stories"]] for s in shown["sections"]}
    assert list(got) == SECTIONS
    assert got == order
    first = shown["sections"][0]["stories"][0]
    assert first["reason"].startswith("rank 1 in its section, ")
    # The default (popularity) does not: that is what `ranking` is for.
    popularity = front_page_config(tmp_path, "popularity", per_section)
    cli_run(popularity, db_url, "edition", "build", "front", "--date", "2026-01-26", "--force")
    by_score = json.loads(
        cli_run(popularity, db_url, "edition", "show", "front", "--date", "2026-01-26", "--json")
    )
    assert {s["name"]: [st["title"] for st in s["stories"]] for s in by_score["sections"]} != order


def newsletter(ranking: str, stories: int = 3) -> NewsletterConfig:
    from datetime import time

    return NewsletterConfig(
        id="t",
        title="T",
        from_email="t@news.example",
        from_name="T",
        reply_to=None,
        sections=(SectionConfig("News", stories),),
        timezone="UTC",
        send_time=time(6, 0),
        ranking=ranking,
    )


def cand(n: int, **kw: object) -> Candidate:
    values: dict[str, object] = {
        "id": n,
        "section": "News",
        "title": f"Headline number {n} about subject {n * 31}",
        "dek": f"Dek {n} words {n * 17} {n * 53}.",
        "url": f"https://n.example/{n}",
        "published_at": END - timedelta(hours=n),
    }
    values.update(kw)
    return Candidate(**values)  # type: ignore[arg-type]


def test_editorial_mode_pins_then_rank_then_feed_order_then_recency() -> None:
    weights = SelectionWeights()
    cands = [
        cand(1, popularity=9999),
        cand(2, feed_position=1),
        cand(3, rank=2),
        cand(4, rank=1),
        cand(5, priority="pin"),
        cand(6, feed_position=2),
    ]
    picks = pick(cands, newsletter("editorial", 6), weights, END)
    assert [p.candidate.id for p in picks] == [5, 4, 3, 2, 6, 1]
    assert [p.reason.split(",")[0] for p in picks] == [
        "pinned by editor; no rank",
        "rank 1 in its section",
        "rank 2 in its section",
        "item 1 of its feed",
        "item 2 of its feed",
        "no rank",
    ]


def test_blend_weighs_rank_against_relative_popularity_and_explains_it() -> None:
    weights = SelectionWeights(editorial_weight=0.5, half_life_hours=1000)
    ranked_first = cand(1, rank=1, popularity=10)  # 0.5 * 1 + 0.5 * 0.01 = 0.505
    popular = cand(2, rank=5, popularity=1000)  # 0.5 * 0.2 + 0.5 * 1 = 0.6
    middle = cand(3, rank=2, popularity=500)  # 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    order = rank_order([ranked_first, popular, middle], "blend", weights, END)
    assert [c.id for c, _, _ in order] == [2, 1, 3]
    value, why = order[0][1], order[0][2]
    assert value == pytest.approx(0.6, abs=0.001)
    assert why.startswith(
        "blend 0.60 = 0.5 × rank 5 in its section (0.20) + 0.5 × popularity 1000 "
        "(1.00 of the section's best)"
    )
    only_rank = rank_order(
        [ranked_first, popular, middle], "blend", SelectionWeights(editorial_weight=1.0), END
    )
    assert [c.id for c, _, _ in only_rank] == [1, 3, 2]


def test_config_rejects_an_unknown_ranking(tmp_path: Path) -> None:
    from digest.errors import ConfigError

    path = front_page_config(tmp_path, "alphabetical", 2)
    with pytest.raises(
        ConfigError,
        match=r"newsletters.front.ranking: 'alphabetical' is not one of popularity, editorial, blend",
    ):
        load_config(path)


BODY = (
    "<p>WASHINGTON (AP) — The Senate voted 61 to 38 on Tuesday to extend federal funding "
    "through March, averting a partial shutdown hours before the deadline after leaders of "
    "both parties agreed to take up a separate measure on border security next month, a "
    "compromise that drew criticism from members on both flanks of each caucus.</p>"
    "<p>The measure now goes to the House, where its prospects are less certain.</p>"
)


def test_re_headlined_wire_copy_with_different_deks_is_caught_by_its_body() -> None:
    weights = SelectionWeights()
    nl = NewsletterConfig(
        id="t", title="T", from_email="t@news.example", from_name="T", reply_to=None,
        sections=(SectionConfig("News", 3), SectionConfig("Local News", 3)),
        timezone="UTC", send_time=datetime(2026, 1, 1, 6).time(),
    )  # fmt: skip
    national = cand(1, title="Senate averts shutdown", dek="A stopgap passes.", body_head=BODY)
    local = cand(
        2,
        section="Local News",
        title="What the funding deal means for county workers",
        dek="Federal employees here can breathe easier.",
        body_head=BODY.replace("<p>", '<p class="lede">'),
        popularity=50,
    )
    other = cand(3, section="Local News", title="Library hours", body_head="<p>" + "word " * 40)
    picks = pick([national, local, other], nl, weights, END)
    # The better-scored copy stays (Local News); the national one repeats it.
    assert [p.candidate.id for p in picks] == [2, 3]
    # Short bodies ("Read more.") prove nothing: both stay.
    a = cand(4, body_head="<p>Read more.</p>")
    b = cand(5, body_head="<p>Read more.</p>")
    assert len(pick([a, b], newsletter("popularity"), weights, END)) == 2


def test_an_edition_build_dedupes_on_the_stored_bodies_reading_only_their_start(
    sessions: sessionmaker[Session],
) -> None:
    from digest.clock import fixed
    from digest.config import load_config
    from digest.editions import build_edition
    from digest.selection import BODY_HEAD_CHARS, body_loader
    from tests.conftest import DATA
    from tests.factories import add_article

    config = load_config(DATA / "digest.toml")
    nl = config.newsletter("daily")
    day = datetime(2026, 3, 10).date()
    at = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    long_body = BODY + "<p>" + "more " * 5000 + "</p>"
    with sessions.begin() as session:
        wire = add_article(session, at, title="Senate averts shutdown", dek="A stopgap passes.",
                           body=long_body, popularity=500)  # fmt: skip
        add_article(session, at, title="What the deal means for local firms", section="Business",
                    dek="Contractors can breathe easier.", body=long_body)  # fmt: skip
        add_article(
            session, at, title="Library hours", section="Business", body="<p>Open late.</p>"
        )
    with sessions.begin() as session:
        edition = build_edition(session, config, nl, day, clock=fixed(at)).edition
        assert sorted(i.title for i in edition.items) == ["Library hours", "Senate averts shutdown"]
        (head,) = body_loader(session)([wire.id]).values()
    assert len(head) == BODY_HEAD_CHARS and head.startswith("<p>WASHINGTON (AP)")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('approval = "maybe"', "newsletters.front.approval: 'maybe' is not one of none, required"),
        ('approvers = "ana"', "newsletters.front.approvers: must be an array of non-empty strings"),
        (
            'proof_to = ["desk@"]',
            "newsletters.front.proof_to: 'desk@' is not a valid email address",
        ),
    ],
)
def test_config_checks_the_desk_keys(tmp_path: Path, line: str, problem: str) -> None:
    from digest.errors import ConfigError

    path = front_page_config(tmp_path, "editorial", 2)
    path.write_text(
        path.read_text().replace('ranking = "editorial"', f'ranking = "editorial"\n{line}')
    )
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(path)


def test_example_config_loads_with_the_desk_keys() -> None:
    config = load_config(Path(__file__).parent.parent / "digest.example.toml")
    nl = config.newsletter("morning")
    assert (nl.ranking, nl.approval, nl.proof_to) == (
        "popularity",
        "none",
        ("desk@ledger.example",),
    )
    assert config.selection.editorial_weight == 0.5
