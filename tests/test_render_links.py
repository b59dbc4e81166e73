"""Links in the digest: UTM parameters merged into story links, signed personal links."""

from __future__ import annotations

from datetime import date
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import Config, UtmConfig
from digest.errors import ConfigError
from digest.render import add_utm, personal_links
from subscribers.audience import Recipient
from subscribers.tokens import InvalidToken, read_token
from tests.render_support import make_edition

UTM = UtmConfig(source="digest", medium="email", campaign="{newsletter}-{date}")
DAY = date(2026, 3, 10)
OURS = "utm_source=digest&utm_medium=email&utm_campaign=daily-2026-03-10"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://news.example/a", f"https://news.example/a?{OURS}"),
        ("https://news.example/a?", f"https://news.example/a?{OURS}"),
        ("https://news.example/a?id=5&ref=home", f"https://news.example/a?id=5&ref=home&{OURS}"),
        (
            "https://news.example/a?id=5#comments",
            f"https://news.example/a?id=5&{OURS}#comments",
        ),
        ("https://news.example/a#top", f"https://news.example/a?{OURS}#top"),
        (
            "https://news.example/a?utm_source=rss&utm_content=box&q=a%20b+c",
            f"https://news.example/a?utm_content=box&q=a%20b+c&{OURS}",
        ),
        ("https://news.example/a?flag&x=", f"https://news.example/a?flag&x=&{OURS}"),
        ("mailto:editors@news.example", "mailto:editors@news.example"),
        ("", ""),
    ],
)
def test_utm_is_added_without_breaking_query_or_fragment(url: str, expected: str) -> None:
    assert add_utm(url, UTM, "daily", DAY) == expected


def test_no_utm_config_leaves_links_alone() -> None:
    assert add_utm("https://news.example/a?x=1", None, "daily", DAY) == "https://news.example/a?x=1"


def test_utm_values_are_encoded_and_fields_checked() -> None:
    odd = UtmConfig(source="news letter", medium="e&mail", campaign="{date}/{newsletter}")
    assert add_utm("https://n.example/", odd, "daily", DAY) == (
        "https://n.example/?utm_source=news%20letter&utm_medium=e%26mail"
        "&utm_campaign=2026-03-10%2Fdaily"
    )
    bad = UtmConfig(campaign="{newsletter}-{week}")
    with pytest.raises(ConfigError, match=r"newsletters\.daily\.utm\.campaign: unknown field"):
        add_utm("https://n.example/", bad, "daily", DAY)


_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_value = st.text(alphabet="abcXYZ019-._~%20+", max_size=8)


@given(
    params=st.lists(st.tuples(_key, _value), max_size=6),
    fragment=st.one_of(st.none(), st.text(alphabet="abc-_/", max_size=8)),
)
def test_utm_merge_keeps_every_other_parameter_in_order(
    params: list[tuple[str, str]], fragment: str | None
) -> None:
    query = "&".join(f"{k}={v}" for k, v in params)
    url = "https://news.example/story" + (f"?{query}" if query else "")
    url += f"#{fragment}" if fragment is not None else ""
    merged = add_utm(url, UTM, "daily", DAY)
    parts = urlsplit(merged)
    assert parts.path == "/story"
    assert parts.fragment == (fragment or "")
    kept = [p for p in query.split("&") if p and p.split("=")[0] not in dict(parse_qsl(OURS))]
    assert parts.query == "&".join([*kept, OURS])


def test_personal_links_are_signed_per_subscriber_and_purpose(config: Config) -> None:
    nl = config.newsletter("daily")
    edition = make_edition()
    who = Recipient(
        subscriber_id=42, email="ana@example.com", name="Ana", sections=(), timezone=None
    )
    links = personal_links(config, nl, edition, who)
    assert links.view_url == "https://news.example/archive/daily/2026-03-10"
    assert links.unsubscribe_url.startswith("https://news.example/u/")
    assert links.preferences_url.startswith("https://news.example/p/")
    unsub = links.unsubscribe_url.rsplit("/", 1)[1]
    prefs = links.preferences_url.rsplit("/", 1)[1]
    data = read_token("test-secret-key", unsub, "unsubscribe")
    assert (data.subscriber_id, data.newsletter) == (42, "daily")
    assert read_token("test-secret-key", prefs, "preferences").subscriber_id == 42
    with pytest.raises(InvalidToken):
        read_token("test-secret-key", unsub, "preferences")
    other = personal_links(config, nl, edition, Recipient(43, "b@example.com", None, (), None))
    assert other.unsubscribe_url != links.unsubscribe_url


def test_personal_links_need_the_secret(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGEST_SECRET_KEY")
    who = Recipient(1, "a@example.com", None, (), None)
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY is not set"):
        personal_links(config, config.newsletter("daily"), make_edition(), who)
