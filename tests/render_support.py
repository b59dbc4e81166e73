"""A fixed edition for the rendering tests, the golden files and bench/render.py."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import premailer
from sqlalchemy.orm import Session

from digest.config import Config
from digest.editions import Edition, EditionItem
from tests.factories import add_article

if TYPE_CHECKING:  # bench/render.py imports this module too
    import pytest

EDITION_DATE = date(2026, 3, 10)
BUILT = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)

# section, title, dek, byline, source, image
Story = tuple[str, str, str, str | None, str | None, str | None]
STORIES: list[Story] = [
    (
        "News",
        "City council approves $2.1 billion transit plan after a nine-hour session",
        "The vote clears the way for two new light-rail lines and a bus network redesign that "
        "planners say will put 300,000 more residents within a ten-minute walk of frequent service.",
        "By Maria Alvarez",
        "The Test Gazette",
        "https://img.news.example/transit.jpg",
    ),
    (
        "News",
        "Storm knocks out power to 40,000 homes; crews expect repairs by Thursday",
        "Utility officials said the hardest-hit neighbourhoods are along the bay, where winds "
        "gusted past 60 mph overnight.",
        "By Sam Okafor",
        "Wire",
        None,
    ),
    (
        "News",
        "School board delays vote on later start times",
        "Parents packed the meeting; the board will take the question up again in April.",
        None,
        "The Test Gazette",
        None,
    ),
    (
        "Business",
        "Port traffic hits a record as retailers restock early",
        "Container volumes rose 14 percent from a year earlier, the port authority said.",
        "By Lena Fischer",
        "Business Desk",
        "https://img.news.example/port.jpg",
    ),
    (
        "Business",
        "Local bakery chain expands to three new towns",
        "The family-owned company will hire 120 people this spring.",
        "By Ravi Patel",
        None,
        None,
    ),
    (
        "Health",
        "What the new screening guidelines mean for people in their 40s",
        "Doctors say the change could catch thousands of cancers earlier; here is how to talk "
        "to your physician about it.",
        "By Dr. Ana Costa",
        "Health Desk",
        None,
    ),
    (
        "Entertainment",
        "A jazz festival returns to the waterfront after five years",
        "Tickets go on sale Friday, with free afternoon sets for families.",
        "By Chris Doyle",
        "Arts",
        "https://img.news.example/jazz.jpg",
    ),
]


def make_edition(
    stories: list[Story] | None = None,
    newsletter: str = "daily",
    url_query: str = "",
    edition_id: int | None = 1,
) -> Edition:
    """An unsaved edition: sections in the order given, ranks in order within a section."""
    edition = Edition(
        id=edition_id,
        newsletter=newsletter,
        edition_date=EDITION_DATE,
        status="draft",
        built_at=BUILT,
        window_start=BUILT - timedelta(hours=24),
        window_end=BUILT,
        fingerprint="fixed",
    )
    positions: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for n, (section, title, dek, byline, source, image) in enumerate(stories or STORIES):
        positions.setdefault(section, len(positions))
        ranks[section] = ranks.get(section, -1) + 1
        edition.items.append(
            EditionItem(
                article_id=n + 1,
                section=section,
                section_position=positions[section],
                rank=ranks[section],
                score=10.0 - n,
                reason="test",
                title=title,
                dek=dek,
                url=f"https://news.example/{section.lower()}/{n + 1}{url_query}",
                byline=byline,
                source=source,
                published_at=BUILT - timedelta(hours=2 + 3 * n, minutes=15 * n),
                image_url=image,
                image_alt=f"Photo for: {title[:40]}" if image else None,
                image_caption=None,
            )
        )
    return edition


def store_edition(session: Session) -> Edition:
    """The fixed edition saved in the database, with the articles its items point to."""
    edition = make_edition(edition_id=None)
    for item in edition.items:
        article = add_article(
            session, item.published_at, title=item.title, section=item.section, url=item.url
        )
        item.article_id = article.id
    session.add(edition)
    session.flush()
    return edition


def count_inlining(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Premailer runs from now on, one entry each (the costly step a render must not repeat)."""
    calls: list[int] = []
    original = premailer.Premailer.transform

    def counting(self: premailer.Premailer, *args: object, **kwargs: object) -> str:
        calls.append(1)
        return str(original(self, *args, **kwargs))

    monkeypatch.setattr(premailer.Premailer, "transform", counting)
    return calls


