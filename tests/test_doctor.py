"""`digest doctor`: the DNS records to publish and the bulk-sender checks, from the config alone
(or with a stub resolver for --dns: nothing here touches the network)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.config import BounceConfig, Config, SiteConfig
from digest.dkim import load_key
from digest.doctor import aligned, diagnose, organisational_domain
from digest_cli import cli
from tests.dkim_support import ED_ENV, RSA_SELECTOR, dns_records, ed25519_seed_b64, signing_config


@pytest.fixture
def good(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A configuration that follows the rules: DKIM, VERP bounces, an https site."""
    monkeypatch.setenv(ED_ENV, ed25519_seed_b64())
    cfg = signing_config(config, tmp_path)
    return dataclasses.replace(
        cfg,
        bounces=BounceConfig(return_path="bounces@news.example", verp=True),
        site=dataclasses.replace(cfg.site, postal_address="The Gazette, 1 Harbor St, Tampa"),
    )


def levels(cfg: Config, **kw: object) -> dict[str, list[str]]:
    d = diagnose(cfg, "daily", **kw)  # type: ignore[arg-type]
    out: dict[str, list[str]] = {}
    for c in d.checks:
        out.setdefault(c.level, []).append(c.text)
    return out


def test_a_good_config_passes_and_prints_the_three_records(good: Config) -> None:
    d = diagnose(good, "daily")
    assert not d.failed, [c for c in d.checks if c.level == "fail"]
    lines = d.lines()
    text = "\n".join(lines)
    key = load_key(good.dkim.keys[0])
    assert f'{RSA_SELECTOR}._domainkey.news.example.  TXT  "v=DKIM1; k=rsa; p=' in text
    # A 2048-bit key's record is longer than one TXT string may be: split at 255.
    dkim_line = next(line for line in lines if f"{RSA_SELECTOR}._domainkey" in line)
    strings = re.findall(r'"([^"]*)"', dkim_line)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == key.record()
    assert 'test-ed._domainkey.news.example.  TXT  "v=DKIM1; k=ed25519; p=' in text
    assert 'news.example.  TXT  "v=spf1 ip4:<your relay\'s public IP> ~all"' in text
    assert '_dmarc.news.example.  TXT  "v=DMARC1; p=none;' in text
    # The one warning: the tests' domain is reserved for examples.
    assert [c.text for c in d.checks if c.level == "warn"] == [
        "From domain news.example is reserved for examples: no receiver will accept it"
    ]
    assert text.rstrip().endswith("0 problem(s), 1 warning(s)")


def test_the_published_record_is_the_one_dkimpy_verifies_against(good: Config) -> None:
    d = diagnose(good, "daily")
    published = {r.name: r.value for r in d.records if "_domainkey" in r.name}
    assert published == dns_records(good)


def test_missing_dkim_http_site_and_free_mailbox_from_are_failures(config: Config) -> None:
    nl = dataclasses.replace(config.newsletter("daily"), from_email="gazette@gmail.com")
    cfg = dataclasses.replace(
        config,
        newsletters={"daily": nl},
        site=dataclasses.replace(config.site, base_url="http://127.0.0.1:8000"),
    )
    fails = levels(cfg)["fail"]
    assert any(
        t.startswith("From gazette@gmail.com: gmail.com is a mailbox provider") for t in fails
    )
    assert any(t.startswith("DKIM: no [dkim] keys") for t in fails)
    assert any("must be https://" in t for t in fails)


def test_misaligned_signing_domain_and_return_path(good: Config) -> None:
    cfg = dataclasses.replace(
        good,
        dkim=dataclasses.replace(good.dkim, domain="esp.example.net"),
        bounces=BounceConfig(return_path="bounces@esp.example.net", verp=True),
    )
    got = levels(cfg)
    assert any(
        "d=esp.example.net is not aligned with the From domain news.example" in t
        for t in got["fail"]
    )
    assert any("esp.example.net is not aligned with news.example" in t for t in got["warn"])


def test_a_parent_signing_domain_is_aligned(good: Config) -> None:
    nl = dataclasses.replace(good.newsletter("daily"), from_email="daily@mail.news.example")
    cfg = dataclasses.replace(good, newsletters={"daily": nl})
    assert not any("not aligned" in t for t in levels(cfg).get("fail", []))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("news.example.com", "example.com", True),
        ("mail.example.com", "news.example.com", True),
        ("example.com", "example.net", False),
        ("news.bbc.co.uk", "bbc.co.uk", True),
        ("bbc.co.uk", "itv.co.uk", False),
    ],
)
def test_alignment_is_by_organisational_domain(a: str, b: str, same: bool) -> None:
    assert aligned(a, b) is same
    assert organisational_domain("www.news.bbc.co.uk") == "bbc.co.uk"


def test_short_rsa_and_ed25519_only_keys_are_warned_about(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ED_ENV, ed25519_seed_b64())
    only_ed = signing_config(config, tmp_path, rsa_key=False)
    assert any("Ed25519 only" in t for t in levels(only_ed)["warn"])


def test_sendgrid_points_to_its_domain_authentication(good: Config) -> None:
    d = diagnose(good, "daily", provider="sendgrid")
    text = "\n".join(d.lines())
    assert "Sender Authentication" in text
    assert "_domainkey.news.example.  TXT" not in text  # SendGrid's own keys, not ours
    assert "_dmarc.news.example." in text


def test_dns_check_uses_the_lookup_given(good: Config) -> None:
    records = dns_records(good) | {
        "_dmarc.news.example": ["v=DMARC1; p=quarantine; rua=mailto:d@news.example"],
        "news.example": ["v=spf1 ip4:198.51.100.7 -all", "google-site-verification=abc"],
    }
    table = {k: v if isinstance(v, list) else [v] for k, v in records.items()}
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        return table.get(name, [])

    got = levels(good, lookup=lookup)
    assert "fail" not in got, got.get("fail")
    assert "DNS: DMARC policy p=quarantine for news.example" in got["ok"]
    assert set(asked) >= {"test-rsa._domainkey.news.example", "_dmarc.news.example", "news.example"}

    table["test-rsa._domainkey.news.example"] = ["v=DKIM1; k=rsa; p=MIIBIjANotOurs"]
    del table["_dmarc.news.example"]
    fails = levels(good, lookup=lookup)["fail"]
    assert (
        "DNS: test-rsa._domainkey.news.example publishes another key than the one digest signs with"
        in fails
    )
    assert "DNS: no DMARC record at _dmarc.news.example" in fails


def test_without_dns_nothing_is_looked_up(good: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import digest.doctor

    def refuse(name: str) -> list[str]:
        raise AssertionError(f"looked up {name}")

    monkeypatch.setattr(digest.doctor, "dns_lookup", refuse)
    diagnose(good, "daily")


def test_cli_prints_the_report_and_exits_1_on_a_failure(config_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["--config", str(config_path), "doctor", "daily"],
        env={"DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"},
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        "daily: From Test Gazette <daily@news.example>, provider outbox"
    )
    assert "FAIL  DKIM: no [dkim] keys" in result.output
    unknown = runner.invoke(cli, ["--config", str(config_path), "doctor", "nope"])
    assert unknown.exit_code == 2
    assert "Error: unknown newsletter 'nope' (configured: daily, strict)" in unknown.output


def test_default_site_is_not_production_ready(config: Config) -> None:
    cfg = dataclasses.replace(config, site=SiteConfig())
    got = levels(cfg)
    assert any("postal_address" in t for t in got["warn"])