# The same edition's shape in Arabic: right-to-left text, a Latin brand name in one headline
# and digits, as an Arabic newsroom's feed carries them.
ARABIC_STORIES: list[Story] = [
    (
        "أخبار",
        "مجلس المدينة يقرّ خطة نقل بقيمة 2.1 مليار دولار بعد جلسة استمرت تسع ساعات",
        "يمهّد التصويت الطريق لخطّين جديدين للقطار الخفيف وإعادة تصميم شبكة الحافلات، ما يضع "
        "300 ألف ساكن إضافي على بُعد عشر دقائق سيرًا من خدمة منتظمة.",
        "بقلم مريم الأحمد",
        "الجريدة التجريبية",
        "https://img.news.example/transit.jpg",
    ),
    (
        "أخبار",
        "عاصفة تقطع الكهرباء عن 40 ألف منزل والفرق تتوقع إصلاح الأعطال بحلول الخميس",
        "قال مسؤولو شركة الكهرباء إن الأحياء الأكثر تضررًا تقع على طول الخليج.",
        "بقلم سامي عقل",
        "وكالة الأنباء",
        "https://img.news.example/storm.jpg",
    ),
    (
        "أخبار",
        "مجلس التعليم يؤجل التصويت على تأخير بدء الدوام المدرسي",
        "امتلأت القاعة بأولياء الأمور، وسيعود المجلس إلى المسألة في أبريل.",
        None,
        "الجريدة التجريبية",
        None,
    ),
    (
        "اقتصاد",
        "حركة الميناء تسجل رقمًا قياسيًا مع تعجّل تجار التجزئة في تجديد مخزونهم",
        "ارتفعت أحجام الحاويات 14 في المئة عن العام الماضي، بحسب سلطة الميناء.",
        "بقلم لينا فيشر",
        "مكتب الاقتصاد",
        "https://img.news.example/port.jpg",
    ),
    (
        "اقتصاد",
        "iPhone وسواه: سلسلة مخابز محلية تتوسع إلى ثلاث مدن جديدة",
        "ستوظف الشركة العائلية 120 شخصًا هذا الربيع.",
        "بقلم رافي باتيل",
        None,
        None,
    ),
    (
        "صحة",
        "ماذا تعني إرشادات الفحص الجديدة لمن هم في الأربعينيات؟",
        "يقول الأطباء إن التغيير قد يكشف آلاف حالات السرطان مبكرًا.",
        "بقلم د. آنا كوستا",
        "مكتب الصحة",
        None,
    ),
    (
        "فنون",
        "مهرجان الجاز يعود إلى الواجهة البحرية بعد خمس سنوات",
        "تُطرح التذاكر للبيع يوم الجمعة، مع حفلات مجانية للعائلات بعد الظهر.",
        "بقلم كريس دويل",
        "فنون",
        "https://img.news.example/jazz.jpg",
    ),
]


def with_newsletter(config: Config, newsletter: str = "daily", **changes: object) -> Config:
    """The config with some settings of one newsletter changed (language, in_brief, ...)."""
    nl = dataclasses.replace(config.newsletter(newsletter), **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, newsletters={**config.newsletters, newsletter: nl})


def front_page(
    sections: int = 9, per_section: int = 3, stories: list[Story] | None = None
) -> list[Story]:
    """A big front page: `sections` × `per_section` stories with long headlines and deks, each
    with a photo, cycling through `stories` (default STORIES) for their text."""
    base = stories or STORIES
    out: list[Story] = []
    for s in range(sections):
        for r in range(per_section):
            _, title, dek, byline, source, _ = base[(s * per_section + r) % len(base)]
            out.append(
                (
                    f"{base[0][0]} {s + 1}",
                    f"{title} ({s + 1}.{r + 1})",
                    f"{dek} {dek}",
                    byline,
                    source,
                    f"https://img.news.example/{s}-{r}.jpg",
                )
            )
    return out
